//! Square-window pooling for inference on the CPU, with zero-area padding: PyTorch's
//! `F.max_pool2d(x, k, stride, padding)` (the padding never wins: it is -inf) and
//! `F.avg_pool2d(x, k, stride, padding, count_include_pad=False)` (the padding is left out of
//! the sum and of the count), floor mode, as pytorch-fid's InceptionV3 and torchvision's
//! AlexNet, VGG and ResNet stems use them.
//!
//! Why: candle has no padded pooling, so each pool was a padded copy of its input (a `cat` per
//! side), candle's pooling (a scalar loop per output over its window) and, for the average,
//! a pool of ones and a division: 16% of Inception's time (`perf record`). Here each (image,
//! channel) plane is one task of two passes: along each input row, the reduction of every
//! output column's window (a row of `ow` values), then down those rows for each output row,
//! over the window's rows that exist. The second pass is elementwise over whole rows and
//! vectorises. A sum adds a window's columns left to right, then its rows top to bottom, then
//! divides by the number of real pixels it covered.
//!
//! Inference only: where a gradient is tracked, on other devices and dtypes, [`pool2d`] is
//! candle's ops (padding, candle's pooling and the count's division). tests/fast_ops.rs checks
//! the two against each other.

use std::cell::RefCell;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_input::contiguous_f32;

/// Which reduction a window gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// The maximum (NaN wins, as in PyTorch).
    Max,
    /// The mean over the window's real pixels (`count_include_pad=False`).
    AverageOfReal,
}

/// `pool` over `kernel x kernel` windows `stride` apart, the input padded by `padding` on each
/// side of both axes; `x` `[N, C, H, W]`. As in PyTorch, the padding may be at most half the
/// window, and the output is `(H + 2 padding - kernel) / stride + 1` per axis (floor).
pub fn pool2d(x: &Tensor, pool: Pool, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if kernel == 0 || stride == 0 || padding > kernel / 2 || h + 2 * padding < kernel || w + 2 * padding < kernel {
        candle_core::bail!(
            "pooling {kernel}x{kernel}, stride {stride}, padding {padding} does not fit a {h}x{w} input \
             (the padding may be at most half the window, and the padded input at least the window)"
        )
    }
    if !x.device().is_cpu() || x.dtype() != DType::F32 || x.track_op() {
        return pool2d_candle(x, pool, kernel, stride, padding);
    }
    x.contiguous()?.apply_op1_no_bwd(&FusedPool { pool, kernel, stride, padding })
}

/// [`pool2d`] with candle's ops (every device; a backward where candle's pooling has one).
pub fn pool2d_candle(x: &Tensor, pool: Pool, kernel: usize, stride: usize, padding: usize) -> Result<Tensor> {
    let pad = |t: &Tensor, value: f32| -> Result<Tensor> {
        if padding == 0 {
            return Ok(t.clone());
        }
        let (n, c, h, w) = t.dims4()?;
        let col = Tensor::full(value, (n, c, h, padding), t.device())?.to_dtype(t.dtype())?;
        let t = Tensor::cat(&[&col, t, &col], 3)?;
        let row = Tensor::full(value, (n, c, padding, w + 2 * padding), t.device())?.to_dtype(t.dtype())?;
        Tensor::cat(&[&row, &t, &row], 2)
    };
    match pool {
        Pool::Max => pad(x, f32::NEG_INFINITY)?.max_pool2d_with_stride(kernel, stride),
        Pool::AverageOfReal => {
            let (_, _, h, w) = x.dims4()?;
            let sums = pad(x, 0.0)?.avg_pool2d_with_stride(kernel, stride)?;
            let ones = Tensor::ones((1, 1, h, w), x.dtype(), x.device())?;
            let counts = pad(&ones, 0.0)?.avg_pool2d_with_stride(kernel, stride)?;
            sums.broadcast_div(&counts)
        }
    }
}

struct FusedPool {
    pool: Pool,
    kernel: usize,
    stride: usize,
    padding: usize,
}

thread_local! {
    /// This thread's row-reduced plane, `[H, ow]`, kept between calls.
    static ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The input indices `lo .. hi` that output position `o` reads along an axis of `len`.
fn window(o: usize, stride: usize, padding: usize, kernel: usize, len: usize) -> (usize, usize) {
    let start = o * stride;
    (start.saturating_sub(padding), (start + kernel).saturating_sub(padding).min(len))
}

impl CustomOp1 for FusedPool {
    fn name(&self) -> &'static str {
        "fused-pool2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(storage, layout, "fused pooling")?;
        let (n, c, h, w) = layout.shape().dims4()?;
        let (k, s, p) = (self.kernel, self.stride, self.padding);
        let (oh, ow) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
        let mut out = vec![0f32; n * c * oh * ow];
        if out.is_empty() {
            return Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))));
        }
        let columns: Vec<(usize, usize)> = (0..ow).map(|ox| window(ox, s, p, k, w)).collect();
        out.par_chunks_mut(oh * ow).zip(x.par_chunks(h * w)).for_each(|(dst, src)| {
            ROWS.with(|rows| {
                let mut rows = rows.borrow_mut();
                if rows.len() < h * ow {
                    rows.resize(h * ow, 0.0);
                }
                let rows = &mut rows[..h * ow];
                // 1. Along each input row: every output column's window.
                for (row, line) in rows.chunks_exact_mut(ow).zip(src.chunks_exact(w)) {
                    for (r, &(lo, hi)) in row.iter_mut().zip(&columns) {
                        *r = match self.pool {
                            Pool::Max => line[lo..hi].iter().fold(f32::NEG_INFINITY, |m, &v| max(m, v)),
                            Pool::AverageOfReal => line[lo..hi].iter().fold(0.0, |t, &v| t + v),
                        };
                    }
                }
                // 2. Down the window's rows, for each output row.
                for (oy, out_row) in dst.chunks_exact_mut(ow).enumerate() {
                    let (lo, hi) = window(oy, s, p, k, h);
                    out_row.copy_from_slice(&rows[lo * ow..(lo + 1) * ow]);
                    for iy in lo + 1..hi {
                        let row = &rows[iy * ow..(iy + 1) * ow];
                        match self.pool {
                            Pool::Max => out_row.iter_mut().zip(row).for_each(|(o, &v)| *o = max(*o, v)),
                            Pool::AverageOfReal => out_row.iter_mut().zip(row).for_each(|(o, &v)| *o += v),
                        }
                    }
                    if self.pool == Pool::AverageOfReal {
                        let rows_in = (hi - lo) as f32;
                        for (o, &(cl, ch)) in out_row.iter_mut().zip(&columns) {
                            *o /= rows_in * (ch - cl) as f32;
                        }
                    }
                }
            });
        });
        Ok((CpuStorage::F32(out), Shape::from((n, c, oh, ow))))
    }
}

/// PyTorch's max-pool comparison: a NaN, once met, stays.
#[inline(always)]
fn max(m: f32, v: f32) -> f32 {
    if v > m || v.is_nan() {
        v
    } else {
        m
    }
}
