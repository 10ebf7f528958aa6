//! Random weights for any model, made on lookup: `rcaflow bench` measures speed, which does not
//! depend on the values, so it builds every network without a weight file.
//!
//! [`random_tensor`] draws a tensor from its key and shape alone (the same key and shape give the
//! same values), scaled so activations keep their size through deep stacks: convolutions and
//! linears uniform in ±sqrt(3 / fan_in) (unit variance per input), norm scales and running
//! variances in [0.5, 1.5], other vectors (biases, running means) in ±0.1. [`var_builder`] serves
//! such tensors as a candle-nn `VarBuilder` (the UNet, the ResNet), and
//! [`crate::models::WeightMap::random`] as a weight map (Inception, LPIPS). Both record what they
//! served in [`Draws`], so a model built from them can be written out as a weight file that loads
//! back to the same network (`rcaflow bench --pipeline` runs whole topologies on such files).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::units::mix64;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The (lo, hi) range of the uniform values of tensor `key` of `shape`.
fn range(key: &str, shape: &[usize]) -> (f32, f32) {
    if shape.len() >= 2 {
        let fan_in: usize = shape[1..].iter().product();
        let a = (3.0 / fan_in.max(1) as f32).sqrt();
        (-a, a)
    } else if key.ends_with("running_var") || key.ends_with("weight") {
        (0.5, 1.5)
    } else {
        (-0.1, 0.1)
    }
}

/// The f32 tensor `key` of `shape` on `device`: uniform values keyed by the name.
pub fn random_tensor(key: &str, shape: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    let (lo, hi) = range(key, shape);
    random_uniform(key, shape, lo, hi, device)
}

/// An f32 tensor of `shape` on `device`, uniform in [lo, hi), the same for the same `key`.
pub fn random_uniform(key: &str, shape: &[usize], lo: f32, hi: f32, device: &Device) -> candle_core::Result<Tensor> {
    // FNV-1a of the key, then a counter-based stream (as in models::noise).
    let seed = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let key = mix64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n as u64)
        .map(|k| {
            let u = (mix64(key.wrapping_add(k.wrapping_add(1).wrapping_mul(GOLDEN))) >> 40) as f32 / (1u64 << 24) as f32;
            lo + (hi - lo) * u
        })
        .collect();
    Tensor::from_vec(values, shape, device)
}

/// The key and shape of every tensor a random source has served, shared by its clones: enough to
/// draw the same tensors again ([`Draws::tensors`]) without keeping them.
#[derive(Clone, Debug, Default)]
pub struct Draws(Arc<Mutex<BTreeMap<String, Vec<usize>>>>);

impl Draws {
    pub(crate) fn record(&self, key: &str, shape: &[usize]) {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(key.to_string(), shape.to_vec());
    }

    /// Every tensor served so far, drawn again on the CPU (f32), by key: a weight file of them
    /// builds the same model.
    pub fn tensors(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        let drawn = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        drawn.into_iter().map(|(key, shape)| Ok((key.clone(), random_tensor(&key, &shape, &Device::Cpu)?))).collect()
    }
}

/// A `VarBuilder` backend that answers every lookup with [`random_tensor`].
struct RandomBackend(Draws);

impl SimpleBackend for RandomBackend {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.record(name, s.dims());
        random_tensor(name, s.dims(), dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random weights: \"{name}\" was asked for without a shape")
    }

    /// Only the tensors a model asks for by shape exist (BatchNorm's optional
    /// `num_batches_tracked` does not).
    fn contains_tensor(&self, _: &str) -> bool {
        false
    }
}

/// An f32 `VarBuilder` on `device` whose every tensor is [`random_tensor`].
pub fn var_builder(device: &Device) -> VarBuilder<'static> {
    var_builder_as(device, DType::F32)
}

/// [`var_builder`] serving its tensors in `dtype` (drawn in f32, then converted).
pub fn var_builder_as(device: &Device, dtype: DType) -> VarBuilder<'static> {
    recording_var_builder(device, dtype, Draws::default())
}

/// [`var_builder_as`] recording each tensor it serves in `draws`.
pub fn recording_var_builder(device: &Device, dtype: DType, draws: Draws) -> VarBuilder<'static> {
    VarBuilder::from_backend(Box::new(RandomBackend(draws)), dtype, device.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_are_keyed_scaled_and_deterministic() {
        let dev = Device::Cpu;
        let a = random_tensor("conv.weight", &[8, 4, 3, 3], &dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, random_tensor("conv.weight", &[8, 4, 3, 3], &dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap());
        let other = random_tensor("conv2.weight", &[8, 4, 3, 3], &dev).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_ne!(a, other);
        let bound = (3.0f32 / 36.0).sqrt();
        assert!(a.iter().all(|v| v.abs() <= bound));
        let spread = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(spread > 0.8 * bound, "values fill the range: {spread} of {bound}");
        let var = random_tensor("bn.running_var", &[16], &dev).unwrap().to_vec1::<f32>().unwrap();
        assert!(var.iter().all(|&v| (0.5..=1.5).contains(&v)));
    }

    #[test]
    fn drawn_tensors_rebuild_the_same_network() {
        use crate::models::resnet::{ResNet, ResNetArch, ResNetConfig, Stem};
        use crate::models::WeightMap;
        let dev = Device::Cpu;
        let cfg = ResNetConfig::new(ResNetArch::ResNet18, Stem::Cifar, 3);
        let random = WeightMap::random("random", &dev);
        let first = ResNet::load(&random, &cfg).unwrap();
        let tensors = random.random_draws().unwrap().tensors().unwrap();
        assert!(tensors.contains_key("fc.weight") && tensors.contains_key("layer4.1.bn2.running_var"), "{:?}", tensors.keys());
        // Loaded from the written tensors, every key is used (no unused-key error) and the
        // network computes what the random one does.
        let second = ResNet::load(&WeightMap::from_tensors(tensors, "drawn"), &cfg).unwrap();
        let x = random_uniform("x", &[2, 3, 32, 32], -1.0, 1.0, &dev).unwrap();
        let (a, b) = (first.forward(&x).unwrap(), second.forward(&x).unwrap());
        let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0);
    }
}
