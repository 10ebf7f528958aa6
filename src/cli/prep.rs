//! `rcaflow prep`: raw photos to a cropped, downscaled, split dataset ([`crate::data::prep`]),
//! with face boxes from a CSV or from MTCNN ([`super::detect::MtcnnArgs`]).

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::detect::MtcnnArgs;
use super::CliError;
use crate::data::faces::FaceSelect;
use crate::data::prep::{prepare, read_boxes, CropMode, DetectSettings, FaceSource, PrepConfig, PrepError};
use crate::settings::Settings;

#[derive(Debug, Args)]
pub struct PrepArgs {
    /// Raw photos: RAW_DIR/<class>/**/*.png|jpg|jpeg.
    #[arg(long, value_name = "RAW_DIR")]
    pub input: PathBuf,
    /// Output: DATA_DIR/train/<class>/*.png, DATA_DIR/eval/<class>/*.png, DATA_DIR/manifest.json.
    #[arg(long, value_name = "DATA_DIR")]
    pub out: PathBuf,
    /// Output side in pixels (the paper: 32 or 64; 8 to 512 accepted).
    #[arg(long, default_value_t = 32)]
    pub size: u32,
    /// Share of each class held out for eval.
    #[arg(long, default_value_t = 0.2)]
    pub eval_fraction: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// center: the centre square; boxes: face boxes from --boxes; mtcnn: faces detected with
    /// facenet-pytorch's MTCNN; boxes are widened by --margin.
    #[arg(long, default_value = "center", value_name = "center|boxes|mtcnn")]
    pub crop: CropMode,
    /// CSV with a header file,x,y,w,h (file relative to RAW_DIR, box in pixels).
    #[arg(long, value_name = "FILE.csv")]
    pub boxes: Option<PathBuf>,
    /// Widening of each face box on every side, as a fraction of its width/height.
    #[arg(long, default_value_t = 0.25, allow_negative_numbers = true)]
    pub margin: f64,
    /// With --crop mtcnn: the face kept where there are several (largest, center,
    /// most-confident).
    #[arg(long, default_value = "largest", value_name = "largest|center|most-confident")]
    pub select: String,
    /// With --crop mtcnn: write the kept face of every image as a detect CSV, which --crop boxes
    /// reads back.
    #[arg(long, value_name = "FILE.csv")]
    pub save_boxes: Option<PathBuf>,
    #[command(flatten)]
    pub mtcnn: MtcnnArgs,
}

pub fn prep(args: PrepArgs, settings: Settings) -> Result<(), CliError> {
    let input_err = |e: PrepError| CliError::Input(e.to_string());
    let select: FaceSelect = args.select.parse().map_err(|e| CliError::Input(format!("--select {}: {e}", args.select)))?;
    if args.crop != CropMode::Mtcnn {
        if args.save_boxes.is_some() {
            return Err(CliError::Input("--save-boxes is only used with --crop mtcnn".into()));
        }
        let m = &args.mtcnn;
        let given = [
            ("--select", args.select != "largest"),
            ("--mtcnn-weights", m.mtcnn_weights.is_some()),
            ("--min-face", m.min_face != 20.0),
            ("--thresholds", m.thresholds != "0.6,0.7,0.7"),
            ("--factor", m.factor != 0.709),
            ("--device", m.device.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, given)| *given) {
            return Err(CliError::Input(format!("{flag} is only used with --crop mtcnn")));
        }
    }
    if let Some(parent) = args.save_boxes.as_ref().and_then(|p| p.parent()).filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(CliError::Input(format!("--save-boxes: folder {} does not exist", parent.display())));
        }
    }
    let mut cfg = PrepConfig {
        size: args.size,
        eval_fraction: args.eval_fraction,
        seed: args.seed,
        crop: args.crop,
        margin: args.margin,
        mtcnn: None,
    };
    // The common flags first, before any file is read or the detector loaded.
    PrepConfig { crop: CropMode::Center, ..cfg.clone() }.validate().map_err(input_err)?;
    let boxes = match (&args.boxes, cfg.crop) {
        (Some(path), CropMode::Boxes) => Some((path.as_path(), read_boxes(path).map_err(input_err)?)),
        (None, CropMode::Boxes) => return Err(CliError::Input("--crop boxes needs --boxes FILE.csv".into())),
        (Some(_), _) => return Err(CliError::Input("--boxes is only used with --crop boxes".into())),
        (None, _) => None,
    };
    // The detector is loaded only for --crop mtcnn (and its flags checked first).
    let detector = match cfg.crop {
        CropMode::Mtcnn => {
            let detector = args.mtcnn.config()?;
            let (mtcnn, weights) = args.mtcnn.load(&settings)?;
            cfg.mtcnn = Some(DetectSettings { detector, select, weights });
            Some(mtcnn)
        }
        _ => None,
    };
    cfg.validate().map_err(input_err)?;
    let faces = match (&boxes, &detector) {
        (Some((path, boxes)), _) => FaceSource::Boxes { path, boxes },
        (None, Some(mtcnn)) => FaceSource::Detector { mtcnn, batch: args.mtcnn.detect_batch },
        (None, None) => FaceSource::Center,
    };
    let bar = ProgressBar::new(0).with_message("prep");
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} images ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let manifest = prepare(&args.input, &args.out, &cfg, faces, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .map_err(|e| match e {
        PrepError::Write { .. } => CliError::Output(e.to_string()),
        other => CliError::Input(other.to_string()),
    })?;
    bar.finish_and_clear();
    if let Some(path) = &args.save_boxes {
        std::fs::write(path, manifest.kept_faces_csv())
            .map_err(|e| CliError::Output(format!("--save-boxes {}: cannot write: {e}", path.display())))?;
    }
    let (train, eval): (usize, usize) = manifest.counts.values().fold((0, 0), |(t, e), c| (t + c.train, e + c.eval));
    println!(
        "prep: {} classes, {train} train and {eval} eval images in {} ({} unreadable and {} without a face skipped, listed in manifest.json)",
        manifest.classes.len(),
        args.out.display(),
        manifest.unreadable.len(),
        manifest.no_face.len()
    );
    Ok(())
}
