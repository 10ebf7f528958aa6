//! `rcaflow run --topology FILE`: the daemon. Runs a topology until its sources are exhausted
//! or it is asked to stop (SIGINT/SIGTERM), then writes the report. Run again after a crash or
//! a stop, it resumes from the run directory's checkpoints.

use std::path::PathBuf;

use clap::Args;

use super::{apply_overrides, execute, CliError};
use crate::settings::Settings;
use crate::stages::Graph;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long, value_name = "FILE")]
    pub topology: PathBuf,
    /// Run directory (report and state); defaults to the topology's `[run] dir`.
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Prometheus listen address (HOST:PORT, port 0 for any free port, or "off").
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
    /// Where models run (overrides the config file).
    #[arg(long)]
    pub device: Option<String>,
    /// Discard the run directory's checkpoints and start over (by default a run directory that
    /// holds a run of the same topology is resumed: units already counted are skipped).
    #[arg(long)]
    pub fresh: bool,
}

pub fn run(args: RunArgs, mut settings: Settings) -> Result<(), CliError> {
    apply_overrides(&mut settings, &args.metrics_addr, &args.device)?;
    let graph = Graph::load(&args.topology)?;
    let run_dir = args.run_dir.or_else(|| graph.run_dir.clone()).ok_or_else(|| {
        CliError::Input(format!(
            "topology {}: no run directory; give --run-dir DIR or set `dir` in its [run] table",
            args.topology.display()
        ))
    })?;
    let outcome = execute::execute(&graph, &run_dir, &settings, args.fresh)?;
    execute::finish(&outcome, &run_dir)
}
