//! The run directory of a run (README "Run directory"): what it was started with, who is running
//! it, and what a restart may skip. DESIGN.md §2 "Exactly once".
//!
//! - `run.json` ([`Manifest`]): the components' configuration, the class list, the content hash
//!   (SHA-256) of every model and reference file and a fingerprint of every image folder, the
//!   plan of each source, and one entry per session (start, units skipped, units redone). A
//!   restart with another graph or other model files is refused, naming what changed.
//! - `run.lock`: the process id of the rcaflow using the directory; a second one is refused
//!   while that process lives (a stale lock, left by a killed run, is taken over).
//! - `state/<stage>.ckpt`: the stages' checkpoints ([`super::checkpoint`]).
//!
//! On a restart a source skips the units that every checkpointing stage downstream of it
//! already holds; a unit held by some of them only is redone, and those that hold it ignore it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::files::atomic::{self, remove_temporaries};
use super::checkpoint::{self, CheckpointError};
use crate::topology::{ComponentType, Graph, HashedInput};
use crate::units::{cut_into_units, Origin, UnitId, UnitPlan};

pub const MANIFEST_FILE: &str = "run.json";
pub const LOCK_FILE: &str = "run.lock";
pub const STATE_DIR: &str = "state";
pub const SCHEMA: &str = "rcaflow-run/1";

/// Fields that tune how a run goes, not what it computes: they may change between sessions.
/// Where a model runs is one of them: a unit's noise comes from its seed alone on any device
/// (its images agree across devices to float rounding).
const TUNING_FIELDS: [&str; 3] = ["interval_secs", "replicas", "device"];

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("run directory \"{dir}\": {message}")]
    Refused { dir: PathBuf, message: String },
    #[error("run directory \"{dir}\": {message}")]
    Io { dir: PathBuf, message: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

/// How a source's work is cut into units (enough to list every unit id).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourcePlan {
    pub origin: Origin,
    pub per_class: Vec<u64>,
    pub unit_size: usize,
    /// The checkpointing stages downstream: a unit is done when all of them hold it.
    pub holders: Vec<String>,
}

impl SourcePlan {
    /// Every unit of the plan with its image count, class-major.
    pub fn units(&self) -> Vec<(UnitId, u64)> {
        cut_into_units(&self.per_class, self.unit_size).map(|slot| (slot.id(self.origin), slot.len)).collect()
    }
}

/// One start of the run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    pub started_unix: u64,
    pub pid: u32,
    /// Units every stage downstream already held: not sent again.
    pub units_skipped: usize,
    /// Units some stages held and others not: sent again, ignored where held.
    pub units_redone: usize,
}

/// `run.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: String,
    pub topology: String,
    pub classes: Vec<String>,
    /// Each component's configuration (less [`TUNING_FIELDS`]) with its inputs, by `section.id`.
    pub components: BTreeMap<String, serde_json::Value>,
    /// Content hashes of the files the results depend on, by what they are.
    pub files: BTreeMap<String, String>,
    pub sources: BTreeMap<String, SourcePlan>,
    pub sessions: Vec<Session>,
}

impl Manifest {
    /// What `graph` would record (no sessions yet), with each source's `plans` (from
    /// [`Graph::plans`]): hashes every model file it uses.
    pub fn of<K: ComponentType>(graph: &Graph<K>, plans: &BTreeMap<String, UnitPlan>) -> Result<Manifest, String> {
        let mut components = BTreeMap::new();
        let mut files = BTreeMap::new();
        let mut sources = BTreeMap::new();
        for c in &graph.components {
            let name = c.qualified();
            let mut config = serde_json::to_value(&c.kind).map_err(|e| format!("{name}: {e}"))?;
            if let Some(map) = config.as_object_mut() {
                for field in TUNING_FIELDS {
                    map.remove(field);
                }
                map.insert("inputs".into(), c.inputs.clone().into());
            }
            components.insert(name.clone(), config);
            for input in c.kind.hashed_inputs(&graph.classes).map_err(|e| format!("{name}: {e}"))? {
                let (what, hash) = match input {
                    HashedInput::File { what, path } => {
                        let hash = sha256_file(&path).map_err(|e| format!("{name}: \"{}\": {e}", path.display()))?;
                        (what, hash)
                    }
                    HashedInput::Digest { what, sha256 } => (what, sha256),
                };
                files.insert(format!("{name} {what}"), hash);
            }
            if let Some(plan) = plans.get(&c.id) {
                let holders = holders_downstream(graph, &c.id);
                let UnitPlan { origin, per_class, unit_size } = plan.clone();
                sources.insert(c.id.clone(), SourcePlan { origin, per_class, unit_size, holders });
            }
        }
        Ok(Manifest {
            schema: SCHEMA.to_string(),
            topology: graph.label.clone(),
            classes: graph.classes.clone(),
            components,
            files,
            sources,
            sessions: Vec::new(),
        })
    }

    pub fn read(dir: &Path) -> Result<Option<Manifest>, RunDirError> {
        let path = dir.join(MANIFEST_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RunDirError::Io { dir: dir.into(), message: format!("cannot read {MANIFEST_FILE}: {e}") }),
        };
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| RunDirError::Refused { dir: dir.into(), message: format!("{MANIFEST_FILE} is not a run manifest: {e}") })?;
        if manifest.schema != SCHEMA {
            return Err(RunDirError::Refused {
                dir: dir.into(),
                message: format!("{MANIFEST_FILE} has schema \"{}\", expected \"{SCHEMA}\"", manifest.schema),
            });
        }
        Ok(Some(manifest))
    }

    pub fn write(&self, dir: &Path) -> Result<(), RunDirError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| RunDirError::Io { dir: dir.into(), message: e.to_string() })?;
        atomic::write(&dir.join(MANIFEST_FILE), &bytes, "manifest.write")
            .map_err(|e| RunDirError::Io { dir: dir.into(), message: format!("cannot write {MANIFEST_FILE}: {e}") })
    }

    /// What differs between the run recorded here and `now`, one phrase per difference.
    pub fn differences(&self, now: &Manifest) -> Vec<String> {
        let mut out = Vec::new();
        if self.classes != now.classes {
            out.push(format!("classes {:?} became {:?}", self.classes, now.classes));
        }
        for (name, was) in &self.components {
            match now.components.get(name) {
                None => out.push(format!("{name} was removed")),
                Some(is) if is != was => {
                    let keys = |v: &serde_json::Value| v.as_object().cloned().unwrap_or_default();
                    let (a, b) = (keys(was), keys(is));
                    let changed: BTreeSet<&String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).collect();
                    out.push(format!("{name} changed ({})", changed.into_iter().cloned().collect::<Vec<_>>().join(", ")));
                }
                Some(_) => {}
            }
        }
        out.extend(now.components.keys().filter(|n| !self.components.contains_key(*n)).map(|n| format!("{n} was added")));
        for (what, hash) in &self.files {
            match now.files.get(what) {
                // Short forms; run.json is a file a user can edit, so no slicing that could panic.
                Some(h) if h != hash => out.push(format!("{what} changed (sha256 {} -> {})", short(hash), short(h))),
                _ => {}
            }
        }
        out
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// The ids of the checkpointing stages reachable from `source`.
fn holders_downstream<K: ComponentType>(graph: &Graph<K>, source: &str) -> Vec<String> {
    let downstream = graph.downstream_of(source);
    graph.components.iter().filter(|c| downstream.contains(&c.id) && c.kind.info().holds_units).map(|c| c.id.clone()).collect()
}

pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Units of each source's plan that its holders all hold (skip) and that some hold (redo).
pub struct ResumePoint {
    pub skip: BTreeMap<String, BTreeSet<UnitId>>,
    pub redone: usize,
    /// Units held, per checkpointing stage.
    pub held: BTreeMap<String, BTreeSet<UnitId>>,
}

impl ResumePoint {
    /// Reads every checkpoint's applied set (checksums verified).
    pub fn read(dir: &Path, manifest: &Manifest) -> Result<ResumePoint, RunDirError> {
        let mut held = BTreeMap::new();
        for plan in manifest.sources.values() {
            for stage in &plan.holders {
                if !held.contains_key(stage) {
                    held.insert(stage.clone(), checkpoint::read_applied(dir, stage)?);
                }
            }
        }
        let mut skip = BTreeMap::new();
        let mut redone = 0;
        for (source, plan) in &manifest.sources {
            let mut all = BTreeSet::new();
            for (id, _) in plan.units() {
                let holding = plan.holders.iter().filter(|h| held[*h].contains(&id)).count();
                if holding > 0 && holding == plan.holders.len() {
                    all.insert(id);
                } else if holding > 0 {
                    redone += 1;
                }
            }
            skip.insert(source.clone(), all);
        }
        Ok(ResumePoint { skip, redone, held })
    }

    pub fn skipped(&self) -> usize {
        self.skip.values().map(BTreeSet::len).sum()
    }
}

/// Takes `run.lock` for this process; refused while another live process holds it.
pub fn lock(dir: &Path) -> Result<(), RunDirError> {
    let path = dir.join(LOCK_FILE);
    if let Some(pid) = lock_holder(dir) {
        if pid != std::process::id() {
            return Err(RunDirError::Refused { dir: dir.into(), message: format!("in use by a running rcaflow (pid {pid}, {LOCK_FILE})") });
        }
    }
    atomic::write(&path, std::process::id().to_string().as_bytes(), "lock.write")
        .map_err(|e| RunDirError::Io { dir: dir.into(), message: format!("cannot write {LOCK_FILE}: {e}") })
}

/// Releases `run.lock` if this process holds it.
pub fn unlock(dir: &Path) {
    if lock_holder(dir) == Some(std::process::id()) {
        let _ = std::fs::remove_file(dir.join(LOCK_FILE));
    }
}

/// The pid in `run.lock`, if that process is alive and an rcaflow (a killed run leaves a stale
/// lock, whose pid may since have gone to another program).
pub fn lock_holder(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join(LOCK_FILE)).ok()?.trim().parse().ok()?;
    rcaflow_alive(pid).then_some(pid)
}

fn rcaflow_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    // Linux: a live process has /proc/<pid>/cmdline (empty for a zombie).
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("rcaflow"))
}

/// Removes the temporary files a killed run left in `state/` (a checkpoint being written when
/// the process died: never valid, and named by that process's pid, so nothing else removes them).
pub fn remove_stale_temporaries(dir: &Path) -> Result<(), RunDirError> {
    remove_temporaries(&dir.join(STATE_DIR))
        .map(|_| ())
        .map_err(|e| RunDirError::Io { dir: dir.into(), message: format!("cannot remove stale temporary files in {STATE_DIR}/: {e}") })
}

/// Whether `dir` holds checkpoints (of any stage).
pub fn has_state(dir: &Path) -> bool {
    std::fs::read_dir(dir.join(STATE_DIR)).is_ok_and(|mut d| d.next().is_some())
}
