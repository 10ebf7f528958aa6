//! `rcaflow bench`'s measuring: each model of the evaluation and generation paths with random
//! weights at its production shape, timed over repeats after untimed warm-ups, with the peak
//! resident memory of the process while it ran.
//!
//! The shapes follow the workloads they stand for (issue 15's table), and scripts/bench_torch.py
//! measures the same with PyTorch, diffusers, pytorch-fid and lpips, printing the same table and
//! JSON keys:
//! - `unet`: one forward of the sampler's UNet (the paper config, config/unet-paper.json) on a
//!   32x32 batch of 16: 16 image-steps;
//! - `inception`: pytorch-fid's InceptionV3 on 32x32 uint8 images resized to 299, batch 50;
//! - `resnet18`, `resnet34`: the cifar-stem oracle on 32x32, batch 64;
//! - `lpips-alex`, `lpips-vgg`: LPIPS on 32 pairs of 32x32 images.
//!
//! Statistics are in [`stats`]; nothing here prints.

pub mod stats;

use std::fmt;
use std::str::FromStr;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::models::inception::InceptionV3;
use crate::models::lpips::{Lpips, LpipsNet};
use crate::models::precision::Precision;
use crate::models::random_weights::{random_uniform, var_builder_as};
use crate::models::resnet::{ResNet, ResNetArch, ResNetConfig, Stem};
use crate::models::unet::{UNet2DConfig, UNet2DModel};
use crate::models::WeightMap;

pub use stats::Stats;

/// The paper's sampler UNet (64, 128, 256 channels, attention at 16x16 and 8x8, 16.1 M
/// parameters), the default of `--unet-config`.
pub const PAPER_UNET_CONFIG: &str = include_str!("../../config/unet-paper.json");

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("unknown model \"{0}\"; expected one of unet, inception, resnet18, resnet34, lpips-alex, lpips-vgg")]
    UnknownModel(String),
    #[error("{model}: cannot build it: {cause}")]
    Build { model: BenchModel, cause: String },
    #[error("{model}: forward failed: {cause}")]
    Forward { model: BenchModel, cause: String },
}

/// One of the benchmarked models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchModel {
    Unet,
    Inception,
    Resnet18,
    Resnet34,
    LpipsAlex,
    LpipsVgg,
}

impl BenchModel {
    pub const ALL: [BenchModel; 6] =
        [BenchModel::Unet, BenchModel::Inception, BenchModel::Resnet18, BenchModel::Resnet34, BenchModel::LpipsAlex, BenchModel::LpipsVgg];

    pub fn name(self) -> &'static str {
        match self {
            BenchModel::Unet => "unet",
            BenchModel::Inception => "inception",
            BenchModel::Resnet18 => "resnet18",
            BenchModel::Resnet34 => "resnet34",
            BenchModel::LpipsAlex => "lpips-alex",
            BenchModel::LpipsVgg => "lpips-vgg",
        }
    }

    /// The batch of its workload (issue 15's table).
    pub fn default_batch(self) -> usize {
        match self {
            BenchModel::Unet => 16,
            BenchModel::Inception => 50,
            BenchModel::Resnet18 | BenchModel::Resnet34 => 64,
            BenchModel::LpipsAlex | BenchModel::LpipsVgg => 32,
        }
    }

    /// What one item of the batch is, as the throughput's unit.
    pub fn unit(self) -> &'static str {
        match self {
            BenchModel::Unet => "image-steps/s",
            BenchModel::Inception | BenchModel::Resnet18 | BenchModel::Resnet34 => "images/s",
            BenchModel::LpipsAlex | BenchModel::LpipsVgg => "pairs/s",
        }
    }
}

impl fmt::Display for BenchModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BenchModel {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        BenchModel::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| BenchError::UnknownModel(s.to_string()))
    }
}

/// The side length of every benchmark's input images.
const SIZE: usize = 32;

/// A model with its input batch, ready to run forward again and again.
enum Workload {
    Unet { model: UNet2DModel, x: Tensor, t: Tensor, labels: Tensor },
    Inception { model: InceptionV3, pixels: Tensor },
    Resnet { model: ResNet, x: Tensor },
    Lpips { model: Lpips, x0: Tensor, x1: Tensor },
}

impl Workload {
    fn build(model: BenchModel, batch: usize, opts: &BenchOptions, device: &Device) -> Result<Workload, String> {
        let unet = &opts.unet;
        let dims = [batch, 3, SIZE, SIZE];
        let err = |e: &dyn fmt::Display| e.to_string();
        Ok(match model {
            BenchModel::Unet => {
                let classes = unet.num_class_embeds.unwrap_or(0);
                let (c, h, w) = match unet.sample_size {
                    Some(s) => (unet.in_channels, s.hw().0, s.hw().1),
                    None => (unet.in_channels, SIZE, SIZE),
                };
                let model = UNet2DModel::new(unet, var_builder_as(device, opts.unet_dtype.dtype())).map_err(|e| err(&e))?;
                let x = random_uniform("bench/x", &[batch, c, h, w], -1.0, 1.0, device).map_err(|e| err(&e))?;
                // A mid-schedule timestep, one per sample as the sampler gives them.
                let t = Tensor::full(500i64, batch, device).map_err(|e| err(&e))?;
                let labels: Vec<u32> = (0..batch as u32).map(|i| i % classes.max(1) as u32).collect();
                let labels = Tensor::from_vec(labels, batch, device).map_err(|e| err(&e))?;
                Workload::Unet { model, x, t, labels }
            }
            BenchModel::Inception => {
                let model = InceptionV3::load(&WeightMap::random("random inception weights", device)).map_err(|e| err(&e))?;
                let pixels =
                    random_uniform("bench/pixels", &dims, 0.0, 255.0, device).and_then(|t| t.to_dtype(DType::U8)).map_err(|e| err(&e))?;
                Workload::Inception { model, pixels }
            }
            BenchModel::Resnet18 | BenchModel::Resnet34 => {
                let arch = if model == BenchModel::Resnet18 { ResNetArch::ResNet18 } else { ResNetArch::ResNet34 };
                let cfg = ResNetConfig::new(arch, Stem::Cifar, 10);
                let model = ResNet::load(&WeightMap::random("random resnet weights", device), &cfg).map_err(|e| err(&e))?;
                let x = random_uniform("bench/x", &dims, -2.0, 2.0, device).map_err(|e| err(&e))?;
                Workload::Resnet { model, x }
            }
            BenchModel::LpipsAlex | BenchModel::LpipsVgg => {
                let net = if model == BenchModel::LpipsAlex { LpipsNet::Alex } else { LpipsNet::Vgg };
                let model = Lpips::load(
                    net,
                    &WeightMap::random("random lpips backbone weights", device),
                    &WeightMap::random("random lpips lin weights", device),
                )
                .map_err(|e| err(&e))?;
                let x0 = random_uniform("bench/x0", &dims, -1.0, 1.0, device).map_err(|e| err(&e))?;
                let x1 = random_uniform("bench/x1", &dims, -1.0, 1.0, device).map_err(|e| err(&e))?;
                Workload::Lpips { model, x0, x1 }
            }
        })
    }

    /// One forward pass, waited for (a GPU's queue drained) so the clock sees all of it.
    fn run(&self) -> Result<(), String> {
        let out = match self {
            Workload::Unet { model, x, t, labels } => model.forward(x, t, Some(labels)).map_err(|e| e.to_string())?,
            Workload::Inception { model, pixels } => model.forward_u8(pixels).map_err(|e| e.to_string())?.0,
            Workload::Resnet { model, x } => model.forward(x).map_err(|e| e.to_string())?,
            Workload::Lpips { model, x0, x1 } => model.distance(x0, x1).map_err(|e| e.to_string())?,
        };
        out.device().synchronize().map_err(|e| e.to_string())
    }
}

/// How to run each benchmark.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Overrides every model's default batch.
    pub batch: Option<usize>,
    pub warmup: usize,
    pub repeats: usize,
    pub unet: UNet2DConfig,
    /// The UNet's precision (the sampler's `dtype`); the evaluators stay f32, as in a run.
    pub unet_dtype: Precision,
}

/// One model's measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchResult {
    pub model: String,
    pub batch: usize,
    pub unit: String,
    pub warmup: usize,
    pub repeats: usize,
    /// Seconds per forward pass over the repeats.
    pub seconds: Stats,
    /// Items (images, image-steps, pairs) per second: batch / seconds, per repeat.
    pub throughput: Stats,
    /// The process's peak resident memory while building and running this model (VmHWM,
    /// reset before it where the kernel allows), MiB; `None` where /proc is not there.
    pub peak_rss_mib: Option<f64>,
}

/// Builds `model` with random weights and times it.
pub fn bench_model(model: BenchModel, opts: &BenchOptions, device: &Device) -> Result<BenchResult, BenchError> {
    let batch = opts.batch.unwrap_or(model.default_batch());
    reset_peak_rss();
    let work = Workload::build(model, batch, opts, device).map_err(|cause| BenchError::Build { model, cause })?;
    let forward = |_: usize| work.run().map_err(|cause| BenchError::Forward { model, cause });
    for i in 0..opts.warmup {
        forward(i)?;
    }
    let mut seconds = Vec::with_capacity(opts.repeats);
    for i in 0..opts.repeats {
        let start = Instant::now();
        forward(i)?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    let throughput: Vec<f64> = seconds.iter().map(|s| batch as f64 / s).collect();
    Ok(BenchResult {
        model: model.name().to_string(),
        batch,
        unit: model.unit().to_string(),
        warmup: opts.warmup,
        repeats: opts.repeats,
        seconds: Stats::of(&seconds),
        throughput: Stats::of(&throughput),
        peak_rss_mib: peak_rss_kib().map(|k| k as f64 / 1024.0),
    })
}

/// The process's peak resident set (`VmHWM` of /proc/self/status), KiB.
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets the peak resident set to the current one (Linux: "5" into /proc/self/clear_refs), so
/// each model's peak is its own; where that is refused, the peak is the process's so far.
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
