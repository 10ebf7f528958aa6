//! Kernel Inception Distance (Binkowski et al. 2018) as torch-fidelity 0.4 computes it
//! (`torch_fidelity/metric_kid.py`, `kid_features_to_metric`): polynomial kernel
//! k(x, y) = (x.y / d + 1)^3, the unbiased MMD^2 estimator of `mmd2(..., mmd_est="unbiased")`
//!
//! ```text
//! MMD^2 = (sum_{i != j} k(x_i, x_j) + sum_{i != j} k(y_i, y_j)) / (m (m - 1))
//!       - 2 sum_{i, j} k(x_i, y_j) / m^2
//! ```
//!
//! over `subsets` random subsets of `subset_size` = m features drawn without replacement from
//! each side, then the mean and the population standard deviation (`np.std`, ddof = 0) over
//! the subsets.
//!
//! Arithmetic: kernels and sums in float64 (the features are float32). torch-fidelity computes
//! in the dtype it is given; on float64 features it agrees with this code to ~1e-14 relative
//! (tests/kid_prc_maths.rs), on its usual float32 features its kernel sums round to ~1e-5.
//!
//! The draw differs from torch-fidelity's (numpy's `RandomState(seed).choice`, Mersenne
//! Twister): subsets here come from a counter-based generator, so a subset depends only on
//! (seed, subset index, side), never on how many numbers were drawn before ([`subset`]). Its
//! mean therefore differs from torch-fidelity's by sampling noise (the tests hold it within 3
//! standard errors); with `subset_size` equal to both sides' sizes every subset is the whole
//! set and the value is the same for any draw, so one subset is computed and the standard
//! deviation is 0.
//!
//! Inputs are in a canonical order (the caller sorts by class and position), so the same
//! images give the same subsets whatever order they arrived in.

use faer::{linalg::matmul::matmul, Accum, Mat, Par};
use serde::{Deserialize, Serialize};

use crate::units::mix64;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KidError {
    #[error("feature dimensions differ: {0} and {1}")]
    Dimension(usize, usize),
    #[error("{side} side has {n} features, KID needs at least 2")]
    TooFew { side: &'static str, n: usize },
    #[error("subsets must be at least 1 and subset_size at least 2, found {subsets} and {subset_size}")]
    Options { subsets: usize, subset_size: usize },
    #[error("cannot read features: {0}")]
    Read(String),
}

/// Which side a subset is drawn from (part of the draw's key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Generated = 0,
    Real = 1,
}

/// KID over subsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kid {
    pub mean: f64,
    /// Population standard deviation over the subsets (ddof = 0, as `np.std`).
    pub std: f64,
    pub subsets: usize,
    /// The subset size used: the requested one clipped to the smaller side.
    pub subset_size: usize,
}

/// The indices of subset `index` of `m` out of `n` features of `side`: a partial Fisher-Yates
/// shuffle of 0..n driven by a counter-based stream,
///
/// ```text
/// base = mix64(mix64(seed) ^ mix64(2 * index + side + 1))      (side: generated 0, real 1)
/// z_i  = mix64(base + (i + 1) * 0x9E3779B97F4A7C15)            (wrapping u64)
/// for i in 0..m: swap(p[i], p[i + z_i mod (n - i)])            (p = 0, 1, ..., n - 1)
/// ```
///
/// and the subset is p[0..m] (mix64 is splitmix64's finaliser, [`crate::units::mix64`]; the
/// modulo bias is below n / 2^64).
pub fn subset(seed: u64, index: usize, side: Side, n: usize, m: usize) -> Vec<usize> {
    let m = m.min(n);
    let base = mix64(mix64(seed) ^ mix64(2 * index as u64 + side as u64 + 1));
    let mut p: Vec<usize> = (0..n).collect();
    for i in 0..m {
        let z = mix64(base.wrapping_add((i as u64 + 1).wrapping_mul(GOLDEN)));
        let j = i + (z % (n - i) as u64) as usize;
        p.swap(i, j);
    }
    p.truncate(m);
    p
}

/// Rows `rows` of the row-major `? x d` matrix `x`, in float64.
fn gather(x: &[f32], d: usize, rows: &[usize]) -> Mat<f64> {
    Mat::from_fn(rows.len(), d, |i, j| f64::from(x[rows[i] * d + j]))
}

/// sum of k(a_i, b_j) over all i, j and the sum over i = j (when a and b are the same set).
fn kernel_sums(a: &Mat<f64>, b: &Mat<f64>) -> (f64, f64) {
    let d = a.ncols() as f64;
    let mut g = Mat::<f64>::zeros(a.nrows(), b.nrows());
    matmul(g.as_mut(), Accum::Replace, a.as_ref(), b.transpose(), 1.0, Par::rayon(0));
    let k = |v: f64| (v / d + 1.0).powi(3);
    let (mut total, mut diag) = (0.0, 0.0);
    for j in 0..g.ncols() {
        let mut column = 0.0;
        for i in 0..g.nrows() {
            column += k(g[(i, j)]);
        }
        total += column;
        if j < g.nrows() {
            diag += k(g[(j, j)]);
        }
    }
    (total, diag)
}

/// The unbiased MMD^2 with the polynomial kernel between two equally sized sets (`m x d`
/// each, float64), as torch-fidelity's `mmd2(K_XX, K_XY, K_YY)`.
pub fn mmd2_unbiased(x: &Mat<f64>, y: &Mat<f64>) -> f64 {
    let m = x.nrows() as f64;
    let (xx, xx_diag) = kernel_sums(x, x);
    let (yy, yy_diag) = kernel_sums(y, y);
    let (xy, _) = kernel_sums(x, y);
    ((xx - xx_diag) + (yy - yy_diag)) / (m * (m - 1.0)) - 2.0 * xy / (m * m)
}

/// KID between `generated` (`n_g x d`, row-major) and `real` (`n_r x d`): `subsets` subsets of
/// `subset_size` per side (clipped to the smaller side: see [`Kid::subset_size`]), drawn by
/// [`subset`] from `seed`.
pub fn kid(generated: &[f32], real: &[f32], d: usize, subsets: usize, subset_size: usize, seed: u64) -> Result<Kid, KidError> {
    if d == 0 || generated.len() % d != 0 || real.len() % d != 0 {
        return Err(KidError::Dimension(generated.len(), d));
    }
    kid_of_rows(generated.len() / d, real.len() / d, d, subsets, subset_size, seed, &mut |side, rows| {
        Ok(gather(if side == Side::Generated { generated } else { real }, d, rows))
    })
}

/// [`kid`] over `ng` generated and `nr` real features that `fetch` hands out by row index,
/// rows of `side` as a float64 `rows.len() x d` matrix: only the subsets are read (the features
/// may be in a file, [`crate::runtime::feature_store`]).
pub fn kid_of_rows(
    ng: usize,
    nr: usize,
    d: usize,
    subsets: usize,
    subset_size: usize,
    seed: u64,
    fetch: &mut dyn FnMut(Side, &[usize]) -> Result<Mat<f64>, KidError>,
) -> Result<Kid, KidError> {
    if subsets == 0 || subset_size < 2 {
        return Err(KidError::Options { subsets, subset_size });
    }
    if d == 0 {
        return Err(KidError::Dimension(0, d));
    }
    for (side, n) in [("generated", ng), ("real", nr)] {
        if n < 2 {
            return Err(KidError::TooFew { side, n });
        }
    }
    let m = subset_size.min(ng).min(nr);
    // Every subset is the whole set on both sides: the estimator is permutation-invariant, so
    // every subset gives this one value.
    if m == ng && m == nr {
        let all: Vec<usize> = (0..m).collect();
        let value = mmd2_unbiased(&fetch(Side::Generated, &all)?, &fetch(Side::Real, &all)?);
        return Ok(Kid { mean: value, std: 0.0, subsets, subset_size: m });
    }
    let mut values = Vec::with_capacity(subsets);
    for s in 0..subsets {
        let x = fetch(Side::Generated, &subset(seed, s, Side::Generated, ng, m))?;
        let y = fetch(Side::Real, &subset(seed, s, Side::Real, nr, m))?;
        values.push(mmd2_unbiased(&x, &y));
    }
    let (mean, std) = mean_std(&values);
    Ok(Kid { mean, std, subsets, subset_size: m })
}

/// Row-major `rows x d` float32 rows as a float64 matrix.
pub fn to_matrix(rows: &[f32], d: usize) -> Mat<f64> {
    Mat::from_fn(rows.len() / d.max(1), d, |i, j| f64::from(rows[i * d + j]))
}

/// Mean and population standard deviation (ddof = 0).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subsets_are_distinct_indices_and_deterministic() {
        let a = subset(7, 3, Side::Real, 50, 20);
        assert_eq!(a, subset(7, 3, Side::Real, 50, 20));
        assert_ne!(a, subset(7, 3, Side::Generated, 50, 20));
        assert_ne!(a, subset(7, 4, Side::Real, 50, 20));
        assert_ne!(a, subset(8, 3, Side::Real, 50, 20));
        let mut sorted = a.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 20);
        assert!(sorted.iter().all(|&i| i < 50));
        // Every index is drawn about equally often.
        let mut hits = [0u32; 10];
        for s in 0..2000 {
            for i in subset(1, s, Side::Generated, 10, 3) {
                hits[i] += 1;
            }
        }
        assert!(hits.iter().all(|&h| (500..700).contains(&h)), "{hits:?}");
    }

    #[test]
    fn identical_sets_give_a_negative_or_zero_estimate_and_shifts_raise_it() {
        // The same set on both sides: MMD^2_u = 2 (mean off-diagonal k - mean diagonal k) / m,
        // at most 0 because k(x, y) <= (k(x, x) + k(y, y)) / 2 for a positive definite kernel.
        let d = 4;
        let x: Vec<f32> = (0..40).map(|i| ((i * 7) % 11) as f32 / 11.0).collect();
        let same = kid(&x, &x, d, 1, 10, 0).unwrap();
        assert!(same.mean <= 1e-12, "{same:?}");
        let shifted: Vec<f32> = x.iter().map(|v| v + 1.0).collect();
        assert!(kid(&x, &shifted, d, 1, 10, 0).unwrap().mean > 0.1);
    }

    #[test]
    fn bad_options_and_small_sides_are_errors() {
        let x = vec![0.0f32; 8];
        assert_eq!(kid(&x, &x, 4, 0, 10, 0), Err(KidError::Options { subsets: 0, subset_size: 10 }));
        assert_eq!(kid(&x[..4], &x, 4, 1, 10, 0), Err(KidError::TooFew { side: "generated", n: 1 }));
        let k = kid(&x, &[x.clone(), x.clone()].concat(), 4, 5, 10, 0).unwrap();
        assert_eq!(k.subset_size, 2);
    }
}
