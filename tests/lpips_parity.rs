//! Parity of LPIPS with the `lpips` package v0.1 (alex and vgg), and its checkpoint errors.
//!
//! The fixtures in tests/fixtures/lpips/ come from scripts/make_lpips_fixtures.py: uint8 image
//! pairs (32x32, 64x64 and 31x45, alexnet's smallest height) with the distances
//! `lpips.LPIPS(net=..., version='0.1')` gives them (computed in float64), and the (key, shape)
//! list of the torchvision `features.*` and lpips `lin*` tensors, as torch listed them. The weights
//! (2.5M values for alex, 14.7M for vgg) are not stored: they are drawn from the counter-based
//! PRNG of tests/common/prng.rs, the bit-exact port of the scripts' one, keyed `"{net}/{key}"`,
//! with the per-tensor ranges of `tensor_range` below. They are written as two .safetensors files
//! (the backbone one also holding a `classifier.*` tensor, which must be ignored) and loaded
//! through `WeightMap::load` + `Lpips::load`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use rcaflow::models::lpips::{Lpips, LpipsNet};
use rcaflow::models::WeightMap;
use serde::Deserialize;

/// Max abs error of a distance against the package's float64 reference.
const TOLERANCE: f64 = 1e-5;
/// `CONV_GAIN` in the script: He-uniform conv weights.
const CONV_GAIN: f64 = std::f64::consts::SQRT_2;
/// `LIN_MAX` in the script: lin weights are uniform in [0, LIN_MAX).
const LIN_MAX: f64 = 0.5;

fn fixture_dir() -> PathBuf {
    common::repo().join("tests/fixtures/lpips")
}

/// Mirrors `tensor_range` in scripts/make_lpips_fixtures.py.
fn tensor_range(key: &str, shape: &[usize]) -> (f64, f64) {
    if key.starts_with("lin") {
        (0.0, LIN_MAX)
    } else if shape.len() == 4 {
        let a = CONV_GAIN * (3.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt();
        (-a, a)
    } else if key.ends_with(".bias") {
        (-0.1, 0.1)
    } else {
        panic!("no range for {key}")
    }
}

#[derive(Deserialize)]
struct NetKeys {
    backbone: Vec<(String, Vec<usize>)>,
    lin: Vec<(String, Vec<usize>)>,
}

/// (key, shape) of the backbone and lin tensors of `net`, as torch listed them.
fn keys(net: LpipsNet) -> NetKeys {
    let text = std::fs::read_to_string(fixture_dir().join("keys.json")).unwrap();
    let mut all: HashMap<String, NetKeys> = serde_json::from_str(&text).unwrap();
    all.remove(&net.to_string()).unwrap()
}

/// The PRNG tensors the script gave lpips for `keys` (keyed `"{net}/{key}"`).
fn tensors(net: LpipsNet, keys: &[(String, Vec<usize>)]) -> HashMap<String, Tensor> {
    common::random_weights::keyed_state_dict(keys, &format!("{net}/"), tensor_range, false)
}

/// Writes the backbone (plus a stand-in `classifier.1.weight`) and lin files into `dir`.
fn write_files(dir: &Path, net: LpipsNet, backbone: &HashMap<String, Tensor>, lin: &HashMap<String, Tensor>) -> (PathBuf, PathBuf) {
    let mut backbone = backbone.clone();
    backbone.insert("classifier.1.weight".to_string(), Tensor::zeros((4, 9), DType::F32, &Device::Cpu).unwrap());
    let bb = dir.join(format!("{net}_backbone.safetensors"));
    let ln = dir.join(format!("{net}_lin.safetensors"));
    candle_core::safetensors::save(&backbone, &bb).unwrap();
    candle_core::safetensors::save(lin, &ln).unwrap();
    (bb, ln)
}

fn load_files(net: LpipsNet, bb: &Path, ln: &Path) -> Result<Lpips, String> {
    load_files_on(net, bb, ln, &Device::Cpu)
}

fn load_files_on(net: LpipsNet, bb: &Path, ln: &Path, dev: &Device) -> Result<Lpips, String> {
    let backbone = WeightMap::load(bb, dev).map_err(|e| e.to_string())?;
    let lin = WeightMap::load(ln, dev).map_err(|e| e.to_string())?;
    Lpips::load(net, &backbone, &lin).map_err(|e| e.to_string())
}

/// The model with the script's weights, loaded from files the way users load theirs.
fn model(net: LpipsNet) -> Lpips {
    model_on(net, &Device::Cpu)
}

fn model_on(net: LpipsNet, dev: &Device) -> Lpips {
    let k = keys(net);
    let dir = tempfile::tempdir().unwrap();
    let (bb, ln) = write_files(dir.path(), net, &tensors(net, &k.backbone), &tensors(net, &k.lin));
    let m = load_files_on(net, &bb, &ln, dev).unwrap();
    assert_eq!(m.net(), net);
    m
}

#[derive(Deserialize)]
struct Reference {
    distances: Vec<f64>,
    torch_f32_max_abs_diff: f64,
}

#[derive(Deserialize)]
struct Case {
    case: String,
    n: usize,
    height: usize,
    width: usize,
    blend: Vec<Option<f64>>,
    x0: Vec<u8>,
    x1: Vec<u8>,
    alex: Reference,
    vgg: Reference,
}

fn case(name: &str) -> Case {
    let text = std::fs::read_to_string(fixture_dir().join(format!("{name}.json"))).unwrap();
    let c: Case = serde_json::from_str(&text).unwrap();
    assert_eq!(c.case, name);
    c
}

const CASES: [&str; 3] = ["size32", "size64", "odd31x45"];

/// The model on `dev` against lpips' distances, within [`TOLERANCE`] on any device.
fn parity(net: LpipsNet, dev: &Device) {
    let m = model_on(net, dev);
    let mut max_err = 0f64;
    for name in CASES {
        let c = case(name);
        let reference = match net {
            LpipsNet::Alex => &c.alex,
            LpipsNet::Vgg => &c.vgg,
        };
        let got = m.distance_u8(&c.x0, &c.x1, c.n, c.height, c.width).unwrap();
        assert_eq!(got.len(), c.n);
        let mut case_err = 0f64;
        for (i, (&g, &want)) in got.iter().zip(&reference.distances).enumerate() {
            let err = (f64::from(g) - want).abs();
            case_err = case_err.max(err);
            if c.blend[i].is_none() {
                // An identical pair: every squared difference is exactly zero.
                assert_eq!(g, 0.0, "{net} {name} pair {i}: identical images");
            } else {
                // A degenerate network (dead features) would pass trivially.
                assert!(want > 100.0 * TOLERANCE, "{net} {name} pair {i}: reference {want}");
            }
        }
        println!(
            "{net} {name}: distances {got:?}, max abs error vs lpips (f64) {case_err:.3e} \
             (lpips f32 itself: {:.3e})",
            reference.torch_f32_max_abs_diff
        );
        max_err = max_err.max(case_err);
    }
    println!("{net}: max abs error over all cases {max_err:.3e}");
    assert!(max_err <= TOLERANCE, "{net}: max abs error {max_err:e} > {TOLERANCE:e}");
}

#[test]
fn parity_alex() {
    parity(LpipsNet::Alex, &Device::Cpu);
}

#[test]
fn parity_vgg() {
    parity(LpipsNet::Vgg, &Device::Cpu);
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build and a GPU (scripts/gpu_check.sh)")]
fn parity_on_cuda() {
    let gpu = common::gpu::cuda();
    parity(LpipsNet::Alex, &gpu);
    parity(LpipsNet::Vgg, &gpu);
}

#[test]
fn tensor_api_matches_u8_api_and_is_symmetric() {
    let m = model(LpipsNet::Alex);
    let c = case("size32");
    let to_tensor = |p: &[u8]| {
        let v: Vec<f32> = p.iter().map(|&x| (f64::from(x) / 127.5 - 1.0) as f32).collect();
        Tensor::from_vec(v, (c.n, 3, c.height, c.width), &Device::Cpu).unwrap()
    };
    let (x0, x1) = (to_tensor(&c.x0), to_tensor(&c.x1));
    let d01: Vec<f32> = m.distance(&x0, &x1).unwrap().to_vec1().unwrap();
    let d10: Vec<f32> = m.distance(&x1, &x0).unwrap().to_vec1().unwrap();
    let u8s = m.distance_u8(&c.x0, &c.x1, c.n, c.height, c.width).unwrap();
    assert_eq!(d01, u8s);
    for (a, b) in d01.iter().zip(&d10) {
        assert!((a - b).abs() <= 1e-7, "{a} vs {b}");
    }
}

#[test]
fn inputs_are_checked() {
    let m = model(LpipsNet::Alex);
    // Buffer length.
    let err = m.distance_u8(&[0u8; 10], &[0u8; 10], 1, 32, 32).unwrap_err();
    assert!(err.to_string().contains("expected 3072 each"), "{err}");
    assert!(m.distance_u8(&[], &[], 0, 32, 32).unwrap().is_empty());
    // Below alexnet's smallest size (31): a clear error, not a candle shape error.
    let small = vec![128u8; 3 * 30 * 64];
    let err = m.distance_u8(&small, &small, 1, 30, 64).unwrap_err();
    // candle appends a backtrace when RUST_BACKTRACE is set: compare the message line.
    assert_eq!(
        err.to_string().lines().next().unwrap(),
        "lpips (alex): images of 30x64 are too small; the alex backbone's max-pools need at \
         least 31x31 pixels"
    );
    assert_eq!(LpipsNet::Alex.min_size(), 31);
    assert_eq!(LpipsNet::Vgg.min_size(), 16);
    // Mismatched pair shapes.
    let a = Tensor::zeros((1, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let b = Tensor::zeros((1, 3, 32, 33), DType::F32, &Device::Cpu).unwrap();
    let err = m.distance(&a, &b).unwrap_err();
    assert!(err.to_string().contains("differ in shape"), "{err}");
}

#[test]
fn missing_lin_tensor_is_named_with_the_file() {
    let net = LpipsNet::Vgg;
    let k = keys(net);
    // Zero-filled weights: only names and shapes matter here.
    let zeros = |keys: &[(String, Vec<usize>)]| -> HashMap<String, Tensor> {
        keys.iter()
            .map(|(key, shape)| {
                let t = Tensor::zeros(shape.as_slice(), DType::F32, &Device::Cpu).unwrap();
                (key.clone(), t)
            })
            .collect()
    };
    let backbone = zeros(&k.backbone);
    let dir = tempfile::tempdir().unwrap();

    let mut lin = zeros(&k.lin);
    lin.remove("lin3.model.1.weight").unwrap();
    let (bb, ln) = write_files(dir.path(), net, &backbone, &lin);
    assert_eq!(load_files(net, &bb, &ln).unwrap_err(), format!("weights {}: tensor \"lin3.model.1.weight\" is missing", ln.display()));

    // alex lin weights with the vgg backbone: the first width that differs is named.
    let alex_lin = zeros(&keys(LpipsNet::Alex).lin);
    let (bb, ln) = write_files(dir.path(), net, &backbone, &alex_lin);
    assert_eq!(
        load_files(net, &bb, &ln).unwrap_err(),
        format!(
            "weights {}: tensor \"lin1.model.1.weight\" has shape [1, 192, 1, 1], expected \
             [1, 128, 1, 1]",
            ln.display()
        )
    );

    // A missing backbone tensor names the torchvision key and the backbone file.
    let mut backbone_missing = backbone.clone();
    backbone_missing.remove("features.17.bias").unwrap();
    let (bb, ln) = write_files(dir.path(), net, &backbone_missing, &zeros(&k.lin));
    assert_eq!(load_files(net, &bb, &ln).unwrap_err(), format!("weights {}: tensor \"features.17.bias\" is missing", bb.display()));

    // A features.* tensor the network does not use (another architecture) is refused.
    let mut extra = backbone.clone();
    extra.insert("features.1.weight".to_string(), Tensor::zeros(64, DType::F32, &Device::Cpu).unwrap());
    let (bb, ln) = write_files(dir.path(), net, &extra, &zeros(&k.lin));
    assert_eq!(
        load_files(net, &bb, &ln).unwrap_err(),
        format!("weights {}: unexpected tensor \"features.1.weight\" for lpips vgg backbone", bb.display())
    );
}
