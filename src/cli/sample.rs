//! `rcaflow sample`: generates images with a class-conditional diffusers UNet and writes them
//! as PNGs in ImageFolder layout (`OUT/<class>/<position>.png`), so `rcaflow eval` and other
//! tools can read them.
//!
//! Two ways to say what to generate:
//! - `--classes LIST --per-class N [--seed S]`: the same units, seeds and images a `run` with
//!   that seed and `--unit-size` makes (a unit's images depend on (seed, class, index) only);
//! - `--noise X_T.npy --labels L1,L2,...`: the given initial noise (N x C x H x W) and one label
//!   per sample, for cross-framework checks; `--out-npy FILE` then writes the final samples,
//!   unquantised, which with DDIM (eta = 0) equal diffusers' for the same weights and noise.

use std::path::{Path, PathBuf};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::CliError;
use crate::data::image_folder::write_png;
use crate::models::sampling::{quantize_rgb, UnitSampler, CLASS_NAMES_FILE};
use crate::models::device::DeviceSpec;
use crate::models::precision::Precision;
use crate::models::schedulers::SchedulerKind;
use crate::runtime::plan::Plan;
use crate::settings::Settings;
use crate::stages::save_images::image_path;
use crate::units::unit_seed;

#[derive(Debug, Args)]
pub struct SampleArgs {
    /// A diffusers UNet2DModel folder (config.json, diffusion_pytorch_model.safetensors).
    #[arg(long, value_name = "DIR")]
    pub unet: PathBuf,
    #[arg(long, value_name = "ddpm|ddim", default_value = "ddpm")]
    pub scheduler: SchedulerKind,
    /// Denoising steps (default: every training timestep for DDPM, 50 for DDIM).
    #[arg(long)]
    pub steps: Option<usize>,
    /// DDIM's eta (0: deterministic given x_T).
    #[arg(long, default_value_t = 0.0)]
    pub eta: f64,
    /// Class labels (0-based) or names (from the model folder's classes.json), comma-separated,
    /// or "all".
    #[arg(long, value_name = "LIST", conflicts_with_all = ["noise", "labels"])]
    pub classes: Option<String>,
    /// Images per class.
    #[arg(long, value_name = "N", requires = "classes")]
    pub per_class: Option<u64>,
    /// Initial noise x_T, an .npy of shape N x C x H x W (float32).
    #[arg(long, value_name = "FILE.npy", requires = "labels")]
    pub noise: Option<PathBuf>,
    /// One class label per sample of --noise.
    #[arg(long, value_name = "L1,L2,...", value_delimiter = ',', requires = "noise")]
    pub labels: Option<Vec<u32>>,
    /// Where the PNGs go (ImageFolder layout).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Also write the final samples, unquantised, as an .npy (N x C x H x W).
    #[arg(long, value_name = "FILE.npy")]
    pub out_npy: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per unit (and per model batch); a run with the same seed and unit size makes the
    /// same images.
    #[arg(long, default_value_t = 64)]
    pub unit_size: usize,
    /// Where the model runs (overrides the config file).
    #[arg(long)]
    pub device: Option<String>,
    /// The UNet's precision: f32, or bf16 / f16 on a GPU.
    #[arg(long, value_name = "f32|bf16|f16", default_value = "f32")]
    pub dtype: String,
}

/// Class names for folder names: the model folder's classes.json, else `class_00`, ... (padded
/// so sorted folder names keep label order, as ImageFolder readers expect).
fn class_names(unet: &Path, count: usize) -> Result<Vec<String>, CliError> {
    let file = unet.join(CLASS_NAMES_FILE);
    if !file.is_file() {
        let width = count.saturating_sub(1).to_string().len().max(2);
        return Ok((0..count).map(|c| format!("class_{c:0width$}")).collect());
    }
    let names: Vec<String> = std::fs::read(&file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| CliError::Input(format!("class names \"{}\": {e}; expected a JSON list of {count} names", file.display())))?;
    if let Err(e) = crate::files::name::check_class_names(&names) {
        return Err(CliError::Input(format!("class names \"{}\": {e}", file.display())));
    }
    if names.len() != count {
        return Err(CliError::Input(format!("class names \"{}\": {} names, the model has {count} classes", file.display(), names.len())));
    }
    Ok(names)
}

fn parse_classes(list: &str, names: &[String]) -> Result<Vec<u32>, CliError> {
    if list.trim() == "all" {
        return Ok((0..names.len() as u32).collect());
    }
    list.split(',')
        .map(str::trim)
        .map(|item| {
            item.parse::<u32>()
                .ok()
                .filter(|&c| (c as usize) < names.len())
                .or_else(|| names.iter().position(|n| n == item).map(|c| c as u32))
                .ok_or_else(|| {
                    CliError::Input(format!(
                        "--classes: \"{item}\" is neither a label below {} nor a class name ({})",
                        names.len(),
                        names.join(", ")
                    ))
                })
        })
        .collect()
}

fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("sampling {bar:40} {pos}/{len} images ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

pub fn sample(args: SampleArgs, settings: Settings) -> Result<(), CliError> {
    if args.out.is_none() && args.out_npy.is_none() {
        return Err(CliError::Input("nothing to write: give --out DIR (PNGs) and/or --out-npy FILE.npy".into()));
    }
    crate::limits::count("--unit-size", args.unit_size, crate::limits::MAX_UNIT_SIZE, "image").map_err(CliError::Input)?;
    let device_name = args.device.as_deref().unwrap_or(&settings.runtime.device);
    let precision: Precision = args.dtype.parse().map_err(|e| CliError::Input(format!("--dtype: {e}")))?;
    let spec: DeviceSpec = device_name.parse().map_err(|e| CliError::Input(format!("--device: {e}")))?;
    precision.check_on(spec).map_err(|e| CliError::Input(format!("--dtype: {e}")))?;
    let device = spec.open().map_err(|e| CliError::Input(format!("--device: {e}")))?;
    let sampler = UnitSampler::load_as(&args.unet, args.scheduler, args.steps, args.eta, &device, precision)
        .map_err(|e| CliError::Input(e.to_string()))?;
    let classes = sampler.num_classes().ok_or_else(|| {
        CliError::Input(format!(
            "unet \"{}\": not class-conditional (num_class_embeds is null); expected a class-conditional model",
            args.unet.display()
        ))
    })?;
    let names = class_names(&args.unet, classes)?;
    let (c, h, w) = sampler.image_shape();
    let per_image = c * h * w;

    // What to generate: (label, position, x_T) chunks of at most unit_size images.
    let mut finals: Vec<f32> = Vec::new();
    let mut write_unit = |labels: &[u32], positions: &[u64], samples: &[f32]| -> Result<(), CliError> {
        if let Some(out) = &args.out {
            for ((label, position), image) in labels.iter().zip(positions).zip(samples.chunks(per_image)) {
                let planar = quantize_rgb(image, c);
                let path = image_path(out, &names[*label as usize], *position);
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| CliError::Output(format!("output folder \"{}\": cannot create: {e}", dir.display())))?;
                }
                write_png(&path, h, w, &planar)
                    .map_err(|e| CliError::Output(format!("image \"{}\": cannot write: {e}", path.display())))?;
            }
        }
        if args.out_npy.is_some() {
            finals.extend_from_slice(samples);
        }
        Ok(())
    };

    if let (Some(noise), Some(labels)) = (&args.noise, &args.labels) {
        let x_t = read_noise(noise, labels.len(), (c, h, w))?;
        if let Some(bad) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(CliError::Input(format!("--labels: {bad} is not a class label of this model (0..{})", classes - 1)));
        }
        let bar = progress_bar(labels.len() as u64);
        let mut next_position = vec![0u64; classes];
        for (k, (chunk, x)) in labels.chunks(args.unit_size).zip(x_t.chunks(args.unit_size * per_image)).enumerate() {
            // Step noise (DDPM, DDIM with eta > 0) comes from the seed; x_T from the file.
            let samples = sampler
                .denoise(x.to_vec(), chunk, unit_seed(args.seed, u32::MAX, k as u32))
                .map_err(|e| CliError::Output(e.to_string()))?;
            let positions: Vec<u64> = chunk
                .iter()
                .map(|&l| {
                    next_position[l as usize] += 1;
                    next_position[l as usize] - 1
                })
                .collect();
            write_unit(chunk, &positions, &samples)?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
    } else {
        let list = args.classes.as_deref().ok_or_else(|| {
            CliError::Input("say what to generate: --classes LIST --per-class N, or --noise FILE.npy --labels L1,...".into())
        })?;
        let per_class = args.per_class.ok_or_else(|| CliError::Input("--classes needs --per-class N".into()))?;
        let chosen = parse_classes(list, &names)?;
        let counts: Vec<u64> = (0..classes as u32).map(|c| if chosen.contains(&c) { per_class } else { 0 }).collect();
        let plan = Plan::new(args.seed, &counts, args.unit_size);
        let bar = progress_bar(plan.total_images());
        for unit in &plan.units {
            let samples = sampler.sample_unit(unit).map_err(|e| CliError::Output(format!("unit {}: {e}", unit.id())))?;
            let positions: Vec<u64> = (unit.first_position..unit.first_position + unit.size as u64).collect();
            write_unit(&vec![unit.class; unit.size], &positions, &samples)?;
            bar.inc(unit.size as u64);
        }
        bar.finish_and_clear();
    }

    if let Some(path) = &args.out_npy {
        let n = finals.len() / per_image;
        let write_err = |e: String| CliError::Output(format!("samples \"{}\": cannot write: {e}", path.display()));
        let bytes = crate::data::npy::encode_npy(&finals, &[n, c, h, w]).map_err(write_err)?;
        crate::files::atomic::write(path, &bytes, "npy.write").map_err(|e| write_err(e.to_string()))?;
        println!("{n} samples written to {}", path.display());
    }
    if let Some(out) = &args.out {
        // The renames of the PNGs, durable before this command says they are written.
        for name in &names {
            let dir = out.join(name);
            if dir.is_dir() {
                crate::files::atomic::sync_dir(&dir)
                    .map_err(|e| CliError::Output(format!("output folder \"{}\": cannot sync: {e}", dir.display())))?;
            }
        }
        println!("images written to {} ({} with {} steps)", out.display(), args.scheduler, sampler.steps());
    }
    Ok(())
}

/// x_T from an .npy: float32 (or float64) of shape N x C x H x W matching the model.
fn read_noise(path: &Path, n: usize, (c, h, w): (usize, usize, usize)) -> Result<Vec<f32>, CliError> {
    let bad = |detail: String| CliError::Input(format!("noise \"{}\": {detail}", path.display()));
    let t = candle_core::Tensor::read_npy(path).map_err(|e| bad(format!("cannot read as .npy: {e}")))?;
    if t.dims() != [n, c, h, w] {
        return Err(bad(format!(
            "shape {:?}, expected [{n}, {c}, {h}, {w}] (one sample per --labels entry, the model's channels and size)",
            t.dims()
        )));
    }
    let values = t
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| bad(e.to_string()))?;
    if values.iter().any(|v| !v.is_finite()) {
        return Err(bad("contains NaN or infinite values".into()));
    }
    Ok(values)
}
