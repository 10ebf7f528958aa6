//! The command line: one file per subcommand, all running topologies through [`execute`].

pub mod baseline;
pub mod bench;
pub mod cas;
pub mod detect;
pub mod eval;
pub mod execute;
pub mod fid;
pub mod merge;
pub mod prep;
pub mod run;
pub mod sample;
pub mod status;
pub mod sweep;
pub mod synth;
pub mod train;
pub mod validate;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::models::preprocess::Normalization;
use crate::models::resnet::{ResNetArch, Stem};
use crate::runtime::RunError;
use crate::settings::{Settings, SettingsError};
use crate::topology::TopologyError;

#[derive(Debug, Parser)]
#[command(
    name = "rcaflow",
    version,
    about = "Does a class-conditional generator keep identities apart? Streaming RCA, FID, IS and LPIPS evaluation."
)]
pub struct Cli {
    /// Deployment settings file (see config/rcaflow.toml); flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log filter (info, debug, rcaflow=debug, ...); overrides the config file and RUST_LOG.
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// CPU threads of the models' kernels, shared by every stage without its own `threads`
    /// (overrides `[runtime] threads`; default one per core).
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the dataflow described by a topology file.
    Run(run::RunArgs),
    /// Check a topology file and print its graph, without loading any model.
    Validate(validate::ValidateArgs),
    /// Score a folder of generated images against a folder of real images.
    Eval(eval::EvalArgs),
    /// Measure the oracle on real held-out images and write a baseline file.
    Baseline(baseline::BaselineArgs),
    /// FID between two image folders or .npz statistics files (as pytorch-fid's command line).
    Fid(fid::FidArgs),
    /// Write the FID statistics (mu, sigma) of an image folder as .npz (pytorch-fid's format).
    FidStats(fid::FidStatsArgs),
    /// Generate images with a class-conditional diffusers UNet (DDPM or DDIM) as PNG folders.
    Sample(sample::SampleArgs),
    /// Write a synthetic identity dataset of cartoon faces (ImageFolder layout).
    Synth(synth::SynthArgs),
    /// Crop, downscale and split raw photos (ImageFolder) into train/ and eval/ folders.
    Prep(prep::PrepArgs),
    /// Detect faces (facenet-pytorch's MTCNN) in every image under a folder, into a CSV.
    Detect(detect::DetectArgs),
    /// Train the oracle classifier or the class-conditional DDPM.
    Train(train::TrainArgs),
    /// Classification Accuracy Score: train the oracle's architecture on generated images, test it on real ones.
    Cas(cas::CasArgs),
    /// Where a run stands (running or stopped), from its run directory's files.
    Status(status::StatusArgs),
    /// Fold the shards of a sharded run (`run --shard K/N`) into the whole run's report.
    Merge(merge::MergeArgs),
    /// Many runs of one topology (a sweep file's variations): plan, submit (Slurm, Kubernetes), report.
    Sweep(sweep::SweepArgs),
    /// Throughput of each model (random weights, production shapes): images/s, peak memory.
    Bench(bench::BenchArgs),
}

/// The oracle flags `eval` and `baseline` share.
#[derive(Debug, Clone, Args)]
pub struct OracleArgs {
    /// Oracle weights: a torchvision ResNet state_dict (.safetensors or zip-format .pth).
    #[arg(long, value_name = "FILE")]
    pub oracle: PathBuf,
    #[arg(long, value_name = "resnet18|resnet34")]
    pub oracle_arch: ResNetArch,
    /// cifar: 3x3 stride-1 conv1 and no max-pool (32x32 inputs); imagenet: 7x7/2 + max-pool.
    #[arg(long, value_name = "cifar|imagenet")]
    pub oracle_stem: Stem,
    /// The oracle's input normalisation: imagenet, minus-one-one, or M,M,M/S,S,S.
    #[arg(long, value_name = "NORM")]
    pub oracle_norm: Normalization,
    /// Images per oracle batch.
    #[arg(long, default_value_t = 64, value_parser = batch_size)]
    pub batch_size: usize,
    /// Where models run (overrides the config file).
    #[arg(long)]
    pub device: Option<String>,
    /// Prometheus listen address (HOST:PORT, port 0 for any free port, or "off").
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

/// `--batch-size`: images per model batch, 1 to [`crate::limits::MAX_BATCH_SIZE`].
pub(crate) fn batch_size(text: &str) -> Result<usize, String> {
    let n: usize = text.trim().parse().map_err(|_| format!("\"{text}\" is not a whole number of images"))?;
    crate::limits::count("the batch size", n, crate::limits::MAX_BATCH_SIZE, "image")
}

/// Why a command failed; each maps to an exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Run(#[from] RunError),
    /// A flag or path the command cannot use.
    #[error("{0}")]
    Input(String),
    #[error("{0}")]
    Output(String),
    /// A stop was requested; the report (if any) says `interrupted`.
    #[error("run interrupted: {0}")]
    Interrupted(String),
}

impl CliError {
    /// 2: bad input (nothing ran); 1: the run failed; 130: interrupted by a signal.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Topology(_) | CliError::Settings(_) | CliError::Input(_) => 2,
            CliError::Run(RunError::ForcedStop) | CliError::Interrupted(_) => 130,
            CliError::Run(_) | CliError::Output(_) => 1,
        }
    }
}

/// Settings from `--config` (or the built-in defaults, equal to config/rcaflow.toml), with
/// command-line overrides applied.
pub fn load_settings(config: &Option<PathBuf>, log_level: &Option<String>) -> Result<Settings, CliError> {
    let mut settings = match config {
        Some(path) => Settings::load(path)?,
        None => Settings::default(),
    };
    if let Some(level) = log_level {
        settings.log.level = level.clone();
    }
    // Images are decoded in many places (stages, trainers, prep, fid): one process-wide limit.
    crate::data::image_folder::set_image_limits(settings.images);
    crate::models::weights::set_max_weights_mib(settings.weights.max_mib);
    Ok(settings)
}

/// Applies `--metrics-addr` and `--device` overrides.
pub fn apply_overrides(settings: &mut Settings, metrics_addr: &Option<String>, device: &Option<String>) -> Result<(), CliError> {
    if let Some(addr) = metrics_addr {
        settings.metrics.listen = addr.clone();
        settings.metrics_addr().map_err(|e| CliError::Input(format!("--metrics-addr: {e}")))?;
    }
    if let Some(device) = device {
        // Refused here, before any work, when this build cannot open it (a CPU-only build).
        let spec: crate::models::device::DeviceSpec = device.parse().map_err(|e| CliError::Input(format!("--device: {e}")))?;
        spec.supported().map_err(|e| CliError::Input(format!("--device: {e}")))?;
        settings.runtime.device = device.clone();
    }
    Ok(())
}

pub fn dispatch(cli: Cli, settings: Settings) -> Result<(), CliError> {
    let threads = match cli.threads {
        Some(0) => return Err(CliError::Input("--threads must be at least 1 (leave it out for one per core)".into())),
        Some(n) => n,
        None => settings.runtime.threads,
    };
    // Before any command runs a kernel: rayon fixes its pool's size at the first parallel call.
    crate::models::threads::configure_process(threads).map_err(|e| CliError::Input(format!("--threads: {e}")))?;
    match cli.command {
        Command::Run(args) => run::run(args, settings),
        Command::Validate(args) => validate::validate(args),
        Command::Eval(args) => eval::eval(args, settings),
        Command::Baseline(args) => baseline::baseline(args, settings),
        Command::Fid(args) => fid::fid(args, settings),
        Command::FidStats(args) => fid::fid_stats(args, settings),
        Command::Sample(args) => sample::sample(args, settings),
        Command::Synth(args) => synth::synth(args),
        Command::Prep(args) => prep::prep(args, settings),
        Command::Detect(args) => detect::detect(args, settings),
        Command::Train(args) => train::train(args, settings),
        Command::Cas(args) => cas::cas(args, settings),
        Command::Status(args) => status::status(args),
        Command::Bench(args) => bench::bench(args, settings),
        Command::Merge(args) => merge::merge(args, settings),
        Command::Sweep(args) => sweep::sweep(args),
    }
}
