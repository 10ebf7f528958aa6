//! Spatial self-attention over the pixels of a feature map, as the 2D UNet blocks use it.
//!
//! Reference: diffusers 0.42 `models/attention_processor.py`: `Attention(channels,
//! heads=channels // attention_head_dim, dim_head=attention_head_dim, norm_num_groups=...,
//! residual_connection=True, bias=True, rescale_output_factor=..., _from_deprecated_attn_block=True)`
//! run by `AttnProcessor2_0` without a mask or encoder states:
//!
//! ```text
//! h = group_norm(x)                          (when the block gives it groups)
//! h = h.view(N, C, H*W).transpose(1, 2)      tokens = pixels
//! q, k, v = to_q(h), to_k(h), to_v(h)        [N, HW, heads * head_dim], split into heads
//! h = softmax(q k^T / sqrt(head_dim)) v      per head
//! h = to_out.0(h), back to [N, C, H, W]
//! out = (h + x) / rescale_output_factor
//! ```
//!
//! The inner width is `heads * head_dim`, which is less than `C` when `head_dim` does not divide
//! it (diffusers allows that: `to_out.0` maps back to `C`).
//!
//! Two paths, equal up to float rounding (the test below checks them against each other):
//! - Training, other devices and dtypes: the steps above with candle's ops (matmul and
//!   `candle_nn::ops::softmax`, which have backward passes).
//! - Inference on the CPU: the feature map stays channel-major. The three projections are one
//!   1x1 convolution (their weights stacked, made on the first such call and kept: an inference
//!   layer's weights never change), giving `[N, 3 * inner, HW]`; the attention runs on that
//!   layout (`models::fast_attention`); `to_out.0` is a 1x1 convolution with the residual in its
//!   epilogue. Tokens-first tensors, head splits and merges (seven copies of the feature map)
//!   are never made.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Module, Result, Tensor, TensorId};
use candle_nn::{Linear, VarBuilder};

use crate::models::fast_attention::{attention_candle, attention_channel_major};
use crate::models::fast_conv::{conv2d_fused, ConvParams, Epilogue};
use crate::models::group_norm::{group_norm, GroupNorm};

#[derive(Debug, Clone)]
pub(crate) struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
    rescale_output_factor: f64,
    /// The inference path's 1x1 kernels, made from the projections on its first call.
    as_convolutions: Arc<OnceLock<Convolutions>>,
}

/// The projections as 1x1 convolution kernels: `to_q`, `to_k`, `to_v` stacked
/// (`[3 * inner, C, 1, 1]` and their biases), and `to_out.0` (`[C, inner, 1, 1]`), with the id of
/// the `to_q` weight they were made from.
#[derive(Debug)]
struct Convolutions {
    made_from: TensorId,
    qkv_weight: Tensor,
    qkv_bias: Tensor,
    out_weight: Tensor,
    out_bias: Tensor,
}

impl Attention {
    /// `head_dim`: diffusers' `attention_head_dim` (heads = channels / head_dim, at least 1 as
    /// the config validation guarantees); `groups`: GroupNorm groups, `None` for no GroupNorm.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        head_dim: usize,
        groups: Option<usize>,
        eps: f64,
        rescale_output_factor: f64,
    ) -> Result<Self> {
        let heads = channels / head_dim;
        let inner = heads * head_dim;
        let group_norm = match groups {
            Some(g) => Some(group_norm(g, channels, eps, vb.pp("group_norm"))?),
            None => None,
        };
        Ok(Self {
            group_norm,
            to_q: candle_nn::linear(channels, inner, vb.pp("to_q"))?,
            to_k: candle_nn::linear(channels, inner, vb.pp("to_k"))?,
            to_v: candle_nn::linear(channels, inner, vb.pp("to_v"))?,
            to_out: candle_nn::linear(inner, channels, vb.pp("to_out").pp("0"))?,
            heads,
            head_dim,
            rescale_output_factor,
            as_convolutions: Arc::default(),
        })
    }

    /// Whether the inference path serves this call: on the CPU in f32, nothing tracking a
    /// gradient (a training variable always does, so kept kernels never go stale).
    fn inference_path(&self, x: &Tensor) -> bool {
        let linears = [&self.to_q, &self.to_k, &self.to_v, &self.to_out];
        let tracked = x.track_op() || linears.iter().any(|l| l.weight().track_op() || l.bias().is_some_and(Tensor::track_op));
        x.device().is_cpu() && x.dtype() == DType::F32 && linears.iter().all(|l| l.weight().dtype() == DType::F32) && !tracked
    }

    /// This layer's [`Convolutions`], made on the first call.
    fn convolutions(&self) -> Result<Convolutions> {
        let kernel = |l: &Linear| -> Result<Tensor> {
            let (out, inp) = l.weight().dims2()?;
            l.weight().reshape((out, inp, 1, 1))
        };
        let bias = |l: &Linear| -> Result<Tensor> {
            match l.bias() {
                Some(b) => Ok(b.clone()),
                None => Tensor::zeros(l.weight().dim(0)?, DType::F32, l.weight().device()),
            }
        };
        let (q, k, v) = (&self.to_q, &self.to_k, &self.to_v);
        Ok(Convolutions {
            made_from: q.weight().id(),
            qkv_weight: Tensor::cat(&[kernel(q)?, kernel(k)?, kernel(v)?], 0)?.contiguous()?,
            qkv_bias: Tensor::cat(&[bias(q)?, bias(k)?, bias(v)?], 0)?,
            out_weight: kernel(&self.to_out)?.contiguous()?,
            out_bias: bias(&self.to_out)?,
        })
    }

    /// The inference path (see the module header); `x` `[N, C, H, W]`.
    fn forward_channel_major(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let normed = match &self.group_norm {
            Some(gn) => gn.forward(x)?,
            None => x.clone(),
        };
        if self.as_convolutions.get().is_none() {
            // Made outside `get_or_init`: making them runs candle ops, which must not hold the
            // cell while a pool thread waits in it. Two calls that race both make them.
            let _ = self.as_convolutions.set(self.convolutions()?);
        }
        let made;
        let kernels = match self.as_convolutions.get() {
            Some(k) if k.made_from == self.to_q.weight().id() => k,
            _ => {
                made = self.convolutions()?;
                &made
            }
        };
        let inner = self.heads * self.head_dim;
        let one_by_one = ConvParams::new(1, (0, 0));
        let qkv =
            conv2d_fused(&normed, &kernels.qkv_weight, one_by_one, Epilogue { shift: Some(&kernels.qkv_bias), ..Default::default() })?;
        let attended =
            attention_channel_major(&qkv.reshape((n, 3 * inner, h * w))?, self.heads, self.head_dim, 1.0 / (self.head_dim as f64).sqrt())?;
        let out = conv2d_fused(
            &attended.reshape((n, inner, h, w))?,
            &kernels.out_weight,
            one_by_one,
            Epilogue { shift: Some(&kernels.out_bias), residual: Some(x), ..Default::default() },
        )?;
        debug_assert_eq!(out.dims(), [n, c, h, w]);
        if self.rescale_output_factor == 1.0 {
            Ok(out)
        } else {
            out / self.rescale_output_factor
        }
    }

    /// `[N, HW, heads * head_dim]` to `[N, heads, HW, head_dim]`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (n, tokens, _) = x.dims3()?;
        x.reshape((n, tokens, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()
    }

    /// The steps of the module header with candle's ops (training, other devices and dtypes).
    fn forward_tokens_first(&self, x: &Tensor) -> Result<Tensor> {
        let (n, c, h, w) = x.dims4()?;
        let normed = match &self.group_norm {
            Some(gn) => gn.forward(x)?,
            None => x.clone(),
        };
        // 1. Pixels become tokens: [N, HW, C].
        let tokens = normed.reshape((n, c, h * w))?.transpose(1, 2)?.contiguous()?;
        // 2. Projections, split into heads: [N, heads, HW, head_dim].
        let q = self.split_heads(&self.to_q.forward(&tokens)?)?;
        let k = self.split_heads(&self.to_k.forward(&tokens)?)?;
        let v = self.split_heads(&self.to_v.forward(&tokens)?)?;
        // 3. Scaled dot-product attention per head.
        let out = attention_candle(&q, &k, &v, 1.0 / (self.head_dim as f64).sqrt())?;
        // 4. Heads merged, output projection, back to [N, C, H, W].
        let out = out.transpose(1, 2)?.reshape((n, h * w, self.heads * self.head_dim))?;
        let out = self.to_out.forward(&out)?.transpose(1, 2)?.reshape((n, c, h, w))?;
        // 5. Residual connection and output rescaling.
        let out = (out + x)?;
        if self.rescale_output_factor == 1.0 {
            Ok(out)
        } else {
            out / self.rescale_output_factor
        }
    }
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.inference_path(x) {
            self.forward_channel_major(x)
        } else {
            self.forward_tokens_first(x)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{Device, Var};

    use super::*;

    /// A pseudo-random tensor (a fixed LCG: the test needs no other crate).
    fn random(seed: u64, shape: &[usize]) -> Tensor {
        let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn layer(channels: usize, head_dim: usize, groups: Option<usize>, rescale: f64) -> Attention {
        let inner = channels / head_dim * head_dim;
        let mut weights = HashMap::new();
        for (i, name) in ["to_q", "to_k", "to_v"].into_iter().enumerate() {
            weights.insert(format!("{name}.weight"), random(10 + i as u64, &[inner, channels]));
            weights.insert(format!("{name}.bias"), random(20 + i as u64, &[inner]));
        }
        weights.insert("to_out.0.weight".to_string(), random(30, &[channels, inner]));
        weights.insert("to_out.0.bias".to_string(), random(31, &[channels]));
        weights.insert("group_norm.weight".to_string(), random(40, &[channels]));
        weights.insert("group_norm.bias".to_string(), random(41, &[channels]));
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        Attention::new(vb, channels, head_dim, groups, 1e-5, rescale).unwrap()
    }

    #[test]
    fn the_inference_path_equals_candles_ops() {
        // The paper UNet's 16x16 level; a head width that does not divide the channels (inner
        // 24 of 30), no GroupNorm and a rescaled output; a 1x1 map.
        for (i, &(channels, head_dim, groups, rescale, side)) in
            [(128, 8, Some(32), 1.0, 16), (30, 8, Some(5), 2.0, 5), (16, 16, None, 1.0, 1)].iter().enumerate()
        {
            let layer = layer(channels, head_dim, groups, rescale);
            let x = random(i as u64, &[2, channels, side, side]);
            assert!(layer.inference_path(&x));
            let fast = layer.forward(&x).unwrap();
            let reference = layer.forward_tokens_first(&x).unwrap();
            let largest = |t: &Tensor| t.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            // Relative to the output's scale: random weights in [-1, 1] make values of tens.
            let diff = largest(&(&fast - &reference).unwrap()) / largest(&reference);
            assert!(diff < 1e-5, "case {i}: {diff}");
            // Kept kernels serve the next call.
            assert!(layer.as_convolutions.get().is_some());
        }
    }

    #[test]
    fn a_tracked_input_takes_candles_ops() {
        let layer = layer(16, 8, Some(4), 1.0);
        let x = Var::from_tensor(&random(7, &[1, 16, 4, 4])).unwrap();
        assert!(!layer.inference_path(x.as_tensor()));
        let grads = layer.forward(x.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(x.as_tensor()).is_some());
    }
}
