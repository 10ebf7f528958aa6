//! `image_folder` source: reads an ImageFolder tree (`root/<class>/**/*.png|jpg|jpeg`, class
//! order = sorted folder names, as torchvision's `ImageFolder`) and emits one batch per work
//! unit (`unit_size` files of one class, in file-name order). Decoding uses the `image` crate
//! (PNG and JPEG only) and converts to RGB. An unreadable file is reported by path and counted,
//! and the run goes on, unless the source is `strict`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::runtime::batch::{ImageBatch, Origin, Payload, Summary, UnitId, UnitSpan};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::telemetry;
use crate::topology::config::ImageFolderConfig;

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("image folder \"{path}\": cannot list: {source}")]
    List { path: PathBuf, source: std::io::Error },
    #[error("image folder \"{0}\": class folder missing")]
    MissingClass(PathBuf),
}

/// A file that could not be used, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BadFile {
    pub path: PathBuf,
    pub error: String,
}

/// What a source read: published for the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceResult {
    pub origin: Origin,
    pub path: PathBuf,
    /// Image files found, per class.
    pub files: Vec<u64>,
    /// Images decoded and sent, per class.
    pub decoded: Vec<u64>,
    pub unreadable: Vec<BadFile>,
    /// Stopped early by a stop request.
    pub stopped_early: bool,
}

/// Per unit read: images decoded, and the files that could not be. A source's checkpoint.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FolderRecord {
    pub units: BTreeMap<UnitId, (u64, Vec<BadFile>)>,
}

/// Class folder names under `root`, sorted. Hidden folders (`.name`) are not classes.
pub fn list_classes(root: &Path) -> Result<Vec<String>, FolderError> {
    let list_err = |source| FolderError::List { path: root.to_path_buf(), source };
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(root).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !name.starts_with('.') {
            classes.push(name);
        }
    }
    classes.sort();
    Ok(classes)
}

/// Image files of one class folder, recursively, sorted by path.
pub fn list_images(class_dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let mut files = Vec::new();
    let mut dirs = vec![class_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let list_err = |source| FolderError::List { path: dir.clone(), source };
        for entry in std::fs::read_dir(&dir).map_err(list_err)? {
            let path = entry.map_err(list_err)?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if has_image_extension(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Decodes one file to planar RGB (3 x H x W) and its size.
pub fn decode_rgb_planar(path: &Path) -> Result<(usize, usize, Vec<u8>), String> {
    let image = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?
        .to_rgb8();
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut planar = vec![0u8; 3 * h * w];
    for (i, px) in image.pixels().enumerate() {
        for c in 0..3 {
            planar[c * h * w + i] = px.0[c];
        }
    }
    Ok((h, w, planar))
}

pub struct ImageFolderStage {
    cfg: ImageFolderConfig,
}

impl ImageFolderStage {
    pub fn new(cfg: ImageFolderConfig) -> Self {
        ImageFolderStage { cfg }
    }
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
        let planned: usize = per_class.iter().map(Vec::len).sum();
        // Units a resumed run skips are done: progress counts this session's work.
        let skipped: usize = per_class
            .iter()
            .enumerate()
            .flat_map(|(class, files)| files.chunks(cfg.unit_size).enumerate().map(move |(index, chunk)| (class, index, chunk.len())))
            .filter(|&(class, index, _)| ctx.skip.contains(&UnitId { origin, class: class as u32, index: index as u32 }))
            .map(|(_, _, n)| n)
            .sum();
        ctx.control.add_planned((planned - skipped) as u64);
        ctx.control.set_planned_per_class(origin, per_class.iter().map(|f| f.len() as u64).collect());
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
        'classes: for (class, files) in per_class.iter().enumerate() {
            for (index, chunk) in files.chunks(cfg.unit_size).enumerate() {
                if ctx.control.stop_requested() {
                    stopped_early = true;
                    break 'classes;
                }
                let id = UnitId { origin, class: class as u32, index: index as u32 };
                if ctx.skip.contains(&id) {
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
                    let span = UnitSpan { id, start: 0, len: n, first_position: (index * cfg.unit_size) as u64 };
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
