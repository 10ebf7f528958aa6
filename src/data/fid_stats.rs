//! FID reference statistics files in pytorch-fid's format: an `.npz` holding `mu` (d) and
//! `sigma` (d x d), float64 (what `pytorch_fid --save-stats` writes with
//! `np.savez_compressed`, and what `rcaflow fid-stats` writes, uncompressed).

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum StatsFileError {
    #[error("fid statistics \"{path}\": cannot read: {cause}")]
    Read { path: PathBuf, cause: String },
    #[error("fid statistics \"{path}\": {message}")]
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

    pub fn read(path: &Path) -> Result<FidStats, StatsFileError> {
        let invalid = |message: String| StatsFileError::Invalid { path: path.to_path_buf(), message };
        let arrays = Tensor::read_npz(path).map_err(|e| StatsFileError::Read { path: path.to_path_buf(), cause: e.to_string() })?;
        let get = |name: &str| {
            arrays
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| invalid(format!("no array \"{name}\"; expected \"mu\" and \"sigma\" (pytorch-fid's format)")))
        };
        let (mu, sigma) = (get("mu")?, get("sigma")?);
        let d = match mu.dims() {
            [d] => *d,
            other => return Err(invalid(format!("\"mu\" has shape {other:?}, expected [d]"))),
        };
        if sigma.dims() != [d, d] {
            return Err(invalid(format!("\"sigma\" has shape {:?}, expected [{d}, {d}] to match \"mu\"", sigma.dims())));
        }
        let to_vec = |t: &Tensor| t.to_dtype(DType::F64).and_then(|t| t.flatten_all()).and_then(|t| t.to_vec1::<f64>());
        let stats =
            FidStats { mu: to_vec(mu).map_err(|e| invalid(e.to_string()))?, sigma: to_vec(sigma).map_err(|e| invalid(e.to_string()))? };
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
