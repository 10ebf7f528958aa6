//! `rcaflow run --topology FILE`: the daemon. Runs a topology until its sources are exhausted
//! or it is asked to stop (SIGINT/SIGTERM), then writes the report. Run again after a crash or
//! a stop, it resumes from the run directory's checkpoints.
//!
//! With `--shard K/N` (or `--shard-from-env` under a Slurm job array or a Kubernetes Indexed
//! Job) it runs shard K of the topology's units in `RUN_DIR/shard-K-of-N` ([`crate::units::shard_of`]
//! says which units); `rcaflow merge` folds the shards into the whole run's report.

use std::path::PathBuf;

use clap::Args;

use super::{apply_overrides, execute, CliError};
use crate::settings::Settings;
use crate::stages::Graph;
use crate::topology::Override;
use crate::units::Shard;

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(long, value_name = "FILE")]
    pub topology: PathBuf,
    /// Change one key of the topology file for this run (repeatable): KEY is its dotted path
    /// (sources.sampler.steps), VALUE a TOML value or a bare string. Recorded in run.json.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<Override>,
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
    /// Run shard K of N (K from 0) of the topology's units, in RUN_DIR/shard-K-of-N; merge
    /// the shards with `rcaflow merge`.
    #[arg(long, value_name = "K/N", conflicts_with = "shard_from_env")]
    pub shard: Option<Shard>,
    /// Take the shard from the scheduler: SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (a
    /// Slurm job array, K counted from its first task), or JOB_COMPLETION_INDEX (a Kubernetes
    /// Indexed Job) with N from --shard-count.
    #[arg(long)]
    pub shard_from_env: bool,
    /// The shard count N for --shard-from-env where the environment does not give it
    /// (Kubernetes); under Slurm, checked against SLURM_ARRAY_TASK_COUNT.
    #[arg(long, value_name = "N", requires = "shard_from_env")]
    pub shard_count: Option<u32>,
}

pub fn run(args: RunArgs, mut settings: Settings) -> Result<(), CliError> {
    apply_overrides(&mut settings, &args.metrics_addr, &args.device)?;
    let shard = match (args.shard, args.shard_from_env) {
        (Some(shard), _) => Some(shard),
        (None, true) => Some(shard_from_env(|name| std::env::var(name).ok(), args.shard_count).map_err(CliError::Input)?),
        (None, false) => None,
    };
    let graph = Graph::load_with(&args.topology, &args.set)?;
    let run_dir = args.run_dir.or_else(|| graph.run_dir.clone()).ok_or_else(|| {
        CliError::Input(format!(
            "topology {}: no run directory; give --run-dir DIR or set `dir` in its [run] table",
            args.topology.display()
        ))
    })?;
    let run_dir = match shard {
        Some(shard) => run_dir.join(shard.dir_name()),
        None => run_dir,
    };
    if let Some(shard) = shard {
        tracing::info!(%shard, run_dir = %run_dir.display(), "running one shard");
    }
    let options = execute::Options { fresh: args.fresh, shard, from_checkpoints_only: false };
    let outcome = execute::execute_with(&graph, &run_dir, &settings, options)?;
    execute::finish(&outcome, &run_dir)
}

/// The shard a scheduler gave this task, from its environment (`var` reads a variable):
/// Slurm job arrays set `SLURM_ARRAY_TASK_ID` (K is counted from `SLURM_ARRAY_TASK_MIN`, so
/// `--array=1-4` works as `0-3` does) and `SLURM_ARRAY_TASK_COUNT`; Kubernetes Indexed Jobs set
/// `JOB_COMPLETION_INDEX`, and N is `count` (`--shard-count`, the Job's `completions`).
pub fn shard_from_env(var: impl Fn(&str) -> Option<String>, count: Option<u32>) -> Result<Shard, String> {
    let number = |name: &str| -> Result<Option<u32>, String> {
        match var(name) {
            None => Ok(None),
            Some(text) => {
                text.trim().parse::<u32>().map(Some).map_err(|_| format!("--shard-from-env: {name}=\"{text}\" is not a whole number"))
            }
        }
    };
    let shard = |k: u32, n: u32| Shard::new(k, n).map_err(|e| format!("--shard-from-env: {e}"));
    if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
        let n = number("SLURM_ARRAY_TASK_COUNT")?
            .ok_or("--shard-from-env: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; submit with sbatch --array=0-(N-1)")?;
        if let Some(c) = count.filter(|&c| c != n) {
            return Err(format!("--shard-from-env: --shard-count {c} disagrees with SLURM_ARRAY_TASK_COUNT={n}"));
        }
        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let k =
            id.checked_sub(min).ok_or_else(|| format!("--shard-from-env: SLURM_ARRAY_TASK_ID={id} is below SLURM_ARRAY_TASK_MIN={min}"))?;
        return shard(k, n);
    }
    if let Some(k) = number("JOB_COMPLETION_INDEX")? {
        let n = count.ok_or(
            "--shard-from-env: JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but not the shard count; give --shard-count N (the Job's completions)",
        )?;
        return shard(k, n);
    }
    Err("--shard-from-env: neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) is set; use --shard K/N outside a scheduler".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn the_shard_comes_from_slurm_or_kubernetes_and_bad_values_are_refused_in_one_line() {
        let slurm = [("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "3")];
        assert_eq!(shard_from_env(env(&slurm), None), Ok(Shard { index: 2, count: 3 }));
        assert_eq!(shard_from_env(env(&slurm), Some(3)), Ok(Shard { index: 2, count: 3 }));
        let from_one = [("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_TASK_COUNT", "3"), ("SLURM_ARRAY_TASK_MIN", "1")];
        assert_eq!(shard_from_env(env(&from_one), None), Ok(Shard { index: 2, count: 3 }));
        assert_eq!(shard_from_env(env(&[("JOB_COMPLETION_INDEX", "0")]), Some(4)), Ok(Shard { index: 0, count: 4 }));
        let refusals = [
            (shard_from_env(env(&[]), None), "neither SLURM_ARRAY_TASK_ID (a Slurm job array) nor JOB_COMPLETION_INDEX"),
            (shard_from_env(env(&[("JOB_COMPLETION_INDEX", "1")]), None), "give --shard-count N (the Job's completions)"),
            (shard_from_env(env(&[("JOB_COMPLETION_INDEX", "4")]), Some(4)), "shard 4/4: the shard index must be below the shard count"),
            (shard_from_env(env(&[("JOB_COMPLETION_INDEX", "x")]), Some(4)), "JOB_COMPLETION_INDEX=\"x\" is not a whole number"),
            (shard_from_env(env(&[("JOB_COMPLETION_INDEX", "0")]), Some(0)), "the shard count must be at least 1"),
            (shard_from_env(env(&slurm[..1]), None), "SLURM_ARRAY_TASK_COUNT is not"),
            (shard_from_env(env(&slurm), Some(4)), "--shard-count 4 disagrees with SLURM_ARRAY_TASK_COUNT=3"),
        ];
        for (got, expected) in refusals {
            let e = got.unwrap_err();
            assert!(e.starts_with("--shard-from-env: ") && e.contains(expected) && !e.contains('\n'), "{e}");
        }
    }
}
