//! Frechet Inception Distance, as pytorch-fid computes it (`pytorch_fid/fid_score.py`):
//! `calculate_activation_statistics` (mean, and `np.cov(rowvar=False)`, i.e. ddof = 1) and
//! `calculate_frechet_distance`: ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2).
//!
//! Statistics stream: [`GaussianStats`] keeps the count, the sum and the sum of outer products
//! (float64), so memory is O(d^2) however many images a run makes. Features are shifted by the
//! first image's before they are summed: covariance = (S - n m m^T) / (n - 1) then cancels
//! nothing large, which keeps it within ~1e-12 of numpy's two-pass result.
//!
//! tr sqrt(S1 S2): pytorch-fid uses scipy's `sqrtm` on the non-symmetric product. The same trace
//! is computed here from symmetric eigendecompositions: with A = S1^(1/2),
//! tr sqrt(S1 S2) = tr sqrt(A S2 A) = sum sqrt(eig(A S2 A)), and A S2 A is symmetric positive
//! semi-definite. Eigenvalues below zero are rounding noise and count as 0, which is what taking
//! the real part of scipy's result does. pytorch-fid's fallback of adding 1e-6 to the diagonals
//! when `sqrtm` returns non-finite values is not needed here (the eigen route always is finite).

use faer::{linalg::matmul::matmul, Accum, Mat, MatMut, MatRef, Par, Side};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FidError {
    #[error("feature dimensions differ: {0} and {1}")]
    Dimension(usize, usize),
    #[error("{0} contains NaN or infinite values")]
    NonFinite(&'static str),
    #[error("need at least 2 images on each side for a covariance, found {0}")]
    TooFew(u64),
    #[error("eigendecomposition did not converge")]
    Eigen,
}

/// Running first and second moments of d-dimensional features, in float64.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GaussianStats {
    pub dim: usize,
    pub count: u64,
    /// Every feature is summed as `x - shift` (the first image's features).
    pub shift: Vec<f64>,
    pub sum: Vec<f64>,
    /// Sum of (x - shift)(x - shift)^T, column-major d x d (symmetric, so also row-major).
    pub sum_outer: Vec<f64>,
}

impl GaussianStats {
    pub fn new(dim: usize) -> Self {
        GaussianStats { dim, count: 0, shift: Vec::new(), sum: vec![0.0; dim], sum_outer: vec![0.0; dim * dim] }
    }

    /// Adds `n` feature rows (row-major `n x dim`). Non-finite features are refused, not folded.
    pub fn add_batch(&mut self, features: &[f32], n: usize) -> Result<(), FidError> {
        let d = self.dim;
        if features.len() != n * d {
            return Err(FidError::Dimension(features.len() / n.max(1), d));
        }
        if features.iter().any(|v| !v.is_finite()) {
            return Err(FidError::NonFinite("features"));
        }
        if n == 0 {
            return Ok(());
        }
        if self.shift.is_empty() {
            self.shift = features[..d].iter().map(|&v| v as f64).collect();
        }
        // Y (n x d) = features - shift, in f64; then sum += Y^T 1 and sum_outer += Y^T Y.
        let y = Mat::<f64>::from_fn(n, d, |i, j| features[i * d + j] as f64 - self.shift[j]);
        for j in 0..d {
            self.sum[j] += (0..n).map(|i| y[(i, j)]).sum::<f64>();
        }
        let outer = MatMut::from_column_major_slice_mut(&mut self.sum_outer, d, d);
        matmul(outer, Accum::Add, y.transpose(), y.as_ref(), 1.0, Par::rayon(0));
        self.count += n as u64;
        Ok(())
    }

    pub fn mean(&self) -> Vec<f64> {
        let n = self.count.max(1) as f64;
        (0..self.dim).map(|j| self.shift.get(j).copied().unwrap_or(0.0) + self.sum[j] / n).collect()
    }

    /// Covariance with ddof = 1 (row-major d x d); `None` for fewer than 2 images.
    pub fn covariance(&self) -> Option<Vec<f64>> {
        if self.count < 2 {
            return None;
        }
        let (d, n) = (self.dim, self.count as f64);
        let m: Vec<f64> = self.sum.iter().map(|s| s / n).collect();
        let mut cov = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] = (self.sum_outer[j * d + i] - n * m[i] * m[j]) / (n - 1.0);
            }
        }
        Some(cov)
    }
}

/// The distance and what it rests on.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrechetResult {
    pub fid: f64,
    /// ||mu1 - mu2||^2.
    pub mean_term: f64,
    /// tr S1 + tr S2 - 2 tr sqrt(S1 S2).
    pub covariance_term: f64,
}

fn sym(values: &[f64], d: usize) -> MatRef<'_, f64> {
    MatRef::from_column_major_slice(values, d, d)
}

/// Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); sigmas row-major d x d.
pub fn frechet_distance(mu1: &[f64], sigma1: &[f64], mu2: &[f64], sigma2: &[f64]) -> Result<FrechetResult, FidError> {
    let d = mu1.len();
    if mu2.len() != d {
        return Err(FidError::Dimension(d, mu2.len()));
    }
    for (name, s) in [("sigma1", sigma1), ("sigma2", sigma2)] {
        if s.len() != d * d {
            return Err(FidError::Dimension(d, (s.len() as f64).sqrt() as usize));
        }
        if s.iter().any(|v| !v.is_finite()) {
            return Err(FidError::NonFinite(name));
        }
    }
    if mu1.iter().chain(mu2).any(|v| !v.is_finite()) {
        return Err(FidError::NonFinite("mu"));
    }
    let mean_term: f64 = mu1.iter().zip(mu2).map(|(a, b)| (a - b) * (a - b)).sum();
    let trace = |s: &[f64]| (0..d).map(|i| s[i * d + i]).sum::<f64>();

    // 1. A = S1^(1/2) from S1 = U diag(l) U^T.
    let s1 = sym(sigma1, d);
    let evd = s1.self_adjoint_eigen(Side::Lower).map_err(|_| FidError::Eigen)?;
    let (u, l) = (evd.U(), evd.S().column_vector());
    let scaled = Mat::<f64>::from_fn(d, d, |i, j| u[(i, j)] * l[j].max(0.0).sqrt());
    let a = &scaled * u.transpose();
    // 2. M = A S2 A, symmetrised against rounding.
    let m = &a * sym(sigma2, d) * &a;
    let m = Mat::<f64>::from_fn(d, d, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    // 3. tr sqrt(M) from its eigenvalues.
    let eig = m.self_adjoint_eigenvalues(Side::Lower).map_err(|_| FidError::Eigen)?;
    let tr_covmean: f64 = eig.iter().map(|v| v.max(0.0).sqrt()).sum();
    let covariance_term = trace(sigma1) + trace(sigma2) - 2.0 * tr_covmean;
    Ok(FrechetResult { fid: mean_term + covariance_term, mean_term, covariance_term })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_gaussians_are_at_distance_zero() {
        let mu = [0.5, -1.0, 2.0];
        let s = [2.0, 0.3, 0.1, 0.3, 1.0, 0.2, 0.1, 0.2, 0.5];
        let r = frechet_distance(&mu, &s, &mu, &s).unwrap();
        assert!(r.fid.abs() < 1e-12, "{r:?}");
    }

    #[test]
    fn diagonal_case_has_a_closed_form() {
        // sum (m1-m2)^2 + sum (sqrt(a) - sqrt(b))^2 for diagonal covariances.
        let (mu1, mu2) = ([0.0, 1.0], [1.0, 3.0]);
        let (s1, s2) = ([4.0, 0.0, 0.0, 9.0], [1.0, 0.0, 0.0, 16.0]);
        let r = frechet_distance(&mu1, &s1, &mu2, &s2).unwrap();
        let want = 1.0 + 4.0 + (2.0 - 1.0f64).powi(2) + (3.0 - 4.0f64).powi(2);
        assert!((r.fid - want).abs() < 1e-12, "{} vs {want}", r.fid);
    }

    #[test]
    fn streaming_moments_equal_two_pass_ones() {
        let (n, d) = (50, 3);
        let x: Vec<f32> = (0..n * d).map(|k| ((k * 37 % 101) as f32) / 17.0 + 1000.0).collect();
        let mut s = GaussianStats::new(d);
        s.add_batch(&x[..20 * d], 20).unwrap();
        s.add_batch(&x[20 * d..], 30).unwrap();
        let mean: Vec<f64> = (0..d).map(|j| (0..n).map(|i| x[i * d + j] as f64).sum::<f64>() / n as f64).collect();
        let cov = s.covariance().unwrap();
        for (j, m) in mean.iter().enumerate() {
            assert!((s.mean()[j] - m).abs() < 1e-9);
        }
        for a in 0..d {
            for b in 0..d {
                let c: f64 = (0..n).map(|i| (x[i * d + a] as f64 - mean[a]) * (x[i * d + b] as f64 - mean[b])).sum::<f64>() / (n - 1) as f64;
                assert!((cov[a * d + b] - c).abs() <= 1e-10 * c.abs().max(1.0), "{a},{b}: {} vs {c}", cov[a * d + b]);
            }
        }
        assert_eq!(s.count, 50);
        assert!(GaussianStats::new(2).covariance().is_none());
        assert_eq!(s.add_batch(&[f32::NAN, 0.0, 0.0], 1), Err(FidError::NonFinite("features")));
    }
}
