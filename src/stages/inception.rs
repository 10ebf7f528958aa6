//! `inception_v3` transform: pytorch-fid's InceptionV3 (see [`crate::models::inception`]) on
//! each image batch, emitting per image the 2048-d pool3 features (FID) and the 1008 unbiased
//! logits (Inception Score).

use std::sync::Arc;

use crate::models::hub_cache;
use crate::models::inception::{InceptionV3, PT_INCEPTION_FILE};
use crate::models::weights::WeightMap;
use crate::runtime::batch::{FeatureBatch, Payload, Summary};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::topology::config::InceptionV3Config;

pub struct InceptionStage {
    cfg: InceptionV3Config,
}

impl InceptionStage {
    pub fn new(cfg: InceptionV3Config) -> Self {
        InceptionStage { cfg }
    }
}

impl Stage for InceptionStage {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let path = hub_cache::locate(self.cfg.weights.as_deref(), PT_INCEPTION_FILE, "inception weights", "`weights = FILE`")
            .map_err(StageError::failed)?;
        let weights = WeightMap::load(&path, &ctx.device).map_err(StageError::failed)?;
        let net = InceptionV3::load(&weights).map_err(StageError::failed)?;
        drop(weights);
        tracing::info!(stage = %ctx.id, weights = %path.display(), "inception loaded");
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
