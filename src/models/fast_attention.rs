//! Scaled dot-product attention for inference on the CPU, one head at a time:
//! `softmax(q k^T * scale) v` for `q`, `k`, `v` `[N, heads, tokens, head_dim]`, as diffusers'
//! `AttnProcessor2_0` (torch's `scaled_dot_product_attention`) computes it.
//!
//! Why: candle's ops materialise every head's scores at once (`[N, heads, T, T]`: 67 MB per
//! attention of the paper UNet at 16x16 and batch 16), then write them again scaled, and
//! `softmax` is five more passes. Here each (image, head) is one task: its `T x T` scores in a
//! per-thread buffer (256 KB at T = 256, in cache), one gemm, the scale and a numerically safe
//! softmax in place, one gemm into the output. Inference only: where a gradient is tracked,
//! on other devices and dtypes, [`attention`] is candle's ops. tests/fast_ops.rs checks the two
//! against each other.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{fast_exp, vector_isa};

/// `softmax(q k^T * scale, last dim) v`; `q`, `k`, `v` `[N, heads, tokens, head_dim]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let tracked = q.track_op() || k.track_op() || v.track_op();
    let f32s = [q, k, v].iter().all(|t| t.dtype() == DType::F32);
    if !q.device().is_cpu() || !f32s || tracked {
        return attention_candle(q, k, v, scale);
    }
    q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &FusedAttention { scale: scale as f32 })
}

/// The same with candle's ops (every device, with backward passes).
pub fn attention_candle(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?;
    candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(v)
}

struct FusedAttention {
    scale: f32,
}

/// The output pointer the tasks write their disjoint `[tokens, head_dim]` blocks through.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

thread_local! {
    /// This thread's scores buffer, kept between calls.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Lanes of the vectorised reductions below: one AVX2 register of f32 (two halves of AVX-512's).
const LANES: usize = 8;

/// Every `t`-long row of `scores` through [`softmax_scaled`], in the widest copy this CPU runs
/// (see [`vector_isa`]).
fn softmax_rows(scores: &mut [f32], t: usize, scale: f32) {
    #[cfg(target_arch = "x86_64")]
    if vector_isa::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { softmax_rows_avx2(scores, t, scale) };
    }
    softmax_rows_body(scores, t, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_rows_avx2(scores: &mut [f32], t: usize, scale: f32) {
    softmax_rows_body(scores, t, scale)
}

#[inline(always)]
fn softmax_rows_body(scores: &mut [f32], t: usize, scale: f32) {
    for row in scores.chunks_exact_mut(t) {
        softmax_scaled(row, scale);
    }
}

/// `row <- softmax(row * scale)`, numerically safe (the maximum subtracted first). The maximum
/// and the sum are taken over [`LANES`] interleaved partial results, so LLVM vectorises them
/// (a float sum in strict order cannot be); the maximum is exact in any order, and the sum's
/// order is fixed by the row length alone, so a row's result never depends on the batch.
#[inline(always)]
fn softmax_scaled(row: &mut [f32], scale: f32) {
    for s in row.iter_mut() {
        *s *= scale;
    }
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for i in 0..LANES {
            lanes[i] = if chunk[i] > lanes[i] { chunk[i] } else { lanes[i] };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for &v in lanes.iter().chain(chunks.remainder()) {
        max = max.max(v);
    }
    for s in row.iter_mut() {
        *s = fast_exp::exp(*s - max);
    }
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for i in 0..LANES {
            lanes[i] += chunk[i];
        }
    }
    let mut sum = 0f32;
    for &v in lanes.iter().chain(chunks.remainder()) {
        sum += v;
    }
    for s in row.iter_mut() {
        *s /= sum;
    }
}

impl CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) = (s1, s2, s3) else {
            candle_core::bail!("fused attention: expected f32 inputs")
        };
        let offsets = |l: &Layout| -> Result<(usize, usize)> {
            l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("fused attention: expected contiguous inputs".into()))
        };
        let ((q0, q1), (k0, k1), (v0, v1)) = (offsets(l1)?, offsets(l2)?, offsets(l3)?);
        let (q, k, v) = (&q[q0..q1], &k[k0..k1], &v[v0..v1]);
        let (n, heads, t, d) = l1.shape().dims4()?;
        if l2.shape().dims() != [n, heads, t, d] || l3.shape().dims() != [n, heads, t, d] {
            candle_core::bail!(
                "attention: q {:?}, k {:?} and v {:?} must have one shape",
                l1.shape().dims(),
                l2.shape().dims(),
                l3.shape().dims()
            );
        }
        let mut out = vec![0f32; n * heads * t * d];
        let dst = OutPtr(out.as_mut_ptr());
        let block = t * d;
        (0..n * heads).into_par_iter().for_each(|task| {
            let dst = dst;
            let (q, k, v) =
                (&q[task * block..(task + 1) * block], &k[task * block..(task + 1) * block], &v[task * block..(task + 1) * block]);
            SCORES.with(|buf| {
                let mut scores = buf.borrow_mut();
                if scores.len() < t * t {
                    scores.resize(t * t, 0.0);
                }
                let scores = &mut scores[..t * t];
                // SAFETY: the slices hold t x d (q, k, v) and t x t (scores) values with the
                // strides given; task `task` alone writes block `task` of `out`, which outlives
                // the loop.
                unsafe {
                    // scores [t, t] = q [t, d] @ k^T (k^T[i][j] = k[j][i]).
                    gemm::gemm(
                        t,
                        t,
                        d,
                        scores.as_mut_ptr(),
                        1,
                        t as isize,
                        false,
                        q.as_ptr(),
                        1,
                        d as isize,
                        k.as_ptr(),
                        d as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                softmax_rows(scores, t, self.scale);
                unsafe {
                    // out [t, d] = probs [t, t] @ v [t, d].
                    gemm::gemm(
                        t,
                        d,
                        t,
                        dst.0.add(task * block),
                        1,
                        d as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        t as isize,
                        v.as_ptr(),
                        1,
                        d as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            });
        });
        Ok((CpuStorage::F32(out), Shape::from((n, heads, t, d))))
    }
}
