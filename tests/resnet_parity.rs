//! Parity of the ResNet oracle with torchvision, and the weight loader's formats and errors.
//!
//! The fixtures in tests/fixtures/resnet/ come from scripts/make_resnet_fixtures.py: uint8
//! images, their normalisation and torchvision's logits (computed in float64). The weights are
//! too big to commit, so both sides draw them from the same counter-based PRNG; `uniform_f32`
//! in tests/common/prng.rs is the bit-exact Rust port of the script's (keep them in sync). The test
//! writes them to a .safetensors file and loads them through `Oracle::load`, the real path.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use common::prng::uniform_f32;
use common::random_weights::keyed_state_dict;
use rcaflow::models::{Normalization, Oracle, OracleConfig, ResNetArch, Stem, WeightMap};
use serde::Deserialize;

/// Max abs logit error allowed against torchvision's float64 logits.
const TOLERANCE: f64 = 1e-4;

fn fixture_dir() -> PathBuf {
    common::repo().join("tests/fixtures/resnet")
}

// ---- the PRNG shared with scripts/make_resnet_fixtures.py (tests/common/prng.rs) ----

/// Mirrors `tensor_range` in the script.
fn tensor_range(key: &str, shape: &[usize]) -> (f64, f64) {
    if shape.len() == 4 {
        let a = (3.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt();
        (-a, a)
    } else if key == "fc.weight" {
        let a = (3.0 / shape[1] as f64).sqrt();
        (-a, a)
    } else if key.ends_with("running_mean") || key.ends_with(".bias") {
        (-0.1, 0.1)
    } else if key.ends_with("running_var") {
        (0.5, 1.5)
    } else if key.ends_with("bn2.weight") {
        (0.25, 0.75)
    } else if key.ends_with(".weight") {
        (0.5, 1.5)
    } else {
        panic!("no range for {key}")
    }
}

// ---- torchvision's state_dict layout, written out independently of src/models/resnet/ ----

/// (key, shape) of every float tensor of torchvision's resnet18/34 state_dict (plus the
/// `num_batches_tracked` scalars, shape []), with the cifar stem's conv1 where asked.
fn torchvision_keys(arch: ResNetArch, stem: Stem, num_classes: usize) -> Vec<(String, Vec<usize>)> {
    let mut keys = Vec::new();
    let bn = |keys: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        for s in ["weight", "bias", "running_mean", "running_var"] {
            keys.push((format!("{p}.{s}"), vec![c]));
        }
        keys.push((format!("{p}.num_batches_tracked"), vec![]));
    };
    let k = if stem == Stem::Cifar { 3 } else { 7 };
    keys.push(("conv1.weight".into(), vec![64, 3, k, k]));
    bn(&mut keys, "bn1", 64);
    let blocks = match arch {
        ResNetArch::ResNet18 => [2, 2, 2, 2],
        ResNetArch::ResNet34 => [3, 4, 6, 3],
    };
    let mut c_in = 64;
    for (l, (&w, &nb)) in [64, 128, 256, 512].iter().zip(blocks.iter()).enumerate() {
        for b in 0..nb {
            let p = format!("layer{}.{b}", l + 1);
            keys.push((format!("{p}.conv1.weight"), vec![w, c_in, 3, 3]));
            bn(&mut keys, &format!("{p}.bn1"), w);
            keys.push((format!("{p}.conv2.weight"), vec![w, w, 3, 3]));
            bn(&mut keys, &format!("{p}.bn2"), w);
            if b == 0 && l > 0 {
                keys.push((format!("{p}.downsample.0.weight"), vec![w, c_in, 1, 1]));
                bn(&mut keys, &format!("{p}.downsample.1"), w);
            }
            c_in = w;
        }
    }
    keys.push(("fc.weight".into(), vec![num_classes, 512]));
    keys.push(("fc.bias".into(), vec![num_classes]));
    keys
}

/// The weights the script gave torchvision (`zeros`: all-zero tensors, for the error tests).
fn state_dict(arch: ResNetArch, stem: Stem, num_classes: usize, zeros: bool) -> HashMap<String, Tensor> {
    keyed_state_dict(&torchvision_keys(arch, stem, num_classes), "", tensor_range, zeros)
}

fn save(dir: &Path, name: &str, tensors: &HashMap<String, Tensor>) -> PathBuf {
    let path = dir.join(name);
    candle_core::safetensors::save(tensors, &path).unwrap();
    path
}

// ---- parity ----

#[derive(Deserialize)]
struct Fixture {
    case: String,
    arch: ResNetArch,
    stem: Stem,
    num_classes: usize,
    norm: Normalization,
    n: usize,
    height: usize,
    width: usize,
    pixels: Vec<u8>,
    logits: Vec<Vec<f64>>,
    torch_f32_max_abs_diff: f64,
}

/// The oracle on `dev` against torchvision's logits, within [`TOLERANCE`] on any device.
fn parity(case: &str, dev: &Device) {
    let text = std::fs::read_to_string(fixture_dir().join(format!("{case}.json"))).unwrap();
    let fx: Fixture = serde_json::from_str(&text).unwrap();
    assert_eq!(fx.case, case);
    let dir = tempfile::tempdir().unwrap();
    let path = save(dir.path(), "oracle.safetensors", &state_dict(fx.arch, fx.stem, fx.num_classes, false));
    let cfg = OracleConfig { arch: fx.arch, stem: fx.stem, norm: fx.norm, num_classes: fx.num_classes };
    let oracle = Oracle::load(&path, &cfg, dev).unwrap();
    assert_eq!(oracle.num_classes(), fx.num_classes);
    let got = oracle.logits(&fx.pixels, fx.n, fx.height, fx.width).unwrap();
    assert_eq!(got.len(), fx.n * fx.num_classes);
    let mut max_err = 0f64;
    for (i, row) in fx.logits.iter().enumerate() {
        for (j, &want) in row.iter().enumerate() {
            max_err = max_err.max((f64::from(got[i * fx.num_classes + j]) - want).abs());
        }
    }
    println!(
        "{case} on {dev:?}: max abs logit error vs torchvision (f64) {max_err:.3e} \
         (torchvision f32 itself: {:.3e})",
        fx.torch_f32_max_abs_diff
    );
    assert!(max_err <= TOLERANCE, "{case}: max abs error {max_err:e} > {TOLERANCE:e}");
    // A degenerate network (e.g. all activations dead) would pass trivially: the images must
    // get clearly different logits.
    let spread = fx.logits[0].iter().zip(&fx.logits[1]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(spread > 100.0 * TOLERANCE, "{case}: logits barely depend on the image");
}

#[test]
fn parity_resnet18_cifar() {
    parity("resnet18_cifar", &Device::Cpu);
}

#[test]
fn parity_resnet18_imagenet() {
    parity("resnet18_imagenet", &Device::Cpu);
}

#[test]
fn parity_resnet34_cifar() {
    parity("resnet34_cifar", &Device::Cpu);
}

#[test]
fn parity_resnet34_imagenet() {
    parity("resnet34_imagenet", &Device::Cpu);
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build and a GPU (scripts/gpu_check.sh)")]
fn parity_on_cuda() {
    let gpu = common::gpu::cuda();
    for case in ["resnet18_cifar", "resnet18_imagenet", "resnet34_cifar", "resnet34_imagenet"] {
        parity(case, &gpu);
    }
}

// ---- file formats ----

fn values_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

#[test]
fn pth_and_safetensors_fixtures_load_identically() {
    let dev = Device::Cpu;
    let pth = WeightMap::load(&fixture_dir().join("tiny_state_dict.pth"), &dev).unwrap();
    let st = WeightMap::load(&fixture_dir().join("tiny_state_dict.safetensors"), &dev).unwrap();
    let keys = pth.keys();
    assert_eq!(keys, ["bn.num_batches_tracked", "bn.running_var", "bn.weight", "conv.weight", "fc.bias", "fc.weight"]);
    assert_eq!(keys, st.keys());
    for key in &keys {
        let shape = pth.shape_of(key).unwrap();
        let (a, b) = (pth.get(&shape, key).unwrap(), st.get(&shape, key).unwrap());
        assert_eq!(a.dtype(), b.dtype(), "{key}");
        assert_eq!(values_f64(&a), values_f64(&b), "{key}");
    }
    // Integers are kept, floats (fc.bias is float64 in both files) become f32.
    let nbt = pth.get(&[], "bn.num_batches_tracked").unwrap();
    assert_eq!(nbt.dtype(), DType::I64);
    assert_eq!(nbt.to_scalar::<i64>().unwrap(), 7);
    assert_eq!(pth.get(&[2], "fc.bias").unwrap().dtype(), DType::F32);
    // fc.weight is stored transposed in the .pth: compare with the values the script drew.
    let fc = pth.pp("fc").get(&[2, 4], "weight").unwrap();
    let drawn = Tensor::from_vec(uniform_f32("tiny/fc.weight", 8, -1.0, 1.0), (4, 2), &dev).unwrap().t().unwrap();
    assert_eq!(values_f64(&fc), values_f64(&drawn));
    let conv = pth.get(&[4, 3, 3, 3], "conv.weight").unwrap();
    assert_eq!(values_f64(&conv), values_f64(&Tensor::new(uniform_f32("tiny/conv.weight", 108, -1.0, 1.0), &dev).unwrap()));
}

#[test]
fn legacy_pth_loads_like_safetensors() {
    // The pre-1.6 (non-zip) format is read too (tests/legacy_pth.rs covers its corners).
    let dev = Device::Cpu;
    let legacy = WeightMap::load(&fixture_dir().join("tiny_state_dict_legacy.pth"), &dev).unwrap();
    let st = WeightMap::load(&fixture_dir().join("tiny_state_dict.safetensors"), &dev).unwrap();
    assert_eq!(legacy.keys(), st.keys());
    for key in &st.keys() {
        let shape = st.shape_of(key).unwrap();
        let (a, b) = (legacy.get(&shape, key).unwrap(), st.get(&shape, key).unwrap());
        assert_eq!(a.dtype(), b.dtype(), "{key}");
        assert_eq!(values_f64(&a), values_f64(&b), "{key}");
    }
}

// ---- checkpoint/config mismatches ----

fn cifar18(num_classes: usize) -> OracleConfig {
    OracleConfig { arch: ResNetArch::ResNet18, stem: Stem::Cifar, norm: Normalization::imagenet(), num_classes }
}

fn load_err(tensors: &HashMap<String, Tensor>, cfg: &OracleConfig) -> (PathBuf, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = save(dir.path(), "oracle.safetensors", tensors);
    let err = Oracle::load(&path, cfg, &Device::Cpu).unwrap_err();
    (path, err.to_string())
}

#[test]
fn missing_tensor_is_named_with_the_file() {
    let mut sd = state_dict(ResNetArch::ResNet18, Stem::Cifar, 10, true);
    sd.remove("layer1.0.conv1.weight").unwrap();
    let (path, msg) = load_err(&sd, &cifar18(10));
    assert_eq!(msg, format!("weights {}: tensor \"layer1.0.conv1.weight\" is missing", path.display()));
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let mut sd = state_dict(ResNetArch::ResNet18, Stem::Cifar, 10, true);
    let key = "layer2.0.downsample.0.weight";
    let t = sd[key].reshape((128, 64)).unwrap();
    sd.insert(key.to_string(), t);
    let (path, msg) = load_err(&sd, &cifar18(10));
    assert_eq!(msg, format!("weights {}: tensor \"{key}\" has shape [128, 64], expected [128, 64, 1, 1]", path.display()));
}

#[test]
fn num_classes_mismatch_names_fc_weight() {
    let sd = state_dict(ResNetArch::ResNet18, Stem::Cifar, 5, true);
    let (path, msg) = load_err(&sd, &cifar18(10));
    assert_eq!(msg, format!("weights {}: tensor \"fc.weight\" has shape [5, 512], expected [10, 512]", path.display()));
}

#[test]
fn stem_and_arch_mismatches_are_caught() {
    // imagenet-stem checkpoint, cifar-stem config: conv1 has the wrong kernel.
    let sd = state_dict(ResNetArch::ResNet18, Stem::Imagenet, 10, true);
    let (path, msg) = load_err(&sd, &cifar18(10));
    assert_eq!(msg, format!("weights {}: tensor \"conv1.weight\" has shape [64, 3, 7, 7], expected [64, 3, 3, 3]", path.display()));
    // A ResNet-34 checkpoint holds every ResNet-18 key: only the leftovers give it away.
    let sd = state_dict(ResNetArch::ResNet34, Stem::Cifar, 10, true);
    let (path, msg) = load_err(&sd, &cifar18(10));
    assert_eq!(
        msg,
        format!(
            "weights {}: unexpected tensor \"layer1.2.bn1.bias\" for resnet18 (cifar stem, \
             10 classes)",
            path.display()
        )
    );
}

#[test]
fn logits_checks_the_buffer_length() {
    let dir = tempfile::tempdir().unwrap();
    let sd = state_dict(ResNetArch::ResNet18, Stem::Cifar, 10, true);
    let path = save(dir.path(), "oracle.safetensors", &sd);
    let oracle = Oracle::load(&path, &cifar18(10), &Device::Cpu).unwrap();
    assert!(oracle.logits(&[0u8; 10], 1, 4, 4).is_err());
    assert!(oracle.logits(&[], 0, 32, 32).unwrap().is_empty());
    // Zero weights: logits are the fc bias (zero here) for any image.
    let out = oracle.logits(&[7u8; 2 * 3 * 8 * 8], 2, 8, 8).unwrap();
    assert_eq!(out, vec![0.0; 20]);
}
