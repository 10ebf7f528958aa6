//! The ResNet's `nn.BatchNorm2d`, in training and in eval mode.
//!
//! Reference: `torch.nn.BatchNorm2d` (eps 1e-5, momentum 0.1). A training-mode forward
//! normalises by the batch mean and the biased batch variance and updates `running_mean` /
//! `running_var` with the *unbiased* variance (`var * n / (n - 1)`, n = N·H·W); an eval-mode
//! forward uses the running statistics, through the same per-channel affine map as the other
//! eval-only networks (`models::batch_norm`, after ATen's CPU eval kernel), so a network
//! loaded from a checkpoint and a network being trained compute eval logits the same way.
//!
//! The statistics are either live (variables of a training `VarMap`, updated in place by a
//! training forward and saved under torchvision's names) or frozen (read from a checkpoint,
//! folded into the affine map once, when the network is built). `num_batches_tracked` is
//! accepted next to them and not used (it only matters with `momentum=None`); the trainer counts
//! the batches itself (`TrainableResNet`).

use candle_core::{DType, Module, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};

use crate::models::batch_norm::BatchNorm;
use crate::models::conv_grad::Conv2d;
use crate::models::fast_conv::Epilogue;

/// `nn.BatchNorm2d`'s eps in torchvision's ResNet.
const EPS: f64 = 1e-5;
/// `nn.BatchNorm2d`'s momentum.
const MOMENTUM: f64 = 0.1;

/// Whether BatchNorm uses batch statistics (and updates its running ones) or the running ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BnMode {
    Train,
    Eval,
}

#[derive(Debug, Clone)]
enum Stats {
    /// Running statistics a training forward updates.
    Live { mean: Var, var: Var },
    /// Constant statistics, already folded with weight and bias (folding them at every call
    /// would cost a handful of tiny kernels per layer and batch, for the same numbers).
    Frozen(BatchNorm),
}

/// `nn.BatchNorm2d` with both modes.
#[derive(Debug, Clone)]
pub struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    stats: Stats,
    channels: usize,
}

impl BatchNorm2d {
    /// `weight`, `bias`, `running_mean` and `running_var` of `vb`. From a `VarMap` they start at
    /// torch's init (1, 0, 0, 1), in `vb`'s dtype (f64 for gradient checks), and the statistics
    /// are live; from a checkpoint they are frozen.
    pub fn new(vb: VarBuilder, channels: usize) -> Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.))?;
        let mean = vb.get_with_hints(channels, "running_mean", Init::Const(0.))?;
        let var = vb.get_with_hints(channels, "running_var", Init::Const(1.))?;
        // A checkpoint's counter is marked as read so that it does not count as an unexpected
        // tensor; a `VarMap` never holds one (the trainer writes it when saving).
        if vb.contains_tensor("num_batches_tracked") {
            vb.get_unchecked_dtype("num_batches_tracked", DType::I64)?;
        }
        // A VarMap hands out its variables themselves: statistics that are variables are the
        // training network's, to be updated in place (and never given to the optimiser).
        let stats = if mean.is_variable() && var.is_variable() {
            Stats::Live { mean: Var::from_tensor(&mean)?, var: Var::from_tensor(&var)? }
        } else {
            Stats::Frozen(BatchNorm::fold(&weight, &bias, &mean, &var, EPS)?)
        };
        Ok(Self { weight, bias, stats, channels })
    }

    /// In `Eval` mode with frozen statistics, the affine map it applies (for a convolution to
    /// fuse into its epilogue); `None` where it must run itself.
    pub(crate) fn frozen(&self, mode: BnMode) -> Option<&BatchNorm> {
        match (&self.stats, mode) {
            (Stats::Frozen(bn), BnMode::Eval) => Some(bn),
            _ => None,
        }
    }

    /// `bn(conv(x))`, then ReLU when `relu`: one fused pass where the statistics are frozen and
    /// nothing is trained (models::fast_conv).
    pub(crate) fn after_conv(&self, conv: &Conv2d, x: &Tensor, mode: BnMode, relu: bool) -> Result<Tensor> {
        if let Some(bn) = self.frozen(mode) {
            return conv.forward_fused(x, bn.epilogue(relu));
        }
        let y = self.forward(&conv.forward(x)?, mode)?;
        if relu {
            y.relu()
        } else {
            Ok(y)
        }
    }

    /// `relu(self(conv(x)) + residual)`, the end of a ResNet block: in inference one fused
    /// pass (the residual added in the convolution's epilogue), else candle's ops.
    pub(crate) fn after_conv_add_relu(&self, conv: &Conv2d, x: &Tensor, mode: BnMode, residual: &Tensor) -> Result<Tensor> {
        if let Some(bn) = self.frozen(mode) {
            return conv.forward_fused(x, Epilogue { residual: Some(residual), ..bn.epilogue(true) });
        }
        (self.forward(&conv.forward(x)?, mode)? + residual)?.relu()
    }

    /// Normalises `x` `[N, C, H, W]`; in `Train` mode also updates the running statistics.
    pub fn forward(&self, x: &Tensor, mode: BnMode) -> Result<Tensor> {
        match (&self.stats, mode) {
            (Stats::Frozen(bn), BnMode::Eval) => bn.forward(x),
            (Stats::Live { mean, var }, BnMode::Eval) => {
                BatchNorm::fold(&self.weight, &self.bias, &mean.as_tensor().detach(), &var.as_tensor().detach(), EPS)?.forward(x)
            }
            (Stats::Live { mean, var }, BnMode::Train) => self.forward_train(x, mean, var),
            (Stats::Frozen(_), BnMode::Train) => {
                candle_core::bail!("batch norm in training mode needs running statistics it can update: build the network from a VarMap")
            }
        }
    }

    fn forward_train(&self, x: &Tensor, running_mean: &Var, running_var: &Var) -> Result<Tensor> {
        let shape = (1, self.channels, 1, 1);
        let (n, _, h, w) = x.dims4()?;
        let count = (n * h * w) as f64;
        if count < 2.0 {
            candle_core::bail!("batch norm in training mode needs more than one value per channel, got input {:?}", x.dims());
        }
        let mean = x.mean_keepdim((0, 2, 3))?;
        let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
        let m = MOMENTUM;
        let new_mean = ((running_mean.as_tensor() * (1.0 - m))? + (mean.detach().flatten_all()? * m)?)?;
        let unbiased = (var.detach().flatten_all()? * (count / (count - 1.0)))?;
        let new_var = ((running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?;
        running_mean.set(&new_mean)?;
        running_var.set(&new_var)?;
        let xhat = x.broadcast_sub(&mean)?.broadcast_div(&(var + EPS)?.sqrt()?)?;
        xhat.broadcast_mul(&self.weight.reshape(shape)?)?.broadcast_add(&self.bias.reshape(shape)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::VarMap;
    use std::collections::HashMap;

    fn scalar_input(v: f32) -> Tensor {
        Tensor::new(&[v], &Device::Cpu).unwrap().reshape((1, 1, 1, 1)).unwrap()
    }

    fn first(t: &Tensor) -> f32 {
        t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0]
    }

    #[test]
    fn train_mode_updates_running_stats_with_unbiased_variance() {
        let dev = Device::Cpu;
        let vm = VarMap::new();
        let bn = BatchNorm2d::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), 1).unwrap();
        // One channel, values 1, 2, 3, 6: mean 3, biased var 3.5, unbiased 14/3.
        let x = Tensor::new(&[1f32, 2., 3., 6.], &dev).unwrap().reshape((2, 1, 1, 2)).unwrap();
        let y: Vec<f32> = bn.forward(&x, BnMode::Train).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let s = (3.5f32 + 1e-5).sqrt();
        for (a, b) in y.iter().zip([-2.0 / s, -1.0 / s, 0.0, 3.0 / s]) {
            assert!((a - b).abs() < 1e-5, "{y:?}");
        }
        // The VarMap holds the updated statistics (they are what training saves).
        let stat = |name: &str| first(vm.data().lock().unwrap()[name].as_tensor());
        let (rm, rv) = (stat("running_mean"), stat("running_var"));
        assert!((rm - 0.3).abs() < 1e-6, "{rm}");
        assert!((rv - (0.9 + 0.1 * 14.0 / 3.0)).abs() < 1e-6, "{rv}");
        // Eval mode uses them and changes nothing.
        assert!(first(&bn.forward(&scalar_input(0.3), BnMode::Eval).unwrap()).abs() < 1e-6);
        assert_eq!(stat("running_mean"), rm);
    }

    #[test]
    fn checkpoint_statistics_are_frozen_eval_mode() {
        let dev = Device::Cpu;
        let t = |v: &[f32]| Tensor::new(v, &dev).unwrap();
        let mut m = HashMap::new();
        m.insert("weight".to_string(), t(&[2.0]));
        m.insert("bias".to_string(), t(&[0.5]));
        m.insert("running_mean".to_string(), t(&[1.0]));
        m.insert("running_var".to_string(), t(&[4.0 - 1e-5]));
        let bn = BatchNorm2d::new(VarBuilder::from_tensors(m, DType::F32, &dev), 1).unwrap();
        // (3 - 1) / 2 * 2 + 0.5
        let y = first(&bn.forward(&scalar_input(3.0), BnMode::Eval).unwrap());
        assert!((y - 2.5).abs() < 1e-6, "{y}");
        let e = bn.forward(&Tensor::zeros((2, 1, 1, 1), DType::F32, &dev).unwrap(), BnMode::Train).unwrap_err();
        assert!(e.to_string().contains("build the network from a VarMap"), "{e}");
    }
}
