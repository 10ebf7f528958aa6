//! Frechet Inception Distance, as pytorch-fid computes it (`pytorch_fid/fid_score.py`):
//! `calculate_activation_statistics` (mean, and `np.cov(rowvar=False)`, i.e. ddof = 1) and
//! `calculate_frechet_distance`: ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2).
//!
//! Statistics stream: [`GaussianStats`] keeps the count, the sum and the sum of outer products
//! (float64), so memory is O(d^2) however many images a run makes. Features are shifted by the
//! first image's before they are summed: covariance = (S - n m m^T) / (n - 1) then cancels
//! nothing large, which keeps it within ~1e-15 (relative to the largest entry) of numpy's
//! two-pass `np.cov` (tests/fid_maths.rs). [`GaussianStats::merge`] re-centres the other side's
//! sums on this side's shift, so statistics gathered apart combine exactly (up to rounding).
//!
//! tr sqrt(S1 S2): pytorch-fid uses scipy's `sqrtm` on the non-symmetric product and takes the
//! real part of its trace. The same trace is computed here from symmetric eigendecompositions:
//! with A = S1^(1/2) (eigenvalues of S1 below zero clamped to 0),
//! tr sqrt(S1 S2) = tr sqrt(A S2 A) = sum sqrt(eig(A S2 A)), and A S2 A (symmetrised) is
//! symmetric positive semi-definite; its eigenvalues below zero count as 0.
//!
//! Agreement with pytorch-fid 0.3.0 (scipy 1.17; scipy 1.13 gives the same values to 2e-10):
//! - full rank (more images than dimensions on both sides): relative difference ~1e-14.
//! - rank deficient (n <= d on either side, e.g. a small class with 2048-d features): ~1e-9 to
//!   5e-8 relative. The difference is rounding noise, not a different formula: where S1 S2 is
//!   singular, its d - rank zero eigenvalues come out of any float64 eigensolver as values of size
//!   ~eps ||S1|| ||S2||, and every one adds its square root (~1e-8 of the scale) to the trace:
//!   scipy's Schur-based `sqrtm` adds Re sqrt of its noise eigenvalues (Re sqrt z >= 0 for all z),
//!   this code adds sqrt of its positive ones. The sums are of the same size but not equal, and
//!   neither is reproducible across LAPACK builds. The same noise makes the distance of a
//!   rank-deficient distribution to itself slightly negative in pytorch-fid (e.g. -1.5e-3 for 8
//!   images of 2048-d features with tr S = 1.6e3) and here alike. [`FrechetResult::noise_trace`]
//!   reports this code's noise contribution, and [`FrechetResult::fid_without_noise`] the
//!   distance without it (what exact arithmetic gives: 0 to ~1e-16 relative for identical inputs).
//!   Summing Re sqrt of the eigenvalues of the non-symmetric product instead (pytorch-fid's
//!   route, via faer's general eigensolver) was measured too: only 2-5x closer to pytorch-fid,
//!   slower, and without a clean noise estimate, so it is not used.
//! - pytorch-fid's fallback (add 1e-6 to both diagonals when `sqrtm` returns non-finite values)
//!   is not reproduced: scipy 1.13 and 1.17 return finite square roots for singular covariances
//!   (also with all-zero feature columns), so pytorch-fid does not take that branch on
//!   covariance inputs, and the eigen route here is always finite.

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
    #[error("inconsistent moments: {0}")]
    Corrupt(String),
}

/// Running first and second moments of d-dimensional features, in float64.
///
/// Deserialisation checks the vector lengths, so a corrupt checkpoint is an error, not a panic
/// later.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "GaussianStatsRepr")]
pub struct GaussianStats {
    pub dim: usize,
    pub count: u64,
    /// Every feature is summed as `x - shift` (the first image's features; empty until then).
    pub shift: Vec<f64>,
    pub sum: Vec<f64>,
    /// Sum of (x - shift)(x - shift)^T, column-major d x d (symmetric, so also row-major).
    pub sum_outer: Vec<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GaussianStatsRepr {
    dim: usize,
    count: u64,
    shift: Vec<f64>,
    sum: Vec<f64>,
    sum_outer: Vec<f64>,
}

impl TryFrom<GaussianStatsRepr> for GaussianStats {
    type Error = FidError;
    fn try_from(r: GaussianStatsRepr) -> Result<Self, FidError> {
        let d = r.dim;
        let square = d.checked_mul(d).ok_or_else(|| FidError::Corrupt(format!("dimension {d} is too large")))?;
        let shift_ok = if r.count == 0 { r.shift.is_empty() || r.shift.len() == d } else { r.shift.len() == d };
        if !shift_ok || r.sum.len() != d || r.sum_outer.len() != square {
            return Err(FidError::Corrupt(format!(
                "dimension {d}, count {}: shift has {} values, sum {}, sum_outer {} (expected {d}, {d}, {square})",
                r.count,
                r.shift.len(),
                r.sum.len(),
                r.sum_outer.len()
            )));
        }
        Ok(GaussianStats { dim: d, count: r.count, shift: r.shift, sum: r.sum, sum_outer: r.sum_outer })
    }
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

    /// Folds `other` (moments of other images of the same dimension) into `self`: the result
    /// equals one pass over both sets of images, up to rounding.
    pub fn merge(&mut self, other: &GaussianStats) -> Result<(), FidError> {
        if other.dim != self.dim {
            return Err(FidError::Dimension(self.dim, other.dim));
        }
        if other.count == 0 {
            return Ok(());
        }
        if self.count == 0 {
            *self = other.clone();
            return Ok(());
        }
        // Other's features were summed as y = x - b; here they count as x - a = y + delta with
        // delta = b - a: sum += S_b + n_b delta and
        // sum_outer += O_b + delta S_b^T + S_b delta^T + n_b delta delta^T.
        let d = self.dim;
        let nb = other.count as f64;
        let delta: Vec<f64> = other.shift.iter().zip(&self.shift).map(|(b, a)| b - a).collect();
        for j in 0..d {
            for i in 0..d {
                let k = j * d + i;
                self.sum_outer[k] += other.sum_outer[k] + delta[i] * other.sum[j] + other.sum[i] * delta[j] + nb * delta[i] * delta[j];
            }
        }
        for ((s, o), dj) in self.sum.iter_mut().zip(&other.sum).zip(&delta) {
            *s += o + nb * dj;
        }
        self.count += other.count;
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
    /// The distance as pytorch-fid reports it (see the module notes for rank-deficient inputs).
    pub fid: f64,
    /// ||mu1 - mu2||^2.
    pub mean_term: f64,
    /// tr S1 + tr S2 - 2 tr sqrt(S1 S2).
    pub covariance_term: f64,
    /// Numerical rank of S1^(1/2) S2 S1^(1/2): its eigenvalues above
    /// d * eps * lambda_max(S1) * ||S2||_F (the size of its rounding error). Less than d when
    /// either covariance is singular, e.g. from no more images than dimensions.
    pub rank: usize,
    /// `rank < d`: the distance carries rounding noise of relative size ~1e-8 (module notes).
    pub rank_deficient: bool,
    /// Part of tr sqrt(S1 S2) that comes from eigenvalues at or below that rounding level
    /// (0 when full rank). `fid` includes it, as pytorch-fid includes its own noise.
    pub noise_trace: f64,
}

impl FrechetResult {
    /// The distance without the rounding-noise eigenvalues: `fid + 2 * noise_trace`. Equal to
    /// `fid` for full-rank statistics; for identical rank-deficient ones it is 0 to ~1e-16 of
    /// tr S1 + tr S2, where `fid` (like pytorch-fid) is slightly negative.
    pub fn fid_without_noise(&self) -> f64 {
        self.fid + 2.0 * self.noise_trace
    }
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
    // 3. tr sqrt(M) from its eigenvalues, split at the rounding level of M's product: eps times
    //    the size of a d-term dot product of entries bounded by lambda_max(S1) and ||S2||.
    let eig = m.self_adjoint_eigenvalues(Side::Lower).map_err(|_| FidError::Eigen)?;
    let l_max = (0..d).map(|i| l[i]).fold(0.0f64, f64::max);
    let s2_norm = sigma2.iter().map(|v| v * v).sum::<f64>().sqrt();
    let tol = d as f64 * f64::EPSILON * l_max * s2_norm;
    let (mut signal, mut noise, mut rank) = (0.0f64, 0.0f64, 0usize);
    for &v in &eig {
        if v > tol {
            signal += v.sqrt();
            rank += 1;
        } else {
            noise += v.max(0.0).sqrt();
        }
    }
    let covariance_term = trace(sigma1) + trace(sigma2) - 2.0 * (signal + noise);
    Ok(FrechetResult { fid: mean_term + covariance_term, mean_term, covariance_term, rank, rank_deficient: rank < d, noise_trace: noise })
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
                let c: f64 =
                    (0..n).map(|i| (x[i * d + a] as f64 - mean[a]) * (x[i * d + b] as f64 - mean[b])).sum::<f64>() / (n - 1) as f64;
                assert!((cov[a * d + b] - c).abs() <= 1e-10 * c.abs().max(1.0), "{a},{b}: {} vs {c}", cov[a * d + b]);
            }
        }
        assert_eq!(s.count, 50);
        assert!(GaussianStats::new(2).covariance().is_none());
        assert_eq!(s.add_batch(&[f32::NAN, 0.0, 0.0], 1), Err(FidError::NonFinite("features")));
    }
}
