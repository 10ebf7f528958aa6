//! What travels on the data plane: batches of images or predictions, tagged with the work units
//! they carry, and the summaries accumulators hand to the report.
//!
//! A *unit* is the grain of exactly-once accounting (DESIGN.md §2): a fixed chunk of one class's
//! images from one origin. Batches only ever hold whole units, so an accumulator can apply or
//! skip a unit atomically by its id, whatever re-batching happened upstream.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Where the images of a unit come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Real,
    Generated,
}

impl Origin {
    pub const ALL: [Origin; 2] = [Origin::Real, Origin::Generated];

    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Real => "real",
            Origin::Generated => "generated",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Origin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "real" => Ok(Origin::Real),
            "generated" => Ok(Origin::Generated),
            other => Err(format!("origin \"{other}\": expected \"real\" or \"generated\"")),
        }
    }
}

/// Identity of a work unit: the `index`-th chunk of class `class` from `origin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnitId {
    pub origin: Origin,
    pub class: u32,
    pub index: u32,
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.origin, self.class, self.index)
    }
}

/// The images `[start, start + len)` of a batch belong to unit `id`. `first_position` is the
/// position of the unit's first image in its class's deterministic order (file-name order for
/// folders), which order-dependent metrics such as the Inception Score splits rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSpan {
    pub id: UnitId,
    pub start: usize,
    pub len: usize,
    pub first_position: u64,
}

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

impl UnitSpan {
    /// Position in its class's deterministic order of the batch image `i` (inside this span).
    pub fn position_of(&self, i: usize) -> u64 {
        self.first_position + (i - self.start) as u64
    }
}

/// A finished accumulator's result, handed downstream to the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Summary {
    // Boxed: summaries are few (one per stage per run) and the variants differ a lot in size.
    Rca(Box<crate::stages::rca::RcaResult>),
    Source(crate::stages::image_folder::SourceResult),
    Sampler(Box<crate::stages::ddpm_sampler::SamplerResult>),
    Lpips(crate::stages::lpips_diversity::LpipsResult),
    Fid(Box<crate::stages::fid::FidResult>),
    InceptionScore(crate::metrics::inception_score::InceptionScore),
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
