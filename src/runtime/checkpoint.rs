//! Accumulator checkpoints: `RUN_DIR/state/<stage>.json` holds an accumulator's state together
//! with the unit ids it has applied (DESIGN.md §2), replaced atomically at the configured
//! interval and when the stage ends, so the file on disk is always one consistent snapshot.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::accumulator::Snapshot;
use super::atomic_file::write_atomic;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint \"{path}\": cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("checkpoint \"{path}\": cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("checkpoint \"{path}\": not a checkpoint of this stage: {message}")]
    Parse { path: PathBuf, message: String },
}

/// The file format: which stage wrote it, and its snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckpointFile<S> {
    pub stage: String,
    pub snapshot: Snapshot<S>,
}

pub fn checkpoint_path(run_dir: &Path, stage: &str) -> PathBuf {
    run_dir.join("state").join(format!("{stage}.json"))
}

pub fn write<S: Serialize>(run_dir: &Path, stage: &str, snapshot: &Snapshot<S>) -> Result<(), CheckpointError> {
    let path = checkpoint_path(run_dir, stage);
    let err = |source| CheckpointError::Write { path: path.clone(), source };
    std::fs::create_dir_all(path.parent().unwrap_or(run_dir)).map_err(err)?;
    // Same layout as `CheckpointFile`, borrowed rather than cloned.
    let file = serde_json::json!({ "stage": stage, "snapshot": snapshot });
    let bytes = serde_json::to_vec(&file).map_err(|e| err(std::io::Error::other(e)))?;
    write_atomic(&path, &bytes).map_err(err)
}

pub fn read<S: DeserializeOwned>(run_dir: &Path, stage: &str) -> Result<Snapshot<S>, CheckpointError> {
    let path = checkpoint_path(run_dir, stage);
    let bytes = std::fs::read(&path).map_err(|source| CheckpointError::Read { path: path.clone(), source })?;
    let file: CheckpointFile<S> =
        serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Parse { path: path.clone(), message: e.to_string() })?;
    if file.stage != stage {
        return Err(CheckpointError::Parse { path, message: format!("written by stage \"{}\"", file.stage) });
    }
    Ok(file.snapshot)
}

/// Says when the next periodic checkpoint is due.
pub struct CheckpointTimer {
    interval: Duration,
    last: Instant,
}

impl CheckpointTimer {
    pub fn new(interval: Duration) -> Self {
        CheckpointTimer { interval, last: Instant::now() }
    }

    /// True (and restarts the clock) when `interval` has passed since the last checkpoint.
    pub fn due(&mut self) -> bool {
        if self.last.elapsed() >= self.interval {
            self.last = Instant::now();
            true
        } else {
            false
        }
    }
}
