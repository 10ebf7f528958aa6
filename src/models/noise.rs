//! Gaussian noise drawn on the host from a unit's seed (DESIGN.md §2): the initial x_T and the
//! variance noise of every sampler step. Host-side and counter-based, so a unit's noise is the
//! same on every device and in every order, and needs no device RNG (candle's CPU backend has no
//! seedable one).
//!
//! Stream `s` of seed `seed` is the sequence z_0, z_1, ... of standard normals from Box–Muller
//! on pairs of uniforms u_k = mix64(key + (k+1)·golden) >> 11 · 2^-53 with key = hash(seed, s);
//! x_T is stream 0, the noise of the k-th denoising step (k = 0 first) is stream k + 1.

use crate::units::mix64;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The stream of x_T.
pub const INITIAL_STREAM: u64 = 0;

/// The stream of the variance noise of denoising step `k` (0-based, in sampling order).
pub fn step_stream(k: usize) -> u64 {
    k as u64 + 1
}

/// `n` standard normal f32 values of stream `stream` of `seed`.
pub fn standard_normal(seed: u64, stream: u64, n: usize) -> Vec<f32> {
    let key = mix64(mix64(seed.wrapping_add(GOLDEN)) ^ stream.wrapping_mul(GOLDEN));
    let uniform = |k: u64| (mix64(key.wrapping_add(k.wrapping_add(1).wrapping_mul(GOLDEN))) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
    let mut out = Vec::with_capacity(n + 1);
    let mut k = 0u64;
    while out.len() < n {
        // Box–Muller in f64; 1 - u keeps the logarithm's argument in (0, 1].
        let (u1, u2) = (1.0 - uniform(k), uniform(k + 1));
        k += 2;
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        out.push((r * theta.cos()) as f32);
        out.push((r * theta.sin()) as f32);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_prefix_stable_and_distinct() {
        let a = standard_normal(42, INITIAL_STREAM, 1001);
        assert_eq!(a, standard_normal(42, INITIAL_STREAM, 1001));
        assert_eq!(a[..10], standard_normal(42, INITIAL_STREAM, 10)[..], "a prefix does not depend on n");
        assert_ne!(a[..10], standard_normal(42, step_stream(0), 10)[..]);
        assert_ne!(a[..10], standard_normal(43, INITIAL_STREAM, 10)[..]);
    }

    #[test]
    fn values_are_standard_normal() {
        let z = standard_normal(7, 3, 200_000);
        let n = z.len() as f64;
        let mean = z.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = z.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        let kurt = z.iter().map(|&v| (v as f64 - mean).powi(4)).sum::<f64>() / n / (var * var);
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "variance {var}");
        assert!((kurt - 3.0).abs() < 0.05, "kurtosis {kurt}");
        assert!(z.iter().all(|v| v.is_finite()));
    }
}
