//! torchvision's `BasicBlock`: conv3x3-BN-ReLU-conv3x3-BN, plus the identity (or a 1x1 conv and
//! BN where the shape changes), then ReLU.
//!
//! Reference: `torchvision.models.resnet.BasicBlock` (expansion 1) and the `downsample`
//! `nn.Sequential(conv1x1, BatchNorm2d)` that `ResNet._make_layer` gives it; keys `conv1`, `bn1`,
//! `conv2`, `bn2`, `downsample.0`, `downsample.1`. Every convolution has `bias=False`.

use candle_core::{Result, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use super::batch_norm::{BatchNorm2d, BnMode};
use crate::models::conv_grad::{conv2d_no_bias, Conv2d};

/// A bias-free `kernel`x`kernel` convolution (stride 1 gets the fast CPU backward).
pub(super) fn conv(vb: VarBuilder, c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize) -> Result<Conv2d> {
    conv2d_no_bias(c_in, c_out, kernel, Conv2dConfig { padding, stride, ..Default::default() }, vb)
}

#[derive(Debug, Clone)]
pub(super) struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<(Conv2d, BatchNorm2d)>,
}

impl BasicBlock {
    pub(super) fn new(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize) -> Result<Self> {
        // torchvision adds the projection exactly when the identity cannot be added as is.
        // Built first: the order of lookups decides which tensor a broken checkpoint reports.
        let downsample = if stride != 1 || c_in != c_out {
            let d = vb.pp("downsample");
            Some((conv(d.pp(0), c_in, c_out, 1, stride, 0)?, BatchNorm2d::new(d.pp(1), c_out)?))
        } else {
            None
        };
        Ok(Self {
            conv1: conv(vb.pp("conv1"), c_in, c_out, 3, stride, 1)?,
            bn1: BatchNorm2d::new(vb.pp("bn1"), c_out)?,
            conv2: conv(vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            bn2: BatchNorm2d::new(vb.pp("bn2"), c_out)?,
            downsample,
        })
    }

    pub(super) fn forward(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.after_conv(conv, x, mode, false)?,
            None => x.clone(),
        };
        let y = self.bn1.after_conv(&self.conv1, x, mode, true)?;
        self.bn2.after_conv_add_relu(&self.conv2, &y, mode, &identity)
    }
}
