//! `exp` for f32 in a form LLVM vectorises: the softmax of the fused attention and the SiLU of
//! the fused GroupNorm call it once per element, and libm's `expf` (a call per value, never
//! vectorised) was a third of their time.
//!
//! The method is Cephes' `expf`, the one torch's vectorised `exp` (Sleef) also follows: write
//! `x = n ln2 + r` with `n` the nearest integer to `x / ln2` and ln2 split in two parts so `r`
//! is exact, evaluate a degree-6 polynomial for `exp(r)` on `[-ln2/2, ln2/2]`, and scale by
//! `2^n` through the exponent bits. Its error is at most 2 ulp of the true value (the unit
//! test checks against f64 on a dense grid). Below `-87.33` (where `exp` leaves the normal
//! range) it gives 0; above `88.37` it gives `exp(88.37)`, about 2.4e38, rather than
//! overflowing; NaN stays NaN.

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 = LN2_HI + LN2_LO, LN2_HI with few enough bits that `n * LN2_HI` is exact.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Cephes' minimax coefficients for (exp(r) - 1 - r) / r^2.
const P: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 5.000_000_1e-1];
/// Adding and subtracting 1.5 * 2^23 rounds a float of magnitude below 2^22 to the nearest
/// integer with plain arithmetic (vectorisable, unlike `round`, a libm call on baseline x86-64).
const ROUND: f32 = 12_582_912.0;
const LOWEST: f32 = -87.336_54;
const HIGHEST: f32 = 88.376_26;

/// `e^x`; see the module header for its accuracy and range.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(LOWEST, HIGHEST);
    let k = xc * LOG2E + ROUND;
    let n = k - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    // Horner's rule, written out: a closure here would be compiled once, for the baseline
    // (see `vector_isa`).
    let p = ((((P[0] * r + P[1]) * r + P[2]) * r + P[3]) * r + P[4]) * r + P[5];
    let y = p * r * r + r + 1.0;
    // n is within [-126, 127] after the clamp, so n + 127 is a normal exponent. k is exactly
    // ROUND + n, whose bits are ROUND's plus n: the exponent comes from those bits rather than
    // from `n as i32`, whose saturating conversion LLVM does not vectorise.
    let scale = f32::from_bits(k.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    if x < LOWEST {
        0.0
    } else {
        y * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The distance in ulps between `a` and the f32 nearest to `exact`.
    fn ulps(a: f32, exact: f64) -> u32 {
        (a.to_bits() as i64 - (exact as f32).to_bits() as i64).unsigned_abs() as u32
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_true_value_over_its_range() {
        let mut worst = 0;
        let steps = 2_000_000;
        for i in 0..=steps {
            let x = LOWEST + (HIGHEST - LOWEST) * i as f32 / steps as f32;
            worst = worst.max(ulps(exp(x), (x as f64).exp()));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
        for x in [0.0f32, -0.0, 1.0, -1.0, 1e-8, -1e-8, 0.5, -0.5, 10.0, -10.0, 80.0, -80.0] {
            assert!(ulps(exp(x), (x as f64).exp()) <= 2, "exp({x}) = {}, expected {}", exp(x), (x as f64).exp());
        }
    }

    #[test]
    fn exp_underflows_to_zero_saturates_high_and_keeps_nan() {
        assert_eq!(exp(-88.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(100.0).is_finite() && exp(100.0) > 2e38);
        assert!(exp(f32::NAN).is_nan());
    }
}
