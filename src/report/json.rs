//! `report.json`: the machine-readable result of a run. Its schema is stable and documented in
//! the README ("Report schema"); `schema_version` changes when a field changes meaning.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::metrics::inception_score::InceptionScore;
use crate::metrics::rca::{ClassificationSummary, RcaSummary};
use crate::report::results::EarlyStopResult;
use crate::report::results::FidResult;
use crate::report::results::KidResult;
use crate::report::results::LpipsResult;
use crate::report::results::PrecisionRecallResult;
use crate::report::results::SamplerResult;
use crate::report::results::SourceResult;

pub const SCHEMA_VERSION: u32 = 1;

/// Whether the run covered all its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every planned image was evaluated.
    Complete,
    /// A stop was requested; the numbers cover only the images evaluated before it.
    Interrupted,
    /// Merged (`rcaflow merge`) from shards that had not all finished: the numbers cover only
    /// the units they had done (merge.json says how many).
    Partial,
}

/// Time a stage spent and what went through it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StageTiming {
    pub busy_seconds: f64,
    pub busy_ratio: f64,
    pub images_in: u64,
    pub images_out: u64,
    pub batches: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Timing {
    pub wall_seconds: f64,
    /// The sampler's span, first unit started to last unit done (null without a sampler).
    pub generation_seconds: Option<f64>,
    /// Busy time of the evaluation stages (every stage but sources and the report), summed.
    pub evaluation_seconds: f64,
    pub stages: BTreeMap<String, StageTiming>,
}

/// The whole report. Per-class arrays are in the order of `classes`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub schema_version: u32,
    pub status: RunStatus,
    pub rcaflow_version: String,
    /// The topology file the run used, or the command that built it.
    pub topology: String,
    pub classes: Vec<String>,
    /// Oracle on real held-out images (`null` when no rca stage ran).
    pub real: Option<ClassificationSummary>,
    /// Oracle on generated images, labelled with the class the generator was asked for.
    pub generated: Option<ClassificationSummary>,
    pub rca: Option<RcaSummary>,
    /// `images`, or `baseline <file>` when the real side came from a baseline file.
    pub real_source: Option<String>,
    /// Frechet Inception Distance (`null` without a fid sink).
    pub fid: Option<FidResult>,
    /// Inception Score of the generated images (`null` without an inception_score sink).
    pub inception_score: Option<InceptionScore>,
    /// Kernel Inception Distance (`null` without a kid sink).
    #[serde(default)]
    pub kid: Option<KidResult>,
    /// k-NN precision, recall, density and coverage (`null` without a precision_recall sink).
    #[serde(default)]
    pub precision_recall: Option<PrecisionRecallResult>,
    /// Why sampling stopped before the plan was done (the `rca` sink's `stop_when`); `null`
    /// unless the stop fired.
    #[serde(default)]
    pub early_stop: Option<EarlyStopResult>,
    /// Mean LPIPS distance between same-class generated pairs (`null` without that stage).
    pub lpips_diversity: Option<LpipsResult>,
    /// What each image source read, by component id.
    pub inputs: BTreeMap<String, SourceResult>,
    /// What the sampler generated, by component id (empty without a sampler).
    pub generation: BTreeMap<String, SamplerResult>,
    pub timing: Timing,
    /// Figure files in the run directory, by figure name.
    pub figures: BTreeMap<String, PathBuf>,
}
