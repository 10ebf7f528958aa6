//! `rcaflow cas`: the Classification Accuracy Score (Ravuri and Vinyals 2019). Trains a
//! classifier with the oracle's architecture on generated images only, with exactly `train
//! oracle`'s recipe and code ([`super::train::fit_oracle`]), then tests it on the real held-out
//! split, next to the real-trained oracle on the same split, with the evaluation path `baseline`
//! uses ([`super::baseline::measure`]); writes `cas.json`, `cas.md` and `cas_confusion.png`
//! ([`crate::report::cas`]).
//!
//! `--generated` is an ImageFolder tree, or a finished run directory: its `save_images` sink's
//! folder is the training set, and its oracle is the real-trained one unless `--oracle` says
//! otherwise. A topology cannot run CAS itself: training lives above the runtime (DESIGN.md §6),
//! so a run is followed by this command (README, "Datasets and training", **cas**).

use std::path::{Path, PathBuf};

use clap::Args;

use super::baseline::measure;
use super::eval::absolute;
use super::train::{fit_oracle, OracleRecipe};
use super::{apply_overrides, CliError, OracleArgs};
use crate::metrics::rca::relative_accuracy;
use crate::models::oracle::{Oracle, OracleConfig};
use crate::models::weights::WeightMap;
use crate::report::cas::{render, CasReport, ImageSet, RealOracle, CAS_SCHEMA};
use crate::report::figures::confusion_heatmap;
use crate::runtime::run_dir::Manifest;
use crate::settings::Settings;
use crate::stages::oracle::OracleClassifierConfig;
use crate::stages::ComponentKind;
use crate::train::dataset::Dataset;

/// The classifier's weights in `--out`.
pub const CLASSIFIER_FILE: &str = "cas-classifier.safetensors";
/// The figure in `--out`.
pub const FIGURE_FILE: &str = "cas_confusion.png";

#[derive(Debug, Args)]
pub struct CasArgs {
    /// Generated images to train on: an ImageFolder tree (root/<class>/*.png), or a finished
    /// run directory whose save_images sink wrote one.
    #[arg(long, value_name = "DIR_OR_RUN")]
    pub generated: PathBuf,
    /// Real held-out images (ImageFolder, the same class folders): both classifiers are tested here.
    #[arg(long, value_name = "DIR")]
    pub real_eval: PathBuf,
    /// The real-trained oracle's weights (same --arch, --stem, --norm and --width); default:
    /// the oracle of the run when --generated is a run directory.
    #[arg(long, value_name = "FILE")]
    pub oracle: Option<PathBuf>,
    /// Output folder: cas.json, cas.md, cas_confusion.png and the classifier's weights.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub recipe: OracleRecipe,
    /// Where training and evaluation run (overrides the config file).
    #[arg(long)]
    pub device: Option<String>,
    /// Prometheus listen address for the training gauges (HOST:PORT, port 0 for any free
    /// port, or "off").
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

/// Where the generated images are, and the oracle of the run they came from (if any).
#[derive(Debug)]
pub struct GeneratedSet {
    pub images: PathBuf,
    pub run_oracle: Option<OracleClassifierConfig>,
}

fn input(message: String) -> CliError {
    CliError::Input(message)
}

/// `--generated`: an image folder as it is, or a run directory's saved images and oracle.
pub fn resolve_generated(path: &Path) -> Result<GeneratedSet, CliError> {
    if !path.is_dir() {
        return Err(input(format!("--generated {}: not a folder (expected an ImageFolder tree or a run directory)", path.display())));
    }
    let manifest = Manifest::read(path).map_err(|e| input(format!("--generated: {e}")))?;
    let Some(manifest) = manifest else {
        return Ok(GeneratedSet { images: path.to_path_buf(), run_oracle: None });
    };
    let mut saved = Vec::new();
    let mut oracles = Vec::new();
    for (name, config) in &manifest.components {
        let mut config = config.clone();
        if let Some(map) = config.as_object_mut() {
            map.remove("inputs");
        }
        match serde_json::from_value::<ComponentKind>(config) {
            Ok(ComponentKind::SaveImages(c)) => saved.push((name.clone(), c.path)),
            Ok(ComponentKind::OracleClassifier(c)) => oracles.push(c),
            // Components of another version's run.json are none of the two looked for.
            _ => {}
        }
    }
    let (sink, images) = match saved.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(input(format!(
                "--generated {}: the run has no save_images sink, so its images are not on disk; give an ImageFolder tree instead",
                path.display()
            )))
        }
        more => {
            let names: Vec<&str> = more.iter().map(|(n, _)| n.as_str()).collect();
            return Err(input(format!(
                "--generated {}: the run has {} save_images sinks ({}); give the image folder of one of them",
                path.display(),
                more.len(),
                names.join(", ")
            )));
        }
    };
    if !path.join("report.json").is_file() {
        return Err(input(format!(
            "--generated {}: the run has not finished (no report.json); CAS trains on all of its images, so finish the run first",
            path.display()
        )));
    }
    if !images.is_dir() {
        return Err(input(format!("--generated {}: {sink} wrote to \"{}\", which is not a folder now", path.display(), images.display())));
    }
    Ok(GeneratedSet { images, run_oracle: oracles.into_iter().next() })
}

/// CAS trains the oracle's own architecture: a recipe that is not the run's oracle's is refused.
fn check_recipe(args: &CasArgs, set: &GeneratedSet) -> Result<(), CliError> {
    let r = &args.recipe;
    if let Some(o) = &set.run_oracle {
        let differs = [
            ("--arch", r.arch.to_string(), o.arch.to_string()),
            ("--stem", r.stem.to_string(), o.stem.to_string()),
            ("--norm", String::from(r.norm), String::from(o.normalization)),
        ];
        if let Some((flag, ours, theirs)) = differs.into_iter().find(|(_, a, b)| a != b) {
            return Err(input(format!(
                "{flag} {ours}: the run's oracle ({}) has {theirs}; CAS trains the oracle's architecture with its recipe",
                o.weights.display()
            )));
        }
    }
    Ok(())
}

/// The real-trained oracle: `--oracle`, else the run's, loaded once with the recipe's
/// architecture and the class count (a file of another architecture is refused) before any
/// training.
fn real_oracle(args: &CasArgs, set: &GeneratedSet, classes: usize) -> Result<PathBuf, CliError> {
    let r = &args.recipe;
    let weights = match (&args.oracle, &set.run_oracle) {
        (Some(path), _) => path.clone(),
        (None, Some(o)) => o.weights.clone(),
        (None, None) => {
            return Err(input(
                "--oracle FILE is required when --generated is an image folder (the real-trained oracle to compare with)".into(),
            ))
        }
    };
    let cpu = candle_core::Device::Cpu;
    let map = WeightMap::load(&weights, &cpu).map_err(|e| input(format!("--oracle: {e}")))?;
    let cfg = OracleConfig { arch: r.arch, stem: r.stem, norm: r.norm, num_classes: classes };
    Oracle::from_weights(&map, &cfg).map_err(|e| input(format!("--oracle {} as {} ({} stem): {e}", weights.display(), r.arch, r.stem)))?;
    match crate::models::resnet::ResNet::width_of(&map) {
        Some(w) if w != r.width => Err(input(format!(
            "--width {}: the real-trained oracle \"{}\" has width {w}; CAS trains the oracle's architecture (give --width {w})",
            r.width,
            weights.display()
        ))),
        _ => Ok(weights),
    }
}

fn per_class(data: &Dataset) -> Vec<u64> {
    let mut counts = vec![0u64; data.classes.len()];
    for &l in &data.labels {
        counts[l as usize] += 1;
    }
    counts
}

fn load(flag: &str, dir: &Path) -> Result<Dataset, CliError> {
    if !dir.is_dir() {
        return Err(input(format!("{flag} {}: not a folder (expected root/<class>/*.png)", dir.display())));
    }
    Dataset::load(dir).map_err(|e| input(format!("{flag}: {e}")))
}

pub fn cas(args: CasArgs, mut settings: Settings) -> Result<(), CliError> {
    apply_overrides(&mut settings, &args.metrics_addr, &args.device)?;
    let device = settings.open_device()?;
    let set = resolve_generated(&args.generated)?;
    check_recipe(&args, &set)?;
    let generated = load("--generated", &set.images)?;
    let real = load("--real-eval", &args.real_eval)?;
    if generated.classes != real.classes {
        return Err(input(format!(
            "--generated {}: classes {:?} differ from --real-eval's {:?} (expected the same class folders)",
            set.images.display(),
            generated.classes,
            real.classes
        )));
    }
    if (generated.height, generated.width) != (real.height, real.width) {
        return Err(input(format!(
            "--generated {}: images are {}x{}, --real-eval's {}x{} (expected one size)",
            set.images.display(),
            generated.width,
            generated.height,
            real.width,
            real.height
        )));
    }
    let oracle_weights = real_oracle(&args, &set, real.classes.len())?;
    let out = absolute(&args.out)?;
    std::fs::create_dir_all(&out).map_err(|e| CliError::Output(format!("--out \"{}\": cannot create: {e}", out.display())))?;

    let (net, epochs) = fit_oracle("cas", &generated, &real, &args.recipe, &settings, &device, "cas")?;
    let classifier = out.join(CLASSIFIER_FILE);
    net.save(&classifier).map_err(|e| CliError::Output(format!("classifier weights \"{}\": cannot write: {e}", classifier.display())))?;

    // Both classifiers are scored by the same evaluation path (the one `baseline` and `run`
    // use), reading their weight files, so the two figures differ only by the training data.
    settings.metrics.listen = "off".into();
    let r = &args.recipe;
    let scored = |weights: &Path, what: &str| {
        let oracle = OracleArgs {
            oracle: weights.to_path_buf(),
            oracle_arch: r.arch,
            oracle_stem: r.stem,
            oracle_norm: r.norm,
            batch_size: r.batch_size,
            device: args.device.clone(),
            metrics_addr: Some("off".into()),
        };
        println!("cas: testing the {what} on {}", args.real_eval.display());
        measure(&args.real_eval, &oracle, &settings, "rcaflow cas", &format!("no CAS report written to {}", out.display())).map(|m| m.1)
    };
    let cas = scored(&classifier, "classifier trained on generated images")?;
    let real_summary = scored(&oracle_weights, "real-trained oracle")?;
    let ratios = relative_accuracy(&real_summary, &cas);
    let classes = real.classes.clone();
    let report = CasReport {
        schema: CAS_SCHEMA.to_string(),
        generated: ImageSet { source: absolute(&set.images)?, images: generated.len() as u64, per_class: per_class(&generated) },
        real_eval: ImageSet { source: absolute(&args.real_eval)?, images: real.len() as u64, per_class: per_class(&real) },
        classifier: serde_json::json!({
            "weights": classifier,
            "arch": r.arch.to_string(),
            "stem": r.stem.to_string(),
            "width": r.width,
            "normalization": String::from(r.norm),
            "init": r.init.as_ref().map(|p| absolute(p)).transpose()?,
            "warmup_epochs": epochs.iter().filter(|e| e.phase == "warmup").count(),
            "epochs": r.epochs,
            "lr": r.lr,
            "weight_decay": r.weight_decay,
            "batch_size": r.batch_size,
            "seed": r.seed,
        }),
        epochs: serde_json::to_value(&epochs).map_err(|e| CliError::Output(e.to_string()))?,
        cas,
        real_oracle: RealOracle { weights: absolute(&oracle_weights)?, summary: real_summary },
        ratio: ratios.global,
        class_ratio: ratios.per_class,
        classes,
    };
    let write = |name: &str, bytes: &[u8]| {
        let path = out.join(name);
        crate::files::atomic::write(&path, bytes, "cas.write")
            .map_err(|e| CliError::Output(format!("\"{}\": cannot write: {e}", path.display())))
    };
    let title = format!(
        "CAS: trained on generated, tested on real (accuracy {}, ratio {})",
        report.cas.accuracy.map_or("n/a".into(), |a| format!("{a:.3}")),
        report.ratio.map_or("n/a".into(), |a| format!("{a:.3}"))
    );
    confusion_heatmap(&out.join(FIGURE_FILE), &title, &report.classes, &report.cas.confusion)
        .map_err(|e| CliError::Output(e.to_string()))?;
    write("cas.json", &serde_json::to_vec_pretty(&report).map_err(|e| CliError::Output(e.to_string()))?)?;
    write("cas.md", render(&report, FIGURE_FILE).as_bytes())?;
    let acc = |a: Option<f64>| a.map_or("n/a".into(), |a| format!("{a:.4}"));
    println!(
        "cas: accuracy {} (trained on {} generated images) vs {} (real-trained oracle), ratio {}; report {}",
        acc(report.cas.accuracy),
        report.generated.images,
        acc(report.real_oracle.summary.accuracy),
        acc(report.ratio),
        out.join("cas.json").display()
    );
    Ok(())
}
