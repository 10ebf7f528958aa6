//! Inference convolution on the CPU: 2D convolution (any kernel, stride and per-axis padding,
//! no dilation or groups) with its per-channel epilogue (`y * scale + shift`, plus a residual,
//! then ReLU) fused into the same pass, as the eval-mode `conv -> BatchNorm -> ReLU` of
//! torchvision's `BasicConv2d`, the `bn2(conv2(y)) + identity -> ReLU` that ends a ResNet
//! `BasicBlock`, or `conv + bias`.
//!
//! Why not candle's `conv2d`: its CPU kernel (candle 0.11 `conv2d_tiled`) transposes the whole
//! input to NHWC and repacks the kernel on one thread at every call, gathers im2col tiles and
//! scatters the result channel by channel, and the BatchNorm and ReLU after it are two more
//! passes over a fresh tensor each. Here each (image, band of output rows) is one task: its
//! im2col columns (`[C_in * kH * kW, band]`, row copies, in a per-thread buffer reused across
//! calls) go through one single-threaded gemm with the OIHW kernel used in place, straight
//! into the NCHW output (whose `[C_out, H * W]` per image is the gemm's destination), and the
//! epilogue runs on the band while it is in cache; 1x1 stride-1 convolutions skip im2col.
//!
//! Small outputs (fewer than [`GROUP_COLUMNS`] pixels per image: ResNet's 8x8 and 4x4 stages,
//! AlexNet's 7x7 to 1x1 layers at 32x32) would make that a matrix-*vector* product per image,
//! reading the whole kernel once per image (9 MB for a 512-channel 3x3 conv): there a task takes
//! a fixed group of images side by side as its columns, so the kernel is read once per group,
//! and the result is scattered to each image's planes with its epilogue. Their im2col rows are
//! a few values long (3 at AlexNet's 3x3 layer in LPIPS, 1 at its 1x1 ones), so rather than
//! row copies it is one gather per kernel tap, by a table of source indices made once per call.
//!
//! Stride-1 3x3 convolutions with 16 or more channels and outputs of 4x4 or more (the UNet's,
//! VGG's, the ResNets' stages) go through Winograd F(2x2, 3x3) instead
//! (`fast_conv/winograd.rs`): the same epilogue, 2.25x fewer multiplications.
//!
//! Kernel taps that read only padding for every output pixel (a 3x3 kernel on a 1x1 map) are
//! cut away before any of this, with the padding reduced to match; a layer keeps its cut kernel
//! (`fast_conv/kernel_cache.rs`).
//!
//! The work of one image never depends on the batch or the thread count (a group's width is a
//! function of the geometry alone; a batch's last group is padded with zero columns rather than
//! made narrower), so an image's output is the same whatever batch it travels in.
//!
//! Inference only: when a gradient is tracked (training), on other devices and for other
//! dtypes, [`conv2d_fused`] is candle's ops (`conv2d`, `broadcast_mul`, `broadcast_add`,
//! `relu`), which have backward passes. tests/fast_ops.rs checks both paths against each other.

mod kernel_cache;
mod winograd;

pub use kernel_cache::KernelCache;
use kernel_cache::{Derived, Kernels};

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_input::contiguous_f32;

/// Output columns (pixels) one task aims for: enough for the gemm to run at speed, few enough
/// that an image splits into several tasks.
const BAND_COLUMNS: usize = 256;

/// Below this many output pixels per image, images are grouped into one gemm's columns; a
/// group has `GROUP_COLUMNS / plane` images (rounded up): 64 columns keep the kernel's reuse
/// high while a batch's last, padded group wastes little.
pub const GROUP_COLUMNS: usize = 64;

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

/// What follows the convolution, per output channel: `y * scale[c] + shift[c]`, plus
/// `residual`, then ReLU.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    /// `[C_out]` (or any shape of C_out values, e.g. `[1, C_out, 1, 1]`).
    pub scale: Option<&'a Tensor>,
    /// `[C_out]`: a bias, or a folded BatchNorm's shift.
    pub shift: Option<&'a Tensor>,
    /// A tensor of the output's shape added before the ReLU (a ResNet block's identity).
    pub residual: Option<&'a Tensor>,
    pub relu: bool,
}

impl Epilogue<'_> {
    /// This epilogue as candle's ops on a convolution's output `y` (every device, with
    /// backward passes): the reference the fused pass equals.
    pub fn apply_unfused(&self, mut y: Tensor) -> Result<Tensor> {
        let per_channel = |t: &Tensor| -> Result<Tensor> { t.reshape((1, t.elem_count(), 1, 1)) };
        if let Some(scale) = self.scale {
            y = y.broadcast_mul(&per_channel(scale)?)?;
        }
        if let Some(shift) = self.shift {
            y = y.broadcast_add(&per_channel(shift)?)?;
        }
        if let Some(residual) = self.residual {
            y = (y + residual)?;
        }
        if self.relu {
            y = y.relu()?;
        }
        Ok(y)
    }

    fn tracked(&self) -> bool {
        [self.scale, self.shift, self.residual].into_iter().flatten().any(Tensor::track_op)
    }
}

/// `conv2d(x, w)` (`x` `[N, C_in, H, W]`, `w` `[C_out, C_in, kH, kW]`) followed by `epilogue`.
pub fn conv2d_fused(x: &Tensor, w: &Tensor, p: ConvParams, epilogue: Epilogue) -> Result<Tensor> {
    conv2d_fused_with(x, w, None, p, epilogue)
}

/// [`conv2d_fused`] for a layer that owns `w`: what the fast path derives from the kernel is
/// made once and kept in `cache` (the layer's own).
pub fn conv2d_fused_cached(x: &Tensor, w: &Tensor, cache: &KernelCache, p: ConvParams, epilogue: Epilogue) -> Result<Tensor> {
    conv2d_fused_with(x, w, Some(cache), p, epilogue)
}

fn conv2d_fused_with(x: &Tensor, w: &Tensor, cache: Option<&KernelCache>, p: ConvParams, epilogue: Epilogue) -> Result<Tensor> {
    let tracked = x.track_op() || w.track_op() || epilogue.tracked();
    let fast = x.device().is_cpu()
        && x.dtype() == DType::F32
        && w.dtype() == DType::F32
        && epilogue.residual.is_none_or(|r| r.dtype() == DType::F32)
        && !tracked;
    if !fast {
        return conv2d_candle(x, w, p, epilogue);
    }
    let values =
        |t: Option<&Tensor>| -> Result<Option<Vec<f32>>> { t.map(|t| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()).transpose() };
    let kernels = Kernels(cache.map(|c| (c.clone(), w.id())));
    let op = FusedConv { p, scale: values(epilogue.scale)?, shift: values(epilogue.shift)?, relu: epilogue.relu, kernels };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    match epilogue.residual {
        None => x.apply_op2_no_bwd(&w, &op),
        Some(residual) => x.apply_op3_no_bwd(&w, &residual.contiguous()?, &op),
    }
}

/// The same with candle's own ops (every device, with backward passes).
pub fn conv2d_candle(x: &Tensor, w: &Tensor, p: ConvParams, epilogue: Epilogue) -> Result<Tensor> {
    let (ph, pw) = p.padding;
    let y = if ph == pw && p.stride.0 == p.stride.1 {
        x.conv2d(w, ph, p.stride.0, 1, 1)?
    } else if p.stride.0 == p.stride.1 {
        x.pad_with_zeros(2, ph, ph)?.pad_with_zeros(3, pw, pw)?.conv2d(w, 0, p.stride.0, 1, 1)?
    } else {
        candle_core::bail!("conv2d: different strides per axis ({:?}) are not supported", p.stride)
    };
    epilogue.apply_unfused(y)
}

struct FusedConv {
    p: ConvParams,
    scale: Option<Vec<f32>>,
    shift: Option<Vec<f32>>,
    relu: bool,
    /// The layer's kept kernel transforms, if any.
    kernels: Kernels,
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
        self.forward(s1, l1, s2, l2, None)
    }
}

/// With a residual (the third operand) added before the ReLU.
impl CustomOp3 for FusedConv {
    fn name(&self) -> &'static str {
        "fused-conv2d-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.forward(s1, l1, s2, l2, Some((s3, l3)))
    }
}

impl FusedConv {
    fn forward(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        residual: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "fused conv2d input")?;
        let w = contiguous_f32(s2, l2, "fused conv2d kernel")?;
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
        let residual = match residual {
            None => None,
            Some((r, layout)) => {
                let r = contiguous_f32(r, layout, "fused conv2d residual")?;
                if layout.shape().dims() != [g.n, g.c_out, g.oh, g.ow] {
                    candle_core::bail!(
                        "conv2d residual: shape {:?}, the output is {:?}",
                        layout.shape().dims(),
                        [g.n, g.c_out, g.oh, g.ow]
                    );
                }
                Some(r)
            }
        };
        let out = self.run(x, w, residual, g);
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
    /// This thread's gemm result of a group of images, before it is scattered to their planes.
    static GROUP_RESULT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// This thread's copy of an input channel plane with a zero after it ([`im2col_gathered`]).
    static PADDED_PLANE: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The im2col columns of a whole image (`[C_in * kH * kW, oh * ow]`, rows `stride` values apart
/// in `cols`) by the gather table `sources` of [`FusedConv::column_sources`]. Each channel plane
/// is first copied with one zero after it, where the padding's entries point: the gather then
/// has no branch (a test per value, mispredicted at the padding's edges, was half its time).
fn im2col_gathered(input: &[f32], g: Geometry, sources: &[usize], cols: &mut [f32], stride: usize) {
    let (plane, taps, area) = (g.oh * g.ow, g.kh * g.kw, g.h * g.w);
    PADDED_PLANE.with(|padded| {
        let mut padded = padded.borrow_mut();
        let padded = at_least(&mut padded, area + 1);
        padded[area] = 0.0;
        for c in 0..g.c_in {
            for (p, v) in padded[..area].iter_mut().zip(&input[c * area..(c + 1) * area]) {
                *p = *v;
            }
            for tap in 0..taps {
                let r = c * taps + tap;
                let line = &mut cols[r * stride..r * stride + plane];
                for (o, &i) in line.iter_mut().zip(&sources[tap * plane..(tap + 1) * plane]) {
                    *o = padded[i];
                }
            }
        }
    });
}

/// `buf` with room for at least `len` values.
fn at_least(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    &mut buf[..len]
}

impl FusedConv {
    fn run(&self, x: &[f32], w: &[f32], residual: Option<&[f32]>, g: Geometry) -> Vec<f32> {
        match self.without_dead_taps(w, g) {
            Some((op, w, g)) => op.run_live(x, &w, residual, g),
            None => self.run_live(x, w, residual, g),
        }
    }

    /// Where some kernel taps fall in the zero padding for every output pixel (a 3x3 kernel
    /// with padding 1 on a 1x1 map, as AlexNet's last three layers in LPIPS at 32x32: eight of
    /// its nine taps), the same convolution with those rows and columns of the kernel cut away
    /// and the padding reduced to match, so neither im2col nor the gemm spends work on zeros.
    /// None when every tap reaches the input somewhere.
    fn without_dead_taps(&self, w: &[f32], g: Geometry) -> Option<(FusedConv, std::sync::Arc<Vec<f32>>, Geometry)> {
        let ((sh, sw), (ph, pw)) = (self.p.stride, self.p.padding);
        // Tap ky reads input row oy * sh + ky - ph: inside [0, h) for some oy < oh exactly
        // when ky lies in [ph - (oh - 1) * sh, h + ph).
        let (ky0, ky1) = (ph.saturating_sub((g.oh - 1) * sh), g.kh.min(g.h + ph));
        let (kx0, kx1) = (pw.saturating_sub((g.ow - 1) * sw), g.kw.min(g.w + pw));
        // All taps dead (padding wider than the kernel): the general path computes the zeros.
        if (ky0, ky1, kx0, kx1) == (0, g.kh, 0, g.kw) || ky0 >= ky1 || kx0 >= kx1 {
            return None;
        }
        let (kh, kw) = (ky1 - ky0, kx1 - kx0);
        let live = self.kernels.derived(Derived::LiveTaps { rows: (ky0, ky1), cols: (kx0, kx1) }, || {
            let mut live = Vec::with_capacity(g.c_out * g.c_in * kh * kw);
            for filter in w.chunks_exact(g.kh * g.kw) {
                for ky in ky0..ky1 {
                    live.extend_from_slice(&filter[ky * g.kw + kx0..ky * g.kw + kx1]);
                }
            }
            live
        });
        let op = FusedConv {
            p: ConvParams { stride: self.p.stride, padding: (ph - ky0, pw - kx0) },
            scale: self.scale.clone(),
            shift: self.shift.clone(),
            relu: self.relu,
            // The cut kernel is not the layer's: its transform is not kept.
            kernels: Kernels::default(),
        };
        // The output size stays as it was: im2col bounds-checks every read against the input.
        Some((op, live, Geometry { kh, kw, ..g }))
    }

    fn run_live(&self, x: &[f32], w: &[f32], residual: Option<&[f32]>, g: Geometry) -> Vec<f32> {
        let plane = g.oh * g.ow;
        let len = g.n * g.c_out * plane;
        // Not zeroed first: every element is written below (the gemm does not read its
        // destination), and zeroing was one more pass over the output, a page fault per 4 KB
        // on fresh pages. `set_len` comes after the writes.
        let mut out = Vec::<f32>::with_capacity(len);
        let dst = OutPtr(out.as_mut_ptr());
        if winograd::suits(&g, self.p) {
            self.winograd(x, w, residual, g, dst);
        } else if plane < GROUP_COLUMNS {
            let per_group = GROUP_COLUMNS.div_ceil(plane);
            let sources = self.column_sources(g);
            (0..g.n.div_ceil(per_group)).into_par_iter().for_each(|group| {
                let dst = dst;
                // SAFETY: group `group` writes only the output planes of its own images, and
                // `out` outlives the parallel loop.
                unsafe { self.group(x, w, residual, g, &sources, group * per_group, per_group, dst.0) };
            });
        } else {
            self.bands(x, w, residual, g, dst);
        }
        // SAFETY: the loops above wrote all `len` elements.
        unsafe { out.set_len(len) };
        out
    }

    /// Each (image, band of output rows) as one task.
    fn bands(&self, x: &[f32], w: &[f32], residual: Option<&[f32]>, g: Geometry, dst: OutPtr) {
        let plane = g.oh * g.ow;
        let rows_per_band = (BAND_COLUMNS / g.ow).clamp(1, g.oh);
        let bands = g.oh.div_ceil(rows_per_band);
        (0..g.n * bands).into_par_iter().for_each(|task| {
            let (image, band) = (task / bands, task % bands);
            let row0 = band * rows_per_band;
            let rows = rows_per_band.min(g.oh - row0);
            let dst = dst;
            let at = image * g.c_out * plane + row0 * g.ow;
            // SAFETY: task (image, band) writes only columns row0*ow .. (row0+rows)*ow of each
            // channel plane of its image: no two tasks touch the same element, and `out`
            // outlives the parallel loop.
            unsafe { self.band(x, w, residual.map(|r| &r[at..]), g, image, row0, rows, dst.0.add(at)) };
        });
    }

    /// Output rows `row0 .. row0 + rows` of `image`, all channels, written at `dst` (the first
    /// column of channel 0; channel planes `oh * ow` apart); `residual` starts at the same
    /// element of the residual tensor.
    ///
    /// # Safety
    /// `dst` must be valid for those writes.
    #[allow(clippy::too_many_arguments)]
    unsafe fn band(
        &self,
        x: &[f32],
        w: &[f32],
        residual: Option<&[f32]>,
        g: Geometry,
        image: usize,
        row0: usize,
        rows: usize,
        dst: *mut f32,
    ) {
        let k = g.c_in * g.kh * g.kw;
        let cols = rows * g.ow;
        let plane = g.oh * g.ow;
        let input = &x[image * g.c_in * g.h * g.w..(image + 1) * g.c_in * g.h * g.w];
        let pointwise = g.kh == 1 && g.kw == 1 && self.p.stride == (1, 1) && self.p.padding == (0, 0);
        if pointwise {
            // The input's own [c_in, h * w] rows are the columns.
            multiply(w, g.c_out, k, input.as_ptr().add(row0 * g.ow), (g.h * g.w) as isize, cols, dst, plane as isize);
        } else {
            COLUMNS.with(|buf| {
                let mut buf = buf.borrow_mut();
                let columns = at_least(&mut buf, k * cols);
                self.im2col(input, g, row0, rows, columns, cols);
                multiply(w, g.c_out, k, columns.as_ptr(), cols as isize, cols, dst, plane as isize);
            });
        }
        self.epilogue(dst, residual, plane, g.c_out, cols);
    }

    /// Images `first .. first + count` (those of them that exist), all of their output: their
    /// im2col columns side by side (a missing image's are zeros, so the gemm's shape is the same
    /// for every group), one gemm, then each image's `[c_out, plane]` result copied to its place
    /// in `out` with the epilogue.
    ///
    /// # Safety
    /// `out` must be valid for the whole output.
    #[allow(clippy::too_many_arguments)]
    unsafe fn group(
        &self,
        x: &[f32],
        w: &[f32],
        residual: Option<&[f32]>,
        g: Geometry,
        sources: &[usize],
        first: usize,
        count: usize,
        out: *mut f32,
    ) {
        let k = g.c_in * g.kh * g.kw;
        let plane = g.oh * g.ow;
        let cols = count * plane;
        let image_len = g.c_in * g.h * g.w;
        COLUMNS.with(|columns| {
            GROUP_RESULT.with(|result| {
                let (mut columns, mut result) = (columns.borrow_mut(), result.borrow_mut());
                let (columns, result) = (at_least(&mut columns, k * cols), at_least(&mut result, g.c_out * cols));
                for j in 0..count {
                    let image = first + j;
                    if image < g.n {
                        let input = &x[image * image_len..(image + 1) * image_len];
                        im2col_gathered(input, g, sources, &mut columns[j * plane..], cols);
                    } else {
                        for r in 0..k {
                            columns[r * cols + j * plane..r * cols + (j + 1) * plane].fill(0.0);
                        }
                    }
                }
                multiply(w, g.c_out, k, columns.as_ptr(), cols as isize, cols, result.as_mut_ptr(), cols as isize);
                for j in 0..count.min(g.n.saturating_sub(first)) {
                    let at = (first + j) * g.c_out * plane;
                    let dst = out.add(at);
                    for c in 0..g.c_out {
                        let from = &result[c * cols + j * plane..c * cols + (j + 1) * plane];
                        // An element loop: a plane here is under 64 values (one, at AlexNet's
                        // 1x1 layers), where a `memcpy` call per plane is mostly the call.
                        for (k, v) in from.iter().enumerate() {
                            *dst.add(c * plane + k) = *v;
                        }
                    }
                    self.epilogue(dst, residual.map(|r| &r[at..]), plane, g.c_out, plane);
                }
            })
        });
    }

    /// The im2col columns of output rows `row0 .. row0 + rows`: row `(c, ky, kx)` (the OIHW
    /// kernel's order; rows `stride` values apart in `cols`) holds input pixel
    /// (c, oy * sh + ky - ph, ox * sw + kx - pw) of each output pixel (oy, ox), zero in the
    /// padding.
    fn im2col(&self, input: &[f32], g: Geometry, row0: usize, rows: usize, cols: &mut [f32], stride: usize) {
        let ((sh, sw), (ph, pw)) = (self.p.stride, self.p.padding);
        let width = rows * g.ow;
        for c in 0..g.c_in {
            let channel = &input[c * g.h * g.w..(c + 1) * g.h * g.w];
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let r = (c * g.kh + ky) * g.kw + kx;
                    let line = &mut cols[r * stride..r * stride + width];
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

    /// For each kernel tap (ky, kx) and output pixel (oy, ox) of a whole image, in that order,
    /// the index in an input channel plane that im2col reads there, `h * w` where it reads the
    /// zero padding: what [`FusedConv::im2col`] computes row by row, made once per call, so
    /// that the small planes of grouped images (whose im2col rows are a few values long: 3 at
    /// AlexNet's 3x3 layer, 1 at its 1x1 ones) are one gather per tap.
    fn column_sources(&self, g: Geometry) -> Vec<usize> {
        let ((sh, sw), (ph, pw)) = (self.p.stride, self.p.padding);
        let mut sources = Vec::with_capacity(g.kh * g.kw * g.oh * g.ow);
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                for oy in 0..g.oh {
                    let iy = (oy * sh + ky).checked_sub(ph).filter(|&iy| iy < g.h);
                    for ox in 0..g.ow {
                        let ix = (ox * sw + kx).checked_sub(pw).filter(|&ix| ix < g.w);
                        // Index h * w is the zero after the plane (see `im2col_gathered`).
                        sources.push(match (iy, ix) {
                            (Some(iy), Some(ix)) => iy * g.w + ix,
                            _ => g.h * g.w,
                        });
                    }
                }
            }
        }
        sources
    }

    /// `y * scale + shift + residual`, then ReLU, on `cols` columns of each of the `c_out`
    /// channel rows at `dst` (rows `plane` apart; the residual has the same layout).
    ///
    /// One pass per row, in the same order of operations as [`Epilogue::apply_unfused`] (a
    /// missing scale multiplies by 1, which is exact; a missing shift or residual is not added,
    /// so a -0.0 stays -0.0), and ReLU as `v < 0 -> 0` so a NaN stays NaN. One pass rather than
    /// one per step: the steps were an eighth of ResNet-18's time, each re-reading the row.
    unsafe fn epilogue(&self, dst: *mut f32, residual: Option<&[f32]>, plane: usize, c_out: usize, cols: usize) {
        if self.scale.is_none() && self.shift.is_none() && residual.is_none() && !self.relu {
            return;
        }
        let relu = self.relu;
        let finish = move |v: f32| if relu && v < 0.0 { 0.0 } else { v };
        for c in 0..c_out {
            let row = std::slice::from_raw_parts_mut(dst.add(c * plane), cols);
            let s = self.scale.as_ref().map_or(1.0, |scale| scale[c]);
            let residual = residual.map(|r| &r[c * plane..c * plane + cols]);
            match (self.shift.as_ref().map(|shift| shift[c]), residual) {
                (Some(b), Some(r)) => row.iter_mut().zip(r).for_each(|(v, r)| *v = finish(*v * s + b + r)),
                (Some(b), None) => row.iter_mut().for_each(|v| *v = finish(*v * s + b)),
                (None, Some(r)) => row.iter_mut().zip(r).for_each(|(v, r)| *v = finish(*v * s + r)),
                (None, None) => row.iter_mut().for_each(|v| *v = finish(*v * s)),
            }
        }
    }
}

/// `dst [m, n] (row stride dst_rs) = w [m, k] @ rhs [k, n] (row stride rhs_rs)`, one thread.
///
/// # Safety
/// `rhs` and `dst` must be valid for those shapes and strides.
#[allow(clippy::too_many_arguments)]
unsafe fn multiply(w: &[f32], m: usize, k: usize, rhs: *const f32, rhs_rs: isize, n: usize, dst: *mut f32, dst_rs: isize) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs,
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
}
