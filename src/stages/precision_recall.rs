//! `precision_recall` sink: precision and recall of the generated images (Kynkaanniemi et al.
//! 2019, torch-fidelity 0.4's `prc`: k-NN radii on pool3 features), and density and coverage
//! (Naeem et al. 2020) from the same distances ([`crate::metrics::prc`]); with `per_class`, the
//! same for each class's generated images against its real images.
//!
//! The features are kept per origin in a [`FeatureStore`] (float32, 8 KB per image),
//! checkpointed with the applied units, so a resumed run computes from exactly the same
//! features. The figures are computed once, when the inputs close (all pairwise distances:
//! 3 n^2 d multiply-adds for n images per side), and published to Prometheus then.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::kid::{require_real_images, DIM};
use super::{BuildContext, ComponentConfig};
use crate::metrics::prc::{prdc, Prdc};
use crate::report::results::{PrdcValues, PrecisionRecallResult};
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

fn default_k() -> usize {
    3
}

/// `precision_recall` sink: k-NN precision, recall, density and coverage.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrecisionRecallConfig {
    /// Neighbourhood size of the radii (torch-fidelity's `prc_neighborhood`).
    #[serde(default = "default_k")]
    pub k: usize,
    /// Also per class (generated class c against real class c).
    #[serde(default)]
    pub per_class: bool,
}

impl ComponentConfig for PrecisionRecallConfig {
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
        if self.k == 0 {
            checks.error("k must be at least 1, found 0");
        }
    }

    fn class_names(&self, _checks: &mut Checks) -> Option<NamedClasses> {
        None
    }

    fn check_in_graph(&self, facts: &GraphFacts, checks: &mut Checks) {
        require_real_images(facts, checks);
    }

    fn describe(&self) -> String {
        format!("k = {}{}", self.k, if self.per_class { ", per class" } else { "" })
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
        Ok(Box::new(SinkStage(PrecisionRecallMaths {
            cfg: self.clone(),
            classes: cx.classes.len(),
            nonfinite: NonfiniteCounter::default(),
            memory_bytes: cx.feature_memory_mib.saturating_mul(1 << 20),
        })))
    }
}

/// The precision_recall sink's maths: its options and the class count.
pub struct PrecisionRecallMaths {
    cfg: PrecisionRecallConfig,
    classes: usize,
    nonfinite: NonfiniteCounter,
    /// Feature bytes kept in memory before the store spills to its file.
    memory_bytes: u64,
}

impl PrecisionRecallMaths {
    /// The figures of one comparison, `None` where a side has no more than k features.
    fn of(&self, store: &FeatureStore, class: Option<u32>) -> Result<Option<Prdc>, StageError> {
        let k = self.cfg.k;
        if store.count(Origin::Generated, class) <= k || store.count(Origin::Real, class) <= k {
            return Ok(None);
        }
        // Every pair's distance is needed: all the features are read back.
        let read = |origin| store.features(origin, class).map_err(|e| StageError::Failed(format!("precision/recall: {e}")));
        let (gen, real) = (read(Origin::Generated)?, read(Origin::Real)?);
        prdc(&gen, &real, DIM, k).map(Some).map_err(|e| StageError::Failed(format!("precision/recall: {e}")))
    }
}

fn values(p: &Prdc) -> PrdcValues {
    PrdcValues { precision: p.precision, recall: p.recall, density: p.density, coverage: p.coverage }
}

/// The four gauges of the global comparison (per-class figures go to the report only).
fn publish(p: &Prdc) {
    metrics::gauge!(telemetry::PRECISION).set(p.precision);
    metrics::gauge!(telemetry::RECALL).set(p.recall);
    metrics::gauge!(telemetry::DENSITY).set(p.density);
    metrics::gauge!(telemetry::COVERAGE).set(p.coverage);
}

impl SinkMaths for PrecisionRecallMaths {
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
        // The series exist from the start, NaN (no evidence) until the values are computed.
        for name in [telemetry::PRECISION, telemetry::RECALL, telemetry::DENSITY, telemetry::COVERAGE] {
            metrics::gauge!(name).set(f64::NAN);
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
            tracing::warn!(stage = %ctx.id, images = bad, "non-finite inception features left out of precision/recall");
        }
        Ok(())
    }

    fn drain(&mut self, _acc: &mut ExactlyOnce<FeatureStore>, _ctx: &StageContext) -> Result<(), StageError> {
        Ok(())
    }

    fn finish(&mut self, acc: &ExactlyOnce<FeatureStore>, ctx: &StageContext) -> Result<Summary, StageError> {
        let store = acc.inner();
        let global = ctx.timed(|| self.of(store, None))?;
        if let Some(p) = &global {
            publish(p);
        }
        let per_class = if self.cfg.per_class {
            let mut out = Vec::with_capacity(self.classes);
            for c in 0..self.classes as u32 {
                let p = ctx.timed(|| self.of(store, Some(c)))?;
                out.push(p.as_ref().map(values));
            }
            Some(out)
        } else {
            None
        };
        let v = global.as_ref().map(values);
        Ok(Summary::PrecisionRecall(Box::new(PrecisionRecallResult {
            precision: v.map(|v| v.precision),
            recall: v.map(|v| v.recall),
            density: v.map(|v| v.density),
            coverage: v.map(|v| v.coverage),
            k: self.cfg.k,
            real_images: store.count(Origin::Real, None) as u64,
            generated_images: store.count(Origin::Generated, None) as u64,
            per_class,
            nonfinite_images: store.nonfinite,
        })))
    }
}
