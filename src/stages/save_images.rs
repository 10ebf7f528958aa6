//! `save_images` sink: writes every generated image as a PNG in ImageFolder layout,
//! `path/<class>/<position>.png` (position = the image's index in its class's deterministic
//! order, zero-padded to 6 digits), so `rcaflow eval` and other tools can read a run's samples.
//!
//! A file's name depends only on the image's position, so writing a unit again (after a
//! restart) replaces the same files with the same bytes: saving is idempotent. Each file is
//! written to a temporary name and renamed, so a crash never leaves a torn PNG under the final
//! name. Real images are not written (they are on disk already).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{BuildContext, ComponentConfig};
use crate::runtime::merge::{MergeError, ShardFold};
use crate::topology::config::resolve;
use crate::topology::{Checks, DataKind, GraphFacts, HashedInput, NamedClasses, Section};
use crate::units::UnitPlan;

use crate::data::image_folder::write_png;
use crate::files::atomic::{remove_temporaries, sync_dir};
use crate::report::Summary;
use crate::runtime::accumulator::Snapshot;
use crate::runtime::batch::{ImageBatch, Payload};
use crate::runtime::checkpoint::CheckpointTimer;
use crate::runtime::early_stop::{EarlyStopGate, Holdback, Verdict};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::units::{Origin, UnitSpan};

/// `save_images` sink: writes generated images as PNGs, `path/<class>/<position>.png`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveImagesConfig {
    pub path: PathBuf,
}

impl ComponentConfig for SaveImagesConfig {
    const SECTION: Section = Section::Sinks;
    const ACCEPTS: Option<DataKind> = Some(DataKind::Images);
    const PRODUCES: Option<DataKind> = None;
    const RESTARTABLE: bool = false;
    const ACCUMULATES: bool = false;
    // So a resumed run knows which PNGs are written.
    const HOLDS_UNITS: bool = true;

    fn source_origin(&self) -> Option<Origin> {
        None
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.path = resolve(base, &self.path);
    }

    fn check(&self, _checks: &mut Checks) {}

    fn class_names(&self, _checks: &mut Checks) -> Option<NamedClasses> {
        None
    }

    fn check_in_graph(&self, _facts: &GraphFacts, _checks: &mut Checks) {}

    fn describe(&self) -> String {
        format!("path={}", self.path.display())
    }

    fn plan(&self, _classes: &[String]) -> Result<Option<UnitPlan>, String> {
        Ok(None)
    }

    fn hashed_inputs(&self, _classes: &[String]) -> Result<Vec<HashedInput>, String> {
        Ok(Vec::new())
    }

    /// Merge: the units every shard saved.
    fn fold_shards(&self, id: &str, fold: &ShardFold) -> Result<usize, MergeError> {
        fold.fold::<()>(id)
    }

    fn build(&self, _cx: &BuildContext) -> Result<Box<dyn Stage>, String> {
        Ok(Box::new(SaveImagesStage { cfg: self.clone() }))
    }
}

pub struct SaveImagesStage {
    cfg: SaveImagesConfig,
}

/// The file of the image at `position` of `class`.
pub fn image_path(root: &Path, class: &str, position: u64) -> PathBuf {
    root.join(class).join(format!("{position:06}.png"))
}

fn save_batch(root: &Path, classes: &[String], batch: &ImageBatch) -> Result<usize, StageError> {
    save_spans(root, classes, batch, &batch.units)
}

/// Writes the generated images of `spans` (spans of `batch`).
fn save_spans(root: &Path, classes: &[String], batch: &ImageBatch, spans: &[UnitSpan]) -> Result<usize, StageError> {
    let mut written = 0;
    for span in spans.iter().filter(|s| s.id.origin == Origin::Generated) {
        let class = classes
            .get(span.id.class as usize)
            .ok_or_else(|| StageError::Failed(format!("image of class {} has no class name", span.id.class)))?;
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).map_err(|e| StageError::Failed(format!("image folder \"{}\": cannot create: {e}", dir.display())))?;
        for i in span.start..span.start + span.len {
            let path = image_path(root, class, span.position_of(i));
            write_png(&path, batch.height, batch.width, batch.image(i))
                .map_err(|e| StageError::Failed(format!("image \"{}\": cannot write: {e}", path.display())))?;
            written += 1;
        }
    }
    Ok(written)
}

/// Saves the held-back units the early-stop gate has let in (in rank order) and forgets those
/// it has left out; returns the images written.
fn save_decided(
    root: &Path,
    classes: &[String],
    held: &mut Holdback<Arc<ImageBatch>>,
    gate: &EarlyStopGate,
    saved: &mut Snapshot<()>,
) -> Result<usize, StageError> {
    let mut written = 0;
    while let Some(rank) = held.first_rank() {
        let verdict = gate.verdict(rank);
        if verdict == Verdict::Undecided {
            break;
        }
        let Some((_, span, batch)) = held.pop_first() else { break };
        if verdict == Verdict::Inside {
            written += save_spans(root, classes, &batch, &[span])?;
            saved.applied.insert(span.id);
        }
    }
    Ok(written)
}

/// Makes the renames of the written files durable (before a checkpoint counts them).
fn sync_class_dirs(root: &Path, classes: &[String]) -> Result<(), StageError> {
    for class in classes {
        let dir = root.join(class);
        if dir.is_dir() {
            sync_dir(&dir).map_err(|e| StageError::Failed(format!("image folder \"{}\": cannot sync: {e}", dir.display())))?;
        }
    }
    Ok(())
}

impl Stage for SaveImagesStage {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let root = self.cfg.path;
        let mut written = 0usize;
        // The units saved (real ones included: they need no file), checkpointed so a resumed
        // run knows which units it need not generate again for this sink.
        let mut saved: Snapshot<()> = ctx.restore()?.unwrap_or_default();
        // PNGs a killed run left half-written under their temporary names.
        for class in ctx.classes.iter() {
            let dir = root.join(class);
            // Not fatal: a leftover is never read as an image (it has no .png name).
            if let Err(e) = remove_temporaries(&dir) {
                tracing::warn!(stage = %ctx.id, dir = %dir.display(), "cannot remove stale temporary files: {e}");
            }
        }
        let mut checkpoints = CheckpointTimer::new(ctx.checkpoint_interval);
        let mut held: Holdback<Arc<ImageBatch>> = Holdback::default();
        while let Some(payload) = ctx.recv() {
            let Payload::Images(batch) = payload else {
                return Err(StageError::Failed("received a non-image payload; the topology check should have refused this edge".into()));
            };
            match ctx.control.early_stop().cloned() {
                None => {
                    written += ctx.timed(|| save_batch(&root, &ctx.classes, &batch))?;
                    saved.applied.extend(batch.units.iter().map(|u| u.id));
                }
                // With an early stop, only the generated units the run uses are saved: each waits
                // for the gate's verdict.
                Some(gate) => {
                    for span in &batch.units {
                        match gate.rank(&span.id).filter(|_| span.id.origin == Origin::Generated) {
                            Some(rank) => held.park(rank, *span, batch.clone()),
                            None => {
                                saved.applied.insert(span.id);
                            }
                        }
                    }
                    written += ctx.timed(|| save_decided(&root, &ctx.classes, &mut held, &gate, &mut saved))?;
                }
            }
            if checkpoints.due() {
                sync_class_dirs(&root, &ctx.classes)?;
                ctx.checkpoint(&saved)?;
            }
        }
        if let Some(gate) = ctx.control.early_stop().cloned() {
            while !held.is_empty() && !ctx.control.aborted() {
                written += save_decided(&root, &ctx.classes, &mut held, &gate, &mut saved)?;
                if !held.is_empty() {
                    gate.wait(std::time::Duration::from_millis(100));
                }
            }
        }
        sync_class_dirs(&root, &ctx.classes)?;
        ctx.checkpoint(&saved)?;
        tracing::info!(stage = %ctx.id, images = written, path = %root.display(), "images saved");
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::{UnitId, UnitSpan};

    #[test]
    fn writes_generated_images_by_position_and_rewrites_them_identically() {
        let tmp = tempfile::tempdir().unwrap();
        let classes = vec!["a".to_string(), "b".to_string()];
        // 2 images of 2x3 pixels: unit 1 of class b (positions 4, 5), plus a real unit (ignored).
        let pixels: Vec<u8> = (0..36).map(|v| v as u8 * 7).collect();
        let spans = vec![
            UnitSpan { id: UnitId { origin: Origin::Generated, class: 1, index: 1 }, start: 0, len: 1, first_position: 4 },
            UnitSpan { id: UnitId { origin: Origin::Real, class: 0, index: 0 }, start: 1, len: 1, first_position: 0 },
        ];
        let batch = ImageBatch::new(2, 3, pixels.clone(), vec![1, 0], spans);
        assert_eq!(save_batch(tmp.path(), &classes, &batch).unwrap(), 1);
        let path = image_path(tmp.path(), "b", 4);
        assert!(path.ends_with("b/000004.png"));
        let (h, w, planar) = crate::data::image_folder::decode_rgb_planar(&path).unwrap();
        assert_eq!((h, w), (2, 3));
        assert_eq!(planar, pixels[..18]);
        let first = std::fs::read(&path).unwrap();
        save_batch(tmp.path(), &classes, &batch).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first);
        assert!(!tmp.path().join("a").exists(), "real images are not written");
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("b")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temporary files left: {leftovers:?}");
    }
}
