//! Sampling one work unit with a class-conditional UNet: the loop of diffusers'
//! `DDPMPipeline` / `DDIMPipeline` (`for t in scheduler.timesteps: eps = unet(x, t, labels);
//! x = scheduler.step(eps, t, x)`), with every random draw taken from the unit's seed on the
//! host ([`super::noise`]), so a unit gives the same images on any device, replica or restart.
//!
//! The network runs on the model's device; the scheduler step runs on the host in f32
//! ([`super::schedulers`]), so only the noise prediction crosses the device boundary each step
//! (N x C x H x W floats: small next to the UNet's own work).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::precision::Precision;
use super::noise::{standard_normal, step_stream, INITIAL_STREAM};
use super::schedulers::{Ddim, Ddpm, Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};
use super::unet::{UNet2DModel, UnetError};
use crate::units::WorkUnit;

/// The diffusers scheduler config a model folder may carry.
pub const SCHEDULER_CONFIG_FILE: &str = "scheduler_config.json";

/// rcaflow's addition to a model folder: the class names in label order (a JSON list), used
/// for folder names by `rcaflow sample` and written by `rcaflow train ddpm`.
pub const CLASS_NAMES_FILE: &str = "classes.json";

/// DDIM's step count when none is given (diffusers' `DDIMPipeline` default).
pub const DDIM_DEFAULT_STEPS: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    #[error(transparent)]
    Unet(#[from] UnetError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error("unet \"{folder}\": {detail}")]
    Model { folder: String, detail: String },
    #[error("steps = {steps}: expected 1 to num_train_timesteps = {max}")]
    Steps { steps: usize, max: usize },
    #[error("x_T has {found} values; expected {expected} ({n} samples of {c} x {h} x {w})")]
    NoiseLength { found: usize, expected: usize, n: usize, c: usize, h: usize, w: usize },
    #[error("sampling: {0}")]
    Candle(#[from] candle_core::Error),
}

/// A loaded UNet with its scheduler, ready to denoise units.
pub struct UnitSampler {
    unet: UNet2DModel,
    scheduler: Scheduler,
    shape: (usize, usize, usize),
}

impl UnitSampler {
    /// Loads the diffusers folder `folder` on `device` and sets its scheduler up: the folder's
    /// `scheduler_config.json` when it has one, else diffusers' defaults for `kind`; `steps`
    /// defaults to every training timestep for DDPM and 50 for DDIM, `eta` is DDIM's.
    pub fn load(folder: &Path, kind: SchedulerKind, steps: Option<usize>, eta: f64, device: &Device) -> Result<Self, SamplingError> {
        Self::load_as(folder, kind, steps, eta, device, Precision::F32)
    }

    /// [`Self::load`] with the UNet in `precision`; the scheduler step stays f32 on the host.
    pub fn load_as(
        folder: &Path,
        kind: SchedulerKind,
        steps: Option<usize>,
        eta: f64,
        device: &Device,
        precision: Precision,
    ) -> Result<Self, SamplingError> {
        let unet = UNet2DModel::load_as(folder, device, precision.dtype())?;
        let model_err = |detail: String| SamplingError::Model { folder: folder.display().to_string(), detail };
        let config = unet.config();
        if config.out_channels != config.in_channels {
            // A learned-variance model predicts 2C channels; the schedulers here use fixed variances.
            return Err(model_err(format!(
                "out_channels = {} differs from in_channels = {}; expected an epsilon-predicting model with as many output channels as input channels",
                config.out_channels, config.in_channels
            )));
        }
        if let Some(kind) = &config.class_embed_type {
            return Err(model_err(format!(
                "class_embed_type = \"{kind}\": the sampler conditions on class labels; expected null (a num_class_embeds table)"
            )));
        }
        let (h, w) = config
            .sample_size
            .map(|s| s.hw())
            .ok_or_else(|| model_err("sample_size is null; expected the image size the model was trained at".into()))?;
        let shape = (config.in_channels, h, w);

        let scheduler_file = folder.join(SCHEDULER_CONFIG_FILE);
        let scheduler_config = if scheduler_file.is_file() {
            SchedulerConfig::load(&scheduler_file)?
        } else {
            match kind {
                SchedulerKind::Ddpm => SchedulerConfig::default(),
                SchedulerKind::Ddim => SchedulerConfig::ddim_default(),
            }
        };
        let max = scheduler_config.num_train_timesteps;
        let steps = steps.unwrap_or(match kind {
            SchedulerKind::Ddpm => max,
            SchedulerKind::Ddim => DDIM_DEFAULT_STEPS.min(max),
        });
        if steps == 0 || steps > max {
            return Err(SamplingError::Steps { steps, max });
        }
        let scheduler = match kind {
            SchedulerKind::Ddpm => Scheduler::Ddpm(Ddpm::new(scheduler_config, steps)),
            SchedulerKind::Ddim => Scheduler::Ddim(Ddim::new(scheduler_config, steps, eta as f32)),
        };
        Ok(UnitSampler { unet, scheduler, shape })
    }

    /// (channels, height, width) of one sample.
    pub fn image_shape(&self) -> (usize, usize, usize) {
        self.shape
    }

    /// Denoising steps per sample (network evaluations).
    pub fn steps(&self) -> usize {
        self.scheduler.timesteps().len()
    }

    /// `num_class_embeds` of the model (`None`: not class-conditional by a label table).
    pub fn num_classes(&self) -> Option<usize> {
        self.unet.config().num_class_embeds
    }

    /// The unit's final samples (N x C x H x W, in the model's [-1, 1] range, unquantised): x_T
    /// from the unit seed's initial stream, step noise from its per-step streams.
    pub fn sample_unit(&self, unit: &WorkUnit) -> Result<Vec<f32>, SamplingError> {
        let (c, h, w) = self.shape;
        let x_t = standard_normal(unit.seed, INITIAL_STREAM, unit.size * c * h * w);
        self.denoise(x_t, &vec![unit.class; unit.size], unit.seed)
    }

    /// Runs the whole reverse process from `x_t` (one sample per label); step noise, where the
    /// scheduler needs it, comes from `seed`'s per-step streams.
    pub fn denoise(&self, x_t: Vec<f32>, labels: &[u32], seed: u64) -> Result<Vec<f32>, SamplingError> {
        let (c, h, w) = self.shape;
        let n = labels.len();
        if x_t.len() != n * c * h * w {
            return Err(SamplingError::NoiseLength { found: x_t.len(), expected: n * c * h * w, n, c, h, w });
        }
        let device = self.unet.device();
        let labels = Tensor::from_slice(labels, n, device)?;
        let mut x = x_t;
        for (k, &t) in self.scheduler.timesteps().iter().enumerate() {
            let sample = Tensor::from_slice(&x, (n, c, h, w), device)?;
            let timesteps = Tensor::full(t as f32, n, device)?;
            let eps = self.unet.forward(&sample, &timesteps, Some(&labels))?;
            let eps = eps.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let noise = self.scheduler.needs_noise(t).then(|| standard_normal(seed, step_stream(k), x.len()));
            x = self.scheduler.step(&eps, t, &x, noise.as_deref())?;
        }
        Ok(x)
    }
}

/// A model value in [-1, 1] as the uint8 it would be stored as (DESIGN.md §1): round half away
/// from zero of (x + 1) * 127.5, clamped to 0..=255. NaN becomes 0 (and is counted by callers).
pub fn quantize(value: f32) -> u8 {
    let scaled = ((value + 1.0) * 127.5).round();
    if scaled.is_nan() {
        0
    } else {
        scaled.clamp(0.0, 255.0) as u8
    }
}

/// One sample (C x H x W, C = 1 or 3) as the planar uint8 RGB image the graph carries: each
/// value [`quantize`]d, a 1-channel sample repeated as grey.
pub fn quantize_rgb(image: &[f32], channels: usize) -> Vec<u8> {
    let planes = if channels == 1 { 3 } else { 1 };
    (0..planes).flat_map(|_| image.iter().map(|&v| quantize(v))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_rounds_half_away_and_clamps() {
        assert_eq!(quantize(-1.0), 0);
        assert_eq!(quantize(1.0), 255);
        assert_eq!(quantize(0.0), 128); // 127.5 rounds away from zero
        assert_eq!(quantize(-2.0), 0);
        assert_eq!(quantize(3.0), 255);
        assert_eq!(quantize(f32::INFINITY), 255);
        assert_eq!(quantize(f32::NEG_INFINITY), 0);
        assert_eq!(quantize(f32::NAN), 0);
        assert_eq!(quantize(2.0 / 127.5 - 1.0), 2);
        assert_eq!(quantize(-1.0 + 0.6 / 127.5), 1);
        assert_eq!(quantize(-1.0 + 0.4 / 127.5), 0);
    }

    #[test]
    fn grey_samples_become_three_equal_planes() {
        assert_eq!(quantize_rgb(&[-1.0, 1.0], 1), vec![0, 255, 0, 255, 0, 255]);
        assert_eq!(quantize_rgb(&[-1.0, 0.0, 1.0], 3), vec![0, 128, 255]);
    }
}
