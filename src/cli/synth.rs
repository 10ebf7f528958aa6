//! `rcaflow synth`: writes the synthetic cartoon-face identity dataset ([`crate::data::synth`]).

use std::path::PathBuf;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::CliError;
use crate::data::synth::{generate, SynthConfig, SynthError};

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder (ImageFolder layout: DIR/<class>/<NNNNNN>.png, plus manifest.json).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Number of identities (classes).
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Images per class.
    #[arg(long, value_name = "N")]
    pub per_class: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 32)]
    pub size: usize,
    /// 0: independent identities; 1: every class is the same face (only per-image variation).
    #[arg(long, default_value_t = 0.0)]
    pub similarity: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn synth(args: SynthArgs) -> Result<(), CliError> {
    let cfg =
        SynthConfig { classes: args.classes, per_class: args.per_class, size: args.size, similarity: args.similarity, seed: args.seed };
    cfg.validate().map_err(|e| CliError::Input(e.to_string()))?;
    let bar = ProgressBar::new((cfg.classes * cfg.per_class) as u64).with_message("synth");
    bar.set_style(
        ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} images ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let manifest = generate(&cfg, &args.out, || bar.inc(1)).map_err(|e| match e {
        SynthError::Invalid(_) => CliError::Input(e.to_string()),
        SynthError::Write { .. } => CliError::Output(e.to_string()),
    })?;
    bar.finish_and_clear();
    println!(
        "synth: {} images of {} classes in {} (mean identity distance {:.3}; contact sheet {})",
        manifest.images,
        manifest.classes.len(),
        args.out.display(),
        manifest.mean_identity_distance,
        args.out.join("contact_sheet.png").display()
    );
    Ok(())
}
