//! Inference convolution on the CPU: 2D convolution (any kernel, stride and per-axis padding,
//! no dilation or groups) with its per-channel epilogue (`y * scale + shift`, then ReLU) fused
//! into the same pass, as the eval-mode `conv -> BatchNorm -> ReLU` of torchvision's
//! `BasicConv2d` and ResNet blocks, or `conv + bias`.
//!
//! Why not candle's `conv2d`: its CPU kernel (candle 0.11 `conv2d_tiled`) transposes the whole
//! input to NHWC and repacks the kernel on one thread at every call, gathers im2col tiles and
//! scatters the result channel by channel, and the BatchNorm and ReLU after it are two more
//! passes over a fresh tensor each. Here each (image, band of output rows) is one task: its
//! im2col columns (`[C_in * kH * kW, band]`, row copies, in a per-thread buffer reused across
//! calls) go through one single-threaded gemm with the OIHW kernel used in place, straight
//! into the NCHW output (whose `[C_out, H * W]` per image is the gemm's destination), and the
//! epilogue runs on the band while it is in cache; 1x1 stride-1 convolutions skip im2col. The
//! work of one image never depends on the batch or the thread count, so an image's output is
//! the same whatever batch it travels in.
//!
//! Inference only: when a gradient is tracked (training), on other devices and for other
//! dtypes, [`conv2d_fused`] is candle's ops (`conv2d`, `broadcast_mul`, `broadcast_add`,
//! `relu`), which have backward passes. tests/fast_ops.rs checks both paths against each other.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Output columns (pixels) one task aims for: enough for the gemm to run at speed, few enough
/// that an image splits into several tasks.
const BAND_COLUMNS: usize = 256;

/// Stride and per-axis zero padding (height, width).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    pub stride: (usize, usize),
    pub padding: (usize, usize),
}

impl ConvParams {
    pub fn new(stride: usize, padding: (usize, usize)) -> Self {
        Self { stride: (stride, stride), padding }
    }
}

/// What follows the convolution, per output channel: `y * scale[c] + shift[c]`, then ReLU.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// `[C_out]` (or any shape of C_out values, e.g. `[1, C_out, 1, 1]`).
    pub scale: Option<&'a Tensor>,
    /// `[C_out]`: a bias, or a folded BatchNorm's shift.
    pub shift: Option<&'a Tensor>,
    pub relu: bool,
}

/// `conv2d(x, w)` (`x` `[N, C_in, H, W]`, `w` `[C_out, C_in, kH, kW]`) followed by `epilogue`.
pub fn conv2d_fused(x: &Tensor, w: &Tensor, p: ConvParams, epilogue: Epilogue) -> Result<Tensor> {
    let tracked =
        x.track_op() || w.track_op() || epilogue.scale.is_some_and(|t| t.track_op()) || epilogue.shift.is_some_and(|t| t.track_op());
    let fast = x.device().is_cpu() && x.dtype() == DType::F32 && w.dtype() == DType::F32 && !tracked;
    if !fast {
        return conv2d_candle(x, w, p, epilogue);
    }
    let values =
        |t: Option<&Tensor>| -> Result<Option<Vec<f32>>> { t.map(|t| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()).transpose() };
    let op = FusedConv { p, scale: values(epilogue.scale)?, shift: values(epilogue.shift)?, relu: epilogue.relu };
    x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &op)
}

/// The same with candle's own ops (every device, with backward passes).
pub fn conv2d_candle(x: &Tensor, w: &Tensor, p: ConvParams, epilogue: Epilogue) -> Result<Tensor> {
    let (ph, pw) = p.padding;
    let mut y = if ph == pw && p.stride.0 == p.stride.1 {
        x.conv2d(w, ph, p.stride.0, 1, 1)?
    } else if p.stride.0 == p.stride.1 {
        x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?.conv2d(w, 0, p.stride.0, 1, 1)?
    } else {
        candle_core::bail!("conv2d: different strides per axis ({:?}) are not supported", p.stride)
    };
    let per_channel = |t: &Tensor| -> Result<Tensor> { t.reshape((1, t.elem_count(), 1, 1)) };
    if let Some(scale) = epilogue.scale {
        y = y.broadcast_mul(&per_channel(scale)?)?;
    }
    if let Some(shift) = epilogue.shift {
        y = y.broadcast_add(&per_channel(shift)?)?;
    }
    if epilogue.relu {
        y = y.relu()?;
    }
    Ok(y)
}

struct FusedConv {
    p: ConvParams,
    scale: Option<Vec<f32>>,
    shift: Option<Vec<f32>>,
    relu: bool,
}

/// The shapes of one convolution.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c_in: usize,
    h: usize,
    w: usize,
    c_out: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
}

impl CustomOp2 for FusedConv {
    fn name(&self) -> &'static str {
        "fused-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else { candle_core::bail!("fused conv2d: expected f32 inputs") };
        let (Some((x0, x1)), Some((w0, w1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("fused conv2d: expected contiguous inputs")
        };
        let (n, c_in, h, wd) = l1.shape().dims4()?;
        let (c_out, c_in_w, kh, kw) = l2.shape().dims4()?;
        if c_in != c_in_w {
            candle_core::bail!("conv2d: input has {c_in} channels, the kernel {c_in_w} ({:?})", l2.shape().dims());
        }
        let ((sh, sw), (ph, pw)) = (self.p.stride, self.p.padding);
        if sh == 0 || sw == 0 || h + 2 * ph < kh || wd + 2 * pw < kw {
            candle_core::bail!("conv2d: kernel {kh}x{kw} (stride {sh}x{sw}, padding {ph}x{pw}) does not fit a {h}x{wd} input");
        }
        for v in [&self.scale, &self.shift].into_iter().flatten() {
            if v.len() != c_out {
                candle_core::bail!("conv2d epilogue: {} values for {c_out} output channels", v.len());
            }
        }
        let g = Geometry { n, c_in, h, w: wd, c_out, kh, kw, oh: (h + 2 * ph - kh) / sh + 1, ow: (wd + 2 * pw - kw) / sw + 1 };
        let out = self.run(&x[x0..x1], &w[w0..w1], g);
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.c_out, g.oh, g.ow))))
    }
}

/// A pointer the tasks write their disjoint parts of the output through.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

thread_local! {
    /// This thread's im2col buffer, kept between calls (grown, never shrunk).
    static COLUMNS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

impl FusedConv {
    fn run(&self, x: &[f32], w: &[f32], g: Geometry) -> Vec<f32> {
        let plane = g.oh * g.ow;
        let mut out = vec![0f32; g.n * g.c_out * plane];
        let rows_per_band = (BAND_COLUMNS / g.ow).clamp(1, g.oh);
        let bands = g.oh.div_ceil(rows_per_band);
        let dst = OutPtr(out.as_mut_ptr());
        (0..g.n * bands).into_par_iter().for_each(|task| {
            let (image, band) = (task / bands, task % bands);
            let row0 = band * rows_per_band;
            let rows = rows_per_band.min(g.oh - row0);
            let dst = dst;
            // SAFETY: task (image, band) writes only columns row0*ow .. (row0+rows)*ow of each
            // channel plane of its image: no two tasks touch the same element, and `out`
            // outlives the parallel loop.
            unsafe { self.band(x, w, g, image, row0, rows, dst.0.add(image * g.c_out * plane + row0 * g.ow)) };
        });
        out
    }

    /// Output rows `row0 .. row0 + rows` of `image`, all channels, written at `dst` (the first
    /// column of channel 0; channel planes `oh * ow` apart).
    ///
    /// # Safety
    /// `dst` must be valid for those writes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn band(&self, x: &[f32], w: &[f32], g: Geometry, image: usize, row0: usize, rows: usize, dst: *mut f32) {
        let k = g.c_in * g.kh * g.kw;
        let cols = rows * g.ow;
        let plane = g.oh * g.ow;
        let input = &x[image * g.c_in * g.h * g.w..(image + 1) * g.c_in * g.h * g.w];
        let pointwise = g.kh == 1 && g.kw == 1 && self.p.stride == (1, 1) && self.p.padding == (0, 0);
        let multiply = |rhs: *const f32, rhs_rs: isize| {
            // dst [c_out, cols] (row stride: the plane) = w [c_out, k] @ rhs [k, cols].
            gemm::gemm(
                g.c_out,
                cols,
                k,
                dst,
                1,
                plane as isize,
                false,
                w.as_ptr(),
                1,
                k as isize,
                rhs,
                1,
                rhs_rs,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            )
        };
        if pointwise {
            // The input's own [c_in, h * w] rows are the columns.
            multiply(input.as_ptr().add(row0 * g.ow), (g.h * g.w) as isize);
        } else {
            COLUMNS.with(|buf| {
                let mut buf = buf.borrow_mut();
                if buf.len() < k * cols {
                    buf.resize(k * cols, 0.0);
                }
                self.im2col(input, g, row0, rows, &mut buf[..k * cols]);
                multiply(buf.as_ptr(), cols as isize);
            });
        }
        self.epilogue(dst, g, cols);
    }

    /// The columns of output rows `row0 .. row0 + rows`: row `(c, ky, kx)` of `cols` (the OIHW
    /// kernel's order) holds input pixel (c, oy * sh + ky - ph, ox * sw + kx - pw) of each output
    /// pixel (oy, ox), zero in the padding.
    fn im2col(&self, input: &[f32], g: Geometry, row0: usize, rows: usize, cols: &mut [f32]) {
        let ((sh, sw), (ph, pw)) = (self.p.stride, self.p.padding);
        let width = rows * g.ow;
        for c in 0..g.c_in {
            let channel = &input[c * g.h * g.w..(c + 1) * g.h * g.w];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let r = (c * g.kh + ky) * g.kw + kx;
                    let line = &mut cols[r * width..(r + 1) * width];
                    // Output columns ox whose input column ox * sw + kx - pw is inside [0, w).
                    let first = pw.saturating_sub(kx).div_ceil(sw);
                    let last = if g.w + pw > kx { ((g.w + pw - kx - 1) / sw + 1).min(g.ow) } else { 0 };
                    for (i, out_row) in line.chunks_exact_mut(g.ow).enumerate() {
                        let iy = ((row0 + i) * sh + ky) as isize - ph as isize;
                        if iy < 0 || iy >= g.h as isize || first >= last {
                            out_row.fill(0.0);
                            continue;
                        }
                        let src = &channel[iy as usize * g.w..(iy as usize + 1) * g.w];
                        out_row[..first].fill(0.0);
                        out_row[last..].fill(0.0);
                        let x0 = first * sw + kx - pw;
                        if sw == 1 {
                            out_row[first..last].copy_from_slice(&src[x0..x0 + (last - first)]);
                        } else {
                            for (o, v) in out_row[first..last].iter_mut().zip(src[x0..].iter().step_by(sw)) {
                                *o = *v;
                            }
                        }
                    }
                }
            }
        }
    }

    /// `y * scale + shift`, then ReLU, on `cols` columns of each channel plane at `dst`.
    unsafe fn epilogue(&self, dst: *mut f32, g: Geometry, cols: usize) {
        if self.scale.is_none() && self.shift.is_none() && !self.relu {
            return;
        }
        let plane = g.oh * g.ow;
        for c in 0..g.c_out {
            let row = std::slice::from_raw_parts_mut(dst.add(c * plane), cols);
            if let Some(scale) = &self.scale {
                let s = scale[c];
                row.iter_mut().for_each(|v| *v *= s);
            }
            if let Some(shift) = &self.shift {
                let b = shift[c];
                row.iter_mut().for_each(|v| *v += b);
            }
            if self.relu {
                row.iter_mut().filter(|v| **v < 0.0).for_each(|v| *v = 0.0);
            }
        }
    }
}
