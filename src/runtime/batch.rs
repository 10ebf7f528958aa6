//! What travels on the data plane: batches of images, predictions or features, tagged with the
//! work units they carry ([`crate::units`]), and the summaries stages hand to the report
//! ([`crate::report::Summary`], carried here without looking inside).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::report::Summary;
use crate::units::UnitSpan;

/// A batch of RGB uint8 images of one size, planar (N x 3 x H x W, row-major), with the class
/// each image belongs to (the true class for real images, the requested class for generated).
#[derive(Clone, Debug)]
pub struct ImageBatch {
    pub height: usize,
    pub width: usize,
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub units: Vec<UnitSpan>,
    _live: LiveCount,
}

static LIVE_BATCHES: AtomicUsize = AtomicUsize::new(0);
static PEAK_LIVE_BATCHES: AtomicUsize = AtomicUsize::new(0);

/// Counts image batches alive in the process: what bounded channels are meant to bound.
#[derive(Debug)]
struct LiveCount(());

impl LiveCount {
    fn new() -> Self {
        let now = LIVE_BATCHES.fetch_add(1, Ordering::SeqCst) + 1;
        PEAK_LIVE_BATCHES.fetch_max(now, Ordering::SeqCst);
        metrics::gauge!(crate::telemetry::IMAGE_BATCHES_LIVE).set(now as f64);
        LiveCount(())
    }
}

impl Clone for LiveCount {
    fn clone(&self) -> Self {
        LiveCount::new()
    }
}

impl Drop for LiveCount {
    fn drop(&mut self) {
        let now = LIVE_BATCHES.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::gauge!(crate::telemetry::IMAGE_BATCHES_LIVE).set(now as f64);
    }
}

/// Image batches alive now, and the most alive at once since [`reset_peak_live_batches`].
pub fn live_batches() -> (usize, usize) {
    (LIVE_BATCHES.load(Ordering::SeqCst), PEAK_LIVE_BATCHES.load(Ordering::SeqCst))
}

pub fn reset_peak_live_batches() {
    PEAK_LIVE_BATCHES.store(LIVE_BATCHES.load(Ordering::SeqCst), Ordering::SeqCst);
}

impl ImageBatch {
    pub fn new(height: usize, width: usize, pixels: Vec<u8>, labels: Vec<u32>, units: Vec<UnitSpan>) -> Self {
        debug_assert_eq!(pixels.len(), labels.len() * 3 * height * width);
        ImageBatch { height, width, pixels, labels, units, _live: LiveCount::new() }
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    pub fn image_len(&self) -> usize {
        3 * self.height * self.width
    }

    /// The planar pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// The oracle's decision for each image of a batch.
#[derive(Clone, Debug)]
pub struct PredictionBatch {
    pub labels: Vec<u32>,
    pub predicted: Vec<u32>,
    pub units: Vec<UnitSpan>,
}

/// Inception outputs for each image of a batch: pool3 features (`n x feature_dim`) and the
/// unbiased logits the Inception Score uses (`n x logit_dim`), row-major.
#[derive(Clone, Debug)]
pub struct FeatureBatch {
    pub labels: Vec<u32>,
    pub units: Vec<UnitSpan>,
    pub feature_dim: usize,
    pub features: Vec<f32>,
    pub logit_dim: usize,
    pub logits: Vec<f32>,
}

/// A batch type of the data plane, as the sink driver takes it out of a payload.
pub trait Batch: Send + Sync + 'static {
    /// What messages call it ("a non-{NAME} payload").
    const NAME: &'static str;
    fn of(payload: &Payload) -> Option<&Self>;
    fn units(&self) -> &[UnitSpan];
}

impl Batch for ImageBatch {
    const NAME: &'static str = "image";
    fn of(payload: &Payload) -> Option<&Self> {
        match payload {
            Payload::Images(b) => Some(b),
            _ => None,
        }
    }
    fn units(&self) -> &[UnitSpan] {
        &self.units
    }
}

impl Batch for PredictionBatch {
    const NAME: &'static str = "prediction";
    fn of(payload: &Payload) -> Option<&Self> {
        match payload {
            Payload::Predictions(b) => Some(b),
            _ => None,
        }
    }
    fn units(&self) -> &[UnitSpan] {
        &self.units
    }
}

impl Batch for FeatureBatch {
    const NAME: &'static str = "feature";
    fn of(payload: &Payload) -> Option<&Self> {
        match payload {
            Payload::Features(b) => Some(b),
            _ => None,
        }
    }
    fn units(&self) -> &[UnitSpan] {
        &self.units
    }
}

/// One message on an edge. Fan-out clones the `Arc`, never the pixels.
#[derive(Clone, Debug)]
pub enum Payload {
    Images(Arc<ImageBatch>),
    Predictions(Arc<PredictionBatch>),
    Features(Arc<FeatureBatch>),
    Summary(Arc<Summary>),
}

impl Payload {
    /// Number of images the payload stands for (0 for summaries).
    pub fn image_count(&self) -> usize {
        match self {
            Payload::Images(b) => b.len(),
            Payload::Predictions(p) => p.labels.len(),
            Payload::Features(f) => f.labels.len(),
            Payload::Summary(_) => 0,
        }
    }
}
