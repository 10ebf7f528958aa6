//! `inception_score` sink: Inception Score of the generated images ([`crate::metrics::inception_score`]),
//! exactly once per unit (through [`crate::runtime::sink`]). An image's split is its
//! class-major position (class offset from the generated source's unit plan, plus its index in
//! its class) modulo the number of splits, so the score does not depend on arrival order. Real
//! images are ignored (but held, so a resumed run need not send them again).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{BuildContext, ComponentConfig};
use crate::metrics::inception_score::{InceptionScore, InceptionScoreState};
use crate::report::Summary;
use crate::runtime::accumulator::{Accumulator, ExactlyOnce};
use crate::runtime::batch::FeatureBatch;
use crate::runtime::merge::{MergeError, MergeState, ShardFold};
use crate::runtime::sink::{NonfiniteCounter, SinkMaths, SinkStage};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::telemetry;
use crate::topology::{Checks, DataKind, GraphFacts, HashedInput, NamedClasses, Section};
use crate::units::{Origin, UnitPlan, UnitSpan};

fn default_splits() -> usize {
    10
}

/// `inception_score` sink: Inception Score of the generated images.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InceptionScoreConfig {
    #[serde(default = "default_splits")]
    pub splits: usize,
}

impl ComponentConfig for InceptionScoreConfig {
    const SECTION: Section = Section::Sinks;
    const ACCEPTS: Option<DataKind> = Some(DataKind::Features);
    const PRODUCES: Option<DataKind> = Some(DataKind::Summaries);
    const RESTARTABLE: bool = false;
    const ACCUMULATES: bool = true;
    const HOLDS_UNITS: bool = true;

    fn source_origin(&self) -> Option<Origin> {
        None
    }

    fn resolve_paths(&mut self, _base: &Path) {}

    fn check(&self, checks: &mut Checks) {
        if self.splits == 0 {
            checks.error("splits must be at least 1, found 0");
        }
    }

    fn class_names(&self, _checks: &mut Checks) -> Option<NamedClasses> {
        None
    }

    fn check_in_graph(&self, _facts: &GraphFacts, _checks: &mut Checks) {}

    fn describe(&self) -> String {
        format!("splits={}", self.splits)
    }

    fn plan(&self, _classes: &[String]) -> Result<Option<UnitPlan>, String> {
        Ok(None)
    }

    fn hashed_inputs(&self, _classes: &[String]) -> Result<Vec<HashedInput>, String> {
        Ok(Vec::new())
    }

    /// Merge: the split sums of every shard.
    fn fold_shards(&self, id: &str, fold: &ShardFold) -> Result<usize, MergeError> {
        fold.fold::<IsAccumulator>(id)
    }

    /// Class offsets come from the generated source's plan (none: no generated images).
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn Stage>, String> {
        let class_offsets = cx.plan_of(Origin::Generated).map(|p| p.class_offsets()).unwrap_or_default();
        Ok(Box::new(SinkStage(IsMaths { splits: self.splits, class_offsets, nonfinite: NonfiniteCounter::default() })))
    }
}

/// IS state plus the class offsets that turn in-class positions into class-major ones.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IsAccumulator {
    pub state: InceptionScoreState,
    pub class_offsets: Vec<u64>,
    pub nonfinite: u64,
}

impl Accumulator for IsAccumulator {
    type Input = FeatureBatch;
    type State = IsAccumulator;

    fn apply_unit(&mut self, input: &FeatureBatch, span: &UnitSpan) {
        if span.id.origin != Origin::Generated {
            return;
        }
        let k = input.logit_dim;
        let offset = self.class_offsets.get(span.id.class as usize).copied().unwrap_or(0);
        for i in span.start..span.start + span.len {
            let row = &input.logits[i * k..(i + 1) * k];
            if row.iter().all(|v| v.is_finite()) {
                let position = offset + span.position_of(i);
                self.state.add(row, 1, &[position]).expect("a finite row of the state's width");
            } else {
                self.nonfinite += 1;
            }
        }
    }

    fn snapshot(&self) -> Self {
        self.clone()
    }

    fn restore(state: Self) -> Self {
        state
    }
}

/// Split sums add (an image's split is its position's, the same in every shard).
impl MergeState for IsAccumulator {
    fn merge(&mut self, other: IsAccumulator) -> Result<(), String> {
        if other.class_offsets != self.class_offsets {
            return Err(format!("class offsets {:?} here, {:?} there", self.class_offsets, other.class_offsets));
        }
        self.state.merge(&other.state).map_err(|e| e.to_string())?;
        self.nonfinite += other.nonfinite;
        Ok(())
    }
}

/// The inception_score sink's maths: how a fresh state is laid out, and the live gauge.
pub struct IsMaths {
    splits: usize,
    class_offsets: Vec<u64>,
    nonfinite: NonfiniteCounter,
}

impl SinkMaths for IsMaths {
    type Acc = IsAccumulator;
    type Input = FeatureBatch;

    fn fresh(&mut self, _ctx: &StageContext) -> Result<IsAccumulator, StageError> {
        let k = crate::models::inception::InceptionV3::LOGITS;
        Ok(IsAccumulator { state: InceptionScoreState::new(self.splits, k), class_offsets: self.class_offsets.clone(), nonfinite: 0 })
    }

    fn start(&mut self, acc: &mut ExactlyOnce<IsAccumulator>, ctx: &StageContext) -> Result<(), StageError> {
        self.nonfinite.start(ctx, acc.inner().nonfinite);
        Ok(())
    }

    fn check_batch(&self, acc: &ExactlyOnce<IsAccumulator>, batch: &FeatureBatch) -> Result<(), StageError> {
        let k = acc.inner().state.classes;
        if batch.units.iter().any(|u| u.id.origin == Origin::Generated) && batch.logit_dim != k {
            return Err(StageError::Failed(format!("logits are {}-wide, expected {k}", batch.logit_dim)));
        }
        Ok(())
    }

    fn after_batch(&mut self, acc: &mut ExactlyOnce<IsAccumulator>, ctx: &StageContext) -> Result<(), StageError> {
        self.nonfinite.advance(ctx, acc.inner().nonfinite);
        if let Ok(score) = acc.inner().state.finish() {
            metrics::gauge!(telemetry::INCEPTION_SCORE).set(score.mean);
        }
        Ok(())
    }

    fn drain(&mut self, _acc: &mut ExactlyOnce<IsAccumulator>, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }

    fn finish(&mut self, acc: &ExactlyOnce<IsAccumulator>, _ctx: &StageContext) -> Result<Summary, StageError> {
        let score: InceptionScore = acc.inner().state.finish().map_err(|e| StageError::Failed(format!("inception score: {e}")))?;
        Ok(Summary::InceptionScore(score))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::accumulator::Snapshot;
    use crate::units::UnitId;

    /// Units of 3 images of `class` with 4-way logits; unit `index` holds positions 3*index...
    fn batch(class: u32, units: std::ops::Range<u32>) -> FeatureBatch {
        let k = 4;
        let mut logits = Vec::new();
        let mut spans = Vec::new();
        for (n, index) in units.enumerate() {
            for i in 0..3 {
                let x = (class * 100 + index * 3 + i) as f32;
                logits.extend((0..k).map(|j| (x * (j as f32 + 1.3)).sin() * 3.0));
            }
            spans.push(UnitSpan {
                id: UnitId { origin: Origin::Generated, class, index },
                start: n * 3,
                len: 3,
                first_position: index as u64 * 3,
            });
        }
        FeatureBatch { labels: vec![class; spans.len() * 3], units: spans, feature_dim: 0, features: Vec::new(), logit_dim: k, logits }
    }

    fn fresh() -> ExactlyOnce<IsAccumulator> {
        // Two classes of 9 images each: class 1 starts at position 9.
        ExactlyOnce::new(IsAccumulator { state: InceptionScoreState::new(3, 4), class_offsets: vec![0, 9], nonfinite: 0 })
    }

    #[test]
    fn snapshot_restore_and_duplicate_units_change_nothing() {
        let batches = [batch(0, 0..2), batch(1, 0..3), batch(0, 2..3)];
        let mut straight = fresh();
        for b in &batches {
            straight.apply(b, &b.units);
        }
        let mut interrupted = fresh();
        interrupted.apply(&batches[0], &batches[0].units);
        let json = serde_json::to_string(&interrupted.snapshot()).unwrap();
        let snapshot: Snapshot<IsAccumulator> = serde_json::from_str(&json).unwrap();
        let mut resumed = ExactlyOnce::<IsAccumulator>::restore(snapshot);
        let before = resumed.snapshot();
        assert_eq!(resumed.apply(&batches[0], &batches[0].units), 0);
        assert_eq!(resumed.snapshot(), before);
        for b in &batches[1..] {
            resumed.apply(b, &b.units);
        }
        assert_eq!(resumed.snapshot(), straight.snapshot());
        assert_eq!(resumed.inner().state.images(), 18);
        assert_eq!(resumed.inner().state.finish().unwrap(), straight.inner().state.finish().unwrap());
    }

    #[test]
    fn the_score_does_not_depend_on_arrival_order() {
        let batches = [batch(0, 0..2), batch(1, 0..3), batch(0, 2..3)];
        let mut forward = fresh();
        let mut backward = fresh();
        for b in &batches {
            forward.apply(b, &b.units);
        }
        for b in batches.iter().rev() {
            backward.apply(b, &b.units);
        }
        let (f, b) = (forward.inner().state.finish().unwrap(), backward.inner().state.finish().unwrap());
        assert!((f.mean - b.mean).abs() <= 1e-12 * f.mean, "{f:?} vs {b:?}");
        assert_eq!(f.per_split.len(), 3);
    }
}
