//! `oracle_classifier` transform: runs the oracle ResNet (torchvision parity, see
//! [`crate::models::oracle`]) on each image batch and emits, per image, the intended class and
//! the predicted class (arg-max of the logits; ties go to the lowest index, as `torch.argmax`).

use std::sync::Arc;

use crate::models::oracle::{Oracle, OracleConfig};
use crate::runtime::batch::{Payload, PredictionBatch, Summary};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::topology::config::OracleClassifierConfig;

pub struct OracleStage {
    cfg: OracleClassifierConfig,
}

impl OracleStage {
    pub fn new(cfg: OracleClassifierConfig) -> Self {
        OracleStage { cfg }
    }
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
        // Loading happens on the stage's own thread: a bad weights file fails this stage, by name.
        let config =
            OracleConfig { arch: self.cfg.arch, stem: self.cfg.stem, norm: self.cfg.normalization, num_classes: ctx.classes.len() };
        let oracle = Oracle::load(&self.cfg.weights, &config, &ctx.device).map_err(StageError::failed)?;
        tracing::info!(stage = %ctx.id, weights = %self.cfg.weights.display(), "oracle loaded");
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
