//! Topology files: parse (TOML) → validate (every error, named by component) → [`Graph`], the
//! checked description the stages are built from (`crate::stages::build`, the third step:
//! load every component's files, every error at once) and the runtime runs. Follows Vector's
//! config → validated graph → built → running topology split. Written against
//! [`ComponentType`], so it knows the component types only through the registry's enum.

pub mod component;
pub mod config;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use crate::units::UnitPlan;

pub use component::{Checks, ComponentType, GraphFacts, HashedInput, NamedClasses, TypeInfo};
pub use config::{Component, DataKind, Section};
pub use validate::{class_difference, quoted};

/// Why a topology cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("topology {path}: cannot read: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("topology {path}: invalid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("topology {path}: {} error{}:\n{}", .errors.len(), if .errors.len() == 1 { "" } else { "s" }, .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: String, errors: Vec<String> },
    /// Valid, but some components could not load what they need (weights, files, devices).
    #[error("topology {path}: {} component{} failed to build:\n{}", .errors.len(), if .errors.len() == 1 { "" } else { "s" }, .errors.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Build { path: String, errors: Vec<String> },
}

impl TopologyError {
    /// The individual messages (one for read and syntax errors).
    pub fn messages(&self) -> Vec<String> {
        match self {
            TopologyError::Invalid { errors, .. } | TopologyError::Build { errors, .. } => errors.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// A directed edge `from -> to`; `capacity` is in batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub capacity: usize,
}

impl Edge {
    /// The `edge` label of channel metrics.
    pub fn name(&self) -> String {
        format!("{}->{}", self.from, self.to)
    }
}

/// A validated topology: components in topological order, typed edges, and the class list.
/// `K` is the closed enum of component types (`crate::stages::ComponentKind`).
#[derive(Clone, Debug)]
pub struct Graph<K> {
    /// Where it came from (a file path, or the command that built it).
    pub label: String,
    /// `[run] dir`, resolved against the topology file's directory.
    pub run_dir: Option<PathBuf>,
    pub components: Vec<Component<K>>,
    pub edges: Vec<Edge>,
    /// Class names in label order.
    pub classes: Vec<String>,
}

impl<K: ComponentType> Graph<K> {
    /// Reads and validates a topology file. Relative paths inside it are relative to its folder.
    pub fn load(path: &Path) -> Result<Graph<K>, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read { path: path.display().to_string(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Graph::parse(&text, base, &path.display().to_string())
    }

    /// Parses and validates topology text; `label` names it in messages.
    pub fn parse(text: &str, base: &Path, label: &str) -> Result<Graph<K>, TopologyError> {
        let raw: config::RawTopology = toml::from_str(text).map_err(|e| TopologyError::Syntax {
            path: label.to_string(),
            message: match e.span() {
                // The message alone does not say where: add the line and column (1-based).
                Some(span) => {
                    let before = text.get(..span.start).unwrap_or(text);
                    let line = before.matches('\n').count() + 1;
                    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!("line {line}, column {column}: {}", config::one_line(e.message()))
                }
                None => config::one_line(e.message()),
            },
        })?;
        let mut graph = validate::validate(raw, base).map_err(|errors| TopologyError::Invalid { path: label.to_string(), errors })?;
        graph.label = label.to_string();
        Ok(graph)
    }

    pub fn component(&self, id: &str) -> Option<&Component<K>> {
        self.components.iter().find(|c| c.id == id)
    }

    pub fn inputs_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Edge> + 'a {
        self.edges.iter().filter(move |e| e.to == id)
    }

    pub fn outputs_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Edge> + 'a {
        self.edges.iter().filter(move |e| e.from == id)
    }

    /// Each source's unit plan, by component id: computed once per run (it lists image folders)
    /// and shared by the run manifest and the stages. Errors name the component.
    pub fn plans(&self) -> Result<BTreeMap<String, UnitPlan>, String> {
        let mut plans = BTreeMap::new();
        for c in &self.components {
            if let Some(plan) = c.kind.plan(&self.classes).map_err(|e| format!("{}: {e}", c.qualified()))? {
                plans.insert(c.id.clone(), plan);
            }
        }
        Ok(plans)
    }

    /// The ids of the components reachable from `id` along edges (not `id` itself).
    pub fn downstream_of(&self, id: &str) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![id.to_string()];
        while let Some(id) = todo.pop() {
            for e in self.outputs_of(&id) {
                if seen.insert(e.to.clone()) {
                    todo.push(e.to.clone());
                }
            }
        }
        seen
    }
}

impl<K: ComponentType> fmt::Display for Graph<K> {
    /// What `rcaflow validate` prints: components in data-flow order, then the edges.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "topology {}: {} components, {} edges, {} classes",
            self.label,
            self.components.len(),
            self.edges.len(),
            self.classes.len()
        )?;
        writeln!(f, "classes: {}", self.classes.join(", "))?;
        if let Some(dir) = &self.run_dir {
            writeln!(f, "run dir: {}", dir.display())?;
        }
        writeln!(f, "components (data-flow order):")?;
        let width = self.components.iter().map(|c| c.qualified().len()).max().unwrap_or(0);
        for c in &self.components {
            let info = c.kind.info();
            let io = match (info.accepts, info.produces) {
                (None, Some(out)) => format!("-> {out}"),
                (Some(inp), Some(out)) => format!("{inp} -> {out}"),
                (Some(inp), None) => format!("{inp} ->"),
                (None, None) => String::new(),
            };
            writeln!(f, "  {:width$}  {:18} {:26} {}", c.qualified(), info.name, io, c.kind.describe())?;
        }
        writeln!(f, "edges:")?;
        for e in &self.edges {
            writeln!(f, "  {} -> {} (capacity {} batches)", e.from, e.to, e.capacity)?;
        }
        Ok(())
    }
}
