//! `inception_score` sink: Inception Score of the generated images ([`crate::metrics::inception_score`]),
//! exactly once per unit. An image's split is its class-major position (class offset from the
//! source's announced class sizes, plus its index in its class) modulo the number of splits, so
//! the score does not depend on arrival order. Real images are ignored.

use std::sync::Arc;

use crate::metrics::inception_score::{InceptionScore, InceptionScoreState};
use crate::runtime::accumulator::{Accumulator, ExactlyOnce};
use crate::runtime::batch::{FeatureBatch, Origin, Payload, Summary, UnitSpan};
use crate::runtime::checkpoint::CheckpointTimer;
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::telemetry;
use crate::topology::config::InceptionScoreConfig;

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

pub struct InceptionScoreStage {
    cfg: InceptionScoreConfig,
}

impl InceptionScoreStage {
    pub fn new(cfg: InceptionScoreConfig) -> Self {
        InceptionScoreStage { cfg }
    }
}

impl Stage for InceptionScoreStage {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let k = crate::models::inception::InceptionV3::LOGITS;
        // Restored from a checkpoint, or created when the first generated images arrive.
        let mut acc: Option<ExactlyOnce<IsAccumulator>> = ctx.restore::<IsAccumulator>()?.map(ExactlyOnce::restore);
        let mut checkpoints = CheckpointTimer::new(ctx.checkpoint_interval);
        // At 0 from the start, so the first non-finite image shows as an increase (and alerts).
        metrics::counter!(telemetry::NONFINITE_IMAGES, "stage" => ctx.id.clone()).increment(0);
        while let Some(payload) = ctx.recv() {
            let Payload::Features(batch) = payload else {
                return Err(StageError::Failed("received a non-feature payload; the topology check should have refused this edge".into()));
            };
            // Real units are applied too (they add nothing): holding them tells a restart that
            // this stage has no use for them again. Those that come before the generated
            // source has announced its plan are not held (a restart sends them again).
            let only_real = batch.units.iter().all(|u| u.id.origin != Origin::Generated);
            if only_real && acc.is_none() && ctx.control.planned_per_class(Origin::Generated).is_none() {
                continue;
            }
            // The generated source announced its class sizes before sending anything.
            let acc = match &mut acc {
                Some(acc) => acc,
                None => {
                    let planned = ctx.control.planned_per_class(Origin::Generated).ok_or_else(|| {
                        StageError::Failed("generated images arrived before their source announced its class sizes".into())
                    })?;
                    let class_offsets = planned.iter().scan(0u64, |sum, n| {
                        let offset = *sum;
                        *sum += n;
                        Some(offset)
                    });
                    acc.insert(ExactlyOnce::new(IsAccumulator {
                        state: InceptionScoreState::new(self.cfg.splits, k),
                        class_offsets: class_offsets.collect(),
                        nonfinite: 0,
                    }))
                }
            };
            let before = acc.inner().nonfinite;
            ctx.timed(|| acc.apply(&batch, &batch.units));
            ctx.fault("applied")?;
            let bad = acc.inner().nonfinite - before;
            if bad > 0 {
                metrics::counter!(telemetry::NONFINITE_IMAGES, "stage" => ctx.id.clone()).increment(bad);
            }
            if let Ok(score) = acc.inner().state.finish() {
                metrics::gauge!(telemetry::INCEPTION_SCORE).set(score.mean);
            }
            if checkpoints.due() {
                ctx.checkpoint(&acc.snapshot())?;
            }
        }
        if let Some(acc) = &acc {
            ctx.checkpoint(&acc.snapshot())?;
        }
        if ctx.control.aborted() {
            return Ok(None);
        }
        let state = acc.map(|a| a.inner().state.clone()).unwrap_or_else(|| InceptionScoreState::new(self.cfg.splits, k));
        let score: InceptionScore = state.finish().map_err(|e| StageError::Failed(format!("inception score: {e}")))?;
        let summary = Summary::InceptionScore(score);
        ctx.send(Payload::Summary(Arc::new(summary.clone())))?;
        Ok(Some(summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::accumulator::Snapshot;
    use crate::runtime::batch::UnitId;

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
