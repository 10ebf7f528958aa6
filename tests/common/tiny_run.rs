//! A tiny sampler run with every evaluation stage, for the end-to-end tests (tests/sampler.rs,
//! tests/resume.rs; tests/prometheus_live.rs takes its pieces at another size): a 3-class
//! colour set as the real side, the colour oracle, a random-weight UNet (the `ddim_defaults`
//! sampler fixture at 32x32), random Inception and LPIPS weights.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::topology::{Sampler, Topology};
use super::{color_set, random_weights};

/// How many classes the tiny runs have (the UNet fixture's).
pub const CLASSES: usize = 3;

/// Writes the models and the real images under `root` (once; later calls reuse them).
pub fn write_models(root: &Path) {
    if root.join("unet").exists() {
        return;
    }
    write_networks(root);
    write_real(root, 4, 8);
    write_oracle(root);
}

/// `root/real/<class>/<i>.png`: `per_class` uniform `size` x `size` images in each of the
/// [`CLASSES`] first palette colours.
pub fn write_real(root: &Path, per_class: usize, size: u32) {
    for (name, color) in &color_set::PALETTE[..CLASSES] {
        let dir = root.join("real").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            color_set::write_png(&dir.join(format!("{i:03}.png")), size, |_, _| *color);
        }
    }
}

/// `root/oracle.safetensors`: the colour oracle of the [`CLASSES`] first palette colours.
pub fn write_oracle(root: &Path) {
    let colors: Vec<[u8; 3]> = color_set::PALETTE[..CLASSES].iter().map(|(_, c)| *c).collect();
    candle_core::safetensors::save(&color_set::color_oracle(&colors), root.join("oracle.safetensors")).unwrap();
}

/// The random-weight networks: the 3-class UNet folder `root/unet` (the sampler fixture at
/// 32x32), `inception.safetensors`, `alexnet.safetensors` and `alex-lin.safetensors`.
pub fn write_networks(root: &Path) {
    let fixture = super::repo().join("tests/fixtures/sampler/ddim_defaults");
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

/// Writes the models (see [`write_models`]) and `root/<name>.toml`: run directory
/// `run-<name>`, 5 images a class from 3 DDPM steps in units of 2 (`replicas` sampler
/// replicas), batches of 4, 4 LPIPS pairs, samples saved in `samples-<name>`; with
/// `restart_max`, the oracle is restarted that many times at most.
pub fn write_topology(root: &Path, name: &str, replicas: i64, restart_max: Option<i64>) -> PathBuf {
    write_models(root);
    let size = Sampler { steps: 3, per_class: 5, unit_size: 2, seed: 3 };
    let mut t = Topology::new(&format!("run-{name}"))
        .set("run", "default_capacity", 2)
        .image_folder("real", "real")
        .set("sources.real", "unit_size", 2)
        .sampler("sampler", "ddpm", size)
        .set("sources.sampler", "replicas", replicas)
        .evaluation("sampler", 4, 4)
        .sink("samples", "save_images", &["sampler"])
        .set("sinks.samples", "path", format!("samples-{name}"));
    if let Some(max) = restart_max {
        let mut restart = toml::Table::new();
        restart.insert("max".into(), max.into());
        t = t.set("transforms.oracle", "restart", restart);
    }
    t.write(&root.join(format!("{name}.toml")))
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

/// The differences between two [`comparable`] reports beyond what a change of device allows:
/// integers (counts, confusion matrices) and strings exactly, floats within `rel` relative
/// (1e-12 absolute near zero). Each entry names the JSON path.
pub fn differences(a: &Value, b: &Value, rel: f64) -> Vec<String> {
    fn walk_pair(path: &str, a: &Value, b: &Value, rel: f64, out: &mut Vec<String>) {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for key in x.keys().chain(y.keys().filter(|k| !x.contains_key(*k))) {
                    match (x.get(key), y.get(key)) {
                        (Some(u), Some(v)) => walk_pair(&format!("{path}.{key}"), u, v, rel, out),
                        _ => out.push(format!("{path}.{key}: only in one report")),
                    }
                }
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
                for (i, (u, v)) in x.iter().zip(y).enumerate() {
                    walk_pair(&format!("{path}[{i}]"), u, v, rel, out);
                }
            }
            (Value::Number(x), Value::Number(y)) if !(x.is_f64() || y.is_f64()) => {
                if x != y {
                    out.push(format!("{path}: {x} != {y}"));
                }
            }
            (Value::Number(x), Value::Number(y)) => {
                let (u, v) = (x.as_f64().unwrap(), y.as_f64().unwrap());
                if (u - v).abs() > rel * u.abs().max(v.abs()) + 1e-12 {
                    out.push(format!("{path}: {u} vs {v} (relative {:.2e})", (u - v).abs() / u.abs().max(v.abs())));
                }
            }
            _ if a != b => out.push(format!("{path}: {a} != {b}")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk_pair("report", a, b, rel, &mut out);
    out
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
