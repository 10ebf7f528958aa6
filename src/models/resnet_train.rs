//! The ResNet-18/34 oracle in training form: the same network as [`super::resnet`] (the same
//! torchvision state_dict keys), built from a candle-nn `VarMap`, with BatchNorm that runs in
//! training mode.
//!
//! Reference: `torchvision.models.resnet` in `train()` mode and `torch.nn.BatchNorm2d`
//! (momentum 0.1): a training forward normalises by the batch mean and biased batch variance
//! and updates `running_mean` / `running_var` with the *unbiased* variance
//! (`var * n / (n - 1)`, n = N·H·W), and counts `num_batches_tracked`. Initialisation is
//! torchvision's: convolutions kaiming-normal (fan_out, ReLU gain), BatchNorm weight 1 and bias
//! 0, `fc` as `nn.Linear` (U(±1/sqrt(fan_in)) for weight and bias), drawn from a seed on the
//! host ([`crate::train::init`]).
//!
//! Kept apart from the inference network so that the parity-tested eval path is untouched; a
//! test checks that the weights this module saves give the inference `ResNet` the same logits
//! as this module's eval mode.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Result, Tensor, Var, D};
use candle_nn::{Init as NnInit, VarBuilder, VarMap};

use super::conv_grad::conv2d_s1;
use super::resnet::{ResNetConfig, Stem};
use super::weights::{WeightMap, WeightsError};
use crate::train::init::{fan_out, init_varmap, Init};

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// Whether BatchNorm uses batch statistics (and updates its running ones) or the running ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BnMode {
    Train,
    Eval,
}

#[derive(Debug, Clone)]
struct Conv {
    weight: Tensor,
    stride: usize,
    padding: usize,
}

impl Conv {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, k: usize, stride: usize, padding: usize) -> Result<Self> {
        Ok(Self { weight: vb.get_with_hints((c_out, c_in, k, k), "weight", NnInit::Const(0.))?, stride, padding })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.stride == 1 {
            conv2d_s1(x, &self.weight, self.padding)
        } else {
            x.conv2d(&self.weight, self.padding, self.stride, 1, 1)
        }
    }
}

/// `nn.BatchNorm2d` with both modes.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    channels: usize,
}

impl BatchNorm2d {
    /// Weight 1, bias 0, running mean 0 and variance 1, in `vb`'s dtype (f64 for gradient checks).
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", NnInit::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", NnInit::Const(0.))?;
        // The running statistics live in the VarMap too (so they are saved under torchvision's
        // names), but are never handed to the optimiser.
        let running_mean = Var::from_tensor(&vb.get_with_hints(channels, "running_mean", NnInit::Const(0.))?)?;
        let running_var = Var::from_tensor(&vb.get_with_hints(channels, "running_var", NnInit::Const(1.))?)?;
        Ok(Self { weight, bias, running_mean, running_var, channels })
    }

    /// Normalises `x` `[N, C, H, W]`; in `Train` mode also updates the running statistics.
    pub fn forward(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        let shape = (1, self.channels, 1, 1);
        let (mean, var) = match mode {
            BnMode::Train => {
                let (n, _, h, w) = x.dims4()?;
                let count = (n * h * w) as f64;
                if count < 2.0 {
                    candle_core::bail!("batch norm in training mode needs more than one value per channel, got input {:?}", x.dims());
                }
                let mean = x.mean_keepdim((0, 2, 3))?;
                let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
                let m = BN_MOMENTUM;
                let new_mean = ((self.running_mean.as_tensor() * (1.0 - m))? + (mean.detach().flatten_all()? * m)?)?;
                let unbiased = (var.detach().flatten_all()? * (count / (count - 1.0)))?;
                let new_var = ((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
                self.running_mean.set(&new_mean)?;
                self.running_var.set(&new_var)?;
                (mean, var)
            }
            BnMode::Eval => (self.running_mean.as_tensor().detach().reshape(shape)?, self.running_var.as_tensor().detach().reshape(shape)?),
        };
        let xhat = x.broadcast_sub(&mean)?.broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
        xhat.broadcast_mul(&self.weight.reshape(shape)?)?.broadcast_add(&self.bias.reshape(shape)?)
    }
}

#[derive(Debug, Clone)]
struct BasicBlock {
    conv1: Conv,
    bn1: BatchNorm2d,
    conv2: Conv,
    bn2: BatchNorm2d,
    downsample: Option<(Conv, BatchNorm2d)>,
}

impl BasicBlock {
    fn new(vb: VarBuilder, c_in: usize, c_out: usize, stride: usize) -> Result<Self> {
        let downsample = if stride != 1 || c_in != c_out {
            let d = vb.pp("downsample");
            Some((Conv::new(d.pp("0"), c_in, c_out, 1, stride, 0)?, BatchNorm2d::new(d.pp("1"), c_out)?))
        } else {
            None
        };
        Ok(Self {
            conv1: Conv::new(vb.pp("conv1"), c_in, c_out, 3, stride, 1)?,
            bn1: BatchNorm2d::new(vb.pp("bn1"), c_out)?,
            conv2: Conv::new(vb.pp("conv2"), c_out, c_out, 3, 1, 1)?,
            bn2: BatchNorm2d::new(vb.pp("bn2"), c_out)?,
            downsample,
        })
    }

    fn forward(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward(&conv.forward(x)?, mode)?,
            None => x.clone(),
        };
        let y = self.bn1.forward(&self.conv1.forward(x)?, mode)?.relu()?;
        let y = self.bn2.forward(&self.conv2.forward(&y)?, mode)?;
        (y + identity)?.relu()
    }
}

/// A trainable torchvision BasicBlock ResNet.
pub struct TrainableResNet {
    cfg: ResNetConfig,
    varmap: VarMap,
    conv1: Conv,
    bn1: BatchNorm2d,
    layers: Vec<Vec<BasicBlock>>,
    fc_weight: Tensor,
    fc_bias: Tensor,
    batches_tracked: AtomicU64,
}

impl std::fmt::Debug for TrainableResNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrainableResNet({})", self.cfg)
    }
}

impl TrainableResNet {
    /// A freshly initialised network (torchvision's init, from `seed`).
    pub fn new(cfg: &ResNetConfig, seed: u64, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        let (k, stride, padding) = match cfg.stem {
            Stem::Cifar => (3, 1, 1),
            Stem::Imagenet => (7, 2, 3),
        };
        let conv1 = Conv::new(vb.pp("conv1"), 3, cfg.width, k, stride, padding)?;
        let bn1 = BatchNorm2d::new(vb.pp("bn1"), cfg.width)?;
        let mut layers = Vec::new();
        let mut c_in = cfg.width;
        for (i, (&width, &blocks)) in cfg.widths().iter().zip(cfg.arch.blocks().iter()).enumerate() {
            let lv = vb.pp(format!("layer{}", i + 1));
            let mut layer = Vec::new();
            for b in 0..blocks {
                let stride = if b == 0 && i > 0 { 2 } else { 1 };
                layer.push(BasicBlock::new(lv.pp(b), c_in, width, stride)?);
                c_in = width;
            }
            layers.push(layer);
        }
        let fc_weight = vb.get_with_hints((cfg.num_classes, cfg.features()), "fc.weight", NnInit::Const(0.))?;
        let fc_bias = vb.get_with_hints(cfg.num_classes, "fc.bias", NnInit::Const(0.))?;
        init_varmap(&varmap, seed, |name, shape| {
            if name.ends_with("running_var") {
                Init::Const(1.0)
            } else if name.ends_with("running_mean") {
                Init::Const(0.0)
            } else if name.starts_with("fc.") {
                Init::Uniform(1.0 / (cfg.features() as f64).sqrt())
            } else if shape.len() == 4 {
                Init::Normal((2.0 / fan_out(shape) as f64).sqrt())
            } else if name.ends_with("weight") {
                Init::Const(1.0)
            } else {
                Init::Const(0.0)
            }
        })?;
        Ok(Self { cfg: *cfg, varmap, conv1, bn1, layers, fc_weight, fc_bias, batches_tracked: AtomicU64::new(0) })
    }

    pub fn config(&self) -> &ResNetConfig {
        &self.cfg
    }

    /// Pooled features `[N, 512]` of a normalised batch.
    pub fn features(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        if mode == BnMode::Train {
            self.batches_tracked.fetch_add(1, Ordering::Relaxed);
        }
        let mut x = self.bn1.forward(&self.conv1.forward(x)?, mode)?.relu()?;
        if self.cfg.stem == Stem::Imagenet {
            x = max_pool_3x3_s2_p1(&x)?;
        }
        for layer in &self.layers {
            for block in layer {
                x = block.forward(&x, mode)?;
            }
        }
        x.mean((2, 3))
    }

    /// Logits from pooled features.
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        features.matmul(&self.fc_weight.t()?)?.broadcast_add(&self.fc_bias)
    }

    /// Logits `[N, num_classes]`.
    pub fn forward(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        self.head(&self.features(x, mode)?)
    }

    /// Every variable the optimiser trains (all but the running statistics), sorted by name.
    pub fn trainable_vars(&self) -> Vec<(String, Var)> {
        self.vars_where(|n| !n.contains("running_"))
    }

    /// The classifier's variables (`fc.weight`, `fc.bias`).
    pub fn fc_vars(&self) -> Vec<(String, Var)> {
        self.vars_where(|n| n.starts_with("fc."))
    }

    fn vars_where(&self, keep: impl Fn(&str) -> bool) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<(String, Var)> = data.iter().filter(|(n, _)| keep(n)).map(|(n, v)| (n.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Copies the tensors of a torchvision state_dict into the network (`--init`): every
    /// backbone tensor must be present with the right shape; `fc.*` is taken only when its
    /// class count matches (otherwise `fc` keeps its fresh init, as when fine-tuning an ImageNet
    /// model on new classes). Returns whether `fc` was loaded.
    pub fn load_pretrained(&self, weights: &WeightMap) -> std::result::Result<bool, WeightsError> {
        let fc_fits = weights.shape_of("fc.weight").as_deref() == Some(&[self.cfg.num_classes, self.cfg.features()][..]);
        let data = self.varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        for (name, var) in data.iter() {
            if name.starts_with("fc.") && !fc_fits {
                continue;
            }
            let t = weights.get(var.dims(), name)?;
            var.set(&t.to_dtype(DType::F32).and_then(|t| t.to_device(var.device())).map_err(|e| WeightsError::Tensor {
                path: weights.path().to_path_buf(),
                name: name.clone(),
                cause: e.to_string(),
            })?)
            .map_err(|e| WeightsError::Tensor {
                path: weights.path().to_path_buf(),
                name: name.clone(),
                cause: e.to_string(),
            })?;
        }
        Ok(fc_fits)
    }

    /// The state_dict as torchvision names it, `num_batches_tracked` (int64 scalars) included.
    pub fn state_dict(&self) -> Result<HashMap<String, Tensor>> {
        let data = self.varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        let mut out = HashMap::new();
        let tracked = Tensor::new(self.batches_tracked.load(Ordering::Relaxed) as i64, &Device::Cpu)?;
        for (name, var) in data.iter() {
            out.insert(name.clone(), var.as_tensor().detach().to_device(&Device::Cpu)?);
            if let Some(prefix) = name.strip_suffix(".running_mean") {
                out.insert(format!("{prefix}.num_batches_tracked"), tracked.clone());
            }
        }
        Ok(out)
    }

    /// Writes the state_dict as `.safetensors` (what torchvision's `load_state_dict` takes after
    /// `safetensors.torch.load_file`, and what the `oracle_classifier` stage loads).
    pub fn save(&self, path: &Path) -> Result<()> {
        candle_core::safetensors::save(&self.state_dict()?, path)
    }
}

/// `nn.MaxPool2d(3, stride=2, padding=1)` with a gradient: candle's own max-pool has no backward
/// for overlapping windows, so the window maximum is taken over the nine strided shifts of the
/// -inf-padded input (`index_select` and `maximum` both backpropagate; ties send the gradient to
/// every maximal element where PyTorch picks one, which only matters on exact ties).
pub fn max_pool_3x3_s2_p1(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let row = Tensor::full(f32::NEG_INFINITY, (n, c, 1, w), x.device())?.to_dtype(x.dtype())?;
    let x = Tensor::cat(&[&row, x, &row], 2)?;
    let col = Tensor::full(f32::NEG_INFINITY, (n, c, h + 2, 1), x.device())?.to_dtype(x.dtype())?;
    let x = Tensor::cat(&[&col, &x, &col], 3)?;
    // Output size as PyTorch: floor((L + 2 - 3) / 2) + 1.
    let (oh, ow) = ((h - 1) / 2 + 1, (w - 1) / 2 + 1);
    let picks =
        |offset: usize, len: usize| Tensor::from_vec((0..len).map(|i| (2 * i + offset) as u32).collect::<Vec<_>>(), len, x.device());
    let mut out: Option<Tensor> = None;
    for dy in 0..3 {
        let rows = x.index_select(&picks(dy, oh)?, 2)?;
        for dx in 0..3 {
            let win = rows.index_select(&picks(dx, ow)?, 3)?;
            out = Some(match out {
                None => win,
                Some(m) => m.maximum(&win)?,
            });
        }
    }
    out.ok_or_else(|| candle_core::Error::Msg("empty pooling window".into()))
}

/// Mean cross-entropy of `logits` `[N, K]` against `labels` `[N]` (u32), and the number of
/// correct argmax predictions.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, usize)> {
    let loss = candle_nn::loss::cross_entropy(logits, labels)?;
    let pred = logits.argmax(D::Minus1)?;
    let correct = pred.eq(labels)?.to_dtype(DType::U32)?.sum_all()?.to_scalar::<u32>()? as usize;
    Ok((loss, correct))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::resnet::{ResNet, ResNetArch};

    #[test]
    fn saved_weights_give_the_inference_resnet_the_same_logits() {
        let dev = Device::Cpu;
        for stem in [Stem::Cifar, Stem::Imagenet] {
            let cfg = ResNetConfig::new(ResNetArch::ResNet18, stem, 3);
            let net = TrainableResNet::new(&cfg, 5, &dev).unwrap();
            let x = Tensor::randn(0f32, 1., (4, 3, 16, 16), &dev).unwrap();
            // Two training-mode passes move the running statistics away from (0, 1).
            net.forward(&x, BnMode::Train).unwrap();
            net.forward(&(&x * 2.0).unwrap(), BnMode::Train).unwrap();
            let ours = net.forward(&x, BnMode::Eval).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("oracle.safetensors");
            net.save(&path).unwrap();
            let w = WeightMap::load(&path, &dev).unwrap();
            let tracked: i64 = w.get(&[], "layer1.0.bn1.num_batches_tracked").unwrap().to_scalar().unwrap();
            assert_eq!(tracked, 2);
            let theirs = ResNet::load(&w, &cfg).unwrap().forward(&x).unwrap();
            let diff = (ours - theirs).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(diff < 1e-4, "{stem}: max logit difference {diff}");
        }
    }

    #[test]
    fn batch_norm_train_mode_updates_running_stats_with_unbiased_variance() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let bn = BatchNorm2d::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), 1).unwrap();
        // One channel, values 1, 2, 3, 6: mean 3, biased var 3.5, unbiased 14/3.
        let x = Tensor::new(&[1f32, 2., 3., 6.], &dev).unwrap().reshape((2, 1, 1, 2)).unwrap();
        let y: Vec<f32> = bn.forward(&x, BnMode::Train).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let s = (3.5f32 + 1e-5).sqrt();
        for (a, b) in y.iter().zip([-2.0 / s, -1.0 / s, 0.0, 3.0 / s]) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
        let rm = bn.running_mean.as_tensor().to_vec1::<f32>().unwrap()[0];
        let rv = bn.running_var.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((rm - 0.3).abs() < 1e-6, "{rm}");
        assert!((rv - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-6, "{rv}");
        // Eval mode uses them and changes nothing.
        let y: f32 = bn
            .forward(&Tensor::new(&[0.3f32], &dev).unwrap().reshape((1, 1, 1, 1)).unwrap(), BnMode::Eval)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()[0];
        assert!(y.abs() < 1e-6);
        assert_eq!(bn.running_mean.as_tensor().to_vec1::<f32>().unwrap()[0], rm);
    }
}
