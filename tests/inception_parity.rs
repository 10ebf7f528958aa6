//! Parity of the FID Inception with pytorch-fid, and its checkpoint errors.
//!
//! The fixtures in tests/fixtures/inception/ come from scripts/make_inception_fixtures.py:
//! pytorch-fid's pool3 features and unbiased logits (computed in float64) for a few uint8 images
//! (32x32 and 45x71, upsampled to 299x299, and one native 299x299), and the (key, shape) list of
//! the model's state_dict as torch writes it. Neither the weights (24M values) nor the pixels are
//! stored: both are drawn from the counter-based PRNG of tests/common/prng.rs, the bit-exact
//! port of the scripts' one, with the per-tensor ranges of `tensor_range` below. The weights are
//! written to a .safetensors file and loaded through `WeightMap::load` + `InceptionV3::load`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use rcaflow::models::inception::{InceptionV3, PT_INCEPTION_FILE};
use rcaflow::models::{WeightMap, WeightsError};
use serde::Deserialize;

/// Max relative error (max |candle - reference| / max |reference|) of pool3 and of the logits.
const TOLERANCE: f64 = 1e-4;
/// `CONV_GAIN` in the script: He-uniform conv weights.
const CONV_GAIN: f64 = std::f64::consts::SQRT_2;

fn fixture_dir() -> PathBuf {
    common::repo().join("tests/fixtures/inception")
}

/// Mirrors `tensor_range` in scripts/make_inception_fixtures.py.
fn tensor_range(key: &str, shape: &[usize]) -> (f64, f64) {
    if shape.len() == 4 {
        let a = CONV_GAIN * (3.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt();
        (-a, a)
    } else if key == "fc.weight" {
        let a = (3.0 / shape[1] as f64).sqrt();
        (-a, a)
    } else if key.ends_with("running_mean") || key.ends_with(".bias") {
        (-0.1, 0.1)
    } else if key.ends_with("running_var") || key.ends_with(".weight") {
        (0.5, 1.5)
    } else {
        panic!("no range for {key}")
    }
}

#[derive(Deserialize)]
struct Keys {
    keys: Vec<(String, Vec<usize>)>,
}

/// (key, shape) of every tensor of pytorch-fid's state_dict, as torch listed it.
fn state_dict_keys() -> Vec<(String, Vec<usize>)> {
    let text = std::fs::read_to_string(fixture_dir().join("state_dict_keys.json")).unwrap();
    serde_json::from_str::<Keys>(&text).unwrap().keys
}

/// The weights the script gave pytorch-fid (`zeros`: all-zero tensors, for the error tests).
fn state_dict(zeros: bool) -> HashMap<String, Tensor> {
    common::random_weights::keyed_state_dict(&state_dict_keys(), "", tensor_range, zeros)
}

/// The network with the script's weights, loaded once from a .safetensors file and shared by
/// the parity tests (drawing 24M values in a debug build is the slow part).
fn network() -> &'static InceptionV3 {
    static NET: OnceLock<InceptionV3> = OnceLock::new();
    NET.get_or_init(|| network_on(&Device::Cpu))
}

/// The script's network, loaded from a file onto `dev`.
fn network_on(dev: &Device) -> InceptionV3 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pt_inception.safetensors");
    candle_core::safetensors::save(&state_dict(false), &path).unwrap();
    let weights = WeightMap::load(&path, dev).unwrap();
    InceptionV3::load(&weights).unwrap()
}

// ---- parity ----

#[derive(Deserialize)]
struct Fixture {
    case: String,
    n: usize,
    height: usize,
    width: usize,
    pixels_key: String,
    pixels_sum: u64,
    pool3: Vec<Vec<f64>>,
    logits: Vec<Vec<f64>>,
    torch_f32_pool3_rel_err: f64,
    torch_f32_logits_rel_err: f64,
}

/// max |got - want| / max |want| over all values.
fn rel_err(got: &[f32], want: &[Vec<f64>]) -> f64 {
    let want: Vec<f64> = want.iter().flatten().copied().collect();
    assert_eq!(got.len(), want.len());
    let diff = got.iter().zip(&want).map(|(&g, &w)| (f64::from(g) - w).abs()).fold(0.0, f64::max);
    diff / want.iter().map(|w| w.abs()).fold(0.0, f64::max)
}

/// `net` (on any device) against pytorch-fid's pool3 and logits, within [`TOLERANCE`].
fn parity(case: &str, net: &InceptionV3) {
    let text = std::fs::read_to_string(fixture_dir().join(format!("{case}.json"))).unwrap();
    let fx: Fixture = serde_json::from_str(&text).unwrap();
    assert_eq!(fx.case, case);
    let pixels = common::prng::images_u8(&fx.pixels_key, fx.n * 3 * fx.height * fx.width);
    let sum: u64 = pixels.iter().map(|&p| u64::from(p)).sum();
    assert_eq!(sum, fx.pixels_sum, "{case}: regenerated pixels differ from the script's");
    let (pool3, logits) = net.features(&pixels, fx.n, fx.height, fx.width).unwrap();
    assert_eq!(pool3.len(), fx.n * InceptionV3::FEATURES);
    assert_eq!(logits.len(), fx.n * InceptionV3::LOGITS);
    let (e_pool3, e_logits) = (rel_err(&pool3, &fx.pool3), rel_err(&logits, &fx.logits));
    println!(
        "{case}: relative error vs pytorch-fid (f64): pool3 {e_pool3:.3e}, logits {e_logits:.3e} \
         (pytorch-fid f32 itself: {:.3e}, {:.3e})",
        fx.torch_f32_pool3_rel_err, fx.torch_f32_logits_rel_err
    );
    assert!(
        e_pool3 <= TOLERANCE && e_logits <= TOLERANCE,
        "{case}: relative errors pool3 {e_pool3:e}, logits {e_logits:e} > {TOLERANCE:e}"
    );
}

#[test]
fn parity_upsampled_32x32_batch_of_two() {
    parity("up32", network());
    // A degenerate network (dead activations) would pass trivially: the two images must get
    // clearly different features.
    let fx: Fixture = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("up32.json")).unwrap()).unwrap();
    let first: Vec<f32> = fx.pool3[0].iter().map(|&v| v as f32).collect();
    let spread = rel_err(&first, &fx.pool3[1..]);
    assert!(spread > 100.0 * TOLERANCE, "pool3 barely depends on the image ({spread:e})");
}

#[test]
fn parity_native_299_no_resize() {
    parity("native299", network());
}

#[test]
fn parity_odd_size_45x71() {
    parity("odd45x71", network());
}

#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build and a GPU (scripts/gpu_check.sh)")]
fn parity_on_cuda() {
    let net = network_on(&common::gpu::cuda());
    for case in ["up32", "native299", "odd45x71"] {
        parity(case, &net);
    }
}

/// The same weights saved by torch itself (`torch.save(model.state_dict())`: an OrderedDict in a
/// zip .pth, with `num_batches_tracked`, as a re-saved pytorch-fid file is). 95 MB, so not
/// committed: `python scripts/make_inception_fixtures.py --pth FILE`, then
/// `RCAFLOW_INCEPTION_PTH=FILE cargo test --test inception_parity -- --ignored`.
#[test]
#[ignore = "needs RCAFLOW_INCEPTION_PTH (see the doc comment)"]
fn parity_through_a_torch_pth() {
    let path = std::env::var_os("RCAFLOW_INCEPTION_PTH").expect("RCAFLOW_INCEPTION_PTH is unset");
    let weights = WeightMap::load(Path::new(&path), &Device::Cpu).unwrap();
    let net = InceptionV3::load(&weights).unwrap();
    let fx: Fixture = serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("odd45x71.json")).unwrap()).unwrap();
    let pixels = common::prng::images_u8(&fx.pixels_key, fx.n * 3 * fx.height * fx.width);
    let (pool3, logits) = net.features(&pixels, fx.n, fx.height, fx.width).unwrap();
    let (e_pool3, e_logits) = (rel_err(&pool3, &fx.pool3), rel_err(&logits, &fx.logits));
    println!("{path:?}: relative error pool3 {e_pool3:.3e}, logits {e_logits:.3e}");
    assert!(e_pool3 <= TOLERANCE && e_logits <= TOLERANCE);
}

#[test]
fn features_checks_the_buffer_length() {
    let net = network();
    let err = net.features(&[0u8; 10], 1, 4, 4).unwrap_err();
    assert!(err.to_string().contains("got 10 pixel bytes, expected 48 for 1 x 3 x 4 x 4"), "{err}");
    let (p, l) = net.features(&[], 0, 32, 32).unwrap();
    assert!(p.is_empty() && l.is_empty());
    // forward_u8 wants uint8 images.
    let x = Tensor::zeros((1, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    assert!(net.forward_u8(&x).is_err());
}

// ---- checkpoint errors ----

const LABEL: &str = "/weights/pt_inception.safetensors";

fn load_err(tensors: HashMap<String, Tensor>) -> WeightsError {
    InceptionV3::load(&WeightMap::from_tensors(tensors, LABEL)).unwrap_err()
}

#[test]
fn zero_weights_load_and_every_key_is_used() {
    // Zero weights: every BatchNorm outputs its (zero) bias, so all features are zero.
    let net = InceptionV3::load(&WeightMap::from_tensors(state_dict(true), LABEL)).unwrap();
    let (p, l) = net.features(&[9u8; 3 * 16 * 16], 1, 16, 16).unwrap();
    assert_eq!((p.len(), l.len()), (2048, 1008));
    assert!(p.iter().chain(&l).all(|&v| v == 0.0));
}

#[test]
fn missing_tensor_is_named() {
    let mut sd = state_dict(true);
    sd.remove("Mixed_6b.branch7x7_2.conv.weight").unwrap();
    let err = load_err(sd);
    assert!(matches!(err, WeightsError::Missing { .. }));
    assert_eq!(err.to_string(), format!("weights {LABEL}: tensor \"Mixed_6b.branch7x7_2.conv.weight\" is missing"));
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    // A 1x3 kernel stored as 3x1 (a transposed asymmetric conv) is caught.
    let mut sd = state_dict(true);
    let key = "Mixed_7c.branch3x3_2a.conv.weight";
    let t = Tensor::zeros((384, 384, 3, 1), DType::F32, &Device::Cpu).unwrap();
    sd.insert(key.to_string(), t);
    assert_eq!(
        load_err(sd).to_string(),
        format!(
            "weights {LABEL}: tensor \"{key}\" has shape [384, 384, 3, 1], expected \
             [384, 384, 1, 3]"
        )
    );
}

#[test]
fn torchvision_imagenet_inception_is_refused() {
    // torchvision's own Inception weights: 1000 classes (reported first) and AuxLogits.
    let mut sd = state_dict(true);
    let fc = Tensor::zeros((1000, 2048), DType::F32, &Device::Cpu).unwrap();
    sd.insert("fc.weight".to_string(), fc);
    assert_eq!(load_err(sd).to_string(), format!("weights {LABEL}: tensor \"fc.weight\" has shape [1000, 2048], expected [1008, 2048]"));
    let mut sd = state_dict(true);
    let aux = Tensor::zeros((1008, 768), DType::F32, &Device::Cpu).unwrap();
    sd.insert("AuxLogits.fc.weight".to_string(), aux);
    assert_eq!(
        load_err(sd).to_string(),
        format!(
            "weights {LABEL}: unexpected tensor \"AuxLogits.fc.weight\" for pytorch-fid \
             InceptionV3"
        )
    );
}

#[test]
fn legacy_pt_inception_file_is_read() {
    // pytorch-fid's released file predates torch 1.6's zip format: it is read like any legacy
    // checkpoint (the bytes here are a tiny legacy-format state_dict, so InceptionV3 then
    // refuses its first mismatching tensor, naming the file).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(PT_INCEPTION_FILE);
    let fixtures = common::repo().join("tests/fixtures/resnet");
    std::fs::copy(fixtures.join("tiny_state_dict_legacy.pth"), &path).unwrap();
    let legacy = WeightMap::load(&path, &Device::Cpu).unwrap();
    let st = WeightMap::load(&fixtures.join("tiny_state_dict.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(legacy.keys(), st.keys());
    for key in &st.keys() {
        let shape = st.shape_of(key).unwrap();
        let (a, b) = (legacy.get(&shape, key).unwrap(), st.get(&shape, key).unwrap());
        let flat = |t: &Tensor| -> Vec<f64> { t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap() };
        assert_eq!(a.dtype(), b.dtype(), "{key}");
        assert_eq!(flat(&a), flat(&b), "{key}");
    }
    let err = InceptionV3::load(&legacy).unwrap_err();
    assert!(err.to_string().starts_with(&format!("weights {}: tensor ", path.display())), "{err}");
}
