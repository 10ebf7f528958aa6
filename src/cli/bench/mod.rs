//! `rcaflow bench`: the throughput of each model at its production shape, with random weights
//! (speed does not depend on the values), warm-ups excluded, median and spread of the repeats,
//! and peak resident memory; a table for people, `--json` for machines. scripts/bench_torch.py
//! prints the same for PyTorch (same keys), and `--compare` there puts the two side by side.
//!
//! With `--pipeline DIR` it measures instead how well generation and evaluation overlap in a
//! whole run ([`pipeline`]).

mod pipeline;
mod pipeline_files;

use std::path::PathBuf;

use clap::Args;

use super::CliError;
use crate::bench::{bench_model, BenchModel, BenchOptions, BenchResult, PAPER_UNET_CONFIG};
use crate::models::device::DeviceSpec;
use crate::models::precision::Precision;
use crate::models::unet::UNet2DConfig;
use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Comma-separated models: unet, inception, resnet18, resnet34, lpips-alex, lpips-vgg.
    #[arg(long, value_name = "LIST", default_value = "unet,inception,resnet18,resnet34,lpips-alex,lpips-vgg", conflicts_with = "pipeline")]
    pub models: String,
    /// Batch of every model (default: each model's own: unet 16, inception 50, resnets 64,
    /// lpips 32 pairs); with --pipeline, the batcher's (default 100, as koin10's).
    #[arg(long, value_name = "N")]
    pub batch: Option<usize>,
    /// Timed forward passes per model.
    #[arg(long, value_name = "N", default_value_t = 5, conflicts_with = "pipeline")]
    pub repeats: usize,
    /// Untimed forward passes before them.
    #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "pipeline")]
    pub warmup: usize,
    /// The UNet's diffusers config.json (default: the paper's, config/unet-paper.json).
    #[arg(long, value_name = "FILE")]
    pub unet_config: Option<PathBuf>,
    /// Where models run (overrides the config file).
    #[arg(long)]
    pub device: Option<String>,
    /// The UNet's precision, as the sampler's `dtype`: f32, or bf16 / f16 on a GPU.
    #[arg(long, value_name = "f32|bf16|f16", default_value = "f32")]
    pub dtype: String,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Measure the overlap of generation and evaluation instead: three runs of a koin10-shaped
    /// topology with random weights (generation alone, evaluation alone, pipelined), their
    /// files written into DIR (new, empty, or an earlier --pipeline's).
    #[arg(long, value_name = "DIR")]
    pub pipeline: Option<PathBuf>,
    /// --pipeline: classes of the run.
    #[arg(long, value_name = "N", default_value_t = 10, requires = "pipeline")]
    pub classes: usize,
    /// --pipeline: generated images per class.
    #[arg(long, value_name = "N", default_value_t = 200, requires = "pipeline")]
    pub per_class: usize,
    /// --pipeline: real images per class.
    #[arg(long, value_name = "N", default_value_t = 100, requires = "pipeline")]
    pub real_per_class: usize,
    /// --pipeline: the sampler's scheduler, ddim or ddpm.
    #[arg(long, value_name = "ddim|ddpm", default_value = "ddim", requires = "pipeline")]
    pub scheduler: String,
    /// --pipeline: the sampler's steps.
    #[arg(long, value_name = "N", default_value_t = 20, requires = "pipeline")]
    pub steps: usize,
    /// --pipeline: images per unit of work.
    #[arg(long, value_name = "N", default_value_t = 100, requires = "pipeline")]
    pub unit_size: usize,
    /// --pipeline: where the sampler runs, when not on --device (cpu, cuda, cuda:N).
    #[arg(long, value_name = "DEVICE", requires = "pipeline")]
    pub sampler_device: Option<String>,
}

/// The whole measurement, as `--json` prints it.
#[derive(Debug, serde::Serialize)]
struct Report {
    framework: &'static str,
    version: &'static str,
    device: String,
    /// The UNet's precision.
    dtype: String,
    threads: usize,
    results: Vec<BenchResult>,
}

fn parse_models(list: &str) -> Result<Vec<BenchModel>, CliError> {
    list.split(',').map(|m| m.trim().parse::<BenchModel>().map_err(|e| CliError::Input(format!("--models: {e}")))).collect()
}

fn unet_config(path: &Option<PathBuf>) -> Result<UNet2DConfig, CliError> {
    let (text, name) = match path {
        Some(p) => (
            std::fs::read_to_string(p).map_err(|e| CliError::Input(format!("--unet-config \"{}\": cannot read: {e}", p.display())))?,
            p.display().to_string(),
        ),
        None => (PAPER_UNET_CONFIG.to_string(), "config/unet-paper.json (built in)".to_string()),
    };
    let config = UNet2DConfig::from_json_str(&text)
        .and_then(|c| c.validate().map(|()| c))
        .map_err(|e| CliError::Input(format!("--unet-config \"{name}\": {e}")))?;
    Ok(config)
}

pub fn bench(args: BenchArgs, settings: Settings) -> Result<(), CliError> {
    if args.pipeline.is_some() {
        return bench_pipeline(args, settings);
    }
    let models = parse_models(&args.models)?;
    if args.repeats == 0 {
        return Err(CliError::Input("--repeats must be at least 1".into()));
    }
    if args.batch == Some(0) {
        return Err(CliError::Input("--batch must be at least 1".into()));
    }
    let device_name = args.device.clone().unwrap_or_else(|| settings.runtime.device.clone());
    let spec: DeviceSpec = device_name.parse().map_err(|e| CliError::Input(format!("--device: {e}")))?;
    let unet_dtype: Precision = args.dtype.parse().map_err(|e| CliError::Input(format!("--dtype: {e}")))?;
    unet_dtype.check_on(spec).map_err(|e| CliError::Input(format!("--dtype: {e}")))?;
    let device = spec.open().map_err(|e| CliError::Input(format!("--device: {e}")))?;
    let opts =
        BenchOptions { batch: args.batch, warmup: args.warmup, repeats: args.repeats, unet: unet_config(&args.unet_config)?, unet_dtype };
    // `rcaflow --threads N` (a flag of every command) sized the kernel pool before this ran.
    let threads = rayon::current_num_threads();

    if !args.json {
        println!(
            "rcaflow {} bench: {spec}, unet {unet_dtype}, {threads} threads, {} warm-up, {} repeats (median, min-max)",
            env!("CARGO_PKG_VERSION"),
            args.warmup,
            args.repeats
        );
        println!("{:<11} {:>5}  {:>32}  {:>10}  {:>9}", "model", "batch", "throughput", "s/forward", "peak RSS");
    }
    let mut results = Vec::new();
    for model in models {
        let r = bench_model(model, &opts, &device).map_err(|e| CliError::Output(e.to_string()))?;
        if !args.json {
            println!("{}", table_row(&r));
        }
        results.push(r);
    }
    if args.json {
        let report = Report {
            framework: "rcaflow",
            version: env!("CARGO_PKG_VERSION"),
            device: spec.to_string(),
            dtype: unet_dtype.to_string(),
            threads,
            results,
        };
        let text = serde_json::to_string_pretty(&report).map_err(|e| CliError::Output(format!("json: {e}")))?;
        println!("{text}");
    }
    Ok(())
}

/// One line of the human table (scripts/bench_torch.py prints the same columns).
fn table_row(r: &BenchResult) -> String {
    let t = &r.throughput;
    let rss = r.peak_rss_mib.map_or("-".to_string(), |m| format!("{m:.0} MiB"));
    format!(
        "{:<11} {:>5}  {:>32}  {:>10.4}  {:>9}",
        r.model,
        r.batch,
        format!("{:.2} {} ({:.2}-{:.2})", t.median, r.unit, t.min, t.max),
        r.seconds.median,
        rss
    )
}

/// `--pipeline DIR`: the flags checked, then [`pipeline::measure`].
fn bench_pipeline(args: BenchArgs, mut settings: Settings) -> Result<(), CliError> {
    let dir = args.pipeline.clone().unwrap_or_default();
    let at_least_one = |flag: &str, n: usize| {
        if n == 0 {
            Err(CliError::Input(format!("{flag} must be at least 1")))
        } else {
            Ok(n)
        }
    };
    at_least_one("--classes", args.classes)?;
    at_least_one("--per-class", args.per_class)?;
    at_least_one("--real-per-class", args.real_per_class)?;
    at_least_one("--steps", args.steps)?;
    at_least_one("--unit-size", args.unit_size)?;
    let batch = at_least_one("--batch", args.batch.unwrap_or(100))?;
    if !matches!(args.scheduler.as_str(), "ddim" | "ddpm") {
        return Err(CliError::Input(format!("--scheduler \"{}\": expected ddim or ddpm", args.scheduler)));
    }
    // The run's default device, and the sampler's: each refused here, before any file is
    // written, when it does not parse or this build cannot open it.
    super::apply_overrides(&mut settings, &Some("off".to_string()), &args.device)?;
    let default: DeviceSpec = settings.device().map_err(|e| CliError::Input(format!("--device: {e}")))?;
    let sampler: DeviceSpec = match &args.sampler_device {
        Some(name) => {
            let spec: DeviceSpec = name.parse().map_err(|e| CliError::Input(format!("--sampler-device: {e}")))?;
            spec.supported().map_err(|e| CliError::Input(format!("--sampler-device: {e}")))?;
            spec
        }
        None => default,
    };
    let dtype: Precision = args.dtype.parse().map_err(|e| CliError::Input(format!("--dtype: {e}")))?;
    dtype.check_on(sampler).map_err(|e| CliError::Input(format!("--dtype: {e}")))?;
    let shape = pipeline_files::PipelineShape {
        classes: args.classes,
        per_class: args.per_class,
        real_per_class: args.real_per_class,
        scheduler: args.scheduler.clone(),
        steps: args.steps,
        unit_size: args.unit_size,
        batch,
        dtype: dtype.to_string(),
        sampler_device: args.sampler_device.as_ref().map(|_| sampler.to_string()),
    };
    let report = pipeline::measure(&dir, &unet_config(&args.unet_config)?, &shape, &settings)?;
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| CliError::Output(format!("json: {e}")))?;
        println!("{text}");
    } else {
        pipeline::print_table(&report);
    }
    Ok(())
}
