//! The running dataflow: stages wired by bounded channels, supervised by actors.
//!
//! [`run`] takes stage instances and the edges between them, gives each stage its inputs and
//! outputs, starts the [`supervisor::RunSupervisor`], and waits for the run to end: every stage
//! done, a stage failed, or a shutdown request drained (or not) within the deadline.

pub mod accumulator;
pub mod batch;
pub mod channels;
pub mod checkpoint;
pub mod control;
pub mod early_stop;
pub mod feature_store;
pub mod merge;
pub mod plan;
pub mod run_dir;
pub mod sink;
pub mod stage;
pub mod supervisor;
pub mod sync;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::Actor;
use tokio::sync::{mpsc, oneshot};

use crate::report::Summary;
use crate::units::{Shard, UnitId};
use channels::{edge_channel, Inputs, Outputs};
use control::{RunControl, StageStats, StageStatus};
use stage::{Stage, StageArgs, StageContext};
use supervisor::{RunSupervisor, StageFailure, SupervisorArgs, SupervisorMsg};

use crate::topology::Edge;

/// One stage to run, and how it is named.
pub struct StageSpec {
    pub id: String,
    pub qualified: String,
    /// Whether run progress counts the images this stage takes in (the builder decides which
    /// stages do; the runtime only adds up their counts).
    pub counts_progress: bool,
    pub stage: Box<dyn Stage>,
    /// How to build the stage again after a failure, and how many times (`restart = { max }`).
    pub restart: Option<stage::Restart>,
    /// Its own kernel threads (`threads = N`); `None`: the process-wide pool.
    pub pool: Option<crate::models::threads::StagePool>,
}

/// Per-run settings the stages need.
#[derive(Clone, Debug)]
pub struct RunSettings {
    pub run_dir: PathBuf,
    pub classes: Arc<Vec<String>>,
    /// How long a graceful stop may take before the run gives up on the stages still busy.
    pub shutdown_deadline: Duration,
    /// How often accumulators checkpoint their state into the run directory.
    pub checkpoint_interval: Duration,
    /// Per source id, the units every stage downstream already holds (a resumed run): the
    /// source does not send them again.
    pub skip: BTreeMap<String, Arc<BTreeSet<UnitId>>>,
    /// The shard this run is (`--shard K/N`): sources send only the units it holds.
    pub shard: Option<Shard>,
}

/// A request to stop, from a signal or a caller.
#[derive(Clone, Copy, Debug)]
pub struct ShutdownRequest;

/// How a run that did not fail ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// Summaries published by stages, by component id.
    pub summaries: BTreeMap<String, Summary>,
    /// A stop was requested: the results cover only the work done before it.
    pub interrupted: bool,
    pub stages: Vec<StageStatus>,
    pub wall: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("stage {} failed: {}", .first.stage, .first.cause)]
    StageFailed { first: StageFailure, others: Vec<StageFailure> },
    #[error("shutdown deadline of {}s passed; stages still busy: {}", .deadline.as_secs_f64(), .busy.join(", "))]
    DeadlineExceeded { deadline: Duration, busy: Vec<String> },
    #[error("stopped at once by a second interrupt; no results were written")]
    ForcedStop,
    #[error("cannot start the run: {0}")]
    Start(String),
}

/// Runs `stages` connected by `edges` until they finish or a shutdown ends them.
///
/// The first message on `shutdown` asks for a graceful stop (sources stop taking work, the
/// rest drains); a second one, or the deadline passing, ends the wait at once.
pub async fn run(
    stages: Vec<StageSpec>,
    edges: &[Edge],
    settings: &RunSettings,
    control: Arc<RunControl>,
    mut shutdown: mpsc::UnboundedReceiver<ShutdownRequest>,
) -> Result<RunOutcome, RunError> {
    // 1. One bounded channel per edge; each stage gets the ends that touch it.
    let mut inputs: BTreeMap<String, Vec<channels::EdgeReceiver>> = BTreeMap::new();
    let mut outputs: BTreeMap<String, Vec<channels::EdgeSender>> = BTreeMap::new();
    for edge in edges {
        let (tx, rx) = edge_channel(edge);
        outputs.entry(edge.from.clone()).or_default().push(tx);
        inputs.entry(edge.to.clone()).or_default().push(rx);
    }
    let mut args = Vec::new();
    for spec in stages {
        let stats = Arc::new(StageStats::new(&spec.id, spec.counts_progress));
        control.register(stats.clone());
        let ctx = StageContext {
            skip: settings.skip.get(&spec.id).cloned().unwrap_or_default(),
            shard: settings.shard,
            in_flight: None,
            keep_in_flight: false,
            replay: None,
            inputs: Inputs::new(inputs.remove(&spec.id).unwrap_or_default()),
            outputs: Outputs::new(outputs.remove(&spec.id).unwrap_or_default()),
            id: spec.id,
            qualified: spec.qualified,
            classes: settings.classes.clone(),
            control: control.clone(),
            stats,
            run_dir: settings.run_dir.clone(),
            checkpoint_interval: settings.checkpoint_interval,
            pool: spec.pool,
        };
        args.push(StageArgs { stage: spec.stage, restart: spec.restart, ctx });
    }
    if let Some(id) = inputs.keys().chain(outputs.keys()).next() {
        return Err(RunError::Start(format!("edge names stage \"{id}\", which is not in the run")));
    }

    // 2. The supervisor starts one actor per stage; it answers on `done` when all have ended.
    let (done_tx, mut done_rx) = oneshot::channel();
    let (supervisor, _handle) = Actor::spawn(None, RunSupervisor, SupervisorArgs { stages: args, control: control.clone(), done: done_tx })
        .await
        .map_err(|e| RunError::Start(e.to_string()))?;

    // 3. Wait for the end, or for a stop request and then the end within the deadline.
    let report = tokio::select! {
        report = &mut done_rx => report,
        Some(_) = shutdown.recv() => {
            tracing::warn!(
                "stop requested: sources stop, the rest drains (deadline {}s; interrupt again to stop at once)",
                settings.shutdown_deadline.as_secs_f64()
            );
            control.request_stop();
            tokio::select! {
                report = &mut done_rx => report,
                _ = tokio::time::sleep(settings.shutdown_deadline) => {
                    let busy = ractor::call_t!(supervisor, SupervisorMsg::Status, 2000)
                        .map(|s| s.into_iter().map(|(name, _)| name).collect())
                        .unwrap_or_else(|_| vec!["(supervisor not answering)".to_string()]);
                    control.abort();
                    return Err(RunError::DeadlineExceeded { deadline: settings.shutdown_deadline, busy });
                }
                Some(_) = shutdown.recv() => {
                    control.abort();
                    return Err(RunError::ForcedStop);
                }
            }
        }
    };
    let report = report.map_err(|_| RunError::Start("the supervisor stopped without reporting".into()))?;
    let mut failures = report.failures.into_iter();
    if let Some(first) = failures.next() {
        return Err(RunError::StageFailed { first, others: failures.collect() });
    }
    Ok(RunOutcome {
        summaries: control.results(),
        interrupted: control.stop_requested(),
        stages: control.statuses(),
        wall: control.started.elapsed(),
    })
}
