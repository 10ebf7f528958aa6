//! `rca` sink: folds the oracle's predictions into one confusion matrix per origin (exactly once
//! per unit, through [`crate::runtime::sink`]), keeps live accuracy and RCA gauges up to date,
//! and at the end summarises both origins and their ratio (maths in [`crate::metrics::rca`],
//! conventions in DESIGN.md §1). With a `baseline` file the real side comes from a previous
//! `rcaflow baseline` run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{BuildContext, ComponentConfig};
use crate::metrics::rca::{relative_accuracy, summarize, ClassificationSummary, Confusion};
use crate::report::baseline::Baseline;
use crate::report::results::RcaResult;
use crate::report::Summary;
use crate::runtime::accumulator::{Accumulator, ExactlyOnce};
use crate::runtime::batch::PredictionBatch;
use crate::runtime::merge::{MergeError, MergeState, ShardFold};
use crate::runtime::sink::{SinkMaths, SinkStage};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::telemetry;
use crate::topology::config::resolve;
use crate::topology::{class_difference, Checks, DataKind, GraphFacts, HashedInput, NamedClasses, Section};
use crate::units::{Origin, UnitPlan, UnitSpan};

/// `rca` sink: confusion matrices per origin, accuracies and Relative Classification Accuracy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcaConfig {
    /// A baseline written by `rcaflow baseline`, used instead of real images.
    pub baseline: Option<PathBuf>,
}

impl ComponentConfig for RcaConfig {
    const SECTION: Section = Section::Sinks;
    const ACCEPTS: Option<DataKind> = Some(DataKind::Predictions);
    const PRODUCES: Option<DataKind> = Some(DataKind::Summaries);
    const RESTARTABLE: bool = false;
    const ACCUMULATES: bool = true;
    const HOLDS_UNITS: bool = true;

    fn source_origin(&self) -> Option<Origin> {
        None
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.baseline.iter_mut().for_each(|p| *p = resolve(base, p));
    }

    fn check(&self, checks: &mut Checks) {
        if let Some(path) = self.baseline.as_ref().filter(|p| !p.is_file()) {
            checks.error(format!("baseline file \"{}\" does not exist", path.display()));
        }
    }

    fn class_names(&self, _checks: &mut Checks) -> Option<NamedClasses> {
        None
    }

    /// Real accuracy needs real images upstream or a baseline standing for them (not both);
    /// a baseline's classes must be the topology's.
    fn check_in_graph(&self, facts: &GraphFacts, checks: &mut Checks) {
        if let Some(classes) = facts.classes {
            if let Some(path) = self.baseline.as_ref().filter(|p| p.is_file()) {
                match Baseline::read(path) {
                    Err(e) => checks.error(e),
                    Ok(b) => {
                        if let Some(diff) = class_difference(classes, &b.classes) {
                            checks.error(format!("baseline \"{}\" classes disagree with the topology's: {diff}", path.display()));
                        }
                    }
                }
            }
        }
        match (facts.real_images_upstream, self.baseline.is_some()) {
            (Some(false), false) => checks.error(
                "no real images reach it and no `baseline` is set; expected an image_folder source with origin = \"real\" upstream, or baseline = FILE",
            ),
            (Some(true), true) => checks.error("both real images upstream and a `baseline` file; expected one of the two"),
            _ => {}
        }
    }

    fn describe(&self) -> String {
        match &self.baseline {
            Some(b) => format!("baseline={}", b.display()),
            None => "real accuracy from real images".to_string(),
        }
    }

    fn plan(&self, _classes: &[String]) -> Result<Option<UnitPlan>, String> {
        Ok(None)
    }

    fn hashed_inputs(&self, _classes: &[String]) -> Result<Vec<HashedInput>, String> {
        Ok(self.baseline.iter().map(|p| HashedInput::File { what: "baseline".into(), path: p.clone() }).collect())
    }

    /// Merge: the confusion counts of every shard.
    fn fold_shards(&self, id: &str, fold: &ShardFold) -> Result<usize, MergeError> {
        fold.fold::<RcaState>(id)
    }

    /// Reads the baseline, if any: with one, the real side is fixed from the start.
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn Stage>, String> {
        let n = cx.classes.len();
        let baseline = match &self.baseline {
            Some(path) => {
                let b = Baseline::read(path).map_err(|e| e.to_string())?;
                let confusion =
                    b.confusion().ok_or_else(|| format!("baseline \"{}\": confusion matrix does not match {n} classes", path.display()))?;
                Some((path.clone(), summarize(&confusion)))
            }
            None => None,
        };
        Ok(Box::new(SinkStage(RcaMaths { classes: n, baseline, last: RcaState::new(n) })))
    }
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

/// Confusion counts add.
impl MergeState for RcaState {
    fn merge(&mut self, other: RcaState) -> Result<(), String> {
        self.real.merge(&other.real).map_err(|e| e.to_string())?;
        self.generated.merge(&other.generated).map_err(|e| e.to_string())
    }
}

/// The rca sink's maths: the baseline's real side, and the state last published (the
/// predictions counter moves by what the confusion matrices gained).
pub struct RcaMaths {
    classes: usize,
    baseline: Option<(PathBuf, ClassificationSummary)>,
    last: RcaState,
}

impl SinkMaths for RcaMaths {
    type Acc = RcaState;
    type Input = PredictionBatch;

    fn fresh(&mut self, _ctx: &StageContext) -> Result<RcaState, StageError> {
        Ok(RcaState::new(self.classes))
    }

    fn start(&mut self, acc: &mut ExactlyOnce<RcaState>, _ctx: &StageContext) -> Result<(), StageError> {
        self.last = acc.inner().clone();
        Ok(())
    }

    fn check_batch(&self, _acc: &ExactlyOnce<RcaState>, _batch: &PredictionBatch) -> Result<(), StageError> {
        Ok(())
    }

    fn after_batch(&mut self, acc: &mut ExactlyOnce<RcaState>, ctx: &StageContext) -> Result<(), StageError> {
        count_predictions(&self.last, acc.inner(), &ctx.classes);
        self.last = acc.inner().clone();
        publish_live(&result_of(acc, &self.baseline), &ctx.classes);
        Ok(())
    }

    fn drain(&mut self, _acc: &mut ExactlyOnce<RcaState>, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }

    fn finish(&mut self, acc: &ExactlyOnce<RcaState>, _ctx: &StageContext) -> Result<Summary, StageError> {
        Ok(Summary::Rca(Box::new(result_of(acc, &self.baseline))))
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
