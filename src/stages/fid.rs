//! `fid` sink: Frechet Inception Distance between generated images and real images (or
//! reference statistics from an `.npz`), with pytorch-fid's conventions
//! ([`crate::metrics::fid`]). Moments stream in float64, exactly once per unit; the live value
//! is recomputed every `interval_secs` (each computation costs two 2048x2048
//! eigendecompositions, seconds on a CPU); the final value when the inputs close.
//!
//! Features with NaN or infinite values are counted and left out, never folded into the moments.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::fid_stats::FidStats;
use crate::metrics::fid::{frechet_distance, GaussianStats};
use crate::runtime::accumulator::{Accumulator, ExactlyOnce};
use crate::runtime::batch::{FeatureBatch, Origin, Payload, Summary, UnitSpan};
use crate::runtime::checkpoint::CheckpointTimer;
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::telemetry;
use crate::topology::config::FidConfig;

/// What the report shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FidResult {
    /// The distance; `null` when a side has fewer than 2 images.
    pub value: Option<f64>,
    pub real_images: u64,
    pub generated_images: u64,
    /// The `.npz` the real statistics came from, if not from real images.
    pub reference: Option<PathBuf>,
    pub feature_dim: usize,
    /// A side has no more images than feature dimensions: its covariance is singular and the
    /// value is biased upwards (pytorch-fid computes it the same way; compare only like with like).
    pub rank_deficient: bool,
    /// Images whose features were not finite, left out.
    pub nonfinite_images: u64,
}

/// Moments per origin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidState {
    pub real: GaussianStats,
    pub generated: GaussianStats,
    pub nonfinite: u64,
}

impl Accumulator for FidState {
    type Input = FeatureBatch;
    type State = FidState;

    fn apply_unit(&mut self, input: &FeatureBatch, span: &UnitSpan) {
        let d = input.feature_dim;
        let rows = &input.features[span.start * d..(span.start + span.len) * d];
        // Keep finite rows only: one bad image must not poison the moments or drop its unit.
        let finite: Vec<f32> = rows.chunks(d).filter(|r| r.iter().all(|v| v.is_finite())).flatten().copied().collect();
        self.nonfinite += (span.len - finite.len() / d) as u64;
        let stats = match span.id.origin {
            Origin::Real => &mut self.real,
            Origin::Generated => &mut self.generated,
        };
        stats.add_batch(&finite, finite.len() / d).expect("rows are finite and d wide");
    }

    fn snapshot(&self) -> FidState {
        self.clone()
    }

    fn restore(state: FidState) -> Self {
        state
    }
}

pub struct FidStage {
    cfg: FidConfig,
}

impl FidStage {
    pub fn new(cfg: FidConfig) -> Self {
        FidStage { cfg }
    }
}

const DIM: usize = crate::models::inception::InceptionV3::FEATURES;

fn compute(state: &FidState, reference: &Option<FidStats>) -> Result<Option<f64>, StageError> {
    let gen = &state.generated;
    let Some(gen_cov) = gen.covariance() else { return Ok(None) };
    let result = match reference {
        Some(r) => frechet_distance(&r.mu, &r.sigma, &gen.mean(), &gen_cov),
        None => match state.real.covariance() {
            Some(real_cov) => frechet_distance(&state.real.mean(), &real_cov, &gen.mean(), &gen_cov),
            None => return Ok(None),
        },
    };
    result.map(|r| Some(r.fid)).map_err(|e| StageError::Failed(format!("frechet distance: {e}")))
}

impl Stage for FidStage {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let reference = match &self.cfg.reference {
            Some(path) => {
                let stats = FidStats::read(path).map_err(StageError::failed)?;
                if stats.dim() != DIM {
                    return Err(StageError::Failed(format!(
                        "fid statistics \"{}\": {}-dimensional, expected {DIM} (pool3 features)",
                        path.display(),
                        stats.dim()
                    )));
                }
                Some(stats)
            }
            None => None,
        };
        let mut acc = match ctx.restore::<FidState>()? {
            Some(snapshot) => ExactlyOnce::restore(snapshot),
            None => ExactlyOnce::new(FidState { real: GaussianStats::new(DIM), generated: GaussianStats::new(DIM), nonfinite: 0 }),
        };
        let mut checkpoints = CheckpointTimer::new(ctx.checkpoint_interval);
        // At 0 from the start, so the first non-finite image shows as an increase (and alerts).
        metrics::counter!(telemetry::NONFINITE_IMAGES, "stage" => ctx.id.clone()).increment(0);
        let mut live = CheckpointTimer::new(Duration::from_secs_f64(self.cfg.interval_secs));
        while let Some(payload) = ctx.recv() {
            let Payload::Features(batch) = payload else {
                return Err(StageError::Failed("received a non-feature payload; the topology check should have refused this edge".into()));
            };
            if batch.feature_dim != DIM {
                return Err(StageError::Failed(format!("features are {}-dimensional, expected {DIM}", batch.feature_dim)));
            }
            let before = acc.inner().nonfinite;
            ctx.timed(|| acc.apply(&batch, &batch.units));
            ctx.fault("applied")?;
            let bad = acc.inner().nonfinite - before;
            if bad > 0 {
                tracing::warn!(stage = %ctx.id, images = bad, "non-finite inception features left out of FID");
                metrics::counter!(telemetry::NONFINITE_IMAGES, "stage" => ctx.id.clone()).increment(bad);
            }
            if live.due() {
                if let Some(fid) = ctx.timed(|| compute(acc.inner(), &reference))? {
                    metrics::gauge!(telemetry::FID).set(fid);
                }
            }
            if checkpoints.due() {
                ctx.checkpoint(&acc.snapshot())?;
            }
        }
        // Even after a failure elsewhere: what was applied stays applied.
        ctx.checkpoint(&acc.snapshot())?;
        if ctx.control.aborted() {
            return Ok(None);
        }
        let state = acc.inner();
        let value = ctx.timed(|| compute(state, &reference))?;
        if let Some(fid) = value {
            metrics::gauge!(telemetry::FID).set(fid);
        }
        let real_images = reference.as_ref().map_or(state.real.count, |_| 0);
        let result = FidResult {
            value,
            real_images,
            generated_images: state.generated.count,
            reference: self.cfg.reference.clone(),
            feature_dim: DIM,
            rank_deficient: state.generated.count <= DIM as u64 || (reference.is_none() && real_images <= DIM as u64),
            nonfinite_images: state.nonfinite,
        };
        let summary = Summary::Fid(Box::new(result));
        ctx.send(Payload::Summary(Arc::new(summary.clone())))?;
        Ok(Some(summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::accumulator::Snapshot;
    use crate::runtime::batch::UnitId;

    /// Four 3-d feature rows per unit: unit k of `origin`, class 0, positions 4k..4k+3.
    fn batch(origin: Origin, units: std::ops::Range<u32>) -> FeatureBatch {
        let d = 3;
        let mut features = Vec::new();
        let mut spans = Vec::new();
        for (n, index) in units.enumerate() {
            for i in 0..4 {
                let x = (index * 4 + i) as f32;
                features.extend_from_slice(&[x.sin() * 10.0, (x * 0.37).cos(), x * 0.5 + origin as u8 as f32]);
            }
            spans.push(UnitSpan { id: UnitId { origin, class: 0, index }, start: n * 4, len: 4, first_position: index as u64 * 4 });
        }
        FeatureBatch { labels: vec![0; spans.len() * 4], units: spans, feature_dim: d, features, logit_dim: 0, logits: Vec::new() }
    }

    fn fresh() -> ExactlyOnce<FidState> {
        ExactlyOnce::new(FidState { real: GaussianStats::new(3), generated: GaussianStats::new(3), nonfinite: 0 })
    }

    #[test]
    fn snapshot_restore_and_duplicate_units_change_nothing() {
        let (first, rest) = (batch(Origin::Generated, 0..3), batch(Origin::Generated, 3..5));
        let real = batch(Origin::Real, 0..2);

        let mut straight = fresh();
        for b in [&first, &real, &rest] {
            straight.apply(b, &b.units);
        }

        let mut interrupted = fresh();
        interrupted.apply(&first, &first.units);
        interrupted.apply(&real, &real.units);
        // Through the checkpoint's serialised form, as a restart would.
        let json = serde_json::to_string(&interrupted.snapshot()).unwrap();
        let snapshot: Snapshot<FidState> = serde_json::from_str(&json).unwrap();
        assert_eq!(snapshot, interrupted.snapshot());
        let mut resumed = ExactlyOnce::<FidState>::restore(snapshot);
        // The units it holds arrive again (redone after a crash): nothing changes.
        let before = resumed.snapshot();
        assert_eq!(resumed.apply(&first, &first.units), 0);
        assert_eq!(resumed.snapshot(), before);
        resumed.apply(&rest, &rest.units);
        assert_eq!(resumed.snapshot(), straight.snapshot());
        assert_eq!(resumed.inner().generated.count, 20);
        assert_eq!(resumed.inner().real.count, 8);
    }

    #[test]
    fn nonfinite_rows_are_counted_and_left_out() {
        let mut b = batch(Origin::Generated, 0..2);
        b.features[1] = f32::NAN;
        b.features[3 * 6 + 2] = f32::INFINITY;
        let mut acc = fresh();
        acc.apply(&b, &b.units);
        assert_eq!(acc.inner().nonfinite, 2);
        assert_eq!(acc.inner().generated.count, 6);
        assert!(acc.inner().generated.sum.iter().all(|v| v.is_finite()));
    }
}
