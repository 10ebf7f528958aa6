//! Training the class-conditional DDPM: diffusers' `UNet2DModel` predicting the noise
//! (epsilon) added by the forward process, as diffusers' `train_unconditional.py` with class
//! labels and the paper's settings (T = 1,000 linear betas 1e-4..0.02, AdamW, lr 1e-4).
//!
//! One step k (0-based): a batch from per-epoch permutations keyed by (seed, epoch), each image
//! flipped horizontally with probability 1/2, scaled to [-1, 1]; timesteps uniform in 0..T and
//! Gaussian noise, all drawn on the host from streams keyed by (seed, k); x_t =
//! `schedulers::add_noise`; loss = MSE(unet(x_t, t, class), noise); backward; global-norm
//! clipping; AdamW; EMA update. Everything a step draws depends only on (seed, k), so a run
//! resumed from a checkpoint takes exactly the step an uninterrupted run would (with
//! `dropout = 0`: candle's dropout draws from an unseeded generator).
//!
//! A checkpoint is a diffusers model folder (`config.json`, `diffusion_pytorch_model.safetensors`
//! holding the EMA weights under diffusers' key names, `scheduler_config.json`) plus the
//! training state: `training_state.safetensors` (raw weights `model.<key>`, AdamW moments
//! `optim.<key>.exp_avg` / `.exp_avg_sq`) and `training_state.json` (step, settings, losses).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use super::dataset::Dataset;
use super::init::{fan_in, init_varmap, Init};
use super::optim::{clip_grad_norm, AdamW, Ema, ParamsAdamW};
use crate::data::rng::Rng;
use crate::models::noise::standard_normal;
use crate::models::schedulers::{add_noise, SchedulerConfig};
use crate::models::unet::{SampleSize, UNet2DConfig, UNet2DModel, CONFIG_FILE, WEIGHTS_FILE};

/// The scheduler config written next to the model.
pub const SCHEDULER_FILE: &str = "scheduler_config.json";
pub const STATE_FILE: &str = "training_state.json";
pub const STATE_TENSORS_FILE: &str = "training_state.safetensors";

#[derive(Debug, thiserror::Error)]
pub enum DdpmError {
    #[error("train ddpm: {0}")]
    Input(String),
    #[error("train ddpm: checkpoint \"{}\": {detail}", .path.display())]
    Checkpoint { path: PathBuf, detail: String },
    #[error("train ddpm: cannot write \"{}\": {cause}", .path.display())]
    Write { path: PathBuf, cause: String },
    #[error("train ddpm: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("train ddpm: {0}")]
    Unet(#[from] crate::models::unet::UnetError),
}

/// Training settings (saved in every checkpoint).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdpmTrainConfig {
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub ema_decay: f64,
    /// Global gradient-norm limit; `None`: no clipping.
    pub grad_clip: Option<f64>,
    pub seed: u64,
    pub num_train_timesteps: usize,
}

/// What `training_state.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainingState {
    pub step: usize,
    pub config: DdpmTrainConfig,
    pub classes: Vec<String>,
    /// (step, loss) of every step so far.
    pub losses: Vec<(usize, f64)>,
}

/// A DDPM being trained.
pub struct DdpmTrainer {
    unet_config: UNet2DConfig,
    unet: UNet2DModel,
    _varmap: VarMap,
    vars: Vec<(String, Var)>,
    opt: AdamW,
    ema: Ema,
    alphas_cumprod: Vec<f32>,
    cfg: DdpmTrainConfig,
    data: Dataset,
    step: usize,
    losses: Vec<(usize, f64)>,
    device: Device,
    /// The permutation of the epoch `.0`.
    perm: (usize, Vec<usize>),
}

impl std::fmt::Debug for DdpmTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DdpmTrainer(step {})", self.step)
    }
}

/// diffusers' `DDPMScheduler` for `num_train_timesteps` with the defaults the trainer uses.
pub fn scheduler_config(num_train_timesteps: usize) -> SchedulerConfig {
    SchedulerConfig { num_train_timesteps, ..SchedulerConfig::default() }
}

/// The scheduler config as diffusers writes it.
fn scheduler_json(c: &SchedulerConfig) -> serde_json::Value {
    serde_json::json!({
        "_class_name": "DDPMScheduler",
        "_diffusers_version": "0.42.0",
        "num_train_timesteps": c.num_train_timesteps,
        "beta_start": c.beta_start,
        "beta_end": c.beta_end,
        "beta_schedule": "linear",
        "trained_betas": null,
        "variance_type": "fixed_small",
        "clip_sample": c.clip_sample,
        "clip_sample_range": c.clip_sample_range,
        "prediction_type": "epsilon",
        "thresholding": false,
        "timestep_spacing": "leading",
        "steps_offset": c.steps_offset,
        "rescale_betas_zero_snr": false
    })
}

/// A file of a model folder that could not be written, and why. Its message names no writer:
/// the trainer wraps it in [`DdpmError::Write`], `rcaflow bench --pipeline` shows it as it is.
#[derive(Debug, thiserror::Error)]
#[error("cannot write \"{}\": {cause}", .path.display())]
pub struct ModelFolderError {
    pub path: PathBuf,
    pub cause: String,
}

/// Writes a diffusers model folder to `dir` (created if needed), as `rcaflow sample` and the
/// `ddpm_sampler` stage read it: `config.json`, `diffusion_pytorch_model.safetensors` (`weights`
/// under diffusers' key names), `scheduler_config.json` (the trainer's DDPM schedule over
/// `num_train_timesteps`) and the class names in label order, so samples are named after them.
pub fn write_model_folder(
    dir: &Path,
    unet_config: &UNet2DConfig,
    weights: &HashMap<String, Tensor>,
    num_train_timesteps: usize,
    classes: &[String],
) -> Result<(), ModelFolderError> {
    let werr = |path: &Path, cause: String| ModelFolderError { path: path.to_path_buf(), cause };
    std::fs::create_dir_all(dir).map_err(|e| werr(dir, e.to_string()))?;
    let path = dir.join(WEIGHTS_FILE);
    super::write_safetensors(&path, weights).map_err(|e| werr(&path, e))?;
    let json_file = |name: &str, text: String| {
        let path = dir.join(name);
        crate::files::atomic::write(&path, text.as_bytes(), "json.write").map_err(|e| werr(&path, e.to_string()))
    };
    json_file(CONFIG_FILE, unet_config.to_json_string())?;
    let json = serde_json::to_string_pretty(&scheduler_json(&scheduler_config(num_train_timesteps)))
        .map_err(|e| werr(&dir.join(SCHEDULER_FILE), e.to_string()))?;
    json_file(SCHEDULER_FILE, json)?;
    let json =
        serde_json::to_string_pretty(classes).map_err(|e| werr(&dir.join(crate::models::sampling::CLASS_NAMES_FILE), e.to_string()))?;
    json_file(crate::models::sampling::CLASS_NAMES_FILE, json)
}

impl DdpmTrainer {
    /// A fresh model for `unet_config` (which must be class-conditional with one embedding per
    /// class of `data`, 3 channels in and out, and fit the image size).
    pub fn new(unet_config: &UNet2DConfig, data: Dataset, cfg: DdpmTrainConfig, device: &Device) -> Result<Self, DdpmError> {
        let mut uc = unet_config.clone();
        let k = data.classes.len();
        if uc.num_class_embeds != Some(k) || uc.class_embed_type.is_some() {
            return Err(DdpmError::Input(format!(
                "the unet config must be class-conditional by table with num_class_embeds = {k} (the data's class count); found num_class_embeds = {:?}, class_embed_type = {:?}",
                uc.num_class_embeds, uc.class_embed_type
            )));
        }
        if uc.in_channels != 3 || uc.out_channels != 3 {
            return Err(DdpmError::Input(format!(
                "the unet config has in_channels = {}, out_channels = {}; expected 3 and 3 (RGB, epsilon)",
                uc.in_channels, uc.out_channels
            )));
        }
        let (h, w) = (data.height, data.width);
        match uc.sample_size.map(SampleSize::hw) {
            Some(hw) if hw != (h, w) => {
                return Err(DdpmError::Input(format!("the unet config has sample_size {hw:?}; the data is {h}x{w}")));
            }
            _ => uc.sample_size = Some(if h == w { SampleSize::Square(h) } else { SampleSize::Rect([h, w]) }),
        }
        uc.num_train_timesteps = Some(cfg.num_train_timesteps);
        uc.validate().map_err(|e| DdpmError::Input(format!("unet config: {e}")))?;
        if cfg.batch_size == 0 {
            return Err(DdpmError::Input("--batch-size 0: expected at least 1".into()));
        }
        let varmap = VarMap::new();
        let unet = UNet2DModel::new(&uc, VarBuilder::from_varmap(&varmap, DType::F32, device))?;
        init_torch_default(&varmap, cfg.seed)?;
        let mut vars: Vec<(String, Var)> =
            varmap.data().lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(n, v)| (n.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let params = ParamsAdamW { lr: cfg.lr, weight_decay: cfg.weight_decay, ..Default::default() };
        let opt = AdamW::new(vars.clone(), params)?;
        let ema = Ema::new(&vars, cfg.ema_decay)?;
        let alphas_cumprod = scheduler_config(cfg.num_train_timesteps).alphas_cumprod();
        Ok(Self {
            unet_config: uc,
            unet,
            _varmap: varmap,
            vars,
            opt,
            ema,
            alphas_cumprod,
            cfg,
            data,
            step: 0,
            losses: Vec::new(),
            device: device.clone(),
            perm: (usize::MAX, Vec::new()),
        })
    }

    /// Continues from a checkpoint folder written by [`DdpmTrainer::save_checkpoint`].
    pub fn resume(dir: &Path, data: Dataset, device: &Device) -> Result<Self, DdpmError> {
        let ck = |detail: String| DdpmError::Checkpoint { path: dir.to_path_buf(), detail };
        let state: TrainingState =
            serde_json::from_slice(&std::fs::read(dir.join(STATE_FILE)).map_err(|e| ck(format!("{STATE_FILE}: {e}")))?)
                .map_err(|e| ck(format!("{STATE_FILE}: {e}")))?;
        if state.classes != data.classes {
            return Err(ck(format!("trained on classes {:?}, the data has {:?}", state.classes, data.classes)));
        }
        let text = std::fs::read_to_string(dir.join(CONFIG_FILE)).map_err(|e| ck(format!("{CONFIG_FILE}: {e}")))?;
        let (uc, _) = UNet2DConfig::parse(&text).map_err(|e| ck(format!("{CONFIG_FILE}: {e}")))?;
        let mut t = Self::new(&uc, data, state.config.clone(), device)?;
        let raw =
            candle_core::safetensors::load(dir.join(STATE_TENSORS_FILE), device).map_err(|e| ck(format!("{STATE_TENSORS_FILE}: {e}")))?;
        for (name, var) in &t.vars {
            let v =
                raw.get(&format!("model.{name}")).ok_or_else(|| ck(format!("{STATE_TENSORS_FILE}: tensor \"model.{name}\" is missing")))?;
            if v.dims() != var.dims() {
                return Err(ck(format!(
                    "{STATE_TENSORS_FILE}: tensor \"model.{name}\" has shape {:?}, expected {:?}",
                    v.dims(),
                    var.dims()
                )));
            }
            var.set(v)?;
        }
        t.opt.load_state(state.step, |k| raw.get(&format!("optim.{k}")).cloned()).map_err(ck)?;
        let ema = candle_core::safetensors::load(dir.join(WEIGHTS_FILE), device).map_err(|e| ck(format!("{WEIGHTS_FILE}: {e}")))?;
        t.ema.set(|k| ema.get(k).cloned()).map_err(ck)?;
        t.step = state.step;
        t.losses = state.losses;
        Ok(t)
    }

    pub fn step_count(&self) -> usize {
        self.step
    }

    pub fn losses(&self) -> &[(usize, f64)] {
        &self.losses
    }

    pub fn unet_config(&self) -> &UNet2DConfig {
        &self.unet_config
    }

    /// The raw (not averaged) weights.
    pub fn vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    /// Indices of the batch of step `k`.
    fn batch_indices(&mut self, k: usize) -> Vec<usize> {
        let n = self.data.len();
        let b = self.cfg.batch_size;
        (k * b..(k + 1) * b)
            .map(|p| {
                let epoch = p / n;
                if self.perm.0 != epoch {
                    let mut order: Vec<usize> = (0..n).collect();
                    Rng::keyed(&[self.cfg.seed, 1, epoch as u64]).shuffle(&mut order);
                    self.perm = (epoch, order);
                }
                self.perm.1[p % n]
            })
            .collect()
    }

    /// The loss of step `k`'s batch, noise and timesteps under the current weights (a graph
    /// ready for backward).
    fn loss_at(&mut self, k: usize) -> Result<Tensor, DdpmError> {
        let idx = self.batch_indices(k);
        let (h, w) = (self.data.height, self.data.width);
        let b = idx.len();
        let plane = h * w;
        let (pixels, labels) = self.data.batch(&idx, None);
        let mut flips = Rng::keyed(&[self.cfg.seed, 2, k as u64]);
        let mut times = Rng::keyed(&[self.cfg.seed, 3, k as u64]);
        let noise = standard_normal(self.cfg.seed, (1u64 << 32) + k as u64, b * 3 * plane);
        let mut noisy = Vec::with_capacity(b * 3 * plane);
        let mut ts = Vec::with_capacity(b);
        for i in 0..b {
            let flip = flips.chance(0.5);
            let t = times.below(self.cfg.num_train_timesteps);
            ts.push(t as u32);
            let img = &pixels[i * 3 * plane..(i + 1) * 3 * plane];
            let x0: Vec<f32> = (0..3 * plane)
                .map(|j| {
                    let (c, y, x) = (j / plane, (j % plane) / w, j % w);
                    let sx = if flip { w - 1 - x } else { x };
                    img[c * plane + y * w + sx] as f32 / 127.5 - 1.0
                })
                .collect();
            noisy.extend(add_noise(&self.alphas_cumprod, &x0, &noise[i * 3 * plane..(i + 1) * 3 * plane], t));
        }
        let dev = &self.device;
        let x = Tensor::from_vec(noisy, (b, 3, h, w), dev)?;
        let t = Tensor::from_vec(ts, b, dev)?;
        let y = Tensor::from_vec(labels, b, dev)?;
        let target = Tensor::from_vec(noise, (b, 3, h, w), dev)?;
        let pred = self.unet.forward_t(&x, &t, Some(&y), true)?;
        Ok((pred - target)?.sqr()?.mean_all()?)
    }

    /// One optimisation step; returns (loss, gradient norm before clipping).
    pub fn train_step(&mut self) -> Result<(f64, f64), DdpmError> {
        let k = self.step;
        let loss = self.loss_at(k)?;
        let mut grads = loss.backward()?;
        let norm = match self.cfg.grad_clip {
            Some(max) => clip_grad_norm(&mut grads, &self.vars, max)?,
            None => clip_grad_norm(&mut grads, &self.vars, f64::INFINITY)?,
        };
        self.opt.step(&grads)?;
        self.step += 1;
        self.ema.update(&self.vars, self.opt.step_count())?;
        let l = loss.to_scalar::<f32>()? as f64;
        self.losses.push((self.step, l));
        Ok((l, norm))
    }

    /// The loss the next step would see, without training (for tests and monitoring).
    pub fn peek_loss(&mut self, k: usize) -> Result<f64, DdpmError> {
        Ok(self.loss_at(k)?.to_scalar::<f32>()? as f64)
    }

    /// Writes the diffusers folder (EMA weights) to `dir` (created if needed).
    pub fn save_model(&self, dir: &Path) -> Result<(), DdpmError> {
        let ema: HashMap<String, Tensor> = self.ema.tensors().iter().cloned().collect();
        write_model_folder(dir, &self.unet_config, &ema, self.cfg.num_train_timesteps, &self.data.classes)
            .map_err(|ModelFolderError { path, cause }| DdpmError::Write { path, cause })
    }

    /// Writes a resumable checkpoint to `dir`: written into a temporary folder beside it first
    /// (created exclusively, in the atomic writer's pattern, removed on failure) and renamed, so
    /// an interrupted save never leaves a half checkpoint under the final name.
    pub fn save_checkpoint(&self, dir: &Path) -> Result<(), DdpmError> {
        let werr = |path: &Path, cause: String| DdpmError::Write { path: path.to_path_buf(), cause };
        let parent = crate::files::atomic::parent_of(dir);
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let scratch = tempfile::Builder::new()
            .prefix(&format!(".{name}{}", crate::files::atomic::TEMP_MARK))
            .rand_bytes(12)
            .tempdir_in(parent)
            .map_err(|e| werr(dir, e.to_string()))?;
        let tmp = scratch.path();
        self.save_model(tmp)?;
        let mut state: HashMap<String, Tensor> = self.vars.iter().map(|(n, v)| (format!("model.{n}"), v.as_tensor().clone())).collect();
        for (k, t) in self.opt.state_tensors() {
            state.insert(format!("optim.{k}"), t);
        }
        let path = tmp.join(STATE_TENSORS_FILE);
        super::write_safetensors(&path, &state).map_err(|e| werr(&path, e))?;
        let ts =
            TrainingState { step: self.step, config: self.cfg.clone(), classes: self.data.classes.clone(), losses: self.losses.clone() };
        let path = tmp.join(STATE_FILE);
        let json = serde_json::to_vec_pretty(&ts).map_err(|e| werr(&path, e.to_string()))?;
        crate::files::atomic::write(&path, &json, "json.write").map_err(|e| werr(&path, e.to_string()))?;
        // The same step saved again replaces its folder.
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| werr(dir, e.to_string()))?;
        }
        std::fs::rename(tmp, dir).map_err(|e| werr(dir, e.to_string()))?;
        // Renamed away: nothing left for the guard to remove.
        let _ = scratch.keep();
        crate::files::atomic::sync_dir(parent).map_err(|e| werr(parent, e.to_string()))?;
        Ok(())
    }
}

/// PyTorch's default initialisation, which diffusers' `UNet2DModel` keeps: convolutions and
/// linear layers U(±1/sqrt(fan_in)) for weights and biases (kaiming-uniform with a = sqrt(5)),
/// GroupNorm weight 1 and bias 0, the class embedding table N(0, 1).
fn init_torch_default(varmap: &VarMap, seed: u64) -> candle_core::Result<()> {
    let shapes: HashMap<String, Vec<usize>> =
        varmap.data().lock().unwrap_or_else(|p| p.into_inner()).iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
    init_varmap(varmap, seed, |name, shape| {
        if name.starts_with("class_embedding.") && shape.len() == 2 && !name.contains("linear") {
            return Init::Normal(1.0);
        }
        let weight_shape = match name.strip_suffix(".bias") {
            Some(prefix) => shapes.get(&format!("{prefix}.weight")).cloned().unwrap_or_default(),
            None => shape.to_vec(),
        };
        if weight_shape.len() >= 2 {
            Init::Uniform(1.0 / (fan_in(&weight_shape) as f64).sqrt())
        } else if name.ends_with(".weight") {
            Init::Const(1.0)
        } else {
            Init::Const(0.0)
        }
    })
}
