//! Parity of the UNet (src/models/unet/) with diffusers' `UNet2DModel`, and the loader's errors.
//!
//! The fixtures in tests/fixtures/unet/<case>/ come from scripts/make_unet_fixtures.py: each
//! case's config.json as diffusers saved it, and parity.json with the state_dict's (key, shape)
//! list, the inputs and diffusers' float64 output. The weights are not committed: both sides
//! draw them from the counter-based PRNG of tests/common/prng.rs (the bit-exact port of the
//! script's), keyed by tensor name, with the ranges of `unet_tensor_range` in tests/common/random_weights.rs (mirroring the script's).
//! The test writes a real diffusers folder (config.json + diffusion_pytorch_model.safetensors)
//! to a temporary directory and loads it through `UNet2DModel::load`, the path users take.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use rcaflow::models::unet::{CONFIG_FILE, WEIGHTS_FILE};
use rcaflow::models::UNet2DModel;
use serde::Deserialize;

/// Max abs error over max abs reference value.
const TOLERANCE: f64 = 1e-4;

/// bf16 and f16 UNets (on a GPU) against diffusers' f64 output: 8 and 11 bits of mantissa, 4e-3
/// and 5e-4 per operation, through a few dozen layers.
const HALF_TOLERANCE: [f64; 2] = [5e-2, 1e-2];

fn fixture_dir(case: &str) -> PathBuf {
    common::repo().join("tests/fixtures/unet").join(case)
}

#[derive(Deserialize)]
struct Fixture {
    case: String,
    state_dict: Vec<(String, Vec<usize>)>,
    sample_shape: Vec<usize>,
    sample: Vec<f64>,
    timesteps: Vec<serde_json::Value>,
    class_labels: Option<Vec<f64>>,
    class_labels_dtype: Option<String>,
    output_shape: Vec<usize>,
    output: Vec<f64>,
    torch_f32_rel_err: f64,
}

fn fixture(case: &str) -> Fixture {
    let text = std::fs::read_to_string(fixture_dir(case).join("parity.json")).unwrap();
    let fx: Fixture = serde_json::from_str(&text).unwrap();
    assert_eq!(fx.case, case);
    fx
}

/// The weights the script gave diffusers.
fn state_dict(fx: &Fixture) -> HashMap<String, Tensor> {
    common::random_weights::unet_state_dict(&fx.state_dict)
}

/// A diffusers model folder in a fresh temporary directory.
fn write_folder(config_json: &str, tensors: &HashMap<String, Tensor>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(CONFIG_FILE), config_json).unwrap();
    candle_core::safetensors::save(tensors, dir.path().join(WEIGHTS_FILE)).unwrap();
    dir
}

fn fixture_config(case: &str) -> String {
    std::fs::read_to_string(fixture_dir(case).join(CONFIG_FILE)).unwrap()
}

fn inputs(fx: &Fixture, dev: &Device) -> (Tensor, Tensor, Option<Tensor>) {
    let sample: Vec<f32> = fx.sample.iter().map(|&v| v as f32).collect();
    let sample = Tensor::from_vec(sample, fx.sample_shape.as_slice(), dev).unwrap();
    // Integer timesteps as the schedulers give them (int64), fractional ones as float32.
    let timesteps = if fx.timesteps.iter().all(|v| v.is_i64()) {
        Tensor::new(fx.timesteps.iter().map(|v| v.as_i64().unwrap()).collect::<Vec<_>>(), dev).unwrap()
    } else {
        Tensor::new(fx.timesteps.iter().map(|v| v.as_f64().unwrap() as f32).collect::<Vec<_>>(), dev).unwrap()
    };
    let n = fx.sample_shape[0];
    let labels = fx.class_labels.as_ref().map(|values| match fx.class_labels_dtype.as_deref() {
        Some("int64") => Tensor::new(values.iter().map(|&v| v as i64).collect::<Vec<_>>(), dev).unwrap(),
        Some("float32") => {
            let v: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            let d = v.len() / n;
            Tensor::from_vec(v, (n, d), dev).unwrap()
        }
        other => panic!("labels dtype {other:?}"),
    });
    (sample, timesteps, labels)
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

/// max |a - b| / max |b|.
fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    diff / b.iter().map(|y| y.abs()).fold(0.0, f64::max)
}

/// The pre-0.13 names of the attention projections, as old diffusers checkpoints store them.
fn with_deprecated_attention_names(sd: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    sd.into_iter()
        .map(|(k, t)| {
            let k = if k.contains(".attentions.") {
                k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.").replace(".to_out.0.", ".proj_attn.")
            } else {
                k
            };
            (k, t)
        })
        .collect()
}

/// The model on `dev` against diffusers' output, within [`TOLERANCE`] on any device.
fn parity(case: &str, deprecated_names: bool, dev: &Device) {
    let fx = fixture(case);
    let mut sd = state_dict(&fx);
    if deprecated_names {
        sd = with_deprecated_attention_names(sd);
        assert!(sd.keys().any(|k| k.ends_with(".proj_attn.weight")), "{case} has no attention to rename");
    }
    let dir = write_folder(&fixture_config(case), &sd);
    let model = UNet2DModel::load(dir.path(), dev).unwrap();
    let (sample, timesteps, labels) = inputs(&fx, dev);
    let out = model.forward(&sample, &timesteps, labels.as_ref()).unwrap();
    assert_eq!(out.dims(), fx.output_shape.as_slice());
    let got = values(&out);
    let err = rel_err(&got, &fx.output);
    println!("{case} on {dev:?}: relative error vs diffusers (f64) {err:.3e} (diffusers' own f32: {:.3e})", fx.torch_f32_rel_err);
    assert!(err <= TOLERANCE, "{case}: relative error {err:e} > {TOLERANCE:e}");
    // A degenerate network would pass trivially: the samples must get clearly different outputs.
    let per = got.len() / fx.output_shape[0];
    let spread = rel_err(&fx.output[..per], &fx.output[per..2 * per]);
    assert!(spread > 100.0 * TOLERANCE, "{case}: outputs barely depend on the input ({spread:e})");
}

#[test]
fn parity_class_attn() {
    parity("class_attn", false, &Device::Cpu);
}

#[test]
fn parity_deep_timestep_class_with_deprecated_attention_names() {
    parity("deep_timestep_class", true, &Device::Cpu);
}

#[test]
fn parity_scale_shift_resnet() {
    parity("scale_shift_resnet", false, &Device::Cpu);
}

#[test]
fn parity_unconditional_no_mid() {
    parity("unconditional_no_mid", false, &Device::Cpu);
}

/// Every case on GPU 0, within the same limit.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build and a GPU (scripts/gpu_check.sh)")]
fn parity_on_cuda() {
    let gpu = common::gpu::cuda();
    for (case, deprecated) in [("class_attn", false), ("deep_timestep_class", true), ("scale_shift_resnet", false), ("unconditional_no_mid", false)] {
        parity(case, deprecated, &gpu);
    }
    // Half precision on the GPU: the same network, its rounding alone changed.
    let fx = fixture("class_attn");
    let dir = write_folder(&fixture_config("class_attn"), &state_dict(&fx));
    let (sample, timesteps, labels) = inputs(&fx, &gpu);
    for (dtype, limit) in [(DType::BF16, HALF_TOLERANCE[0]), (DType::F16, HALF_TOLERANCE[1])] {
        let model = UNet2DModel::load_as(dir.path(), &gpu, dtype).unwrap();
        let out = model.forward(&sample, &timesteps, labels.as_ref()).unwrap();
        let err = rel_err(&values(&out), &fx.output);
        println!("class_attn {dtype:?} on {gpu:?}: relative error vs diffusers (f64) {err:.3e}");
        assert!(err <= limit, "{dtype:?}: relative error {err:e} > {limit:e}");
    }
}

#[test]
fn class_labels_change_the_output() {
    let fx = fixture("class_attn");
    let dir = write_folder(&fixture_config("class_attn"), &state_dict(&fx));
    let model = UNet2DModel::load(dir.path(), &Device::Cpu).unwrap();
    assert!(model.is_class_conditional());
    let (sample, timesteps, labels) = inputs(&fx, &Device::Cpu);
    let a = values(&model.forward(&sample, &timesteps, labels.as_ref()).unwrap());
    let other = Tensor::new(&[0i64, 1, 2], &Device::Cpu).unwrap();
    let b = values(&model.forward(&sample, &timesteps, Some(&other)).unwrap());
    assert!(rel_err(&b, &a) > 100.0 * TOLERANCE);
    // diffusers raises without labels on a class-conditional model; so does this.
    let err = model.forward(&sample, &timesteps, None).unwrap_err();
    assert_eq!(err.to_string(), "unet input: class labels are required: the model is class-conditional (num_class_embeds = 3)");
}

// ---- config and checkpoint errors ----

fn load_err(config_json: &str, tensors: &HashMap<String, Tensor>) -> (PathBuf, String) {
    let dir = write_folder(config_json, tensors);
    let err = UNet2DModel::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
    (dir.path().to_path_buf(), err)
}

/// The class_attn config with one field replaced.
fn edited_config(field: &str, value: serde_json::Value) -> String {
    let mut cfg: serde_json::Value = serde_json::from_str(&fixture_config("class_attn")).unwrap();
    cfg[field] = value;
    serde_json::to_string_pretty(&cfg).unwrap()
}

fn zeros_state_dict() -> HashMap<String, Tensor> {
    fixture("class_attn")
        .state_dict
        .iter()
        .map(|(k, s)| (k.clone(), Tensor::zeros(s.as_slice(), DType::F32, &Device::Cpu).unwrap()))
        .collect()
}

#[test]
fn unsupported_config_values_are_rejected_by_name() {
    let sd = zeros_state_dict();
    let cfg = edited_config("down_block_types", serde_json::json!(["DownBlock2D", "CrossAttnDownBlock2D"]));
    let (dir, msg) = load_err(&cfg, &sd);
    assert_eq!(
        msg,
        format!(
            "unet config \"{}\": down_block_types[1] = \"CrossAttnDownBlock2D\" is not supported; expected DownBlock2D or \
             AttnDownBlock2D",
            dir.join(CONFIG_FILE).display()
        )
    );
    let (dir, msg) = load_err(&edited_config("act_fn", "gelu".into()), &sd);
    assert_eq!(msg, format!("unet config \"{}\": act_fn = \"gelu\" is not supported; expected silu", dir.join(CONFIG_FILE).display()));
    let (dir, msg) = load_err(&edited_config("norm_num_groups", "8".into()), &sd);
    assert_eq!(
        msg,
        format!("unet config \"{}\": norm_num_groups: invalid type: string \"8\", expected usize", dir.join(CONFIG_FILE).display())
    );
    let (dir, msg) = load_err("{\"in_channels\": 3,", &sd);
    assert!(msg.starts_with(&format!("unet config \"{}\": invalid json: ", dir.join(CONFIG_FILE).display())), "{msg}");
}

#[test]
fn missing_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let msg = UNet2DModel::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("unet config \"{}\": cannot read: ", dir.path().join(CONFIG_FILE).display())), "{msg}");
    std::fs::write(dir.path().join(CONFIG_FILE), fixture_config("class_attn")).unwrap();
    let msg = UNet2DModel::load(dir.path(), &Device::Cpu).unwrap_err().to_string();
    assert!(msg.starts_with(&format!("unet weights \"{}\": cannot read: ", dir.path().join(WEIGHTS_FILE).display())), "{msg}");
}

#[test]
fn missing_tensor_is_named() {
    let mut sd = zeros_state_dict();
    sd.remove("down_blocks.1.attentions.0.to_k.weight").unwrap();
    let (dir, msg) = load_err(&fixture_config("class_attn"), &sd);
    assert_eq!(
        msg,
        format!("unet weights \"{}\": tensor \"down_blocks.1.attentions.0.to_k.weight\" is missing", dir.join(WEIGHTS_FILE).display())
    );
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let mut sd = zeros_state_dict();
    sd.insert("class_embedding.weight".into(), Tensor::zeros((4, 128), DType::F32, &Device::Cpu).unwrap());
    let (dir, msg) = load_err(&fixture_config("class_attn"), &sd);
    assert_eq!(
        msg,
        format!(
            "unet weights \"{}\": tensor \"class_embedding.weight\" has shape [4, 128], expected [3, 128]",
            dir.join(WEIGHTS_FILE).display()
        )
    );
}

#[test]
fn config_and_checkpoint_disagreeing_is_caught() {
    // A class-conditional checkpoint under an unconditional config: every tensor the config
    // asks for is there, only the leftover gives the mismatch away.
    let cfg = edited_config("num_class_embeds", serde_json::Value::Null);
    let (dir, msg) = load_err(&cfg, &zeros_state_dict());
    assert_eq!(
        msg,
        format!(
            "unet weights \"{}\": unexpected tensor \"class_embedding.weight\" (1 unused in all): the checkpoint does not match its \
             config",
            dir.join(WEIGHTS_FILE).display()
        )
    );
}
