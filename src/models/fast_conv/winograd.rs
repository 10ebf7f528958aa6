//! Winograd F(2x2, 3x3) for the stride-1 3x3 convolutions of [`FusedConv`] (Lavin and Gray
//! 2016, "Fast Algorithms for Convolutional Neural Networks", section 4): each 2x2 block of
//! output pixels comes from the 4x4 block of input under it as
//! `Y = Aᵀ [Σ_c (G g_c Gᵀ) ⊙ (Bᵀ d_c B)] A`, so the sum over input channels becomes 16 gemms of
//! `[C_out, C_in] x [C_in, tiles]`: 16 multiplications per 2x2 outputs per channel pair where
//! the direct sum has 36, 2.25x fewer. These are the convolutions of the paper's UNet, VGG and
//! the ResNets' stages, most of their time.
//!
//! Why F(2x2, 3x3) and not a larger tile: its transforms hold only 0, ±1 and ±1/2 (exact in
//! binary), so its rounding stays near the direct sum's (tests/fast_ops.rs holds it to the same
//! tolerance, and the parity tests hold); F(4x4, 3x3) would save 4x, with factors up to 8 and
//! errors an order of magnitude larger.
//!
//! Work: where an image has at least [`GROUP_TILES`] tiles, a task is one image's band of
//! tile rows: the input transform into `[16, C_in, tiles]` (a per-thread buffer), the 16 gemms
//! into `[16, C_out, tiles]`, the output transform into the NCHW output, then the epilogue on
//! the rows just written. Smaller images go side by side in fixed groups (the last padded with
//! zero columns) and run in three parallel phases ([`FusedConv::winograd_groups`]). Either way
//! the work of an image depends on the geometry alone, so its output does not depend on its
//! batch. The transforms are plain elementwise loops, compiled a second time for AVX2 + FMA
//! ([`crate::models::vector_isa`]); the kernels' transform `[16, C_out, C_in]` is made once per
//! layer ([`super::KernelCache`]).
//!
//! What it gave, per layer (a batch of 64, 2 threads, best of 4 rounds, against the direct
//! path of the same build): 1.5x at 64 channels 32x32, 2.0x at 128 channels 16x16, 1.4x at 256
//! channels 8x8, 1.7x at 512 channels 4x4; the transforms are about a fifth of its time.

use std::cell::RefCell;

use rayon::prelude::*;

use super::kernel_cache::Derived;
use super::{at_least, multiply, ConvParams, FusedConv, Geometry, OutPtr};
#[cfg(target_arch = "x86_64")]
use crate::models::vector_isa::has_avx2_fma;

/// Tiles (2x2 output blocks) one task aims for: the gemms' column count.
const BAND_TILES: usize = 128;

/// Below this many tiles per image, images are grouped into one task: a group has
/// `GROUP_TILES / tiles` images (rounded up).
const GROUP_TILES: usize = 64;

/// Fewer input channels than this stay on the direct path: the gemms' inner dimension is
/// C_in, and at the stems' 3 channels the gemm runs at a fraction of its speed.
const MIN_CHANNELS: usize = 16;

thread_local! {
    /// This thread's transformed input of a task, `[16, C_in, tiles]`.
    static TRANSFORMED_INPUT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// This thread's gemm products of a task, `[16, C_out, tiles]`.
    static PRODUCTS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// This thread's scratch for the input transform ([`input_scratch_len`]).
    static ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// This thread's four outputs of a tile row's tiles, before they are interleaved.
    static OUTPUT_ROWS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Outputs narrower or shorter than this stay on the direct path: a 2x2 output is one tile
/// whose 4x4 input is three-quarters padding, and measured slower (VGG's 512-channel 2x2 layer
/// in LPIPS: 9.5 ms against 8.0 direct, one layer timed alone on a batch of 64, 2 threads).
const MIN_SIDE: usize = 4;

/// Whether a convolution goes through Winograd: a 3x3 kernel at stride 1 (any padding), with
/// enough channels for the gemms to run at speed and an output of at least 4x4.
pub(super) fn suits(g: &Geometry, p: ConvParams) -> bool {
    g.kh == 3
        && g.kw == 3
        && p.stride == (1, 1)
        && g.c_in >= MIN_CHANNELS
        && g.c_out >= MIN_CHANNELS
        && g.oh >= MIN_SIDE
        && g.ow >= MIN_SIDE
}

/// `G g Gᵀ` of one 3x3 filter (row-major), as 16 values `[a * 4 + b]`.
#[inline(always)]
fn filter_transform(g: &[f32]) -> [f32; 16] {
    // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]], first down the columns.
    let mut t = [[0.0f32; 3]; 4];
    for x in 0..3 {
        let (g0, g1, g2) = (g[x], g[3 + x], g[6 + x]);
        t[0][x] = g0;
        t[1][x] = 0.5 * (g0 + g1 + g2);
        t[2][x] = 0.5 * (g0 - g1 + g2);
        t[3][x] = g2;
    }
    let mut u = [0.0f32; 16];
    for (a, [g0, g1, g2]) in t.into_iter().enumerate() {
        u[4 * a] = g0;
        u[4 * a + 1] = 0.5 * (g0 + g1 + g2);
        u[4 * a + 2] = 0.5 * (g0 - g1 + g2);
        u[4 * a + 3] = g2;
    }
    u
}

/// `U[ξ][co][ci]`: every filter's transform, 16 `[C_out, C_in]` matrices.
fn transform_kernels(w: &[f32], c_out: usize, c_in: usize) -> Vec<f32> {
    let len = 16 * c_out * c_in;
    let mut u = Vec::<f32>::with_capacity(len);
    let dst = OutPtr(u.as_mut_ptr());
    (0..c_out).into_par_iter().for_each(|co| {
        let dst = dst;
        // SAFETY: elements (ξ, co, ·) are written by output channel co's task alone, and `u`
        // has room for all of them.
        unsafe { transform_filters_of(w, co, c_out, c_in, dst.0) };
    });
    // SAFETY: the loop wrote every (ξ, co, ci).
    unsafe { u.set_len(len) };
    u
}

/// `U[ξ][co][·]` of output channel `co`.
///
/// # Safety
/// `u` must be valid for `[16, c_out, c_in]`.
unsafe fn transform_filters_of(w: &[f32], co: usize, c_out: usize, c_in: usize, u: *mut f32) {
    for ci in 0..c_in {
        let at = (co * c_in + ci) * 9;
        for (xi, v) in filter_transform(&w[at..at + 9]).into_iter().enumerate() {
            *u.add((xi * c_out + co) * c_in + ci) = v;
        }
    }
}

/// The tiles one task computes: images `first .. first + count` (those that exist; the others
/// are zero columns), tile rows `row0 .. row0 + rows` of each.
#[derive(Debug, Clone, Copy)]
struct Task {
    first: usize,
    count: usize,
    row0: usize,
    rows: usize,
}

/// The tile grid of a convolution's output.
#[derive(Debug, Clone, Copy)]
struct Tiles {
    /// Tile rows and columns per image.
    th: usize,
    tw: usize,
}

/// `M[ξ] = U[ξ] @ V[ξ]` for one ξ of the 16: `[C_out, C_in] x [C_in, cols]`, where `v` and `m`
/// point at a task's `[16, C_in, cols]` and `[16, C_out, cols]`.
///
/// # Safety
/// `v` and `m` must be valid for those shapes.
unsafe fn multiply_frequency(u: &[f32], g: Geometry, xi: usize, v: *const f32, cols: usize, m: *mut f32) {
    let u = &u[xi * g.c_out * g.c_in..(xi + 1) * g.c_out * g.c_in];
    multiply(u, g.c_out, g.c_in, v.add(xi * g.c_in * cols), cols as isize, cols, m.add(xi * g.c_out * cols), cols as isize)
}

impl FusedConv {
    /// The whole convolution through Winograd, written at `dst` (`[N, C_out, oh, ow]`).
    pub(super) fn winograd(&self, x: &[f32], w: &[f32], residual: Option<&[f32]>, g: Geometry, dst: OutPtr) {
        let u = self.kernels.derived(Derived::Winograd, || transform_kernels(w, g.c_out, g.c_in));
        let tiles = Tiles { th: g.oh.div_ceil(2), tw: g.ow.div_ceil(2) };
        let per_image = tiles.th * tiles.tw;
        if per_image < GROUP_TILES {
            return self.winograd_groups(x, &u, residual, g, tiles, GROUP_TILES.div_ceil(per_image), dst);
        }
        let rows_per_band = (BAND_TILES / tiles.tw).clamp(1, tiles.th);
        let tasks: Vec<Task> = (0..g.n)
            .flat_map(|image| {
                (0..tiles.th).step_by(rows_per_band).map(move |row0| Task {
                    first: image,
                    count: 1,
                    row0,
                    rows: rows_per_band.min(tiles.th - row0),
                })
            })
            .collect();
        tasks.into_par_iter().for_each(|task| {
            let dst = dst;
            // SAFETY: a task writes only the output rows of its own tile rows of its own
            // image; no two tasks share one, and the output outlives the loop.
            unsafe { self.winograd_task(x, &u, residual, g, tiles, task, dst.0) };
        });
    }

    /// Small outputs: groups of `count` images side by side, in three parallel phases rather
    /// than one task per group, because a batch has few groups (a batch of 16 at 4x4 is one
    /// group of 64 tiles, which as one task would leave all but one thread idle, while narrower
    /// groups would run the gemms at half speed): every group's input transform, then each
    /// (group, ξ) gemm, then each image's output transform and epilogue. The buffers hold the
    /// whole batch's (a few MB at these sizes).
    #[allow(clippy::too_many_arguments)]
    fn winograd_groups(&self, x: &[f32], u: &[f32], residual: Option<&[f32]>, g: Geometry, tiles: Tiles, count: usize, dst: OutPtr) {
        let per_image = tiles.th * tiles.tw;
        let cols = count * per_image;
        let groups = g.n.div_ceil(count);
        let (v_len, m_len) = (16 * g.c_in * cols, 16 * g.c_out * cols);
        let image_len = g.c_in * g.h * g.w;
        // Zeroed: the last group's missing images stay zero columns.
        let mut v = vec![0.0f32; groups * v_len];
        v.par_chunks_mut(v_len).enumerate().for_each(|(k, v)| {
            let task = Task { first: k * count, count, row0: 0, rows: tiles.th };
            for j in 0..count.min(g.n - task.first) {
                let image = task.first + j;
                self.input_transform(&x[image * image_len..(image + 1) * image_len], g, tiles, task, v, cols, j * per_image);
            }
        });
        let mut m = Vec::<f32>::with_capacity(groups * m_len);
        let products = OutPtr(m.as_mut_ptr());
        (0..groups * 16).into_par_iter().for_each(|unit| {
            let products = products;
            let (k, xi) = (unit / 16, unit % 16);
            // SAFETY: unit (k, ξ) writes only its own [c_out, cols] block of `m`, which has
            // room for all of them.
            unsafe { multiply_frequency(u, g, xi, v[k * v_len..].as_ptr(), cols, products.0.add(k * m_len)) };
        });
        // SAFETY: the loop wrote every (group, ξ) block.
        unsafe { m.set_len(groups * m_len) };
        let plane = g.oh * g.ow;
        (0..g.n).into_par_iter().for_each(|image| {
            let dst = dst;
            let (k, j) = (image / count, image % count);
            let task = Task { first: k * count, count, row0: 0, rows: tiles.th };
            let at = image * g.c_out * plane;
            // SAFETY: each image's task writes only that image's output planes.
            unsafe {
                output_transform(&m[k * m_len..(k + 1) * m_len], g, tiles, task, cols, j * per_image, dst.0.add(at));
                self.epilogue(dst.0.add(at), residual.map(|r| &r[at..]), plane, g.c_out, plane);
            }
        });
    }

    /// # Safety
    /// `out` must be valid for the whole output.
    #[allow(clippy::too_many_arguments)]
    unsafe fn winograd_task(&self, x: &[f32], u: &[f32], residual: Option<&[f32]>, g: Geometry, tiles: Tiles, task: Task, out: *mut f32) {
        let per_image = task.rows * tiles.tw;
        let cols = task.count * per_image;
        TRANSFORMED_INPUT.with(|v| {
            PRODUCTS.with(|m| {
                let (mut v, mut m) = (v.borrow_mut(), m.borrow_mut());
                let (v, m) = (at_least(&mut v, 16 * g.c_in * cols), at_least(&mut m, 16 * g.c_out * cols));
                for j in 0..task.count {
                    let image = task.first + j;
                    if image < g.n {
                        let input = &x[image * g.c_in * g.h * g.w..(image + 1) * g.c_in * g.h * g.w];
                        self.input_transform(input, g, tiles, task, v, cols, j * per_image);
                    } else {
                        for row in v.chunks_exact_mut(cols) {
                            row[j * per_image..(j + 1) * per_image].fill(0.0);
                        }
                    }
                }
                for xi in 0..16 {
                    multiply_frequency(u, g, xi, v.as_ptr(), cols, m.as_mut_ptr());
                }
                let plane = g.oh * g.ow;
                let (oy0, oy1) = (2 * task.row0, (2 * (task.row0 + task.rows)).min(g.oh));
                for j in 0..task.count.min(g.n.saturating_sub(task.first)) {
                    let at = (task.first + j) * g.c_out * plane;
                    output_transform(m, g, tiles, task, cols, j * per_image, out.add(at));
                    let band = at + oy0 * g.ow;
                    self.epilogue(out.add(band), residual.map(|r| &r[band..]), plane, g.c_out, (oy1 - oy0) * g.ow);
                }
            })
        });
    }

    /// `Bᵀ d B` of every tile of the task in one image, at columns `col0 ..` of `v`
    /// (`[16, C_in, cols]`).
    #[allow(clippy::too_many_arguments)]
    fn input_transform(&self, input: &[f32], g: Geometry, tiles: Tiles, task: Task, v: &mut [f32], cols: usize, col0: usize) {
        let (at, padding) = (Columns { cols, col0 }, self.p.padding);
        ROWS.with(|rows| {
            let mut rows = rows.borrow_mut();
            let rows = at_least(&mut rows, input_scratch_len(tiles, task));
            #[cfg(target_arch = "x86_64")]
            if has_avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA.
                return unsafe { input_transform_avx2(input, g, tiles, task, v, at, padding, rows) };
            }
            input_transform_body(input, g, tiles, task, v, at, padding, rows)
        });
    }
}

/// Where a task's tiles of one image go in its buffers.
#[derive(Debug, Clone, Copy)]
struct Columns {
    /// The task's column count (the buffers' row length).
    cols: usize,
    /// This image's first column.
    col0: usize,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform_avx2(
    input: &[f32],
    g: Geometry,
    tiles: Tiles,
    task: Task,
    v: &mut [f32],
    at: Columns,
    padding: (usize, usize),
    rows: &mut [f32],
) {
    input_transform_body(input, g, tiles, task, v, at, padding, rows)
}

/// Input column `ix` of a row, zero outside it.
#[inline(always)]
fn column(src: &[f32], ix: isize) -> f32 {
    if ix >= 0 && (ix as usize) < src.len() {
        src[ix as usize]
    } else {
        0.0
    }
}

/// `a - b`, `a + b` elementwise into `out` (the transforms' two steps).
#[inline(always)]
fn difference(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = *a - *b;
    }
}

#[inline(always)]
fn sum(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = *a + *b;
    }
}

/// Per channel: each padded input row of the task's tile rows, split into even and odd
/// columns (even[k] is input column 2k - pw, odd[k] is 2k + 1 - pw; zero outside the image), so
/// that a tile's four columns are elements tc and tc + 1 of the two halves; `B` across each
/// tile's columns (`d0 - d2, d1 + d2, d2 - d1, d1 - d3`) of every row, kept apart for even and
/// odd rows; then `Bᵀ` down the rows (the same combination), which for the rows of all the
/// task's tiles at once is a plain elementwise pass over `rows * tw` values straight into `v`.
/// Loops that long, rather than one per tile row, are what makes this cheap next to the gemms.
/// `scratch` holds [`input_scratch_len`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn input_transform_body(
    input: &[f32],
    g: Geometry,
    tiles: Tiles,
    task: Task,
    v: &mut [f32],
    at: Columns,
    padding: (usize, usize),
    scratch: &mut [f32],
) {
    let ((ph, pw), tw) = (padding, tiles.tw);
    let halves = tw + 1;
    // Both halves read inside the row for k in [k_lo, k_hi), a plain run of the input's pairs;
    // the at most two halves on each side are read one by one. (Not a padded copy of the row
    // first: at these widths the calls to memset and memcpy cost more than the transform.)
    let k_hi = ((g.w + pw) / 2).min(halves);
    let k_lo = pw.div_ceil(2).min(k_hi);
    // combined[b][parity]: `B`'s output b of the padded rows of that parity, [rows + 1, tw].
    let plane = (task.rows + 1) * tw;
    let (split, combined) = scratch[..input_scratch_len(tiles, task)].split_at_mut(2 * halves);
    let (even, odd) = split.split_at_mut(halves);
    let len = task.rows * tw;
    for c in 0..g.c_in {
        let channel = &input[c * g.h * g.w..(c + 1) * g.h * g.w];
        for r in 0..2 * task.rows + 2 {
            let (parity, row) = (r % 2, r / 2);
            let at_row = |b: usize| (2 * b + parity) * plane + row * tw;
            let iy = (2 * task.row0 + r) as isize - ph as isize;
            if iy < 0 || iy >= g.h as isize {
                for b in 0..4 {
                    combined[at_row(b)..at_row(b) + tw].fill(0.0);
                }
                continue;
            }
            let src = &channel[iy as usize * g.w..(iy as usize + 1) * g.w];
            for k in (0..k_lo).chain(k_hi..halves) {
                let ix = (2 * k) as isize - pw as isize;
                even[k] = column(src, ix);
                odd[k] = column(src, ix + 1);
            }
            if k_lo < k_hi {
                let pairs = src[2 * k_lo - pw..2 * k_hi - pw].chunks_exact(2);
                for ((e, o), pair) in even[k_lo..k_hi].iter_mut().zip(&mut odd[k_lo..k_hi]).zip(pairs) {
                    *e = pair[0];
                    *o = pair[1];
                }
            }
            // d0, d1, d2, d3 of tile tc are even[tc], odd[tc], even[tc + 1], odd[tc + 1].
            difference(&mut combined[at_row(0)..at_row(0) + tw], &even[..tw], &even[1..]);
            sum(&mut combined[at_row(1)..at_row(1) + tw], &odd[..tw], &even[1..]);
            difference(&mut combined[at_row(2)..at_row(2) + tw], &even[1..], &odd[..tw]);
            difference(&mut combined[at_row(3)..at_row(3) + tw], &odd[..tw], &odd[1..]);
        }
        // Tile row tr reads padded rows 2tr .. 2tr + 4: even rows tr and tr + 1 and odd rows tr
        // and tr + 1, i.e. rows 0 and 1 of each parity shifted by tr, so all tile rows at once.
        for b in 0..4 {
            let (e, o) = (&combined[2 * b * plane..(2 * b + 1) * plane], &combined[(2 * b + 1) * plane..(2 * b + 2) * plane]);
            let (e0, e1, o0, o1) = (&e[..len], &e[tw..tw + len], &o[..len], &o[tw..tw + len]);
            let row = |a: usize| ((4 * a + b) * g.c_in + c) * at.cols + at.col0;
            difference(&mut v[row(0)..row(0) + len], e0, e1);
            sum(&mut v[row(1)..row(1) + len], o0, e1);
            difference(&mut v[row(2)..row(2) + len], e1, o0);
            difference(&mut v[row(3)..row(3) + len], o0, o1);
        }
    }
}

/// The scratch [`input_transform_body`] needs for a task: two halves of a padded row and
/// eight `[rows + 1, tw]` planes.
fn input_scratch_len(tiles: Tiles, task: Task) -> usize {
    2 * (tiles.tw + 1) + 8 * (task.rows + 1) * tiles.tw
}

/// `Aᵀ M A` of every tile of the task in one image (columns `col0 ..` of `m`,
/// `[16, C_out, cols]`), written to that image's output planes at `out`.
///
/// # Safety
/// `out` must be valid for the image's `[C_out, oh, ow]`.
unsafe fn output_transform(m: &[f32], g: Geometry, tiles: Tiles, task: Task, cols: usize, col0: usize, out: *mut f32) {
    let at = Columns { cols, col0 };
    OUTPUT_ROWS.with(|buf| {
        let mut buf = buf.borrow_mut();
        let y = at_least(&mut buf, 4 * tiles.tw);
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA; `out` as the caller promised.
            return output_transform_avx2(m, g, tiles, task, at, out, y);
        }
        output_transform_body(m, g, tiles, task, at, out, y)
    });
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_transform_avx2(m: &[f32], g: Geometry, tiles: Tiles, task: Task, at: Columns, out: *mut f32, y: &mut [f32]) {
    output_transform_body(m, g, tiles, task, at, out, y)
}

/// Output row `row` (`ow` long) from a tile row's left and right outputs, interleaved; the
/// last tile's right column is dropped where `ow` is odd.
#[inline(always)]
fn interleave(row: &mut [f32], left: &[f32], right: &[f32]) {
    for ((pair, l), r) in row.chunks_exact_mut(2).zip(left).zip(right) {
        pair[0] = *l;
        pair[1] = *r;
    }
    if row.len() % 2 == 1 {
        row[row.len() - 1] = left[row.len() / 2];
    }
}

/// Per channel and tile row: `Aᵀ` down each tile's rows (`m0 + m1 + m2, m1 - m2 - m3`), then
/// `A` across its columns, as loops over the row's tiles into four outputs (`y`, `4 * tw`),
/// then interleaved into the two output rows; a row past an odd output's edge is dropped.
///
/// # Safety
/// `out` must be valid for the image's `[C_out, oh, ow]`.
#[inline(always)]
unsafe fn output_transform_body(m: &[f32], g: Geometry, tiles: Tiles, task: Task, at: Columns, out: *mut f32, y: &mut [f32]) {
    let plane = g.oh * g.ow;
    let tw = tiles.tw;
    let (y01, y23) = y[..4 * tw].split_at_mut(2 * tw);
    let (y0, y1) = y01.split_at_mut(tw);
    let (y2, y3) = y23.split_at_mut(tw);
    for co in 0..g.c_out {
        let plane_out = out.add(co * plane);
        for tr in task.row0..task.row0 + task.rows {
            let t0 = at.col0 + (tr - task.row0) * tw;
            let base = m[co * at.cols + t0..].as_ptr();
            let step = g.c_out * at.cols;
            for k in 0..tw {
                let q = |xi: usize| *base.add(xi * step + k);
                let (a0, a1, a2, a3) = (q(0) + q(4) + q(8), q(1) + q(5) + q(9), q(2) + q(6) + q(10), q(3) + q(7) + q(11));
                let (b0, b1, b2, b3) = (q(4) - q(8) - q(12), q(5) - q(9) - q(13), q(6) - q(10) - q(14), q(7) - q(11) - q(15));
                *y0.get_unchecked_mut(k) = a0 + a1 + a2;
                *y1.get_unchecked_mut(k) = a1 - a2 - a3;
                *y2.get_unchecked_mut(k) = b0 + b1 + b2;
                *y3.get_unchecked_mut(k) = b1 - b2 - b3;
            }
            let oy = 2 * tr;
            interleave(std::slice::from_raw_parts_mut(plane_out.add(oy * g.ow), g.ow), y0, y1);
            if oy + 1 < g.oh {
                interleave(std::slice::from_raw_parts_mut(plane_out.add((oy + 1) * g.ow), g.ow), y2, y3);
            }
        }
    }
}
