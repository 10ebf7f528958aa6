//! Which wider vector units this CPU has, for kernels that keep a second copy of their body
//! compiled for them. rcaflow is built for baseline x86-64 (SSE2: four f32 per instruction), so
//! its own loops vectorise only four wide, while gemm picks AVX2 or AVX-512 at run time.
//!
//! The pattern (fast_attention, group_norm's pass): the body is an `#[inline(always)]`
//! fn written with plain loops and `#[inline(always)]` helpers (a closure there would be one
//! function shared by both copies, compiled for the baseline); a `#[target_feature(enable =
//! "avx2,fma")]` fn calls it, and the entry point picks that copy when [`has_avx2_fma`]. A kernel
//! whose loops are sixteen lanes wide (fast_attention's) keeps a third, `avx512f` copy, picked
//! first when [`has_avx512f`].
//!
//! The results do not depend on which copy ran: Rust never contracts `a * b + c` into a fused
//! multiply-add on its own, so both copies do the same IEEE operations, only more per
//! instruction; reductions are written with a fixed number of lanes for the same reason.

/// Whether this CPU runs AVX2 and FMA (checked once, then cached by std).
#[inline]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether this CPU runs AVX-512F (sixteen f32 per instruction; it implies AVX2 and FMA).
#[inline]
pub fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
