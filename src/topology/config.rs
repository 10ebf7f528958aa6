//! The topology file's structs: `[run]`, `[sources.ID]`, `[transforms.ID]`, `[sinks.ID]`, in the
//! style of Vector's configuration. Component types form one closed serde enum
//! ([`ComponentKind`]) whose variants deny unknown fields; the keys every component shares
//! (`inputs`, `capacity`, `restart`) are taken off first, so each error can name its component.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::models::lpips::LpipsNet;
use crate::models::preprocess::Normalization;
use crate::models::resnet::{ResNetArch, Stem};
use crate::runtime::batch::Origin;

/// Default capacity, in batches, of every edge that does not set its own.
pub const DEFAULT_CAPACITY: usize = 4;

/// `[run]`: settings of the graph as a whole.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// Run directory (report and state); relative to the topology file.
    pub dir: Option<PathBuf>,
    /// Class names in label order; when absent they come from the image folders.
    pub classes: Option<Vec<String>>,
    /// Edge capacity, in batches, for components that set none.
    pub default_capacity: Option<usize>,
}

/// The section a component is declared in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Section {
    Sources,
    Transforms,
    Sinks,
}

impl Section {
    pub fn as_str(self) -> &'static str {
        match self {
            Section::Sources => "sources",
            Section::Transforms => "transforms",
            Section::Sinks => "sinks",
        }
    }
}

/// What flows on an edge; validation checks each input produces what its consumer accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    Images,
    Predictions,
    Features,
    Summaries,
}

impl fmt::Display for DataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DataKind::Images => "images",
            DataKind::Predictions => "predictions",
            DataKind::Features => "inception features",
            DataKind::Summaries => "summaries",
        })
    }
}

fn default_unit_size() -> usize {
    64
}

fn default_batch_size() -> usize {
    64
}

fn default_true() -> bool {
    true
}

/// `image_folder` source: an ImageFolder tree (`root/<class>/*.png|jpg|jpeg`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFolderConfig {
    pub path: PathBuf,
    pub origin: Origin,
    /// Fail the run on the first unreadable image instead of counting and skipping it.
    #[serde(default)]
    pub strict: bool,
    /// Images per work unit (the grain of exactly-once accounting).
    #[serde(default = "default_unit_size")]
    pub unit_size: usize,
}

fn default_replicas() -> usize {
    1
}

pub use crate::models::schedulers::SchedulerKind;

/// `ddpm_sampler` source: a class-conditional diffusers UNet2DModel sampled with DDPM or DDIM,
/// `per_class` images of every class, cut into units of `unit_size` (DESIGN.md §2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DdpmSamplerConfig {
    /// A diffusers model folder: config.json, diffusion_pytorch_model.safetensors and, if present,
    /// scheduler_config.json (else the scheduler's diffusers defaults).
    pub unet: PathBuf,
    #[serde(default, deserialize_with = "from_str")]
    pub scheduler: SchedulerKind,
    /// Denoising steps (default: every training timestep for DDPM, 50 for DDIM).
    pub steps: Option<usize>,
    /// DDIM's eta (0: deterministic given x_T); DDPM ignores it.
    #[serde(default)]
    pub eta: f64,
    pub per_class: u64,
    /// Images per unit: the grain of planning, seeding, batching and exactly-once accounting.
    #[serde(default = "default_unit_size")]
    pub unit_size: usize,
    /// Run seed: each unit's noise derives from (seed, class, index) alone.
    #[serde(default)]
    pub seed: u64,
    /// Sampler threads sharing the plan, each with its own copy of the model.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

/// `save_images` sink: writes generated images as PNGs, `path/<class>/<position>.png`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveImagesConfig {
    pub path: PathBuf,
}

/// `batcher` transform: groups whole units into batches of about `batch_size` images.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatcherConfig {
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

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
}

/// A string field parsed with `FromStr`, so a bad value gets that parser's message (which says
/// what the field is) rather than serde's bare "unknown variant".
fn from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
}

/// `rca` sink: confusion matrices per origin, accuracies and Relative Classification Accuracy.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RcaConfig {
    /// A baseline written by `rcaflow baseline`, used instead of real images.
    pub baseline: Option<PathBuf>,
}

/// `inception_v3` transform: pytorch-fid's InceptionV3 (pool3 features and IS logits).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InceptionV3Config {
    /// pytorch-fid weights; when absent, `pt_inception-2015-12-05-6726825d.pth` in the torch hub cache.
    pub weights: Option<PathBuf>,
}

fn default_fid_interval() -> f64 {
    60.0
}

fn default_splits() -> usize {
    10
}

/// `fid` sink: Frechet Inception Distance between generated and real features (or reference
/// statistics in pytorch-fid's `.npz` format).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FidConfig {
    /// `.npz` with `mu` and `sigma` (pytorch-fid / `rcaflow fid-stats`), instead of real images.
    pub reference: Option<PathBuf>,
    /// Seconds between live recomputations (each costs a 2048x2048 matrix square root).
    #[serde(default = "default_fid_interval")]
    pub interval_secs: f64,
}

/// `inception_score` sink: Inception Score of the generated images.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InceptionScoreConfig {
    #[serde(default = "default_splits")]
    pub splits: usize,
}

fn default_pairs() -> usize {
    1000
}

/// `lpips_diversity` sink: mean LPIPS distance between pairs of generated images per class.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LpipsDiversityConfig {
    #[serde(deserialize_with = "from_str")]
    pub net: LpipsNet,
    /// torchvision alexnet/vgg16 state_dict; when absent, its standard name in the torch hub cache.
    pub backbone: Option<PathBuf>,
    /// lpips v0.1 lin weights (`alex.pth` / `vgg.pth`); when absent, looked up the same way.
    pub lin: Option<PathBuf>,
    /// Pairs per class: all distinct pairs when a class has no more, else the disjoint pairs
    /// (0,1), (2,3), ... of its deterministic order.
    #[serde(default = "default_pairs")]
    pub pairs: usize,
}

/// `report` sink: writes report.json, report.md and figures into the run directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    #[serde(default = "default_true")]
    pub figures: bool,
}

/// Every component type rcaflow knows: the closed list a topology may use.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ComponentKind {
    ImageFolder(ImageFolderConfig),
    DdpmSampler(DdpmSamplerConfig),
    Batcher(BatcherConfig),
    OracleClassifier(OracleClassifierConfig),
    Rca(RcaConfig),
    InceptionV3(InceptionV3Config),
    Fid(FidConfig),
    InceptionScore(InceptionScoreConfig),
    LpipsDiversity(LpipsDiversityConfig),
    SaveImages(SaveImagesConfig),
    Report(ReportConfig),
}

impl ComponentKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ComponentKind::ImageFolder(_) => "image_folder",
            ComponentKind::DdpmSampler(_) => "ddpm_sampler",
            ComponentKind::SaveImages(_) => "save_images",
            ComponentKind::Batcher(_) => "batcher",
            ComponentKind::OracleClassifier(_) => "oracle_classifier",
            ComponentKind::Rca(_) => "rca",
            ComponentKind::InceptionV3(_) => "inception_v3",
            ComponentKind::Fid(_) => "fid",
            ComponentKind::InceptionScore(_) => "inception_score",
            ComponentKind::LpipsDiversity(_) => "lpips_diversity",
            ComponentKind::Report(_) => "report",
        }
    }

    /// The section this type must be declared in.
    pub fn section(&self) -> Section {
        match self {
            ComponentKind::ImageFolder(_) | ComponentKind::DdpmSampler(_) => Section::Sources,
            ComponentKind::Batcher(_) | ComponentKind::OracleClassifier(_) | ComponentKind::InceptionV3(_) => Section::Transforms,
            ComponentKind::Rca(_)
            | ComponentKind::Fid(_)
            | ComponentKind::InceptionScore(_)
            | ComponentKind::LpipsDiversity(_)
            | ComponentKind::SaveImages(_)
            | ComponentKind::Report(_) => Section::Sinks,
        }
    }

    /// What this component accepts on its inputs (`None` for sources).
    pub fn accepts(&self) -> Option<DataKind> {
        match self {
            ComponentKind::ImageFolder(_) | ComponentKind::DdpmSampler(_) => None,
            ComponentKind::Batcher(_)
            | ComponentKind::OracleClassifier(_)
            | ComponentKind::InceptionV3(_)
            | ComponentKind::LpipsDiversity(_)
            | ComponentKind::SaveImages(_) => Some(DataKind::Images),
            ComponentKind::Rca(_) => Some(DataKind::Predictions),
            ComponentKind::Fid(_) | ComponentKind::InceptionScore(_) => Some(DataKind::Features),
            ComponentKind::Report(_) => Some(DataKind::Summaries),
        }
    }

    /// What this component emits (`None` for terminal sinks).
    pub fn produces(&self) -> Option<DataKind> {
        match self {
            ComponentKind::ImageFolder(_) | ComponentKind::DdpmSampler(_) | ComponentKind::Batcher(_) => Some(DataKind::Images),
            ComponentKind::OracleClassifier(_) => Some(DataKind::Predictions),
            ComponentKind::InceptionV3(_) => Some(DataKind::Features),
            ComponentKind::Rca(_) | ComponentKind::Fid(_) | ComponentKind::InceptionScore(_) | ComponentKind::LpipsDiversity(_) => {
                Some(DataKind::Summaries)
            }
            ComponentKind::SaveImages(_) | ComponentKind::Report(_) => None,
        }
    }

    /// The origin of the images a source emits (`None` for other components).
    pub fn source_origin(&self) -> Option<Origin> {
        match self {
            ComponentKind::ImageFolder(c) => Some(c.origin),
            ComponentKind::DdpmSampler(_) => Some(Origin::Generated),
            _ => None,
        }
    }

    /// Whether leaving the output unconsumed is a mistake (images or predictions nobody reads)
    /// rather than a choice (a metric whose summary is only returned to the caller).
    pub fn needs_consumer(&self) -> bool {
        matches!(self.produces(), Some(DataKind::Images | DataKind::Predictions | DataKind::Features))
    }

    /// Makes relative paths relative to `base` (the topology file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| *p = resolve(base, p);
        match self {
            ComponentKind::ImageFolder(c) => join(&mut c.path),
            ComponentKind::DdpmSampler(c) => join(&mut c.unet),
            ComponentKind::SaveImages(c) => join(&mut c.path),
            ComponentKind::OracleClassifier(c) => join(&mut c.weights),
            ComponentKind::Rca(c) => c.baseline.iter_mut().for_each(join),
            ComponentKind::InceptionV3(c) => c.weights.iter_mut().for_each(join),
            ComponentKind::Fid(c) => c.reference.iter_mut().for_each(join),
            ComponentKind::LpipsDiversity(c) => c.backbone.iter_mut().chain(c.lin.iter_mut()).for_each(join),
            ComponentKind::Batcher(_) | ComponentKind::InceptionScore(_) | ComponentKind::Report(_) => {}
        }
    }
}

/// One declared component, with the keys all components share taken off.
#[derive(Clone, Debug, Serialize)]
pub struct Component {
    pub id: String,
    pub section: Section,
    pub kind: ComponentKind,
    pub inputs: Vec<String>,
    /// Capacity, in batches, of each of this component's input edges.
    pub capacity: usize,
    /// Times the stage is rebuilt after a failure before the run stops (`restart = { max = N }`).
    pub restart: u32,
}

impl Component {
    /// `sections.id`, the name every message about this component starts with.
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.section.as_str(), self.id)
    }
}

/// The raw file: sections of untyped tables, so one bad component cannot hide the others.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTopology {
    #[serde(default)]
    pub run: RunSection,
    #[serde(default)]
    pub sources: BTreeMap<String, toml::Table>,
    #[serde(default)]
    pub transforms: BTreeMap<String, toml::Table>,
    #[serde(default)]
    pub sinks: BTreeMap<String, toml::Table>,
}

/// Turns one raw table into a [`Component`], pushing every problem found onto `errors`.
pub(crate) fn parse_component(
    section: Section,
    id: &str,
    mut table: toml::Table,
    default_capacity: usize,
    errors: &mut Vec<String>,
) -> Option<Component> {
    let name = format!("{}.{}", section.as_str(), id);
    let before = errors.len();
    let inputs = match table.remove("inputs") {
        None => Vec::new(),
        Some(toml::Value::Array(items)) => {
            let mut inputs = Vec::new();
            for item in items {
                match item {
                    toml::Value::String(s) => inputs.push(s),
                    other => errors.push(format!("{name}: `inputs` entries must be component ids (strings), found {}", other.type_str())),
                }
            }
            inputs
        }
        Some(other) => {
            errors.push(format!("{name}: `inputs` must be an array of component ids, found {}", other.type_str()));
            Vec::new()
        }
    };
    // A bad `inputs` drops the component (its edges are unknown); a bad capacity does not: the
    // default stands in, so the component's other checks still run.
    let inputs_ok = errors.len() == before;
    let capacity = match table.remove("capacity") {
        None => default_capacity,
        Some(toml::Value::Integer(0)) => {
            errors.push(format!("{name}: capacity must be at least 1 batch, found 0"));
            default_capacity
        }
        Some(toml::Value::Integer(n)) if n > 0 => n as usize,
        Some(other) => {
            errors.push(format!("{name}: capacity must be a positive integer, found {other}"));
            default_capacity
        }
    };
    let restart = parse_restart(&name, table.remove("restart"), table.get("type"), errors);
    match table.get("type") {
        None => {
            errors.push(format!("{name}: `type` is missing; expected one of {}", type_list()));
            return None;
        }
        Some(toml::Value::String(t)) if !type_list().split(", ").any(|known| known == t) => {
            errors.push(format!("{name}: unknown type \"{t}\"; expected one of {}", type_list()));
            return None;
        }
        Some(_) => {}
    }
    let kind: ComponentKind = match toml::Value::Table(table).try_into() {
        Ok(kind) => kind,
        Err(e) => {
            errors.push(format!("{name}: {}", one_line(&e.to_string())));
            return None;
        }
    };
    inputs_ok.then(|| Component { id: id.to_string(), section, kind, inputs, capacity, restart })
}

/// Types whose stage may be restarted after a failure: stateless per batch, so redoing the
/// batch in flight is all a restart needs. Sources, the batcher (it holds partial batches) and
/// the accumulating sinks keep state a crash loses; they resume from checkpoints instead.
pub const RESTARTABLE_TYPES: [&str; 2] = ["oracle_classifier", "inception_v3"];

/// `restart = { max = N }`: how often the stage is rebuilt after a panic or an error.
fn parse_restart(name: &str, value: Option<toml::Value>, kind: Option<&toml::Value>, errors: &mut Vec<String>) -> u32 {
    let Some(value) = value else { return 0 };
    let max = match &value {
        toml::Value::Table(t) if t.len() == 1 => match t.get("max") {
            Some(toml::Value::Integer(n)) if *n >= 0 && *n <= u32::MAX as i64 => Some(*n as u32),
            _ => None,
        },
        _ => None,
    };
    let Some(max) = max else {
        errors.push(format!("{name}: restart must be a table {{ max = N }} with N >= 0, found {value}"));
        return 0;
    };
    match kind.and_then(toml::Value::as_str) {
        Some(t) if max > 0 && !RESTARTABLE_TYPES.contains(&t) => {
            errors.push(format!(
                "{name}: restart is for stateless transforms ({}); a {t} keeps state a restart would lose, and resumes from its checkpoint instead",
                RESTARTABLE_TYPES.join(", ")
            ));
            0
        }
        _ => max,
    }
}

fn type_list() -> &'static str {
    "image_folder, ddpm_sampler, batcher, oracle_classifier, inception_v3, rca, fid, inception_score, lpips_diversity, save_images, report"
}

/// serde/toml messages sometimes span lines; a config error is one line.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `path` relative to `base`, with `a/../` folded away (lexically: symlinks are not followed),
/// so messages and reports show `example/real` rather than `topology/../example/real`.
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    use std::path::Component as C;
    let joined = if path.is_relative() { base.join(path) } else { path.to_path_buf() };
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            C::CurDir => {}
            C::ParentDir if matches!(out.components().next_back(), Some(C::Normal(_))) => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}
