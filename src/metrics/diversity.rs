//! LPIPS diversity bookkeeping (DESIGN.md §1): which pairs of same-class images are compared,
//! and the per-class means of their distances. The paper compares 1,000 pairs per class; when a
//! class has fewer distinct pairs than asked, every distinct pair is used.
//!
//! Pairs are chosen from positions (an image's index in its class's deterministic order:
//! file-name order for folders, unit order for the sampler): every distinct pair when a class has
//! no more than asked, otherwise the disjoint pairs (0,1), (2,3), ... So the same images are
//! compared whatever order batches arrive in, and a stage only keeps the first image of a pair
//! until its partner arrives.

use serde::{Deserialize, Serialize};

/// Number of distinct unordered pairs among `n` images.
pub fn distinct_pairs(n: u64) -> u64 {
    n.saturating_mul(n.saturating_sub(1)) / 2
}

/// The `k`-th pair (0-based) in the order (0,1), (0,2), (1,2), (0,3), (1,3), (2,3), ...
fn pair_at(k: u64) -> (u64, u64) {
    // j is the largest integer with j(j-1)/2 <= k.
    let mut j = ((1.0 + (1.0 + 8.0 * k as f64).sqrt()) / 2.0).floor() as u64;
    while distinct_pairs(j) > k {
        j -= 1;
    }
    while distinct_pairs(j + 1) <= k {
        j += 1;
    }
    (k - distinct_pairs(j), j)
}

/// The pairs compared among the `n` images of a class when `wanted` are asked: all distinct
/// pairs `(i, j)`, `i < j`, when there are at most `wanted`; otherwise the disjoint pairs
/// `(2m, 2m + 1)` for `m < wanted` (and `2m + 1 < n`), in within-class order.
pub fn plan_pairs(n: u64, wanted: usize) -> Vec<(u64, u64)> {
    if distinct_pairs(n) <= wanted as u64 {
        return (0..distinct_pairs(n)).map(pair_at).collect();
    }
    (0..(wanted as u64).min(n / 2)).map(|m| (2 * m, 2 * m + 1)).collect()
}

/// Sum and count of pair distances per class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DiversityState {
    pub sum: Vec<f64>,
    pub count: Vec<u64>,
}

/// The reported figure: mean distance per class, and over all pairs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Diversity {
    /// Mean over every pair compared (all classes).
    pub mean: Option<f64>,
    /// Mean per class; `None` for a class with no pair (fewer than 2 images).
    pub per_class: Vec<Option<f64>>,
    pub pairs_per_class: Vec<u64>,
}

impl DiversityState {
    pub fn new(classes: usize) -> Self {
        DiversityState { sum: vec![0.0; classes], count: vec![0; classes] }
    }

    pub fn add(&mut self, class: usize, distance: f64) {
        self.sum[class] += distance;
        self.count[class] += 1;
    }

    pub fn finish(&self) -> Diversity {
        let total: u64 = self.count.iter().sum();
        Diversity {
            mean: (total > 0).then(|| self.sum.iter().sum::<f64>() / total as f64),
            per_class: self.sum.iter().zip(&self.count).map(|(s, &c)| (c > 0).then(|| s / c as f64)).collect(),
            pairs_per_class: self.count.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_order_enumerates_every_pair_once() {
        let pairs: Vec<_> = (0..distinct_pairs(6)).map(pair_at).collect();
        assert_eq!(pairs.len(), 15);
        let set: std::collections::BTreeSet<_> = pairs.iter().copied().collect();
        assert_eq!(set.len(), 15);
        assert!(pairs.iter().all(|&(i, j)| i < j && j < 6));
        assert_eq!(pair_at(0), (0, 1));
        assert_eq!(pair_at(3), (0, 3));
        assert_eq!(pair_at(14), (4, 5));
        // Large indices decode exactly (no float rounding at the triangular boundaries).
        let n = 5_000_000u64;
        assert_eq!(pair_at(distinct_pairs(n) - 1), (n - 2, n - 1));
        assert_eq!(pair_at(distinct_pairs(n)), (0, n));
    }

    #[test]
    fn few_images_use_all_distinct_pairs() {
        assert_eq!(plan_pairs(3, 1000), vec![(0, 1), (0, 2), (1, 2)]);
        assert!(plan_pairs(1, 1000).is_empty());
        assert!(plan_pairs(0, 1000).is_empty());
    }

    #[test]
    fn many_images_use_disjoint_consecutive_pairs() {
        // The paper's setting: 5,000 images, 1,000 pairs.
        let a = plan_pairs(5000, 1000);
        assert_eq!(a.len(), 1000);
        assert_eq!(a[0], (0, 1));
        assert_eq!(a[999], (1998, 1999));
        // More pairs asked than disjoint pairs exist (but fewer than all distinct pairs): n/2.
        assert_eq!(plan_pairs(101, 1000), (0..50).map(|m| (2 * m, 2 * m + 1)).collect::<Vec<_>>());
        // Exactly as many distinct pairs as asked: all of them.
        assert_eq!(plan_pairs(5, 10).len(), 10);
        assert_eq!(plan_pairs(5, 9), vec![(0, 1), (2, 3)]);
    }

    #[test]
    fn means_per_class_and_overall() {
        let mut s = DiversityState::new(3);
        s.add(0, 0.2);
        s.add(0, 0.4);
        s.add(2, 0.9);
        let d = s.finish();
        assert!((d.mean.unwrap() - 0.5).abs() < 1e-12);
        assert!((d.per_class[0].unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(d.per_class[1], None);
        assert_eq!(d.pairs_per_class, vec![2, 0, 1]);
        assert_eq!(DiversityState::new(2).finish().mean, None);
    }
}
