//! Candle models, each loading the weight files users already have by explicit path.
//!
//! - [`weights`]: `.safetensors` / torch `.pth` state_dicts into a `VarBuilder`-like map
//!   (`torch_pickle`: the bounded unpickler both torch formats share; `zip_pth`: the zip
//!   format; `legacy_pth`: the pre-1.6, non-zip `.pth` format).
//! - [`zip_member`]: bounded reads of zip members (zip `.pth`, `.npz`).
//! - [`resnet`]: torchvision ResNet-18/34 (cifar or imagenet stem), from a checkpoint for
//!   inference or from a `VarMap` for training (BatchNorm in training mode).
//! - [`fast_attention`]: inference attention on the CPU, a few query rows' scores at a time, on
//!   channel-major queries, keys and values.
//! - [`fast_conv`]: inference convolution on the CPU with its BatchNorm/bias/ReLU fused.
//! - [`fast_pool`]: inference max / average pooling with padding on the CPU.
//! - [`group_norm`]: GroupNorm (+ SiLU), fused into one pass for inference on the CPU.
//! - [`conv_grad`]: stride-1 convolution with a fast CPU backward (for training).
//! - [`preprocess`]: uint8 pixels to normalised network input.
//! - [`hub_cache`]: where standard weight files are looked for when no path is given.
//! - [`inception`]: pytorch-fid's InceptionV3 (FID variant): pool3 features and IS logits.
//! - [`lpips`]: LPIPS v0.1 (alexnet / vgg16 backbones with the package's lin layers).
//! - [`mtcnn`]: facenet-pytorch's MTCNN face detector (P-Net, R-Net, O-Net).
//! - [`oracle`]: the RCA oracle, ResNet plus its normalisation.
//! - [`device`]: device strings (`cpu`, `cuda`, `cuda:N`) and opening a device on a stream of
//!   its own; [`precision`]: a model's dtype (`f32`, `bf16`, `f16`) and where it can run.
//! - [`unet`]: diffusers' `UNet2DModel` (the class-conditional DDPM denoiser), from a diffusers
//!   model folder or a `VarBuilder`.
//! - [`schedulers`]: diffusers' DDPM and DDIM step maths on the host.
//! - [`sampling`]: the reverse-diffusion loop of one work unit, and uint8 quantisation.
//! - [`noise`]: a sampling unit's Gaussian noise, drawn on the host from its seed.
//! - [`random_weights`]: made-up weights for any model, for `rcaflow bench`.
mod batch_norm;
pub mod conv_grad;
mod cpu_input;
pub mod device;
pub mod fast_attention;
pub mod fast_conv;
mod fast_exp;
pub mod fast_pool;
pub mod group_norm;
pub mod hub_cache;
pub mod inception;
mod legacy_pth;
pub mod lpips;
pub mod mtcnn;
pub mod noise;
pub mod oracle;
pub mod precision;
pub mod preprocess;
pub mod random_weights;
pub mod resnet;
pub mod sampling;
pub mod schedulers;
pub mod threads;
mod torch_pickle;
pub mod unet;
mod vector_isa;
pub mod weights;
pub mod zip_member;
mod zip_pth;

pub use oracle::{Oracle, OracleConfig};
pub use preprocess::Normalization;
pub use resnet::{ResNet, ResNetArch, ResNetConfig, Stem};
pub use unet::{UNet2DConfig, UNet2DModel, UnetError};
pub use weights::{WeightMap, WeightsError};
