//! A small seeded generator for data generation, splits and augmentation.
//!
//! splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014),
//! built on [`crate::units::mix64`]. Streams are keyed by a tuple of integers (seed,
//! class, image index, ...) so that what one image gets never depends on the order in which
//! images are made: regenerating one class alone gives the same files.

use crate::units::mix64;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64 state.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A stream keyed by `keys` (order matters).
    pub fn keyed(keys: &[u64]) -> Self {
        let state = keys.iter().fold(0x5DEE_CE66_D1CE_4E5Bu64, |acc, &k| mix64(acc ^ k.wrapping_mul(GOLDEN)).wrapping_add(GOLDEN));
        Self { state }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN);
        mix64(self.state)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in 0..n (n > 0); the modulo bias is below 2^-40 for any n used here.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_streams_are_deterministic_and_distinct() {
        let draw = |keys: &[u64]| {
            let mut r = Rng::keyed(keys);
            (0..4).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(&[1, 2]), draw(&[1, 2]));
        assert_ne!(draw(&[1, 2]), draw(&[2, 1]));
        assert_ne!(draw(&[1, 2]), draw(&[1, 3]));
        let mut r = Rng::keyed(&[9]);
        let u: Vec<f64> = (0..10_000).map(|_| r.uniform()).collect();
        let mean = u.iter().sum::<f64>() / u.len() as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        assert!(u.iter().all(|&x| (0.0..1.0).contains(&x)));
    }

    #[test]
    fn shuffle_is_a_permutation() {
        let mut v: Vec<usize> = (0..50).collect();
        Rng::keyed(&[3]).shuffle(&mut v);
        assert_ne!(v, (0..50).collect::<Vec<_>>());
        v.sort();
        assert_eq!(v, (0..50).collect::<Vec<_>>());
    }
}
