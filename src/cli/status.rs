//! `rcaflow status RUN_DIR`: where a run stands (running or stopped), read from its files
//! alone: `run.json` (plan, sessions), `run.lock` (is it running), the checkpoints (which
//! units each stage holds) and `report.json` (finished). It loads no model and takes no lock.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use clap::Args;

use super::CliError;
use crate::runtime::checkpoint::checkpoint_path;
use crate::runtime::run_dir::{self, Manifest, ResumePoint};

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run directory (a topology's `[run] dir`, or `--run-dir` / `eval --out`).
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,
}

pub fn status(args: StatusArgs) -> Result<(), CliError> {
    print!("{}", describe(&args.run_dir)?);
    Ok(())
}

/// The status text of `dir`.
pub fn describe(dir: &Path) -> Result<String, CliError> {
    let manifest = Manifest::read(dir).map_err(|e| CliError::Input(e.to_string()))?.ok_or_else(|| {
        CliError::Input(format!(
            "run directory \"{}\": no {} (not a run directory, or never started)",
            dir.display(),
            run_dir::MANIFEST_FILE
        ))
    })?;
    let point = ResumePoint::read(dir, &manifest).map_err(|e| CliError::Input(e.to_string()))?;
    let state = match run_dir::lock_holder(dir) {
        Some(holder) => format!("running ({holder})"),
        None if dir.join("report.json").exists() => "finished (report.json written)".to_string(),
        None => "stopped (run the same command again to resume)".to_string(),
    };
    let mut out = String::new();
    let _ = writeln!(out, "run directory {}: {state}", dir.display());
    let _ = writeln!(out, "topology: {}, {} classes", manifest.topology, manifest.classes.len());
    if let Some(shard) = manifest.shard {
        let _ = writeln!(out, "shard {shard}: its own units only (merge the shards with rcaflow merge)");
    }
    let _ = writeln!(out, "sessions: {}", manifest.sessions.len());
    for (k, s) in manifest.sessions.iter().enumerate() {
        let _ = writeln!(
            out,
            "  {}: started {} (pid {}), units skipped {}, redone {}",
            k + 1,
            ago(s.started_unix),
            s.pid,
            s.units_skipped,
            s.units_redone
        );
    }
    for (source, plan) in &manifest.sources {
        let done = &point.skip[source];
        // A shard's directory holds its own units only.
        let units: Vec<_> = plan.units().into_iter().filter(|(id, _)| manifest.shard.is_none_or(|s| s.holds(*id))).collect();
        let images: u64 = units.iter().map(|(_, n)| n).sum();
        let images_done: u64 = units.iter().filter(|(id, _)| done.contains(id)).map(|(_, n)| n).sum();
        let _ = writeln!(
            out,
            "source {source} ({}): {images_done}/{images} images, {}/{} units held by every stage downstream ({})",
            plan.origin,
            done.len(),
            units.len(),
            plan.holders.join(", ")
        );
        for (class, name) in manifest.classes.iter().enumerate() {
            let of_class = units.iter().filter(|(id, _)| id.class as usize == class);
            let (d, t) = of_class.fold((0, 0), |(d, t), (id, n)| (d + if done.contains(id) { *n } else { 0 }, t + n));
            let _ = writeln!(out, "  {name}: {d}/{t}");
        }
    }
    let _ = writeln!(out, "checkpoints:");
    for (stage, held) in &point.held {
        let when = std::fs::metadata(checkpoint_path(dir, stage)).and_then(|m| m.modified()).ok();
        let when = when.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()).map_or("none yet".to_string(), |d| ago(d.as_secs()));
        let _ = writeln!(out, "  {stage}: {} units, written {when}", held.len());
    }
    Ok(out)
}

/// "12 s ago" style, from a Unix time.
fn ago(unix: u64) -> String {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(unix);
    match s {
        0..=119 => format!("{s} s ago"),
        120..=7199 => format!("{} min ago", s / 60),
        _ => format!("{:.1} h ago", s as f64 / 3600.0),
    }
}
