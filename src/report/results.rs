//! The results stages hand to the report, one type per kind of stage, and [`Summary`], the
//! closed set of them that travels on the data plane's summary edges. They are what report.json
//! is made of (README "Report schema"), so they live with the report; the runtime carries them
//! without knowing what is inside.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::metrics::diversity::Diversity;
use crate::metrics::inception_score::InceptionScore;
use crate::metrics::rca::{ClassificationSummary, Interval, RcaSummary};
use crate::models::lpips::LpipsNet;
use crate::models::schedulers::SchedulerKind;
use crate::units::{Origin, UnitId};

/// A finished stage's result, handed downstream to the report and returned to the caller.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Summary {
    // Boxed: summaries are few (one per stage per run) and the variants differ a lot in size.
    Rca(Box<RcaResult>),
    Source(SourceResult),
    Sampler(Box<SamplerResult>),
    Lpips(LpipsResult),
    Fid(Box<FidResult>),
    InceptionScore(InceptionScore),
    Kid(Box<KidResult>),
    PrecisionRecall(Box<PrecisionRecallResult>),
}

/// What the rca sink hands to the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RcaResult {
    pub real: ClassificationSummary,
    pub generated: ClassificationSummary,
    pub rca: RcaSummary,
    /// "images" or the baseline file the real side came from.
    pub real_source: String,
    pub units_applied: usize,
    pub duplicate_units_ignored: u64,
    /// Why sampling stopped before the plan was done (`stop_when`); `None` unless it fired.
    #[serde(default)]
    pub early_stop: Option<EarlyStopResult>,
}

/// The `rca` sink's `stop_when` fired: the rule, where it held, and what each class used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopResult {
    /// The rule: every class's generated-recall Wilson 95% interval at most this half-width...
    pub ci_half_width: f64,
    /// ...with at least this many images.
    pub min_per_class: u64,
    /// The unit after which the rule first held, `generated/CLASS/INDEX` (classes interleaved,
    /// unit by unit): the last one used.
    pub last_unit: String,
    pub units_used: usize,
    pub images_used: u64,
    pub images_planned: u64,
    pub per_class: Vec<EarlyStopClass>,
}

/// One class at the stop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopClass {
    pub images: u64,
    pub planned: u64,
    /// Generated recall (the oracle's recall on this class's generated images).
    pub recall: f64,
    /// Its Wilson 95% interval and that interval's half-width, `(high - low) / 2`.
    pub ci95: Interval,
    pub half_width: f64,
}

/// A file that could not be used, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BadFile {
    pub path: PathBuf,
    pub error: String,
}

/// What a source read: published for the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceResult {
    pub origin: Origin,
    pub path: PathBuf,
    /// Image files found, per class.
    pub files: Vec<u64>,
    /// Images decoded and sent, per class.
    pub decoded: Vec<u64>,
    pub unreadable: Vec<BadFile>,
    /// Stopped early by a stop request.
    pub stopped_early: bool,
}

/// Samples per class kept for the report's grid.
pub const GRID_COLUMNS: usize = 8;

/// The first images of each class, for the report's sample grid (not in report.json).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SampleGrid {
    pub height: usize,
    pub width: usize,
    /// Per class, planar RGB images by position (`None` until generated).
    pub per_class: Vec<Vec<Option<Vec<u8>>>>,
}

/// What the sampler did: published for the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SamplerResult {
    pub unet: PathBuf,
    pub scheduler: SchedulerKind,
    pub steps: usize,
    pub eta: f64,
    pub seed: u64,
    pub replicas: usize,
    pub unit_size: usize,
    pub planned: Vec<u64>,
    pub generated: Vec<u64>,
    pub units: usize,
    /// Images with a NaN or infinite value before quantisation (sent as quantised, and counted).
    pub nonfinite_images: u64,
    /// From the first unit's start to the last unit's end.
    pub generation_seconds: f64,
    /// Time spent denoising, summed over replicas.
    pub busy_seconds: f64,
    pub images_per_second: Option<f64>,
    /// Stopped by a stop request, or by the early stop, before the plan was done.
    pub stopped_early: bool,
    #[serde(skip)]
    pub grid: SampleGrid,
    /// `nonfinite_images` by unit (what an early stop's cut needs).
    #[serde(skip)]
    pub nonfinite_units: BTreeMap<UnitId, u64>,
}

impl SamplerResult {
    /// The sampler's account cut to the units an early stop used: the first `images[c]` of each
    /// class (the units it sampled past the stop, in flight when it fired, are not counted).
    pub fn cut_to(&mut self, stop: &EarlyStopResult) {
        let used: Vec<u64> = stop.per_class.iter().map(|c| c.images).collect();
        let inside = |id: &UnitId| used.get(id.class as usize).is_some_and(|&n| (id.index as u64) * (self.unit_size as u64) < n);
        self.nonfinite_images = self.nonfinite_units.iter().filter(|(id, _)| inside(id)).map(|(_, n)| n).sum();
        self.generated = used.clone();
        self.units = stop.units_used;
        self.stopped_early = true;
        for (row, &n) in self.grid.per_class.iter_mut().zip(&used) {
            for slot in row.iter_mut().skip(n as usize) {
                *slot = None;
            }
        }
    }
}

/// What the report shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LpipsResult {
    pub net: LpipsNet,
    #[serde(flatten)]
    pub diversity: Diversity,
    /// Pairs asked for per class (fewer are used where a class has fewer distinct pairs).
    pub pairs_requested: usize,
}

/// What the report shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FidResult {
    /// The distance; `null` when a side has fewer than 2 images.
    pub value: Option<f64>,
    pub real_images: u64,
    pub generated_images: u64,
    /// The `.npz` the real statistics came from, if not from real images.
    pub reference: Option<PathBuf>,
    pub feature_dim: usize,
    /// A side has no more images than feature dimensions: its covariance is singular and the
    /// value is biased upwards (pytorch-fid computes it the same way; compare only like with like).
    pub rank_deficient: bool,
    /// Images whose features were not finite, left out.
    pub nonfinite_images: u64,
    /// With `per_class`: the FID of each class's generated images against its real images
    /// (`null` where a side has fewer than 2 images); `null` without `per_class`.
    pub per_class: Option<Vec<Option<f64>>>,
    /// Mean of the per-class values that exist.
    pub per_class_mean: Option<f64>,
    /// With `per_class`: whether a class's side has no more images than feature dimensions.
    pub per_class_rank_deficient: Option<Vec<bool>>,
}

/// KID mean and standard deviation over subsets (one class, or all images).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeanStd {
    pub mean: f64,
    pub std: f64,
}

/// What the kid sink hands to the report (torch-fidelity 0.4 conventions, src/metrics/kid.rs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KidResult {
    /// `null` when a side has fewer than 2 images.
    pub mean: Option<f64>,
    pub std: Option<f64>,
    pub subsets: usize,
    /// The subset size used: the requested one, clipped to the smaller side.
    pub subset_size: usize,
    pub subset_size_requested: usize,
    pub seed: u64,
    /// Why `subset_size` differs from the requested one, when it does.
    pub note: Option<String>,
    pub real_images: u64,
    pub generated_images: u64,
    /// With `per_class`: KID of each class's generated images against its real images (subset
    /// size clipped per class; `null` where a side has fewer than 2); `null` without it.
    pub per_class: Option<Vec<Option<MeanStd>>>,
    pub per_class_mean: Option<f64>,
    pub nonfinite_images: u64,
}

/// Precision, recall, density and coverage of one comparison.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrdcValues {
    pub precision: f64,
    pub recall: f64,
    pub density: f64,
    pub coverage: f64,
}

/// What the precision_recall sink hands to the report (torch-fidelity `prc` and prdc,
/// src/metrics/prc.rs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrecisionRecallResult {
    /// `null` (all four) when a side has no more than `k` images.
    pub precision: Option<f64>,
    pub recall: Option<f64>,
    pub density: Option<f64>,
    pub coverage: Option<f64>,
    pub k: usize,
    pub real_images: u64,
    pub generated_images: u64,
    /// With `per_class`: the four figures of each class's generated images against its real
    /// images (`null` where a side has no more than `k`); `null` without it.
    pub per_class: Option<Vec<Option<PrdcValues>>>,
    pub nonfinite_images: u64,
}
