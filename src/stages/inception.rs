//! `inception_v3` transform: pytorch-fid's InceptionV3 (see [`crate::models::inception`]) on
//! each image batch, emitting per image the 2048-d pool3 features (FID) and the 1008 unbiased
//! logits (Inception Score).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{BuildContext, ComponentConfig};
use crate::models::device::DeviceSpec;
use crate::models::hub_cache;
use crate::models::inception::{InceptionV3, PT_INCEPTION_FILE};
use crate::models::weights::WeightMap;
use crate::report::Summary;
use crate::runtime::batch::{FeatureBatch, Payload};
use crate::runtime::merge::{MergeError, ShardFold};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::topology::config::resolve;
use crate::topology::{Checks, DataKind, GraphFacts, HashedInput, NamedClasses, Section};
use crate::units::{Origin, UnitPlan};

/// `inception_v3` transform: pytorch-fid's InceptionV3 (pool3 features and IS logits).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InceptionV3Config {
    /// pytorch-fid weights; when absent, `pt_inception-2015-12-05-6726825d.pth` in the torch hub cache.
    pub weights: Option<PathBuf>,
    /// Where it runs (`cpu`, `cuda`, `cuda:N`); default: `--device`, else `[runtime] device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceSpec>,
}

impl InceptionV3Config {
    /// The weights file: the one named, else pytorch-fid's in the torch hub cache.
    fn weights_file(&self) -> Result<PathBuf, String> {
        hub_cache::locate(self.weights.as_deref(), PT_INCEPTION_FILE, "inception weights", "`weights = FILE`").map_err(|e| e.to_string())
    }
}

impl ComponentConfig for InceptionV3Config {
    const SECTION: Section = Section::Transforms;
    const ACCEPTS: Option<DataKind> = Some(DataKind::Images);
    const PRODUCES: Option<DataKind> = Some(DataKind::Features);
    // Stateless per batch: a rebuilt network redoes the batch in flight.
    const RESTARTABLE: bool = true;
    const ACCUMULATES: bool = false;
    const HOLDS_UNITS: bool = false;

    fn source_origin(&self) -> Option<Origin> {
        None
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.weights.iter_mut().for_each(|p| *p = resolve(base, p));
    }

    fn check(&self, checks: &mut Checks) {
        match &self.weights {
            Some(path) if !path.is_file() => checks.error(format!("weights file \"{}\" does not exist", path.display())),
            Some(_) => {}
            None => {
                if let Err(e) = self.weights_file() {
                    checks.error(e);
                }
            }
        }
    }

    fn class_names(&self, _checks: &mut Checks) -> Option<NamedClasses> {
        None
    }

    fn check_in_graph(&self, _facts: &GraphFacts, _checks: &mut Checks) {}

    fn describe(&self) -> String {
        let device = self.device.map_or(String::new(), |d| format!(" device={d}"));
        format!("weights={}{device}", self.weights.as_ref().map_or("(torch hub cache)".into(), |p| p.display().to_string()))
    }

    fn plan(&self, _classes: &[String]) -> Result<Option<UnitPlan>, String> {
        Ok(None)
    }

    fn hashed_inputs(&self, _classes: &[String]) -> Result<Vec<HashedInput>, String> {
        Ok(vec![HashedInput::File { what: "weights".into(), path: self.weights_file()? }])
    }

    /// Merge: stateless: nothing to fold.
    fn fold_shards(&self, _id: &str, _fold: &ShardFold) -> Result<usize, MergeError> {
        Ok(0)
    }

    fn build(&self, cx: &BuildContext) -> Result<Box<dyn Stage>, String> {
        let path = self.weights_file()?;
        let weights = WeightMap::load(&path, &cx.open_device(self.device)?).map_err(|e| e.to_string())?;
        let net = InceptionV3::load(&weights).map_err(|e| e.to_string())?;
        Ok(Box::new(InceptionStage { weights: path, net }))
    }
}

pub struct InceptionStage {
    weights: PathBuf,
    net: InceptionV3,
}

impl Stage for InceptionStage {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let net = self.net;
        tracing::info!(stage = %ctx.id, weights = %self.weights.display(), "inception running");
        while let Some(payload) = ctx.recv() {
            let Payload::Images(batch) = payload else {
                return Err(StageError::Failed("received a non-image payload; the topology check should have refused this edge".into()));
            };
            let (features, logits) = ctx.timed(|| {
                net.features(&batch.pixels, batch.len(), batch.height, batch.width).map_err(|e| {
                    StageError::Failed(format!("inception forward on a {}x{} batch of {}: {e}", batch.width, batch.height, batch.len()))
                })
            })?;
            let out = FeatureBatch {
                labels: batch.labels.clone(),
                units: batch.units.clone(),
                feature_dim: InceptionV3::FEATURES,
                features,
                logit_dim: InceptionV3::LOGITS,
                logits,
            };
            drop(batch);
            ctx.send(Payload::Features(Arc::new(out)))?;
        }
        Ok(None)
    }
}
