//! Random-weight model files for tests, in the shapes and key names of the real files: pytorch-fid's
//! Inception, LPIPS' alexnet and lin layers, and diffusers UNet folders whose weights come from
//! the keyed PRNG shared with the fixture scripts (scripts/make_unet_fixtures.py).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::prng;

/// (lo, hi) of one UNet state_dict tensor; mirrors `tensor_range` in
/// scripts/make_unet_fixtures.py (unit-variance convs and linears, GroupNorm near identity).
pub fn unet_tensor_range(key: &str, shape: &[usize]) -> (f64, f64) {
    if key == "class_embedding.weight" {
        (-1.0, 1.0)
    } else if shape.len() == 4 {
        let a = (3.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt();
        (-a, a)
    } else if shape.len() == 2 {
        let a = (3.0 / shape[1] as f64).sqrt();
        (-a, a)
    } else if key.ends_with(".bias") {
        (-0.1, 0.1)
    } else if key.ends_with(".weight") {
        (0.5, 1.5)
    } else {
        panic!("no range for {key} {shape:?}")
    }
}

/// A state dict of the (key, shape) list `keys`, as the fixture scripts draw one: BatchNorm's
/// `num_batches_tracked` counters are 0, every other tensor holds the keyed PRNG's float32
/// values (keyed `{prefix}{key}`) in `range(key, shape)`, or only zeros with `zeros` (weights
/// that load but compute nothing, for the error tests).
pub fn keyed_state_dict(
    keys: &[(String, Vec<usize>)],
    prefix: &str,
    range: impl Fn(&str, &[usize]) -> (f64, f64),
    zeros: bool,
) -> HashMap<String, Tensor> {
    let dev = Device::Cpu;
    keys.iter()
        .map(|(key, shape)| {
            let t = if key.ends_with("num_batches_tracked") {
                Tensor::new(0i64, &dev).unwrap()
            } else if zeros {
                Tensor::zeros(shape.as_slice(), DType::F32, &dev).unwrap()
            } else {
                let (lo, hi) = range(key, shape);
                let n = shape.iter().product();
                Tensor::from_vec(prng::uniform_f32(&format!("{prefix}{key}"), n, lo, hi), shape.as_slice(), &dev).unwrap()
            };
            (key.clone(), t)
        })
        .collect()
}

/// The UNet weights the fixture scripts gave diffusers, from the state_dict's (key, shape) list.
pub fn unet_state_dict(keys: &[(String, Vec<usize>)]) -> HashMap<String, Tensor> {
    keyed_state_dict(keys, "", unet_tensor_range, false)
}

/// A diffusers model folder at `dir`: the files of `fixture` (config.json, scheduler_config.json,
/// ...; not run.json / parity.json) plus diffusion_pytorch_model.safetensors from `keys`.
pub fn unet_folder(fixture: &Path, keys: &[(String, Vec<usize>)], dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(fixture).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name != "run.json" && name != "parity.json" {
            std::fs::copy(&path, dir.join(name)).unwrap();
        }
    }
    candle_core::safetensors::save(&unet_state_dict(keys), dir.join("diffusion_pytorch_model.safetensors")).unwrap();
}

/// Random alexnet `features.*` and lpips lin weights (the shapes of the real files), keyed PRNG.
pub fn random_lpips_weights(dir: &Path) -> (PathBuf, PathBuf) {
    let mut backbone_keys = Vec::new();
    for (i, shape) in [(0, [64, 3, 11, 11]), (3, [192, 64, 5, 5]), (6, [384, 192, 3, 3]), (8, [256, 384, 3, 3]), (10, [256, 256, 3, 3])] {
        backbone_keys.push((format!("features.{i}.weight"), shape.to_vec()));
        backbone_keys.push((format!("features.{i}.bias"), vec![shape[0]]));
    }
    let lin_keys: Vec<(String, Vec<usize>)> =
        [64, 192, 384, 256, 256].into_iter().enumerate().map(|(k, c)| (format!("lin{k}.model.1.weight"), vec![1, c, 1, 1])).collect();
    let backbone = keyed_state_dict(
        &backbone_keys,
        "lpips/",
        |key, shape| {
            if key.ends_with(".bias") {
                (-0.1, 0.1)
            } else {
                let a = (6.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt();
                (-a, a)
            }
        },
        false,
    );
    let lin = keyed_state_dict(&lin_keys, "lpips/", |_, _| (0.0, 0.5), false);
    let (b, l) = (dir.join("alexnet.safetensors"), dir.join("alex-lin.safetensors"));
    candle_core::safetensors::save(&backbone, &b).unwrap();
    candle_core::safetensors::save(&lin, &l).unwrap();
    (b, l)
}

/// Random weights of pytorch-fid's Inception (every key and shape, as torch lists them), keyed PRNG.
pub fn random_inception(path: &Path) {
    #[derive(serde::Deserialize)]
    struct Keys {
        keys: Vec<(String, Vec<usize>)>,
    }
    let listing = super::repo().join("tests/fixtures/inception/state_dict_keys.json");
    let keys: Keys = serde_json::from_slice(&std::fs::read(listing).unwrap()).unwrap();
    // Keyed, so every test that makes this file gets the same network.
    let range = |key: &str, shape: &[usize]| {
        if shape.len() == 4 {
            let a = (6.0 / (shape[1] * shape[2] * shape[3]) as f64).sqrt();
            (-a, a)
        } else if key == "fc.weight" {
            (-0.04, 0.04)
        } else if key.ends_with("running_var") || key.ends_with(".weight") {
            (0.5, 1.5)
        } else {
            (-0.1, 0.1)
        }
    };
    let state = keyed_state_dict(&keys.keys, "inception/", range, false);
    candle_core::safetensors::save(&state, path).unwrap();
}
