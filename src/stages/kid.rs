//! `kid` sink: Kernel Inception Distance between generated and real pool3 features with
//! torch-fidelity 0.4's conventions ([`crate::metrics::kid`]): `subsets` seeded subsets of
//! `subset_size` features per side (clipped to the smaller side, with a note in the report),
//! mean and standard deviation over the subsets; with `per_class`, the same for each class's
//! generated images against its real images.
//!
//! KID needs the features themselves: they are kept per origin in a
//! [`FeatureStore`] (float32, 8 KB per image), checkpointed with the applied units, so a
//! resumed run computes from exactly the same features. The value is computed once, when the
//! inputs close (100 subsets of 1000 cost 600 GFLOP: tens of seconds on a CPU), and published
//! to Prometheus then.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{BuildContext, ComponentConfig};
use crate::metrics::kid::{kid_of_rows, to_matrix, Kid, KidError, Side};
use crate::report::results::{KidResult, MeanStd};
use crate::report::Summary;
use crate::runtime::accumulator::ExactlyOnce;
use crate::runtime::batch::FeatureBatch;
use crate::runtime::feature_store::{spill_to, FeatureStore};
use crate::runtime::merge::{MergeError, ShardFold};
use crate::runtime::sink::{NonfiniteCounter, SinkMaths, SinkStage};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::telemetry;
use crate::topology::{Checks, DataKind, GraphFacts, HashedInput, NamedClasses, Section};
use crate::units::{Origin, UnitPlan};

/// The feature width: Inception pool3.
pub(crate) const DIM: usize = crate::models::inception::InceptionV3::FEATURES;

fn default_subsets() -> usize {
    100
}

fn default_subset_size() -> usize {
    1000
}

/// `kid` sink: Kernel Inception Distance (torch-fidelity 0.4 defaults).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KidConfig {
    #[serde(default = "default_subsets")]
    pub subsets: usize,
    /// Features per side in each subset (clipped to the smaller side).
    #[serde(default = "default_subset_size")]
    pub subset_size: usize,
    /// Seed of the subset draw ([`crate::metrics::kid::subset`]).
    #[serde(default)]
    pub seed: u64,
    /// Also KID per class (generated class c against real class c).
    #[serde(default)]
    pub per_class: bool,
}

/// The one-line refusal of a sink whose real side must be real images upstream (shared with
/// precision_recall: neither has a statistics-file form).
pub(crate) fn require_real_images(facts: &GraphFacts, checks: &mut Checks) {
    if facts.real_images_upstream == Some(false) {
        checks.error("no real images reach it; expected an image_folder source with origin = \"real\" upstream");
    }
}

impl ComponentConfig for KidConfig {
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
        if self.subsets == 0 {
            checks.error("subsets must be at least 1, found 0");
        }
        if self.subset_size < 2 {
            checks.error(format!("subset_size must be at least 2 (the unbiased estimator needs pairs), found {}", self.subset_size));
        }
    }

    fn class_names(&self, _checks: &mut Checks) -> Option<NamedClasses> {
        None
    }

    fn check_in_graph(&self, facts: &GraphFacts, checks: &mut Checks) {
        require_real_images(facts, checks);
    }

    fn describe(&self) -> String {
        format!(
            "{} subsets of {} per side, seed {}{}",
            self.subsets,
            self.subset_size,
            self.seed,
            if self.per_class { ", per class" } else { "" }
        )
    }

    fn plan(&self, _classes: &[String]) -> Result<Option<UnitPlan>, String> {
        Ok(None)
    }

    fn hashed_inputs(&self, _classes: &[String]) -> Result<Vec<HashedInput>, String> {
        Ok(Vec::new())
    }

    /// Merge: the features of every shard.
    fn fold_shards(&self, id: &str, fold: &ShardFold) -> Result<usize, MergeError> {
        fold.fold_features(id)
    }

    fn build(&self, cx: &BuildContext) -> Result<Box<dyn Stage>, String> {
        Ok(Box::new(SinkStage(KidMaths {
            cfg: self.clone(),
            classes: cx.classes.len(),
            nonfinite: NonfiniteCounter::default(),
            memory_bytes: cx.feature_memory_mib.saturating_mul(1 << 20),
        })))
    }
}

/// The kid sink's maths: its options and the class count.
pub struct KidMaths {
    cfg: KidConfig,
    classes: usize,
    nonfinite: NonfiniteCounter,
    /// Feature bytes kept in memory before the store spills to its file.
    memory_bytes: u64,
}

impl KidMaths {
    /// KID of one comparison, `None` where a side has fewer than 2 features.
    fn kid_of(&self, store: &FeatureStore, class: Option<u32>) -> Result<Option<Kid>, StageError> {
        let (ng, nr) = (store.count(Origin::Generated, class), store.count(Origin::Real, class));
        if ng < 2 || nr < 2 {
            return Ok(None);
        }
        // Only the subsets' rows are read (the store may have spilled to its file).
        let mut fetch = |side: Side, rows: &[usize]| -> Result<_, KidError> {
            let origin = if side == Side::Generated { Origin::Generated } else { Origin::Real };
            let features = store.rows(origin, class, rows).map_err(|e| KidError::Read(e.to_string()))?;
            Ok(to_matrix(&features, DIM))
        };
        kid_of_rows(ng, nr, DIM, self.cfg.subsets, self.cfg.subset_size, self.cfg.seed, &mut fetch)
            .map(Some)
            .map_err(|e| StageError::Failed(format!("kid: {e}")))
    }
}

impl SinkMaths for KidMaths {
    type Acc = FeatureStore;
    type Input = FeatureBatch;

    fn fresh(&mut self, _ctx: &StageContext) -> Result<FeatureStore, StageError> {
        Ok(FeatureStore::new(DIM))
    }

    fn start(&mut self, acc: &mut ExactlyOnce<FeatureStore>, ctx: &StageContext) -> Result<(), StageError> {
        if acc.inner().dim != DIM {
            return Err(StageError::Failed(format!("checkpoint holds {}-dimensional features, expected {DIM}", acc.inner().dim)));
        }
        spill_to(acc, ctx, self.memory_bytes)?;
        self.nonfinite.start(ctx, acc.inner().nonfinite);
        // The series exist from the start, NaN (no evidence) until the value is computed.
        metrics::gauge!(telemetry::KID).set(f64::NAN);
        if self.cfg.per_class {
            for class in ctx.classes.iter() {
                metrics::gauge!(telemetry::CLASS_KID, "class" => class.clone()).set(f64::NAN);
            }
        }
        Ok(())
    }

    fn check_batch(&self, _acc: &ExactlyOnce<FeatureStore>, batch: &FeatureBatch) -> Result<(), StageError> {
        if batch.feature_dim != DIM {
            return Err(StageError::Failed(format!("features are {}-dimensional, expected {DIM}", batch.feature_dim)));
        }
        Ok(())
    }

    fn after_batch(&mut self, acc: &mut ExactlyOnce<FeatureStore>, ctx: &StageContext) -> Result<(), StageError> {
        if let Some(e) = acc.inner().spill_error() {
            return Err(StageError::failed(e));
        }
        let bad = self.nonfinite.advance(ctx, acc.inner().nonfinite);
        if bad > 0 {
            tracing::warn!(stage = %ctx.id, images = bad, "non-finite inception features left out of KID");
        }
        Ok(())
    }

    fn drain(&mut self, _acc: &mut ExactlyOnce<FeatureStore>, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }

    fn finish(&mut self, acc: &ExactlyOnce<FeatureStore>, ctx: &StageContext) -> Result<Summary, StageError> {
        let store = acc.inner();
        let global = ctx.timed(|| self.kid_of(store, None))?;
        let per_class = if self.cfg.per_class {
            let mut values = Vec::with_capacity(self.classes);
            for c in 0..self.classes as u32 {
                let k = ctx.timed(|| self.kid_of(store, Some(c)))?;
                if let Some(k) = &k {
                    metrics::gauge!(telemetry::CLASS_KID, "class" => ctx.classes[c as usize].clone()).set(k.mean);
                }
                values.push(k.map(|k| MeanStd { mean: k.mean, std: k.std }));
            }
            Some(values)
        } else {
            None
        };
        if let Some(k) = &global {
            metrics::gauge!(telemetry::KID).set(k.mean);
        }
        let (real, generated) = (store.count(Origin::Real, None), store.count(Origin::Generated, None));
        let subset_size = global.as_ref().map_or(self.cfg.subset_size.min(real).min(generated), |k| k.subset_size);
        let note = (subset_size != self.cfg.subset_size).then(|| {
            format!(
                "subset_size {} clipped to {subset_size}, the smaller side ({generated} generated, {real} real images)",
                self.cfg.subset_size
            )
        });
        let per_class_mean = per_class.as_ref().and_then(|v| mean_of(v.iter().map(|k| k.map(|k| k.mean))));
        Ok(Summary::Kid(Box::new(KidResult {
            mean: global.as_ref().map(|k| k.mean),
            std: global.as_ref().map(|k| k.std),
            subsets: self.cfg.subsets,
            subset_size,
            subset_size_requested: self.cfg.subset_size,
            seed: self.cfg.seed,
            note,
            real_images: real as u64,
            generated_images: generated as u64,
            per_class,
            per_class_mean,
            nonfinite_images: store.nonfinite,
        })))
    }
}

/// The mean of the values that exist (`None` if none does).
pub(crate) fn mean_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let present: Vec<f64> = values.flatten().collect();
    (!present.is_empty()).then(|| present.iter().sum::<f64>() / present.len() as f64)
}
