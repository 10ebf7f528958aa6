//! Training the protocol's two models: the ResNet oracle ([`oracle`]) and the class-conditional
//! DDPM ([`ddpm`]), with the pieces they share: in-memory datasets and augmentation
//! ([`dataset`]), seeded initialisation ([`init`]), AdamW, gradient clipping and EMA
//! ([`optim`]), and the oracle ResNet over trainable variables ([`resnet`]). Pure training loops; the CLI (src/cli/train.rs) adds progress and metrics.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

pub mod dataset;
pub mod ddpm;
pub mod init;
pub mod optim;
pub mod oracle;
pub mod resnet;

/// Writes named tensors as a `.safetensors` file: encoded in memory, then the atomic writer
/// (fault point `weights.write`), so a failed write is an error and never a torn file.
pub fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), String> {
    let bytes = safetensors::tensor::serialize(tensors, None).map_err(|e| e.to_string())?;
    crate::files::atomic::write(path, &bytes, "weights.write").map_err(|e| e.to_string())
}
