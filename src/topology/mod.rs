//! Topology files: parse (TOML) → validate (every error, named by component) → [`Graph`], the
//! checked description the runtime builds a running dataflow from. Follows Vector's
//! config → validated graph → running topology split.

pub mod config;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use config::{Component, ComponentKind, DataKind, Section};
pub use validate::class_difference;

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
}

impl TopologyError {
    /// The individual messages (one for read and syntax errors).
    pub fn messages(&self) -> Vec<String> {
        match self {
            TopologyError::Invalid { errors, .. } => errors.clone(),
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
#[derive(Clone, Debug)]
pub struct Graph {
    /// Where it came from (a file path, or the command that built it).
    pub label: String,
    /// `[run] dir`, resolved against the topology file's directory.
    pub run_dir: Option<PathBuf>,
    pub components: Vec<Component>,
    pub edges: Vec<Edge>,
    /// Class names in label order.
    pub classes: Vec<String>,
}

impl Graph {
    /// Reads and validates a topology file. Relative paths inside it are relative to its folder.
    pub fn load(path: &Path) -> Result<Graph, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read { path: path.display().to_string(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Graph::parse(&text, base, &path.display().to_string())
    }

    /// Parses and validates topology text; `label` names it in messages.
    pub fn parse(text: &str, base: &Path, label: &str) -> Result<Graph, TopologyError> {
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

    pub fn component(&self, id: &str) -> Option<&Component> {
        self.components.iter().find(|c| c.id == id)
    }

    pub fn inputs_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Edge> + 'a {
        self.edges.iter().filter(move |e| e.to == id)
    }

    pub fn outputs_of<'a>(&'a self, id: &'a str) -> impl Iterator<Item = &'a Edge> + 'a {
        self.edges.iter().filter(move |e| e.from == id)
    }
}

impl fmt::Display for Graph {
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
            let io = match (c.kind.accepts(), c.kind.produces()) {
                (None, Some(out)) => format!("-> {out}"),
                (Some(inp), Some(out)) => format!("{inp} -> {out}"),
                (Some(inp), None) => format!("{inp} ->"),
                (None, None) => String::new(),
            };
            writeln!(f, "  {:width$}  {:18} {:26} {}", c.qualified(), c.kind.type_name(), io, describe(&c.kind))?;
        }
        writeln!(f, "edges:")?;
        for e in &self.edges {
            writeln!(f, "  {} -> {} (capacity {} batches)", e.from, e.to, e.capacity)?;
        }
        Ok(())
    }
}

fn describe(kind: &ComponentKind) -> String {
    match kind {
        ComponentKind::ImageFolder(c) => {
            format!("path={} origin={} unit_size={}{}", c.path.display(), c.origin, c.unit_size, if c.strict { " strict" } else { "" })
        }
        ComponentKind::DdpmSampler(c) => format!(
            "unet={} scheduler={} steps={} eta={} per_class={} unit_size={} seed={} replicas={}",
            c.unet.display(),
            c.scheduler,
            c.steps.map_or("default".into(), |s| s.to_string()),
            c.eta,
            c.per_class,
            c.unit_size,
            c.seed,
            c.replicas
        ),
        ComponentKind::SaveImages(c) => format!("path={}", c.path.display()),
        ComponentKind::Batcher(c) => format!("batch_size={}", c.batch_size),
        ComponentKind::OracleClassifier(c) => {
            format!("weights={} arch={} stem={} normalization={}", c.weights.display(), c.arch, c.stem, c.normalization)
        }
        ComponentKind::Rca(c) => match &c.baseline {
            Some(b) => format!("baseline={}", b.display()),
            None => "real accuracy from real images".to_string(),
        },
        ComponentKind::InceptionV3(c) => {
            format!("weights={}", c.weights.as_ref().map_or("(torch hub cache)".into(), |p| p.display().to_string()))
        }
        ComponentKind::Fid(c) => format!(
            "real statistics from {}, live every {}s",
            c.reference.as_ref().map_or("real images".into(), |p| p.display().to_string()),
            c.interval_secs
        ),
        ComponentKind::InceptionScore(c) => format!("splits={}", c.splits),
        ComponentKind::LpipsDiversity(c) => format!("net={} pairs={}", c.net, c.pairs),
        ComponentKind::Report(c) => format!("figures={}", c.figures),
    }
}
