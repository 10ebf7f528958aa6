//! `batcher` transform: groups whole work units into batches of about `batch_size` images, so
//! the models downstream see full batches whatever the unit size. A unit is never split (an
//! accumulator applies or skips a unit whole); a unit larger than `batch_size` travels alone.
//! Input batches are copied into the batch being built and dropped at once, so the batcher
//! holds at most one batch's worth of images.

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{BuildContext, ComponentConfig};
use crate::report::Summary;
use crate::runtime::batch::{ImageBatch, Payload};
use crate::runtime::merge::{MergeError, ShardFold};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::topology::{Checks, DataKind, GraphFacts, HashedInput, NamedClasses, Section};
use crate::units::{Origin, UnitPlan, UnitSpan};

fn default_batch_size() -> usize {
    64
}

/// `batcher` transform: groups whole units into batches of about `batch_size` images.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatcherConfig {
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

impl ComponentConfig for BatcherConfig {
    const SECTION: Section = Section::Transforms;
    const ACCEPTS: Option<DataKind> = Some(DataKind::Images);
    const PRODUCES: Option<DataKind> = Some(DataKind::Images);
    // It holds a partial batch, which a restart would lose.
    const RESTARTABLE: bool = false;
    const ACCUMULATES: bool = false;
    const HOLDS_UNITS: bool = false;

    fn source_origin(&self) -> Option<Origin> {
        None
    }

    fn resolve_paths(&mut self, _base: &Path) {}

    fn check(&self, checks: &mut Checks) {
        if let Err(e) = crate::limits::count("batch_size", self.batch_size, crate::limits::MAX_BATCH_SIZE, "image") {
            checks.error(e);
        }
    }

    fn class_names(&self, _checks: &mut Checks) -> Option<NamedClasses> {
        None
    }

    fn check_in_graph(&self, _facts: &GraphFacts, _checks: &mut Checks) {}

    fn describe(&self) -> String {
        format!("batch_size={}", self.batch_size)
    }

    fn plan(&self, _classes: &[String]) -> Result<Option<UnitPlan>, String> {
        Ok(None)
    }

    fn hashed_inputs(&self, _classes: &[String]) -> Result<Vec<HashedInput>, String> {
        Ok(Vec::new())
    }

    /// Merge: stateless: nothing to fold.
    fn fold_shards(&self, _id: &str, _fold: &ShardFold) -> Result<usize, MergeError> {
        Ok(0)
    }

    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn Stage>, String> {
        Ok(Box::new(BatcherStage { batch_size: self.batch_size }))
    }
}

pub struct BatcherStage {
    batch_size: usize,
}

/// The batch being assembled.
#[derive(Default)]
struct Pending {
    size: Option<(usize, usize)>,
    pixels: Vec<u8>,
    labels: Vec<u32>,
    units: Vec<UnitSpan>,
}

impl Pending {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn take(&mut self) -> Option<ImageBatch> {
        let (h, w) = self.size?;
        if self.labels.is_empty() {
            return None;
        }
        let p = std::mem::take(self);
        Some(ImageBatch::new(h, w, p.pixels, p.labels, p.units))
    }

    fn push(&mut self, batch: &ImageBatch) {
        self.size = Some((batch.height, batch.width));
        let offset = self.labels.len();
        self.pixels.extend_from_slice(&batch.pixels);
        self.labels.extend_from_slice(&batch.labels);
        self.units.extend(batch.units.iter().map(|u| UnitSpan { start: u.start + offset, ..*u }));
    }
}

impl Stage for BatcherStage {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let mut pending = Pending::default();
        while let Some(payload) = ctx.recv() {
            let Payload::Images(batch) = payload else {
                return Err(StageError::Failed("received a non-image payload; the topology check should have refused this edge".into()));
            };
            // Flush first if the new units would not fit, or have another image size. The input
            // is copied in and dropped before the flushed batch is built and sent (a send may
            // block), so the batcher never holds more than one batch at a time.
            let other_size = pending.size.is_some_and(|s| s != (batch.height, batch.width));
            let mut flushed = Pending::default();
            if pending.len() > 0 && (other_size || pending.len() + batch.len() > self.batch_size) {
                flushed = std::mem::take(&mut pending);
            }
            ctx.timed(|| pending.push(&batch));
            drop(batch);
            if let Some(out) = flushed.take() {
                ctx.send(Payload::Images(Arc::new(out)))?;
            }
            if pending.len() >= self.batch_size {
                if let Some(out) = pending.take() {
                    ctx.send(Payload::Images(Arc::new(out)))?;
                }
            }
        }
        // Inputs closed: the last partial batch, unless the run is being torn down.
        if !ctx.control.aborted() {
            if let Some(out) = pending.take() {
                ctx.send(Payload::Images(Arc::new(out)))?;
            }
        }
        Ok(None)
    }
}
