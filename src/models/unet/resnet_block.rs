//! The UNet's residual block, conditioned on the time embedding.
//!
//! Reference: diffusers 0.42 `models/resnet.py` `ResnetBlock2D` as the 2D UNet blocks build it:
//! `pre_norm=True`, `skip_time_act=False`, `conv_shortcut=False` (a 1x1 `conv_shortcut` exactly
//! when the channel count changes), `groups_out = groups`, `kernel=None` (so `up` / `down` mean
//! nearest x2 / 2x2 average pooling), and `time_embedding_norm` "default" or "scale_shift".
//!
//! ```text
//! h = silu(norm1(x));  if up/down: resample x and h
//! h = conv1(h)
//! t = time_emb_proj(silu(temb))[:, :, None, None]
//! default:      h = norm2(h + t)
//! scale_shift:  (scale, shift) = t.chunk(2, dim=1);  h = norm2(h) * (1 + scale) + shift
//! h = conv2(dropout(silu(h)))
//! out = (conv_shortcut(x) or x + h) / output_scale_factor
//! ```

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, Linear, VarBuilder};

use crate::models::conv_grad::{conv2d, Conv2d};
use crate::models::group_norm::{group_norm, GroupNorm};

use super::config::TimeShift;
use super::resample::{avg_pool_2x, nearest_2x};

/// What a resnet block does to the resolution (`up=True` / `down=True` in diffusers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resample {
    None,
    Up,
    Down,
}

/// Hyper-parameters shared by every resnet of a model.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResnetParams {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub time_shift: TimeShift,
    pub output_scale_factor: f64,
    pub dropout: f64,
}

/// diffusers' `ResnetBlock2D` (see the module docs).
#[derive(Debug, Clone)]
pub(crate) struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    resample: Resample,
    time_shift: TimeShift,
    output_scale_factor: f64,
    dropout: f32,
}

impl ResnetBlock2D {
    pub fn new(vb: VarBuilder, in_channels: usize, out_channels: usize, p: &ResnetParams, resample: Resample) -> Result<Self> {
        let conv3 = Conv2dConfig { padding: 1, ..Default::default() };
        let proj_out = match p.time_shift {
            TimeShift::Default => out_channels,
            TimeShift::ScaleShift => 2 * out_channels,
        };
        let conv_shortcut = if in_channels != out_channels {
            Some(conv2d(in_channels, out_channels, 1, Conv2dConfig::default(), vb.pp("conv_shortcut"))?)
        } else {
            None
        };
        Ok(Self {
            norm1: group_norm(p.groups, in_channels, p.eps, vb.pp("norm1"))?,
            conv1: conv2d(in_channels, out_channels, 3, conv3, vb.pp("conv1"))?,
            time_emb_proj: candle_nn::linear(p.temb_channels, proj_out, vb.pp("time_emb_proj"))?,
            norm2: group_norm(p.groups, out_channels, p.eps, vb.pp("norm2"))?,
            conv2: conv2d(out_channels, out_channels, 3, conv3, vb.pp("conv2"))?,
            conv_shortcut,
            resample,
            time_shift: p.time_shift,
            output_scale_factor: p.output_scale_factor,
            dropout: p.dropout as f32,
        })
    }

    /// `x`: `[N, C_in, H, W]`; `temb_act`: `silu(temb)`, `[N, temb_channels]` (the activation
    /// every block applies to the shared embedding is computed once by the caller).
    pub fn forward(&self, x: &Tensor, temb_act: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = self.norm1.forward_act(x, true)?;
        let mut x = x.clone();
        match self.resample {
            Resample::None => {}
            Resample::Up => {
                x = nearest_2x(&x)?;
                h = nearest_2x(&h)?;
            }
            Resample::Down => {
                x = avg_pool_2x(&x)?;
                h = avg_pool_2x(&h)?;
            }
        }
        let h = self.conv1.forward(&h)?;
        let t = self.time_emb_proj.forward(temb_act)?.unsqueeze(2)?.unsqueeze(3)?;
        let h = match self.time_shift {
            TimeShift::Default => self.norm2.forward_act(&h.broadcast_add(&t)?, true)?,
            TimeShift::ScaleShift => {
                let (scale, shift) = (t.narrow(1, 0, t.dim(1)? / 2)?, t.narrow(1, t.dim(1)? / 2, t.dim(1)? / 2)?);
                self.norm2.forward(&h)?.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?.silu()?
            }
        };
        let mut h = h;
        if train && self.dropout > 0.0 {
            h = candle_nn::ops::dropout(&h, self.dropout)?;
        }
        let h = self.conv2.forward(&h)?;
        let x = match &self.conv_shortcut {
            Some(conv) => conv.forward(&x)?,
            None => x,
        };
        let out = (x + h)?;
        // Division by 1 is exact: skip the pass over the tensor.
        if self.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.output_scale_factor
        }
    }
}
