//! `rca` sink: folds the oracle's predictions into one confusion matrix per origin (exactly once
//! per unit, through [`crate::runtime::sink`]), keeps live accuracy and RCA gauges up to date,
//! and at the end summarises both origins and their ratio (maths in [`crate::metrics::rca`],
//! conventions in DESIGN.md §1). With a `baseline` file the real side comes from a previous
//! `rcaflow baseline` run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{BuildContext, ComponentConfig};
use crate::metrics::rca::{relative_accuracy, summarize, wilson_interval, ClassificationSummary, Confusion, Interval, Z95};
use crate::report::baseline::Baseline;
use crate::report::results::{EarlyStopClass, EarlyStopResult, RcaResult};
use crate::report::Summary;
use crate::runtime::accumulator::{Accumulator, ExactlyOnce};
use crate::runtime::batch::PredictionBatch;
use crate::runtime::early_stop::{interleaved, EarlyStopGate};
use crate::runtime::merge::{MergeError, MergeState, ShardFold};
use crate::runtime::sink::{SinkMaths, SinkStage};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::telemetry;
use crate::topology::config::resolve;
use crate::topology::{class_difference, Checks, DataKind, GraphFacts, HashedInput, NamedClasses, Section};
use crate::units::{Origin, UnitId, UnitPlan, UnitSpan};

/// `rca` sink: confusion matrices per origin, accuracies and Relative Classification Accuracy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcaConfig {
    /// A baseline written by `rcaflow baseline`, used instead of real images.
    pub baseline: Option<PathBuf>,
    /// Stop sampling once every class's generated recall is this tight
    /// ([`crate::runtime::early_stop`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_when: Option<StopWhen>,
}

/// `stop_when = { ci_half_width, min_per_class }`: the early-stop rule on generated recall.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopWhen {
    /// Every class's generated-recall Wilson 95% interval at most this half-width...
    pub ci_half_width: f64,
    /// ...with at least this many generated images.
    pub min_per_class: u64,
}

impl StopWhen {
    /// Per class: (images, correct, Wilson 95% interval of the recall, its half-width).
    pub fn classes(confusion: &Confusion) -> Vec<(u64, u64, Interval, f64)> {
        (0..confusion.num_classes())
            .map(|c| {
                let images = (0..confusion.num_classes()).fold(0u64, |a, p| a.saturating_add(confusion.get(c, p)));
                let correct = confusion.get(c, c);
                let ci = wilson_interval(correct, images, Z95).unwrap_or(Interval { low: 0.0, high: 1.0 });
                (images, correct, ci, (ci.high - ci.low) / 2.0)
            })
            .collect()
    }

    /// Whether the rule holds on the generated confusion matrix.
    pub fn holds(&self, generated: &Confusion) -> bool {
        Self::classes(generated).iter().all(|&(images, _, _, half)| images >= self.min_per_class && half <= self.ci_half_width)
    }
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
        if let Some(rule) = &self.stop_when {
            // A Wilson 95% half-width is in (0, 0.5]: 0 is never reached, 0.5 always is.
            if !(rule.ci_half_width > 0.0 && rule.ci_half_width < 0.5) {
                checks.error(format!("stop_when.ci_half_width must be a number in (0, 0.5), found {}", rule.ci_half_width));
            }
            if rule.min_per_class == 0 {
                checks.error("stop_when.min_per_class must be at least 1 image, found 0");
            }
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
        if self.stop_when.is_some() {
            // It stops the sampling: a folder of generated images is read whole.
            match (facts.generated_images_upstream, facts.generated_source) {
                (Some(false), _) | (_, None) => checks.error("stop_when needs generated images; expected a ddpm_sampler source upstream"),
                (_, Some(kind)) if kind != "ddpm_sampler" => checks.error(format!(
                    "stop_when stops sampling; expected the generated images to come from a ddpm_sampler source, found {kind}"
                )),
                _ => {}
            }
        }
    }

    fn describe(&self) -> String {
        let real = match &self.baseline {
            Some(b) => format!("baseline={}", b.display()),
            None => "real accuracy from real images".to_string(),
        };
        match &self.stop_when {
            Some(r) => format!("{real} stop_when={{ci_half_width={}, min_per_class={}}}", r.ci_half_width, r.min_per_class),
            None => real,
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
        let planned = cx.plan_of(Origin::Generated).map(|p| p.per_class.clone()).unwrap_or_default();
        Ok(Box::new(SinkStage(RcaMaths { classes: n, baseline, last: RcaState::new(n), stop_when: self.stop_when, planned })))
    }
}

/// The `rca` sink with `stop_when` that decides a graph's early stop (the first such sink).
pub fn early_stop_decider(graph: &super::Graph) -> Option<&crate::topology::Component<super::ComponentKind>> {
    graph.components.iter().find(|c| matches!(&c.kind, super::ComponentKind::Rca(r) if r.stop_when.is_some()))
}

/// The early-stop gate of a graph whose `rca` sink has `stop_when` (the first such sink decides),
/// over the generated source's units with classes interleaved; `None` otherwise.
pub fn early_stop_gate(graph: &super::Graph, cx: &BuildContext) -> Option<Arc<EarlyStopGate>> {
    let decider = early_stop_decider(graph)?;
    let plan = cx.plan_of(Origin::Generated)?;
    Some(Arc::new(EarlyStopGate::new(&decider.id, interleaved(plan))))
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
    stop_when: Option<StopWhen>,
    /// Generated images planned per class (for the early-stop record).
    planned: Vec<u64>,
}

impl SinkMaths for RcaMaths {
    type Acc = RcaState;
    type Input = PredictionBatch;

    fn fresh(&mut self, _ctx: &StageContext) -> Result<RcaState, StageError> {
        Ok(RcaState::new(self.classes))
    }

    fn start(&mut self, acc: &mut ExactlyOnce<RcaState>, ctx: &StageContext) -> Result<(), StageError> {
        self.last = acc.inner().clone();
        if let Some(rule) = self.deciding(ctx) {
            metrics::gauge!(telemetry::EARLY_STOP_TARGET).set(rule.ci_half_width);
            publish_early_stop(&acc.inner().generated, ctx);
        }
        Ok(())
    }

    fn check_batch(&self, _acc: &ExactlyOnce<RcaState>, _batch: &PredictionBatch) -> Result<(), StageError> {
        Ok(())
    }

    fn after_batch(&mut self, acc: &mut ExactlyOnce<RcaState>, ctx: &StageContext) -> Result<(), StageError> {
        count_predictions(&self.last, acc.inner(), &ctx.classes);
        self.last = acc.inner().clone();
        publish_live(&result_of(acc, &self.baseline), &ctx.classes);
        if self.deciding(ctx).is_some() {
            publish_early_stop(&acc.inner().generated, ctx);
        }
        Ok(())
    }

    fn drain(&mut self, _acc: &mut ExactlyOnce<RcaState>, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }

    fn finish(&mut self, acc: &ExactlyOnce<RcaState>, ctx: &StageContext) -> Result<Summary, StageError> {
        let mut result = result_of(acc, &self.baseline);
        let gate = ctx.control.early_stop().filter(|g| g.decider() == ctx.id);
        if let (Some(rule), Some(gate)) = (self.stop_when, gate) {
            publish_early_stop(&acc.inner().generated, ctx);
            if let Some(last) = gate.stopped_at() {
                result.early_stop = Some(early_stop_record(rule, &acc.inner().generated, &self.planned, gate, last));
            }
        }
        Ok(Summary::Rca(Box::new(result)))
    }

    fn stop_rule_holds(&self, acc: &ExactlyOnce<RcaState>) -> bool {
        self.stop_when.is_some_and(|rule| rule.holds(&acc.inner().generated))
    }
}

impl RcaMaths {
    /// The rule, when this sink decides the run's early stop.
    fn deciding(&self, ctx: &StageContext) -> Option<StopWhen> {
        self.stop_when.filter(|_| ctx.control.early_stop().is_some_and(|g| g.decider() == ctx.id))
    }
}

/// The early-stop gauges: each class's half-width now, and whether the stop has fired.
fn publish_early_stop(generated: &Confusion, ctx: &StageContext) {
    for (class, (_, _, _, half_width)) in ctx.classes.iter().zip(StopWhen::classes(generated)) {
        metrics::gauge!(telemetry::EARLY_STOP_CLASS_HALF_WIDTH, "class" => class.clone()).set(half_width);
    }
    let fired = ctx.control.early_stop().is_some_and(|g| g.stopped_at().is_some());
    metrics::gauge!(telemetry::EARLY_STOP_FIRED).set(if fired { 1.0 } else { 0.0 });
}

/// What the report says about a stop that fired after unit `last`.
fn early_stop_record(rule: StopWhen, generated: &Confusion, planned: &[u64], gate: &EarlyStopGate, last: UnitId) -> EarlyStopResult {
    let per_class: Vec<EarlyStopClass> = StopWhen::classes(generated)
        .into_iter()
        .enumerate()
        .map(|(c, (images, correct, ci95, half_width))| EarlyStopClass {
            images,
            planned: planned.get(c).copied().unwrap_or(0),
            recall: if images == 0 { 0.0 } else { correct as f64 / images as f64 },
            ci95,
            half_width,
        })
        .collect();
    EarlyStopResult {
        ci_half_width: rule.ci_half_width,
        min_per_class: rule.min_per_class,
        last_unit: last.to_string(),
        units_used: gate.rank(&last).map_or(0, |r| r + 1),
        images_used: per_class.iter().map(|c| c.images).sum(),
        images_planned: planned.iter().sum(),
        per_class,
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
    RcaResult {
        real,
        generated,
        rca,
        real_source,
        units_applied: acc.units_applied(),
        duplicate_units_ignored: acc.duplicates_ignored(),
        early_stop: None,
    }
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
        // The series exists (at 0) from the first prediction, so a pooled accuracy reads 0, not no data.
        if now.counts().iter().any(|&c| c > 0) {
            metrics::counter!(telemetry::CORRECT_PREDICTIONS, "origin" => origin.as_str()).increment(0);
        }
        for (cell, (&x, &y)) in was.counts().iter().zip(now.counts()).enumerate() {
            if y > x {
                let (class, predicted) = (classes[cell / n].clone(), classes[cell % n].clone());
                metrics::counter!(telemetry::PREDICTIONS, "origin" => origin.as_str(), "class" => class, "predicted" => predicted)
                    .increment(y - x);
                if cell / n == cell % n {
                    metrics::counter!(telemetry::CORRECT_PREDICTIONS, "origin" => origin.as_str()).increment(y - x);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A confusion matrix whose class `c` has `images[c]` images, `correct[c]` recognised (the
    /// rest predicted as the next class).
    fn confusion(images: &[u64], correct: &[u64]) -> Confusion {
        let n = images.len();
        let mut m = Confusion::new(n);
        for c in 0..n {
            for i in 0..images[c] {
                m.add(c, if i < correct[c] { c } else { (c + 1) % n }).unwrap();
            }
        }
        m
    }

    #[test]
    fn the_stop_rule_needs_every_class_tight_and_large_enough() {
        let rule = StopWhen { ci_half_width: 0.02, min_per_class: 500 };
        // 490/500 recognised: Wilson half-width 0.0128.
        assert!(rule.holds(&confusion(&[500, 500], &[490, 490])));
        // One class short of the minimum, however tight.
        assert!(!rule.holds(&confusion(&[500, 499], &[490, 499])));
        // One class at recall 0.5: half-width 0.0436 at 500 images.
        assert!(!rule.holds(&confusion(&[500, 500], &[490, 250])));
        let classes = StopWhen::classes(&confusion(&[500, 500], &[490, 250]));
        let (images, correct, ci, half) = classes[1];
        assert_eq!((images, correct), (500, 250));
        assert_eq!(Some(ci), wilson_interval(250, 500, Z95));
        assert!((half - 0.0436).abs() < 1e-4, "{half}");
        // A class with no image yet has the whole [0, 1] as its interval.
        assert_eq!(StopWhen::classes(&confusion(&[0, 3], &[0, 3]))[0].3, 0.5);
    }
}
