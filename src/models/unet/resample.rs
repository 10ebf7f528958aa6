//! The UNet's resolution changes: stride-2 conv downsampling and nearest-neighbour x2
//! upsampling followed by a conv.
//!
//! Reference: diffusers 0.42 `models/downsampling.py` (`Downsample2D` with `use_conv=True`,
//! `name="op"`, whose conv is stored as `conv`) and `models/upsampling.py` (`Upsample2D` with
//! `use_conv=True`, no `output_size`). The parameter-free variants that `ResnetBlock2D` uses with
//! `down=True` / `up=True` are the free functions [`avg_pool_2x`] and [`nearest_2x`].

use candle_core::{Module, Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::models::conv_grad::{conv2d, Conv2d};

/// `Downsample2D(channels, use_conv=True, padding=p)`: a 3x3 stride-2 conv with padding `p`;
/// with `p = 0` the input is first padded by one zero row at the bottom and one zero column on
/// the right (diffusers' `F.pad(x, (0, 1, 0, 1))`), so the output is still half the input.
#[derive(Debug, Clone)]
pub(crate) struct Downsample2D {
    conv: Conv2d,
    pad_bottom_right: bool,
}

impl Downsample2D {
    pub fn new(vb: VarBuilder, channels: usize, padding: usize) -> Result<Self> {
        let cfg = Conv2dConfig { padding, stride: 2, ..Default::default() };
        Ok(Self { conv: conv2d(channels, channels, 3, cfg, vb.pp("conv"))?, pad_bottom_right: padding == 0 })
    }
}

impl Module for Downsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_bottom_right {
            self.conv.forward(&x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)
        } else {
            self.conv.forward(x)
        }
    }
}

/// `Upsample2D(channels, use_conv=True)`: nearest x2, then a 3x3 conv with padding 1.
#[derive(Debug, Clone)]
pub(crate) struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        let cfg = Conv2dConfig { padding: 1, ..Default::default() };
        Ok(Self { conv: conv2d(channels, channels, 3, cfg, vb.pp("conv"))? })
    }
}

impl Module for Upsample2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(&nearest_2x(x)?)
    }
}

/// `F.interpolate(x, scale_factor=2.0, mode="nearest")` on NCHW.
pub(crate) fn nearest_2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    x.upsample_nearest2d(2 * h, 2 * w)
}

/// `nn.AvgPool2d(kernel_size=2, stride=2)` on NCHW (`Downsample2D(use_conv=False)`).
pub(crate) fn avg_pool_2x(x: &Tensor) -> Result<Tensor> {
    x.avg_pool2d(2)
}
