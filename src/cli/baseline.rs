//! `rcaflow baseline`: the oracle's accuracy on real held-out images (accuracy, per-class
//! precision/recall/F1/support, confusion), written as a file an `rca` sink can use
//! (`baseline = FILE`) instead of re-reading the real images on every run.

use std::path::{Path, PathBuf};

use clap::Args;
use toml::{Table, Value};

use super::eval::{absolute, oracle_pipeline};
use super::{apply_overrides, execute, CliError, OracleArgs};
use crate::runtime::atomic_file::write_atomic;
use crate::runtime::batch::Summary;
use crate::settings::Settings;
use crate::stages::rca::{Baseline, BASELINE_SCHEMA};
use crate::topology::Graph;

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
    let (sources, transforms) = oracle_pipeline(&[("real", &args.real)], &args.oracle)?;
    let mut sinks = Table::new();
    let mut rca = Table::new();
    rca.insert("type".into(), "rca".into());
    rca.insert("inputs".into(), Value::Array(vec!["oracle".into()]));
    sinks.insert("rca".into(), Value::Table(rca));
    let mut top = Table::new();
    top.insert("sources".into(), Value::Table(sources));
    top.insert("transforms".into(), Value::Table(transforms));
    top.insert("sinks".into(), Value::Table(sinks));
    let text = toml::to_string(&top).map_err(|e| CliError::Output(format!("cannot write the baseline topology: {e}")))?;
    let graph = Graph::parse(&text, Path::new("."), "rcaflow baseline")?;

    let out = absolute(&args.out)?;
    let dir = out.parent().unwrap_or(Path::new(".")).to_path_buf();
    let outcome = execute::execute(&graph, &dir, &settings)?;
    if outcome.interrupted {
        return Err(CliError::Interrupted(format!("{} (no baseline written)", dir.display())));
    }
    let Some(Summary::Rca(result)) = outcome.summaries.get("rca") else {
        return Err(CliError::Output("the rca stage returned no result; no baseline written".into()));
    };
    let baseline = Baseline {
        schema: BASELINE_SCHEMA.to_string(),
        classes: graph.classes.clone(),
        oracle: serde_json::json!({
            "weights": absolute(&args.oracle.oracle)?,
            "arch": args.oracle.oracle_arch.to_string(),
            "stem": args.oracle.oracle_stem.to_string(),
            "normalization": String::from(args.oracle.oracle_norm),
        }),
        source: absolute(&args.real)?,
        real: result.real.clone(),
    };
    let json = serde_json::to_vec_pretty(&baseline).map_err(|e| CliError::Output(e.to_string()))?;
    write_atomic(&out, &json).map_err(|e| CliError::Output(format!("baseline \"{}\": cannot write: {e}", out.display())))?;
    println!(
        "baseline: {} (real accuracy {} on {} images)",
        out.display(),
        result.real.accuracy.map_or("n/a".into(), |a| format!("{a:.4}")),
        result.real.total
    );
    Ok(())
}
