//! A stride-1 2D convolution whose backward pass is fast on the CPU.
//!
//! candle computes the input gradient of `conv2d` with `conv_transpose2d`, whose CPU kernel is
//! about ten times slower than the forward convolution (measured: 350 ms against 40 ms for a
//! 32x32x32 batch of 32 with 3x3 kernels), and that dominates training time. For stride 1 and
//! no dilation the input gradient is itself a plain convolution: the output gradient convolved
//! with the kernel flipped spatially and with its in/out channels swapped, padded by
//! `k - 1 - padding`. [`conv2d_s1`] is a candle custom op whose forward is exactly `conv2d`
//! (same kernel, same numbers) and whose backward uses that identity for the input and
//! candle's own formula for the kernel. CPU only; on other devices it is plain `conv2d`.

use crate::models::fast_conv::{conv2d_fused_cached, ConvParams, Epilogue, KernelCache};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

struct Conv2dS1 {
    padding: usize,
}

/// A CPU storage as a tensor ([`conv2d_s1`] makes its inputs contiguous first).
fn as_tensor(s: &CpuStorage, l: &Layout) -> Result<Tensor> {
    let Some((a, b)) = l.contiguous_offsets() else { candle_core::bail!("conv2d_s1: expected contiguous inputs") };
    let dev = candle_core::Device::Cpu;
    match s {
        CpuStorage::F32(v) => Tensor::from_slice(&v[a..b], l.shape(), &dev),
        CpuStorage::F64(v) => Tensor::from_slice(&v[a..b], l.shape(), &dev),
        _ => candle_core::bail!("conv2d_s1: expected f32 or f64 tensors"),
    }
}

impl CustomOp2 for Conv2dS1 {
    fn name(&self) -> &'static str {
        "conv2d-s1"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = as_tensor(s1, l1)?.conv2d(&as_tensor(s2, l2)?, self.padding, 1, 1, 1)?;
        let shape = y.shape().clone();
        let storage = match y.dtype() {
            DType::F32 => CpuStorage::F32(y.flatten_all()?.to_vec1()?),
            DType::F64 => CpuStorage::F64(y.flatten_all()?.to_vec1()?),
            other => candle_core::bail!("conv2d_s1: dtype {other:?} is not supported"),
        };
        Ok((storage, shape))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (x, w, grad) = (x.detach(), w.detach(), grad.detach());
        let k = w.dim(2)?;
        let kw = w.dim(3)?;
        if k != kw || self.padding >= k {
            candle_core::bail!(
                "conv2d_s1: square kernels with padding < kernel size only, got {:?} and padding {}",
                w.dims(),
                self.padding
            );
        }
        // d/dx: conv of the output gradient with the flipped, channel-swapped kernel.
        let rev = Tensor::from_vec((0..k as u32).rev().collect::<Vec<_>>(), k, w.device())?;
        let w_flip = w.index_select(&rev, 2)?.index_select(&rev, 3)?.transpose(0, 1)?.contiguous()?;
        let grad_x = grad.conv2d(&w_flip, k - 1 - self.padding, 1, 1, 1)?;
        // d/dw: candle's formula (x and the output gradient with batch and channels swapped).
        let grad_w = x.transpose(0, 1)?.conv2d(&grad.transpose(0, 1)?, self.padding, 1, 1, 1)?.transpose(0, 1)?;
        Ok((Some(grad_x), Some(grad_w)))
    }
}

/// `x.conv2d(w, padding, stride 1, dilation 1, groups 1)` with a fast backward on the CPU.
pub fn conv2d_s1(x: &Tensor, w: &Tensor, padding: usize) -> Result<Tensor> {
    if x.device().is_cpu() && (x.track_op() || w.track_op()) {
        x.contiguous()?.apply_op2(&w.contiguous()?, Conv2dS1 { padding })
    } else {
        x.conv2d(w, padding, 1, 1, 1)
    }
}

/// `candle_nn::Conv2d`, whose stride-1 case (on the CPU, when a gradient is tracked) goes
/// through [`conv2d_s1`]. Same weights, same key names, same forward numbers.
///
/// What the fused convolution derives from the weight is made on the first inference call and
/// kept (a training variable's weight tracks a gradient and never takes that path).
#[derive(Debug, Clone)]
pub struct Conv2d(candle_nn::Conv2d, KernelCache);

/// `candle_nn::conv2d` returning a [`Conv2d`].
pub fn conv2d(c_in: usize, c_out: usize, kernel: usize, cfg: candle_nn::Conv2dConfig, vb: candle_nn::VarBuilder) -> Result<Conv2d> {
    Ok(Conv2d(candle_nn::conv2d(c_in, c_out, kernel, cfg, vb)?, KernelCache::default()))
}

/// `candle_nn::conv2d_no_bias` returning a [`Conv2d`].
pub fn conv2d_no_bias(c_in: usize, c_out: usize, kernel: usize, cfg: candle_nn::Conv2dConfig, vb: candle_nn::VarBuilder) -> Result<Conv2d> {
    Ok(Conv2d(candle_nn::conv2d_no_bias(c_in, c_out, kernel, cfg, vb)?, KernelCache::default()))
}

impl Conv2d {
    /// The convolution (with its bias, if any) followed by `epilogue`: one pass through
    /// [`crate::models::fast_conv`] when nothing tracks a gradient (inference), candle's ops
    /// otherwise.
    pub fn forward_fused(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let c = self.0.config();
        let tracked = x.track_op() || self.0.weight().track_op();
        if tracked || c.dilation != 1 || c.groups != 1 || (self.0.bias().is_some() && epilogue.shift.is_some()) {
            return epilogue.apply_unfused(candle_core::Module::forward(self, x)?);
        }
        let shift = epilogue.shift.or(self.0.bias());
        conv2d_fused_cached(x, self.0.weight(), &self.1, ConvParams::new(c.stride, (c.padding, c.padding)), Epilogue { shift, ..epilogue })
    }
}

impl candle_core::Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.0.config();
        if !(x.track_op() || self.0.weight().track_op()) && c.dilation == 1 && c.groups == 1 {
            // Inference: the fast CPU convolution (bias in its epilogue).
            return self.forward_fused(x, Epilogue::default());
        }
        if c.stride != 1 || c.dilation != 1 || c.groups != 1 {
            return self.0.forward(x);
        }
        let y = conv2d_s1(x, self.0.weight(), c.padding)?;
        match self.0.bias() {
            Some(b) => y.broadcast_add(&b.reshape((1, b.dims1()?, 1, 1))?),
            None => Ok(y),
        }
    }
}
