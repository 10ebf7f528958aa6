//! `fid` sink: Frechet Inception Distance between generated images and real images (or
//! reference statistics from an `.npz`), with pytorch-fid's conventions
//! ([`crate::metrics::fid`]). Moments stream in float64, exactly once per unit (through
//! [`crate::runtime::sink`]); the live value
//! is recomputed every `interval_secs` (each computation costs two 2048x2048
//! eigendecompositions, seconds on a CPU); the final value when the inputs close.
//!
//! Features with NaN or infinite values are counted and left out, never folded into the moments.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{BuildContext, ComponentConfig};
use crate::data::fid_stats::FidStats;
use crate::metrics::fid::{frechet_distance, GaussianStats};
use crate::report::results::FidResult;
use crate::report::Summary;
use crate::runtime::accumulator::{Accumulator, ExactlyOnce};
use crate::runtime::batch::FeatureBatch;
use crate::runtime::checkpoint::CheckpointTimer;
use crate::runtime::merge::{MergeError, MergeState, ShardFold};
use crate::runtime::sink::{NonfiniteCounter, SinkMaths, SinkStage};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::telemetry;
use crate::topology::config::resolve;
use crate::topology::{Checks, DataKind, GraphFacts, HashedInput, NamedClasses, Section};
use crate::units::{Origin, UnitPlan, UnitSpan};

fn default_fid_interval() -> f64 {
    60.0
}

/// `fid` sink: Frechet Inception Distance between generated and real features (or reference
/// statistics in pytorch-fid's `.npz` format).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FidConfig {
    /// `.npz` with `mu` and `sigma` (pytorch-fid / `rcaflow fid-stats`), instead of real images.
    pub reference: Option<PathBuf>,
    /// Seconds between live recomputations (each costs a 2048x2048 matrix square root).
    #[serde(default = "default_fid_interval")]
    pub interval_secs: f64,
    /// Also FID per class: class c's generated images against class c's real images (two
    /// more 2048x2048 float64 moment sums per class: 64 MB a class in memory and in the
    /// checkpoint).
    #[serde(default)]
    pub per_class: bool,
}

impl ComponentConfig for FidConfig {
    const SECTION: Section = Section::Sinks;
    const ACCEPTS: Option<DataKind> = Some(DataKind::Features);
    const PRODUCES: Option<DataKind> = Some(DataKind::Summaries);
    const RESTARTABLE: bool = false;
    const ACCUMULATES: bool = true;
    const HOLDS_UNITS: bool = true;

    fn source_origin(&self) -> Option<Origin> {
        None
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.reference.iter_mut().for_each(|p| *p = resolve(base, p));
    }

    fn check(&self, checks: &mut Checks) {
        if let Some(path) = self.reference.as_ref().filter(|p| !p.is_file()) {
            checks.error(format!("reference statistics file \"{}\" does not exist", path.display()));
        }
        if let Err(e) = crate::limits::seconds("interval_secs", self.interval_secs) {
            checks.error(e);
        }
    }

    fn class_names(&self, _checks: &mut Checks) -> Option<NamedClasses> {
        None
    }

    /// The real side is real images upstream or a reference file standing for them (not both).
    fn check_in_graph(&self, facts: &GraphFacts, checks: &mut Checks) {
        match (facts.real_images_upstream, self.reference.is_some()) {
            (Some(false), false) => checks.error(
                "no real images reach it and no `reference` is set; expected an image_folder source with origin = \"real\" upstream, or reference = FILE",
            ),
            (Some(true), true) => checks.error("both real images upstream and a `reference` file; expected one of the two"),
            _ => {}
        }
        if self.per_class && self.reference.is_some() {
            checks.error("per_class needs real images of each class upstream; a `reference` file holds only global statistics");
        }
    }

    fn describe(&self) -> String {
        format!(
            "real statistics from {}, live every {}s{}",
            self.reference.as_ref().map_or("real images".into(), |p| p.display().to_string()),
            self.interval_secs,
            if self.per_class { ", per class" } else { "" }
        )
    }

    fn plan(&self, _classes: &[String]) -> Result<Option<UnitPlan>, String> {
        Ok(None)
    }

    fn hashed_inputs(&self, _classes: &[String]) -> Result<Vec<HashedInput>, String> {
        Ok(self.reference.iter().map(|p| HashedInput::File { what: "reference".into(), path: p.clone() }).collect())
    }

    /// Merge: the moments of every shard.
    fn fold_shards(&self, id: &str, fold: &ShardFold) -> Result<usize, MergeError> {
        fold.fold::<FidState>(id)
    }

    /// Reads the reference statistics, if any, and checks their width.
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn Stage>, String> {
        let reference = match &self.reference {
            Some(path) => {
                let stats = FidStats::read(path).map_err(|e| e.to_string())?;
                if stats.dim() != DIM {
                    return Err(format!(
                        "fid statistics \"{}\": {}-dimensional, expected {DIM} (pool3 features)",
                        path.display(),
                        stats.dim()
                    ));
                }
                Some(stats)
            }
            None => None,
        };
        let live = CheckpointTimer::new(crate::limits::seconds("interval_secs", self.interval_secs).unwrap_or(Duration::from_secs(30)));
        Ok(Box::new(SinkStage(FidMaths {
            reference_file: self.reference.clone(),
            reference,
            live,
            nonfinite: NonfiniteCounter::default(),
            per_class: self.per_class.then_some(cx.classes.len()),
        })))
    }
}

/// Moments per origin (and per class, with `per_class`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidState {
    pub real: GaussianStats,
    pub generated: GaussianStats,
    pub nonfinite: u64,
    /// One entry per class with `per_class`, else empty.
    pub per_class: Vec<ClassMoments>,
}

/// The moments of one class's real and generated images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassMoments {
    pub real: GaussianStats,
    pub generated: GaussianStats,
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
        let n = finite.len() / d;
        let (global, class) = match span.id.origin {
            Origin::Real => (&mut self.real, self.per_class.get_mut(span.id.class as usize).map(|c| &mut c.real)),
            Origin::Generated => (&mut self.generated, self.per_class.get_mut(span.id.class as usize).map(|c| &mut c.generated)),
        };
        global.add_batch(&finite, n).expect("rows are finite and d wide");
        if let Some(class) = class {
            class.add_batch(&finite, n).expect("rows are finite and d wide");
        }
    }

    fn snapshot(&self) -> FidState {
        self.clone()
    }

    fn restore(state: FidState) -> Self {
        state
    }
}

/// Moments add (each side, each class); so do the images left out.
impl MergeState for FidState {
    fn merge(&mut self, other: FidState) -> Result<(), String> {
        if other.per_class.len() != self.per_class.len() {
            return Err(format!("moments of {} classes here, {} there", self.per_class.len(), other.per_class.len()));
        }
        self.real.merge(&other.real).map_err(|e| e.to_string())?;
        self.generated.merge(&other.generated).map_err(|e| e.to_string())?;
        for (mine, theirs) in self.per_class.iter_mut().zip(&other.per_class) {
            mine.real.merge(&theirs.real).map_err(|e| e.to_string())?;
            mine.generated.merge(&theirs.generated).map_err(|e| e.to_string())?;
        }
        self.nonfinite += other.nonfinite;
        Ok(())
    }
}

const DIM: usize = crate::models::inception::InceptionV3::FEATURES;

/// The FID of one class (`None` where a side has fewer than 2 images).
fn class_fid(c: &ClassMoments) -> Result<Option<f64>, StageError> {
    let (Some(real_cov), Some(gen_cov)) = (c.real.covariance(), c.generated.covariance()) else { return Ok(None) };
    frechet_distance(&c.real.mean(), &real_cov, &c.generated.mean(), &gen_cov)
        .map(|r| Some(r.fid))
        .map_err(|e| StageError::Failed(format!("frechet distance: {e}")))
}

/// What `per_class = true` reports: each class's FID, their mean, and the rank-deficient flags.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassFids {
    /// One per class; `None` where a side has fewer than 2 images.
    pub values: Vec<Option<f64>>,
    /// Mean of the values that exist.
    pub mean: Option<f64>,
    /// A side of the class has no more images than feature dimensions (singular covariance).
    pub rank_deficient: Vec<bool>,
}

impl FidState {
    /// The per-class figures of the report (the fid sink's `finish` with `per_class`).
    pub fn class_fids(&self) -> Result<ClassFids, StageError> {
        let values = self.per_class.iter().map(class_fid).collect::<Result<Vec<_>, _>>()?;
        let mean = super::kid::mean_of(values.iter().copied());
        let rank_deficient =
            self.per_class.iter().map(|c| c.generated.count <= c.generated.dim as u64 || c.real.count <= c.real.dim as u64).collect();
        Ok(ClassFids { values, mean, rank_deficient })
    }
}

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

/// The fid sink's maths: the reference statistics (if any) and the live recomputation timer.
pub struct FidMaths {
    reference_file: Option<PathBuf>,
    reference: Option<FidStats>,
    live: CheckpointTimer,
    nonfinite: NonfiniteCounter,
    /// The class count, with `per_class`.
    per_class: Option<usize>,
}

impl SinkMaths for FidMaths {
    type Acc = FidState;
    type Input = FeatureBatch;

    fn fresh(&mut self, _ctx: &StageContext) -> Result<FidState, StageError> {
        let classes = self.per_class.unwrap_or(0);
        let per_class = (0..classes).map(|_| ClassMoments { real: GaussianStats::new(DIM), generated: GaussianStats::new(DIM) }).collect();
        Ok(FidState { real: GaussianStats::new(DIM), generated: GaussianStats::new(DIM), nonfinite: 0, per_class })
    }

    fn start(&mut self, acc: &mut ExactlyOnce<FidState>, ctx: &StageContext) -> Result<(), StageError> {
        let held = acc.inner().per_class.len();
        if held != self.per_class.unwrap_or(0) {
            return Err(StageError::Failed(format!(
                "checkpoint holds moments of {held} classes, the topology asks for {} (per_class changed?)",
                self.per_class.unwrap_or(0)
            )));
        }
        self.nonfinite.start(ctx, acc.inner().nonfinite);
        // Per-class series exist from the start, NaN (no evidence) until the end.
        if self.per_class.is_some() {
            for class in ctx.classes.iter() {
                metrics::gauge!(telemetry::CLASS_FID, "class" => class.clone()).set(f64::NAN);
            }
        }
        Ok(())
    }

    fn check_batch(&self, _acc: &ExactlyOnce<FidState>, batch: &FeatureBatch) -> Result<(), StageError> {
        if batch.feature_dim != DIM {
            return Err(StageError::Failed(format!("features are {}-dimensional, expected {DIM}", batch.feature_dim)));
        }
        Ok(())
    }

    fn after_batch(&mut self, acc: &mut ExactlyOnce<FidState>, ctx: &StageContext) -> Result<(), StageError> {
        let bad = self.nonfinite.advance(ctx, acc.inner().nonfinite);
        if bad > 0 {
            tracing::warn!(stage = %ctx.id, images = bad, "non-finite inception features left out of FID");
        }
        if self.live.due() {
            if let Some(fid) = ctx.timed(|| compute(acc.inner(), &self.reference))? {
                metrics::gauge!(telemetry::FID).set(fid);
            }
        }
        Ok(())
    }

    fn drain(&mut self, _acc: &mut ExactlyOnce<FidState>, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }

    fn finish(&mut self, acc: &ExactlyOnce<FidState>, ctx: &StageContext) -> Result<Summary, StageError> {
        let state = acc.inner();
        let value = ctx.timed(|| compute(state, &self.reference))?;
        if let Some(fid) = value {
            metrics::gauge!(telemetry::FID).set(fid);
        }
        let real_images = self.reference.as_ref().map_or(state.real.count, |_| 0);
        let class_fids = match self.per_class {
            Some(_) => {
                let fids = ctx.timed(|| state.class_fids())?;
                for (class, v) in ctx.classes.iter().zip(&fids.values) {
                    if let Some(v) = v {
                        metrics::gauge!(telemetry::CLASS_FID, "class" => class.clone()).set(*v);
                    }
                }
                Some(fids)
            }
            None => None,
        };
        let (per_class, per_class_mean, per_class_rank_deficient) = match class_fids {
            Some(f) => (Some(f.values), f.mean, Some(f.rank_deficient)),
            None => (None, None, None),
        };
        Ok(Summary::Fid(Box::new(FidResult {
            value,
            real_images,
            generated_images: state.generated.count,
            reference: self.reference_file.clone(),
            feature_dim: DIM,
            rank_deficient: state.generated.count <= DIM as u64 || (self.reference.is_none() && real_images <= DIM as u64),
            nonfinite_images: state.nonfinite,
            per_class,
            per_class_mean,
            per_class_rank_deficient,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::accumulator::Snapshot;
    use crate::units::UnitId;

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
        ExactlyOnce::new(FidState { real: GaussianStats::new(3), generated: GaussianStats::new(3), nonfinite: 0, per_class: Vec::new() })
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

    #[test]
    fn per_class_moments_are_each_class_alone() {
        // Units of class 0 and class 1 on both sides, interleaved.
        let with_class = |mut b: FeatureBatch, class: u32| {
            b.units.iter_mut().for_each(|s| s.id.class = class);
            b
        };
        let batches = [
            with_class(batch(Origin::Generated, 0..2), 0),
            with_class(batch(Origin::Real, 0..3), 1),
            with_class(batch(Origin::Generated, 2..5), 1),
            with_class(batch(Origin::Real, 3..4), 0),
        ];
        let class = || ClassMoments { real: GaussianStats::new(3), generated: GaussianStats::new(3) };
        let mut acc = ExactlyOnce::new(FidState {
            real: GaussianStats::new(3),
            generated: GaussianStats::new(3),
            nonfinite: 0,
            per_class: vec![class(), class()],
        });
        for b in &batches {
            acc.apply(b, &b.units);
        }
        // The class's units alone, one unit at a time as the accumulator folds them.
        let alone = |b: &FeatureBatch| {
            let mut s = GaussianStats::new(3);
            for unit in b.features.chunks(4 * 3) {
                s.add_batch(unit, 4).unwrap();
            }
            s
        };
        let pc = &acc.inner().per_class;
        assert_eq!(pc[0].generated, alone(&batches[0]));
        assert_eq!(pc[1].real, alone(&batches[1]));
        assert_eq!(pc[1].generated, alone(&batches[2]));
        assert_eq!(pc[0].real, alone(&batches[3]));
        assert_eq!(acc.inner().generated.count, 20);
        // The class FID is the frechet distance of those moments (tests/fid_maths.rs holds
        // frechet_distance to pytorch-fid's calculate_frechet_distance).
        let want = frechet_distance(
            &pc[1].real.mean(),
            &pc[1].real.covariance().unwrap(),
            &pc[1].generated.mean(),
            &pc[1].generated.covariance().unwrap(),
        )
        .unwrap()
        .fid;
        assert_eq!(class_fid(&pc[1]).unwrap(), Some(want));
        assert_eq!(class_fid(&ClassMoments { real: GaussianStats::new(3), generated: pc[0].generated.clone() }).unwrap(), None);
    }
}
