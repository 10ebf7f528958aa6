//! GroupNorm (torch.nn.GroupNorm with affine weights), optionally followed by SiLU, as diffusers'
//! resnets and output head apply them (`norm -> silu`): the same keys and initial values as
//! candle-nn's `group_norm`, and for inference on the CPU one fused pass instead of candle's
//! nine (reshape, sum, sub, sqr, sum, add, sqrt, div, mul, add, then silu), each of which writes
//! a fresh tensor.
//!
//! The fused pass (f32, CPU, nothing tracking a gradient) works on one (image, group) slice per
//! task: the mean and the centred variance accumulated in f64 (two passes, as candle-nn and
//! ATen do; in eight interleaved partial sums, so they vectorise), then
//! `(x - mean) / sqrt(var + eps) * weight + bias` and SiLU in one sweep.
//! Anywhere else (training, other devices and dtypes) it is candle-nn's formula, op for op.
//! tests/fast_ops.rs checks the two against each other.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::cpu_input::contiguous_f32;
use super::{fast_exp, vector_isa};

/// `nn.GroupNorm(groups, channels, eps)` with its weight and bias.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    channels: usize,
    eps: f64,
}

/// candle-nn's `group_norm`: `weight` (initially 1) and `bias` (0) under `vb`.
pub fn group_norm(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    if groups == 0 || channels % groups != 0 {
        candle_core::bail!("group norm: {channels} channels cannot be split into {groups} groups");
    }
    let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
    Ok(GroupNorm { weight, bias, groups, channels, eps })
}

impl GroupNorm {
    /// GroupNorm of `x` (`[N, C, ...]`), then SiLU when `silu`.
    pub fn forward_act(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() < 3 || dims[1] != self.channels {
            candle_core::bail!("group norm of {} channels: got an input of shape {dims:?}", self.channels);
        }
        let tracked = x.track_op() || self.weight.track_op() || self.bias.track_op();
        if !x.device().is_cpu() || x.dtype() != DType::F32 || self.weight.dtype() != DType::F32 || tracked {
            let y = self.forward_candle(x)?;
            return if silu { y.silu() } else { Ok(y) };
        }
        let op = FusedGroupNorm { groups: self.groups, eps: self.eps, weight: self.weight.to_vec1()?, bias: self.bias.to_vec1()?, silu };
        x.contiguous()?.apply_op1_no_bwd(&op)
    }

    /// candle-nn 0.11's `GroupNorm::forward`, op for op (it has a backward).
    pub fn forward_candle(&self, x: &Tensor) -> Result<Tensor> {
        let x_shape = x.dims();
        let b_sz = x_shape[0];
        let hidden_size = x_shape[2..].iter().product::<usize>() * self.channels / self.groups;
        let x_dtype = x.dtype();
        let internal_dtype = match x_dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let x = x.reshape((b_sz, self.groups, hidden_size))?.to_dtype(internal_dtype)?;
        let mean_x = (x.sum_keepdim(2)? / hidden_size as f64)?;
        let x = x.broadcast_sub(&mean_x)?;
        let norm_x = (x.sqr()?.sum_keepdim(2)? / hidden_size as f64)?;
        let x_normed = x.broadcast_div(&(norm_x + self.eps)?.sqrt()?)?;
        let mut w_dims = vec![1; x_shape.len()];
        w_dims[1] = self.channels;
        let weight = self.weight.reshape(w_dims.clone())?;
        let bias = self.bias.reshape(w_dims)?;
        x_normed.to_dtype(x_dtype)?.reshape(x_shape)?.broadcast_mul(&weight)?.broadcast_add(&bias)
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, false)
    }
}

struct FusedGroupNorm {
    groups: usize,
    eps: f64,
    weight: Vec<f32>,
    bias: Vec<f32>,
    silu: bool,
}

impl CustomOp1 for FusedGroupNorm {
    fn name(&self) -> &'static str {
        "fused-group-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "fused group norm")?;
        let dims = layout.shape().dims();
        let channels = dims[1];
        let plane: usize = dims[2..].iter().product();
        let per_group = channels / self.groups;
        let group_len = per_group * plane;
        let mut out = vec![0f32; x.len()];
        if group_len == 0 {
            return Ok((CpuStorage::F32(out), layout.shape().clone()));
        }
        out.par_chunks_mut(group_len).zip(x.par_chunks(group_len)).enumerate().for_each(|(task, (dst, src))| {
            let channels = (task % self.groups) * per_group..(task % self.groups + 1) * per_group;
            let affine = (&self.weight[channels.clone()], &self.bias[channels]);
            normalise_group(src, dst, plane, affine, self.eps, self.silu);
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

/// One (image, group) slice `src` (`per_group` channel planes of `plane` values) normalised into
/// `dst` with its channels' `(weight, bias)`, then SiLU when `silu`; in the widest copy this CPU
/// runs (see [`vector_isa`]).
fn normalise_group(src: &[f32], dst: &mut [f32], plane: usize, affine: (&[f32], &[f32]), eps: f64, silu: bool) {
    #[cfg(target_arch = "x86_64")]
    if vector_isa::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { normalise_group_avx2(src, dst, plane, affine, eps, silu) };
    }
    normalise_group_body(src, dst, plane, affine, eps, silu)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn normalise_group_avx2(src: &[f32], dst: &mut [f32], plane: usize, affine: (&[f32], &[f32]), eps: f64, silu: bool) {
    normalise_group_body(src, dst, plane, affine, eps, silu)
}

#[inline(always)]
fn normalise_group_body(src: &[f32], dst: &mut [f32], plane: usize, (weight, bias): (&[f32], &[f32]), eps: f64, silu: bool) {
    let n = src.len() as f64;
    let mean = lane_sum(src) / n;
    let var = lane_sum_of_squares(src, mean) / n;
    let (mean, std) = (mean as f32, (var + eps).sqrt() as f32);
    for (c, (d, s)) in dst.chunks_exact_mut(plane).zip(src.chunks_exact(plane)).enumerate() {
        let (w, b) = (weight[c], bias[c]);
        // Two loops rather than a test per value, so each vectorises.
        if silu {
            for (o, &v) in d.iter_mut().zip(s) {
                let y = (v - mean) / std * w + b;
                *o = y / (1.0 + fast_exp::exp(-y));
            }
        } else {
            for (o, &v) in d.iter_mut().zip(s) {
                *o = (v - mean) / std * w + b;
            }
        }
    }
}

/// Lanes of [`lane_sum`] and [`lane_sum_of_squares`]: two AVX2 registers of f64, so consecutive adds do not wait on each
/// other.
const LANES: usize = 8;

/// `sum(v)` in f64 over [`LANES`] interleaved partial sums (a strict left-to-right float sum
/// cannot be vectorised); the order is fixed by the length alone.
#[inline(always)]
fn lane_sum(values: &[f32]) -> f64 {
    let mut acc = [0f64; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for i in 0..LANES {
            acc[i] += chunk[i] as f64;
        }
    }
    let mut sum = 0.0;
    for &a in acc.iter() {
        sum += a;
    }
    for &v in chunks.remainder() {
        sum += v as f64;
    }
    sum
}

/// `sum((v - centre)^2)` in f64, in the same lanes and order as [`lane_sum`].
#[inline(always)]
fn lane_sum_of_squares(values: &[f32], centre: f64) -> f64 {
    let mut acc = [0f64; LANES];
    let mut chunks = values.chunks_exact(LANES);
    for chunk in &mut chunks {
        for i in 0..LANES {
            let d = chunk[i] as f64 - centre;
            acc[i] += d * d;
        }
    }
    let mut sum = 0.0;
    for &a in acc.iter() {
        sum += a;
    }
    for &v in chunks.remainder() {
        let d = v as f64 - centre;
        sum += d * d;
    }
    sum
}
