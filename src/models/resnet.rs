//! ResNet-18 and ResNet-34 (BasicBlock ResNets), the oracle classifier of the RCA protocol.
//!
//! Reference: `torchvision.models.resnet` (He et al., "Deep Residual Learning for Image
//! Recognition", 2015), in eval mode. Tensor keys are exactly torchvision's state_dict names
//! (`conv1.weight`, `bn1.running_mean`, `layer2.0.downsample.0.weight`, `fc.bias`, ...), so a
//! model trained with torchvision loads unchanged, and parity is tested against torchvision in
//! tests/resnet_parity.rs (fixtures from scripts/make_resnet_fixtures.py).
//!
//! Two stems: `imagenet` is torchvision's own (7x7/2 conv, BN, ReLU, 3x3/2 max-pool);
//! `cifar` is the usual small-image variant (3x3/1 conv, BN, ReLU, no max-pool), i.e.
//! torchvision with `model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)` and
//! `model.maxpool = nn.Identity()`.

use std::fmt;
use std::str::FromStr;

use candle_core::{Module, Tensor};
use serde::{Deserialize, Serialize};

use super::batch_norm::BatchNorm;
use super::weights::{WeightMap, WeightsError};

/// BatchNorm's epsilon in torchvision (`nn.BatchNorm2d` default).
const BN_EPS: f64 = 1e-5;
/// Channels of the first stage in torchvision (the stages have 1, 2, 4 and 8 times this).
pub const TORCHVISION_WIDTH: usize = 64;

/// Which BasicBlock ResNet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResNetArch {
    ResNet18,
    ResNet34,
}

impl ResNetArch {
    /// Blocks per stage (torchvision's `layers` argument).
    pub fn blocks(self) -> [usize; 4] {
        match self {
            ResNetArch::ResNet18 => [2, 2, 2, 2],
            ResNetArch::ResNet34 => [3, 4, 6, 3],
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ResNetArch::ResNet18 => "resnet18",
            ResNetArch::ResNet34 => "resnet34",
        }
    }
}

/// The first layers, before `layer1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    /// 3x3 stride-1 conv, BN, ReLU, no max-pool (for 32x32 inputs).
    Cifar,
    /// torchvision's 7x7 stride-2 conv, BN, ReLU, 3x3 stride-2 max-pool.
    Imagenet,
}

impl Stem {
    fn as_str(self) -> &'static str {
        match self {
            Stem::Cifar => "cifar",
            Stem::Imagenet => "imagenet",
        }
    }

    /// (kernel, stride, padding) of `conv1`.
    fn conv1(self) -> (usize, usize, usize) {
        match self {
            Stem::Cifar => (3, 1, 1),
            Stem::Imagenet => (7, 2, 3),
        }
    }
}

/// A config string that is not one of the accepted names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResNetParseError {
    #[error("unknown resnet architecture \"{0}\": expected \"resnet18\" or \"resnet34\"")]
    Arch(String),
    #[error("unknown resnet stem \"{0}\": expected \"cifar\" or \"imagenet\"")]
    Stem(String),
}

impl FromStr for ResNetArch {
    type Err = ResNetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "resnet18" => Ok(ResNetArch::ResNet18),
            "resnet34" => Ok(ResNetArch::ResNet34),
            other => Err(ResNetParseError::Arch(other.to_string())),
        }
    }
}

impl fmt::Display for ResNetArch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stem {
    type Err = ResNetParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cifar" => Ok(Stem::Cifar),
            "imagenet" => Ok(Stem::Imagenet),
            other => Err(ResNetParseError::Stem(other.to_string())),
        }
    }
}

impl fmt::Display for Stem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Architecture, stem, class count and width. `Default` is torchvision's `resnet18()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    pub arch: ResNetArch,
    pub stem: Stem,
    pub num_classes: usize,
    /// Channels of `conv1` and `layer1` (torchvision: 64). A narrower network keeps every key
    /// and the topology, only the channel counts shrink: the small demo oracle uses 16, which
    /// makes its file 16 times smaller (2.8 MB instead of 44.8 MB for a ResNet-18).
    #[serde(default = "torchvision_width")]
    pub width: usize,
}

fn torchvision_width() -> usize {
    TORCHVISION_WIDTH
}

impl ResNetConfig {
    pub fn new(arch: ResNetArch, stem: Stem, num_classes: usize) -> Self {
        Self { arch, stem, num_classes, width: TORCHVISION_WIDTH }
    }

    /// Output channels of `layer1` .. `layer4`.
    pub fn widths(&self) -> [usize; 4] {
        [self.width, 2 * self.width, 4 * self.width, 8 * self.width]
    }

    /// Width of the pooled features that `fc` maps to logits (512 in torchvision).
    pub fn features(&self) -> usize {
        8 * self.width
    }
}

impl Default for ResNetConfig {
    fn default() -> Self {
        Self::new(ResNetArch::ResNet18, Stem::Imagenet, 1000)
    }
}

impl fmt::Display for ResNetConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} stem, {} classes", self.arch, self.stem, self.num_classes)?;
        if self.width != TORCHVISION_WIDTH {
            write!(f, ", width {}", self.width)?;
        }
        f.write_str(")")
    }
}

/// A bias-free convolution (every conv of a torchvision ResNet has `bias=False`).
#[derive(Debug, Clone)]
struct Conv {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv {
    fn load(w: &WeightMap, c_in: usize, c_out: usize, kernel: usize, stride: usize, padding: usize) -> Result<Self, WeightsError> {
        Ok(Self { weight: w.get(&[c_out, c_in, kernel, kernel], "weight")?, stride, padding })
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.conv2d(&self.weight, self.padding, self.stride, 1, 1)
    }
}

/// torchvision's `BasicBlock`: conv3x3-BN-ReLU-conv3x3-BN, plus the identity (or a 1x1 conv
/// and BN where the shape changes), then ReLU.
#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: Conv,
    bn1: BatchNorm,
    conv2: Conv,
    bn2: BatchNorm,
    downsample: Option<(Conv, BatchNorm)>,
}

impl BasicBlock {
    fn load(w: &WeightMap, c_in: usize, c_out: usize, stride: usize) -> Result<Self, WeightsError> {
        // torchvision adds the projection exactly when the identity cannot be added as is.
        let downsample = if stride != 1 || c_in != c_out {
            let d = w.pp("downsample");
            Some((Conv::load(&d.pp(0), c_in, c_out, 1, stride, 0)?, BatchNorm::load(&d.pp(1), c_out, BN_EPS)?))
        } else {
            None
        };
        Ok(Self {
            conv1: Conv::load(&w.pp("conv1"), c_in, c_out, 3, stride, 1)?,
            bn1: BatchNorm::load(&w.pp("bn1"), c_out, BN_EPS)?,
            conv2: Conv::load(&w.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            bn2: BatchNorm::load(&w.pp("bn2"), c_out, BN_EPS)?,
            downsample,
        })
    }
}

impl Module for BasicBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward(&conv.forward(x)?)?,
            None => x.clone(),
        };
        let y = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        let y = self.bn2.forward(&self.conv2.forward(&y)?)?;
        (y + identity)?.relu()
    }
}

/// A torchvision BasicBlock ResNet in eval mode.
#[derive(Debug, Clone)]
pub struct ResNet {
    conv1: Conv,
    bn1: BatchNorm,
    /// `layer1` .. `layer4`.
    layers: Vec<Vec<BasicBlock>>,
    fc_weight: Tensor,
    fc_bias: Tensor,
    cfg: ResNetConfig,
}

impl ResNet {
    /// Builds the network from torchvision state_dict keys under `weights` (use
    /// `weights.pp("...")` for a checkpoint that nests them). Fails on the first missing or
    /// wrongly shaped tensor (a `num_classes` mismatch names `fc.weight` and both shapes), and
    /// on any tensor the architecture does not use.
    pub fn load(weights: &WeightMap, cfg: &ResNetConfig) -> Result<ResNet, WeightsError> {
        let (k, stride, padding) = cfg.stem.conv1();
        let conv1 = Conv::load(&weights.pp("conv1"), 3, cfg.width, k, stride, padding)?;
        let bn1 = BatchNorm::load(&weights.pp("bn1"), cfg.width, BN_EPS)?;
        let mut layers = Vec::with_capacity(4);
        let mut c_in = cfg.width;
        for (i, (&width, &blocks)) in cfg.widths().iter().zip(cfg.arch.blocks().iter()).enumerate() {
            let lw = weights.pp(format!("layer{}", i + 1));
            let mut layer = Vec::with_capacity(blocks);
            for b in 0..blocks {
                // Only the first block of layer2..4 halves the resolution.
                let stride = if b == 0 && i > 0 { 2 } else { 1 };
                layer.push(BasicBlock::load(&lw.pp(b), c_in, width, stride)?);
                c_in = width;
            }
            layers.push(layer);
        }
        let fc = weights.pp("fc");
        let fc_weight = fc.get(&[cfg.num_classes, cfg.features()], "weight")?;
        let fc_bias = fc.get(&[cfg.num_classes], "bias")?;
        if let Some(name) = weights.unused_keys().into_iter().find(|k| k.starts_with(&prefixed(weights.prefix(), ""))) {
            return Err(WeightsError::Unexpected { path: weights.path().to_path_buf(), name, model: cfg.to_string() });
        }
        Ok(Self { conv1, bn1, layers, fc_weight, fc_bias, cfg: *cfg })
    }

    /// The width a state_dict was trained with: `conv1`'s output channels (`None` without a
    /// 4-d `conv1.weight`, which [`ResNet::load`] then reports).
    pub fn width_of(weights: &WeightMap) -> Option<usize> {
        weights.shape_of(&prefixed(weights.prefix(), "conv1.weight")).filter(|s| s.len() == 4).map(|s| s[0])
    }

    /// The device the weights live on.
    pub fn device(&self) -> &candle_core::Device {
        self.fc_weight.device()
    }

    /// The configuration the network was built with.
    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// Logits `[N, num_classes]` for a normalised f32 NCHW batch `x` (`[N, 3, H, W]`).
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        // 1. Stem: conv1 -> bn1 -> relu (-> 3x3/2 max-pool for the imagenet stem).
        let mut x = self.bn1.forward(&self.conv1.forward(x)?)?.relu()?;
        if self.cfg.stem == Stem::Imagenet {
            x = max_pool_3x3_s2_p1(&x)?;
        }
        // 2. Residual stages layer1..layer4 (layer2..4 halve the resolution in their first block).
        for layer in &self.layers {
            for block in layer {
                x = block.forward(&x)?;
            }
        }
        // 3. Adaptive average pool to 1x1 and flatten: the spatial mean, [N, 512].
        let x = x.mean((2, 3))?;
        // 4. Classifier: x W^T + b.
        x.matmul(&self.fc_weight.t()?)?.broadcast_add(&self.fc_bias)
    }
}

fn prefixed(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// `nn.MaxPool2d(kernel_size=3, stride=2, padding=1)`: candle's max-pool has no padding, so pad
/// with -inf first (the padding never wins the max, exactly as in PyTorch).
fn max_pool_3x3_s2_p1(x: &Tensor) -> candle_core::Result<Tensor> {
    let x = pad_neg_inf(x, 3)?;
    let x = pad_neg_inf(&x, 2)?;
    x.max_pool2d_with_stride(3, 2)
}

/// One -inf row/column on each side of `dim`.
fn pad_neg_inf(x: &Tensor, d: usize) -> candle_core::Result<Tensor> {
    let mut dims = x.dims().to_vec();
    dims[d] = 1;
    let pad = Tensor::full(f32::NEG_INFINITY, dims, x.device())?.to_dtype(x.dtype())?;
    Tensor::cat(&[&pad, x, &pad], d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn names_parse_and_print() {
        for a in [ResNetArch::ResNet18, ResNetArch::ResNet34] {
            assert_eq!(a.to_string().parse::<ResNetArch>(), Ok(a));
            assert_eq!(serde_json::to_string(&a).unwrap(), format!("\"{a}\""));
        }
        for s in [Stem::Cifar, Stem::Imagenet] {
            assert_eq!(s.to_string().parse::<Stem>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(
            "resnet50".parse::<ResNetArch>().unwrap_err().to_string(),
            "unknown resnet architecture \"resnet50\": expected \"resnet18\" or \"resnet34\""
        );
        let cfg: ResNetConfig = serde_json::from_str(r#"{"arch":"resnet34","stem":"cifar","num_classes":10}"#).unwrap();
        assert_eq!(cfg.arch, ResNetArch::ResNet34);
        assert_eq!(cfg.stem, Stem::Cifar);
    }

    #[test]
    fn padded_max_pool_matches_pytorch_shape_and_values() {
        // 1x1x4x5 ramp; PyTorch: MaxPool2d(3, 2, 1) -> 2x3.
        let x = Tensor::arange(0f32, 20., &Device::Cpu).unwrap().reshape((1, 1, 4, 5)).unwrap().neg().unwrap();
        let y = max_pool_3x3_s2_p1(&x).unwrap();
        assert_eq!(y.dims(), &[1, 1, 2, 3]);
        // Negated ramp: each window's max is its top-left real element.
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![-0., -1., -3., -5., -6., -8.]);
    }

    #[test]
    fn batch_norm_is_eval_mode() {
        let dev = Device::Cpu;
        let mut m = std::collections::HashMap::new();
        let t = |v: &[f32]| Tensor::new(v, &dev).unwrap();
        m.insert("bn.weight".into(), t(&[2.0]));
        m.insert("bn.bias".into(), t(&[0.5]));
        m.insert("bn.running_mean".into(), t(&[1.0]));
        m.insert("bn.running_var".into(), t(&[4.0 - 1e-5]));
        let w = WeightMap::from_tensors(m, "mem");
        let bn = BatchNorm::load(&w.pp("bn"), 1, BN_EPS).unwrap();
        let x = Tensor::new(&[3f32], &dev).unwrap().reshape((1, 1, 1, 1)).unwrap();
        let y: f32 = bn.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
        // (3 - 1) / 2 * 2 + 0.5
        assert!((y - 2.5).abs() < 1e-6, "{y}");
    }
}
