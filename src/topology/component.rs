//! What the topology knows of a component type: the [`ComponentType`] trait, implemented by the
//! closed enum that `src/stages/mod.rs` generates from its registration list. Parsing and
//! validation are written against this trait alone, so the topology layer imports nothing from
//! the stages (DESIGN.md §6) while every check still comes from the component's own file.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::config::{DataKind, Section};
use crate::units::{Origin, UnitPlan};

/// The fixed facts of one component type, one entry per registered type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeInfo {
    /// The `type = "..."` of the topology file.
    pub name: &'static str,
    /// The section the type must be declared in.
    pub section: Section,
    /// What it takes on its inputs (`None` for sources).
    pub accepts: Option<DataKind>,
    /// What it emits (`None` for terminal sinks).
    pub produces: Option<DataKind>,
    /// Stateless per batch: may be rebuilt after a failure (`restart = { max = N }`).
    pub restartable: bool,
    /// Folds units into results: what run progress counts.
    pub accumulates: bool,
    /// Checkpoints the units it holds: a resumed source skips what every holder has.
    pub holds_units: bool,
}

impl TypeInfo {
    /// Whether leaving the output unconsumed is a mistake (images, predictions or features
    /// nobody reads) rather than a choice (a summary only returned to the caller).
    pub fn needs_consumer(&self) -> bool {
        matches!(self.produces, Some(DataKind::Images | DataKind::Predictions | DataKind::Features))
    }
}

/// Collects one component's problems, each message prefixed with its `section.id`.
pub struct Checks<'a> {
    name: &'a str,
    errors: &'a mut Vec<String>,
}

impl<'a> Checks<'a> {
    pub fn new(name: &'a str, errors: &'a mut Vec<String>) -> Self {
        Checks { name, errors }
    }

    pub fn error(&mut self, message: impl fmt::Display) {
        self.errors.push(format!("{}: {message}", self.name));
    }

    /// `section.id` of the component being checked.
    pub fn name(&self) -> &str {
        self.name
    }
}

/// What validation learnt of the whole graph, for checks that depend on more than a component.
pub struct GraphFacts<'a> {
    /// The class list, when one is known (`[run] classes` or an image folder).
    pub classes: Option<&'a [String]>,
    /// Whether real images reach the component; `None` when something upstream was rejected.
    pub real_images_upstream: Option<bool>,
    /// Whether generated images reach the component; `None` as above.
    pub generated_images_upstream: Option<bool>,
    /// The component type of the topology's generated-images source, if it has one.
    pub generated_source: Option<&'static str>,
}

/// The class names a component lists (an image folder's class folders), and where.
pub struct NamedClasses {
    pub names: Vec<String>,
    pub folder: PathBuf,
}

/// A file (or listing) whose content decides a run's results: hashed into the run manifest, so
/// a resumed run with other weights or other images is refused.
#[derive(Clone, Debug, PartialEq)]
pub enum HashedInput {
    /// A file, hashed whole (SHA-256).
    File { what: String, path: PathBuf },
    /// A digest the component computed itself (an image folder's listing).
    Digest { what: String, sha256: String },
}

/// A component type as the topology sees it. Implemented once, by the registry's enum; each
/// method dispatches to the component's own file.
pub trait ComponentType: Clone + fmt::Debug + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Every registered type, in registration order.
    const TYPES: &'static [TypeInfo];

    fn info(&self) -> &'static TypeInfo;
    /// The origin of the images a source emits (`None` for other components).
    fn source_origin(&self) -> Option<Origin>;
    /// Makes relative paths relative to `base` (the topology file's directory).
    fn resolve_paths(&mut self, base: &Path);
    /// Its own settings and the files it names.
    fn check(&self, checks: &mut Checks);
    /// The class names it lists (an image folder's class folders); problems go to `checks`.
    fn class_names(&self, checks: &mut Checks) -> Option<NamedClasses>;
    /// Checks that need the rest of the graph: the class list, real images upstream.
    fn check_in_graph(&self, facts: &GraphFacts, checks: &mut Checks);
    /// One line for `rcaflow validate`.
    fn describe(&self) -> String;
    /// How a source cuts its images into units (`None` for other components).
    fn plan(&self, classes: &[String]) -> Result<Option<UnitPlan>, String>;
    /// The files and listings its results depend on.
    fn hashed_inputs(&self, classes: &[String]) -> Result<Vec<HashedInput>, String>;
}

/// The names of all registered types, for "expected one of" messages.
pub fn type_list<K: ComponentType>() -> String {
    K::TYPES.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
}

/// The registered type called `name`.
pub fn type_info<K: ComponentType>(name: &str) -> Option<&'static TypeInfo> {
    K::TYPES.iter().find(|t| t.name == name)
}
