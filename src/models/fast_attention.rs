//! Scaled dot-product attention for inference on the CPU, `softmax(q k^T * scale) v` per head as
//! diffusers' `AttnProcessor2_0` (torch's `scaled_dot_product_attention`) computes it, on
//! queries, keys and values laid out channel-major: `qkv` `[N, 3 * heads * head_dim, tokens]`
//! (q's rows, then k's, then v's, each head's `head_dim` rows together), which is what a 1x1
//! convolution over a feature map gives, so the UNet's attention needs no transposes around it
//! (`unet/attention.rs`). The result is `[N, heads * head_dim, tokens]`, channel-major too.
//!
//! Why: the paper UNet's heads are 8 wide (`attention_head_dim` 8: 16 heads of 256 tokens at
//! 16x16). As two gemms around a softmax, a head's `T x T` scores are written by a gemm with an
//! inner dimension of 8, read and rewritten by every softmax pass, then read by a second gemm:
//! the work is the scores' traffic, not arithmetic. Here each (image, head) is one task, and a
//! block of `ROWS` (4) query rows goes through scores, exponentials and the weighted sum of v
//! while its `ROWS x T` scores (4 KB at T = 256) stay in L1: the scores are keys-wide vectors
//! (`k` channel-major is `k^T`, its rows contiguous), each v row a dot product with them.
//!
//! Order of operations (it makes a row's result independent of the batch, the head count and
//! which copy of the kernel ran): a score is `sum_c (q[c] * scale) * k[c]` over `c` in order;
//! the maximum, the sum of exponentials and each output's dot product are taken over `LANES` (16)
//! interleaved partial results, folded in a fixed tree; the output is that dot product divided
//! by the sum. Inference only: where a gradient is tracked, on other devices and dtypes, it is
//! candle's ops ([`attention_candle`]); tests/fast_ops.rs checks the two against each other.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::cpu_input::contiguous_f32;
use super::fast_exp;
#[cfg(target_arch = "x86_64")]
use super::vector_isa;

/// Query rows whose scores are made together: each key vector loaded serves all of them.
const ROWS: usize = 4;

/// Lanes of the keys-wide vectors: one AVX-512 register of f32, two AVX2 ones.
const LANES: usize = 16;

/// `softmax(q k^T * scale, last dim) v` per head for `qkv` `[N, 3 * heads * head_dim, tokens]`
/// (see the module header); the result is `[N, heads * head_dim, tokens]`.
pub fn attention_channel_major(qkv: &Tensor, heads: usize, head_dim: usize, scale: f64) -> Result<Tensor> {
    let (_, rows, _) = qkv.dims3()?;
    if heads == 0 || head_dim == 0 || rows != 3 * heads * head_dim {
        candle_core::bail!(
            "attention: {heads} heads of {head_dim} channels need 3 x {} rows of queries, keys and values, got {rows}",
            heads * head_dim
        )
    }
    if !qkv.device().is_cpu() || qkv.dtype() != DType::F32 || qkv.track_op() {
        return attention_channel_major_candle(qkv, heads, head_dim, scale);
    }
    qkv.contiguous()?.apply_op1_no_bwd(&ChannelMajorAttention { heads, head_dim, scale: scale as f32 })
}

/// [`attention_channel_major`] with candle's ops (every device, with backward passes).
pub fn attention_channel_major_candle(qkv: &Tensor, heads: usize, head_dim: usize, scale: f64) -> Result<Tensor> {
    let (n, _, tokens) = qkv.dims3()?;
    let qkv = qkv.reshape((n, 3, heads, head_dim, tokens))?;
    // [N, heads, tokens, head_dim] each.
    let part = |i: usize| qkv.narrow(1, i, 1)?.squeeze(1)?.transpose(2, 3)?.contiguous();
    let out = attention_candle(&part(0)?, &part(1)?, &part(2)?, scale)?;
    out.transpose(2, 3)?.reshape((n, heads * head_dim, tokens))
}

/// `softmax(q k^T * scale, last dim) v` with candle's ops; `q`, `k`, `v`
/// `[N, heads, tokens, head_dim]`.
pub fn attention_candle(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?;
    candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(v)
}

struct ChannelMajorAttention {
    heads: usize,
    head_dim: usize,
    scale: f32,
}

/// The output pointer the tasks write their disjoint `[head_dim, tokens]` blocks through.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

thread_local! {
    /// This thread's scores of a block of rows and their scaled queries, kept between calls.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl CustomOp1 for ChannelMajorAttention {
    fn name(&self) -> &'static str {
        "channel-major-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "fused attention")?;
        let (n, _, t) = layout.shape().dims3()?;
        let (heads, d) = (self.heads, self.head_dim);
        let inner = heads * d;
        let mut out = vec![0f32; n * inner * t];
        let dst = OutPtr(out.as_mut_ptr());
        let block = d * t;
        (0..n * heads).into_par_iter().for_each(|task| {
            let dst = dst;
            let (image, head) = (task / heads, task % heads);
            let qkv = &x[image * 3 * inner * t..(image + 1) * 3 * inner * t];
            let part = |i: usize| &qkv[(i * heads + head) * block..(i * heads + head + 1) * block];
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let need = ROWS * t + ROWS * d;
                if scratch.len() < need {
                    scratch.resize(need, 0.0);
                }
                let (scores, queries) = scratch[..need].split_at_mut(ROWS * t);
                let head = Head { q: part(0), k: part(1), v: part(2), tokens: t, dim: d, scale: self.scale };
                // SAFETY: task `task` alone writes block `task` of `out` (image `image`, head
                // `head`: `d x t` values), which outlives the loop.
                unsafe { head.attend(scores, queries, dst.0.add(task * block)) };
            });
        });
        Ok((CpuStorage::F32(out), Shape::from((n, inner, t))))
    }
}

/// One (image, head): `q`, `k`, `v` `[dim, tokens]` each.
struct Head<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    tokens: usize,
    dim: usize,
    scale: f32,
}

impl Head<'_> {
    /// Every query row's output into `out` (`[dim, tokens]`), in the widest copy this CPU runs
    /// (see `vector_isa`); `scores` holds `ROWS * tokens` values, `queries` `ROWS * dim`.
    ///
    /// # Safety
    /// `out` must be valid for `dim * tokens` writes.
    unsafe fn attend(&self, scores: &mut [f32], queries: &mut [f32], out: *mut f32) {
        #[cfg(target_arch = "x86_64")]
        {
            if vector_isa::has_avx512f() {
                // SAFETY: the CPU has AVX-512F.
                return unsafe { self.attend_avx512(scores, queries, out) };
            }
            if vector_isa::has_avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA.
                return unsafe { self.attend_avx2(scores, queries, out) };
            }
        }
        unsafe { self.attend_body(scores, queries, out) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn attend_avx512(&self, scores: &mut [f32], queries: &mut [f32], out: *mut f32) {
        unsafe { self.attend_body(scores, queries, out) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn attend_avx2(&self, scores: &mut [f32], queries: &mut [f32], out: *mut f32) {
        unsafe { self.attend_body(scores, queries, out) }
    }

    #[inline(always)]
    unsafe fn attend_body(&self, scores: &mut [f32], queries: &mut [f32], out: *mut f32) {
        let t = self.tokens;
        let mut first = 0;
        while first < t {
            let rows = ROWS.min(t - first);
            // queries[c * ROWS + r]: row first + r's query, scaled; a last block's missing
            // rows are zeros, whose scores are made and never used.
            for c in 0..self.dim {
                for r in 0..ROWS {
                    queries[c * ROWS + r] = if r < rows { self.q[c * t + first + r] * self.scale } else { 0.0 };
                }
            }
            self.block_scores(queries, scores);
            let mut sums = [1f32; ROWS];
            for (r, sum) in sums.iter_mut().enumerate().take(rows) {
                *sum = exponentials(&mut scores[r * t..(r + 1) * t]);
            }
            for c in 0..self.dim {
                let totals = self.weighted_sums(scores, &self.v[c * t..(c + 1) * t]);
                for r in 0..rows {
                    // SAFETY: c < dim and first + r < tokens.
                    unsafe { *out.add(c * t + first + r) = totals[r] / sums[r] };
                }
            }
            first += rows;
        }
    }

    /// `scores[r * tokens + j] = sum_c queries[c * ROWS + r] * k[c][j]` for the block's rows.
    #[inline(always)]
    fn block_scores(&self, queries: &[f32], scores: &mut [f32]) {
        let (t, d) = (self.tokens, self.dim);
        assert!(self.k.len() >= d * t && queries.len() >= d * ROWS && scores.len() >= ROWS * t);
        let full = t - t % LANES;
        for j in (0..full).step_by(LANES) {
            let mut acc = [[0f32; LANES]; ROWS];
            for c in 0..d {
                // SAFETY: c < d and j + LANES <= t (the assert above bounds every index).
                let keys = unsafe { lanes_at(self.k, c * t + j) };
                for r in 0..ROWS {
                    let q = unsafe { *queries.get_unchecked(c * ROWS + r) };
                    for l in 0..LANES {
                        acc[r][l] += q * keys[l];
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                scores[r * t + j..r * t + j + LANES].copy_from_slice(acc);
            }
        }
        for j in full..t {
            for r in 0..ROWS {
                let mut s = 0f32;
                for c in 0..d {
                    s += queries[c * ROWS + r] * self.k[c * t + j];
                }
                scores[r * t + j] = s;
            }
        }
    }

    /// `sum_j scores[r * tokens + j] * values[j]` for each of the block's rows.
    #[inline(always)]
    fn weighted_sums(&self, scores: &[f32], values: &[f32]) -> [f32; ROWS] {
        let t = self.tokens;
        let full = t - t % LANES;
        assert!(values.len() >= t && scores.len() >= ROWS * t);
        let mut acc = [[0f32; LANES]; ROWS];
        for j in (0..full).step_by(LANES) {
            // SAFETY: j + LANES <= t and r < ROWS (the assert above bounds every index).
            let v = unsafe { lanes_at(values, j) };
            for r in 0..ROWS {
                let p = unsafe { lanes_at(scores, r * t + j) };
                for l in 0..LANES {
                    acc[r][l] += p[l] * v[l];
                }
            }
        }
        let mut totals = [0f32; ROWS];
        for r in 0..ROWS {
            totals[r] = fold(acc[r]);
            for j in full..t {
                totals[r] += scores[r * t + j] * values[j];
            }
        }
        totals
    }
}

/// `row <- exp(row - max(row))`, returning the sum of the new values: softmax's numerators and
/// denominator, numerically safe.
#[inline(always)]
fn exponentials(row: &mut [f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            lanes[l] = if chunk[l] > lanes[l] { chunk[l] } else { lanes[l] };
        }
    }
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            lanes[l] = if lanes[l + half] > lanes[l] { lanes[l + half] } else { lanes[l] };
        }
        half /= 2;
    }
    let mut max = lanes[0];
    for &v in chunks.remainder() {
        max = if v > max { v } else { max };
    }
    let mut lanes = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for l in 0..LANES {
            chunk[l] = fast_exp::exp(chunk[l] - max);
            lanes[l] += chunk[l];
        }
    }
    let mut sum = fold(lanes);
    for s in chunks.into_remainder() {
        *s = fast_exp::exp(*s - max);
        sum += *s;
    }
    sum
}

/// `LANES` values from `at` on.
///
/// # Safety
/// `at + LANES <= values.len()`.
#[inline(always)]
unsafe fn lanes_at(values: &[f32], at: usize) -> &[f32; LANES] {
    debug_assert!(at + LANES <= values.len());
    unsafe { &*(values.as_ptr().add(at) as *const [f32; LANES]) }
}

/// The sum of `lanes` folded in halves (lane l with lane l + 8, then + 4, + 2, + 1): a fixed
/// order, in a few vector adds.
#[inline(always)]
fn fold(mut lanes: [f32; LANES]) -> f32 {
    let mut half = LANES / 2;
    while half > 0 {
        for l in 0..half {
            lanes[l] += lanes[l + half];
        }
        half /= 2;
    }
    lanes[0]
}
