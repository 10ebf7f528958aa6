//! `image_folder` source: reads an ImageFolder tree (`root/<class>/**/*.png|jpg|jpeg`, class
//! order = sorted folder names, as torchvision's `ImageFolder`) and emits one batch per work
//! unit (`unit_size` files of one class, in file-name order). Decoding uses the `image` crate
//! (PNG and JPEG only) and converts to RGB. An unreadable file is reported by path and counted,
//! and the run goes on, unless the source is `strict`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{BuildContext, ComponentConfig};
use crate::data::image_folder::{decode_rgb_planar, list_classes, list_images, FolderError};
use crate::report::results::{BadFile, SourceResult};
use crate::report::Summary;
use crate::runtime::batch::{ImageBatch, Payload};
use crate::runtime::merge::{MergeError, MergeState, ShardFold};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::telemetry;
use crate::topology::config::resolve;
use crate::topology::{Checks, DataKind, GraphFacts, HashedInput, NamedClasses, Section};
use crate::units::{cut_into_units, Origin, UnitId, UnitPlan, UnitSpan};

fn default_unit_size() -> usize {
    64
}

/// `image_folder` source: an ImageFolder tree (`root/<class>/*.png|jpg|jpeg`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageFolderConfig {
    pub path: PathBuf,
    pub origin: Origin,
    /// Fail the run on the first unreadable image instead of counting and skipping it.
    #[serde(default)]
    pub strict: bool,
    /// Images per work unit (the grain of exactly-once accounting).
    #[serde(default = "default_unit_size")]
    pub unit_size: usize,
}

impl ComponentConfig for ImageFolderConfig {
    const SECTION: Section = Section::Sources;
    const ACCEPTS: Option<DataKind> = None;
    const PRODUCES: Option<DataKind> = Some(DataKind::Images);
    const RESTARTABLE: bool = false;
    const ACCUMULATES: bool = false;
    const HOLDS_UNITS: bool = false;

    fn source_origin(&self) -> Option<Origin> {
        Some(self.origin)
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.path = resolve(base, &self.path);
    }

    fn check(&self, checks: &mut Checks) {
        if let Err(e) = crate::limits::count("unit_size", self.unit_size, crate::limits::MAX_UNIT_SIZE, "image") {
            checks.error(e);
        }
        if !self.path.is_dir() {
            checks.error(format!("image folder \"{}\" does not exist or is not a directory", self.path.display()));
        }
    }

    fn class_names(&self, checks: &mut Checks) -> Option<NamedClasses> {
        if !self.path.is_dir() {
            return None; // reported by `check`
        }
        match list_classes(&self.path) {
            Err(e) => checks.error(e),
            Ok(names) if names.is_empty() => checks
                .error(format!("image folder \"{}\" has no class sub-folders; expected root/<class>/*.png|jpg|jpeg", self.path.display())),
            Ok(names) => return Some(NamedClasses { names, folder: self.path.clone() }),
        }
        None
    }

    fn check_in_graph(&self, _facts: &GraphFacts, _checks: &mut Checks) {}

    fn describe(&self) -> String {
        let strict = if self.strict { " strict" } else { "" };
        format!("path={} origin={} unit_size={}{strict}", self.path.display(), self.origin, self.unit_size)
    }

    fn plan(&self, classes: &[String]) -> Result<Option<UnitPlan>, String> {
        let mut per_class = Vec::new();
        for class in classes {
            per_class.push(list_images(&self.path.join(class)).map_err(|e| e.to_string())?.len() as u64);
        }
        Ok(Some(UnitPlan { origin: self.origin, per_class, unit_size: self.unit_size }))
    }

    /// A fingerprint of the listing (relative names and sizes, in order: what decides the
    /// units), without reading every image.
    fn hashed_inputs(&self, classes: &[String]) -> Result<Vec<HashedInput>, String> {
        let mut hasher = Sha256::new();
        for class in classes {
            for f in &list_images(&self.path.join(class)).map_err(|e| e.to_string())? {
                let size = std::fs::metadata(f).map(|m| m.len()).map_err(|e| format!("\"{}\": {e}", f.display()))?;
                hasher.update(f.strip_prefix(&self.path).unwrap_or(f).to_string_lossy().as_bytes());
                hasher.update(size.to_le_bytes());
            }
        }
        let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(vec![HashedInput::Digest { what: format!("listing of {}", self.path.display()), sha256 }])
    }

    /// Merge: what every shard read.
    fn fold_shards(&self, id: &str, fold: &ShardFold) -> Result<usize, MergeError> {
        fold.fold::<FolderRecord>(id)
    }

    fn build(&self, cx: &BuildContext) -> Result<Box<dyn Stage>, String> {
        let planned = cx.plan_of(self.origin).map(|p| p.per_class.clone()).ok_or("no unit plan for this source")?;
        Ok(Box::new(ImageFolderStage { cfg: self.clone(), planned }))
    }
}

/// Per unit read: images decoded, and the files that could not be. A source's checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FolderRecord {
    pub units: BTreeMap<UnitId, (u64, Vec<BadFile>)>,
}

/// The units each shard read.
impl MergeState for FolderRecord {
    fn merge(&mut self, other: FolderRecord) -> Result<(), String> {
        self.units.extend(other.units);
        Ok(())
    }
}

pub struct ImageFolderStage {
    cfg: ImageFolderConfig,
    /// Images per class when the run was planned; the listing must still give them.
    planned: Vec<u64>,
}

impl Stage for ImageFolderStage {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let cfg = self.cfg;
        let origin = cfg.origin;
        // 1. List every class folder first, so progress knows the total.
        let mut per_class = Vec::new();
        for class in ctx.classes.iter() {
            let dir = cfg.path.join(class);
            if !dir.is_dir() {
                return Err(StageError::failed(FolderError::MissingClass(dir)));
            }
            per_class.push(list_images(&dir).map_err(StageError::failed)?);
        }
        let found: Vec<u64> = per_class.iter().map(|f| f.len() as u64).collect();
        if found != self.planned {
            return Err(StageError::Failed(format!(
                "image folder \"{}\" changed since the run was planned: {found:?} images per class, planned {:?}",
                cfg.path.display(),
                self.planned
            )));
        }
        // A shard plans its own units only (all of them without a shard).
        let mine = || cut_into_units(&found, cfg.unit_size).filter(|slot| ctx.in_shard(slot.id(origin)));
        let planned: u64 = mine().map(|slot| slot.len).sum();
        // Units a resumed run skips are done: progress counts this session's work.
        let skipped: u64 = mine().filter(|slot| ctx.skip.contains(&slot.id(origin))).map(|slot| slot.len).sum();
        ctx.control.add_planned(planned - skipped);
        metrics::gauge!(telemetry::RUN_IMAGES_PLANNED, "origin" => origin.as_str()).increment(planned as f64);
        // At 0 from the start, so the first corrupt file shows as an increase.
        metrics::counter!(telemetry::CORRUPT_INPUTS, "stage" => ctx.id.clone()).increment(0);
        tracing::info!(stage = %ctx.id, %origin, images = planned, path = %cfg.path.display(), "listing done");

        // What each unit read, written down before the unit is sent, so a resumed run that skips
        // it still reports its counts (a restart records a redone unit again, idempotently).
        let mut record = ctx.restore::<FolderRecord>()?.unwrap_or_default();
        let mut stopped_early = false;
        // The first decoded image fixes the size every other image must have.
        let mut size: Option<(usize, usize)> = None;

        // 2. One unit per chunk of files; decode, check, send (blocking while downstream is full).
        'units: for slot in cut_into_units(&self.planned, cfg.unit_size) {
            if ctx.control.stop_requested() {
                stopped_early = true;
                break 'units;
            }
            let class = slot.class as usize;
            let first = slot.first_position as usize;
            let chunk = &per_class[class][first..first + slot.len as usize];
            let id = slot.id(origin);
            if ctx.skip.contains(&id) || !ctx.in_shard(id) {
                continue;
            }
            let mut unreadable = Vec::new();
            let batch = ctx.timed(|| -> Result<Option<ImageBatch>, StageError> {
                let mut pixels = Vec::new();
                for path in chunk {
                    let decoded = decode_rgb_planar(path).and_then(|(h, w, px)| match size {
                        Some((eh, ew)) if (eh, ew) != (h, w) => {
                            Err(format!("image is {w}x{h}, expected {ew}x{eh} like the first image of this source"))
                        }
                        _ => {
                            size = Some((h, w));
                            Ok(px)
                        }
                    });
                    match decoded {
                        Ok(px) => pixels.extend_from_slice(&px),
                        Err(error) => {
                            if cfg.strict {
                                return Err(StageError::Failed(format!("image {}: {error}", path.display())));
                            }
                            tracing::warn!(stage = %ctx.id, path = %path.display(), "skipping unreadable image: {error}");
                            metrics::counter!(telemetry::CORRUPT_INPUTS, "stage" => ctx.id.clone()).increment(1);
                            ctx.count_error();
                            unreadable.push(BadFile { path: path.clone(), error });
                        }
                    }
                }
                let Some((h, w)) = size else { return Ok(None) };
                let n = pixels.len() / (3 * h * w);
                if n == 0 {
                    return Ok(None);
                }
                let span = UnitSpan { id, start: 0, len: n, first_position: slot.first_position };
                Ok(Some(ImageBatch::new(h, w, pixels, vec![class as u32; n], vec![span])))
            })?;
            let decoded = batch.as_ref().map_or(0, |b| b.len() as u64);
            record.state.units.insert(id, (decoded, unreadable));
            record.applied.insert(id);
            ctx.checkpoint(&record)?;
            ctx.fault("unit")?;
            if let Some(batch) = batch {
                ctx.send(Payload::Images(Arc::new(batch)))?;
            }
        }
        let mut decoded = vec![0; per_class.len()];
        for (id, (n, _)) in &record.state.units {
            decoded[id.class as usize] += n;
        }
        let result = SourceResult {
            origin,
            path: cfg.path.clone(),
            files: per_class.iter().map(|f| f.len() as u64).collect(),
            decoded,
            unreadable: record.state.units.values().flat_map(|(_, bad)| bad.iter().cloned()).collect(),
            stopped_early,
        };
        Ok(Some(Summary::Source(result)))
    }
}
