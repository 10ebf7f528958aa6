//! `rcaflow prep`: raw photos (an ImageFolder tree) to the protocol's dataset: square crops,
//! downscaled to a square side (the paper: 32 or 64 pixels), split per class into train and eval folders.
//!
//! Crops follow the paper's recipe: a face box widened by `margin` of its width (height) on
//! the left and right (top and bottom), 25% by default. The widened box is made square around
//! its centre (side = its longer side) and intersected with the image; where that cut it (a face
//! at the border), the centred square of the shorter side is kept, so faces are never stretched.
//! Without boxes, the centre square of the image (side = the shorter side, offset
//! `(W - side) / 2` rounded down) is used. Boxes come from a CSV (`--crop boxes`) or from
//! facenet-pytorch's MTCNN ([`crate::models::mtcnn`], `--crop mtcnn`), which keeps one face per
//! image by a rule ([`super::faces`]) and records every detection; images where it finds none
//! are listed as `no_face` and skipped.
//!
//! Downscaling: `image::imageops::resize` with `FilterType::Lanczos3`, a separable filter
//! whose support is widened by the scale factor when shrinking, so it is properly antialiased
//! (as PIL's `Image.resize(..., LANCZOS)`).
//!
//! Split: stratified. In each class the readable images (sorted by path) are shuffled with a
//! stream keyed by (seed, class index); the first `round(eval_fraction * n)` go to eval, clamped
//! so that a class with at least two images has at least one in each split (when the fraction
//! is positive). Unreadable files are listed in the manifest and on stderr, and skipped.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::imageops::FilterType;
use serde::{Deserialize, Serialize};

use super::faces::{rank, Face, FaceRecord, FaceSelect};
use super::rng::Rng;
use crate::data::image_folder::{list_classes, list_images};
use crate::models::mtcnn::{Mtcnn, MtcnnConfig, MtcnnError, RgbView};

/// Errors of `prep`: bad flags or inputs (nothing written), or a write failure.
#[derive(Debug, thiserror::Error)]
pub enum PrepError {
    #[error("prep: {0}")]
    Input(String),
    #[error("boxes {}: line {line}: {detail}", .path.display())]
    BoxesLine { path: PathBuf, line: usize, detail: String },
    #[error("boxes {}: no box for \"{file}\" (every image of the input needs a row with --crop boxes; a row with empty x,y,w,h skips it)", .path.display())]
    MissingBox { path: PathBuf, file: String },
    #[error(transparent)]
    Detect(#[from] MtcnnError),
    #[error("prep: cannot write \"{}\": {cause}", .path.display())]
    Write { path: PathBuf, cause: String },
}

/// How each image is cropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CropMode {
    Center,
    Boxes,
    Mtcnn,
}

impl FromStr for CropMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "center" => Ok(CropMode::Center),
            "boxes" => Ok(CropMode::Boxes),
            "mtcnn" => Ok(CropMode::Mtcnn),
            other => Err(format!("unknown crop \"{other}\": expected \"center\", \"boxes\" or \"mtcnn\"")),
        }
    }
}

impl fmt::Display for CropMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CropMode::Center => "center",
            CropMode::Boxes => "boxes",
            CropMode::Mtcnn => "mtcnn",
        })
    }
}

/// A face box in pixels: top-left corner and size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FaceBox {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// A square crop in integer pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Square {
    pub x: u32,
    pub y: u32,
    pub side: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepConfig {
    pub size: u32,
    pub eval_fraction: f64,
    pub seed: u64,
    pub crop: CropMode,
    pub margin: f64,
    /// With `--crop mtcnn`: the detector's settings, the rule and the weights' folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtcnn: Option<DetectSettings>,
}

/// How `--crop mtcnn` detected and chose faces (recorded in the manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectSettings {
    #[serde(flatten)]
    pub detector: MtcnnConfig,
    pub select: FaceSelect,
    pub weights: PathBuf,
}

/// Where each image's crop comes from; must agree with [`PrepConfig::crop`].
pub enum FaceSource<'a> {
    /// `--crop center`.
    Center,
    /// `--crop boxes`: the CSV and its boxes (`None`: a row without a box, the image is skipped).
    Boxes { path: &'a Path, boxes: &'a HashMap<String, Option<FaceBox>> },
    /// `--crop mtcnn`: the detector, run on `batch` images at a time.
    Detector { mtcnn: &'a Mtcnn, batch: usize },
}

impl PrepConfig {
    pub fn validate(&self) -> Result<(), PrepError> {
        // The paper's sizes are 32 and 64; smaller squares serve CPU demos and tests.
        if !(8..=512).contains(&self.size) {
            return Err(PrepError::Input(format!("--size {}: expected 8 to 512 pixels (the paper: 32 or 64)", self.size)));
        }
        if !(0.0..1.0).contains(&self.eval_fraction) {
            return Err(PrepError::Input(format!("--eval-fraction {}: expected a number in [0, 1)", self.eval_fraction)));
        }
        if !(0.0..=2.0).contains(&self.margin) {
            return Err(PrepError::Input(format!("--margin {}: expected a number in [0, 2]", self.margin)));
        }
        match (&self.mtcnn, self.crop) {
            (Some(d), CropMode::Mtcnn) => d.detector.check().map_err(|e| PrepError::Input(e.to_string()))?,
            (None, CropMode::Mtcnn) => return Err(PrepError::Input("--crop mtcnn needs the detector's settings".into())),
            (Some(_), _) => return Err(PrepError::Input(format!("detector settings given with --crop {}", self.crop))),
            (None, _) => {}
        }
        Ok(())
    }
}

/// The centre square of a `w x h` image.
pub fn center_square(w: u32, h: u32) -> Square {
    let side = w.min(h);
    Square { x: (w - side) / 2, y: (h - side) / 2, side }
}

/// The crop for a face box (see the module docs), or `None` when the box misses the image.
pub fn box_square(w: u32, h: u32, b: &FaceBox, margin: f64) -> Option<Square> {
    let (bw, bh) = (b.w * (1.0 + 2.0 * margin), b.h * (1.0 + 2.0 * margin));
    let (cx, cy) = (b.x + b.w / 2.0, b.y + b.h / 2.0);
    let side = bw.max(bh);
    // Square around the centre, intersected with the image.
    let x0 = (cx - side / 2.0).max(0.0);
    let y0 = (cy - side / 2.0).max(0.0);
    let x1 = (cx + side / 2.0).min(w as f64);
    let y1 = (cy + side / 2.0).min(h as f64);
    if x1 - x0 < 1.0 || y1 - y0 < 1.0 {
        return None;
    }
    // Cut at a border: keep the centred square of the shorter side.
    let s = (x1 - x0).min(y1 - y0);
    let sx = ((x0 + x1) / 2.0 - s / 2.0).round().clamp(0.0, (w - 1) as f64) as u32;
    let sy = ((y0 + y1) / 2.0 - s / 2.0).round().clamp(0.0, (h - 1) as f64) as u32;
    let side = (s.round() as u32).clamp(1, (w - sx).min(h - sy));
    Some(Square { x: sx, y: sy, side })
}

/// Reads a boxes CSV: a header starting `file,x,y,w,h` (more columns, such as those of the
/// detect CSV, are read past), then one row per image with `file` relative to the input folder
/// (`class/name.jpg`, `/` separators) and the box in pixels; a row whose x, y, w and h are all
/// empty means "no face: skip this image".
pub fn read_boxes(path: &Path) -> Result<HashMap<String, Option<FaceBox>>, PrepError> {
    let text = std::fs::read_to_string(path).map_err(|e| PrepError::Input(format!("boxes {}: cannot read: {e}", path.display())))?;
    let line_err = |line: usize, detail: String| PrepError::BoxesLine { path: path.to_path_buf(), line, detail };
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let columns = match lines.next() {
        Some((_, header)) if header.split(',').map(str::trim).take(5).eq(["file", "x", "y", "w", "h"]) => header.split(',').count(),
        Some((i, header)) => return Err(line_err(i + 1, format!("header \"{header}\": expected \"file,x,y,w,h\" first"))),
        None => return Err(line_err(1, "empty file: expected a header \"file,x,y,w,h\"".into())),
    };
    let mut boxes = HashMap::new();
    for (i, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != columns {
            let what = if columns == 5 { "file,x,y,w,h".to_string() } else { format!("the header's {columns}") };
            return Err(line_err(i + 1, format!("{} fields: expected {columns} ({what})", fields.len())));
        }
        let file = fields[0].replace('\\', "/");
        if file.is_empty() {
            return Err(line_err(i + 1, "empty file name".into()));
        }
        let b = if fields[1..5].iter().all(|f| f.is_empty()) {
            None
        } else {
            let mut v = [0f64; 4];
            for (k, name) in ["x", "y", "w", "h"].iter().enumerate() {
                v[k] = fields[k + 1]
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| line_err(i + 1, format!("{name} \"{}\" is not a number", fields[k + 1])))?;
            }
            if v[2] <= 0.0 || v[3] <= 0.0 {
                return Err(line_err(i + 1, format!("box {}x{}: width and height must be positive", v[2], v[3])));
            }
            Some(FaceBox { x: v[0], y: v[1], w: v[2], h: v[3] })
        };
        if boxes.insert(file.clone(), b).is_some() {
            return Err(line_err(
                i + 1,
                format!("second box for \"{file}\" (one row per image: keep the face to crop, or let `prep --crop mtcnn --save-boxes` pick one)"),
            ));
        }
    }
    Ok(boxes)
}

/// Number of eval images of a class of `n` (see the module docs).
pub fn eval_count(n: usize, fraction: f64) -> usize {
    if n < 2 || fraction <= 0.0 {
        return 0;
    }
    ((fraction * n as f64).round() as usize).clamp(1, n - 1)
}

/// One output image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepEntry {
    /// Relative to the output folder: `train/<class>/NNNNNN.png`.
    pub output: String,
    /// Relative to the input folder.
    pub source: String,
    pub crop: Square,
    /// With `--crop mtcnn`: every face found, the one kept and the runner-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub faces: Option<FaceRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unreadable {
    pub file: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SplitCounts {
    pub train: usize,
    pub eval: usize,
}

/// `DATA_DIR/manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepManifest {
    pub config: PrepConfig,
    pub input: PathBuf,
    pub resize_filter: String,
    pub classes: Vec<String>,
    pub counts: BTreeMap<String, SplitCounts>,
    pub unreadable: Vec<Unreadable>,
    /// Readable images skipped for want of a face (`--crop mtcnn`: none detected; `--crop
    /// boxes`: a row without a box), relative to the input folder.
    #[serde(default)]
    pub no_face: Vec<String>,
    pub images: Vec<PrepEntry>,
}

impl PrepManifest {
    /// The detect CSV of the faces kept (`prep --save-boxes`), one row per input image, sorted
    /// by file: the kept face, or empty box fields for an image without one (no face, or
    /// unreadable), so that `--crop boxes` reads the file back and crops the same squares.
    pub fn kept_faces_csv(&self) -> String {
        let mut rows: Vec<(&str, Option<&Face>)> = self
            .images
            .iter()
            .map(|e| (e.source.as_str(), e.faces.as_ref().map(|r| &r.detections[r.selected])))
            .chain(self.no_face.iter().map(|f| (f.as_str(), None)))
            .chain(self.unreadable.iter().map(|u| (u.file.as_str(), None)))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        let mut csv = format!("{}\n", super::faces::DETECT_HEADER);
        for (file, face) in rows {
            csv.push_str(&super::faces::csv_row(file, face));
        }
        csv
    }
}

/// Path of `file` relative to `root`, with `/` separators.
fn relative(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap_or(file);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// Prepares `input` into `out` (see the module docs); `progress(done, total)` after each file
/// (after each batch of files with the detector).
pub fn prepare(
    input: &Path,
    out: &Path,
    cfg: &PrepConfig,
    faces: FaceSource<'_>,
    mut progress: impl FnMut(usize, usize),
) -> Result<PrepManifest, PrepError> {
    cfg.validate()?;
    match (&faces, cfg.crop) {
        (FaceSource::Center, CropMode::Center)
        | (FaceSource::Boxes { .. }, CropMode::Boxes)
        | (FaceSource::Detector { .. }, CropMode::Mtcnn) => {}
        (_, CropMode::Boxes) => return Err(PrepError::Input("--crop boxes needs --boxes FILE.csv".into())),
        (_, CropMode::Mtcnn) => return Err(PrepError::Input("--crop mtcnn needs the detector".into())),
        (_, CropMode::Center) => return Err(PrepError::Input("--crop center takes no boxes and no detector".into())),
    }
    let select = cfg.mtcnn.as_ref().map_or(FaceSelect::Largest, |d| d.select);
    let detector = cfg.mtcnn.as_ref().map_or_else(MtcnnConfig::default, |d| d.detector);
    for split in ["train", "eval"] {
        if out.join(split).exists() {
            return Err(PrepError::Input(format!("output \"{}\" already holds {split}/: expected a new or empty folder", out.display())));
        }
    }
    let classes = list_classes(input).map_err(|e| PrepError::Input(e.to_string()))?;
    if let Err(e) = crate::files::name::check_class_names(&classes) {
        return Err(PrepError::Input(format!("input \"{}\": class folder: {e}", input.display())));
    }
    if classes.is_empty() {
        return Err(PrepError::Input(format!("input \"{}\": no class folders (expected RAW_DIR/<class>/*.png|jpg)", input.display())));
    }
    let mut files = Vec::new();
    for class in &classes {
        files.push(list_images(&input.join(class)).map_err(|e| PrepError::Input(e.to_string()))?);
    }
    // Every box must exist before anything is written.
    if let FaceSource::Boxes { path, boxes } = faces {
        for f in files.iter().flatten() {
            let rel = relative(input, f);
            if !boxes.contains_key(&rel) {
                return Err(PrepError::MissingBox { path: path.to_path_buf(), file: rel });
            }
        }
    }
    let total: usize = files.iter().map(Vec::len).sum();
    let write_err = |path: &Path, cause: String| PrepError::Write { path: path.to_path_buf(), cause };
    let mut done = 0;
    let mut manifest = PrepManifest {
        config: cfg.clone(),
        input: input.to_path_buf(),
        resize_filter: "image::imageops::resize, FilterType::Lanczos3 (antialiased when downscaling)".into(),
        classes: classes.clone(),
        counts: BTreeMap::new(),
        unreadable: Vec::new(),
        no_face: Vec::new(),
        images: Vec::new(),
    };
    let chunk_len = match faces {
        FaceSource::Detector { batch, .. } => batch.max(1),
        _ => 1,
    };
    for (ci, (class, class_files)) in classes.iter().zip(&files).enumerate() {
        // Decode and crop everything first: only readable images with a face take part in the split.
        let mut ready = Vec::new();
        for chunk in class_files.chunks(chunk_len) {
            let mut decoded = Vec::new();
            for f in chunk {
                let rel = relative(input, f);
                match crate::data::image_folder::open_image(f) {
                    Ok(img) => decoded.push((rel, img.to_rgb8())),
                    Err(e) => {
                        eprintln!("prep: skipping unreadable image \"{}\": {e}", f.display());
                        manifest.unreadable.push(Unreadable { file: rel, error: e.to_string() });
                    }
                }
            }
            let detections = match faces {
                FaceSource::Detector { mtcnn, .. } => {
                    let views: Vec<RgbView> = decoded
                        .iter()
                        .map(|(_, img)| RgbView { data: img.as_raw(), w: img.width() as usize, h: img.height() as usize })
                        .collect();
                    mtcnn.detect_batch(&views, &detector)?
                }
                _ => Vec::new(),
            };
            for (k, (rel, img)) in decoded.into_iter().enumerate() {
                let (w, h) = img.dimensions();
                let (sq, record) = match faces {
                    FaceSource::Center => (Some(center_square(w, h)), None),
                    FaceSource::Boxes { path, boxes } => match boxes.get(&rel) {
                        None => return Err(PrepError::MissingBox { path: path.to_path_buf(), file: rel }),
                        Some(None) => (None, None),
                        Some(Some(b)) => (
                            Some(box_square(w, h, b, cfg.margin).ok_or_else(|| {
                                PrepError::Input(format!(
                                    "boxes {}: box {},{},{}x{} of \"{rel}\" lies outside the {w}x{h} image",
                                    path.display(),
                                    b.x,
                                    b.y,
                                    b.w,
                                    b.h
                                ))
                            })?),
                            None,
                        ),
                    },
                    FaceSource::Detector { .. } => {
                        let found: Vec<Face> = detections[k].iter().map(Face::from).collect();
                        let order = rank(&found, select, w, h);
                        match order.first() {
                            Some(&best) => (
                                box_square(w, h, &found[best].face_box(), cfg.margin),
                                Some(FaceRecord { selected: best, runner_up: order.get(1).copied(), detections: found }),
                            ),
                            None => (None, None),
                        }
                    }
                };
                let Some(sq) = sq else {
                    eprintln!("prep: skipping \"{rel}\": no face");
                    manifest.no_face.push(rel);
                    continue;
                };
                let crop = image::imageops::crop_imm(&img, sq.x, sq.y, sq.side, sq.side).to_image();
                // A crop already at the output size is kept as is (a resampling filter is
                // not exactly the identity at scale 1).
                let small =
                    if sq.side == cfg.size { crop } else { image::imageops::resize(&crop, cfg.size, cfg.size, FilterType::Lanczos3) };
                ready.push((rel, sq, small, record));
            }
            done += chunk.len();
            progress(done, total);
        }
        let mut order: Vec<usize> = (0..ready.len()).collect();
        Rng::keyed(&[cfg.seed, ci as u64]).shuffle(&mut order);
        let n_eval = eval_count(ready.len(), cfg.eval_fraction);
        let mut is_eval = vec![false; ready.len()];
        for &k in &order[..n_eval] {
            is_eval[k] = true;
        }
        let mut counts = SplitCounts::default();
        for (k, (rel, sq, small, faces)) in ready.into_iter().enumerate() {
            let (split, index) = if is_eval[k] {
                counts.eval += 1;
                ("eval", counts.eval - 1)
            } else {
                counts.train += 1;
                ("train", counts.train - 1)
            };
            let dir = out.join(split).join(class);
            std::fs::create_dir_all(&dir).map_err(|e| write_err(&dir, e.to_string()))?;
            let name = format!("{index:06}.png");
            let path = dir.join(&name);
            crate::files::png::write_rgb8(&path, &small).map_err(|e| write_err(&path, e))?;
            manifest.images.push(PrepEntry { output: format!("{split}/{class}/{name}"), source: rel, crop: sq, faces });
        }
        manifest.counts.insert(class.clone(), counts);
    }
    let path = out.join("manifest.json");
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| write_err(&path, e.to_string()))?;
    crate::files::atomic::write(&path, &json, "json.write").map_err(|e| write_err(&path, e.to_string()))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_geometry() {
        assert_eq!(center_square(100, 80), Square { x: 10, y: 0, side: 80 });
        assert_eq!(center_square(31, 40), Square { x: 0, y: 4, side: 31 });
        let b = |x, y, w, h| FaceBox { x, y, w, h };
        // Inside: widened by 25% each side, 20 -> 30, same centre (50, 40).
        assert_eq!(box_square(100, 80, &b(40.0, 30.0, 20.0, 20.0), 0.25), Some(Square { x: 35, y: 25, side: 30 }));
        // Tall box: the square takes the longer side, around the centre (55, 40).
        assert_eq!(box_square(100, 80, &b(50.0, 30.0, 10.0, 20.0), 0.25), Some(Square { x: 40, y: 25, side: 30 }));
        // At the corner: intersected with the image (0..25 both ways).
        assert_eq!(box_square(100, 80, &b(0.0, 0.0, 20.0, 20.0), 0.25), Some(Square { x: 0, y: 0, side: 25 }));
        // Cut on one side only: the centred square of the shorter side (x 0..25, y 25..55).
        assert_eq!(box_square(100, 80, &b(0.0, 30.0, 20.0, 20.0), 0.25), Some(Square { x: 0, y: 28, side: 25 }));
        assert_eq!(box_square(100, 80, &b(200.0, 30.0, 20.0, 20.0), 0.25), None);
        assert_eq!(box_square(100, 80, &b(40.0, 30.0, 20.0, 20.0), 0.0), Some(Square { x: 40, y: 30, side: 20 }));
    }

    #[test]
    fn prepares_a_tiny_raw_set() {
        let raw = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        // 40x30 images whose left and right 5 columns are red: the centre crop (x 5..35) drops them.
        let make = |class: &str, n: usize| {
            std::fs::create_dir_all(raw.path().join(class)).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(40, 30, |x, _| {
                    if !(5..35).contains(&x) {
                        image::Rgb([255, 0, 0])
                    } else {
                        image::Rgb([0, 0, 200 + i as u8])
                    }
                });
                img.save(raw.path().join(class).join(format!("img{i}.png"))).unwrap();
            }
        };
        make("alice", 10);
        make("bob", 5);
        std::fs::write(raw.path().join("alice/broken.png"), b"not a png").unwrap();
        let cfg = PrepConfig { size: 32, eval_fraction: 0.2, seed: 1, crop: CropMode::Center, margin: 0.25, mtcnn: None };
        let mut calls = 0;
        let m = prepare(raw.path(), out.path(), &cfg, FaceSource::Center, |_, total| {
            calls += 1;
            assert_eq!(total, 16);
        })
        .unwrap();
        assert_eq!(calls, 16);
        assert_eq!((m.counts["alice"].train, m.counts["alice"].eval), (8, 2));
        assert_eq!((m.counts["bob"].train, m.counts["bob"].eval), (4, 1));
        assert_eq!(m.unreadable.len(), 1);
        assert_eq!(m.unreadable[0].file, "alice/broken.png");
        assert_eq!(m.images.len(), 15);
        let e = m.images.iter().find(|e| e.output == "eval/bob/000000.png").unwrap();
        assert!(e.source.starts_with("bob/img"), "{}", e.source);
        assert_eq!(e.crop, Square { x: 5, y: 0, side: 30 });
        // Files as listed, 32x32, without the red border columns.
        let img = image::open(out.path().join("train/alice/000007.png")).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
        assert!(img.pixels().all(|p| p.0[0] < 20 && p.0[2] > 150), "centre crop kept the border");
        assert_eq!(crate::data::image_folder::list_images(&out.path().join("eval/alice")).unwrap().len(), 2);
        let back: PrepManifest = serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
        assert_eq!(back.images.len(), 15);
        // Another seed, another split; a second run into the same folder is refused.
        let e = prepare(raw.path(), out.path(), &cfg, FaceSource::Center, |_, _| {}).unwrap_err().to_string();
        assert!(e.contains("already holds train/"), "{e}");
        let out2 = tempfile::tempdir().unwrap();
        let m2 = prepare(raw.path(), out2.path(), &PrepConfig { seed: 2, ..cfg.clone() }, FaceSource::Center, |_, _| {}).unwrap();
        let evals =
            |m: &PrepManifest| m.images.iter().filter(|e| e.output.starts_with("eval/")).map(|e| e.source.clone()).collect::<Vec<_>>();
        assert_ne!(evals(&m), evals(&m2));
        // Boxes: a missing box is an error naming the CSV and the image.
        let csv = raw.path().join("boxes.csv");
        std::fs::write(&csv, "file,x,y,w,h\nalice/img0.png,10,5,20,20\n").unwrap();
        let boxes = read_boxes(&csv).unwrap();
        let cfg_b = PrepConfig { crop: CropMode::Boxes, ..cfg };
        let e =
            prepare(raw.path(), tempfile::tempdir().unwrap().path(), &cfg_b, FaceSource::Boxes { path: &csv, boxes: &boxes }, |_, _| {})
                .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "boxes {}: no box for \"alice/broken.png\" (every image of the input needs a row with --crop boxes; a row with empty x,y,w,h skips it)",
                csv.display()
            )
        );
    }

    #[test]
    fn face_boxes_are_widened_squared_and_cropped() {
        let raw = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(raw.path().join("a")).unwrap();
        // 100x80 grey image with a 20x20 white "face" at (40, 30).
        let img = image::RgbImage::from_fn(100, 80, |x, y| {
            if (40..60).contains(&x) && (30..50).contains(&y) {
                image::Rgb([255; 3])
            } else {
                image::Rgb([60; 3])
            }
        });
        for i in 0..2 {
            img.save(raw.path().join(format!("a/{i}.png"))).unwrap();
        }
        let csv = raw.path().join("boxes.csv");
        // The detect CSV's layout (extra columns read past); a third image with an empty row
        // is skipped as no_face.
        img.save(raw.path().join("a/2.png")).unwrap();
        std::fs::write(
            &csv,
            format!(
                "{}\na/0.png,40,30,20,20,0.9{}\na/1.png,0,0,20,20,0.9{}\na/2.png,,,,,,,,,,,,,,,\n",
                crate::data::faces::DETECT_HEADER,
                ",1".repeat(10),
                ",1".repeat(10)
            ),
        )
        .unwrap();
        let boxes = read_boxes(&csv).unwrap();
        let cfg = PrepConfig { size: 32, eval_fraction: 0.5, seed: 0, crop: CropMode::Boxes, margin: 0.25, mtcnn: None };
        let m = prepare(raw.path(), out.path(), &cfg, FaceSource::Boxes { path: &csv, boxes: &boxes }, |_, _| {}).unwrap();
        let crop_of = |src: &str| m.images.iter().find(|e| e.source == src).unwrap().crop;
        assert_eq!(crop_of("a/0.png"), Square { x: 35, y: 25, side: 30 });
        assert_eq!(crop_of("a/1.png"), Square { x: 0, y: 0, side: 25 });
        assert_eq!(m.no_face, ["a/2.png"]);
        assert_eq!(m.images.len(), 2);
        // The face fills the middle 2/3 of the 30-pixel crop: the output's centre is white,
        // its corners grey.
        let e = m.images.iter().find(|e| e.source == "a/0.png").unwrap();
        let o = image::open(out.path().join(&e.output)).unwrap().to_rgb8();
        assert!(o.get_pixel(16, 16).0[0] > 240 && o.get_pixel(1, 1).0[0] < 80, "{:?} {:?}", o.get_pixel(16, 16), o.get_pixel(1, 1));
    }

    #[test]
    fn eval_counts_keep_both_splits() {
        assert_eq!(eval_count(10, 0.2), 2);
        assert_eq!(eval_count(3, 0.2), 1);
        assert_eq!(eval_count(2, 0.9), 1);
        assert_eq!(eval_count(1, 0.5), 0);
        assert_eq!(eval_count(10, 0.0), 0);
    }

    #[test]
    fn boxes_csv_errors_name_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("b.csv");
        let err = |text: &str| {
            std::fs::write(&p, text).unwrap();
            read_boxes(&p).unwrap_err().to_string()
        };
        let d = p.display();
        assert_eq!(err("file,x,y\n"), format!("boxes {d}: line 1: header \"file,x,y\": expected \"file,x,y,w,h\" first"));
        assert_eq!(err("file,x,y,w,h\na/1.png,1,2,3\n"), format!("boxes {d}: line 2: 4 fields: expected 5 (file,x,y,w,h)"));
        assert_eq!(err("file,x,y,w,h\na/1.png,1,2,3,4\na/2.png,1,two,3,4\n"), format!("boxes {d}: line 3: y \"two\" is not a number"));
        assert_eq!(err("file,x,y,w,h\na/1.png,1,2,0,4\n"), format!("boxes {d}: line 2: box 0x4: width and height must be positive"));
        assert_eq!(err("file,x,y,w,h\na/1.png,1,2,3,4\na/1.png,1,2,3,4\n"), format!("boxes {d}: line 3: second box for \"a/1.png\" (one row per image: keep the face to crop, or let `prep --crop mtcnn --save-boxes` pick one)"));
        std::fs::write(&p, "file, x, y, w, h\n\na/1.png, 1.5, 2, 3, 4\n").unwrap();
        assert_eq!(read_boxes(&p).unwrap()["a/1.png"], Some(FaceBox { x: 1.5, y: 2.0, w: 3.0, h: 4.0 }));
        assert_eq!(err("file,x,y,w,h,score\na/1.png,1,2,3,4\n"), format!("boxes {d}: line 2: 5 fields: expected 6 (the header's 6)"));
    }
}
