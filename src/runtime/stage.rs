//! A stage is the heavy work of one component; its actor is its handle on the control plane.
//!
//! Each [`StageActor`] owns one OS thread running its [`Stage`] (candle calls are synchronous,
//! so they never run on tokio's workers). When the thread ends, the actor stops normally, or
//! fails with the stage's error so the supervisor sees it as a ractor supervision event. A stage
//! with a [`Restart`] policy is rebuilt on the same thread after a panic or an error (its
//! channels stay open) and first redoes the payload it was working on.

use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{de::DeserializeOwned, Serialize};

use super::accumulator::Snapshot;
use super::batch::Payload;
use super::channels::{Disconnected, Inputs, Outputs};
use super::checkpoint;
use super::control::{RunControl, StageState, StageStats, StageStatus};
use super::sync::panic_message;
use crate::fault;
use crate::report::Summary;
use crate::telemetry;
use crate::units::{Shard, UnitId};

/// Why a stage stopped before its inputs were exhausted.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{0}")]
    Failed(String),
    #[error("panicked: {0}")]
    Panicked(String),
    /// A consumer went away because the run is being torn down: not a cause of its own.
    #[error("{0}")]
    Cancelled(#[from] Disconnected),
}

impl StageError {
    pub fn failed(e: impl std::fmt::Display) -> Self {
        StageError::Failed(e.to_string())
    }
}

/// What a stage needs at run time besides its own configuration.
pub struct StageContext {
    /// Component id, the `stage` metric label.
    pub id: String,
    /// `section.id`, how messages name the stage.
    pub qualified: String,
    pub classes: Arc<Vec<String>>,
    pub inputs: Inputs,
    pub outputs: Outputs,
    pub control: Arc<RunControl>,
    pub stats: Arc<StageStats>,
    pub run_dir: PathBuf,
    pub checkpoint_interval: std::time::Duration,
    /// Units a source must not send: every stage downstream holds them (a resumed run).
    pub skip: Arc<BTreeSet<UnitId>>,
    /// The shard of a sharded run: a source sends only the units it holds ([`Self::in_shard`]).
    pub shard: Option<Shard>,
    /// The payload being worked on, kept (only for a stage with a `restart` policy: it keeps
    /// one more batch alive) so a restarted stage redoes it.
    pub in_flight: Option<Payload>,
    pub keep_in_flight: bool,
    /// A payload to hand out again before reading the inputs (after a restart).
    pub replay: Option<Payload>,
    /// The stage's own kernel threads (`threads = N`); `None`: the process-wide pool.
    pub pool: Option<crate::models::threads::StagePool>,
}

impl StageContext {
    /// Next input payload, counting its images in; `None` when every input has closed.
    pub fn recv(&mut self) -> Option<Payload> {
        if let Some(payload) = self.replay.take() {
            self.in_flight = Some(payload.clone());
            return Some(payload);
        }
        self.in_flight = None;
        let payload = self.inputs.recv()?;
        if self.keep_in_flight {
            self.in_flight = Some(payload.clone());
        }
        self.stats.add_in(payload.image_count());
        self.fault("batch").unwrap_or_else(|e| panic!("{e}"));
        Some(payload)
    }

    /// Whether unit `id` is this run's work: every unit without a shard, the shard's own with one.
    pub fn in_shard(&self, id: UnitId) -> bool {
        self.shard.is_none_or(|s| s.holds(id))
    }

    /// Fault injection point `<stage id>.<name>` (see [`crate::fault`]).
    pub fn fault(&self, name: &str) -> Result<(), StageError> {
        fault::at(&format!("{}.{name}", self.id)).map_err(|e| StageError::Failed(format!("injected fault at {}.{name}: {e}", self.id)))
    }

    /// This stage's last checkpoint, if it has one (a resumed run).
    pub fn restore<S: DeserializeOwned>(&self) -> Result<Option<Snapshot<S>>, StageError> {
        let snapshot = checkpoint::read(&self.run_dir, &self.id).map_err(StageError::failed)?;
        if let Some(s) = &snapshot {
            tracing::info!(stage = %self.id, units = s.applied.len(), "state restored from checkpoint");
        }
        Ok(snapshot)
    }

    /// Replaces this stage's checkpoint with `snapshot`.
    pub fn checkpoint<S: Serialize>(&self, snapshot: &Snapshot<S>) -> Result<(), StageError> {
        checkpoint::write(&self.run_dir, &self.id, snapshot).map_err(StageError::failed)
    }

    /// Sends to every consumer (blocking on a full channel), counting images out.
    pub fn send(&self, payload: Payload) -> Result<(), StageError> {
        let n = payload.image_count();
        self.outputs.send(payload)?;
        self.stats.add_out(n);
        Ok(())
    }

    /// Runs one batch's work, recording it as busy time and batch latency.
    pub fn timed<T>(&self, work: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = work();
        self.stats.add_busy(start.elapsed());
        out
    }

    /// Counts an error the stage handled without stopping (a corrupt input, say).
    pub fn count_error(&self) {
        metrics::counter!(telemetry::STAGE_ERRORS, "stage" => self.id.clone()).increment(1);
    }
}

/// The work of one component, run on its own thread until its inputs close (or, for a source,
/// until its work is done or a stop is requested). A sink may return a summary, published
/// before its outputs close so downstream stages and the caller see it.
pub trait Stage: Send + 'static {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError>;
}

pub enum StageMsg {
    /// The stage's thread has ended.
    Finished(Result<(), StageError>),
    Status(RpcReplyPort<StageStatus>),
}

/// Rebuilding a failed stage: `max` times at most, each time redoing the payload in flight.
/// The rebuild is the component's build step again (its weights loaded anew); it may fail.
pub struct Restart {
    pub max: u32,
    pub rebuild: Box<dyn Fn() -> Result<Box<dyn Stage>, String> + Send>,
}

pub struct StageArgs {
    pub stage: Box<dyn Stage>,
    pub restart: Option<Restart>,
    pub ctx: StageContext,
}

pub struct StageActorState {
    stats: Arc<StageStats>,
}

/// The actor owning one stage's thread.
pub struct StageActor;

impl Actor for StageActor {
    type Msg = StageMsg;
    type State = StageActorState;
    type Arguments = StageArgs;

    async fn pre_start(&self, myself: ActorRef<StageMsg>, args: StageArgs) -> Result<StageActorState, ActorProcessingErr> {
        let StageArgs { stage, restart, mut ctx } = args;
        ctx.keep_in_flight = restart.is_some();
        let stats = ctx.stats.clone();
        let thread_name = format!("stage-{}", ctx.id);
        std::thread::Builder::new().name(thread_name).spawn(move || {
            ctx.stats.set_state(StageState::Running);
            let mut stage = stage;
            let mut restarts_left = restart.as_ref().map_or(0, |r| r.max);
            let outcome = loop {
                let pool = ctx.pool.clone();
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    crate::models::threads::in_pool(pool.as_ref(), || stage.run(&mut ctx))
                }));
                let cause = match &outcome {
                    Ok(Err(e @ (StageError::Failed(_) | StageError::Panicked(_)))) => e.to_string(),
                    Err(panic) => format!("panicked: {}", panic_message(panic)),
                    _ => break outcome,
                };
                match &restart {
                    Some(r) if restarts_left > 0 && !ctx.control.aborted() => {
                        restarts_left -= 1;
                        tracing::warn!(stage = %ctx.qualified, restarts_left, "stage failed ({cause}); restarting it and redoing its batch in flight");
                        ctx.count_error();
                        ctx.replay = ctx.in_flight.take();
                        match (r.rebuild)() {
                            Ok(rebuilt) => stage = rebuilt,
                            Err(e) => break Ok(Err(StageError::Failed(format!("restart failed: {e}")))),
                        }
                    }
                    _ => break outcome,
                }
            };
            let result = match outcome {
                Ok(Ok(summary)) => {
                    if let Some(summary) = summary {
                        ctx.control.publish(&ctx.id, summary);
                    }
                    ctx.stats.set_state(StageState::Finished);
                    Ok(())
                }
                // A closed output is only expected while the run is torn down; otherwise a
                // consumer quit early and data would be lost silently: that is a failure.
                Ok(Err(StageError::Cancelled(e))) if !ctx.control.aborted() => {
                    ctx.stats.set_state(StageState::Failed);
                    Err(StageError::Failed(format!("{e} before its input ended")))
                }
                Ok(Err(e)) => {
                    ctx.stats.set_state(StageState::Failed);
                    Err(e)
                }
                Err(panic) => {
                    ctx.stats.set_state(StageState::Failed);
                    Err(StageError::Panicked(panic_message(&panic)))
                }
            };
            if let Err(StageError::Failed(_) | StageError::Panicked(_)) = &result {
                // Flag the failure before our channels close, so nothing downstream mistakes
                // the closing for a clean end of input and writes results as complete.
                ctx.control.abort();
                ctx.count_error();
            }
            drop(ctx);
            // If the actor is already gone the run is over; nobody is left to tell.
            let _ = myself.cast(StageMsg::Finished(result));
        })?;
        Ok(StageActorState { stats })
    }

    async fn handle(&self, myself: ActorRef<StageMsg>, msg: StageMsg, state: &mut StageActorState) -> Result<(), ActorProcessingErr> {
        match msg {
            StageMsg::Finished(Ok(())) => myself.stop(Some("finished".into())),
            StageMsg::Finished(Err(StageError::Cancelled(e))) => myself.stop(Some(format!("cancelled: {e}"))),
            StageMsg::Finished(Err(e)) => return Err(Box::new(e)),
            StageMsg::Status(reply) => {
                let _ = reply.send(state.stats.status());
            }
        }
        Ok(())
    }
}
