//! Candle models, each loading the weight files users already have by explicit path.
//!
//! - [`weights`]: `.safetensors` / torch `.pth` state_dicts into a `VarBuilder`-like map
//!   (`legacy_pth`: the pre-1.6, non-zip `.pth` format).
//! - [`resnet`]: torchvision ResNet-18/34 (cifar or imagenet stem).
//! - [`preprocess`]: uint8 pixels to normalised network input.
//! - [`hub_cache`]: where standard weight files are looked for when no path is given.
//! - [`inception`]: pytorch-fid's InceptionV3 (FID variant): pool3 features and IS logits.
//! - [`oracle`]: the RCA oracle, ResNet plus its normalisation.
//! - [`unet`]: diffusers' `UNet2DModel` (the class-conditional DDPM denoiser), from a diffusers
//!   model folder or a `VarBuilder`.
pub mod hub_cache;
pub mod inception;
mod legacy_pth;
pub mod lpips;
pub mod oracle;
pub mod preprocess;
pub mod resnet;
pub mod unet;
pub mod weights;

pub use oracle::{Oracle, OracleConfig};
pub use preprocess::Normalization;
pub use resnet::{ResNet, ResNetArch, ResNetConfig, Stem};
pub use unet::{UNet2DConfig, UNet2DModel, UnetError};
pub use weights::{WeightMap, WeightsError};
