//! Bounded reading of zip archives: torch's zip checkpoints (`zip_pth`) and numpy's `.npz`
//! statistics (`data::fid_stats`). A member is only ever read by name, after its sizes from the
//! central directory are checked, and is inflated through a reader capped at its declared size,
//! so neither a member whose header lies nor a zip bomb beside the members wanted can make a
//! small file take much memory. Members nobody asks for are never inflated.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use zip::{CompressionMethod, ZipArchive};

/// How many times its compressed size a member larger than [`RATIO_FREE_BYTES`] may inflate to.
/// Weights and covariance matrices compress to about their size (floats are noise to deflate);
/// zeros compress a thousandfold, which is what a bomb is made of.
pub const MAX_INFLATION_RATIO: u64 = 20;

/// Members up to this size are not held to [`MAX_INFLATION_RATIO`] (a zero bias, a short
/// header compress well and cost nothing).
pub const RATIO_FREE_BYTES: u64 = 1 << 20;

/// A zip archive on disk, opened for bounded reads. Errors are one-line strings without the
/// path (callers add it).
pub struct BoundedZip {
    archive: ZipArchive<File>,
    file_len: u64,
}

/// What the central directory declares of one member.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    /// Uncompressed size.
    pub size: u64,
    pub compressed_size: u64,
    pub stored: bool,
}

impl BoundedZip {
    pub fn open(path: &Path) -> Result<Self, String> {
        let file = File::open(path).map_err(|e| e.to_string())?;
        let file_len = file.metadata().map_err(|e| e.to_string())?.len();
        let archive = ZipArchive::new(file).map_err(|e| format!("not a readable zip archive: {e}"))?;
        Ok(Self { archive, file_len })
    }

    /// Every member's name, in central-directory order (names that are not UTF-8 are skipped).
    pub fn names(&self) -> Vec<String> {
        self.archive.file_names().filter_map(|n| n.ok().map(|n| n.into_owned())).collect()
    }

    /// What the central directory says of member `name`, if present; nothing is inflated.
    pub fn member(&mut self, name: &str) -> Result<Option<Member>, String> {
        let Some(i) = self.archive.index_for_name(name) else { return Ok(None) };
        let f = self.archive.by_index_raw(i).map_err(|e| format!("member {name:?}: {e}"))?;
        Ok(Some(Member {
            name: name.to_string(),
            size: f.size(),
            compressed_size: f.compressed_size(),
            stored: f.compression() == CompressionMethod::Stored,
        }))
    }

    /// The whole of member `name`, which must declare at most `max` bytes and no more than its
    /// compressed size allows; it is inflated through a reader that stops one byte past the
    /// declared size, and refused unless it yields exactly that size.
    pub fn read(&mut self, name: &str, max: u64) -> Result<Vec<u8>, String> {
        let m = self.member(name)?.ok_or_else(|| format!("member {name:?} is missing"))?;
        self.check(&m, max)?;
        self.read_at_most(&m, m.size, true)
    }

    /// The first `n` bytes of member `name` (fewer if it is shorter), inflating only those:
    /// for a header that says how large the rest must be. The member's declared sizes are
    /// checked as by [`BoundedZip::read`] with `max`.
    pub fn read_prefix(&mut self, name: &str, n: u64, max: u64) -> Result<Vec<u8>, String> {
        let m = self.member(name)?.ok_or_else(|| format!("member {name:?} is missing"))?;
        self.check(&m, max)?;
        self.read_at_most(&m, n.min(m.size), false)
    }

    fn check(&self, m: &Member, max: u64) -> Result<(), String> {
        let name = &m.name;
        if m.size > max {
            return Err(format!("member {name:?} declares {} bytes, more than the {max} expected", m.size));
        }
        if m.compressed_size > self.file_len {
            return Err(format!("member {name:?} declares {} compressed bytes in a file of {}", m.compressed_size, self.file_len));
        }
        if m.stored && m.size != m.compressed_size {
            return Err(format!("member {name:?} is stored uncompressed but declares {} bytes in {}", m.size, m.compressed_size));
        }
        if m.size > RATIO_FREE_BYTES && m.size > m.compressed_size.saturating_mul(MAX_INFLATION_RATIO) {
            return Err(format!(
                "member {name:?} declares {} bytes from {} compressed, out of proportion \
                 (more than {MAX_INFLATION_RATIO} times; a zip bomb?)",
                m.size, m.compressed_size
            ));
        }
        Ok(())
    }

    fn read_at_most(&mut self, m: &Member, n: u64, whole: bool) -> Result<Vec<u8>, String> {
        let name = &m.name;
        let f = self.archive.by_name(name).map_err(|e| format!("member {name:?}: {e}"))?;
        let cap = usize::try_from(n).map_err(|_| format!("member {name:?} is too large"))?;
        let mut out = Vec::with_capacity(cap);
        // One byte past the declared size: a member that inflates to more is caught, not read.
        let limit = if whole { n + 1 } else { n };
        f.take(limit).read_to_end(&mut out).map_err(|e| format!("member {name:?}: {e}"))?;
        if whole && out.len() as u64 != m.size {
            let found = if out.len() as u64 > m.size { "more".to_string() } else { format!("only {}", out.len()) };
            return Err(format!("member {name:?} inflates to {found} bytes, not the {} its header declares", m.size));
        }
        Ok(out)
    }
}
