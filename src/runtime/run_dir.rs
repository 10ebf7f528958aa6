//! The run directory of a run (README "Run directory"): what it was started with, who is running
//! it, and what a restart may skip. DESIGN.md §2 "Exactly once".
//!
//! - `run.json` ([`Manifest`]): the components' configuration, the class list, the content hash
//!   (SHA-256) of every model and reference file and a fingerprint of every image folder, the
//!   plan of each source, and one entry per session (start, units skipped, units redone). A
//!   restart with another graph or other model files is refused, naming what changed.
//! - `run.lock`: an OS file lock ([`RunLock`]) held by the rcaflow using the directory for its
//!   whole run; a second one is refused, told the holder's pid and start time (written into
//!   the file). The kernel releases it when the holder dies, so a killed run's directory is
//!   reusable at once.
//! - `state/<stage>.ckpt`: the stages' checkpoints ([`super::checkpoint`]).
//!
//! On a restart a source skips the units that every checkpointing stage downstream of it
//! already holds; a unit held by some of them only is redone, and those that hold it ignore it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::checkpoint::{self, CheckpointError};
use crate::files::atomic::{self, remove_temporaries};
use crate::topology::{ComponentType, Graph, HashedInput};
use crate::units::{cut_into_units, Origin, Shard, UnitId, UnitPlan};

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
    /// The rcaflow that ran this session (absent in sessions of versions before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcaflow_version: Option<String>,
}

/// `run.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: String,
    /// The rcaflow that last wrote this file (absent in files of versions before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rcaflow_version: Option<String>,
    pub topology: String,
    /// The `--set KEY=VALUE` overrides applied to the topology file (`rcaflow run --set`, a
    /// sweep's variation), in order; absent when none. `merge` applies them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<String>,
    pub classes: Vec<String>,
    /// Each component's configuration (less [`TUNING_FIELDS`]) with its inputs, by `section.id`.
    pub components: BTreeMap<String, serde_json::Value>,
    /// Content hashes of the files the results depend on, by what they are.
    pub files: BTreeMap<String, String>,
    pub sources: BTreeMap<String, SourcePlan>,
    /// The shard of the run this directory holds (`rcaflow run --shard K/N`); absent for a
    /// whole run. Its sources ran only the units [`Shard::holds`] gives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
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
            rcaflow_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            topology: graph.label.clone(),
            overrides: graph.overrides.iter().map(ToString::to_string).collect(),
            classes: graph.classes.clone(),
            components,
            files,
            sources,
            shard: None,
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
        if self.shard != now.shard {
            let name = |s: Option<Shard>| s.map_or("the whole run".to_string(), |s| format!("shard {s}"));
            out.push(format!("{} became {}", name(self.shard), name(now.shard)));
        }
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

/// The OS lock on `run.lock` (`flock`, through `File::try_lock`), held while this value lives
/// and released by the kernel when the process ends however it ends (a crash, SIGKILL, the OOM
/// killer): no stale lock to take over, no pid to guess about, and it holds across pid
/// namespaces (two containers sharing the directory lock the same file). The file stays in
/// place: removing it would let a second run lock a new file while a third still holds the old.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

/// Takes the run lock of `dir` for this process, and writes this process's pid and start time
/// into `run.lock` for the message a second run gets; refused while another process holds it.
pub fn lock(dir: &Path) -> Result<RunLock, RunDirError> {
    use std::io::{Seek, Write};
    let path = dir.join(LOCK_FILE);
    let io = |what: &str, e: std::io::Error| RunDirError::Io { dir: dir.into(), message: format!("cannot {what} {LOCK_FILE}: {e}") };
    // The file is rewritten below: never through a symlink planted in its place.
    if std::fs::symlink_metadata(&path).is_ok_and(|m| !m.file_type().is_file()) {
        return Err(RunDirError::Refused {
            dir: dir.into(),
            message: format!("{LOCK_FILE} is not a regular file (a symlink?); remove it"),
        });
    }
    let mut file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| io("open", e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(RunDirError::Refused {
                dir: dir.into(),
                message: format!(
                    "in use by another rcaflow run ({}, holds {LOCK_FILE}); wait for it to end, or use another --run-dir",
                    holder_text(&path)
                ),
            })
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io("lock", e)),
    }
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let text = format!("pid {}\nstarted_unix {started}\n", std::process::id());
    file.set_len(0).and_then(|_| file.rewind()).and_then(|_| file.write_all(text.as_bytes())).map_err(|e| io("write", e))?;
    Ok(RunLock { _file: file })
}

/// Who holds the run lock of `dir`, when another process does (`rcaflow status`): its pid and
/// start time as it wrote them. `None` when no process holds it.
pub fn lock_holder(dir: &Path) -> Option<String> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::File::open(&path).ok()?;
    // A shared lock: taken (and given back at once) only when no run holds the exclusive one.
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(std::fs::TryLockError::WouldBlock) => Some(holder_text(&path)),
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// "pid 1234, started 2026-12-02 17:31:27 UTC" from a lock file's text (written by [`lock`]).
fn holder_text(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key).map(str::trim).and_then(|v| v.parse::<u64>().ok()));
    match (field("pid "), field("started_unix ")) {
        (Some(pid), Some(started)) => format!("pid {pid}, started {}", utc(started)),
        (Some(pid), None) => format!("pid {pid}"),
        _ => "pid unknown".to_string(),
    }
}

/// `unix` seconds as `YYYY-MM-DD HH:MM:SS UTC` (proleptic Gregorian, Howard Hinnant's
/// days-to-civil algorithm).
pub fn utc(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", secs / 3600, secs / 60 % 60, secs % 60)
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

#[cfg(test)]
mod lock_tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_directory_is_refused_with_the_holder_and_taken_once_released() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(lock_holder(dir.path()), None);
        let first = lock(dir.path()).unwrap();
        // flock is per open file: a second open in this process is refused like another process.
        let holder = lock_holder(dir.path()).unwrap();
        assert!(holder.starts_with(&format!("pid {}, started 20", std::process::id())), "{holder}");
        let e = lock(dir.path()).unwrap_err().to_string();
        assert!(e.contains(&format!("in use by another rcaflow run (pid {}, started ", std::process::id())), "{e}");
        assert!(e.contains("holds run.lock); wait for it to end, or use another --run-dir"), "{e}");
        drop(first);
        assert_eq!(lock_holder(dir.path()), None);
        let _again = lock(dir.path()).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_lock_file_is_refused_and_its_target_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("notes.txt");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(LOCK_FILE)).unwrap();
        let e = lock(dir.path()).unwrap_err().to_string();
        assert!(e.contains("run.lock is not a regular file"), "{e}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_767_225_600 + 3_723), "2026-01-01 01:02:03 UTC");
    }
}
