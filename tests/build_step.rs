//! The build step between validation and running: every component loads and checks what it
//! needs before any stage starts, and every build error of every component comes back at once,
//! named by component, as validation's do. Uses the committed demo models (models/demo).

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::bin::rcaflow;

fn demo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo")
}

/// The demo oracle less one tensor, and an "inception" file that is not a weights file.
fn broken_weights(dir: &Path) -> (PathBuf, PathBuf) {
    let mut tensors = candle_core::safetensors::load(demo().join("oracle.safetensors"), &Device::Cpu).unwrap();
    assert!(tensors.remove("layer4.1.bn2.weight").is_some(), "the demo oracle is a ResNet-18");
    let oracle = dir.join("oracle.safetensors");
    candle_core::safetensors::save(&tensors.into_iter().collect::<std::collections::HashMap<String, Tensor>>(), &oracle).unwrap();
    let inception = dir.join("inception.pth");
    std::fs::write(&inception, b"not a checkpoint").unwrap();
    (oracle, inception)
}

fn topology(dir: &Path, oracle: &Path, inception: &Path) -> PathBuf {
    let text = format!(
        r#"
[run]
dir = "run"

[sources.real]
type = "image_folder"
path = "{eval}"
origin = "real"
unit_size = 20

[sources.sampler]
type = "ddpm_sampler"
unet = "{ddpm}"
scheduler = "ddim"
steps = 2
per_class = 2
unit_size = 2

[transforms.oracle]
type = "oracle_classifier"
inputs = ["real", "sampler"]
weights = "{oracle}"
arch = "resnet18"
stem = "cifar"
normalization = "imagenet"

[transforms.inception]
type = "inception_v3"
inputs = ["sampler"]
weights = "{inception}"

[sinks.rca]
type = "rca"
inputs = ["oracle"]

[sinks.is]
type = "inception_score"
inputs = ["inception"]
"#,
        eval = demo().join("eval").display(),
        ddpm = demo().join("ddpm").display(),
        oracle = oracle.display(),
        inception = inception.display(),
    );
    let path = dir.join("topology.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn every_build_error_is_reported_at_once_before_the_run_starts() {
    let dir = tempfile::tempdir().unwrap();
    let (oracle, inception) = broken_weights(dir.path());
    let topology = topology(dir.path(), &oracle, &inception);
    let out = rcaflow().args(["run", "--topology"]).arg(&topology).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a run that cannot build fails like a bad topology; stderr:\n{stderr}");
    assert!(stderr.contains("2 components failed to build"), "both failures at once:\n{stderr}");
    let oracle_line = stderr.lines().find(|l| l.contains("- transforms.oracle:")).unwrap_or_else(|| panic!("oracle named:\n{stderr}"));
    assert!(oracle_line.contains("layer4.1.bn2.weight"), "the missing tensor is named: {oracle_line}");
    assert!(stderr.lines().any(|l| l.contains("- transforms.inception:")), "inception named:\n{stderr}");
    // Nothing ran and nothing was written: the run directory was never made.
    assert!(!dir.path().join("run").exists(), "a failed build leaves no run directory");
    // `validate` loads no model, so the same file validates.
    let validate = rcaflow().args(["validate", "--topology"]).arg(&topology).output().unwrap();
    assert!(validate.status.success(), "{}", String::from_utf8_lossy(&validate.stderr));
}

/// The demo-rca topology under `dir`, with `edit` applied to its text.
fn demo_rca(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("topology/demo-rca.toml")).unwrap();
    let text =
        text.replace("../models/demo", &demo().display().to_string()).replace("../runs/demo-rca", &dir.join("run").display().to_string());
    let path = dir.join("topology.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// The demo-rca topology with the oracle placed on a GPU (`device = "cuda:0"`).
#[cfg(not(feature = "cuda"))]
fn demo_on(dir: &Path, oracle_device: &str) -> PathBuf {
    demo_rca(dir, |text| text.replace("normalization = \"imagenet\"", &format!("normalization = \"imagenet\"\ndevice = \"{oracle_device}\"")))
}

/// A sampler's `dtype` is checked against its device in the build: bf16 has no CPU kernels, so
/// a CPU run refuses it naming the component; a bad string is a validation error.
#[test]
fn a_sampler_dtype_the_device_cannot_run_fails_the_build_naming_the_component() {
    let dir = tempfile::tempdir().unwrap();
    let with_dtype = |dtype: &str| {
        let dtype = dtype.to_string();
        demo_rca(dir.path(), move |text| text.replace("seed = 0", &format!("seed = 0\ndtype = \"{dtype}\"")))
    };
    let topology = with_dtype("bf16");
    let out = rcaflow().args(["run", "--device", "cpu", "--topology"]).arg(&topology).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = stderr.lines().find(|l| l.contains("- sources.sampler:")).unwrap_or_else(|| panic!("component named:\n{stderr}"));
    assert!(line.contains("dtype \"bf16\" on device \"cpu\""), "{line}");
    assert!(!dir.path().join("run").exists());

    let topology = with_dtype("float16");
    let out = rcaflow().args(["validate", "--topology"]).arg(&topology).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("sources.sampler") && stderr.contains("dtype \"float16\": expected \"f32\", \"bf16\" or \"f16\""), "{stderr}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_cpu_only_build_refuses_a_gpu_naming_the_component_or_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let topology = demo_on(dir.path(), "cuda:0");
    let run = |extra: &[&str]| rcaflow().args(["run", "--topology"]).arg(&topology).args(extra).output().unwrap();

    let out = run(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = stderr.lines().find(|l| l.contains("- transforms.oracle:")).unwrap_or_else(|| panic!("component named:\n{stderr}"));
    assert!(line.contains("device \"cuda:0\": this rcaflow is a CPU-only build") && line.contains("--features cuda"), "{line}");
    assert!(stderr.contains("1 component failed to build"), "only the oracle asked for a GPU:\n{stderr}");
    assert!(!dir.path().join("run").exists());

    // The flag is refused at once, before the topology is even built.
    let out = run(&["--device", "cuda:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.lines().any(|l| l.contains("--device: device \"cuda:1\": this rcaflow is a CPU-only build")), "{stderr}");
    let out = run(&["--device", "gpu0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--device: device \"gpu0\": expected \"cpu\", \"cuda\" or \"cuda:N\""), "{stderr}");

    // A bad device string in the topology is a validation error naming the component.
    let bad = demo_on(dir.path(), "cuda:x");
    let out = rcaflow().args(["validate", "--topology"]).arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("transforms.oracle: device \"cuda:x\": expected"), "{stderr}");
}

/// `[weights] max_mib` caps the weights files a run reads: a file over it is refused in the
/// build, before any of it is read, naming the component, the file and the setting.
#[test]
fn a_weights_file_over_the_configured_cap_fails_the_build_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let topology = demo_rca(dir.path(), |text| text);
    let config = dir.path().join("rcaflow.toml");
    std::fs::write(&config, "[weights]\nmax_mib = 1\n").unwrap();
    let out = rcaflow().arg("--config").arg(&config).args(["run", "--topology"]).arg(&topology).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let line = stderr.lines().find(|l| l.contains("- transforms.oracle:")).unwrap_or_else(|| panic!("component named:\n{stderr}"));
    assert!(line.contains("oracle.safetensors") && line.contains("is 3 MiB, larger than the weights.max_mib limit of 1 MiB"), "{line}");
    assert!(!dir.path().join("run").exists());

    std::fs::write(&config, "[weights]\nmax_mib = 0\n").unwrap();
    let out = rcaflow().arg("--config").arg(&config).args(["validate", "--topology"]).arg(&topology).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("weights.max_mib must be positive, found 0"), "{stderr}");
}
