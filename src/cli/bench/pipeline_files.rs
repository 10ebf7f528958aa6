//! What `rcaflow bench --pipeline DIR` runs on, written into DIR: random-weight model files in
//! the formats a real run reads (a diffusers UNet folder, the oracle's, Inception's and LPIPS'
//! safetensors), a real image set of noise PNGs, and the three topologies of the measurement
//! (generation alone, evaluation alone, both pipelined), shaped as topology/koin10.toml.
//!
//! Weights are drawn by [`crate::models::random_weights`]: each model is built once from a
//! random source, which records the key and shape of every tensor it served, and those tensors
//! are written out, so the files load back into exactly the networks a real run builds. Speed
//! does not depend on the values; the metrics of such a run mean nothing.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::models::inception::InceptionV3;
use crate::models::lpips::{Lpips, LpipsNet};
use crate::models::random_weights::{recording_var_builder, Draws};
use crate::models::resnet::{ResNet, ResNetArch, ResNetConfig, Stem};
use crate::models::unet::{SampleSize, UNet2DConfig, UNet2DModel};
use crate::models::WeightMap;
use crate::units::mix64;

/// Image side of the run (the paper's 32x32).
pub const SIZE: usize = 32;

/// The T of the UNet folder's DDPM schedule (the paper's).
const TRAIN_TIMESTEPS: usize = 1000;

/// The size and placement of the measured run.
#[derive(Debug, Clone)]
pub struct PipelineShape {
    pub classes: usize,
    pub per_class: usize,
    pub real_per_class: usize,
    /// `ddim` or `ddpm`.
    pub scheduler: String,
    pub steps: usize,
    pub unit_size: usize,
    /// The batcher's batch.
    pub batch: usize,
    /// The sampler's `dtype`.
    pub dtype: String,
    /// The sampler's `device` when it differs from the run's default.
    pub sampler_device: Option<String>,
}

impl PipelineShape {
    /// Class folder names, `class-00`, `class-01`, ...
    pub fn class_names(&self) -> Vec<String> {
        (0..self.classes).map(|c| format!("class-{c:02}")).collect()
    }

    pub fn generated(&self) -> usize {
        self.classes * self.per_class
    }

    pub fn real(&self) -> usize {
        self.classes * self.real_per_class
    }
}

/// The three topology files, in DIR.
pub struct Topologies {
    pub generate: PathBuf,
    pub evaluate: PathBuf,
    pub pipelined: PathBuf,
}

/// Run directories and folders the topologies name, relative to DIR.
pub const GENERATE_RUN: &str = "run-generate";
pub const EVALUATE_RUN: &str = "run-evaluate";
pub const PIPELINED_RUN: &str = "run-pipelined";
const GENERATED_IMAGES: &str = "generated";
const PIPELINED_IMAGES: &str = "pipelined-samples";

fn write_err(path: &Path, cause: impl std::fmt::Display) -> String {
    format!("cannot write \"{}\": {cause}", path.display())
}

fn save(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), String> {
    crate::train::write_safetensors(path, tensors).map_err(|e| write_err(path, e))
}

fn drawn(map: &WeightMap) -> Result<HashMap<String, Tensor>, String> {
    let draws = map.random_draws().ok_or("internal: not a random weight map")?;
    draws.tensors().map_err(|e| e.to_string())
}

/// Writes every model file into `dir`: `unet/` (the diffusers folder of `unet` at 32x32 with
/// one class embedding per class), `oracle.safetensors` (a cifar-stem ResNet-18),
/// `inception.safetensors` (pytorch-fid's network), `alexnet.safetensors` and
/// `alex-lin.safetensors` (LPIPS).
pub fn write_models(dir: &Path, unet: &UNet2DConfig, shape: &PipelineShape) -> Result<(), String> {
    let cpu = Device::Cpu;
    let mut unet = unet.clone();
    unet.sample_size = Some(SampleSize::Square(SIZE));
    unet.num_class_embeds = Some(shape.classes);
    unet.validate().map_err(|e| format!("--unet-config: {e}"))?;
    let draws = Draws::default();
    UNet2DModel::new(&unet, recording_var_builder(&cpu, candle_core::DType::F32, draws.clone()))
        .map_err(|e| format!("--unet-config: cannot build the UNet: {e}"))?;
    let weights = draws.tensors().map_err(|e| e.to_string())?;
    crate::train::ddpm::write_model_folder(&dir.join("unet"), &unet, &weights, TRAIN_TIMESTEPS, &shape.class_names())
        .map_err(|e| e.to_string())?;

    let oracle = WeightMap::random("random oracle weights", &cpu);
    ResNet::load(&oracle, &ResNetConfig::new(ResNetArch::ResNet18, Stem::Cifar, shape.classes)).map_err(|e| e.to_string())?;
    save(&dir.join("oracle.safetensors"), &drawn(&oracle)?)?;

    let inception = WeightMap::random("random inception weights", &cpu);
    InceptionV3::load(&inception).map_err(|e| e.to_string())?;
    save(&dir.join("inception.safetensors"), &drawn(&inception)?)?;

    let (backbone, lin) = (WeightMap::random("random alexnet weights", &cpu), WeightMap::random("random lin weights", &cpu));
    Lpips::load(LpipsNet::Alex, &backbone, &lin).map_err(|e| e.to_string())?;
    save(&dir.join("alexnet.safetensors"), &drawn(&backbone)?)?;
    save(&dir.join("alex-lin.safetensors"), &drawn(&lin)?)
}

/// `dir/real/<class>/<i>.png`: `real_per_class` 32x32 noise images a class, a different tint
/// per class, the same on every call.
pub fn write_real(dir: &Path, shape: &PipelineShape) -> Result<(), String> {
    let plane = SIZE * SIZE;
    for (c, name) in shape.class_names().iter().enumerate() {
        let folder = dir.join("real").join(name);
        std::fs::create_dir_all(&folder).map_err(|e| write_err(&folder, e))?;
        for i in 0..shape.real_per_class {
            let key = mix64(((c as u64) << 32) | i as u64);
            let planar: Vec<u8> = (0..3 * plane)
                .map(|k| {
                    let noise = (mix64(key ^ k as u64) >> 56) as u8 / 2;
                    let tint = ((c * 97 + (k / plane) * 53) % 128) as u8;
                    noise + tint
                })
                .collect();
            let path = folder.join(format!("{i:04}.png"));
            crate::data::image_folder::write_png(&path, SIZE, SIZE, &planar).map_err(|e| write_err(&path, e))?;
        }
    }
    Ok(())
}

/// `[sources.<name>]`, the sampler of `unet/`.
fn sampler(text: &mut String, name: &str, shape: &PipelineShape) {
    let _ = write!(
        text,
        "[sources.{name}]\ntype = \"ddpm_sampler\"\nunet = \"unet\"\nscheduler = \"{}\"\nsteps = {}\nper_class = {}\nunit_size = {}\nseed = 0\ndtype = \"{}\"\n",
        shape.scheduler, shape.steps, shape.per_class, shape.unit_size, shape.dtype
    );
    if let Some(device) = &shape.sampler_device {
        let _ = writeln!(text, "device = \"{device}\"");
    }
    text.push('\n');
}

/// `[sinks.<name>]` saving `input`'s images in the folder `path`.
fn save_images(text: &mut String, name: &str, input: &str, path: &str) {
    let _ = write!(text, "[sinks.{name}]\ntype = \"save_images\"\ninputs = [\"{input}\"]\npath = \"{path}\"\n\n");
}

/// koin10's evaluation after the source `generated`: the real images, a batcher, the oracle
/// (rca), Inception (fid, inception_score), LPIPS diversity and the report (no figures: they
/// are not part of what is timed).
fn evaluation(text: &mut String, generated: &str, shape: &PipelineShape) {
    let _ = write!(
        text,
        r#"[sources.real]
type = "image_folder"
path = "real"
origin = "real"

[transforms.batches]
type = "batcher"
inputs = ["real", "{generated}"]
batch_size = {batch}

[transforms.oracle]
type = "oracle_classifier"
inputs = ["batches"]
weights = "oracle.safetensors"
arch = "resnet18"
stem = "cifar"
normalization = "imagenet"

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
interval_secs = 120

[sinks.inception_score]
type = "inception_score"
inputs = ["inception"]
splits = {splits}

[sinks.lpips]
type = "lpips_diversity"
inputs = ["batches"]
net = "alex"
backbone = "alexnet.safetensors"
lin = "alex-lin.safetensors"
pairs = 1000

[sinks.report]
type = "report"
inputs = ["rca", "fid", "inception_score", "lpips"]
figures = false
"#,
        batch = shape.batch,
        // koin10's 10 splits; fewer in a run too small to fill them.
        splits = shape.generated().min(10)
    );
}

/// Writes the three topologies into `dir`:
/// 1. `generate.toml`: the sampler and `save_images` (koin10's) into `generated/`;
/// 2. `evaluate.toml`: `generated/` read back by an `image_folder`, through the evaluation;
/// 3. `pipelined.toml`: the sampler feeding the evaluation and its own `save_images`.
pub fn write_topologies(dir: &Path, shape: &PipelineShape) -> Result<Topologies, String> {
    let classes: Vec<String> = shape.class_names().iter().map(|c| format!("\"{c}\"")).collect();
    let header = |run: &str| format!("# rcaflow bench --pipeline: {run}\n[run]\ndir = \"{run}\"\n\n");

    let mut generate = header(GENERATE_RUN);
    generate.insert_str(generate.len() - 1, &format!("classes = [{}]\n", classes.join(", ")));
    sampler(&mut generate, "sampler", shape);
    save_images(&mut generate, "samples", "sampler", GENERATED_IMAGES);

    let mut evaluate = header(EVALUATE_RUN);
    let _ = write!(evaluate, "[sources.generated]\ntype = \"image_folder\"\npath = \"{GENERATED_IMAGES}\"\norigin = \"generated\"\n\n");
    evaluation(&mut evaluate, "generated", shape);

    let mut pipelined = header(PIPELINED_RUN);
    sampler(&mut pipelined, "generated", shape);
    save_images(&mut pipelined, "samples", "generated", PIPELINED_IMAGES);
    evaluation(&mut pipelined, "generated", shape);

    let write = |name: &str, text: &str| -> Result<PathBuf, String> {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| write_err(&path, e))?;
        Ok(path)
    };
    Ok(Topologies {
        generate: write("generate.toml", &generate)?,
        evaluate: write("evaluate.toml", &evaluate)?,
        pipelined: write("pipelined.toml", &pipelined)?,
    })
}
