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
//! it (diffusers allows that: `to_out.0` maps back to `C`). Written with matmul and
//! `candle_nn::ops::softmax` (composed of differentiable ops) rather than a fused kernel: candle
//! has no CPU scaled-dot-product attention, and training backpropagates through this.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::models::fast_attention::attention;
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
        })
    }

    /// `[N, HW, heads * head_dim]` to `[N, heads, HW, head_dim]`.
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (n, tokens, _) = x.dims3()?;
        x.reshape((n, tokens, self.heads, self.head_dim))?.transpose(1, 2)?.contiguous()
    }
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
        //    (One head's scores at a time for inference on the CPU: models::fast_attention.)
        let out = attention(&q, &k, &v, 1.0 / (self.head_dim as f64).sqrt())?;
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
