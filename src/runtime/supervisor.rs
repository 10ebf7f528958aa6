//! The run supervisor: a ractor actor that spawns one linked [`StageActor`] per stage and
//! handles their supervision events itself (ractor's default would stop the supervisor when a
//! child exits). A child that fails aborts the run; when every child has ended the supervisor
//! reports how the run ended and stops.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::oneshot;

use super::control::{RunControl, StageStatus};
use super::stage::{StageActor, StageArgs, StageMsg};

/// A stage that failed, and why.
#[derive(Clone, Debug)]
pub struct StageFailure {
    /// `section.id` of the stage.
    pub stage: String,
    pub cause: String,
}

/// How the stages ended, in the order failures happened.
#[derive(Debug, Default)]
pub struct SupervisorReport {
    pub failures: Vec<StageFailure>,
}

pub enum SupervisorMsg {
    /// Status of every stage still running, asked of the stage actors themselves, with the
    /// stage's `section.id` name.
    Status(RpcReplyPort<Vec<(String, StageStatus)>>),
}

pub struct SupervisorArgs {
    pub stages: Vec<StageArgs>,
    pub control: Arc<RunControl>,
    pub done: oneshot::Sender<SupervisorReport>,
}

pub struct SupervisorState {
    control: Arc<RunControl>,
    names: HashMap<ActorId, String>,
    children: BTreeMap<String, ActorRef<StageMsg>>,
    running: BTreeSet<String>,
    report: SupervisorReport,
    done: Option<oneshot::Sender<SupervisorReport>>,
}

pub struct RunSupervisor;

impl Actor for RunSupervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(&self, myself: ActorRef<SupervisorMsg>, args: SupervisorArgs) -> Result<SupervisorState, ActorProcessingErr> {
        let mut state = SupervisorState {
            control: args.control,
            names: HashMap::new(),
            children: BTreeMap::new(),
            running: BTreeSet::new(),
            report: SupervisorReport::default(),
            done: Some(args.done),
        };
        for stage in args.stages {
            let name = stage.ctx.qualified.clone();
            // Unnamed actors: several runs may live in one process (tests), and ractor's
            // registry wants names to be unique.
            let (child, _) = Actor::spawn_linked(None, StageActor, stage, myself.get_cell())
                .await
                .map_err(|e| format!("cannot start stage {name}: {e}"))?;
            state.names.insert(child.get_id(), name.clone());
            state.running.insert(name.clone());
            state.children.insert(name, child);
        }
        if state.running.is_empty() {
            finish(&myself, &mut state);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Status(reply) => {
                let mut statuses = Vec::new();
                for name in &state.running {
                    if let Some(child) = state.children.get(name) {
                        if let Ok(status) = ractor::call_t!(child, StageMsg::Status, 1000) {
                            statuses.push((name.clone(), status));
                        }
                    }
                }
                let _ = reply.send(statuses);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        state: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(name) = state.names.get(&cell.get_id()).cloned() {
                    tracing::debug!(stage = %name, reason = reason.as_deref().unwrap_or(""), "stage ended");
                    state.running.remove(&name);
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(name) = state.names.get(&cell.get_id()).cloned() {
                    tracing::error!(stage = %name, "stage failed: {error}");
                    state.control.abort();
                    state.report.failures.push(StageFailure { stage: name.clone(), cause: error.to_string() });
                    state.running.remove(&name);
                }
            }
            _ => {}
        }
        if state.running.is_empty() {
            finish(&myself, state);
        }
        Ok(())
    }
}

fn finish(myself: &ActorRef<SupervisorMsg>, state: &mut SupervisorState) {
    if let Some(done) = state.done.take() {
        let _ = done.send(std::mem::take(&mut state.report));
    }
    myself.stop(Some("all stages ended".into()));
}
