//! Eval-mode BatchNorm2d (torch.nn.BatchNorm2d in `eval()`), shared by the ResNet oracle (its
//! eval mode, see `resnet::batch_norm`) and pytorch-fid's Inception, which differ only in eps
//! (1e-5 and 1e-3).
//!
//! Precomputed as a per-channel affine map `y = x * scale + shift` with
//! `scale = weight / sqrt(running_var + eps)` and `shift = bias - running_mean * scale`: the same
//! factorisation ATen's CPU eval kernel uses.

use candle_core::{Module, Tensor};

use super::weights::{WeightMap, WeightsError};

#[derive(Debug, Clone)]
pub(crate) struct BatchNorm {
    scale: Tensor,
    shift: Tensor,
}

impl BatchNorm {
    pub(crate) fn load(w: &WeightMap, channels: usize, eps: f64) -> Result<Self, WeightsError> {
        let shape = [channels];
        let weight = w.get(&shape, "weight")?;
        let bias = w.get(&shape, "bias")?;
        let mean = w.get(&shape, "running_mean")?;
        let var = w.get(&shape, "running_var")?;
        // num_batches_tracked only matters in training (momentum=None); it is accepted, not used.
        // Its shape is not checked (it is a scalar in every torch version that writes it).
        if let Some(shape) = w.shape_of("num_batches_tracked") {
            w.get(&shape, "num_batches_tracked")?;
        }
        Self::fold(&weight, &bias, &mean, &var, eps).map_err(|e| WeightsError::Tensor {
            path: w.path().to_path_buf(),
            name: w.prefix().to_string(),
            cause: e.to_string(),
        })
    }

    /// The affine map of one set of statistics (`weight`, `bias`, `running_mean`,
    /// `running_var`, each `[C]`), ready for `[N, C, H, W]` inputs.
    pub(crate) fn fold(weight: &Tensor, bias: &Tensor, mean: &Tensor, var: &Tensor, eps: f64) -> candle_core::Result<Self> {
        let channels = weight.dims1()?;
        let scale = (weight / (var + eps)?.sqrt()?)?;
        let shift = (bias - (mean * &scale)?)?;
        Ok(Self { scale: scale.reshape((1, channels, 1, 1))?, shift: shift.reshape((1, channels, 1, 1))? })
    }
}

impl BatchNorm {
    /// This map as a convolution's epilogue, with or without the ReLU after it.
    pub(crate) fn epilogue(&self, relu: bool) -> crate::models::fast_conv::Epilogue<'_> {
        crate::models::fast_conv::Epilogue { scale: Some(&self.scale), shift: Some(&self.shift), residual: None, relu }
    }
}

impl Module for BatchNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.broadcast_mul(&self.scale)?.broadcast_add(&self.shift)
    }
}
