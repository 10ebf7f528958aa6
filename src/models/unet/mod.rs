//! The class-conditional DDPM denoiser: diffusers' `UNet2DModel`, in candle.
//!
//! Reference: diffusers 0.42 `models/unets/unet_2d.py` (`UNet2DModel`) and the modules it builds,
//! each followed in its own file here:
//!
//! - [`config`]: `UNet2DModel.__init__`'s arguments, read from a diffusers `config.json`;
//! - `embeddings`: `Timesteps` (sinusoidal), `TimestepEmbedding`, the class embedding;
//! - `resnet_block`: `ResnetBlock2D`; `attention`: `Attention` with `AttnProcessor2_0`;
//! - `resample`: `Downsample2D` / `Upsample2D`;
//! - `blocks`: `DownBlock2D`, `AttnDownBlock2D`, `UNetMidBlock2D`, `UpBlock2D`, `AttnUpBlock2D`;
//! - `checkpoint`: reading the weights with errors that name the file and key.
//!
//! Tensor keys are exactly diffusers' state_dict names (`conv_in.weight`,
//! `time_embedding.linear_1.weight`, `class_embedding.weight`,
//! `down_blocks.1.attentions.0.to_q.weight`, `mid_block.resnets.1.norm2.bias`,
//! `up_blocks.0.upsamplers.0.conv.weight`, `conv_norm_out.weight`, ...): the model is built from
//! a candle-nn `VarBuilder` whose `pp(...)` prefixes mirror that key tree, so a model built from
//! a `VarMap` for training saves (`varmap.save`) a safetensors file diffusers loads, and a
//! diffusers folder loads with [`UNet2DModel::load`]. Parity with diffusers is tested in
//! tests/unet_parity.rs (fixtures from scripts/make_unet_fixtures.py).
//!
//! Supported: `DownBlock2D`/`AttnDownBlock2D`/`UpBlock2D`/`AttnUpBlock2D` (also under their old
//! `UNetRes` prefix), `UNetMidBlock2D` with or without attention, or no mid block; positional
//! (sinusoidal) time embedding; `default` and `scale_shift` resnet time conditioning; conv or
//! resnet resampling; class embeddings by table (`num_class_embeds`), `timestep` or `identity`;
//! SiLU. Anything else in a config is rejected by name (see [`UNet2DConfig::validate`]).
//!
//! Convolutions are [`crate::models::conv_grad::Conv2d`]: candle-nn's, with the stride-1 case
//! routed through a custom op whose CPU backward is a plain convolution (same forward numbers).

pub mod config;

mod attention;
mod blocks;
mod checkpoint;
mod embeddings;
mod resample;
mod resnet_block;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, VarBuilder};

use crate::models::conv_grad::{conv2d, Conv2d};
use crate::models::group_norm::{group_norm, GroupNorm};

pub use config::{ConfigError, SampleSize, UNet2DConfig};

use blocks::{AttnParams, BlockSpec, DownBlock, MidBlock, UpBlock};
use checkpoint::{Checkpoint, LookupFailure};
use config::ClassEmbedKind;
use embeddings::{ClassEmbedding, SinusoidalEmbedding, TimestepEmbedding};
use resnet_block::ResnetParams;

/// The config file of a diffusers model folder.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file of a diffusers model folder (diffusers' `SAFETENSORS_WEIGHTS_NAME`).
pub const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// The pickle weights file older diffusers folders have instead (`WEIGHTS_NAME`).
pub const WEIGHTS_FILE_BIN: &str = "diffusion_pytorch_model.bin";

/// Errors from loading a UNet and from running it.
#[derive(Debug, thiserror::Error)]
pub enum UnetError {
    #[error("unet config \"{}\": cannot read: {cause}", .path.display())]
    ReadConfig { path: PathBuf, cause: String },
    #[error("unet config \"{}\": {source}", .path.display())]
    Config { path: PathBuf, source: ConfigError },
    /// A config given in memory (no file) that does not validate.
    #[error("unet config: {0}")]
    InvalidConfig(#[from] ConfigError),
    #[error("unet weights \"{}\": cannot read: {cause}", .path.display())]
    ReadWeights { path: PathBuf, cause: String },
    #[error("unet weights \"{}\": tensor \"{key}\" is missing", .path.display())]
    MissingTensor { path: PathBuf, key: String },
    #[error("unet weights \"{}\": tensor \"{key}\" has shape {found:?}, expected {expected:?}", .path.display())]
    TensorShape { path: PathBuf, key: String, found: Vec<usize>, expected: Vec<usize> },
    #[error(
        "unet weights \"{}\": unexpected tensor \"{key}\" ({count} unused in all): the checkpoint does not match its config",
        .path.display()
    )]
    UnexpectedTensor { path: PathBuf, key: String, count: usize },
    #[error("unet weights \"{}\": {cause}", .path.display())]
    Weights { path: PathBuf, cause: String },
    /// Bad `forward` arguments (shapes, dtypes, missing or out-of-range class labels).
    #[error("unet input: {0}")]
    Input(String),
    #[error("unet: {0}")]
    Candle(#[from] candle_core::Error),
}

/// diffusers' `UNet2DModel` (see the module docs).
#[derive(Debug, Clone)]
pub struct UNet2DModel {
    config: UNet2DConfig,
    dtype: DType,
    device: Device,
    conv_in: Conv2d,
    time_proj: SinusoidalEmbedding,
    time_embedding: TimestepEmbedding,
    class_embedding: Option<ClassEmbedding>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl UNet2DModel {
    /// Builds the network described by `config` with the tensors of `vb` (checkpoint tensors,
    /// or fresh ones from a `VarMap` for training), in `vb`'s dtype and on its device.
    pub fn new(config: &UNet2DConfig, vb: VarBuilder) -> Result<Self, UnetError> {
        let r = config.resolve()?;
        let c = &config.block_out_channels;
        let blocks = c.len();
        let temb = r.time_embed_dim;
        let conv3 = Conv2dConfig { padding: 1, ..Default::default() };
        let resnet = ResnetParams {
            temb_channels: temb,
            groups: config.norm_num_groups,
            eps: config.norm_eps,
            time_shift: r.time_shift,
            output_scale_factor: 1.0,
            dropout: config.dropout,
        };
        let attn = AttnParams { head_dim: config.attention_head_dim, groups: config.norm_num_groups, eps: config.norm_eps };

        let conv_in = conv2d(config.in_channels, c[0], 3, conv3, vb.pp("conv_in"))?;
        let time_proj = SinusoidalEmbedding::new(c[0], config.flip_sin_to_cos, config.freq_shift, vb.device())?;
        let time_embedding = TimestepEmbedding::new(vb.pp("time_embedding"), c[0], temb)?;
        let class_embedding = match r.class_embed {
            ClassEmbedKind::None => None,
            ClassEmbedKind::Table(n) => {
                Some(ClassEmbedding::Table { table: candle_nn::embedding(n, temb, vb.pp("class_embedding"))?, num_classes: n })
            }
            ClassEmbedKind::Timestep => Some(ClassEmbedding::Timestep(TimestepEmbedding::new(vb.pp("class_embedding"), c[0], temb)?)),
            ClassEmbedKind::Identity => Some(ClassEmbedding::Identity),
        };

        // Down path: block i maps c[i-1] (c[0] for the first) to c[i].
        let mut down_blocks = Vec::with_capacity(blocks);
        for (i, &kind) in r.down.iter().enumerate() {
            let spec = BlockSpec {
                kind,
                num_layers: config.layers_per_block,
                out_channels: c[i],
                resample: i + 1 < blocks,
                attn_resample: r.downsample,
            };
            let c_in = if i == 0 { c[0] } else { c[i - 1] };
            down_blocks.push(DownBlock::new(vb.pp("down_blocks").pp(i), &spec, c_in, &resnet, &attn, config.downsample_padding)?);
        }

        let mid_block = if r.mid {
            let mid_resnet = ResnetParams { output_scale_factor: config.mid_block_scale_factor, ..resnet };
            let attn_groups = config.add_attention.then_some(r.mid_attn_groups);
            Some(MidBlock::new(vb.pp("mid_block"), c[blocks - 1], &mid_resnet, config.attention_head_dim, attn_groups)?)
        } else {
            None
        };

        // Up path, widest first: block i outputs rev[i] from the previous block's rev[i-1] and
        // skips of widths rev[i] and (last resnet) rev[i+1].
        let rev: Vec<usize> = c.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(blocks);
        for (i, &kind) in r.up.iter().enumerate() {
            let spec = BlockSpec {
                kind,
                num_layers: config.layers_per_block + 1,
                out_channels: rev[i],
                resample: i + 1 < blocks,
                attn_resample: r.upsample,
            };
            let prev = if i == 0 { rev[0] } else { rev[i - 1] };
            let skip_in = rev[(i + 1).min(blocks - 1)];
            up_blocks.push(UpBlock::new(vb.pp("up_blocks").pp(i), &spec, prev, skip_in, &resnet, &attn)?);
        }

        let conv_norm_out = group_norm(config.norm_num_groups, c[0], config.norm_eps, vb.pp("conv_norm_out"))?;
        let conv_out = conv2d(c[0], config.out_channels, 3, conv3, vb.pp("conv_out"))?;
        Ok(Self {
            config: config.clone(),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            conv_in,
            time_proj,
            time_embedding,
            class_embedding,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
        })
    }

    /// Loads a diffusers model folder: `dir/config.json` and `dir/diffusion_pytorch_model.safetensors`
    /// (or, when that is absent, the zip-format pickle `diffusion_pytorch_model.bin`), in f32 on
    /// `device`. Every error names the file; weight errors name the tensor key; a checkpoint
    /// with tensors the config does not use is rejected.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, UnetError> {
        Self::load_as(dir, device, DType::F32)
    }

    /// [`Self::load`] with the weights (and so the activations) in `dtype`, as diffusers'
    /// `UNet2DModel.from_pretrained(dir).to(dtype)`: the file's tensors are converted once.
    pub fn load_as(dir: &Path, device: &Device, dtype: DType) -> Result<Self, UnetError> {
        let config_path = dir.join(CONFIG_FILE);
        let text =
            std::fs::read_to_string(&config_path).map_err(|e| UnetError::ReadConfig { path: config_path.clone(), cause: e.to_string() })?;
        let config_err = |source: ConfigError| UnetError::Config { path: config_path.clone(), source };
        let (config, unknown) = UNet2DConfig::parse(&text).map_err(config_err)?;
        for key in unknown {
            tracing::warn!("unet config \"{}\": unknown field \"{key}\" ignored (diffusers ignores it too)", config_path.display());
        }
        config.validate().map_err(config_err)?;

        let safetensors = dir.join(WEIGHTS_FILE);
        let bin = dir.join(WEIGHTS_FILE_BIN);
        let path = if !safetensors.exists() && bin.exists() { bin } else { safetensors };
        let ckpt = Checkpoint::open(&path, dtype, device).map_err(|cause| UnetError::ReadWeights { path: path.clone(), cause })?;
        let model = match Self::new(&config, ckpt.var_builder()) {
            Ok(model) => model,
            Err(e) => {
                return Err(match ckpt.failure() {
                    Some(LookupFailure::Missing(key)) => UnetError::MissingTensor { path, key },
                    Some(LookupFailure::Shape { key, found, expected }) => UnetError::TensorShape { path, key, found, expected },
                    None => UnetError::Weights { path, cause: e.to_string() },
                })
            }
        };
        let unused = ckpt.unused_keys();
        if let Some(key) = unused.first() {
            return Err(UnetError::UnexpectedTensor { path, key: key.clone(), count: unused.len() });
        }
        Ok(model)
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &UNet2DConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the weights (and of the output).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Whether `forward` needs class labels.
    pub fn is_class_conditional(&self) -> bool {
        self.class_embedding.is_some()
    }

    /// The model output (the predicted noise for DDPM training), `[N, out_channels, H, W]`, for
    /// a noisy `sample` `[N, in_channels, H, W]` at per-sample `timesteps` (`[N]`, or one
    /// value as `[]`/`[1]` for the whole batch; integer or float), with `class_labels` as the
    /// config's class embedding needs them: `[N]` integers in `0..num_class_embeds` (table),
    /// `[N]` numbers (`timestep`), `[N, time_embed_dim]` floats (`identity`), or `None` for an
    /// unconditional model. H and W must be multiples of [`UNet2DConfig::downsampling_factor`].
    /// Inference mode (no dropout).
    pub fn forward(&self, sample: &Tensor, timesteps: &Tensor, class_labels: Option<&Tensor>) -> Result<Tensor, UnetError> {
        self.forward_t(sample, timesteps, class_labels, false)
    }

    /// [`UNet2DModel::forward`], with dropout (`config.dropout`) applied when `train` is true.
    pub fn forward_t(&self, sample: &Tensor, timesteps: &Tensor, class_labels: Option<&Tensor>, train: bool) -> Result<Tensor, UnetError> {
        let n = self.check_sample(sample)?;
        let mut sample = sample.to_dtype(self.dtype)?;
        // 0. Centre the input if asked: [0, 1] to [-1, 1].
        if self.config.center_input_sample {
            sample = sample.affine(2.0, -1.0)?;
        }

        // 1. Time (and class) embedding; every resnet applies SiLU to it before its projection,
        //    so that is done once here.
        let timesteps = self.batch_timesteps(timesteps, n)?;
        let t_emb = self.time_proj.forward(&timesteps)?.to_dtype(self.dtype)?;
        let mut emb = self.time_embedding.forward(&t_emb)?;
        if let Some(class_emb) = self.class_embedding(class_labels, n)? {
            emb = (emb + class_emb)?;
        }
        let temb_act = emb.silu()?;

        // 2. Pre-process.
        let mut x = self.conv_in.forward(&sample)?;

        // 3. Down path, collecting the skip connections (conv_in's output first).
        let mut skips = vec![x.clone()];
        for block in &self.down_blocks {
            x = block.forward(&x, &temb_act, train, &mut skips)?;
        }

        // 4. Mid block.
        if let Some(mid) = &self.mid_block {
            x = mid.forward(&x, &temb_act, train)?;
        }

        // 5. Up path, consuming the skips in reverse order.
        for block in &self.up_blocks {
            x = block.forward(&x, &mut skips, &temb_act, train)?;
        }

        // 6. Post-process.
        let x = self.conv_norm_out.forward_act(&x, true)?;
        Ok(self.conv_out.forward(&x)?)
    }

    /// Checks the sample's shape; returns the batch size.
    fn check_sample(&self, sample: &Tensor) -> Result<usize, UnetError> {
        let dims = sample.dims();
        let (n, c, h, w) = match *dims {
            [n, c, h, w] => (n, c, h, w),
            _ => return Err(UnetError::Input(format!("sample has shape {dims:?}; expected [N, {}, H, W]", self.config.in_channels))),
        };
        if c != self.config.in_channels {
            return Err(UnetError::Input(format!("sample has {c} channels; the model takes in_channels = {}", self.config.in_channels)));
        }
        let f = self.config.downsampling_factor();
        if h == 0 || w == 0 || h % f != 0 || w % f != 0 {
            return Err(UnetError::Input(format!(
                "sample is {h}x{w}; height and width must be positive multiples of {f}, the model's downsampling factor"
            )));
        }
        Ok(n)
    }

    /// `[N]` timesteps from `[N]`, `[1]` or `[]` (diffusers broadcasts a single value).
    fn batch_timesteps(&self, timesteps: &Tensor, n: usize) -> Result<Tensor, UnetError> {
        match *timesteps.dims() {
            [m] if m == n => Ok(timesteps.clone()),
            [1] => Ok(timesteps.broadcast_as(n)?),
            [] => Ok(timesteps.reshape(1)?.broadcast_as(n)?),
            _ => Err(UnetError::Input(format!("timesteps have shape {:?}; expected [{n}] (one per sample), [1] or []", timesteps.dims()))),
        }
    }

    /// The class embedding to add to the time embedding, `[N, time_embed_dim]`.
    fn class_embedding(&self, labels: Option<&Tensor>, n: usize) -> Result<Option<Tensor>, UnetError> {
        let (embedding, labels) = match (&self.class_embedding, labels) {
            (None, None) => return Ok(None),
            (None, Some(_)) => return Err(UnetError::Input("class labels were given to a model without class conditioning".into())),
            (Some(_), None) => {
                let how = match (&self.config.class_embed_type, self.config.num_class_embeds) {
                    (Some(t), _) => format!("class_embed_type = \"{t}\""),
                    (None, Some(k)) => format!("num_class_embeds = {k}"),
                    (None, None) => "class embedding".to_string(),
                };
                return Err(UnetError::Input(format!("class labels are required: the model is class-conditional ({how})")));
            }
            (Some(e), Some(l)) => (e, l),
        };
        let one_per_sample = |what: &str| -> Result<(), UnetError> {
            if labels.dims() == [n] {
                Ok(())
            } else {
                Err(UnetError::Input(format!("class labels have shape {:?}; expected [{n}] {what}", labels.dims())))
            }
        };
        let emb = match embedding {
            ClassEmbedding::Table { table, num_classes } => {
                one_per_sample("integer labels")?;
                if !labels.dtype().is_int() {
                    return Err(UnetError::Input(format!(
                        "class labels have dtype {:?}; the class embedding table takes integer labels",
                        labels.dtype()
                    )));
                }
                // Checked on the host (N values): an out-of-range index must be an error, not a
                // read past the table.
                let values: Vec<i64> = labels.to_dtype(DType::I64)?.to_vec1()?;
                let mut ids = Vec::with_capacity(n);
                for (i, &v) in values.iter().enumerate() {
                    match u32::try_from(v) {
                        Ok(id) if (id as usize) < *num_classes => ids.push(id),
                        _ => {
                            return Err(UnetError::Input(format!(
                                "class label {v} (sample {i}) is out of range for num_class_embeds = {num_classes}"
                            )))
                        }
                    }
                }
                table.forward(&Tensor::from_vec(ids, n, &self.device)?)?
            }
            ClassEmbedding::Timestep(embed) => {
                one_per_sample("labels")?;
                embed.forward(&self.time_proj.forward(labels)?.to_dtype(self.dtype)?)?
            }
            ClassEmbedding::Identity => {
                let d = self.config.time_embed_dim();
                if labels.dims() != [n, d] {
                    return Err(UnetError::Input(format!(
                        "class labels have shape {:?}; class_embed_type = \"identity\" takes embeddings [{n}, {d}]",
                        labels.dims()
                    )));
                }
                labels.to_dtype(self.dtype)?
            }
        };
        Ok(Some(emb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_nn::VarMap;

    fn tiny() -> UNet2DConfig {
        UNet2DConfig {
            block_out_channels: vec![8, 16],
            down_block_types: vec!["DownBlock2D".into(), "AttnDownBlock2D".into()],
            up_block_types: vec!["AttnUpBlock2D".into(), "UpBlock2D".into()],
            layers_per_block: 1,
            norm_num_groups: 4,
            attention_head_dim: Some(4),
            num_class_embeds: Some(3),
            ..Default::default()
        }
    }

    #[test]
    fn varmap_names_are_diffusers_keys_and_gradients_flow() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let model = UNet2DModel::new(&tiny(), VarBuilder::from_varmap(&varmap, DType::F32, &dev)).unwrap();
        let names: std::collections::BTreeSet<String> = varmap.data().lock().unwrap().keys().cloned().collect();
        for key in [
            "conv_in.weight",
            "time_embedding.linear_2.bias",
            "class_embedding.weight",
            "down_blocks.0.downsamplers.0.conv.weight",
            "down_blocks.1.attentions.0.to_out.0.weight",
            "mid_block.attentions.0.group_norm.weight",
            "mid_block.resnets.1.time_emb_proj.weight",
            "up_blocks.0.resnets.1.conv_shortcut.weight",
            "up_blocks.0.upsamplers.0.conv.bias",
            "conv_norm_out.bias",
            "conv_out.weight",
        ] {
            assert!(names.contains(key), "{key} not in {names:?}");
        }
        let x = Tensor::randn(0f32, 1., (2, 3, 8, 8), &dev).unwrap();
        let t = Tensor::new(&[3u32, 700], &dev).unwrap();
        let y = Tensor::new(&[0u32, 2], &dev).unwrap();
        let out = model.forward_t(&x, &t, Some(&y), true).unwrap();
        assert_eq!(out.dims(), &[2, 3, 8, 8]);
        let grads = out.sqr().unwrap().mean_all().unwrap().backward().unwrap();
        for var in varmap.all_vars() {
            assert!(grads.get(&var).is_some(), "no gradient for a variable of shape {:?}", var.dims());
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        let dev = Device::Cpu;
        let model = UNet2DModel::new(&tiny(), VarBuilder::zeros(DType::F32, &dev)).unwrap();
        let x = Tensor::zeros((2, 3, 8, 8), DType::F32, &dev).unwrap();
        let t = Tensor::new(&[1u32, 2], &dev).unwrap();
        let msg = |r: Result<Tensor, UnetError>| r.unwrap_err().to_string();
        assert_eq!(
            msg(model.forward(&x, &t, None)),
            "unet input: class labels are required: the model is class-conditional (num_class_embeds = 3)"
        );
        let y = Tensor::new(&[0i64, 3], &dev).unwrap();
        assert_eq!(msg(model.forward(&x, &t, Some(&y))), "unet input: class label 3 (sample 1) is out of range for num_class_embeds = 3");
        let y = Tensor::new(&[0f32, 1.], &dev).unwrap();
        assert_eq!(
            msg(model.forward(&x, &t, Some(&y))),
            "unet input: class labels have dtype F32; the class embedding table takes integer labels"
        );
        let y = Tensor::new(&[0u32, 1], &dev).unwrap();
        let x7 = Tensor::zeros((2, 3, 7, 8), DType::F32, &dev).unwrap();
        assert_eq!(
            msg(model.forward(&x7, &t, Some(&y))),
            "unet input: sample is 7x8; height and width must be positive multiples of 2, the model's downsampling factor"
        );
        let x1 = Tensor::zeros((2, 1, 8, 8), DType::F32, &dev).unwrap();
        assert_eq!(msg(model.forward(&x1, &t, Some(&y))), "unet input: sample has 1 channels; the model takes in_channels = 3");
        let t3 = Tensor::new(&[1u32, 2, 3], &dev).unwrap();
        assert_eq!(msg(model.forward(&x, &t3, Some(&y))), "unet input: timesteps have shape [3]; expected [2] (one per sample), [1] or []");
        // One timestep for the whole batch is broadcast.
        let one = Tensor::new(5u32, &dev).unwrap();
        assert_eq!(model.forward(&x, &one, Some(&y)).unwrap().dims(), &[2, 3, 8, 8]);
        let uncond = UNet2DModel::new(&UNet2DConfig { num_class_embeds: None, ..tiny() }, VarBuilder::zeros(DType::F32, &dev)).unwrap();
        assert_eq!(msg(uncond.forward(&x, &t, Some(&y))), "unet input: class labels were given to a model without class conditioning");
    }
}
