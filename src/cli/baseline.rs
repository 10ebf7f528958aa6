//! `rcaflow baseline`: the oracle's accuracy on real held-out images (accuracy, per-class
//! precision/recall/F1/support, confusion), written as a file an `rca` sink can use
//! (`baseline = FILE`) instead of re-reading the real images on every run.

use std::path::{Path, PathBuf};

use clap::Args;

use super::eval::{absolute, build_graph, oracle_topology};
use super::{apply_overrides, execute, CliError, OracleArgs};
use crate::metrics::rca::ClassificationSummary;
use crate::report::baseline::{Baseline, BASELINE_SCHEMA};
use crate::report::Summary;
use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct BaselineArgs {
    /// Real held-out images: root/<class>/*.png|jpg|jpeg.
    #[arg(long, value_name = "DIR")]
    pub real: PathBuf,
    /// The baseline file to write (JSON).
    #[arg(long, value_name = "FILE.json")]
    pub out: PathBuf,
    #[command(flatten)]
    pub oracle: OracleArgs,
}

pub fn baseline(args: BaselineArgs, mut settings: Settings) -> Result<(), CliError> {
    apply_overrides(&mut settings, &args.oracle.metrics_addr, &args.oracle.device)?;
    let out = absolute(&args.out)?;
    let (classes, real) =
        measure(&args.real, &args.oracle, &settings, "rcaflow baseline", &format!("no baseline written to {}", out.display()))?;
    let baseline = Baseline {
        schema: BASELINE_SCHEMA.to_string(),
        classes,
        oracle: serde_json::json!({
            "weights": absolute(&args.oracle.oracle)?,
            "arch": args.oracle.oracle_arch.to_string(),
            "stem": args.oracle.oracle_stem.to_string(),
            "normalization": String::from(args.oracle.oracle_norm),
        }),
        source: absolute(&args.real)?,
        real,
    };
    let json = serde_json::to_vec_pretty(&baseline).map_err(|e| CliError::Output(e.to_string()))?;
    crate::files::atomic::write(&out, &json, "json.write")
        .map_err(|e| CliError::Output(format!("baseline \"{}\": cannot write: {e}", out.display())))?;
    println!(
        "baseline: {} (real accuracy {} on {} images)",
        out.display(),
        baseline.real.accuracy.map_or("n/a".into(), |a| format!("{a:.4}")),
        baseline.real.total
    );
    Ok(())
}

/// The oracle's figures on the real images under `real` (classes, and accuracy, per-class
/// precision/recall/F1 and confusion), measured by the evaluation path of `run` and `eval`
/// (an image_folder → batcher → oracle → rca topology) with its checkpoints in a scratch folder.
/// `label` names the topology; `lost` says what is not written when the run is interrupted.
pub(crate) fn measure(
    real: &Path,
    oracle: &OracleArgs,
    settings: &Settings,
    label: &str,
    lost: &str,
) -> Result<(Vec<String>, ClassificationSummary), CliError> {
    let (graph, _) = build_graph(&oracle_topology(&[("real", real)], oracle)?, label)?;
    // The run's own files (checkpoints) go to a scratch folder, not next to the user's files.
    // Made by the tempfile crate (exclusive, unpredictable name, owner-only), removed on return.
    let scratch = tempfile::Builder::new()
        .prefix("rcaflow-baseline-")
        .tempdir()
        .map_err(|e| CliError::Output(format!("cannot create a scratch folder in {}: {e}", std::env::temp_dir().display())))?;
    let outcome = execute::execute(&graph, scratch.path(), settings, true)?;
    if outcome.interrupted {
        return Err(CliError::Interrupted(lost.to_string()));
    }
    let Some(Summary::Rca(result)) = outcome.summaries.get("rca") else {
        return Err(CliError::Output(format!("the rca stage returned no result; {lost}")));
    };
    Ok((graph.classes.clone(), result.real.clone()))
}
