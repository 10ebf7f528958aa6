//! The Classification Accuracy Score report (`rcaflow cas`): `cas.json` (schema
//! [`CAS_SCHEMA`]) and `cas.md`.
//!
//! CAS follows Ravuri and Vinyals 2019 ("Classification Accuracy Score for Conditional
//! Generative Models"): a classifier trained on generated images only, tested on real held-out
//! images. Next to it stand the real-trained oracle's figures on the same images, and their
//! ratios, computed as RCA's are ([`crate::metrics::rca::relative_accuracy`]: `null` where a
//! ratio has no evidence behind it).

use std::fmt::Write as _;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::metrics::rca::ClassificationSummary;

/// Schema tag of `cas.json`.
pub const CAS_SCHEMA: &str = "rcaflow-cas/1";

/// `cas.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CasReport {
    pub schema: String,
    pub classes: Vec<String>,
    /// The generated training images: where they came from and how many per class.
    pub generated: ImageSet,
    /// The real held-out images both classifiers are tested on.
    pub real_eval: ImageSet,
    /// How the classifier was trained (`train oracle`'s recipe) and where its weights are.
    pub classifier: serde_json::Value,
    /// The classifier's figures per epoch (eval accuracy: on `real_eval`).
    pub epochs: serde_json::Value,
    /// The generated-trained classifier on `real_eval`: accuracy (the CAS), per-class recall,
    /// confusion (rows = true class).
    pub cas: ClassificationSummary,
    /// The real-trained oracle on the same images.
    pub real_oracle: RealOracle,
    /// CAS accuracy / real-trained accuracy (`null` when the real accuracy is 0).
    pub ratio: Option<f64>,
    /// Per class: CAS recall / real-trained recall (`null` without evidence).
    pub class_ratio: Vec<Option<f64>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ImageSet {
    pub source: PathBuf,
    pub images: u64,
    pub per_class: Vec<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RealOracle {
    pub weights: PathBuf,
    pub summary: ClassificationSummary,
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.4}"))
}

/// `cas.md`: the headline figures, then one row per class.
pub fn render(r: &CasReport, figure: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Classification Accuracy Score\n");
    let _ = writeln!(
        md,
        "A classifier with the oracle's architecture and recipe, trained on {} generated images (`{}`), tested on {} real held-out images (`{}`).\n",
        r.generated.images,
        r.generated.source.display(),
        r.real_eval.images,
        r.real_eval.source.display()
    );
    let _ = writeln!(md, "| | accuracy on real held-out images |");
    let _ = writeln!(md, "|---|---:|");
    let _ = writeln!(md, "| trained on generated (CAS) | {} |", num(r.cas.accuracy));
    let _ = writeln!(md, "| trained on real (`{}`) | {} |", r.real_oracle.weights.display(), num(r.real_oracle.summary.accuracy));
    let _ = writeln!(md, "| CAS ratio (CAS / real) | {} |\n", num(r.ratio));
    let _ = writeln!(md, "| class | generated images | real images | CAS recall | real-trained recall | ratio |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    for (c, class) in r.classes.iter().enumerate() {
        let _ = writeln!(
            md,
            "| {class} | {} | {} | {} | {} | {} |",
            r.generated.per_class.get(c).copied().unwrap_or(0),
            r.cas.support.get(c).copied().unwrap_or(0),
            num(r.cas.recall.get(c).copied()),
            num(r.real_oracle.summary.recall.get(c).copied()),
            num(r.class_ratio.get(c).copied().flatten())
        );
    }
    let _ = writeln!(md, "\n![confusion matrix of the generated-trained classifier on real images]({figure})");
    md
}
