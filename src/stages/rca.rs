//! `rca` sink: folds the oracle's predictions into one confusion matrix per origin (exactly once
//! per unit), keeps live accuracy and RCA gauges up to date, and at the end summarises both
//! origins and their ratio (maths in [`crate::metrics::rca`], conventions in DESIGN.md §1).
//! With a `baseline` file the real side comes from a previous `rcaflow baseline` run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::metrics::rca::{relative_accuracy, summarize, ClassificationSummary, Confusion, RcaSummary};
use crate::runtime::accumulator::{Accumulator, ExactlyOnce};
use crate::runtime::batch::{Origin, Payload, PredictionBatch, Summary, UnitSpan};
use crate::runtime::checkpoint::CheckpointTimer;
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::telemetry;
use crate::topology::config::RcaConfig;

/// Schema tag of baseline files.
pub const BASELINE_SCHEMA: &str = "rcaflow-baseline/1";

/// The oracle's accuracy on real held-out images, as `rcaflow baseline` writes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Baseline {
    pub schema: String,
    pub classes: Vec<String>,
    /// How the oracle was configured (free-form, for the reader).
    pub oracle: serde_json::Value,
    /// Where the real images came from.
    pub source: PathBuf,
    pub real: ClassificationSummary,
}

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("baseline \"{path}\": cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("baseline \"{path}\": not a baseline file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("baseline \"{path}\": schema \"{found}\", expected \"{BASELINE_SCHEMA}\"")]
    Schema { path: PathBuf, found: String },
    #[error("baseline \"{path}\": confusion matrix is not {n}x{n} for {n} classes")]
    Shape { path: PathBuf, n: usize },
}

impl Baseline {
    pub fn read(path: &Path) -> Result<Baseline, BaselineError> {
        let text = std::fs::read_to_string(path).map_err(|source| BaselineError::Read { path: path.into(), source })?;
        let b: Baseline = serde_json::from_str(&text).map_err(|e| BaselineError::Parse { path: path.into(), message: e.to_string() })?;
        if b.schema != BASELINE_SCHEMA {
            return Err(BaselineError::Schema { path: path.into(), found: b.schema });
        }
        b.confusion().map(|_| b.clone()).ok_or(BaselineError::Shape { path: path.into(), n: b.classes.len() })
    }

    /// The real confusion matrix, if its shape matches the class list.
    pub fn confusion(&self) -> Option<Confusion> {
        let n = self.classes.len();
        let rows = &self.real.confusion;
        if rows.len() != n || rows.iter().any(|r| r.len() != n) {
            return None;
        }
        Confusion::from_counts(n, rows.concat()).ok()
    }
}

/// What the rca sink hands to the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RcaResult {
    pub real: ClassificationSummary,
    pub generated: ClassificationSummary,
    pub rca: RcaSummary,
    /// "images" or the baseline file the real side came from.
    pub real_source: String,
    pub units_applied: usize,
    pub duplicate_units_ignored: u64,
}

/// Confusion matrices of both origins: the state the rca sink accumulates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RcaState {
    pub real: Confusion,
    pub generated: Confusion,
}

impl RcaState {
    pub fn new(num_classes: usize) -> Self {
        RcaState { real: Confusion::new(num_classes), generated: Confusion::new(num_classes) }
    }
}

impl Accumulator for RcaState {
    type Input = PredictionBatch;
    type State = RcaState;

    fn apply_unit(&mut self, input: &PredictionBatch, span: &UnitSpan) {
        let confusion = match span.id.origin {
            Origin::Real => &mut self.real,
            Origin::Generated => &mut self.generated,
        };
        for i in span.start..span.start + span.len {
            // Labels and predictions are < num_classes by construction (sources label by class
            // index, the oracle's head has num_classes outputs): an error here is a bug.
            confusion.add(input.labels[i] as usize, input.predicted[i] as usize).expect("labels and predictions are class indices");
        }
    }

    fn snapshot(&self) -> RcaState {
        self.clone()
    }

    fn restore(state: RcaState) -> Self {
        state
    }
}

pub struct RcaStage {
    cfg: RcaConfig,
}

impl RcaStage {
    pub fn new(cfg: RcaConfig) -> Self {
        RcaStage { cfg }
    }
}

impl Stage for RcaStage {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let n = ctx.classes.len();
        let mut acc = match ctx.restore::<RcaState>()? {
            Some(snapshot) => ExactlyOnce::restore(snapshot),
            None => ExactlyOnce::new(RcaState::new(n)),
        };
        let mut timer = CheckpointTimer::new(ctx.checkpoint_interval);
        // With a baseline, the real side is fixed from the start.
        let baseline = match &self.cfg.baseline {
            Some(path) => {
                let b = Baseline::read(path).map_err(StageError::failed)?;
                let confusion = b.confusion().ok_or_else(|| {
                    StageError::Failed(format!("baseline \"{}\": confusion matrix does not match {n} classes", path.display()))
                })?;
                Some((path.clone(), summarize(&confusion)))
            }
            None => None,
        };
        while let Some(payload) = ctx.recv() {
            let Payload::Predictions(batch) = payload else {
                return Err(StageError::Failed(
                    "received a non-prediction payload; the topology check should have refused this edge".into(),
                ));
            };
            let before = acc.inner().clone();
            ctx.timed(|| acc.apply(&batch, &batch.units));
            ctx.fault("applied")?;
            count_predictions(&before, acc.inner(), &ctx.classes);
            publish_live(&result_of(&acc, &baseline), &ctx.classes);
            if timer.due() {
                ctx.checkpoint(&acc.snapshot())?;
            }
        }
        // The final state is checkpointed even after a failure elsewhere: what was applied stays applied.
        ctx.checkpoint(&acc.snapshot())?;
        if ctx.control.aborted() {
            return Ok(None);
        }
        let summary = Summary::Rca(Box::new(result_of(&acc, &baseline)));
        ctx.send(Payload::Summary(Arc::new(summary.clone())))?;
        Ok(Some(summary))
    }
}

fn result_of(acc: &ExactlyOnce<RcaState>, baseline: &Option<(PathBuf, ClassificationSummary)>) -> RcaResult {
    let state = acc.inner();
    let (real, real_source) = match baseline {
        Some((path, summary)) => (summary.clone(), format!("baseline {}", path.display())),
        None => (summarize(&state.real), "images".to_string()),
    };
    let generated = summarize(&state.generated);
    let rca = relative_accuracy(&real, &generated);
    RcaResult { real, generated, rca, real_source, units_applied: acc.units_applied(), duplicate_units_ignored: acc.duplicates_ignored() }
}

/// Live gauges: accuracy per origin, global and class RCA (NaN while undefined, so a panel
/// shows a gap rather than a misleading 0).
fn publish_live(r: &RcaResult, classes: &Arc<Vec<String>>) {
    for (origin, s) in [(Origin::Real, &r.real), (Origin::Generated, &r.generated)] {
        metrics::gauge!(telemetry::ACCURACY, "origin" => origin.as_str()).set(s.accuracy.unwrap_or(f64::NAN));
    }
    metrics::gauge!(telemetry::RCA).set(r.rca.global.unwrap_or(f64::NAN));
    for (class, value) in classes.iter().zip(&r.rca.per_class) {
        metrics::gauge!(telemetry::CLASS_RCA, "class" => class.clone()).set(value.unwrap_or(f64::NAN));
    }
}

/// Adds what the confusion matrices gained over `before` to the predictions counter, cell by
/// cell. Diffing the state (rather than counting the batch) makes the counter move exactly as
/// the results do: a unit delivered twice adds nothing. Only cells that occur get a series.
fn count_predictions(before: &RcaState, after: &RcaState, classes: &[String]) {
    for (origin, was, now) in [(Origin::Real, &before.real, &after.real), (Origin::Generated, &before.generated, &after.generated)] {
        let n = now.num_classes();
        for (cell, (&x, &y)) in was.counts().iter().zip(now.counts()).enumerate() {
            if y > x {
                let (class, predicted) = (classes[cell / n].clone(), classes[cell % n].clone());
                metrics::counter!(telemetry::PREDICTIONS, "origin" => origin.as_str(), "class" => class, "predicted" => predicted)
                    .increment(y - x);
            }
        }
    }
}
