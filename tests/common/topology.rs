//! Topology files built section by section, so a test states only what its run needs and the
//! same components are written one way everywhere. Values are TOML values (`4`, `0.5`, `"real"`,
//! `vec!["a", "b"]`, `true`); the text keeps the order sections and keys were added in.
//!
//! ```ignore
//! Topology::new("run")
//!     .image_folder("real", "real")
//!     .set("sources.real", "unit_size", 2)
//!     .sampler("sampler", "ddpm", Sampler { steps: 3, per_class: 5, unit_size: 2, seed: 3 })
//!     .evaluation("sampler", 4, 4)
//!     .write(&root.join("tiny.toml"));
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use toml::Value;

/// The size of a `ddpm_sampler` source.
#[derive(Clone, Copy)]
pub struct Sampler {
    pub steps: i64,
    pub per_class: i64,
    pub unit_size: i64,
    pub seed: i64,
}

#[derive(Clone, Default)]
pub struct Topology {
    /// (`run`, `sources.real`, ...; its `key = value` lines).
    sections: Vec<(String, Vec<(String, Value)>)>,
}

impl Topology {
    /// `[run]` with `dir = run_dir`.
    pub fn new(run_dir: &str) -> Self {
        Topology::default().section("run").set("run", "dir", run_dir)
    }

    /// An empty `[header]` section.
    pub fn section(mut self, header: &str) -> Self {
        assert!(self.sections.iter().all(|(h, _)| h != header), "[{header}] twice");
        self.sections.push((header.to_string(), Vec::new()));
        self
    }

    /// `key = value` in `[header]` (which must exist): replaces the key's value, or adds it last.
    pub fn set(mut self, header: &str, key: &str, value: impl Into<Value>) -> Self {
        let (_, entries) = self.sections.iter_mut().find(|(h, _)| h == header).unwrap_or_else(|| panic!("no [{header}] in the topology"));
        let value = value.into();
        match entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, v)) => *v = value,
            None => entries.push((key.to_string(), value)),
        }
        self
    }

    /// `[header]` with `type = kind` and, when there are any, `inputs`.
    pub fn component(self, header: &str, kind: &str, inputs: &[&str]) -> Self {
        let t = self.section(header).set(header, "type", kind);
        if inputs.is_empty() {
            t
        } else {
            t.set(header, "inputs", inputs.to_vec())
        }
    }

    /// `[sources.<name>]`: an `image_folder` reading the folder `name` (relative to the file);
    /// `origin` is `"real"` or `"generated"`.
    pub fn image_folder(self, name: &str, origin: &str) -> Self {
        let header = format!("sources.{name}");
        self.component(&header, "image_folder", &[]).set(&header, "path", name).set(&header, "origin", origin)
    }

    /// `[sources.<name>]`: a `ddpm_sampler` of the UNet folder `unet`.
    pub fn sampler(self, name: &str, scheduler: &str, size: Sampler) -> Self {
        let h = format!("sources.{name}");
        self.component(&h, "ddpm_sampler", &[])
            .set(&h, "unet", "unet")
            .set(&h, "scheduler", scheduler)
            .set(&h, "steps", size.steps)
            .set(&h, "per_class", size.per_class)
            .set(&h, "unit_size", size.unit_size)
            .set(&h, "seed", size.seed)
    }

    /// `[transforms.batches]`.
    pub fn batcher(self, inputs: &[&str], batch_size: i64) -> Self {
        self.component("transforms.batches", "batcher", inputs).set("transforms.batches", "batch_size", batch_size)
    }

    /// `[transforms.oracle]`: the colour oracle (`oracle.safetensors`, a cifar-stem ResNet-18).
    pub fn oracle(self, inputs: &[&str]) -> Self {
        let h = "transforms.oracle";
        self.component(h, "oracle_classifier", inputs)
            .set(h, "weights", "oracle.safetensors")
            .set(h, "arch", "resnet18")
            .set(h, "stem", "cifar")
            .set(h, "normalization", "minus-one-one")
    }

    /// `[transforms.inception]`: Inception weights in `inception.safetensors`.
    pub fn inception(self, inputs: &[&str]) -> Self {
        self.component("transforms.inception", "inception_v3", inputs).set("transforms.inception", "weights", "inception.safetensors")
    }

    /// `[sinks.<name>]` of type `kind`.
    pub fn sink(self, name: &str, kind: &str, inputs: &[&str]) -> Self {
        self.component(&format!("sinks.{name}"), kind, inputs)
    }

    /// `[sinks.lpips]`: alexnet LPIPS (`alexnet.safetensors`, `alex-lin.safetensors`).
    pub fn lpips(self, inputs: &[&str], pairs: i64) -> Self {
        let h = "sinks.lpips";
        self.sink("lpips", "lpips_diversity", inputs)
            .set(h, "net", "alex")
            .set(h, "backbone", "alexnet.safetensors")
            .set(h, "lin", "alex-lin.safetensors")
            .set(h, "pairs", pairs)
    }

    /// Every evaluation stage after the sources `real` and `generated`: a batcher, the oracle
    /// (rca), Inception (fid, inception_score in 2 splits), lpips_diversity, and the report.
    pub fn evaluation(self, generated: &str, batch_size: i64, lpips_pairs: i64) -> Self {
        self.batcher(&["real", generated], batch_size)
            .oracle(&["batches"])
            .inception(&["batches"])
            .sink("rca", "rca", &["oracle"])
            .sink("fid", "fid", &["inception"])
            .sink("inception_score", "inception_score", &["inception"])
            .set("sinks.inception_score", "splits", 2)
            .lpips(&["batches"], lpips_pairs)
            .sink("report", "report", &["rca", "fid", "inception_score", "lpips"])
    }

    /// The TOML text.
    pub fn text(&self) -> String {
        let mut text = String::new();
        for (header, entries) in &self.sections {
            if !text.is_empty() {
                text.push('\n');
            }
            writeln!(text, "[{header}]").unwrap();
            for (key, value) in entries {
                writeln!(text, "{key} = {value}").unwrap();
            }
        }
        text
    }

    /// Writes the text to `path`; returns the path.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, self.text()).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path.to_path_buf()
    }
}
