//! The down, mid and up blocks of the 2D UNet.
//!
//! Reference: diffusers 0.42 `models/unets/unet_2d_blocks.py`: `DownBlock2D` and
//! `AttnDownBlock2D` ([`DownBlock`]), `UNetMidBlock2D` with one layer ([`MidBlock`]), `UpBlock2D`
//! and `AttnUpBlock2D` ([`UpBlock`]), with the arguments `UNet2DModel` passes them. Two quirks of
//! diffusers are kept: `downsample_type` / `upsample_type` only affect the attention blocks (the
//! plain ones always resample with a conv), and the attention of the down/up blocks always
//! normalises with `norm_num_groups` (only the mid block's uses `attn_norm_num_groups`).
//!
//! Skip connections: a down block pushes the output of every resnet (after its attention) and
//! of its downsampler onto a stack; an up block pops one per resnet and concatenates it to its
//! input along the channels (`torch.cat([h, skip], dim=1)`).

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::attention::Attention;
use super::config::{BlockKind, ResampleKind};
use super::resample::{Downsample2D, Upsample2D};
use super::resnet_block::{Resample, ResnetBlock2D, ResnetParams};

/// Attention settings shared by a model's down and up blocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AttnParams {
    /// `attention_head_dim`; `None`: one head over all channels.
    pub head_dim: Option<usize>,
    pub groups: usize,
    pub eps: f64,
}

impl AttnParams {
    fn build(&self, vb: VarBuilder, channels: usize) -> Result<Attention> {
        Attention::new(vb, channels, self.head_dim.unwrap_or(channels), Some(self.groups), self.eps, 1.0)
    }
}

// The resnet variants are boxed: a resnet is several times the size of a conv.
#[derive(Debug, Clone)]
enum Downsampler {
    Conv(Downsample2D),
    Resnet(Box<ResnetBlock2D>),
}

#[derive(Debug, Clone)]
enum Upsampler {
    Conv(Upsample2D),
    Resnet(Box<ResnetBlock2D>),
}

/// `DownBlock2D` (no attentions) or `AttnDownBlock2D`.
#[derive(Debug, Clone)]
pub(crate) struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
    downsampler: Option<Downsampler>,
}

/// Shape and kind of one down or up block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockSpec {
    pub kind: BlockKind,
    pub num_layers: usize,
    pub out_channels: usize,
    /// Whether the block changes the resolution (every block but the last of each path).
    pub resample: bool,
    /// Resampler of an attention block.
    pub attn_resample: ResampleKind,
}

impl DownBlock {
    /// `in_channels`: channels entering the block; `downsample_padding`: of the conv downsampler.
    pub fn new(
        vb: VarBuilder,
        spec: &BlockSpec,
        in_channels: usize,
        resnet: &ResnetParams,
        attn: &AttnParams,
        downsample_padding: usize,
    ) -> Result<Self> {
        let out = spec.out_channels;
        let mut resnets = Vec::with_capacity(spec.num_layers);
        let mut attentions = Vec::new();
        for j in 0..spec.num_layers {
            let c_in = if j == 0 { in_channels } else { out };
            resnets.push(ResnetBlock2D::new(vb.pp("resnets").pp(j), c_in, out, resnet, Resample::None)?);
            if spec.kind == BlockKind::Attn {
                attentions.push(attn.build(vb.pp("attentions").pp(j), out)?);
            }
        }
        let vd = vb.pp("downsamplers").pp(0);
        let downsampler = match (spec.resample, spec.kind, spec.attn_resample) {
            (false, _, _) => None,
            (true, BlockKind::Attn, ResampleKind::Resnet) => {
                Some(Downsampler::Resnet(Box::new(ResnetBlock2D::new(vd, out, out, resnet, Resample::Down)?)))
            }
            (true, _, _) => Some(Downsampler::Conv(Downsample2D::new(vd, out, downsample_padding)?)),
        };
        Ok(Self { resnets, attentions, downsampler })
    }

    /// Runs the block on `x`, pushing its skip connections onto `skips`.
    pub fn forward(&self, x: &Tensor, temb_act: &Tensor, train: bool, skips: &mut Vec<Tensor>) -> Result<Tensor> {
        let mut x = x.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            x = resnet.forward(&x, temb_act, train)?;
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(&x)?;
            }
            skips.push(x.clone());
        }
        if let Some(down) = &self.downsampler {
            x = match down {
                Downsampler::Conv(conv) => conv.forward(&x)?,
                Downsampler::Resnet(resnet) => resnet.forward(&x, temb_act, train)?,
            };
            skips.push(x.clone());
        }
        Ok(x)
    }
}

/// `UNetMidBlock2D` with `num_layers=1`: resnet, attention (when `add_attention`), resnet.
#[derive(Debug, Clone)]
pub(crate) struct MidBlock {
    resnet_0: ResnetBlock2D,
    attention: Option<Attention>,
    resnet_1: ResnetBlock2D,
}

impl MidBlock {
    /// `resnet.output_scale_factor` is `mid_block_scale_factor`, which also rescales the attention;
    /// `attn_groups`: `None` for no attention, `Some(None)` for one without GroupNorm.
    pub fn new(
        vb: VarBuilder,
        channels: usize,
        resnet: &ResnetParams,
        head_dim: Option<usize>,
        attn_groups: Option<Option<usize>>,
    ) -> Result<Self> {
        let attention = match attn_groups {
            Some(groups) => Some(Attention::new(
                vb.pp("attentions").pp(0),
                channels,
                head_dim.unwrap_or(channels),
                groups,
                resnet.eps,
                resnet.output_scale_factor,
            )?),
            None => None,
        };
        Ok(Self {
            resnet_0: ResnetBlock2D::new(vb.pp("resnets").pp(0), channels, channels, resnet, Resample::None)?,
            attention,
            resnet_1: ResnetBlock2D::new(vb.pp("resnets").pp(1), channels, channels, resnet, Resample::None)?,
        })
    }

    pub fn forward(&self, x: &Tensor, temb_act: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.resnet_0.forward(x, temb_act, train)?;
        if let Some(attn) = &self.attention {
            x = attn.forward(&x)?;
        }
        self.resnet_1.forward(&x, temb_act, train)
    }
}

/// `UpBlock2D` (no attentions) or `AttnUpBlock2D`.
#[derive(Debug, Clone)]
pub(crate) struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
    upsampler: Option<Upsampler>,
}

impl UpBlock {
    /// `prev_output_channels`: channels entering the block (output of the previous up block or
    /// of the mid block); `skip_in_channels`: diffusers' `in_channels`, the width of the down
    /// block one level deeper, whose skips the last resnet receives.
    pub fn new(
        vb: VarBuilder,
        spec: &BlockSpec,
        prev_output_channels: usize,
        skip_in_channels: usize,
        resnet: &ResnetParams,
        attn: &AttnParams,
    ) -> Result<Self> {
        let out = spec.out_channels;
        let mut resnets = Vec::with_capacity(spec.num_layers);
        let mut attentions = Vec::new();
        for j in 0..spec.num_layers {
            let skip = if j == spec.num_layers - 1 { skip_in_channels } else { out };
            let c_in = if j == 0 { prev_output_channels } else { out };
            resnets.push(ResnetBlock2D::new(vb.pp("resnets").pp(j), c_in + skip, out, resnet, Resample::None)?);
            if spec.kind == BlockKind::Attn {
                attentions.push(attn.build(vb.pp("attentions").pp(j), out)?);
            }
        }
        let vu = vb.pp("upsamplers").pp(0);
        let upsampler = match (spec.resample, spec.kind, spec.attn_resample) {
            (false, _, _) => None,
            (true, BlockKind::Attn, ResampleKind::Resnet) => {
                Some(Upsampler::Resnet(Box::new(ResnetBlock2D::new(vu, out, out, resnet, Resample::Up)?)))
            }
            (true, _, _) => Some(Upsampler::Conv(Upsample2D::new(vu, out)?)),
        };
        Ok(Self { resnets, attentions, upsampler })
    }

    /// Runs the block on `x`, popping one skip connection per resnet from `skips`.
    pub fn forward(&self, x: &Tensor, skips: &mut Vec<Tensor>, temb_act: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = x.clone();
        for (j, resnet) in self.resnets.iter().enumerate() {
            let skip = skips.pop().ok_or_else(|| candle_core::Error::Msg("unet: skip connection stack exhausted".into()))?;
            x = Tensor::cat(&[&x, &skip], 1)?;
            x = resnet.forward(&x, temb_act, train)?;
            if let Some(attn) = self.attentions.get(j) {
                x = attn.forward(&x)?;
            }
        }
        if let Some(up) = &self.upsampler {
            x = match up {
                Upsampler::Conv(conv) => conv.forward(&x)?,
                Upsampler::Resnet(resnet) => resnet.forward(&x, temb_act, train)?,
            };
        }
        Ok(x)
    }
}
