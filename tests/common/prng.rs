//! The counter-based PRNG shared with the fixture scripts (scripts/make_resnet_fixtures.py
//! defines it; scripts/make_inception_fixtures.py imports it from there). This is its bit-exact
//! Rust port, so a parity test regenerates exactly the float32 weights (and uint8 images) the
//! Python reference was given. Keep the two in sync.
//!
//! ```text
//! seed(key) = FNV-1a 64 of the UTF-8 bytes of key
//! z_i       = splitmix64(seed + (i + 1) * 0x9E3779B97F4A7C15)   (wrapping u64, i = 0, 1, ...)
//! u_i       = (z_i >> 11) * 2**-53                               (f64 in [0, 1))
//! ```
//!
//! `common::prng` (tests/common/mod.rs).

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

pub fn fnv1a64(key: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

pub fn splitmix64(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` values `u_i` in [0, 1) (the script's `uniform01`).
pub fn uniform01(key: &str, n: usize) -> impl Iterator<Item = f64> {
    let seed = fnv1a64(key);
    (1..=n as u64).map(move |i| {
        let z = splitmix64(seed.wrapping_add(i.wrapping_mul(GOLDEN)));
        (z >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    })
}

/// `n` values `float32(lo + (hi - lo) * u_i)` (computed in f64; the script's `uniform_f32`).
pub fn uniform_f32(key: &str, n: usize, lo: f64, hi: f64) -> Vec<f32> {
    uniform01(key, n).map(|u| (lo + (hi - lo) * u) as f32).collect()
}

/// `n` bytes `floor(u_i * 256)` (at most 255 as `u_i <= 1 - 2**-53`; the script's `images_u8`,
/// flattened NCHW).
pub fn images_u8(key: &str, n: usize) -> Vec<u8> {
    uniform01(key, n).map(|u| (u * 256.0).floor() as u8).collect()
}
