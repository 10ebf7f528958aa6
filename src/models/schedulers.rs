//! diffusers' DDPM and DDIM schedulers as host maths on flat f32 buffers (N*C*H*W):
//! `DDPMScheduler` (scheduling_ddpm.py) and `DDIMScheduler` (scheduling_ddim.py) of diffusers
//! 0.42, configured from a `scheduler_config.json` or with each scheduler's own defaults.
//!
//! Why f32 on the host: diffusers runs `step` in the dtype of its tensors (float32), with the
//! alpha tables in float32 (betas by float32 `linspace`, `cumprod` accumulated in double as
//! torch's CPU kernel does and stored as float32). Doing the same arithmetic in the same order
//! on the host gives diffusers' numbers to rounding, and the same numbers on every device.
//! The per-step variance noise is passed in by the caller, who draws it from the unit's seed.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("scheduler config \"{path}\": {detail}")]
    Config { path: String, detail: String },
    #[error("timestep {0} is not one of the scheduler's timesteps")]
    UnknownTimestep(usize),
    #[error("model output has {0} values, sample {1}, noise {2}; expected the same")]
    Length(usize, usize, usize),
}

/// Which diffusers scheduler a sampler steps with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// Ancestral DDPM sampling (the paper: 1,000 steps).
    #[default]
    Ddpm,
    /// DDIM with `eta` (0 = deterministic given x_T).
    Ddim,
}

impl std::fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SchedulerKind::Ddpm => "ddpm",
            SchedulerKind::Ddim => "ddim",
        })
    }
}

impl std::str::FromStr for SchedulerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ddpm" => Ok(SchedulerKind::Ddpm),
            "ddim" => Ok(SchedulerKind::Ddim),
            other => Err(format!("unknown scheduler \"{other}\": expected \"ddpm\" or \"ddim\"")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
    SquaredcosCapV2,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    Sample,
    VPrediction,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    FixedSmall,
    FixedSmallLog,
    FixedLarge,
    FixedLargeLog,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

/// The fields of diffusers' `scheduler_config.json` that change DDPM or DDIM sampling.
/// `Default` is DDPMScheduler's constructor defaults ([`SchedulerConfig::ddim_default`] DDIM's).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct SchedulerConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f32,
    pub beta_end: f32,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<Vec<f32>>,
    pub variance_type: VarianceType,
    pub clip_sample: bool,
    pub clip_sample_range: f32,
    pub prediction_type: PredictionType,
    pub thresholding: bool,
    pub timestep_spacing: TimestepSpacing,
    pub steps_offset: usize,
    /// DDIM only: alpha_cumprod of the step after the last (1 when true, else alphas_cumprod[0]).
    pub set_alpha_to_one: bool,
    pub rescale_betas_zero_snr: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            variance_type: VarianceType::FixedSmall,
            clip_sample: true,
            clip_sample_range: 1.0,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            timestep_spacing: TimestepSpacing::Leading,
            steps_offset: 0,
            set_alpha_to_one: true,
            rescale_betas_zero_snr: false,
        }
    }
}

impl SchedulerConfig {
    /// DDIMScheduler's constructor defaults (the same as DDPM's for every field DDIM reads).
    pub fn ddim_default() -> Self {
        SchedulerConfig::default()
    }

    /// Reads a diffusers `scheduler_config.json`; keys this code does not read (`_class_name`,
    /// `variance_type` for DDIM, ...) are ignored, values it cannot honour are refused.
    pub fn load(path: &Path) -> Result<Self, SchedulerError> {
        let err = |detail: String| SchedulerError::Config { path: path.display().to_string(), detail };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let config: SchedulerConfig = serde_json::from_slice(&bytes).map_err(|e| err(e.to_string()))?;
        config.check().map_err(err)?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.thresholding {
            return Err("thresholding = true is not supported; expected false".into());
        }
        if self.rescale_betas_zero_snr {
            return Err("rescale_betas_zero_snr = true is not supported; expected false".into());
        }
        if self.num_train_timesteps == 0 {
            return Err("num_train_timesteps = 0; expected at least 1".into());
        }
        if let Some(b) = &self.trained_betas {
            if b.len() != self.num_train_timesteps {
                return Err(format!("trained_betas has {} values, num_train_timesteps is {}", b.len(), self.num_train_timesteps));
            }
        }
        Ok(())
    }

    /// betas as diffusers computes them, in float32.
    pub fn betas(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        if let Some(b) = &self.trained_betas {
            return b.clone();
        }
        match self.beta_schedule {
            BetaSchedule::Linear => linspace_f32(self.beta_start, self.beta_end, n),
            BetaSchedule::ScaledLinear => {
                linspace_f32(self.beta_start.sqrt(), self.beta_end.sqrt(), n).into_iter().map(|b| b * b).collect()
            }
            BetaSchedule::SquaredcosCapV2 => {
                // betas_for_alpha_bar (cosine), in Python floats, then float32.
                let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
                (0..n).map(|i| (1.0 - alpha_bar((i + 1) as f64 / n as f64) / alpha_bar(i as f64 / n as f64)).min(0.999) as f32).collect()
            }
        }
    }

    /// alphas_cumprod: float32 values of a product accumulated in double (torch's CPU cumprod).
    pub fn alphas_cumprod(&self) -> Vec<f32> {
        let mut product = 1.0f64;
        self.betas()
            .into_iter()
            .map(|b| {
                product *= (1.0f32 - b) as f64;
                product as f32
            })
            .collect()
    }

    /// The inference timesteps for `steps` steps, as `set_timesteps` makes them.
    pub fn timesteps(&self, steps: usize) -> Vec<usize> {
        let n = self.num_train_timesteps;
        let steps = steps.clamp(1, n);
        match self.timestep_spacing {
            TimestepSpacing::Linspace => {
                let mut t: Vec<usize> = (0..steps)
                    .map(|i| if steps == 1 { 0.0 } else { i as f64 * (n - 1) as f64 / (steps - 1) as f64 })
                    .map(|v| round_half_even(v) as usize)
                    .collect();
                t.reverse();
                t
            }
            TimestepSpacing::Leading => {
                let ratio = n / steps;
                (0..steps).rev().map(|i| i * ratio + self.steps_offset).collect()
            }
            TimestepSpacing::Trailing => {
                let ratio = n as f64 / steps as f64;
                let mut t = Vec::new();
                let mut v = n as f64;
                while v > 0.0 {
                    t.push(round_half_even(v) as usize - 1);
                    v -= ratio;
                }
                t
            }
        }
    }
}

/// numpy's `round` (half to even).
fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    }
}

/// torch.linspace(start, end, n, dtype=float32) on the CPU: step in float32, the first half
/// counted up from `start`, the second half down from `end`.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n).map(|i| if i < half { start + step * i as f32 } else { end - step * (n - i - 1) as f32 }).collect()
}

/// Which step rule, with its own state.
#[derive(Clone, Debug)]
pub enum Scheduler {
    Ddpm(Ddpm),
    Ddim(Ddim),
}

impl Scheduler {
    pub fn timesteps(&self) -> &[usize] {
        match self {
            Scheduler::Ddpm(s) => &s.timesteps,
            Scheduler::Ddim(s) => &s.timesteps,
        }
    }

    /// Whether the step at `t` uses variance noise (so the caller need not draw it otherwise).
    pub fn needs_noise(&self, t: usize) -> bool {
        match self {
            Scheduler::Ddpm(_) => t > 0,
            Scheduler::Ddim(s) => s.eta > 0.0,
        }
    }

    pub fn step(&self, model_output: &[f32], t: usize, sample: &[f32], noise: Option<&[f32]>) -> Result<Vec<f32>, SchedulerError> {
        let len = noise.map_or(sample.len(), <[f32]>::len);
        if model_output.len() != sample.len() || len != sample.len() {
            return Err(SchedulerError::Length(model_output.len(), sample.len(), len));
        }
        match self {
            Scheduler::Ddpm(s) => s.step(model_output, t, sample, noise),
            Scheduler::Ddim(s) => s.step(model_output, t, sample, noise),
        }
    }
}

/// x0 predicted from the model output, then clipped as the config says (step 2-3 of both).
fn predict_original(c: &SchedulerConfig, model_output: f32, sample: f32, alpha_prod_t: f32, beta_prod_t: f32) -> f32 {
    let x0 = match c.prediction_type {
        PredictionType::Epsilon => (sample - beta_prod_t.powf(0.5) * model_output) / alpha_prod_t.powf(0.5),
        PredictionType::Sample => model_output,
        PredictionType::VPrediction => alpha_prod_t.powf(0.5) * sample - beta_prod_t.powf(0.5) * model_output,
    };
    if c.clip_sample {
        x0.clamp(-c.clip_sample_range, c.clip_sample_range)
    } else {
        x0
    }
}

/// `DDPMScheduler` after `set_timesteps(steps)`.
#[derive(Clone, Debug)]
pub struct Ddpm {
    pub config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    pub timesteps: Vec<usize>,
}

impl Ddpm {
    pub fn new(config: SchedulerConfig, steps: usize) -> Self {
        let alphas_cumprod = config.alphas_cumprod();
        let timesteps = config.timesteps(steps);
        Ddpm { config, alphas_cumprod, timesteps }
    }

    /// `previous_timestep`: the next entry of the inference timesteps, -1 after the last.
    fn previous(&self, t: usize) -> Result<Option<usize>, SchedulerError> {
        let i = self.timesteps.iter().position(|&x| x == t).ok_or(SchedulerError::UnknownTimestep(t))?;
        Ok(self.timesteps.get(i + 1).copied())
    }

    pub fn step(&self, model_output: &[f32], t: usize, sample: &[f32], noise: Option<&[f32]>) -> Result<Vec<f32>, SchedulerError> {
        let c = &self.config;
        let prev = self.previous(t)?;
        // 1. alphas and betas (0-dim float32 tensors in diffusers).
        let alpha_prod_t = self.alphas_cumprod[t];
        let alpha_prod_t_prev = prev.map_or(1.0, |p| self.alphas_cumprod[p]);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let current_alpha_t = alpha_prod_t / alpha_prod_t_prev;
        let current_beta_t = 1.0 - current_alpha_t;
        // 4. coefficients of x0 and x_t in the posterior mean (formula (7) of the DDPM paper).
        let x0_coeff = (alpha_prod_t_prev.powf(0.5) * current_beta_t) / beta_prod_t;
        let sample_coeff = current_alpha_t.powf(0.5) * beta_prod_t_prev / beta_prod_t;
        // 6. the variance (`_get_variance`), used for t > 0.
        let std = if t > 0 {
            let variance = ((1.0 - alpha_prod_t_prev) / (1.0 - alpha_prod_t) * current_beta_t).max(1e-20);
            Some(match c.variance_type {
                VarianceType::FixedSmall => variance.powf(0.5),
                VarianceType::FixedSmallLog => (0.5 * variance.ln()).exp(),
                VarianceType::FixedLarge => current_beta_t.powf(0.5),
                // diffusers uses log(beta) itself as the factor here.
                VarianceType::FixedLargeLog => current_beta_t.ln(),
            })
        } else {
            None
        };
        let mut out = Vec::with_capacity(sample.len());
        for (i, (&m, &x)) in model_output.iter().zip(sample).enumerate() {
            let x0 = predict_original(c, m, x, alpha_prod_t, beta_prod_t);
            let mut prev_sample = x0_coeff * x0 + sample_coeff * x;
            if let (Some(std), Some(z)) = (std, noise) {
                prev_sample += std * z[i];
            }
            out.push(prev_sample);
        }
        Ok(out)
    }
}

/// `DDIMScheduler` after `set_timesteps(steps)`, stepping with `eta`.
#[derive(Clone, Debug)]
pub struct Ddim {
    pub config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    pub timesteps: Vec<usize>,
    step_ratio: usize,
    pub eta: f32,
}

impl Ddim {
    pub fn new(config: SchedulerConfig, steps: usize, eta: f32) -> Self {
        let alphas_cumprod = config.alphas_cumprod();
        let final_alpha_cumprod = if config.set_alpha_to_one { 1.0 } else { alphas_cumprod[0] };
        let timesteps = config.timesteps(steps);
        let step_ratio = config.num_train_timesteps / steps.clamp(1, config.num_train_timesteps);
        Ddim { config, alphas_cumprod, final_alpha_cumprod, timesteps, step_ratio, eta }
    }

    pub fn step(&self, model_output: &[f32], t: usize, sample: &[f32], noise: Option<&[f32]>) -> Result<Vec<f32>, SchedulerError> {
        let c = &self.config;
        // 1. previous timestep: t - T / steps, whatever the spacing (as diffusers does).
        let prev = t.checked_sub(self.step_ratio);
        // 2. alphas and betas.
        let alpha_prod_t = *self.alphas_cumprod.get(t).ok_or(SchedulerError::UnknownTimestep(t))?;
        let alpha_prod_t_prev = prev.map_or(self.final_alpha_cumprod, |p| self.alphas_cumprod[p]);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        // 5-6. sigma_t = eta * sqrt(variance), formula (16) of the DDIM paper.
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta * variance.powf(0.5);
        let direction_coeff = (1.0 - alpha_prod_t_prev - std_dev_t.powi(2)).powf(0.5);
        let mut out = Vec::with_capacity(sample.len());
        for (i, (&m, &x)) in model_output.iter().zip(sample).enumerate() {
            let x0 = predict_original(c, m, x, alpha_prod_t, beta_prod_t);
            // 3. the epsilon the model implies (before clipping; use_clipped_model_output = false).
            let eps = match c.prediction_type {
                PredictionType::Epsilon => m,
                PredictionType::Sample => (x - alpha_prod_t.powf(0.5) * m) / beta_prod_t.powf(0.5),
                PredictionType::VPrediction => alpha_prod_t.powf(0.5) * m + beta_prod_t.powf(0.5) * x,
            };
            // 7. x_{t-1} = sqrt(alpha_prev) x0 + direction (+ sigma z).
            let mut prev_sample = alpha_prod_t_prev.powf(0.5) * x0 + direction_coeff * eps;
            if self.eta > 0.0 {
                if let Some(z) = noise {
                    prev_sample += std_dev_t * z[i];
                }
            }
            out.push(prev_sample);
        }
        Ok(out)
    }
}

/// `add_noise`: sqrt(alpha_cumprod_t) x0 + sqrt(1 - alpha_cumprod_t) noise (for training).
pub fn add_noise(alphas_cumprod: &[f32], original: &[f32], noise: &[f32], t: usize) -> Vec<f32> {
    let a = alphas_cumprod[t];
    let (s, s1) = (a.powf(0.5), (1.0 - a).powf(0.5));
    original.iter().zip(noise).map(|(&x, &z)| s * x + s1 * z).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddpm_timesteps_cover_every_training_step_and_leading_spacing_offsets() {
        let c = SchedulerConfig::default();
        let t = c.timesteps(1000);
        assert_eq!(t.len(), 1000);
        assert_eq!((t[0], t[999]), (999, 0));
        let c = SchedulerConfig { steps_offset: 1, ..SchedulerConfig::default() };
        assert_eq!(c.timesteps(10), vec![901, 801, 701, 601, 501, 401, 301, 201, 101, 1]);
        let c = SchedulerConfig { timestep_spacing: TimestepSpacing::Trailing, ..SchedulerConfig::default() };
        assert_eq!(c.timesteps(4), vec![999, 749, 499, 249]);
    }

    #[test]
    fn unsupported_values_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler_config.json");
        std::fs::write(&path, r#"{"_class_name": "DDPMScheduler", "thresholding": true}"#).unwrap();
        let e = SchedulerConfig::load(&path).unwrap_err().to_string();
        assert_eq!(e, format!("scheduler config \"{}\": thresholding = true is not supported; expected false", path.display()));
        std::fs::write(&path, r#"{"variance_type": "learned_range"}"#).unwrap();
        let e = SchedulerConfig::load(&path).unwrap_err().to_string();
        assert!(e.contains("unknown variant `learned_range`"), "{e}");
    }
}
