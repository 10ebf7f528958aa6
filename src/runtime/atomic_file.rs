//! Atomic file replacement: write a temporary file beside the target, fsync it, rename it over
//! the target, fsync the directory. A reader (or a crash) sees the old file or the new one,
//! never a torn one: what report and checkpoint writes rely on.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The temporary path used while writing `path`.
pub fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Replaces `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_atomic_with(path, bytes, || Ok(()))
}

/// [`write_atomic`], calling `before_commit` once the temporary file is written and synced and
/// before it is renamed (where checkpoints inject their faults); its error aborts the write.
pub fn write_atomic_with(path: &Path, bytes: &[u8], before_commit: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    let tmp = temporary_path(path);
    let result = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        before_commit()?;
        commit(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Renames a fully written temporary file over `path` and makes the rename durable.
pub fn commit(tmp: &Path, path: &Path) -> io::Result<()> {
    fs::rename(tmp, path)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// Removes the temporary files in `dir` that a killed process left mid-write (never valid, and
/// named by that process's pid, so nothing else removes them). A missing `dir` is fine.
pub fn remove_temporaries(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_name().to_string_lossy().contains(".tmp-") {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
