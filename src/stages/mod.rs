//! One home per component type (DESIGN.md §6): each file (or folder) here holds a type's config
//! struct, what it accepts and produces, its checks, the files it reads, how it describes
//! itself, its build step and its run loop, all through one trait, [`Component`]. The
//! registration list at the bottom of this file generates the closed topology enum
//! ([`ComponentKind`], serde-checked, DESIGN.md §3), the type list and every dispatch: a type
//! that is registered but lacks a piece does not compile.
//!
//! [`build`] is the step between validation and running (as Vector's topology builder): every
//! component loads and checks its weights, files and devices, every error of every component is
//! collected, and nothing runs unless all of them built.

pub mod batcher;
pub mod ddpm_sampler;
pub mod fid;
pub mod image_folder;
pub mod inception;
pub mod inception_score;
pub mod kid;
pub mod lpips_diversity;
pub mod oracle;
pub mod precision_recall;
pub mod rca;
pub mod report;
pub mod save_images;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::models::device::DeviceSpec;
use crate::models::threads::StagePool;
use crate::runtime::merge::{MergeError, ShardFold};
use crate::runtime::stage::{Restart, Stage};
use crate::runtime::StageSpec;
use crate::topology::config::one_line;
use crate::topology::{Checks, ComponentType, DataKind, GraphFacts, HashedInput, NamedClasses, Section, TopologyError, TypeInfo};
use crate::units::{Origin, UnitPlan};

/// A validated topology of rcaflow's component types.
pub type Graph = crate::topology::Graph<ComponentKind>;

/// One declared component of rcaflow's types.
pub type Component = crate::topology::Component<ComponentKind>;

/// Everything a component type is, beside its config struct (which is `Self`). No method has
/// a default: a new type must say each thing, or it does not compile.
pub trait ComponentConfig: Clone + std::fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static {
    const SECTION: Section;
    const ACCEPTS: Option<DataKind>;
    const PRODUCES: Option<DataKind>;
    /// Stateless per batch: may be rebuilt after a failure (`restart = { max = N }`).
    const RESTARTABLE: bool;
    /// Folds units into results: what run progress counts.
    const ACCUMULATES: bool;
    /// Checkpoints the units it holds: a resumed source skips what every holder has.
    const HOLDS_UNITS: bool;

    /// The origin of the images a source emits (`None` for other components).
    fn source_origin(&self) -> Option<Origin>;
    /// Makes relative paths relative to `base` (the topology file's directory).
    fn resolve_paths(&mut self, base: &Path);
    /// Its own settings and the files it names, without loading them.
    fn check(&self, checks: &mut Checks);
    /// The class names it lists (image folders), problems going to `checks`.
    fn class_names(&self, checks: &mut Checks) -> Option<NamedClasses>;
    /// Checks that need the rest of the graph: the class list, real images upstream.
    fn check_in_graph(&self, facts: &GraphFacts, checks: &mut Checks);
    /// One line for `rcaflow validate`.
    fn describe(&self) -> String;
    /// How a source cuts its images into units (`None` for other components).
    fn plan(&self, classes: &[String]) -> Result<Option<UnitPlan>, String>;
    /// The files and listings its results depend on (hashed into the run manifest).
    fn hashed_inputs(&self, classes: &[String]) -> Result<Vec<HashedInput>, String>;
    /// Loads and checks what the stage needs (weights, files) and returns it ready to run.
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn Stage>, String>;
    /// `rcaflow merge`: folds the checkpoint of component `id` of every shard into the merged
    /// run directory ([`ShardFold::fold`] with its state type); returns the units it holds.
    fn fold_shards(&self, id: &str, fold: &ShardFold) -> Result<usize, MergeError>;
}

/// What a component's build may use besides its own config.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// Where the topology came from (a file path, or the command that built it).
    pub label: String,
    /// Class names in label order.
    pub classes: Arc<Vec<String>>,
    /// Where model stages run unless their component sets `device` (`--device`, else
    /// `[runtime] device`).
    pub device: DeviceSpec,
    /// Each source's unit plan, by component id ([`crate::topology::Graph::plans`]).
    pub plans: Arc<BTreeMap<String, UnitPlan>>,
    /// MiB of features a kid or precision_recall sink keeps in memory before it spills them to
    /// its file in the run directory (`[runtime] feature_memory_mib`).
    pub feature_memory_mib: u64,
}

impl BuildContext {
    /// Opens the device a model component runs on: its own `device`, else the default. Each
    /// stage opens its own (on a GPU: its own stream).
    pub fn open_device(&self, own: Option<DeviceSpec>) -> Result<candle_core::Device, String> {
        self.device_of(own).open().map_err(|e| match own {
            Some(_) => format!("device: {e}"),
            None => format!("default device (--device or [runtime] device): {e}"),
        })
    }

    /// Where a component with device option `own` runs.
    pub fn device_of(&self, own: Option<DeviceSpec>) -> DeviceSpec {
        own.unwrap_or(self.device)
    }

    /// The plan of the source of `origin` images (validation allows one source per origin).
    pub fn plan_of(&self, origin: Origin) -> Option<&UnitPlan> {
        self.plans.values().find(|p| p.origin == origin)
    }
}

/// Whether run progress counts the images a stage of type `info` takes in: the sinks that fold
/// units into results; in a topology without any (generation only: a sampler into
/// `save_images`), the sinks that take images, so its progress is images saved, not 0.
pub fn counts_progress(info: &TypeInfo, any_accumulates: bool) -> bool {
    if any_accumulates {
        info.accumulates
    } else {
        info.produces.is_none() && info.accepts == Some(DataKind::Images)
    }
}

/// Builds every stage of a validated graph, in data-flow order. Every component's build runs;
/// their errors are returned together, each naming its component, as validation's are.
pub fn build(graph: &Graph, cx: &BuildContext) -> Result<Vec<StageSpec>, TopologyError> {
    let mut stages = Vec::new();
    let mut errors = Vec::new();
    let any_accumulates = graph.components.iter().any(|c| c.kind.info().accumulates);
    for c in &graph.components {
        let name = c.qualified();
        let pool = match c.threads.map(|n| StagePool::new(&name, n)).transpose() {
            Ok(pool) => pool,
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        match c.kind.build(cx) {
            Ok(stage) => {
                let restart = (c.restart > 0).then(|| {
                    let (kind, cx) = (c.kind.clone(), cx.clone());
                    Restart { max: c.restart, rebuild: Box::new(move || kind.build(&cx)) }
                });
                let counts_progress = counts_progress(c.kind.info(), any_accumulates);
                stages.push(StageSpec { id: c.id.clone(), qualified: name, counts_progress, stage, restart, pool });
            }
            // One line each, whatever the loader's message looked like.
            Err(e) => errors.push(format!("{name}: {}", one_line(&e))),
        }
    }
    warn_if_oversubscribed(&stages);
    if errors.is_empty() {
        Ok(stages)
    } else {
        Err(TopologyError::Build { path: graph.label.clone(), errors })
    }
}

/// Stages given pools of their own (`threads = N`) that together have more threads than the
/// machine has cores make the kernels take turns on the cores: allowed (a user may know
/// better), but said.
fn warn_if_oversubscribed(stages: &[StageSpec]) {
    let own: usize = stages.iter().filter_map(|s| s.pool.as_ref()).map(StagePool::threads).sum();
    let cores = crate::models::threads::available_cores();
    if own > cores {
        tracing::warn!("the stages' own thread pools (`threads = N`) have {own} threads together on {cores} cores: their kernels will take turns");
    }
}

/// The [`TypeInfo`] of the config type `C` registered as `name`.
const fn type_info<C: ComponentConfig>(name: &'static str) -> TypeInfo {
    TypeInfo {
        name,
        section: C::SECTION,
        accepts: C::ACCEPTS,
        produces: C::PRODUCES,
        restartable: C::RESTARTABLE,
        accumulates: C::ACCUMULATES,
        holds_units: C::HOLDS_UNITS,
    }
}

/// Generates, from one list of `"type_name" => Variant(ConfigStruct)` lines, the closed
/// topology enum and its [`ComponentType`] implementation (every dispatch), plus `build`.
macro_rules! register_components {
    ($($name:literal => $variant:ident($config:ty)),+ $(,)?) => {
        /// Every component type rcaflow knows: the closed list a topology may use.
        #[derive(Clone, Debug, Serialize, Deserialize)]
        #[serde(tag = "type")]
        pub enum ComponentKind {
            $(#[serde(rename = $name)] $variant($config),)+
        }

        impl ComponentType for ComponentKind {
            const TYPES: &'static [TypeInfo] = &[$(type_info::<$config>($name),)+];

            fn info(&self) -> &'static TypeInfo {
                match self {
                    $(ComponentKind::$variant(_) => {
                        const INFO: TypeInfo = type_info::<$config>($name);
                        &INFO
                    })+
                }
            }
            fn source_origin(&self) -> Option<Origin> {
                match self { $(ComponentKind::$variant(c) => c.source_origin(),)+ }
            }
            fn resolve_paths(&mut self, base: &Path) {
                match self { $(ComponentKind::$variant(c) => c.resolve_paths(base),)+ }
            }
            fn check(&self, checks: &mut Checks) {
                match self { $(ComponentKind::$variant(c) => c.check(checks),)+ }
            }
            fn class_names(&self, checks: &mut Checks) -> Option<NamedClasses> {
                match self { $(ComponentKind::$variant(c) => c.class_names(checks),)+ }
            }
            fn check_in_graph(&self, facts: &GraphFacts, checks: &mut Checks) {
                match self { $(ComponentKind::$variant(c) => c.check_in_graph(facts, checks),)+ }
            }
            fn describe(&self) -> String {
                match self { $(ComponentKind::$variant(c) => c.describe(),)+ }
            }
            fn plan(&self, classes: &[String]) -> Result<Option<UnitPlan>, String> {
                match self { $(ComponentKind::$variant(c) => c.plan(classes),)+ }
            }
            fn hashed_inputs(&self, classes: &[String]) -> Result<Vec<HashedInput>, String> {
                match self { $(ComponentKind::$variant(c) => c.hashed_inputs(classes),)+ }
            }
        }

        impl ComponentKind {
            /// The component's stage, built (weights loaded and checked).
            pub fn build(&self, cx: &BuildContext) -> Result<Box<dyn Stage>, String> {
                match self { $(ComponentKind::$variant(c) => c.build(cx),)+ }
            }

            /// Folds the shards' checkpoints of component `id` into the merged directory.
            pub fn fold_shards(&self, id: &str, fold: &ShardFold) -> Result<usize, MergeError> {
                match self { $(ComponentKind::$variant(c) => c.fold_shards(id, fold),)+ }
            }
        }
    };
}

// The registration list: one line per component type, in the order `expected one of` lists them.
register_components! {
    "image_folder" => ImageFolder(image_folder::ImageFolderConfig),
    "ddpm_sampler" => DdpmSampler(ddpm_sampler::DdpmSamplerConfig),
    "batcher" => Batcher(batcher::BatcherConfig),
    "oracle_classifier" => OracleClassifier(oracle::OracleClassifierConfig),
    "inception_v3" => InceptionV3(inception::InceptionV3Config),
    "rca" => Rca(rca::RcaConfig),
    "fid" => Fid(fid::FidConfig),
    "inception_score" => InceptionScore(inception_score::InceptionScoreConfig),
    "kid" => Kid(kid::KidConfig),
    "precision_recall" => PrecisionRecall(precision_recall::PrecisionRecallConfig),
    "lpips_diversity" => LpipsDiversity(lpips_diversity::LpipsDiversityConfig),
    "save_images" => SaveImages(save_images::SaveImagesConfig),
    "report" => Report(report::ReportConfig),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_type_has_one_entry_and_a_home_section() {
        let names: std::collections::BTreeSet<&str> = ComponentKind::TYPES.iter().map(|t| t.name).collect();
        assert_eq!(names.len(), ComponentKind::TYPES.len(), "type names are unique");
        for t in ComponentKind::TYPES {
            assert_eq!(t.section == Section::Sources, t.accepts.is_none(), "{}: sources and only sources take no input", t.name);
            assert!(!(t.accumulates && !t.holds_units), "{}: an accumulator checkpoints what it holds", t.name);
        }
    }

    #[test]
    fn progress_counts_accumulators_and_without_them_the_image_sinks() {
        let info = |name: &str| ComponentKind::TYPES.iter().find(|t| t.name == name).unwrap();
        let counted = |any: bool| -> Vec<&str> {
            ComponentKind::TYPES.iter().filter(|t| counts_progress(t, any)).map(|t| t.name).collect()
        };
        assert!(counted(true).iter().all(|n| info(n).accumulates) && counted(true).contains(&"fid"));
        // Generation only (ddpm_sampler -> save_images): images saved, not a progress stuck at 0.
        assert_eq!(counted(false), vec!["save_images"]);
    }
}
