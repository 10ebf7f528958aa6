//! A tiny sampler run with every evaluation stage, for the end-to-end tests (tests/sampler.rs,
//! tests/resume.rs; tests/prometheus_live.rs takes its networks): a 3-class colour set as the real side, the colour oracle, a random-weight
//! UNet (the `ddim_defaults` sampler fixture at 32x32), random Inception and LPIPS weights.
//! The includer declares `mod color_set`, `mod prng` and `mod random_weights`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{color_set, random_weights};

/// Writes the models and the real images under `root` (once; later calls reuse them).
pub fn write_models(root: &Path) {
    if root.join("unet").exists() {
        return;
    }
    write_networks(root);
    let colors: Vec<[u8; 3]> = color_set::PALETTE[..3].iter().map(|(_, c)| *c).collect();
    for (name, color) in &color_set::PALETTE[..3] {
        let dir = root.join("real").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..4 {
            color_set::write_png(&dir.join(format!("{i:03}.png")), 8, |_, _| *color);
        }
    }
    candle_core::safetensors::save(&color_set::color_oracle(&colors), root.join("oracle.safetensors")).unwrap();
}

/// The random-weight networks: the 3-class UNet folder `root/unet` (the sampler fixture at
/// 32x32), `inception.safetensors`, `alexnet.safetensors` and `alex-lin.safetensors`.
pub fn write_networks(root: &Path) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampler/ddim_defaults");
    #[derive(serde::Deserialize)]
    struct Keys {
        state_dict: Vec<(String, Vec<usize>)>,
    }
    let keys: Keys = serde_json::from_slice(&std::fs::read(fixture.join("run.json")).unwrap()).unwrap();
    let unet = root.join("unet");
    random_weights::unet_folder(&fixture, &keys.state_dict, &unet);
    // The same weights at 32x32 (no weight depends on the size): LPIPS' alexnet needs >= 31x31.
    let config = std::fs::read_to_string(unet.join("config.json")).unwrap();
    assert!(config.contains("\"sample_size\": 8"), "the sampler fixture's UNet changed size");
    std::fs::write(unet.join("config.json"), config.replace("\"sample_size\": 8", "\"sample_size\": 32")).unwrap();
    random_weights::random_inception(&root.join("inception.safetensors"));
    random_weights::random_lpips_weights(root);
}

/// Writes `root/<name>.toml`: run directory `run-<name>`, samples in `samples-<name>`;
/// `oracle_extra` is appended to the oracle's table (`restart = { max = 1 }`, say).
pub fn write_topology(root: &Path, name: &str, replicas: usize, oracle_extra: &str) -> PathBuf {
    write_models(root);
    let path = root.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            r#"[run]
dir = "run-{name}"
default_capacity = 2

[sources.real]
type = "image_folder"
path = "real"
origin = "real"
unit_size = 2

[sources.sampler]
type = "ddpm_sampler"
unet = "unet"
scheduler = "ddpm"
steps = 3
per_class = 5
unit_size = 2
seed = 3
replicas = {replicas}

[transforms.batches]
type = "batcher"
inputs = ["real", "sampler"]
batch_size = 4

[transforms.oracle]
type = "oracle_classifier"
inputs = ["batches"]
weights = "oracle.safetensors"
arch = "resnet18"
stem = "cifar"
normalization = "minus-one-one"
{oracle_extra}

[transforms.inception]
type = "inception_v3"
inputs = ["batches"]
weights = "inception.safetensors"

[sinks.rca]
type = "rca"
inputs = ["oracle"]

[sinks.fid]
type = "fid"
inputs = ["inception"]

[sinks.inception_score]
type = "inception_score"
inputs = ["inception"]
splits = 2

[sinks.lpips]
type = "lpips_diversity"
inputs = ["batches"]
net = "alex"
backbone = "alexnet.safetensors"
lin = "alex-lin.safetensors"
pairs = 4

[sinks.samples]
type = "save_images"
inputs = ["sampler"]
path = "samples-{name}"

[sinks.report]
type = "report"
inputs = ["rca", "fid", "inception_score", "lpips"]
"#
        ),
    )
    .unwrap();
    path
}

/// The report less what legitimately varies between runs: timings, paths, replica count.
pub fn comparable(mut report: Value) -> Value {
    let obj = report.as_object_mut().unwrap();
    for key in ["timing", "topology", "figures"] {
        obj.remove(key);
    }
    for (_, sampler) in obj["generation"].as_object_mut().unwrap() {
        let s = sampler.as_object_mut().unwrap();
        for key in ["generation_seconds", "busy_seconds", "images_per_second", "replicas"] {
            s.remove(key);
        }
    }
    report
}

/// Every file under `dir`, recursively.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}
