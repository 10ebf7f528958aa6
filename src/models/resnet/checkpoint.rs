//! A torchvision state_dict ([`WeightMap`]) behind the candle-nn `VarBuilder` the ResNet is
//! built from, with the weight map's own errors.
//!
//! Every lookup goes through [`WeightMap::get`], which checks the exact shape and records the
//! key as used (so `ResNet::load` can reject a checkpoint holding more than the architecture
//! uses). A failed lookup can only travel through the `VarBuilder` as a candle error; the
//! backend keeps the first [`WeightsError`] on the side, so the loader reports it as is, naming
//! the file and the full key, exactly as the weight map words it.

use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::models::weights::{WeightMap, WeightsError};

/// The first failed lookup, shared between the backend and its [`Checkpoint`].
type Failure = Arc<Mutex<Option<WeightsError>>>;

struct WeightMapBackend {
    weights: WeightMap,
    failure: Failure,
}

impl WeightMapBackend {
    fn lookup(&self, shape: &[usize], name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let found = self.weights.get(shape, name).and_then(|t| {
            t.to_dtype(dtype).and_then(|t| t.to_device(dev)).map_err(|e| WeightsError::Tensor {
                path: self.weights.path().to_path_buf(),
                name: self.weights.pp(name).prefix().to_string(),
                cause: e.to_string(),
            })
        });
        found.map_err(|e| {
            let message = e.to_string();
            self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).get_or_insert(e);
            candle_core::Error::Msg(message)
        })
    }
}

impl SimpleBackend for WeightMapBackend {
    fn get(&self, s: Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.lookup(s.dims(), name, dtype, dev)
    }

    /// Whatever shape the tensor has (a missing one is reported as missing).
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.lookup(&self.weights.shape_of(name).unwrap_or_default(), name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.weights.contains(name)
    }
}

/// A [`WeightMap`] view served as an f32 `VarBuilder` on the weights' device.
pub(super) struct Checkpoint {
    failure: Failure,
    vb: VarBuilder<'static>,
}

impl Checkpoint {
    pub(super) fn new(weights: &WeightMap) -> Self {
        let failure = Failure::default();
        let backend = WeightMapBackend { weights: weights.clone(), failure: Arc::clone(&failure) };
        let vb = VarBuilder::from_backend(Box::new(backend), DType::F32, weights.device());
        Self { failure, vb }
    }

    pub(super) fn var_builder(&self) -> VarBuilder<'static> {
        self.vb.clone()
    }

    /// The first lookup that failed, if one did.
    pub(super) fn take_failure(&self) -> Option<WeightsError> {
        self.failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}
