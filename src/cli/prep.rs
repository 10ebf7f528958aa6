//! `rcaflow prep`: raw photos to a cropped, downscaled, split dataset ([`crate::data::prep`]).

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::CliError;
use crate::data::prep::{prepare, read_boxes, CropMode, PrepConfig, PrepError};

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
    /// center: the centre square; boxes: face boxes from --boxes, widened by --margin.
    #[arg(long, default_value = "center", value_name = "center|boxes")]
    pub crop: CropMode,
    /// CSV with a header file,x,y,w,h (file relative to RAW_DIR, box in pixels).
    #[arg(long, value_name = "FILE.csv")]
    pub boxes: Option<PathBuf>,
    /// Widening of each face box on every side, as a fraction of its width/height.
    #[arg(long, default_value_t = 0.25)]
    pub margin: f64,
}

pub fn prep(args: PrepArgs) -> Result<(), CliError> {
    let cfg = PrepConfig { size: args.size, eval_fraction: args.eval_fraction, seed: args.seed, crop: args.crop, margin: args.margin };
    let input_err = |e: PrepError| CliError::Input(e.to_string());
    cfg.validate().map_err(input_err)?;
    let boxes = match (&args.boxes, cfg.crop) {
        (Some(path), CropMode::Boxes) => Some((path.as_path(), read_boxes(path).map_err(input_err)?)),
        (None, CropMode::Boxes) => return Err(CliError::Input("--crop boxes needs --boxes FILE.csv".into())),
        (Some(_), CropMode::Center) => return Err(CliError::Input("--boxes is only used with --crop boxes".into())),
        (None, CropMode::Center) => None,
    };
    let bar = ProgressBar::new(0).with_message("prep");
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} images ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let manifest = prepare(&args.input, &args.out, &cfg, boxes.as_ref().map(|(p, m)| (*p, m)), |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })
    .map_err(|e| match e {
        PrepError::Write { .. } => CliError::Output(e.to_string()),
        other => CliError::Input(other.to_string()),
    })?;
    bar.finish_and_clear();
    let (train, eval): (usize, usize) = manifest.counts.values().fold((0, 0), |(t, e), c| (t + c.train, e + c.eval));
    println!(
        "prep: {} classes, {train} train and {eval} eval images in {} ({} unreadable skipped, listed in manifest.json)",
        manifest.classes.len(),
        args.out.display(),
        manifest.unreadable.len()
    );
    Ok(())
}
