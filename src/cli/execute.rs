//! Runs a validated graph: prepares the run directory, starts the metrics exporter, turns
//! SIGINT/SIGTERM into stop requests, shows progress, and hands the graph to the runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;

use super::CliError;
use crate::runtime::control::RunControl;
use crate::runtime::run_dir::{self, Manifest, ResumePoint, Session};
use crate::runtime::{self, RunOutcome, RunSettings, ShutdownRequest, StageSpec};
use crate::settings::Settings;
use crate::stages::{self, report::REPORT_FILES, BuildContext, Graph};
use crate::telemetry;
use crate::units::{cut_into_units, Shard, UnitId, UnitPlan};

/// Runs `graph` with its report and state in `run_dir`: resumed from the checkpoints there
/// when it holds a run of the same graph, from scratch when `fresh` (its state is discarded).
pub fn execute(graph: &Graph, run_dir: &Path, settings: &Settings, fresh: bool) -> Result<RunOutcome, CliError> {
    execute_with(graph, run_dir, settings, Options { fresh, ..Options::default() })
}

/// How [`execute_with`] runs a graph besides its settings.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Discard the run directory's state first.
    pub fresh: bool,
    /// Run one shard of the graph's units (recorded in the manifest: a resume must be the same shard).
    pub shard: Option<Shard>,
    /// Send no unit at all: the stages finish from the checkpoints already in the run directory
    /// (`rcaflow merge`, which wrote them by folding the shards').
    pub from_checkpoints_only: bool,
}

/// [`execute`] with [`Options`].
///
/// The stages are built first (every component's weights and files loaded and checked, every
/// error at once): a run that cannot start fails before the run directory is touched.
pub fn execute_with(graph: &Graph, run_dir: &Path, settings: &Settings, options: Options) -> Result<RunOutcome, CliError> {
    let fresh = options.fresh;
    // An early stop is one decision over every class of the whole run (its units interleaved);
    // a shard holds only some units, so it could neither take nor honour that decision.
    if let (Some(shard), Some(decider)) = (options.shard, stages::rca::early_stop_decider(graph)) {
        return Err(CliError::Input(format!(
            "{}: stop_when cannot run with --shard {shard}: an early stop is decided over every class of the whole run, not per shard; run unsharded, or drop stop_when",
            decider.qualified()
        )));
    }
    let plans = graph.plans().map_err(|e| CliError::Input(format!("topology {}: {e}", graph.label)))?;
    let cx = BuildContext {
        label: graph.label.clone(),
        classes: Arc::new(graph.classes.clone()),
        device: settings.device()?,
        plans: Arc::new(plans),
        feature_memory_mib: settings.runtime.feature_memory_mib,
    };
    let stages = stages::build(graph, &cx)?;
    std::fs::create_dir_all(run_dir)
        .map_err(|e| CliError::Output(format!("run directory \"{}\": cannot create: {e}", run_dir.display())))?;
    // Held until this function returns; the kernel releases it if the process dies first.
    let _lock = run_dir::lock(run_dir).map_err(|e| CliError::Input(e.to_string()))?;
    (|| {
        // A refused start (another graph, a bad checkpoint) must leave the directory as it was,
        // the old report included: it is removed only once this run is going ahead.
        let mut skip = resume_point(graph, &cx.plans, run_dir, fresh, options.shard)?;
        if options.from_checkpoints_only {
            skip = cx
                .plans
                .iter()
                .map(|(id, plan)| {
                    (id.clone(), Arc::new(cut_into_units(&plan.per_class, plan.unit_size).map(|s| s.id(plan.origin)).collect()))
                })
                .collect();
        }
        remove_old_report(run_dir)?;
        execute_locked(graph, stages, &cx, run_dir, settings, skip, options.shard)
    })()
}

/// Records this session in `run.json` and says which units each source may skip.
fn resume_point(
    graph: &Graph,
    plans: &BTreeMap<String, UnitPlan>,
    run_dir: &Path,
    fresh: bool,
    shard: Option<Shard>,
) -> Result<BTreeMap<String, Arc<BTreeSet<UnitId>>>, CliError> {
    let refused = |e: run_dir::RunDirError| CliError::Input(e.to_string());
    let mut now = Manifest::of(graph, plans).map_err(|e| CliError::Input(format!("run directory \"{}\": {e}", run_dir.display())))?;
    now.shard = shard;
    let old = if fresh {
        let state = run_dir.join(run_dir::STATE_DIR);
        if state.exists() {
            std::fs::remove_dir_all(&state)
                .map_err(|e| CliError::Output(format!("run directory: cannot remove old state \"{}\": {e}", state.display())))?;
        }
        None
    } else {
        Manifest::read(run_dir).map_err(refused)?
    };
    let point = match old {
        Some(old) => {
            let changed = old.differences(&now);
            if !changed.is_empty() {
                return Err(CliError::Input(format!(
                    "run directory \"{}\" holds a run of another topology or other files: {}; use another --run-dir, or --fresh to discard its state",
                    run_dir.display(),
                    changed.join("; ")
                )));
            }
            now.sessions = old.sessions;
            ResumePoint::read(run_dir, &now).map_err(refused)?
        }
        None if run_dir::has_state(run_dir) => {
            return Err(CliError::Input(format!(
                "run directory \"{}\" has checkpoints in state/ but no {}: it was not started by this version; use another --run-dir, or --fresh",
                run_dir.display(),
                run_dir::MANIFEST_FILE
            )))
        }
        None => ResumePoint { skip: BTreeMap::new(), redone: 0, held: BTreeMap::new() },
    };
    let session = Session {
        started_unix: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        pid: std::process::id(),
        units_skipped: point.skipped(),
        units_redone: point.redone,
        rcaflow_version: Some(env!("CARGO_PKG_VERSION").to_string()),
    };
    if !now.sessions.is_empty() {
        tracing::info!(
            units_skipped = session.units_skipped,
            units_redone = session.units_redone,
            "resuming the run in {}",
            run_dir.display()
        );
    }
    now.sessions.push(session);
    now.write(run_dir).map_err(refused)?;
    run_dir::remove_stale_temporaries(run_dir).map_err(refused)?;
    Ok(point.skip.into_iter().map(|(source, units)| (source, Arc::new(units))).collect())
}

fn execute_locked(
    graph: &Graph,
    stages: Vec<StageSpec>,
    cx: &BuildContext,
    run_dir: &Path,
    settings: &Settings,
    skip: BTreeMap<String, Arc<BTreeSet<UnitId>>>,
    shard: Option<Shard>,
) -> Result<RunOutcome, CliError> {
    let metrics_addr = settings.metrics_addr().map_err(|e| CliError::Input(format!("config: {e}")))?;
    let final_scrape_wait = settings.final_scrape_wait().map_err(|e| CliError::Input(format!("config: {e}")))?;
    let run_settings = RunSettings {
        run_dir: run_dir.to_path_buf(),
        classes: cx.classes.clone(),
        shutdown_deadline: settings.shutdown_deadline(),
        checkpoint_interval: settings.checkpoint_interval(),
        skip,
        shard,
    };
    // Two workers are plenty: actors only pass control messages; the heavy work runs on the
    // stages' own threads.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("rcaflow-control")
        .enable_all()
        .build()
        .map_err(|e| CliError::Output(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async {
        if let Some(addr) = metrics_addr {
            // A shard's directory is `RUN/shard-K-of-N`: its `run` label is the run's, RUN.
            let named = if shard.is_some() { run_dir.parent().unwrap_or(run_dir) } else { run_dir };
            let run_label = named.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "run".into());
            let bound =
                telemetry::install_exporter(addr, &run_label, shard.map(|s| s.index)).map_err(|e| CliError::Input(e.to_string()))?;
            tracing::info!("metrics on http://{bound}/metrics");
        }
        let control = RunControl::with_early_stop(stages::rca::early_stop_gate(graph, cx));
        let (stop_tx, stop_rx) = mpsc::unbounded_channel();
        tokio::spawn(forward_signals(stop_tx));
        let progress = tokio::spawn(show_progress(control.clone()));
        tracing::info!(topology = %graph.label, run_dir = %run_dir.display(), classes = graph.classes.len(), "run starting");
        let result = runtime::run(stages, &graph.edges, &run_settings, control.clone(), stop_rx).await;
        progress.abort();
        // The gauge's last value is the run's end, not the last 250 ms tick before it.
        if let Some((done, planned, ratio)) = control.progress() {
            metrics::gauge!(telemetry::RUN_PROGRESS).set(ratio);
            // Only after a run that ended: a failed one's last line is its error.
            if result.is_ok() {
                tracing::info!("progress: {done}/{planned} images ({ratio:.3})");
            }
        }
        let outcome = result?;
        if metrics_addr.is_some() && !outcome.interrupted {
            if let Some(limit) = final_scrape_wait {
                hold_for_final_scrape(limit).await;
            }
        }
        Ok(outcome)
    })
}

/// Keeps the metrics endpoint serving until a scrape has carried the run's final values (every
/// sink has finished by now), at most `limit`, and only where something scraped the run while
/// it ran: the metrics set at the end reach Prometheus only at its next scrape. A signal ends
/// the wait.
async fn hold_for_final_scrape(limit: std::time::Duration) {
    let mark = telemetry::scrape_mark();
    if !telemetry::ever_scraped() {
        return;
    }
    tracing::info!(
        "final values set (KID, precision/recall, per-class figures); serving metrics until one more scrape carries them, at most {} s ([metrics] final_scrape_wait_secs)",
        limit.as_secs_f64()
    );
    let started = std::time::Instant::now();
    let scraped = async {
        while !telemetry::scraped_since(mark) {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        _ = scraped => tracing::info!("final values scraped after {:.1} s", started.elapsed().as_secs_f64()),
        _ = tokio::time::sleep(limit) => tracing::warn!("no scrape in {} s; the final values are in report.json only", limit.as_secs_f64()),
        _ = stop_signal() => tracing::info!("stopped waiting for the final scrape (signal)"),
    }
}

/// The next SIGINT or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Success, or exit 130 when the run was interrupted (its report says so).
pub fn finish(outcome: &RunOutcome, run_dir: &Path) -> Result<(), CliError> {
    for s in &outcome.stages {
        tracing::info!(stage = %s.id, images_in = s.images_in, images_out = s.images_out, busy_s = format!("{:.2}", s.busy_seconds), "stage done");
    }
    if outcome.interrupted {
        return Err(CliError::Interrupted(format!("the report in {} covers only the images evaluated before the stop", run_dir.display())));
    }
    let report = run_dir.join("report.json");
    if report.exists() {
        println!("report: {}", report.display());
    }
    println!("done in {:.1} s", outcome.wall.as_secs_f64());
    Ok(())
}

/// Removes report files of an earlier run, so a report found there after this run always
/// belongs to this run.
fn remove_old_report(run_dir: &Path) -> Result<(), CliError> {
    for name in REPORT_FILES {
        let path = run_dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path)
                .map_err(|e| CliError::Output(format!("run directory: cannot remove old \"{}\": {e}", path.display())))?;
        }
    }
    Ok(())
}

/// Each SIGINT or SIGTERM becomes one stop request: the first drains, the second stops at once.
async fn forward_signals(stop: mpsc::UnboundedSender<ShutdownRequest>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            tracing::warn!("cannot listen for signals; stop the run with SIGKILL");
            return;
        };
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if stop.send(ShutdownRequest).is_err() {
                return;
            }
        }
    }
    #[cfg(not(unix))]
    while tokio::signal::ctrl_c().await.is_ok() {
        if stop.send(ShutdownRequest).is_err() {
            return;
        }
    }
}

/// A progress bar on a terminal, a log line every 10 s otherwise, and the progress gauge.
async fn show_progress(control: Arc<RunControl>) {
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} images ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut ticks = 0u64;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some((done, planned, ratio)) = control.progress() {
            bar.set_length(planned);
            bar.set_position(done);
            metrics::gauge!(telemetry::RUN_PROGRESS).set(ratio);
        }
        ticks += 1;
        if let Some((done, planned, _)) = control.progress().filter(|_| bar.is_hidden() && ticks.is_multiple_of(40)) {
            tracing::info!("progress: {done}/{planned} images");
        }
    }
}
