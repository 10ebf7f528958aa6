//! Reading a diffusers model folder's weights into a `VarBuilder` that says exactly what went
//! wrong: which key is missing or has the wrong shape, and which keys the model never used.
//!
//! candle-nn's `VarBuilder::from_tensors` only reports `cannot find tensor ...` through a
//! generic candle error; this backend records the first failed lookup (and every successful
//! one) on the side, so `UNet2DModel::load` can name the file and the key in one line and reject
//! a checkpoint that holds tensors the configuration does not use (a config.json that disagrees
//! with its weights would otherwise load "successfully" and drop part of the network).
//!
//! Reference for the key renaming: diffusers 0.42 `ModelMixin._fix_state_dict_keys_on_load`,
//! which converts the pre-0.13 attention names (`query`, `key`, `value`, `proj_attn`) of
//! attention blocks to `to_q`, `to_k`, `to_v`, `to_out.0` when loading; old checkpoints such as
//! the original DDPM ports still use them.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// The first lookup that failed while the model was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LookupFailure {
    Missing(String),
    Shape { key: String, found: Vec<usize>, expected: Vec<usize> },
}

#[derive(Debug, Default)]
struct Lookups {
    used: BTreeSet<String>,
    failure: Option<LookupFailure>,
}

/// Locks `m`, ignoring poisoning (the data is a plain record, valid after any panic).
fn lock(m: &Mutex<Lookups>) -> MutexGuard<'_, Lookups> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A `SimpleBackend` over in-memory tensors that records lookups.
struct TrackingBackend {
    tensors: HashMap<String, Tensor>,
    lookups: Arc<Mutex<Lookups>>,
}

impl TrackingBackend {
    fn fail(&self, failure: LookupFailure) {
        lock(&self.lookups).failure.get_or_insert(failure);
    }
}

impl SimpleBackend for TrackingBackend {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some(t) = self.tensors.get(name) else {
            self.fail(LookupFailure::Missing(name.to_string()));
            return Err(candle_core::Error::CannotFindTensor { path: name.to_string() });
        };
        if t.shape() != &s {
            self.fail(LookupFailure::Shape { key: name.to_string(), found: t.dims().to_vec(), expected: s.dims().to_vec() });
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: t.shape().clone(),
            });
        }
        lock(&self.lookups).used.insert(name.to_string());
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let Some(t) = self.tensors.get(name) else {
            self.fail(LookupFailure::Missing(name.to_string()));
            return Err(candle_core::Error::CannotFindTensor { path: name.to_string() });
        };
        lock(&self.lookups).used.insert(name.to_string());
        t.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// The tensors of one checkpoint behind a recording `VarBuilder`.
pub(crate) struct Checkpoint {
    keys: Vec<String>,
    lookups: Arc<Mutex<Lookups>>,
    vb: VarBuilder<'static>,
}

impl Checkpoint {
    /// All tensors of `path` (`.safetensors`, or a zip-format torch pickle such as diffusers'
    /// `diffusion_pytorch_model.bin`), deprecated attention names converted, served as `dtype`
    /// on `device`. The error is the reader's message.
    pub fn open(path: &Path, dtype: DType, device: &Device) -> Result<Self, String> {
        crate::models::weights::check_size(path).map_err(|e| match e {
            crate::models::WeightsError::TooLarge { size_mib, limit_mib, .. } => {
                format!("the file is {size_mib} MiB, larger than the weights.max_mib limit of {limit_mib} MiB (a setting in the config file)")
            }
            other => other.to_string(),
        })?;
        let raw: Vec<(String, Tensor)> = match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => {
                // Read the file first: candle's error for a missing file does not say which.
                let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
                candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| e.to_string())?.into_iter().collect()
            }
            _ => {
                // Stored dtypes kept: the VarBuilder serves them as `dtype`. The caller names
                // the file, so only the cause is returned.
                crate::models::weights::read_torch(path, &Device::Cpu, false).map_err(|e| match e {
                    crate::models::WeightsError::Read { cause, .. } => cause,
                    crate::models::WeightsError::LegacyPth { cause, .. } => format!("legacy (pre-zip) torch checkpoint: {cause}"),
                    other => other.to_string(),
                })?
            }
        };
        let tensors = rename_deprecated_attention_keys(raw.into_iter().collect());
        let mut keys: Vec<String> = tensors.keys().cloned().collect();
        keys.sort();
        let lookups = Arc::new(Mutex::new(Lookups::default()));
        let backend = TrackingBackend { tensors, lookups: Arc::clone(&lookups) };
        let vb = VarBuilder::from_backend(Box::new(backend), dtype, device.clone());
        Ok(Self { keys, lookups, vb })
    }

    pub fn var_builder(&self) -> VarBuilder<'static> {
        self.vb.clone()
    }

    /// The first failed lookup, if any.
    pub fn failure(&self) -> Option<LookupFailure> {
        lock(&self.lookups).failure.clone()
    }

    /// Keys no lookup has returned, sorted.
    pub fn unused_keys(&self) -> Vec<String> {
        let lookups = lock(&self.lookups);
        self.keys.iter().filter(|k| !lookups.used.contains(*k)).cloned().collect()
    }
}

/// The pre-0.13 names of an attention block's projections and their current names.
const DEPRECATED_ATTENTION_NAMES: [(&str, &str); 4] = [("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0")];

/// `attentions.N.query.weight` becomes `attentions.N.to_q.weight`, and so on, for every
/// attention block of the UNet (the only modules diffusers flags `_from_deprecated_attn_block`
/// in a `UNet2DModel`, all under an `attentions.` path). Other keys are kept as they are.
pub(crate) fn rename_deprecated_attention_keys(tensors: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .into_iter()
        .map(|(key, t)| {
            let renamed = key.contains("attentions.").then(|| {
                DEPRECATED_ATTENTION_NAMES.iter().find_map(|(old, new)| {
                    ["weight", "bias"].iter().find_map(|param| {
                        let tail = format!(".{old}.{param}");
                        key.strip_suffix(&tail).filter(|head| head.contains("attentions.")).map(|head| format!("{head}.{new}.{param}"))
                    })
                })
            });
            (renamed.flatten().unwrap_or(key), t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deprecated_attention_names_are_converted() {
        let t = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let keys = [
            "mid_block.attentions.0.query.weight",
            "down_blocks.1.attentions.0.proj_attn.bias",
            "up_blocks.0.attentions.2.key.bias",
            "up_blocks.0.attentions.2.group_norm.weight",
            "down_blocks.0.resnets.0.query.weight",
            "mid_block.attentions.0.to_v.weight",
        ];
        let map: HashMap<String, Tensor> = keys.iter().map(|k| (k.to_string(), t.clone())).collect();
        let mut got: Vec<String> = rename_deprecated_attention_keys(map).into_keys().collect();
        got.sort();
        assert_eq!(
            got,
            [
                "down_blocks.0.resnets.0.query.weight",
                "down_blocks.1.attentions.0.to_out.0.bias",
                "mid_block.attentions.0.to_q.weight",
                "mid_block.attentions.0.to_v.weight",
                "up_blocks.0.attentions.2.group_norm.weight",
                "up_blocks.0.attentions.2.to_k.bias",
            ]
        );
    }
}
