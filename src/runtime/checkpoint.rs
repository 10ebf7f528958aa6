//! Stage checkpoints: `RUN_DIR/state/<stage>.ckpt` holds a stage's state together with the unit
//! ids it has applied (DESIGN.md §2), replaced atomically (temporary file, fsync, rename, fsync
//! of the folder) at the configured interval and when the stage ends, so the file on disk is
//! always one consistent snapshot, and a failed write (a full disk) leaves the previous one.
//!
//! Binary, because an FID state is two 2048x2048 float64 sums (64 MB: JSON would be four times
//! that and slow): little-endian, [postcard](https://docs.rs/postcard) encoding (floats bit-exact)
//!
//! ```text
//! b"RCFCKPT" + format digit | u64 header length | header: rcaflow version, stage id, applied ids
//!                           | u64 state length  | state (the stage's own type)
//!                           | SHA-256 of every byte before it (32 bytes)
//! ```
//!
//! Format 2 (this version writes it) records the rcaflow version that wrote the file. Format 1
//! (rcaflow before issue 16: the same layout, a header without the version) is still read, so
//! run directories of older versions stay resumable; any other format is refused, naming it.
//! Nothing may follow a decoded header or state (a file with appended bytes is refused even with
//! a valid checksum).
//!
//! The header comes first so the applied set can be read without knowing the state's type
//! (what a resume needs to decide which units to skip, and `rcaflow status` to count them).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::accumulator::Snapshot;
use crate::units::UnitId;

/// The magic less its last byte, the format digit.
const MAGIC_STEM: &[u8; 7] = b"RCFCKPT";
const MAGIC_LEN: usize = 8;
/// The format this version writes.
pub const FORMAT: u8 = 2;
const DIGEST_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint \"{path}\": cannot write: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("checkpoint \"{path}\": cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("checkpoint \"{path}\": {message}; remove it to redo the units it held")]
    Corrupt { path: PathBuf, message: String },
}

/// The header of format 2.
#[derive(Serialize, Deserialize)]
struct Header {
    rcaflow_version: String,
    stage: String,
    applied: Vec<UnitId>,
}

/// The header of format 1.
#[derive(Deserialize)]
struct HeaderV1 {
    stage: String,
    applied: Vec<UnitId>,
}

/// `T` from all of `bytes`: anything left over is an error.
fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match postcard::take_from_bytes::<T>(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!("{} unexpected bytes after it", rest.len())),
        Err(e) => Err(e.to_string()),
    }
}

pub fn checkpoint_path(run_dir: &Path, stage: &str) -> PathBuf {
    run_dir.join("state").join(format!("{stage}.ckpt"))
}

/// The bytes of a checkpoint file.
pub fn encode<S: Serialize>(stage: &str, snapshot: &Snapshot<S>) -> Result<Vec<u8>, postcard::Error> {
    let header = postcard::to_stdvec(&Header {
        rcaflow_version: env!("CARGO_PKG_VERSION").to_string(),
        stage: stage.to_string(),
        applied: snapshot.applied.iter().copied().collect(),
    })?;
    let state = postcard::to_stdvec(&snapshot.state)?;
    let mut bytes = Vec::with_capacity(MAGIC_LEN + 16 + header.len() + state.len() + DIGEST_LEN);
    bytes.extend_from_slice(MAGIC_STEM);
    bytes.push(b'0' + FORMAT);
    bytes.extend_from_slice(&(header.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&(state.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&state);
    let digest = Sha256::digest(&bytes);
    bytes.extend_from_slice(&digest);
    Ok(bytes)
}

/// Replaces the checkpoint of `stage` with `snapshot`.
pub fn write<S: Serialize>(run_dir: &Path, stage: &str, snapshot: &Snapshot<S>) -> Result<(), CheckpointError> {
    let path = checkpoint_path(run_dir, stage);
    let err = |source| CheckpointError::Write { path: path.clone(), source };
    std::fs::create_dir_all(path.parent().unwrap_or(run_dir)).map_err(err)?;
    let bytes = encode(stage, snapshot).map_err(|e| err(std::io::Error::other(e)))?;
    crate::files::atomic::write(&path, &bytes, &format!("checkpoint.{stage}.write")).map_err(err)
}

/// The parts of a verified checkpoint file: its header and its state bytes.
fn verify<'a>(path: &Path, stage: &str, bytes: &'a [u8]) -> Result<(Header, &'a [u8]), CheckpointError> {
    let corrupt = |message: String| CheckpointError::Corrupt { path: path.to_path_buf(), message };
    if bytes.len() < MAGIC_LEN + 16 + DIGEST_LEN || &bytes[..MAGIC_STEM.len()] != MAGIC_STEM {
        return Err(corrupt("not an rcaflow checkpoint (bad magic or too short)".into()));
    }
    let format = bytes[MAGIC_STEM.len()];
    if format != b'1' && format != b'0' + FORMAT {
        return Err(corrupt(format!(
            "checkpoint format {:?}, this rcaflow ({}) reads formats 1 and {FORMAT}; it was written by another version",
            format as char,
            env!("CARGO_PKG_VERSION")
        )));
    }
    let (body, digest) = bytes.split_at(bytes.len() - DIGEST_LEN);
    if Sha256::digest(body).as_slice() != digest {
        return Err(corrupt("checksum mismatch: the file is truncated or was changed".into()));
    }
    let read_len = |at: usize| -> Result<usize, CheckpointError> {
        let raw: [u8; 8] =
            body.get(at..at + 8).and_then(|s| s.try_into().ok()).ok_or_else(|| corrupt("length field out of range".into()))?;
        Ok(u64::from_le_bytes(raw) as usize)
    };
    let header_len = read_len(MAGIC_LEN)?;
    let header_at = MAGIC_LEN + 8;
    // Lengths come from the file: checked sums, so a crafted length cannot overflow.
    let header_end = header_at.checked_add(header_len).filter(|&e| e <= body.len()).ok_or_else(|| corrupt("header out of range".into()))?;
    let header_bytes = &body[header_at..header_end];
    let header: Header = if format == b'1' {
        let v1: HeaderV1 = decode_exact(header_bytes).map_err(|e| corrupt(format!("bad header: {e}")))?;
        Header { rcaflow_version: "unknown (format 1)".into(), stage: v1.stage, applied: v1.applied }
    } else {
        decode_exact(header_bytes).map_err(|e| corrupt(format!("bad header: {e}")))?
    };
    if header.stage != stage {
        return Err(corrupt(format!("written by stage \"{}\", not \"{stage}\"", header.stage)));
    }
    let state_len = read_len(header_end)?;
    let state_at = header_end + 8;
    // The state runs exactly to the checksum.
    let state = state_at.checked_add(state_len).filter(|&e| e == body.len()).map(|_| &body[state_at..]);
    Ok((header, state.ok_or_else(|| corrupt("state out of range".into()))?))
}

fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, CheckpointError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CheckpointError::Read { path: path.to_path_buf(), source }),
    }
}

/// The snapshot of `stage`, or `None` when it has no checkpoint yet.
pub fn read<S: DeserializeOwned>(run_dir: &Path, stage: &str) -> Result<Option<Snapshot<S>>, CheckpointError> {
    let path = checkpoint_path(run_dir, stage);
    let Some(bytes) = read_bytes(&path)? else { return Ok(None) };
    let (header, state) = verify(&path, stage, &bytes)?;
    let state = decode_exact(state)
        .map_err(|e| CheckpointError::Corrupt { path: path.clone(), message: format!("not a state of this stage's type: {e}") })?;
    Ok(Some(Snapshot { state, applied: header.applied.into_iter().collect() }))
}

/// The unit ids `stage` has applied (empty without a checkpoint), checksum verified.
pub fn read_applied(run_dir: &Path, stage: &str) -> Result<BTreeSet<UnitId>, CheckpointError> {
    let path = checkpoint_path(run_dir, stage);
    let Some(bytes) = read_bytes(&path)? else { return Ok(BTreeSet::new()) };
    let (header, _) = verify(&path, stage, &bytes)?;
    Ok(header.applied.into_iter().collect())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Origin;

    fn snapshot() -> Snapshot<Vec<f64>> {
        let applied = (0..5).map(|index| UnitId { origin: Origin::Generated, class: 1, index }).collect();
        Snapshot { state: vec![0.1, f64::MIN_POSITIVE, -3.5e300, 1.0 / 3.0], applied }
    }

    #[test]
    fn round_trip_is_bit_exact_and_the_applied_set_reads_alone() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "fid", &snapshot()).unwrap();
        let back: Snapshot<Vec<f64>> = read(dir.path(), "fid").unwrap().unwrap();
        assert_eq!(back, snapshot());
        assert_eq!(read_applied(dir.path(), "fid").unwrap(), snapshot().applied);
        assert!(read::<Vec<f64>>(dir.path(), "lpips").unwrap().is_none());
    }

    #[test]
    fn tampered_truncated_or_foreign_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "fid", &snapshot()).unwrap();
        let path = checkpoint_path(dir.path(), "fid");
        let good = std::fs::read(&path).unwrap();
        let mut flipped = good.clone();
        flipped[30] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let e = read::<Vec<f64>>(dir.path(), "fid").unwrap_err().to_string();
        assert!(e.contains("fid.ckpt\": checksum mismatch: the file is truncated or was changed"), "{e}");
        std::fs::write(&path, &good[..good.len() - 7]).unwrap();
        assert!(read_applied(dir.path(), "fid").unwrap_err().to_string().contains("checksum mismatch"));
        std::fs::write(checkpoint_path(dir.path(), "rca"), &good).unwrap();
        let e = read_applied(dir.path(), "rca").unwrap_err().to_string();
        assert!(e.contains("written by stage \"fid\", not \"rca\""), "{e}");
        // A crafted length with a valid checksum is refused, not followed.
        let mut crafted = b"RCFCKPT2".to_vec();
        crafted.extend_from_slice(&u64::MAX.to_le_bytes());
        crafted.extend_from_slice(&[0; 16]);
        let digest = Sha256::digest(&crafted);
        crafted.extend_from_slice(&digest);
        std::fs::write(&path, &crafted).unwrap();
        let e = read_applied(dir.path(), "fid").unwrap_err().to_string();
        assert!(e.contains("header out of range"), "{e}");
    }

    /// A checkpoint whose state region is grown by `junk` bytes, lengths and checksum redone.
    fn with_junk_in_state(good: &[u8], junk: usize) -> Vec<u8> {
        let body = &good[..good.len() - DIGEST_LEN];
        let header_len = u64::from_le_bytes(body[8..16].try_into().unwrap()) as usize;
        let len_at = 16 + header_len;
        let state_len = u64::from_le_bytes(body[len_at..len_at + 8].try_into().unwrap()) as usize;
        let mut out = body[..len_at].to_vec();
        out.extend_from_slice(&((state_len + junk) as u64).to_le_bytes());
        out.extend_from_slice(&body[len_at + 8..]);
        out.extend(std::iter::repeat_n(0xAB, junk));
        let digest = Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    #[test]
    fn trailing_bytes_other_formats_are_refused_and_format_1_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "fid", &snapshot()).unwrap();
        let path = checkpoint_path(dir.path(), "fid");
        let good = std::fs::read(&path).unwrap();
        assert_eq!(&good[..8], b"RCFCKPT2");
        std::fs::write(&path, with_junk_in_state(&good, 16)).unwrap();
        let e = read::<Vec<f64>>(dir.path(), "fid").unwrap_err().to_string();
        assert!(e.contains("not a state of this stage's type: 16 unexpected bytes after it"), "{e}");
        // Another format digit (a checksum made for it): refused, naming it.
        let mut other = good[..good.len() - DIGEST_LEN].to_vec();
        other[7] = b'7';
        let digest = Sha256::digest(&other);
        other.extend_from_slice(&digest);
        std::fs::write(&path, &other).unwrap();
        let e = read_applied(dir.path(), "fid").unwrap_err().to_string();
        assert!(e.contains("checkpoint format '7', this rcaflow (") && e.contains("reads formats 1 and 2"), "{e}");
        // Format 1, as rcaflow wrote it before: header without the version.
        #[derive(Serialize)]
        struct V1<'a> {
            stage: &'a str,
            applied: Vec<UnitId>,
        }
        let s = snapshot();
        let header = postcard::to_stdvec(&V1 { stage: "fid", applied: s.applied.iter().copied().collect() }).unwrap();
        let state = postcard::to_stdvec(&s.state).unwrap();
        let mut v1 = b"RCFCKPT1".to_vec();
        v1.extend_from_slice(&(header.len() as u64).to_le_bytes());
        v1.extend_from_slice(&header);
        v1.extend_from_slice(&(state.len() as u64).to_le_bytes());
        v1.extend_from_slice(&state);
        let digest = Sha256::digest(&v1);
        v1.extend_from_slice(&digest);
        std::fs::write(&path, &v1).unwrap();
        let back: Snapshot<Vec<f64>> = read(dir.path(), "fid").unwrap().unwrap();
        assert_eq!(back, s);
    }
}
