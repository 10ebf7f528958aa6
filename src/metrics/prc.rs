//! Precision and recall of a generated distribution (Kynkaanniemi et al. 2019) as torch-fidelity
//! 0.4 computes them (`torch_fidelity/metric_prc.py`, `prc_features_to_metric`), and density and
//! coverage (Naeem et al. 2020) as the authors' `prdc` package computes them, from the same
//! distances.
//!
//! - The k-NN radius of a point is the (k+1)-th smallest Euclidean distance from it to the
//!   points of its own set, itself (distance 0) included (`kthvalue(k + 1)`).
//! - precision = fraction of generated points within (`<=`) the radius of at least one real
//!   point; recall = fraction of real points within (`<=`) the radius of at least one generated
//!   point (torch-fidelity; prdc uses `<`, which differs only on ties).
//! - density = (1/k) mean over generated points of the number of real points whose radius
//!   strictly contains them (`<`); coverage = fraction of real points whose radius strictly
//!   contains (`<`) their nearest generated point (prdc).
//!
//! Distances: float64, as `torch.cdist` computes them for more than 25 rows
//! (`sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0))`), block by block, so memory stays
//! O(block x n) whatever the set sizes. On float64 copies of the float32 features this gives
//! torch-fidelity's counts exactly (tests/kid_prc_maths.rs, ties included); torch-fidelity on
//! float32 tensors rounds its distances to float32 and can flip near-ties. The counts are kept
//! as integers: torch-fidelity's value is `count / n` in float32.

use faer::{linalg::matmul::matmul, Accum, Mat, Par};
use serde::{Deserialize, Serialize};

/// Rows per distance block (a block is `BLOCK x BLOCK` float64: 2 MB).
const BLOCK: usize = 512;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrcError {
    #[error("feature dimensions differ: {0} values for width {1}")]
    Dimension(usize, usize),
    #[error("{side} side has {n} features, k = {k} needs at least k + 1")]
    TooFew { side: &'static str, n: usize, k: usize },
    #[error("k must be at least 1, found {0}")]
    K(usize),
}

/// The four figures and the counts behind them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prdc {
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
    pub k: usize,
    pub real_images: usize,
    pub generated_images: usize,
    /// Generated points inside the real manifold (precision's numerator).
    pub precise: usize,
    /// Real points inside the generated manifold (recall's numerator).
    pub recalled: usize,
    /// Real points whose radius strictly holds a generated point (coverage's numerator).
    pub covered: usize,
}

/// Float64 rows and their squared norms.
struct Rows {
    x: Mat<f64>,
    norms: Vec<f64>,
}

impl Rows {
    fn new(x: &[f32], d: usize) -> Rows {
        let n = x.len() / d;
        let x = Mat::from_fn(n, d, |i, j| f64::from(x[i * d + j]));
        let norms = (0..n).map(|i| (0..d).map(|j| x[(i, j)] * x[(i, j)]).sum()).collect();
        Rows { x, norms }
    }

    fn n(&self) -> usize {
        self.x.nrows()
    }
}

/// Calls `f(i, j, distance)` for every pair of rows of `a` and `b`, block by block.
fn for_each_distance(a: &Rows, b: &Rows, mut f: impl FnMut(usize, usize, f64)) {
    let mut g = Mat::<f64>::zeros(BLOCK, BLOCK);
    for i0 in (0..a.n()).step_by(BLOCK) {
        let ni = BLOCK.min(a.n() - i0);
        for j0 in (0..b.n()).step_by(BLOCK) {
            let nj = BLOCK.min(b.n() - j0);
            let mut block = g.as_mut().submatrix_mut(0, 0, ni, nj);
            let (ar, br) = (a.x.as_ref().subrows(i0, ni), b.x.as_ref().subrows(j0, nj));
            matmul(block.as_mut(), Accum::Replace, ar, br.transpose(), 1.0, Par::rayon(0));
            for j in 0..nj {
                for i in 0..ni {
                    let sq = a.norms[i0 + i] + b.norms[j0 + j] - 2.0 * block[(i, j)];
                    f(i0 + i, j0 + j, sq.max(0.0).sqrt());
                }
            }
        }
    }
}

/// Each row's (k+1)-th smallest distance to the rows of its own set, itself included.
fn radii(x: &Rows, k: usize) -> Vec<f64> {
    // The k + 1 smallest so far per row, ascending.
    let mut smallest = vec![Vec::<f64>::with_capacity(k + 2); x.n()];
    for_each_distance(x, x, |i, _, dist| {
        let row = &mut smallest[i];
        if row.len() <= k || dist < row[k] {
            let at = row.partition_point(|&v| v <= dist);
            row.insert(at, dist);
            row.truncate(k + 1);
        }
    });
    smallest.into_iter().map(|row| row[k]).collect()
}

/// Precision, recall, density and coverage of `generated` against `real` (row-major, `d`
/// wide) with k-NN radii of `k`.
pub fn prdc(generated: &[f32], real: &[f32], d: usize, k: usize) -> Result<Prdc, PrcError> {
    if k == 0 {
        return Err(PrcError::K(k));
    }
    if d == 0 || generated.len() % d != 0 || real.len() % d != 0 {
        return Err(PrcError::Dimension(generated.len().max(real.len()), d));
    }
    let (gen, real) = (Rows::new(generated, d), Rows::new(real, d));
    for (side, n) in [("generated", gen.n()), ("real", real.n())] {
        if n <= k {
            return Err(PrcError::TooFew { side, n, k });
        }
    }
    let (gen_radii, real_radii) = (radii(&gen, k), radii(&real, k));
    let mut precise = vec![false; gen.n()];
    let mut density_hits = 0u64;
    let mut recalled = vec![false; real.n()];
    let mut covered = vec![false; real.n()];
    for_each_distance(&gen, &real, |g, r, dist| {
        precise[g] |= dist <= real_radii[r];
        recalled[r] |= dist <= gen_radii[g];
        let strictly_inside = dist < real_radii[r];
        density_hits += u64::from(strictly_inside);
        covered[r] |= strictly_inside;
    });
    let count = |v: &[bool]| v.iter().filter(|&&b| b).count();
    let (precise, recalled, covered) = (count(&precise), count(&recalled), count(&covered));
    let (ng, nr) = (gen.n() as f64, real.n() as f64);
    Ok(Prdc {
        precision: precise as f64 / ng,
        recall: recalled as f64 / nr,
        density: density_hits as f64 / (k as f64 * ng),
        coverage: covered as f64 / nr,
        k,
        real_images: real.n(),
        generated_images: gen.n(),
        precise,
        recalled,
        covered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force: every distance, sorted.
    fn brute(gen: &[[f32; 2]], real: &[[f32; 2]], k: usize) -> (usize, usize, f64, usize) {
        let dist = |a: &[f32; 2], b: &[f32; 2]| (((a[0] - b[0]) as f64).powi(2) + ((a[1] - b[1]) as f64).powi(2)).sqrt();
        let radius = |set: &[[f32; 2]], p: &[f32; 2]| {
            let mut d: Vec<f64> = set.iter().map(|q| dist(p, q)).collect();
            d.sort_by(f64::total_cmp);
            d[k]
        };
        let rr: Vec<f64> = real.iter().map(|p| radius(real, p)).collect();
        let rg: Vec<f64> = gen.iter().map(|p| radius(gen, p)).collect();
        let precise = gen.iter().filter(|g| real.iter().zip(&rr).any(|(r, &rad)| dist(g, r) <= rad)).count();
        let recalled = real.iter().filter(|r| gen.iter().zip(&rg).any(|(g, &rad)| dist(r, g) <= rad)).count();
        let hits: usize = gen.iter().map(|g| real.iter().zip(&rr).filter(|(r, &rad)| dist(g, r) < rad).count()).sum();
        let covered = real.iter().zip(&rr).filter(|(r, &rad)| gen.iter().any(|g| dist(r, g) < rad)).count();
        (precise, recalled, hits as f64 / (k * gen.len()) as f64, covered)
    }

    #[test]
    fn block_computation_equals_brute_force_across_block_edges() {
        // More rows than one block, small integer coordinates: exact distances, many ties.
        let point = |i: usize, a: usize, b: usize| [((i * a) % 13) as f32, ((i * b + 3) % 7) as f32];
        let gen: Vec<[f32; 2]> = (0..BLOCK + 37).map(|i| point(i, 5, 3)).collect();
        let real: Vec<[f32; 2]> = (0..BLOCK / 2 + 5).map(|i| point(i, 7, 2)).map(|p| [p[0] * 0.5 + 2.0, p[1]]).collect();
        let flat = |s: &[[f32; 2]]| s.iter().flatten().copied().collect::<Vec<f32>>();
        let r = prdc(&flat(&gen), &flat(&real), 2, 3).unwrap();
        let (precise, recalled, density, covered) = brute(&gen, &real, 3);
        assert_eq!((r.precise, r.recalled, r.covered), (precise, recalled, covered));
        assert!((r.density - density).abs() < 1e-15, "{} vs {density}", r.density);
    }

    #[test]
    fn identical_sets_are_fully_precise_and_recalled() {
        let x: Vec<f32> = (0..60).map(|i| ((i * 37) % 17) as f32 * 0.3).collect();
        let r = prdc(&x, &x, 3, 3).unwrap();
        assert_eq!((r.precision, r.recall, r.coverage), (1.0, 1.0, 1.0));
    }

    #[test]
    fn too_few_points_and_k_zero_are_errors() {
        let x = vec![0.5f32; 6];
        assert_eq!(prdc(&x, &x, 2, 3), Err(PrcError::TooFew { side: "generated", n: 3, k: 3 }));
        assert_eq!(prdc(&x, &x, 2, 0), Err(PrcError::K(0)));
    }
}
