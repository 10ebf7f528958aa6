//! LPIPS diversity bookkeeping (DESIGN.md §1): which pairs of same-class images are compared,
//! and the per-class means of their distances. The paper compares 1,000 pairs per class; when a
//! class has fewer distinct pairs than asked, every distinct pair is used.
//!
//! Pairs are chosen from positions (an image's index in its class's deterministic order), by a
//! seeded sample without replacement, so the same images are compared whatever order batches
//! arrive in, and a stage only needs to keep the images that belong to some pair.

use serde::{Deserialize, Serialize};

/// splitmix64: small, seedable and identical on every platform.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection so every value is equally likely.
    fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let v = self.next();
            if v < zone {
                return v % n;
            }
        }
    }
}

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

/// `wanted` distinct pairs `(i, j)`, `i < j < n`, sorted, chosen by a sample without replacement
/// seeded by `(seed, class)`; every pair when there are at most `wanted`.
pub fn plan_pairs(n: u64, wanted: usize, seed: u64, class: u32) -> Vec<(u64, u64)> {
    let total = distinct_pairs(n);
    if total <= wanted as u64 {
        return (0..total).map(pair_at).collect();
    }
    // Floyd's algorithm: `wanted` distinct indices of 0..total in O(wanted) draws.
    let mut rng = SplitMix(seed ^ (class as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    let mut chosen = std::collections::BTreeSet::new();
    for j in total - wanted as u64..total {
        let t = rng.below(j + 1);
        if !chosen.insert(t) {
            chosen.insert(j);
        }
    }
    chosen.into_iter().map(pair_at).collect()
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
        assert_eq!(plan_pairs(3, 1000, 0, 0), vec![(0, 1), (0, 2), (1, 2)]);
        assert!(plan_pairs(1, 1000, 0, 0).is_empty());
        assert!(plan_pairs(0, 1000, 0, 0).is_empty());
    }

    #[test]
    fn sampled_pairs_are_distinct_deterministic_and_class_specific() {
        let a = plan_pairs(5000, 1000, 7, 3);
        assert_eq!(a.len(), 1000);
        assert_eq!(a.iter().collect::<std::collections::BTreeSet<_>>().len(), 1000);
        assert!(a.iter().all(|&(i, j)| i < j && j < 5000));
        assert_eq!(a, plan_pairs(5000, 1000, 7, 3));
        assert_ne!(a, plan_pairs(5000, 1000, 7, 4));
        assert_ne!(a, plan_pairs(5000, 1000, 8, 3));
        // Every image has a fair chance: both halves of the class are used.
        assert!(a.iter().any(|&(_, j)| j >= 2500) && a.iter().any(|&(i, _)| i < 2500));
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
