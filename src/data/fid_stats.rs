//! FID reference statistics files in pytorch-fid's format: an `.npz` holding `mu` (d) and
//! `sigma` (d x d), float64 (what `pytorch_fid --save-stats` writes with
//! `np.savez_compressed`, and what `rcaflow fid-stats` writes, uncompressed).
//!
//! Reading follows numpy's `.npy` format (numpy/lib/format.py, versions 1 to 3) for the two
//! arrays only, through the bounded zip reader of `models::zip_member`: a statistics file from
//! elsewhere cannot make rcaflow inflate more than the two arrays its headers declare.

use std::path::{Path, PathBuf};

use crate::files::name::printable;
use crate::models::zip_member::BoundedZip;

#[derive(Debug, thiserror::Error)]
pub enum StatsFileError {
    #[error("fid statistics \"{path}\": cannot read: {}", printable(.cause))]
    Read { path: PathBuf, cause: String },
    #[error("fid statistics \"{path}\": {}", printable(.message))]
    Invalid { path: PathBuf, message: String },
    #[error("fid statistics \"{path}\": cannot write: {cause}")]
    Write { path: PathBuf, cause: String },
}

/// Mean and covariance of d-dimensional features.
#[derive(Clone, Debug, PartialEq)]
pub struct FidStats {
    pub mu: Vec<f64>,
    /// Row-major d x d.
    pub sigma: Vec<f64>,
}

impl FidStats {
    pub fn dim(&self) -> usize {
        self.mu.len()
    }

    /// Reads `mu` and `sigma` from an `.npz`, and nothing else: each array's `.npy` header is
    /// read first and its shape and dtype checked, then the member's declared size must be
    /// exactly what that shape needs before it is inflated (through a capped reader); other
    /// members are never inflated.
    pub fn read(path: &Path) -> Result<FidStats, StatsFileError> {
        let invalid = |message: String| StatsFileError::Invalid { path: path.to_path_buf(), message };
        let mut zip = BoundedZip::open(path).map_err(|cause| StatsFileError::Read { path: path.to_path_buf(), cause })?;
        let mu = read_npy(&mut zip, "mu", None).map_err(invalid)?;
        let d = mu.shape[0];
        let sigma = read_npy(&mut zip, "sigma", Some(d)).map_err(invalid)?;
        let stats = FidStats { mu: mu.values, sigma: sigma.values };
        if stats.mu.iter().chain(&stats.sigma).any(|v| !v.is_finite()) {
            return Err(invalid("contains NaN or infinite values".into()));
        }
        Ok(stats)
    }

    /// Writes `mu` and `sigma` as float64 arrays (encoded in memory, then the atomic writer,
    /// fault point `npz.write`).
    pub fn write(&self, path: &Path) -> Result<(), StatsFileError> {
        use crate::data::npy::{encode_npy, encode_npz};
        let err = |cause: String| StatsFileError::Write { path: path.to_path_buf(), cause };
        let d = self.dim();
        let members = [("mu", encode_npy(&self.mu, &[d]).map_err(err)?), ("sigma", encode_npy(&self.sigma, &[d, d]).map_err(err)?)];
        let bytes = encode_npz(&members).map_err(err)?;
        crate::files::atomic::write(path, &bytes, "npz.write").map_err(|e| err(e.to_string()))
    }
}

/// The largest feature dimension accepted (pytorch-fid's largest is 2048); sigma is d x d
/// float64, so this bounds it at 2 GiB before the file's own size does.
const MAX_DIM: usize = 16384;

/// How much of a member is read to find its `.npy` header (numpy pads headers to 64 bytes; a
/// version 2 header may be longer, never this long for a 1-d or 2-d array).
const MAX_HEADER: u64 = 64 << 10;

/// One array of the file, as float64 in row-major order.
struct Npy {
    shape: Vec<usize>,
    values: Vec<f64>,
}

/// The header fields that matter: element type, order and shape.
#[derive(Debug, PartialEq)]
struct NpyHeader {
    /// Bytes of the header, magic included (where the data starts).
    len: usize,
    /// 4 or 8 (little-endian float).
    item: usize,
    fortran_order: bool,
    shape: Vec<usize>,
}

/// `name.npy`: `mu` (d) when `d` is None, else `sigma` (d x d).
fn read_npy(zip: &mut BoundedZip, name: &str, d: Option<usize>) -> Result<Npy, String> {
    let member = format!("{name}.npy");
    if zip.member(&member)?.is_none() {
        return Err(format!("no array \"{name}\"; expected \"mu\" and \"sigma\" (pytorch-fid's format)"));
    }
    let head = zip.read_prefix(&member, MAX_HEADER, u64::MAX)?;
    let h = parse_npy_header(&head).map_err(|e| format!("\"{name}\": {e}"))?;
    let shape_ok = match d {
        None => h.shape.len() == 1 && h.shape[0] >= 1 && h.shape[0] <= MAX_DIM,
        Some(d) => h.shape == [d, d],
    };
    if !shape_ok {
        return Err(match d {
            None => format!("\"mu\" has shape {:?}, expected [d] with 1 <= d <= {MAX_DIM}", h.shape),
            Some(d) => format!("\"sigma\" has shape {:?}, expected [{d}, {d}] to match \"mu\"", h.shape),
        });
    }
    let count: usize = h.shape.iter().product();
    let size = (h.len + count * h.item) as u64;
    let m = zip.member(&member)?.ok_or_else(|| format!("member {member} vanished"))?;
    if m.size != size {
        return Err(format!("\"{name}\": member {member} declares {} bytes, but its header's shape {:?} needs {size}", m.size, h.shape));
    }
    let bytes = zip.read(&member, size)?;
    let data = &bytes[h.len..];
    let mut values: Vec<f64> = match h.item {
        8 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).collect(),
        _ => data.chunks_exact(4).map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap_or([0; 4])))).collect(),
    };
    if h.fortran_order && h.shape.len() == 2 {
        let n = h.shape[0];
        let mut t = vec![0.0; values.len()];
        for i in 0..n {
            for j in 0..n {
                t[i * n + j] = values[j * n + i];
            }
        }
        values = t;
    }
    Ok(Npy { shape: h.shape, values })
}

/// Parses a `.npy` header: `\x93NUMPY`, version, header length, then a Python dict literal
/// such as `{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }`.
fn parse_npy_header(b: &[u8]) -> Result<NpyHeader, String> {
    if b.len() < 10 || &b[..6] != b"\x93NUMPY" {
        return Err("not a .npy array (bad magic)".into());
    }
    let (text_at, text_len) = match b[6] {
        1 => (10usize, u16::from_le_bytes([b[8], b[9]]) as usize),
        2 | 3 if b.len() >= 12 => (12, u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize),
        v => return Err(format!(".npy version {v} is not supported")),
    };
    let end = text_at.checked_add(text_len).filter(|&e| e <= b.len()).ok_or("the .npy header is truncated or too long")?;
    let text = std::str::from_utf8(&b[text_at..end]).map_err(|_| "the .npy header is not text")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = text.find(&format!("'{key}':")).ok_or_else(|| format!("the .npy header has no '{key}'"))?;
        Ok(text[at + key.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let item = if descr.starts_with("'<f8'") {
        8
    } else if descr.starts_with("'<f4'") {
        4
    } else {
        let shown: String = descr.chars().take(12).collect();
        return Err(format!("dtype {shown}... is not little-endian float64 or float32"));
    };
    let fortran_order = match field("fortran_order")? {
        f if f.starts_with("True") => true,
        f if f.starts_with("False") => false,
        _ => return Err("the .npy header's 'fortran_order' is neither True nor False".into()),
    };
    let shape_text = field("shape")?;
    let close = shape_text.find(')').filter(|_| shape_text.starts_with('(')).ok_or("the .npy header's 'shape' is not a tuple")?;
    let shape = shape_text[1..close]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("the .npy header's shape has {s:?}, not a size")))
        .collect::<Result<Vec<usize>, String>>()?;
    Ok(NpyHeader { len: end, item, fortran_order, shape })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fid_stats").join(name)
    }

    /// Written by numpy: `np.savez_compressed(path, mu=mu, sigma=sigma)` (see the values below).
    #[test]
    fn reads_numpy_compressed_and_plain_npz() {
        let mu = [-0.14240467046322233, 0.4335453787492902, -0.07478869603387864, -0.3808020667638235];
        for name in ["pytorch_fid_style_d4.npz", "uncompressed_d4.npz"] {
            let s = FidStats::read(&fixture(name)).unwrap();
            assert_eq!(s.mu, mu, "{name}");
            assert_eq!(s.sigma.len(), 16);
            assert_eq!(s.sigma[1], -1.1094196121132538);
            assert_eq!(s.sigma[1], s.sigma[4], "symmetric");
        }
    }

    #[test]
    fn round_trips_and_names_problems() {
        let dir = tempfile::tempdir().unwrap();
        let s = FidStats { mu: vec![1.0, 2.0], sigma: vec![1.0, 0.5, 0.5, 2.0] };
        let path = dir.path().join("stats.npz");
        s.write(&path).unwrap();
        assert_eq!(FidStats::read(&path).unwrap(), s);
        let missing = fixture("no_sigma.npz");
        assert_eq!(
            FidStats::read(&missing).unwrap_err().to_string(),
            format!("fid statistics \"{}\": no array \"sigma\"; expected \"mu\" and \"sigma\" (pytorch-fid's format)", missing.display())
        );
        let not_npz = dir.path().join("x.npz");
        std::fs::write(&not_npz, b"hello").unwrap();
        assert!(FidStats::read(&not_npz)
            .unwrap_err()
            .to_string()
            .starts_with(&format!("fid statistics \"{}\": cannot read: ", not_npz.display())));
    }
}
