//! The one atomic writer: every file rcaflow writes (PNGs, figures, reports, statistics,
//! checkpoints, run manifests, trained weights) is encoded in memory and handed to [`write`],
//! which
//!
//! 1. creates a temporary beside the target exclusively (`O_CREAT | O_EXCL`: a planted file or
//!    symlink under that name is never opened or followed), with an unpredictable name in
//!    rcaflow's own pattern, `.<name>.rcaflow-tmp-<12 random letters and digits>`;
//! 2. writes, flushes and fsyncs it, surfacing every error (the `image` crate's buffered writer
//!    used to flush on drop and lose "no space left on device": issue 16);
//! 3. passes the fault point (`RCAFLOW_FAULT=enospc@POINT` fails here, as a full disk would);
//! 4. renames it over the target and fsyncs the folder (unless the caller batches that, see
//!    [`write_unsynced_dir`]).
//!
//! On any failure the temporary is removed and the target is left as it was (the old file, or
//! none): a reader or a crash sees the old file or the new one, never a torn or empty one.
//! [`remove_temporaries`] removes, at start-up, only files in that pattern: rcaflow's own
//! leftovers of a killed process, never a user's file.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

use crate::fault;

/// What every temporary name contains, between the target's name and the random part.
pub const TEMP_MARK: &str = ".rcaflow-tmp-";
/// Length of the random part (letters and digits: 62^12, about 2^71 names).
const RANDOM_LEN: usize = 12;
/// Target names longer than this are shortened in the temporary name (file names are at most
/// 255 bytes on common file systems; the mark and random part take 26).
const MAX_STEM_BYTES: usize = 200;

/// Replaces `path` with `bytes` atomically and durably; `point` names the fault point (for
/// example `png.write`, `checkpoint.fid.write`).
pub fn write(path: &Path, bytes: &[u8], point: &str) -> io::Result<()> {
    write_file(path, bytes, point, true)
}

/// [`write`] without the fsync of the folder after the rename, for many files in one folder
/// (a batch of PNGs): the caller calls [`sync_dir`] before it records them as written.
pub fn write_unsynced_dir(path: &Path, bytes: &[u8], point: &str) -> io::Result<()> {
    write_file(path, bytes, point, false)
}

/// Makes the renames into `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The folder a path's file lives in (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

fn write_file(path: &Path, bytes: &[u8], point: &str, durable_dir: bool) -> io::Result<()> {
    let dir = parent_of(path);
    let name =
        path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a file name (ends in \"..\" or is a root)"))?;
    let mut tmp = temporary_in(dir, &name.to_string_lossy())?;
    // Errors from here on drop `tmp`, which removes the temporary.
    tmp.write_all(bytes)?;
    tmp.flush()?;
    tmp.as_file().sync_all()?;
    fault::at(point)?;
    tmp.persist(path).map_err(|e| e.error)?;
    if durable_dir {
        sync_dir(dir)?;
    }
    Ok(())
}

/// A new, empty temporary file in `dir` for the target `name`, created exclusively, mode 0666
/// less the umask (what `File::create` gives, so outputs stay readable as before).
fn temporary_in(dir: &Path, name: &str) -> io::Result<tempfile::NamedTempFile> {
    let mut end = name.len().min(MAX_STEM_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let stem = &name[..end];
    let mut builder = tempfile::Builder::new();
    let prefix = format!(".{stem}{TEMP_MARK}");
    builder.prefix(&prefix).suffix("").rand_bytes(RANDOM_LEN);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir)
}

/// Whether `file_name` is in rcaflow's temporary pattern (see the module header).
pub fn is_temporary(file_name: &str) -> bool {
    let Some(rest) = file_name.strip_prefix('.') else { return false };
    match rest.rfind(TEMP_MARK) {
        Some(at) => {
            let random = &rest[at + TEMP_MARK.len()..];
            at > 0 && random.len() == RANDOM_LEN && random.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        None => false,
    }
}

/// Removes the temporaries a killed process left in `dir` mid-write (never valid). Only regular
/// files in rcaflow's own pattern are removed; a missing `dir` is fine. Returns how many.
pub fn remove_temporaries(dir: &Path) -> io::Result<usize> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let ours = entry.file_name().to_str().is_some_and(is_temporary);
        // file_type() does not follow symlinks: a symlink in the pattern is not ours either.
        if ours && entry.file_type()?.is_file() {
            fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn writes_replace_the_target_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write(&path, b"one", "test.write").unwrap();
        write(&path, b"two", "test.write").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(names(dir.path()), ["a.json"]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Readable by others as File::create would make it (umask permitting), not 0600.
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_ne!(mode, 0o600, "{mode:o}");
        }
    }

    #[test]
    fn a_failed_write_keeps_the_old_file_and_removes_its_temporary() {
        let dir = tempfile::tempdir().unwrap();
        // A folder in the way of the rename: the rename fails, the error comes back.
        let path = dir.path().join("busy");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"x").unwrap();
        assert!(write(&path, b"new", "test.write").is_err());
        assert_eq!(names(dir.path()), ["busy"]);
        // A folder that does not exist: the temporary cannot be created.
        assert!(write(&dir.path().join("missing/a.png"), b"x", "test.write").is_err());
    }

    #[cfg(unix)]
    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim.txt");
        fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("out.png");
        std::os::unix::fs::symlink(&victim, &path).unwrap();
        write(&path, b"png", "test.write").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&path).unwrap(), b"png");
        assert!(!fs::symlink_metadata(&path).unwrap().file_type().is_symlink());
    }

    #[test]
    fn temporary_names_are_recognised_and_cleanup_removes_only_them() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = temporary_in(dir.path(), "000001.png").unwrap().into_temp_path().keep().unwrap();
        let tmp_name = tmp.file_name().unwrap().to_str().unwrap().to_string();
        assert!(tmp_name.starts_with(".000001.png.rcaflow-tmp-"), "{tmp_name}");
        assert!(is_temporary(&tmp_name));
        // A user's files, even ones that look a bit like ours, stay.
        for keep in ["notes.txt", "fid.ckpt.tmp-1234", ".rcaflow-tmp-abcdefghijkl", ".x.rcaflow-tmp-short", "x.rcaflow-tmp-abcdefghijkl"] {
            assert!(!is_temporary(keep), "{keep}");
            fs::write(dir.path().join(keep), b"user").unwrap();
        }
        assert_eq!(remove_temporaries(dir.path()).unwrap(), 1);
        assert!(!tmp.exists());
        assert_eq!(names(dir.path()).len(), 5);
        assert_eq!(remove_temporaries(&dir.path().join("absent")).unwrap(), 0);
        let long = "n".repeat(300);
        let t = temporary_in(dir.path(), &long).unwrap();
        assert!(is_temporary(t.path().file_name().unwrap().to_str().unwrap()));
    }
}
