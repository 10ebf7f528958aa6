//! `rcaflow fid PATH1 PATH2` and `rcaflow fid-stats DIR --out STATS.npz`: FID as pytorch-fid's
//! command line computes it. Each PATH is a folder of images (searched recursively, class
//! folders or not) or an `.npz` of statistics (`mu`, `sigma`); Inception weights are needed
//! only for folders. These run as a plain loop (decode → Inception → float64 moments) rather
//! than a topology: there are no classes, origins or reports to coordinate.

use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::CliError;
use crate::data::fid_stats::FidStats;
use crate::data::image_folder::{decode_rgb_planar, list_images};
use crate::metrics::fid::{frechet_distance, GaussianStats};
use crate::models::hub_cache;
use crate::models::inception::{InceptionV3, PT_INCEPTION_FILE};
use crate::models::weights::WeightMap;
use crate::settings::{open_device, Settings};

#[derive(Debug, Args)]
pub struct InceptionArgs {
    /// pytorch-fid Inception weights (default: pt_inception-2015-12-05-6726825d.pth in the torch hub cache).
    #[arg(long, value_name = "FILE")]
    pub inception: Option<PathBuf>,
    /// Images per Inception batch.
    #[arg(long, default_value_t = 50, value_parser = super::batch_size)]
    pub batch_size: usize,
    /// Where the model runs (overrides the config file).
    #[arg(long)]
    pub device: Option<String>,
}

#[derive(Debug, Args)]
pub struct FidArgs {
    /// A folder of images, or an .npz with `mu` and `sigma`.
    pub path1: PathBuf,
    /// A folder of images, or an .npz with `mu` and `sigma`.
    pub path2: PathBuf,
    #[command(flatten)]
    pub inception: InceptionArgs,
}

#[derive(Debug, Args)]
pub struct FidStatsArgs {
    /// A folder of images (searched recursively).
    pub dir: PathBuf,
    /// Where to write the statistics (.npz, pytorch-fid's format).
    #[arg(long, value_name = "STATS.npz")]
    pub out: PathBuf,
    #[command(flatten)]
    pub inception: InceptionArgs,
}

fn is_npz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("npz"))
}

/// Lazily loaded Inception, shared by both paths of `fid`.
struct Features<'a> {
    args: &'a InceptionArgs,
    settings: &'a Settings,
    net: Option<InceptionV3>,
}

impl Features<'_> {
    fn net(&mut self) -> Result<&InceptionV3, CliError> {
        if self.net.is_none() {
            let device = open_device(self.args.device.as_deref().unwrap_or(&self.settings.runtime.device))?;
            let path = hub_cache::locate(self.args.inception.as_deref(), PT_INCEPTION_FILE, "inception weights", "--inception FILE")
                .map_err(|e| CliError::Input(e.to_string()))?;
            let weights = WeightMap::load(&path, &device).map_err(|e| CliError::Input(e.to_string()))?;
            self.net = Some(InceptionV3::load(&weights).map_err(|e| CliError::Input(e.to_string()))?);
        }
        Ok(self.net.as_ref().expect("just loaded"))
    }

    /// Statistics of `path`: read from an .npz, or computed from the images of a folder.
    fn stats(&mut self, path: &Path) -> Result<FidStats, CliError> {
        if is_npz(path) {
            return FidStats::read(path).map_err(|e| CliError::Input(e.to_string()));
        }
        if !path.is_dir() {
            return Err(CliError::Input(format!("\"{}\": expected a folder of images or an .npz of statistics", path.display())));
        }
        let files = list_images(path).map_err(|e| CliError::Input(e.to_string()))?;
        if files.len() < 2 {
            return Err(CliError::Input(format!(
                "image folder \"{}\": {} images found; FID needs at least 2 (.png, .jpg, .jpeg)",
                path.display(),
                files.len()
            )));
        }
        let batch_size = self.args.batch_size.max(1);
        let net = self.net()?;
        let bar = ProgressBar::new(files.len() as u64).with_message(path.display().to_string());
        bar.set_style(
            ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} images ({per_sec}, eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut stats = GaussianStats::new(InceptionV3::FEATURES);
        for chunk in files.chunks(batch_size) {
            // Images of different sizes go through the network separately (each is resized to
            // 299 anyway); same-sized runs are batched.
            let mut pending: Vec<u8> = Vec::new();
            let mut size = None;
            let mut flush = |pixels: &mut Vec<u8>, size: Option<(usize, usize)>| -> Result<(), CliError> {
                if let Some((h, w)) = size.filter(|_| !pixels.is_empty()) {
                    let n = pixels.len() / (3 * h * w);
                    let (features, _) = net.features(pixels, n, h, w).map_err(|e| CliError::Output(format!("inception forward: {e}")))?;
                    stats.add_batch(&features, n).map_err(|e| CliError::Output(format!("image folder \"{}\": {e}", path.display())))?;
                    pixels.clear();
                }
                Ok(())
            };
            for file in chunk {
                let (h, w, px) = decode_rgb_planar(file).map_err(|e| CliError::Input(format!("image {}: {e}", file.display())))?;
                if size.is_some_and(|s| s != (h, w)) {
                    flush(&mut pending, size)?;
                }
                size = Some((h, w));
                pending.extend_from_slice(&px);
            }
            flush(&mut pending, size)?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(FidStats { mu: stats.mean(), sigma: stats.covariance().expect("at least 2 images") })
    }
}

pub fn fid(args: FidArgs, settings: Settings) -> Result<(), CliError> {
    let mut features = Features { args: &args.inception, settings: &settings, net: None };
    let (a, b) = (features.stats(&args.path1)?, features.stats(&args.path2)?);
    if a.dim() != b.dim() {
        return Err(CliError::Input(format!("statistics have {} and {} dimensions; expected the same", a.dim(), b.dim())));
    }
    let r = frechet_distance(&a.mu, &a.sigma, &b.mu, &b.sigma).map_err(|e| CliError::Output(format!("frechet distance: {e}")))?;
    println!("FID: {}", r.fid);
    if r.rank_deficient {
        // pytorch-fid prints the same number with no warning; say why it may be off zero.
        eprintln!(
            "note: the covariances are singular (numerical rank {} of {}, e.g. fewer images than features); \
             like pytorch-fid's, this FID includes {:.3e} of rounding noise (without it: {})",
            r.rank,
            a.dim(),
            2.0 * r.noise_trace,
            r.fid_without_noise()
        );
    }
    Ok(())
}

pub fn fid_stats(args: FidStatsArgs, settings: Settings) -> Result<(), CliError> {
    if is_npz(&args.dir) || !args.dir.is_dir() {
        return Err(CliError::Input(format!("\"{}\": expected a folder of images", args.dir.display())));
    }
    let mut features = Features { args: &args.inception, settings: &settings, net: None };
    let stats = features.stats(&args.dir)?;
    stats.write(&args.out).map_err(|e| CliError::Output(e.to_string()))?;
    println!("statistics of {} ({}-d) written to {}", args.dir.display(), stats.dim(), args.out.display());
    Ok(())
}
