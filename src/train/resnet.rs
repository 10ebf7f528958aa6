//! The ResNet in training form: [`ResNet`] built over a candle-nn `VarMap`, with torchvision's
//! initialisation drawn from a seed, the batch counter BatchNorm saves, and the state_dict that
//! training writes.
//!
//! Reference: `torchvision.models.resnet.ResNet.__init__`'s initialisation: convolutions
//! kaiming-normal (fan_out, ReLU gain), BatchNorm weight 1 and bias 0, `fc` as `nn.Linear`
//! (U(±1/sqrt(fan_in)) for weight and bias), drawn on the host ([`crate::train::init`]); and
//! `model.state_dict()`, whose `num_batches_tracked` (an int64 scalar per BatchNorm) counts the
//! training-mode forwards.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::init::{fan_out, init_varmap, Init};
use crate::models::resnet::{BnMode, ResNet, ResNetConfig};
use crate::models::weights::{WeightMap, WeightsError};

/// A trainable torchvision BasicBlock ResNet.
pub struct TrainableResNet {
    net: ResNet,
    varmap: VarMap,
    /// Training-mode forwards so far: every BatchNorm's `num_batches_tracked`.
    batches_tracked: AtomicU64,
}

impl std::fmt::Debug for TrainableResNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrainableResNet({})", self.net.config())
    }
}

impl TrainableResNet {
    /// A freshly initialised network (torchvision's init, from `seed`), in f32 on `device`.
    pub fn new(cfg: &ResNetConfig, seed: u64, device: &Device) -> Result<Self> {
        let varmap = VarMap::new();
        let net = ResNet::new(cfg, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        // The variables are overwritten in place, so the network sees the seeded values.
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
        Ok(Self { net, varmap, batches_tracked: AtomicU64::new(0) })
    }

    pub fn config(&self) -> &ResNetConfig {
        self.net.config()
    }

    /// The network itself (its eval mode is the inference network's, number for number).
    pub fn network(&self) -> &ResNet {
        &self.net
    }

    /// Pooled features of a normalised batch ([`ResNet::features`]); a `Train` forward counts
    /// as one tracked batch.
    pub fn features(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        if mode == BnMode::Train {
            self.batches_tracked.fetch_add(1, Ordering::Relaxed);
        }
        self.net.features(x, mode)
    }

    /// Logits from pooled features.
    pub fn head(&self, features: &Tensor) -> Result<Tensor> {
        self.net.head(features)
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
        let cfg = self.config();
        let fc_fits = weights.shape_of("fc.weight").as_deref() == Some(&[cfg.num_classes, cfg.features()][..]);
        let data = self.varmap.data().lock().unwrap_or_else(|p| p.into_inner());
        for (name, var) in data.iter() {
            if name.starts_with("fc.") && !fc_fits {
                continue;
            }
            let t = weights.get(var.dims(), name)?;
            let tensor_err = |e: candle_core::Error| WeightsError::Tensor {
                path: weights.path().to_path_buf(),
                name: name.clone(),
                cause: e.to_string(),
            };
            var.set(&t.to_dtype(DType::F32).and_then(|t| t.to_device(var.device())).map_err(tensor_err)?).map_err(tensor_err)?;
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
    pub fn save(&self, path: &Path) -> std::result::Result<(), String> {
        super::write_safetensors(path, &self.state_dict().map_err(|e| e.to_string())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::resnet::{ResNetArch, Stem};

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
            // One network, one eval-mode formula; the trainable network runs candle's ops (its
            // weights are variables) and the loaded one the fused inference kernels
            // (models::fast_conv), so the sums differ only in rounding.
            let (ours, theirs): (Vec<f32>, Vec<f32>) =
                (ours.flatten_all().unwrap().to_vec1().unwrap(), theirs.flatten_all().unwrap().to_vec1().unwrap());
            assert_eq!(ours.len(), theirs.len());
            for (a, b) in ours.iter().zip(&theirs) {
                assert!((a - b).abs() <= 1e-5 * a.abs().max(0.1), "{stem}: {ours:?} vs {theirs:?}");
            }
        }
    }
}

#[cfg(test)]
mod checkpoint_loading_tests {
    //! `ResNet::load` on state_dicts this network writes (here, beside it, so the model layer
    //! imports nothing from training).
    use super::*;
    use crate::models::resnet::{ResNetArch, Stem};
    use std::collections::HashMap;

    use candle_core::DType;

    /// A ResNet-18 state_dict (cifar stem, width 4) with all-`value` tensors.
    fn state_dict(num_classes: usize, value: f32) -> HashMap<String, Tensor> {
        let cfg = ResNetConfig { width: 4, ..ResNetConfig::new(ResNetArch::ResNet18, Stem::Cifar, num_classes) };
        let net = TrainableResNet::new(&cfg, 1, &Device::Cpu).unwrap();
        let fill = |t: Tensor| if t.dtype().is_float() { t.ones_like().unwrap().affine(value as f64, 0.).unwrap() } else { t };
        net.state_dict().unwrap().into_iter().map(|(k, t)| (k, fill(t))).collect()
    }

    #[test]
    fn load_reports_the_weight_maps_errors() {
        let cfg = ResNetConfig { width: 4, ..ResNetConfig::new(ResNetArch::ResNet18, Stem::Cifar, 3) };
        let mut sd = state_dict(3, 0.5);
        assert!(ResNet::load(&WeightMap::from_tensors(sd.clone(), "mem"), &cfg).is_ok());
        sd.remove("layer3.0.downsample.1.running_var");
        let e = ResNet::load(&WeightMap::from_tensors(sd.clone(), "mem"), &cfg).unwrap_err();
        assert_eq!(e.to_string(), "weights mem: tensor \"layer3.0.downsample.1.running_var\" is missing");
        // Nested under a prefix: keys are named in full, leftovers outside it are not ours.
        let mut nested: HashMap<String, Tensor> = state_dict(3, 0.5).into_iter().map(|(k, t)| (format!("model.{k}"), t)).collect();
        nested.insert("epoch".into(), Tensor::new(3i64, &Device::Cpu).unwrap());
        let w = WeightMap::from_tensors(nested, "mem");
        assert_eq!(ResNet::width_of(&w.pp("model")), Some(4));
        assert!(ResNet::load(&w.pp("model"), &cfg).is_ok());
        let e = ResNet::load(&w.pp("model"), &ResNetConfig { num_classes: 2, ..cfg }).unwrap_err();
        assert_eq!(e.to_string(), "weights mem: tensor \"model.fc.weight\" has shape [3, 32], expected [2, 32]");
    }

    #[test]
    fn checkpoint_network_refuses_to_train() {
        let cfg = ResNetConfig { width: 4, ..ResNetConfig::new(ResNetArch::ResNet18, Stem::Cifar, 3) };
        let net = ResNet::load(&WeightMap::from_tensors(state_dict(3, 0.5), "mem"), &cfg).unwrap();
        let x = Tensor::zeros((2, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(net.forward(&x).unwrap().dims(), &[2, 3]);
        assert!(net.forward_t(&x, BnMode::Train).is_err());
    }
}
