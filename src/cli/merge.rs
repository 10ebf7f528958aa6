//! `rcaflow merge SHARD_DIR... --out DIR`: the report of a sharded run (DESIGN.md §2 "Beyond
//! one machine"). Checks that the shard directories are the N shards of one run (the same
//! topology and model files, as their run manifests record them; each shard once, none
//! missing), folds their checkpoints into `DIR/state` ([`crate::runtime::merge`]), then runs
//! the topology in `DIR` sending no unit: every stage finishes from the folded state through
//! the code a single-machine run ends with, so report.json, report.md and the figures are that
//! run's (counts exactly, float metrics up to the order of summation).
//!
//! Shards still running (or stopped) merge too: the checkpoints on disk are consistent
//! snapshots, and the report's status is `partial`; `DIR/merge.json` says how far each shard was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Args;
use serde::Serialize;

use super::{apply_overrides, execute, CliError};
use crate::report::json::{Report, RunStatus};
use crate::report::markdown;
use crate::runtime::merge::ShardFold;
use crate::runtime::run_dir::{self, Manifest, ResumePoint};
use crate::settings::Settings;
use crate::stages::report::REPORT_FILES;
use crate::stages::Graph;
use crate::topology::Override;
use crate::units::Shard;

pub const MERGE_FILE: &str = "merge.json";
const MERGE_SCHEMA: &str = "rcaflow-merge/1";

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The shard directories of one run (RUN_DIR/shard-K-of-N), all N of them, in any order.
    #[arg(required = true, value_name = "SHARD_DIR")]
    pub shards: Vec<PathBuf>,
    /// Where the merged report and state go (a new directory, or an earlier merge's).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The topology file; by default the one the shards' run.json names (with the `--set`
    /// overrides it records).
    #[arg(long, value_name = "FILE")]
    pub topology: Option<PathBuf>,
    /// Where models run for the last steps (LPIPS pairs split across shards).
    #[arg(long)]
    pub device: Option<String>,
    /// Prometheus listen address of the merge itself; off unless given (the shards export
    /// their own metrics).
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
}

/// `merge.json`: what the merged report was made of.
#[derive(Debug, Serialize)]
pub struct MergeRecord {
    pub schema: String,
    /// Every unit of every source was done in its shard: the report is the whole run's.
    pub complete: bool,
    pub shards: Vec<ShardRecord>,
}

#[derive(Debug, Serialize)]
pub struct ShardRecord {
    pub dir: PathBuf,
    pub shard: String,
    /// Units of this shard that every stage downstream of their source holds.
    pub units_done: usize,
    pub units_planned: usize,
    /// Another process held the shard's run lock when it was read.
    pub running: bool,
}

pub fn merge(args: MergeArgs, mut settings: Settings) -> Result<(), CliError> {
    // The merge exports nothing unless asked: the shards' exporters may run on this machine.
    settings.metrics.listen = "off".into();
    apply_overrides(&mut settings, &args.metrics_addr, &args.device)?;

    // 1. Every directory is a shard, of one run.
    let mut shards: Vec<(PathBuf, Manifest, Shard)> = Vec::new();
    for dir in &args.shards {
        let manifest = Manifest::read(dir).map_err(|e| CliError::Input(e.to_string()))?.ok_or_else(|| {
            CliError::Input(format!(
                "shard directory \"{}\": no {} (not a run directory, or the shard has not started)",
                dir.display(),
                run_dir::MANIFEST_FILE
            ))
        })?;
        let shard = manifest.shard.ok_or_else(|| {
            CliError::Input(format!(
                "shard directory \"{}\" holds a whole run, not a shard (started without --shard); merge takes the shards of one run",
                dir.display()
            ))
        })?;
        shards.push((dir.clone(), manifest, shard));
    }
    let topology = match &args.topology {
        Some(t) => t.clone(),
        None => PathBuf::from(&shards[0].1.topology),
    };
    // A variation (`run --set`, a sweep) is merged as the variation its shards ran.
    let overrides = shards[0]
        .1
        .overrides
        .iter()
        .map(|o| o.parse::<Override>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CliError::Input(format!("shard directory \"{}\": {}: {e}", shards[0].0.display(), run_dir::MANIFEST_FILE)))?;
    let graph = Graph::load_with(&topology, &overrides)?;
    let plans = graph.plans().map_err(|e| CliError::Input(format!("topology {}: {e}", graph.label)))?;
    let now = Manifest::of(&graph, &plans).map_err(|e| CliError::Input(format!("topology {}: {e}", graph.label)))?;
    for (dir, manifest, shard) in &shards {
        let mut expected = now.clone();
        expected.shard = Some(*shard);
        let changed = manifest.differences(&expected);
        if !changed.is_empty() {
            return Err(CliError::Input(format!(
                "shard directory \"{}\" holds a run of another topology or other files than {}: {}; merge takes the shards of one run",
                dir.display(),
                topology.display(),
                changed.join("; ")
            )));
        }
    }
    let count = shards[0].2.count;
    if let Some((dir, _, shard)) = shards.iter().find(|(_, _, s)| s.count != count) {
        return Err(CliError::Input(format!(
            "shard directory \"{}\" is shard {shard}, \"{}\" one of {count} shards; merge takes the shards of one run",
            dir.display(),
            shards[0].0.display()
        )));
    }
    let mut by_index: BTreeMap<u32, &PathBuf> = BTreeMap::new();
    for (dir, _, shard) in &shards {
        if let Some(first) = by_index.insert(shard.index, dir) {
            return Err(CliError::Input(format!(
                "shard {shard} is given twice: \"{}\" and \"{}\"; give each shard directory once",
                first.display(),
                dir.display()
            )));
        }
    }
    if let Some(missing) = (0..count).find(|k| !by_index.contains_key(k)) {
        let found: Vec<String> = by_index.keys().map(u32::to_string).collect();
        return Err(CliError::Input(format!(
            "shard {missing}/{count} is missing (its directory is shard-{missing}-of-{count}); given shards {} of {count}",
            found.join(", ")
        )));
    }
    shards.sort_by_key(|(_, _, s)| s.index);

    // 2. The output directory: new, or an earlier merge's (never a run's, never a shard).
    let out = &args.out;
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y);
    if let Some((dir, _, _)) = shards.iter().find(|(dir, _, _)| same(dir, out)) {
        return Err(CliError::Input(format!(
            "--out \"{}\" is the shard directory \"{}\"; merge into another directory",
            out.display(),
            dir.display()
        )));
    }
    if out.join(run_dir::MANIFEST_FILE).exists() && !out.join(MERGE_FILE).exists() {
        return Err(CliError::Input(format!(
            "--out \"{}\" holds a run (it has {} but no {MERGE_FILE}); merge into a new directory or an earlier merge's",
            out.display(),
            run_dir::MANIFEST_FILE
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| CliError::Output(format!("--out \"{}\": cannot create: {e}", out.display())))?;
    let dirs: Vec<PathBuf> = shards.iter().map(|(d, _, _)| d.clone()).collect();
    let record = {
        let _lock = run_dir::lock(out).map_err(|e| CliError::Input(e.to_string()))?;
        clear_earlier_merge(out)?;
        // 3. Fold every component's checkpoints, then record the merged run's manifest.
        let fold = ShardFold { shards: &dirs, out, feature_memory_bytes: settings.runtime.feature_memory_mib.saturating_mul(1 << 20) };
        for c in &graph.components {
            c.kind.fold_shards(&c.id, &fold).map_err(|e| CliError::Input(format!("merge: {}: {e}", c.qualified())))?;
        }
        now.write(out).map_err(|e| CliError::Output(e.to_string()))?;
        let point = ResumePoint::read(out, &now).map_err(|e| CliError::Input(e.to_string()))?;
        let mut complete = true;
        let mut records = Vec::new();
        for (dir, _, shard) in &shards {
            let (mut done, mut planned) = (0, 0);
            for (source, plan) in &now.sources {
                for (id, _) in plan.units().into_iter().filter(|(id, _)| shard.holds(*id)) {
                    planned += 1;
                    done += usize::from(point.skip.get(source).is_some_and(|s| s.contains(&id)));
                }
            }
            complete &= done == planned;
            let running = run_dir::lock_holder(dir).is_some();
            records.push(ShardRecord { dir: dir.clone(), shard: shard.to_string(), units_done: done, units_planned: planned, running });
        }
        MergeRecord { schema: MERGE_SCHEMA.into(), complete, shards: records }
    };

    // 4. The run that finishes every stage from the folded state and writes the report.
    let options = execute::Options { fresh: false, shard: None, from_checkpoints_only: true };
    let outcome = execute::execute_with(&graph, out, &settings, options)?;
    let json = serde_json::to_vec_pretty(&record).map_err(|e| CliError::Output(e.to_string()))?;
    write(&out.join(MERGE_FILE), &json)?;
    if !record.complete {
        mark_partial(out)?;
        for s in record.shards.iter().filter(|s| s.units_done < s.units_planned) {
            let state = if s.running { "running" } else { "not finished" };
            eprintln!("shard {} (\"{}\") is {state}: {}/{} units done", s.shard, s.dir.display(), s.units_done, s.units_planned);
        }
        eprintln!("the merged report is partial: it covers the units the shards had done");
    }
    println!("merged {count} shards into {}", out.display());
    execute::finish(&outcome, out)
}

/// Removes what an earlier merge into `out` wrote (its state, manifest and report files).
fn clear_earlier_merge(out: &Path) -> Result<(), CliError> {
    let state = out.join(run_dir::STATE_DIR);
    if state.exists() {
        std::fs::remove_dir_all(&state)
            .map_err(|e| CliError::Output(format!("--out: cannot remove the earlier merge's \"{}\": {e}", state.display())))?;
    }
    for name in REPORT_FILES.iter().chain(&[run_dir::MANIFEST_FILE, MERGE_FILE]) {
        let path = out.join(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .map_err(|e| CliError::Output(format!("--out: cannot remove the earlier merge's \"{}\": {e}", path.display())))?;
        }
    }
    Ok(())
}

/// Marks the merged report (report.json and report.md) `partial`.
fn mark_partial(out: &Path) -> Result<(), CliError> {
    let path = out.join("report.json");
    let Ok(bytes) = std::fs::read(&path) else { return Ok(()) };
    let mut report: Report =
        serde_json::from_slice(&bytes).map_err(|e| CliError::Output(format!("report \"{}\": cannot read back: {e}", path.display())))?;
    report.status = RunStatus::Partial;
    write(&out.join("report.md"), markdown::render(&report).as_bytes())?;
    let json = serde_json::to_vec_pretty(&report).map_err(|e| CliError::Output(e.to_string()))?;
    write(&path, &json)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    crate::files::atomic::write(path, bytes, "report.write")
        .map_err(|e| CliError::Output(format!("\"{}\": cannot write: {e}", path.display())))
}
