//! `rcaflow train oracle` and `rcaflow train ddpm`: the two models of the protocol, trained on a
//! dataset prepared by `prep` or `synth` ([`crate::train`]).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use super::baseline::{baseline, BaselineArgs};
use super::{apply_overrides, CliError, OracleArgs};
use crate::models::preprocess::Normalization;
use crate::models::resnet::{ResNetArch, ResNetConfig, Stem};
use crate::models::unet::UNet2DConfig;
use crate::models::weights::WeightMap;
use crate::report::figures::loss_curve;
use crate::settings::Settings;
use crate::telemetry;
use crate::train::dataset::Dataset;
use crate::train::ddpm::{DdpmTrainConfig, DdpmTrainer};
use crate::train::oracle::{train_oracle, EpochReport, OracleTrainConfig};
use crate::train::resnet::TrainableResNet;

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(subcommand)]
    pub model: TrainCommand,
}

#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// Train the ResNet oracle on DATA_DIR/train, score it on DATA_DIR/eval, write its baseline.
    Oracle(OracleTrainArgs),
    /// Train the class-conditional DDPM (epsilon prediction) on DATA_DIR/train.
    Ddpm(DdpmTrainArgs),
}

#[derive(Debug, Args)]
pub struct DdpmTrainArgs {
    /// Prepared dataset: DATA_DIR/train/<class>/ (see `prep` and `synth`).
    #[arg(long, value_name = "DATA_DIR")]
    pub data: PathBuf,
    /// A diffusers UNet2DModel config.json (class-conditional: num_class_embeds = class count).
    /// (Not `--config`: that global flag is the deployment settings file.)
    #[arg(long, value_name = "UNET_CONFIG.json")]
    pub unet_config: Option<PathBuf>,
    /// Output folder: the final model as a diffusers folder, checkpoints/, loss.png, loss.csv.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Total optimisation steps (a resumed run continues up to this count).
    #[arg(long, default_value_t = 10_000)]
    pub steps: usize,
    #[arg(long, default_value_t = 64, value_parser = super::batch_size)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.0)]
    pub weight_decay: f64,
    /// Maximum EMA decay (diffusers' EMAModel schedule up to this value).
    #[arg(long, default_value_t = 0.9999)]
    pub ema: f64,
    /// Global gradient-norm clipping (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub grad_clip: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Steps between checkpoints (DIR/checkpoints/step-NNNNNNNN); the last two are kept.
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: usize,
    /// Continue from the latest checkpoint in DIR/checkpoints (training settings come from it;
    /// --steps and --checkpoint-every from the command line).
    #[arg(long)]
    pub resume: bool,
    /// Where training runs (overrides the config file).
    #[arg(long)]
    pub device: Option<String>,
    /// Prometheus listen address (HOST:PORT, port 0 for any free port, or "off").
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

#[derive(Debug, Args)]
pub struct OracleTrainArgs {
    /// Prepared dataset: DATA_DIR/train/<class>/ and DATA_DIR/eval/<class>/ (see `prep`).
    #[arg(long, value_name = "DATA_DIR")]
    pub data: PathBuf,
    #[command(flatten)]
    pub recipe: OracleRecipe,
    /// Weights to write (.safetensors, torchvision state_dict names).
    #[arg(long, value_name = "FILE.safetensors")]
    pub out: PathBuf,
    /// Baseline file to write (default: next to --out, FILE.baseline.json).
    #[arg(long, value_name = "FILE.json")]
    pub baseline: Option<PathBuf>,
    /// Where training runs (overrides the config file).
    #[arg(long)]
    pub device: Option<String>,
    /// Prometheus listen address (HOST:PORT, port 0 for any free port, or "off").
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

/// How the oracle is trained: the flags `train oracle` and `cas` share, so a classifier trained
/// on generated images (CAS) follows exactly the real oracle's recipe.
#[derive(Debug, Clone, Args)]
pub struct OracleRecipe {
    #[arg(long, value_name = "resnet18|resnet34")]
    pub arch: ResNetArch,
    /// cifar: 3x3 stride-1 conv1 and no max-pool (32x32 inputs); imagenet: 7x7/2 + max-pool.
    #[arg(long, value_name = "cifar|imagenet")]
    pub stem: Stem,
    /// Channels of conv1 and layer1 (torchvision: 64; the stages have 1, 2, 4, 8 times this).
    /// Narrower networks keep torchvision's keys: the demo oracle uses 16 (a 2.8 MB file).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub width: usize,
    /// Input normalisation: imagenet, minus-one-one, or M,M,M/S,S,S.
    #[arg(long, default_value = "imagenet", value_name = "NORM")]
    pub norm: Normalization,
    /// Pretrained torchvision state_dict to start from (.safetensors or .pth); fc is replaced
    /// when its class count differs.
    #[arg(long, value_name = "PRETRAINED")]
    pub init: Option<PathBuf>,
    /// Epochs with the backbone frozen (only fc trains) before fine-tuning; needs --init
    /// [default: 2 with --init, else 0].
    #[arg(long, value_name = "N")]
    pub warmup_epochs: Option<usize>,
    /// Epochs of full training (after the warm-up).
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    #[arg(long, default_value_t = 64, value_parser = super::batch_size)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn train(args: TrainArgs, settings: Settings) -> Result<(), CliError> {
    match args.model {
        TrainCommand::Oracle(a) => oracle(a, settings),
        TrainCommand::Ddpm(a) => ddpm(a, settings),
    }
}

/// Starts the exporter when the settings ask for one.
fn start_metrics(settings: &Settings, label: &str) -> Result<(), CliError> {
    if let Some(addr) = settings.metrics_addr().map_err(|e| CliError::Input(format!("config: {e}")))? {
        let bound = telemetry::install_exporter(addr, label, None).map_err(|e| CliError::Input(e.to_string()))?;
        eprintln!("metrics on http://{bound}/metrics");
    }
    Ok(())
}

pub(crate) fn load_split(data: &Path, split: &str) -> Result<Dataset, CliError> {
    let dir = data.join(split);
    if !dir.is_dir() {
        return Err(CliError::Input(format!("--data {}: no {split}/ folder (expected the layout `rcaflow prep` writes)", data.display())));
    }
    Dataset::load(&dir).map_err(|e| CliError::Input(e.to_string()))
}

/// A line above the progress bar (or plain stdout when the bar is hidden: not a terminal).
fn say(bar: &ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} ({per_sec}, eta {eta})").unwrap_or_else(|_| ProgressStyle::default_bar())
}

/// Trains an oracle on `train` with `recipe`, scoring it on `eval` after every epoch: the
/// progress bar, the epoch lines and the training gauges of `train oracle` (and `cas`, which
/// must train the same way). Starts the metrics exporter (as `label`) when the settings ask.
pub(crate) fn fit_oracle(
    command: &str,
    train: &Dataset,
    eval: &Dataset,
    recipe: &OracleRecipe,
    settings: &Settings,
    device: &candle_core::Device,
    label: &str,
) -> Result<(TrainableResNet, Vec<EpochReport>), CliError> {
    if recipe.width == 0 {
        return Err(CliError::Input("--width 0: expected at least 1 channel (torchvision: 64)".into()));
    }
    let init = match &recipe.init {
        Some(p) => Some(WeightMap::load(p, device).map_err(|e| CliError::Input(format!("--init: {e}")))?),
        None => None,
    };
    let warmup_epochs = recipe.warmup_epochs.unwrap_or(if init.is_some() { 2 } else { 0 });
    let cfg = OracleTrainConfig {
        resnet: ResNetConfig { width: recipe.width, ..ResNetConfig::new(recipe.arch, recipe.stem, train.classes.len()) },
        norm: recipe.norm,
        warmup_epochs,
        epochs: recipe.epochs,
        lr: recipe.lr,
        weight_decay: recipe.weight_decay,
        batch_size: recipe.batch_size,
        seed: recipe.seed,
    };
    start_metrics(settings, label)?;
    println!(
        "{command}: {} on {} train / {} eval images of {} classes ({}x{}), {} warm-up + {} epochs",
        cfg.resnet,
        train.len(),
        eval.len(),
        train.classes.len(),
        train.width,
        train.height,
        warmup_epochs,
        recipe.epochs
    );
    let total = warmup_epochs + recipe.epochs;
    let bar = ProgressBar::new(0);
    bar.set_style(bar_style());
    let mut epoch_shown = 0;
    let trained = train_oracle(
        train,
        Some(eval),
        &cfg,
        init.as_ref(),
        device,
        |done, batches| {
            if done == 1 {
                epoch_shown += 1;
                bar.reset();
                bar.set_length(batches as u64);
                bar.set_message(format!("epoch {epoch_shown}/{total}"));
            }
            bar.set_position(done as u64);
        },
        |r| {
            metrics::gauge!(telemetry::TRAIN_EPOCH, "model" => "oracle").set(r.epoch as f64);
            metrics::gauge!(telemetry::TRAIN_LOSS, "model" => "oracle").set(r.loss);
            metrics::gauge!(telemetry::TRAIN_ACCURACY, "split" => "train").set(r.train_accuracy);
            if let Some(a) = r.eval_accuracy {
                metrics::gauge!(telemetry::TRAIN_ACCURACY, "split" => "eval").set(a);
            }
            say(
                &bar,
                format!(
                    "epoch {:>3}/{total} {:<6} loss {:.4}  train acc {:.3}  eval acc {}  ({:.1} s, {:.0} img/s)",
                    r.epoch,
                    r.phase,
                    r.loss,
                    r.train_accuracy,
                    r.eval_accuracy.map_or("n/a".into(), |a| format!("{a:.3}")),
                    r.seconds,
                    r.images_per_second
                ),
            );
        },
    )
    .map_err(|e| CliError::Input(e.to_string()))?;
    bar.finish_and_clear();
    Ok(trained)
}

fn oracle(args: OracleTrainArgs, mut settings: Settings) -> Result<(), CliError> {
    apply_overrides(&mut settings, &args.metrics_addr, &args.device)?;
    let device = settings.open_device()?;
    let train = load_split(&args.data, "train")?;
    let eval = load_split(&args.data, "eval")?;
    if eval.classes != train.classes {
        return Err(CliError::Input(format!(
            "--data {}: eval classes {:?} differ from train classes {:?}",
            args.data.display(),
            eval.classes,
            train.classes
        )));
    }
    if args.out.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        return Err(CliError::Input(format!("--out {}: expected a .safetensors file", args.out.display())));
    }
    let (net, _) = fit_oracle("train oracle", &train, &eval, &args.recipe, &settings, &device, "train-oracle")?;
    let recipe = &args.recipe;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| CliError::Output(format!("--out {}: {e}", args.out.display())))?;
    }
    net.save(&args.out).map_err(|e| CliError::Output(format!("oracle weights \"{}\": cannot write: {e}", args.out.display())))?;
    println!("oracle: {}", args.out.display());
    // The baseline is measured by the evaluation path itself (`rcaflow baseline`), reading the
    // file just written: the figures are exactly what a later `run` will use.
    let baseline_path = args.baseline.clone().unwrap_or_else(|| args.out.with_extension("baseline.json"));
    settings.metrics.listen = "off".into();
    baseline(
        BaselineArgs {
            real: args.data.join("eval"),
            out: baseline_path,
            oracle: OracleArgs {
                oracle: args.out.clone(),
                oracle_arch: recipe.arch,
                oracle_stem: recipe.stem,
                oracle_norm: recipe.norm,
                batch_size: recipe.batch_size,
                device: args.device.clone(),
                metrics_addr: Some("off".into()),
            },
        },
        settings,
    )
}

/// The newest `step-*` folder under `dir`, if any.
fn latest_checkpoint(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-") && !n.ends_with(".tmp")))
        .collect();
    found.sort();
    found.pop()
}

/// loss.csv and loss.png (with a moving average over ~2% of the steps).
fn write_loss_curve(out: &Path, losses: &[(usize, f64)]) -> Result<(), CliError> {
    let csv: String = std::iter::once("step,loss\n".to_string()).chain(losses.iter().map(|(s, l)| format!("{s},{l}\n"))).collect();
    let path = out.join("loss.csv");
    crate::files::atomic::write(&path, csv.as_bytes(), "csv.write")
        .map_err(|e| CliError::Output(format!("\"{}\": cannot write: {e}", path.display())))?;
    if !losses.is_empty() {
        loss_curve(&out.join("loss.png"), "DDPM training loss", "MSE (epsilon)", losses, (losses.len() / 50).max(1))
            .map_err(|e| CliError::Output(e.to_string()))?;
    }
    Ok(())
}

fn ddpm(args: DdpmTrainArgs, mut settings: Settings) -> Result<(), CliError> {
    apply_overrides(&mut settings, &args.metrics_addr, &args.device)?;
    let device = settings.open_device()?;
    let train = load_split(&args.data, "train")?;
    let ckpt_root = args.out.join("checkpoints");
    let input = |e: crate::train::ddpm::DdpmError| CliError::Input(e.to_string());
    let mut trainer = if args.resume {
        let dir = latest_checkpoint(&ckpt_root).ok_or_else(|| {
            CliError::Input(format!("--resume: no checkpoint in \"{}\" (expected step-NNNNNNNN folders)", ckpt_root.display()))
        })?;
        println!("train ddpm: resuming from {}", dir.display());
        DdpmTrainer::resume(&dir, train, &device).map_err(input)?
    } else {
        let path = args
            .unet_config
            .as_ref()
            .ok_or_else(|| CliError::Input("--unet-config UNET_CONFIG.json is required (unless --resume)".into()))?;
        let text =
            std::fs::read_to_string(path).map_err(|e| CliError::Input(format!("--unet-config {}: cannot read: {e}", path.display())))?;
        let (uc, unknown) = UNet2DConfig::parse(&text).map_err(|e| CliError::Input(format!("--unet-config {}: {e}", path.display())))?;
        if let Some(k) = unknown.first() {
            return Err(CliError::Input(format!("--unet-config {}: unknown field \"{k}\"", path.display())));
        }
        if latest_checkpoint(&ckpt_root).is_some() {
            return Err(CliError::Input(format!(
                "--out {}: holds checkpoints already; add --resume to continue, or choose another folder",
                args.out.display()
            )));
        }
        let cfg = DdpmTrainConfig {
            batch_size: args.batch_size,
            lr: args.lr,
            weight_decay: args.weight_decay,
            ema_decay: args.ema,
            grad_clip: (args.grad_clip > 0.0).then_some(args.grad_clip),
            seed: args.seed,
            num_train_timesteps: 1000,
        };
        if !(0.0..1.0).contains(&args.ema) {
            return Err(CliError::Input(format!("--ema {}: expected a decay in [0, 1)", args.ema)));
        }
        DdpmTrainer::new(&uc, train, cfg, &device).map_err(input)?
    };
    if args.checkpoint_every == 0 {
        return Err(CliError::Input("--checkpoint-every 0: expected at least 1".into()));
    }
    std::fs::create_dir_all(&ckpt_root).map_err(|e| CliError::Output(format!("\"{}\": cannot create: {e}", ckpt_root.display())))?;
    start_metrics(&settings, "train-ddpm")?;
    let start_step = trainer.step_count();
    println!("train ddpm: steps {start_step}..{} -> {}", args.steps, args.out.display());
    let bar = ProgressBar::new(args.steps as u64).with_position(start_step as u64).with_message("ddpm");
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:30} {pos}/{len} steps ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let output = |e: crate::train::ddpm::DdpmError| CliError::Output(e.to_string());
    let started = std::time::Instant::now();
    while trainer.step_count() < args.steps {
        let (loss, norm) = trainer.train_step().map_err(output)?;
        let step = trainer.step_count();
        metrics::gauge!(telemetry::TRAIN_LOSS, "model" => "ddpm").set(loss);
        metrics::gauge!(telemetry::TRAIN_STEP, "model" => "ddpm").set(step as f64);
        metrics::gauge!(telemetry::TRAIN_GRAD_NORM, "model" => "ddpm").set(norm);
        bar.set_position(step as u64);
        bar.set_message(format!("ddpm loss {loss:.4}"));
        if step % args.checkpoint_every == 0 || step == args.steps {
            let dir = ckpt_root.join(format!("step-{step:08}"));
            trainer.save_checkpoint(&dir).map_err(output)?;
            // Keep the two newest checkpoints; only folders this trainer names are removed.
            let ours = |p: &Path| p.is_dir() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("step-"));
            let mut all: Vec<PathBuf> = std::fs::read_dir(&ckpt_root)
                .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| ours(p)).collect())
                .unwrap_or_default();
            all.sort();
            for old in all.iter().rev().skip(2) {
                let _ = std::fs::remove_dir_all(old);
            }
            write_loss_curve(&args.out, trainer.losses())?;
            let recent = &trainer.losses()[trainer.losses().len().saturating_sub(args.checkpoint_every)..];
            let mean = recent.iter().map(|p| p.1).sum::<f64>() / recent.len().max(1) as f64;
            say(&bar, format!("step {step:>7}  mean loss {mean:.4} over the last {} steps  checkpoint {}", recent.len(), dir.display()));
        }
    }
    bar.finish_and_clear();
    trainer.save_model(&args.out).map_err(output)?;
    write_loss_curve(&args.out, trainer.losses())?;
    let done = trainer.step_count() - start_step;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ddpm: {} (EMA weights, diffusers folder), loss curve {}; {done} steps in {secs:.0} s ({:.2} steps/s)",
        args.out.display(),
        args.out.join("loss.png").display(),
        done as f64 / secs.max(1e-9)
    );
    Ok(())
}
