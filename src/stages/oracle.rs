//! `oracle_classifier` transform: runs the oracle ResNet (torchvision parity, see
//! [`crate::models::oracle`]) on each image batch and emits, per image, the intended class and
//! the predicted class (arg-max of the logits; ties go to the lowest index, as `torch.argmax`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{BuildContext, ComponentConfig};
use crate::models::device::DeviceSpec;
use crate::models::oracle::{Oracle, OracleConfig};
use crate::models::preprocess::Normalization;
use crate::models::resnet::{ResNetArch, Stem};
use crate::report::Summary;
use crate::runtime::batch::{Payload, PredictionBatch};
use crate::runtime::merge::{MergeError, ShardFold};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::topology::config::{from_str, resolve};
use crate::topology::{Checks, DataKind, GraphFacts, HashedInput, NamedClasses, Section};
use crate::units::{Origin, UnitPlan};

/// `oracle_classifier` transform: a torchvision ResNet predicting each image's class.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OracleClassifierConfig {
    pub weights: PathBuf,
    #[serde(deserialize_with = "from_str")]
    pub arch: ResNetArch,
    #[serde(deserialize_with = "from_str")]
    pub stem: Stem,
    pub normalization: Normalization,
    /// Where it runs (`cpu`, `cuda`, `cuda:N`); default: `--device`, else `[runtime] device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceSpec>,
}

impl ComponentConfig for OracleClassifierConfig {
    const SECTION: Section = Section::Transforms;
    const ACCEPTS: Option<DataKind> = Some(DataKind::Images);
    const PRODUCES: Option<DataKind> = Some(DataKind::Predictions);
    // Stateless per batch: a rebuilt oracle redoes the batch in flight.
    const RESTARTABLE: bool = true;
    const ACCUMULATES: bool = false;
    const HOLDS_UNITS: bool = false;

    fn source_origin(&self) -> Option<Origin> {
        None
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.weights = resolve(base, &self.weights);
    }

    fn check(&self, checks: &mut Checks) {
        if !self.weights.is_file() {
            checks.error(format!("weights file \"{}\" does not exist", self.weights.display()));
        }
    }

    fn class_names(&self, _checks: &mut Checks) -> Option<NamedClasses> {
        None
    }

    fn check_in_graph(&self, facts: &GraphFacts, checks: &mut Checks) {
        let (Some(classes), true) = (facts.classes, self.weights.is_file()) else { return };
        if let Some(found) = safetensors_fc_classes(&self.weights) {
            if found != classes.len() {
                checks.error(format!(
                    "weights \"{}\" classify {found} classes (fc.weight), the topology has {} classes",
                    self.weights.display(),
                    classes.len()
                ));
            }
        }
    }

    fn describe(&self) -> String {
        let device = self.device.map_or(String::new(), |d| format!(" device={d}"));
        format!("weights={} arch={} stem={} normalization={}{device}", self.weights.display(), self.arch, self.stem, self.normalization)
    }

    fn plan(&self, _classes: &[String]) -> Result<Option<UnitPlan>, String> {
        Ok(None)
    }

    fn hashed_inputs(&self, _classes: &[String]) -> Result<Vec<HashedInput>, String> {
        Ok(vec![HashedInput::File { what: "weights".into(), path: self.weights.clone() }])
    }

    /// Merge: stateless: nothing to fold.
    fn fold_shards(&self, _id: &str, _fold: &ShardFold) -> Result<usize, MergeError> {
        Ok(0)
    }

    /// Loads the weights: a missing or mis-shaped tensor fails here, before the run starts.
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn Stage>, String> {
        let config = OracleConfig { arch: self.arch, stem: self.stem, norm: self.normalization, num_classes: cx.classes.len() };
        let oracle = Oracle::load(&self.weights, &config, &cx.open_device(self.device)?).map_err(|e| e.to_string())?;
        Ok(Box::new(OracleStage { weights: self.weights.clone(), oracle }))
    }
}

/// The class count a safetensors oracle file declares, from its header only (`fc.weight`'s
/// first dimension). `None` for other formats or unreadable headers: the build will say why.
fn safetensors_fc_classes(path: &Path) -> Option<usize> {
    use std::io::Read;
    if path.extension()?.to_str()? != "safetensors" {
        return None;
    }
    let mut file = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).ok()?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return None;
    }
    let mut header = vec![0u8; len as usize];
    file.read_exact(&mut header).ok()?;
    let header: serde_json::Value = serde_json::from_slice(&header).ok()?;
    header.get("fc.weight")?.get("shape")?.get(0)?.as_u64().map(|n| n as usize)
}

pub struct OracleStage {
    weights: PathBuf,
    oracle: Oracle,
}

/// Index of the largest value of each row of a row-major `n x k` matrix.
pub fn argmax_rows(values: &[f32], k: usize) -> Vec<u32> {
    values
        .chunks(k)
        .map(|row| {
            let mut best = 0;
            for (i, v) in row.iter().enumerate() {
                if *v > row[best] {
                    best = i;
                }
            }
            best as u32
        })
        .collect()
}

impl Stage for OracleStage {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let oracle = self.oracle;
        tracing::info!(stage = %ctx.id, weights = %self.weights.display(), "oracle running");
        let k = oracle.num_classes();
        while let Some(payload) = ctx.recv() {
            let Payload::Images(batch) = payload else {
                return Err(StageError::Failed("received a non-image payload; the topology check should have refused this edge".into()));
            };
            let predicted = ctx.timed(|| {
                oracle.logits(&batch.pixels, batch.len(), batch.height, batch.width).map(|logits| argmax_rows(&logits, k)).map_err(|e| {
                    StageError::Failed(format!("oracle forward on a {}x{} batch of {}: {e}", batch.width, batch.height, batch.len()))
                })
            })?;
            let out = PredictionBatch { labels: batch.labels.clone(), predicted, units: batch.units.clone() };
            drop(batch);
            ctx.send(Payload::Predictions(Arc::new(out)))?;
        }
        Ok(None)
    }
}
