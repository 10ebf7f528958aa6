//! The topology file's structs: `[run]`, `[sources.ID]`, `[transforms.ID]`, `[sinks.ID]`, in the
//! style of Vector's configuration. Component types form one closed serde enum, generated in
//! `src/stages/mod.rs` from the registration list (any [`ComponentType`] here), whose variants
//! deny unknown fields; the keys every component shares (`inputs`, `capacity`, `restart`, `threads`) are
//! taken off first, so each error can name its component.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::component::{type_info, type_list, ComponentType};

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

/// A string field parsed with `FromStr`, so a bad value gets that parser's message (which says
/// what the field is) rather than serde's bare "unknown variant".
pub fn from_str<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
}

/// One declared component, with the keys all components share taken off.
#[derive(Clone, Debug, Serialize)]
pub struct Component<K> {
    pub id: String,
    pub section: Section,
    pub kind: K,
    pub inputs: Vec<String>,
    /// Capacity, in batches, of each of this component's input edges.
    pub capacity: usize,
    /// Times the stage is rebuilt after a failure before the run stops (`restart = { max = N }`).
    pub restart: u32,
    /// The stage's own kernel threads (`threads = N`); `None`: the process-wide pool.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
}

impl<K: ComponentType> Component<K> {
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
pub(crate) fn parse_component<K: ComponentType>(
    section: Section,
    id: &str,
    mut table: toml::Table,
    default_capacity: usize,
    errors: &mut Vec<String>,
) -> Option<Component<K>> {
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
    let restart = parse_restart::<K>(&name, table.remove("restart"), table.get("type"), errors);
    let threads = parse_threads(&name, table.remove("threads"), errors);
    match table.get("type") {
        None => {
            errors.push(format!("{name}: `type` is missing; expected one of {}", type_list::<K>()));
            return None;
        }
        Some(toml::Value::String(t)) if type_info::<K>(t).is_none() => {
            errors.push(format!("{name}: unknown type \"{t}\"; expected one of {}", type_list::<K>()));
            return None;
        }
        Some(_) => {}
    }
    let kind: K = match toml::Value::Table(table).try_into() {
        Ok(kind) => kind,
        Err(e) => {
            errors.push(format!("{name}: {}", one_line(&e.to_string())));
            return None;
        }
    };
    inputs_ok.then(|| Component { id: id.to_string(), section, kind, inputs, capacity, restart, threads })
}

/// `restart = { max = N }`: how often the stage is rebuilt after a panic or an error.
///
/// Only types that are stateless per batch may restart (redoing the batch in flight is all a
/// restart needs); sources, the batcher (it holds partial batches) and the accumulating sinks
/// keep state a crash loses, and resume from checkpoints instead.
fn parse_restart<K: ComponentType>(name: &str, value: Option<toml::Value>, kind: Option<&toml::Value>, errors: &mut Vec<String>) -> u32 {
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
    match kind.and_then(toml::Value::as_str).and_then(type_info::<K>) {
        Some(t) if max > 0 && !t.restartable => {
            let restartable: Vec<&str> = K::TYPES.iter().filter(|t| t.restartable).map(|t| t.name).collect();
            errors.push(format!(
                "{name}: restart is for stateless transforms ({}); a {} keeps state a restart would lose, and resumes from its checkpoint instead",
                restartable.join(", "),
                t.name
            ));
            0
        }
        _ => max,
    }
}

/// `threads = N`: the stage runs its CPU kernels on a pool of N threads of its own rather than
/// on the process-wide one (`[runtime] threads`, see [`crate::models::threads`]).
fn parse_threads(name: &str, value: Option<toml::Value>, errors: &mut Vec<String>) -> Option<usize> {
    let max = crate::models::threads::MAX_THREADS;
    match value? {
        toml::Value::Integer(n) if n >= 1 && n as u64 <= max as u64 => Some(n as usize),
        other => {
            errors.push(format!("{name}: threads must be a whole number of CPU threads from 1 to {max}, found {other}"));
            None
        }
    }
}

/// serde/toml messages sometimes span lines; a config error is one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `path` relative to `base`, with `a/../` folded away as the file system resolves it, so
/// messages and reports show `example/real` rather than `topology/../example/real`: `a/..` is
/// folded in the text only when `a` is not a symlink (or does not exist); after a symlink the
/// path is canonicalised first, so `current/../real` with `current -> runs/7` is `runs/real`,
/// the folder the kernel would open, not `./real`.
pub fn resolve(base: &Path, path: &Path) -> PathBuf {
    use std::path::Component as C;
    let joined = if path.is_relative() { base.join(path) } else { path.to_path_buf() };
    let mut out = PathBuf::new();
    for part in joined.components() {
        match part {
            C::CurDir => {}
            C::ParentDir if matches!(out.components().next_back(), Some(C::Normal(_))) => {
                let through_symlink = std::fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink());
                match std::fs::canonicalize(&out) {
                    Ok(real) if through_symlink => {
                        out = real;
                        out.pop();
                    }
                    // A dangling symlink: leave `..` to the kernel.
                    Err(_) if through_symlink => out.push(".."),
                    _ => {
                        out.pop();
                    }
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}
