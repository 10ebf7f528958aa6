//! Baseline files (`rcaflow baseline`, `rca`'s `baseline = FILE`): the oracle's accuracy on
//! real held-out images, kept so later runs need not score the real images again.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::metrics::rca::{ClassificationSummary, Confusion};

/// Schema tag of baseline files.
pub const BASELINE_SCHEMA: &str = "rcaflow-baseline/1";

/// The oracle's accuracy on real held-out images, as `rcaflow baseline` writes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Baseline {
    pub schema: String,
    pub classes: Vec<String>,
    /// How the oracle was configured (free-form, for the reader).
    pub oracle: serde_json::Value,
    /// Where the real images came from.
    pub source: PathBuf,
    pub real: ClassificationSummary,
}

#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("baseline \"{path}\": cannot read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("baseline \"{path}\": not a baseline file: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("baseline \"{path}\": schema \"{found}\", expected \"{BASELINE_SCHEMA}\"")]
    Schema { path: PathBuf, found: String },
    #[error("baseline \"{path}\": confusion matrix is not {n}x{n} for {n} classes")]
    Shape { path: PathBuf, n: usize },
}

impl Baseline {
    pub fn read(path: &Path) -> Result<Baseline, BaselineError> {
        let text = std::fs::read_to_string(path).map_err(|source| BaselineError::Read { path: path.into(), source })?;
        let b: Baseline = serde_json::from_str(&text).map_err(|e| BaselineError::Parse { path: path.into(), message: e.to_string() })?;
        if b.schema != BASELINE_SCHEMA {
            return Err(BaselineError::Schema { path: path.into(), found: b.schema });
        }
        b.confusion().map(|_| b.clone()).ok_or(BaselineError::Shape { path: path.into(), n: b.classes.len() })
    }

    /// The real confusion matrix, if its shape matches the class list.
    pub fn confusion(&self) -> Option<Confusion> {
        let n = self.classes.len();
        let rows = &self.real.confusion;
        if rows.len() != n || rows.iter().any(|r| r.len() != n) {
            return None;
        }
        Confusion::from_counts(n, rows.concat()).ok()
    }
}
