//! ResNet-18 and ResNet-34 (BasicBlock ResNets), the oracle classifier of the RCA protocol: one
//! network for inference and for training.
//!
//! Reference: `torchvision.models.resnet` (He et al., "Deep Residual Learning for Image
//! Recognition", 2015), each part followed in its own file here:
//!
//! - [`config`]: architecture, stem, class count and width (`resnet18()`, `resnet34()`);
//! - `block`: `BasicBlock` (with its `downsample` projection);
//! - [`batch_norm`]: `nn.BatchNorm2d` in `train()` and `eval()` mode;
//! - `pool`: the imagenet stem's `nn.MaxPool2d(3, 2, 1)`;
//! - `checkpoint`: a torchvision state_dict as the `VarBuilder` the network is built from;
//!
//! Tensor keys are exactly torchvision's state_dict names (`conv1.weight`, `bn1.running_mean`,
//! `layer2.0.downsample.0.weight`, `fc.bias`, ...): the network is built from a candle-nn
//! `VarBuilder` whose `pp(...)` prefixes mirror that key tree, so a model trained with
//! torchvision loads unchanged ([`ResNet::load`]), and a network built over a `VarMap` for
//! training saves a state_dict torchvision loads (the trainer's `TrainableResNet::save`, in the training layer). Parity with
//! torchvision (eval mode) is tested in tests/resnet_parity.rs (fixtures from
//! scripts/make_resnet_fixtures.py); training in tests/train.rs and tests/grad_check.rs.
//!
//! Two stems: `imagenet` is torchvision's own (7x7/2 conv, BN, ReLU, 3x3/2 max-pool);
//! `cifar` is the usual small-image variant (3x3/1 conv, BN, ReLU, no max-pool), i.e.
//! torchvision with `model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)` and
//! `model.maxpool = nn.Identity()`.
//!
//! Convolutions are [`crate::models::conv_grad::Conv2d`]: candle-nn's, with the stride-1 case
//! routed through a custom op whose CPU backward is a plain convolution (same forward numbers;
//! without a gradient to track it is plain `conv2d`).

pub mod batch_norm;
pub mod config;

mod block;
mod checkpoint;
mod pool;

use candle_core::{Device, Module, Result, Tensor};
use candle_nn::{Linear, VarBuilder};

use crate::models::conv_grad::Conv2d;
use crate::models::weights::{WeightMap, WeightsError};

pub use batch_norm::{BatchNorm2d, BnMode};
pub use config::{ResNetArch, ResNetConfig, ResNetParseError, Stem, TORCHVISION_WIDTH};
pub use pool::max_pool_3x3_s2_p1;

use block::{conv, BasicBlock};
use checkpoint::Checkpoint;

/// A torchvision BasicBlock ResNet (see the module docs).
#[derive(Debug, Clone)]
pub struct ResNet {
    cfg: ResNetConfig,
    device: Device,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    /// `layer1` .. `layer4`.
    layers: Vec<Vec<BasicBlock>>,
    fc: Linear,
}

impl ResNet {
    /// Builds the network described by `cfg` with the tensors of `vb`: checkpoint tensors
    /// (BatchNorm statistics frozen), or fresh variables of a `VarMap` for training (statistics
    /// updated by [`BnMode::Train`] forwards), in `vb`'s dtype and on its device.
    pub fn new(cfg: &ResNetConfig, vb: VarBuilder) -> Result<Self> {
        let (k, stride, padding) = cfg.stem.conv1();
        let conv1 = conv(vb.pp("conv1"), 3, cfg.width, k, stride, padding)?;
        let bn1 = BatchNorm2d::new(vb.pp("bn1"), cfg.width)?;
        let mut layers = Vec::with_capacity(4);
        let mut c_in = cfg.width;
        for (i, (&width, &blocks)) in cfg.widths().iter().zip(cfg.arch.blocks().iter()).enumerate() {
            let lv = vb.pp(format!("layer{}", i + 1));
            let mut layer = Vec::with_capacity(blocks);
            for b in 0..blocks {
                // Only the first block of layer2..4 halves the resolution.
                let stride = if b == 0 && i > 0 { 2 } else { 1 };
                layer.push(BasicBlock::new(lv.pp(b), c_in, width, stride)?);
                c_in = width;
            }
            layers.push(layer);
        }
        let fc = candle_nn::linear(cfg.features(), cfg.num_classes, vb.pp("fc"))?;
        Ok(Self { cfg: *cfg, device: vb.device().clone(), conv1, bn1, layers, fc })
    }

    /// Builds the network from torchvision state_dict keys under `weights` (use
    /// `weights.pp("...")` for a checkpoint that nests them), in f32 on the weights' device.
    /// Fails on the first missing or wrongly shaped tensor (a `num_classes` mismatch names
    /// `fc.weight` and both shapes), and on any tensor the architecture does not use.
    pub fn load(weights: &WeightMap, cfg: &ResNetConfig) -> std::result::Result<ResNet, WeightsError> {
        let ckpt = Checkpoint::new(weights);
        let net = Self::new(cfg, ckpt.var_builder()).map_err(|e| {
            // Only a failed lookup is expected here; anything else is reported whole.
            ckpt.take_failure().unwrap_or_else(|| WeightsError::Tensor {
                path: weights.path().to_path_buf(),
                name: weights.prefix().to_string(),
                cause: e.to_string(),
            })
        })?;
        let under_prefix = if weights.prefix().is_empty() { String::new() } else { format!("{}.", weights.prefix()) };
        if let Some(name) = weights.unused_keys().into_iter().find(|k| k.starts_with(&under_prefix)) {
            return Err(WeightsError::Unexpected { path: weights.path().to_path_buf(), name, model: cfg.to_string() });
        }
        Ok(net)
    }

    /// The width a state_dict was trained with: `conv1`'s output channels (`None` without a
    /// 4-d `conv1.weight`, which [`ResNet::load`] then reports).
    pub fn width_of(weights: &WeightMap) -> Option<usize> {
        weights.shape_of("conv1.weight").filter(|s| s.len() == 4).map(|s| s[0])
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// Logits `[N, num_classes]` for a normalised NCHW batch `x` (`[N, 3, H, W]`), in eval mode
    /// (torchvision's `model.eval()`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_t(x, BnMode::Eval)
    }

    /// Logits `[N, num_classes]`, BatchNorm in `mode`.
    pub fn forward_t(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        self.head(&self.features(x, mode)?)
    }

    /// Pooled features `[N, 8 * width]` (`[N, 512]` in torchvision), BatchNorm in `mode`.
    pub fn features(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        // 1. Stem: conv1 -> bn1 -> relu (-> 3x3/2 max-pool for the imagenet stem).
        let mut x = self.bn1.after_conv(&self.conv1, x, mode, true)?;
        if self.cfg.stem == Stem::Imagenet {
            x = max_pool_3x3_s2_p1(&x)?;
        }
        // 2. Residual stages layer1..layer4 (layer2..4 halve the resolution in their first block).
        for layer in &self.layers {
            for block in layer {
                x = block.forward(&x, mode)?;
            }
        }
        // 3. Adaptive average pool to 1x1 and flatten: the spatial mean.
        x.mean((2, 3))
    }

    /// 4. Classifier: logits `features W^T + b` from pooled features.
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        self.fc.forward(features)
    }
}
