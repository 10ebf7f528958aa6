//! `batcher` transform: groups whole work units into batches of about `batch_size` images, so
//! the models downstream see full batches whatever the unit size. A unit is never split (an
//! accumulator applies or skips a unit whole); a unit larger than `batch_size` travels alone.
//! Input batches are copied into the batch being built and dropped at once, so the batcher
//! holds at most one batch's worth of images.

use std::sync::Arc;

use crate::runtime::batch::{ImageBatch, Payload, Summary, UnitSpan};
use crate::runtime::stage::{Stage, StageContext, StageError};

pub struct BatcherStage {
    batch_size: usize,
}

impl BatcherStage {
    pub fn new(batch_size: usize) -> Self {
        BatcherStage { batch_size }
    }
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
