//! PNG figures for the run report (DESIGN.md §5): confusion-matrix heat maps and per-class RCA
//! bars.
//!
//! Conventions follow `metrics::rca` and scikit-learn's `ConfusionMatrixDisplay`: rows = true
//! (intended) class from top to bottom, columns = predicted class from left to right, colour =
//! share of the row (like `normalize="true"`, so classes of different support compare) with the
//! raw count written in each cell. Colours are the ColorBrewer "Blues" ramp (matplotlib's
//! `Blues`).
//!
//! Shapes and the bitmap are plotters' bitmap backend drawing into an RGB buffer in memory; the
//! PNG is encoded with `image` 0.25 (`files::png`) and written through the one atomic writer
//! (`files::atomic`, fault point `figure.write`), so a full disk is an error naming the figure,
//! never an empty file; text is the bundled DejaVu
//! Sans (`assets/`) rasterised with `ab_glyph` (see [`Pen`] for why not plotters' text), so
//! figures look the same on every machine and need no system fonts. Layout is computed in pixels from measured text, so long class names and
//! many classes grow the image instead of being clipped.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ab_glyph::{point, Font, FontRef, PxScale, ScaleFont};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::HPos;

/// DejaVu Sans, see `assets/README.md` for origin and licence.
const FONT_BYTES: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
/// Bitmaps beyond this edge length would take gigabytes; refuse rather than exhaust memory.
const MAX_EDGE: u32 = 16_384;
/// Class names longer than this are abbreviated with an ellipsis on the axes.
const MAX_LABEL_CHARS: usize = 18;

/// Errors from drawing a figure; every message names the output file.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    #[error("cannot load the bundled font for figure {}", .path.display())]
    Font { path: PathBuf },
    #[error("cannot draw figure {}: {detail}", .path.display())]
    Input { path: PathBuf, detail: String },
    #[error("figure {} would be {width}x{height} pixels, more than {MAX_EDGE} on a side", .path.display())]
    TooLarge { path: PathBuf, width: u32, height: u32 },
    #[error("cannot draw figure {}: {message}", .path.display())]
    Draw { path: PathBuf, message: String },
    #[error("figure \"{}\": cannot write: {message}", .path.display())]
    Write { path: PathBuf, message: String },
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, Shift>;

const INK: RGBColor = RGBColor(33, 33, 33);
const MUTED: RGBColor = RGBColor(110, 110, 110);
const GRID: RGBColor = RGBColor(222, 222, 222);
const EMPTY_ROW: RGBColor = RGBColor(238, 238, 238);
const BAR: RGBColor = RGBColor(49, 130, 189);
const PARITY: RGBColor = RGBColor(60, 60, 60);
const GLOBAL: RGBColor = RGBColor(214, 39, 40);

/// ColorBrewer Blues (9 classes), the anchors of matplotlib's `Blues`.
const BLUES: [(u8, u8, u8); 9] = [
    (247, 251, 255),
    (222, 235, 247),
    (198, 219, 239),
    (158, 202, 225),
    (107, 174, 214),
    (66, 146, 198),
    (33, 113, 181),
    (8, 81, 156),
    (8, 48, 107),
];

/// Colour of a share in [0, 1] on the Blues ramp (linear between anchors).
fn blues(share: f64) -> RGBColor {
    let s = if share.is_finite() { share.clamp(0.0, 1.0) } else { 0.0 };
    let x = s * (BLUES.len() - 1) as f64;
    let i = (x.floor() as usize).min(BLUES.len() - 2);
    let f = x - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (BLUES[i], BLUES[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

/// Black or white, whichever reads better on `bg` (relative luminance threshold).
fn text_on(bg: RGBColor) -> RGBColor {
    let lum = (0.2126 * bg.0 as f64 + 0.7152 * bg.1 as f64 + 0.0722 * bg.2 as f64) / 255.0;
    if lum < 0.5 {
        WHITE
    } else {
        INK
    }
}

/// Text rasteriser for the bundled font.
///
/// Text is drawn with `ab_glyph` directly rather than through plotters' `ab_glyph` text
/// support: plotters 0.3.7 places each glyph's bitmap at the caret without its left side bearing,
/// which visibly mis-spaces ordinary words ("Jang Wonyoun g", "0 .7%"). Shapes, the bitmap and
/// PNG encoding still go through plotters; only glyph placement is ours.
struct Pen {
    face: &'static FontRef<'static>,
}

impl Pen {
    /// The bundled font, parsed once per process.
    fn new(path: &Path) -> Result<Pen, FigureError> {
        static FACE: OnceLock<Option<FontRef<'static>>> = OnceLock::new();
        FACE.get_or_init(|| FontRef::try_from_slice(FONT_BYTES).ok())
            .as_ref()
            .map(|face| Pen { face })
            .ok_or_else(|| FigureError::Font { path: path.to_path_buf() })
    }

    /// Advance width of `s` in pixels at pixel height `size`, with kerning.
    fn advance(&self, size: f64, s: &str) -> f32 {
        let sf = self.face.as_scaled(PxScale::from(size as f32));
        let mut x = 0.0;
        let mut prev = None;
        for c in s.chars() {
            let id = sf.glyph_id(c);
            if let Some(p) = prev {
                x += sf.kern(p, id);
            }
            x += sf.h_advance(id);
            prev = Some(id);
        }
        x
    }

    /// Width and line height in pixels of `s` at `size`, unrotated.
    fn measure(&self, size: f64, s: &str) -> (u32, u32) {
        let sf = self.face.as_scaled(PxScale::from(size as f32));
        (self.advance(size, s).ceil() as u32, (sf.ascent() - sf.descent()).ceil() as u32)
    }

    fn widest(&self, size: f64, labels: &[String]) -> u32 {
        labels.iter().map(|l| self.measure(size, l).0).max().unwrap_or(0)
    }

    /// Draws `s` anchored horizontally by `h` at `x` and with the middle of its capitals at `y`,
    /// so labels line up with the cells and ticks they name. `rotated` turns it 90° anticlockwise
    /// (reading bottom to top), about the same anchor.
    #[allow(clippy::too_many_arguments)]
    fn text(&self, area: &Area, s: &str, (x, y): (i32, i32), size: f64, color: RGBColor, h: HPos, rotated: bool) -> Result<(), String> {
        let sf = self.face.as_scaled(PxScale::from(size as f32));
        let width = self.advance(size, s);
        let x0 = match h {
            HPos::Left => 0.0,
            HPos::Center => -width / 2.0,
            HPos::Right => -width,
        };
        let cap = sf.outline_glyph(sf.scaled_glyph('H')).map_or(size as f32 * 0.7, |g| -g.px_bounds().min.y);
        let baseline = (cap / 2.0).round();
        let mut caret = x0;
        let mut prev = None;
        let mut pixels: Vec<(i32, i32, f32)> = Vec::new();
        for c in s.chars() {
            let id = sf.glyph_id(c);
            if let Some(p) = prev {
                caret += sf.kern(p, id);
            }
            let glyph = id.with_scale_and_position(sf.scale(), point(caret, baseline));
            if let Some(outline) = sf.outline_glyph(glyph) {
                let b = outline.px_bounds();
                let (bx, by) = (b.min.x as i32, b.min.y as i32);
                outline.draw(|gx, gy, cov| {
                    if cov > 0.0 {
                        pixels.push((bx + gx as i32, by + gy as i32, cov));
                    }
                });
            }
            caret += sf.h_advance(id);
            prev = Some(id);
        }
        for (lx, ly, cov) in pixels {
            let at = if rotated { (x + ly, y - lx) } else { (x + lx, y + ly) };
            area.draw_pixel(at, &color.mix(cov.min(1.0) as f64)).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// A class name short enough for an axis: at most [`MAX_LABEL_CHARS`] characters.
fn abbreviate(name: &str) -> String {
    if name.chars().count() <= MAX_LABEL_CHARS {
        name.to_string()
    } else {
        let head: String = name.chars().take(MAX_LABEL_CHARS - 1).collect();
        format!("{}…", head.trim_end())
    }
}

fn rect(area: &Area, a: (i32, i32), b: (i32, i32), color: RGBColor, fill: bool) -> Result<(), String> {
    let style = if fill { color.filled() } else { color.stroke_width(1) };
    area.draw(&Rectangle::new([a, b], style)).map_err(|e| e.to_string())
}

fn line(area: &Area, a: (i32, i32), b: (i32, i32), color: RGBColor, width: u32) -> Result<(), String> {
    area.draw(&PathElement::new(vec![a, b], color.stroke_width(width))).map_err(|e| e.to_string())
}

/// A horizontal dashed line from `x0` to `x1` at `y`.
fn dashed(area: &Area, x0: i32, x1: i32, y: i32, color: RGBColor, width: u32) -> Result<(), String> {
    let (dash, gap) = (10, 6);
    let mut x = x0;
    while x < x1 {
        line(area, (x, y), ((x + dash).min(x1), y), color, width)?;
        x += dash + gap;
    }
    Ok(())
}

fn check_size(path: &Path, width: u32, height: u32) -> Result<(), FigureError> {
    if width > MAX_EDGE || height > MAX_EDGE {
        return Err(FigureError::TooLarge { path: path.to_path_buf(), width, height });
    }
    Ok(())
}

/// Runs `draw` on a white `width`x`height` bitmap in memory and writes it to `path` as a PNG.
fn render(path: &Path, (width, height): (u32, u32), draw: impl FnOnce(&Area) -> Result<(), String>) -> Result<(), FigureError> {
    check_size(path, width, height)?;
    let err = |message: String| FigureError::Draw { path: path.to_path_buf(), message };
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let area = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        area.fill(&WHITE).map_err(|e| err(e.to_string()))?;
        draw(&area).map_err(err)?;
        area.present().map_err(|e| err(e.to_string()))?;
    }
    let write_err = |message: String| FigureError::Write { path: path.to_path_buf(), message };
    let png = crate::files::png::encode_rgb8(width, height, &rgb).map_err(|e| write_err(e.to_string()))?;
    crate::files::atomic::write(path, &png, "figure.write").map_err(|e| write_err(e.to_string()))
}

/// Share as a short percentage: one decimal below 10% so small confusions do not read as 0%.
fn percent(share: f64) -> String {
    let p = share * 100.0;
    if p > 0.0 && p < 0.05 {
        "<0.1%".to_string()
    } else if p > 0.0 && p < 9.95 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// Confusion-matrix heat map: rows = true (intended) class, first class at the top; columns =
/// predicted class. Cell colour is the row-normalised share; each cell shows its count and share.
/// A row with no items is drawn grey with "–" for the share instead of dividing by zero.
pub fn confusion_heatmap(path: &Path, title: &str, classes: &[String], confusion: &[Vec<u64>]) -> Result<(), FigureError> {
    let pen = Pen::new(path)?;
    let n = classes.len();
    let input = |detail: String| FigureError::Input { path: path.to_path_buf(), detail };
    if n == 0 {
        return Err(input("no classes to draw".into()));
    }
    if confusion.len() != n {
        return Err(input(format!("confusion matrix has {} rows for {n} classes", confusion.len())));
    }
    if let Some((r, row)) = confusion.iter().enumerate().find(|(_, row)| row.len() != n) {
        return Err(input(format!("confusion matrix row {r} has {} columns for {n} classes", row.len())));
    }

    let labels: Vec<String> = classes.iter().map(|c| abbreviate(c)).collect();
    let support: Vec<u64> = confusion.iter().map(|r| r.iter().sum()).collect();
    let support_labels: Vec<String> = support.iter().map(|s| format!("n = {s}")).collect();

    // Cells shrink as classes grow, within limits that keep a 4-digit count legible.
    // Saturating: an absurd class count must end in TooLarge, not an overflow panic.
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    let cell: u32 = (720 / n32).clamp(40, 120);
    let grid = cell.saturating_mul(n32);
    let (title_size, axis_size, tick_size, note_size) = (22.0, 17.0, 15.0, 13.0);
    let pad = 16;
    let gap = 8;

    let title_h = pen.measure(title_size, title).1.max(1);
    let axis_h = pen.measure(axis_size, "Ag").1;
    let tick_h = pen.measure(tick_size, "Ag").1;
    let label_w = pen.widest(tick_size, &labels);
    let x_rotated = label_w + 6 > cell;
    let x_label_h = if x_rotated { label_w } else { tick_h };
    let support_w = pen.widest(note_size, &support_labels);
    let bar_w = 18;
    let bar_tick_w = pen.measure(note_size, "100%").0;
    let legend_title = "share of row";
    let legend_title_h = pen.measure(note_size, legend_title).1;

    let left = pad + axis_h + gap + label_w + gap;
    let top = pad + title_h + gap + 12 + legend_title_h;
    let right_block = gap + support_w + 2 * gap + bar_w + 6 + bar_tick_w + pad;
    let bottom = gap + x_label_h + gap + axis_h + pad;
    let title_w = pen.measure(title_size, title).0 + 2 * pad;
    let content_w = left.saturating_add(grid).saturating_add(right_block);
    let width = content_w.max(title_w);
    // Centre the matrix under a title wider than it.
    let x_off = (width - content_w) / 2;
    let height = top.saturating_add(grid).saturating_add(bottom);

    render(path, (width, height), |area| {
        let (gx, gy) = ((left + x_off) as i32, top as i32);
        let cell_i = cell as i32;
        let grid_i = grid as i32;
        let center = (width / 2) as i32;
        pen.text(area, title, (center, (pad + title_h / 2) as i32), title_size, INK, HPos::Center, false)?;

        for (t, row) in confusion.iter().enumerate() {
            let y0 = gy + t as i32 * cell_i;
            let total = support[t];
            for (p, &count) in row.iter().enumerate() {
                let x0 = gx + p as i32 * cell_i;
                let share = (total > 0).then(|| count as f64 / total as f64);
                let bg = share.map_or(EMPTY_ROW, blues);
                rect(area, (x0, y0), (x0 + cell_i, y0 + cell_i), bg, true)?;
                rect(area, (x0, y0), (x0 + cell_i, y0 + cell_i), WHITE, false)?;
                let fg = text_on(bg);
                let count_s = count.to_string();
                let share_s = share.map_or_else(|| "–".to_string(), percent);
                // Largest font up to 16px at which the count fits the cell with a margin.
                let mut size = (cell as f64 * 0.26).clamp(10.0, 16.0);
                while size > 8.0 && pen.measure(size, &count_s).0 + 6 > cell {
                    size -= 1.0;
                }
                let cx = x0 + cell_i / 2;
                let cy = y0 + cell_i / 2;
                // Small cells keep only the count: below ~48 px the share would be under 9 px
                // and unreadable, and the colour already shows it.
                if cell >= 48 {
                    let small = (size * 0.78).max(8.0);
                    let count_at = (cx, cy - (size * 0.45) as i32);
                    pen.text(area, &count_s, count_at, size, fg, HPos::Center, false)?;
                    let share_at = (cx, cy + (small * 0.75) as i32);
                    pen.text(area, &share_s, share_at, small, fg, HPos::Center, false)?;
                } else {
                    pen.text(area, &count_s, (cx, cy), size, fg, HPos::Center, false)?;
                }
            }
            // Row label and support, centred on the row.
            let cy = y0 + cell_i / 2;
            pen.text(area, &labels[t], (gx - gap as i32, cy), tick_size, INK, HPos::Right, false)?;
            pen.text(area, &support_labels[t], (gx + grid_i + gap as i32, cy), note_size, MUTED, HPos::Left, false)?;
        }
        rect(area, (gx, gy), (gx + grid_i, gy + grid_i), MUTED, false)?;

        // Column labels: horizontal when they fit the cell, else reading upwards.
        for (p, label) in labels.iter().enumerate() {
            let cx = gx + p as i32 * cell_i + cell_i / 2;
            let below = gy + grid_i + gap as i32;
            if x_rotated {
                pen.text(area, label, (cx, below), tick_size, INK, HPos::Right, true)?;
            } else {
                pen.text(area, label, (cx, below + (tick_h / 2) as i32), tick_size, INK, HPos::Center, false)?;
            }
        }

        // Axis titles.
        let x_title_y = gy + grid_i + (gap + x_label_h + gap + axis_h / 2) as i32;
        pen.text(area, "predicted class", (gx + grid_i / 2, x_title_y), axis_size, INK, HPos::Center, false)?;
        let y_title_x = (x_off + pad + axis_h / 2) as i32;
        pen.text(area, "true (intended) class", (y_title_x, gy + grid_i / 2), axis_size, INK, HPos::Center, true)?;

        // Colour bar for the row share, 100% at the top like the ramp's darkest end.
        let bx = gx + grid_i + (gap + support_w + 2 * gap) as i32;
        for i in 0..grid_i {
            let share = 1.0 - i as f64 / (grid_i - 1).max(1) as f64;
            line(area, (bx, gy + i), (bx + bar_w as i32 - 1, gy + i), blues(share), 1)?;
        }
        rect(area, (bx, gy), (bx + bar_w as i32, gy + grid_i), MUTED, false)?;
        for k in 0..=4 {
            let y = gy + grid_i - (k * grid_i) / 4;
            let y = y.min(gy + grid_i - 1);
            line(area, (bx + bar_w as i32, y), (bx + bar_w as i32 + 4, y), MUTED, 1)?;
            pen.text(area, &format!("{}%", k * 25), (bx + bar_w as i32 + 6, y), note_size, MUTED, HPos::Left, false)?;
        }
        let legend_y = gy - 8 - (legend_title_h / 2) as i32;
        pen.text(area, legend_title, (bx + bar_w as i32 / 2, legend_y), note_size, MUTED, HPos::Center, false)?;
        Ok(())
    })
}

/// A "nice" tick step (1, 2, 2.5 or 5 × 10^k) giving about `target` intervals over `span`.
fn nice_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 2.5 {
        2.5
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Per-class RCA bars with reference lines at 1.0 (generated as recognisable as real) and at
/// the global RCA. Classes without a value (no evidence, see `metrics::rca::relative_accuracy`)
/// get no bar and an "n/a" label, so they cannot be mistaken for an RCA of 0.
pub fn rca_bars(path: &Path, classes: &[String], per_class: &[Option<f64>], global: Option<f64>) -> Result<(), FigureError> {
    let pen = Pen::new(path)?;
    let n = classes.len();
    let input = |detail: String| FigureError::Input { path: path.to_path_buf(), detail };
    if n == 0 {
        return Err(input("no classes to draw".into()));
    }
    if per_class.len() != n {
        return Err(input(format!("{} per-class RCA values for {n} classes", per_class.len())));
    }
    // Non-finite or negative values cannot come from relative_accuracy; show them as missing
    // rather than drawing nonsense.
    let clean = |v: Option<f64>| v.filter(|x| x.is_finite() && *x >= 0.0);
    let values: Vec<Option<f64>> = per_class.iter().map(|v| clean(*v)).collect();
    let global = clean(global);

    let labels: Vec<String> = classes.iter().map(|c| abbreviate(c)).collect();
    let value_labels: Vec<String> = values.iter().map(|v| v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.2}"))).collect();
    let global_s = global.map_or_else(|| "n/a".to_string(), |g| format!("{g:.3}"));
    let title = "Relative classification accuracy by class";

    let max_v = values.iter().flatten().copied().chain(global).fold(1.0f64, f64::max);
    // 8% headroom leaves room for the value written above the tallest bar.
    let step = nice_step(max_v * 1.08, 5.0);
    let y_max = ((max_v * 1.08) / step).ceil() * step;
    let ticks: Vec<f64> = (0..).map(|k| k as f64 * step).take_while(|t| *t <= y_max + step * 1e-9).collect();
    // As many decimals as the step needs (0.25 → 2), at least one so the axis reads as a ratio.
    let decimals = (1..=3)
        .find(|d| {
            let scaled = step * 10f64.powi(*d);
            (scaled - scaled.round()).abs() < 1e-6
        })
        .unwrap_or(3) as usize;
    let tick_labels: Vec<String> = ticks.iter().map(|t| format!("{t:.decimals$}")).collect();

    let (title_size, axis_size, tick_size, note_size) = (20.0, 17.0, 15.0, 13.0);
    let pad = 16u32;
    let gap = 8u32;
    // A minimum plot width keeps two or three bars from looking like a thumbnail.
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    let plot_w = ((640 / n32).clamp(48, 110).saturating_mul(n32)).max(400);
    let slot = plot_w / n32;
    let plot_h = 380u32;

    let title_h = pen.measure(title_size, title).1;
    let axis_h = pen.measure(axis_size, "Ag").1;
    let tick_h = pen.measure(tick_size, "Ag").1;
    let label_w = pen.widest(tick_size, &labels);
    let x_rotated = label_w + 6 > slot;
    let x_label_h = if x_rotated { label_w } else { tick_h };
    let y_tick_w = pen.widest(tick_size, &tick_labels);
    let legend = [("parity with real data (1.0)".to_string(), PARITY, false), (format!("global RCA ({global_s})"), GLOBAL, true)];
    let legend_w = legend.iter().map(|(l, _, _)| pen.measure(note_size, l).0).max().unwrap_or(0);
    let value_h = pen.measure(note_size, "0").1;

    let left = pad + axis_h + gap + y_tick_w + gap;
    let top = pad + title_h + gap + value_h + gap;
    let right = gap * 2 + 30 + gap + legend_w + pad;
    let bottom = gap + x_label_h + gap + axis_h + pad;
    let title_w = pen.measure(title_size, title).0 + 2 * pad;
    let content_w = left.saturating_add(plot_w).saturating_add(right);
    let width = content_w.max(title_w);
    // Centre the plot under a title wider than it.
    let x_off = (width - content_w) / 2;
    let height = top + plot_h + bottom;

    render(path, (width, height), |area| {
        let (px, py) = ((left + x_off) as i32, top as i32);
        let (pw, ph) = (plot_w as i32, plot_h as i32);
        let y_of = |v: f64| py + ph - ((v / y_max) * ph as f64).round() as i32;
        pen.text(area, title, ((width / 2) as i32, (pad + title_h / 2) as i32), title_size, INK, HPos::Center, false)?;

        for (t, l) in ticks.iter().zip(&tick_labels) {
            let y = y_of(*t);
            line(area, (px, y), (px + pw, y), GRID, 1)?;
            pen.text(area, l, (px - gap as i32, y), tick_size, INK, HPos::Right, false)?;
        }

        let bar_w = (slot as f64 * 0.62).round().min(72.0) as i32;
        for (c, v) in values.iter().enumerate() {
            let cx = px + c as i32 * slot as i32 + slot as i32 / 2;
            match v {
                Some(v) => {
                    let y = y_of(*v);
                    rect(area, (cx - bar_w / 2, y), (cx + bar_w / 2, py + ph), BAR, true)?;
                }
                None => {
                    pen.text(area, "n/a", (cx, py + ph - (gap + value_h / 2) as i32), note_size, MUTED, HPos::Center, false)?;
                }
            }
        }

        // Reference lines on top of the bars so they stay visible where bars cross them.
        line(area, (px, y_of(1.0)), (px + pw, y_of(1.0)), PARITY, 2)?;
        if let Some(g) = global {
            dashed(area, px, px + pw, y_of(g), GLOBAL, 2)?;
        }
        // Values last, on a white box, so a reference line through a label cannot hide it.
        for (c, v) in values.iter().enumerate() {
            if let Some(v) = v {
                let cx = px + c as i32 * slot as i32 + slot as i32 / 2;
                let cy = y_of(*v) - (gap + value_h / 2) as i32;
                let half_w = (pen.measure(note_size, &value_labels[c]).0 / 2 + 3) as i32;
                let half_h = (value_h / 2 + 1) as i32;
                rect(area, (cx - half_w, cy - half_h), (cx + half_w, cy + half_h), WHITE, true)?;
                pen.text(area, &value_labels[c], (cx, cy), note_size, INK, HPos::Center, false)?;
            }
        }

        // Axes.
        line(area, (px, py), (px, py + ph), MUTED, 1)?;
        line(area, (px, py + ph), (px + pw, py + ph), MUTED, 1)?;
        for (c, label) in labels.iter().enumerate() {
            let cx = px + c as i32 * slot as i32 + slot as i32 / 2;
            let below = py + ph + gap as i32;
            if x_rotated {
                pen.text(area, label, (cx, below), tick_size, INK, HPos::Right, true)?;
            } else {
                pen.text(area, label, (cx, below + (tick_h / 2) as i32), tick_size, INK, HPos::Center, false)?;
            }
        }
        let x_title_y = py + ph + (gap + x_label_h + gap + axis_h / 2) as i32;
        pen.text(area, "class", (px + pw / 2, x_title_y), axis_size, INK, HPos::Center, false)?;
        pen.text(
            area,
            "RCA = recall gen / recall real",
            ((x_off + pad + axis_h / 2) as i32, py + ph / 2),
            axis_size,
            INK,
            HPos::Center,
            true,
        )?;

        // Legend to the right of the plot, so it never covers a bar.
        let lx = px + pw + (2 * gap) as i32;
        for (i, (label, color, is_dashed)) in legend.iter().enumerate() {
            let y = py + 12 + i as i32 * 24;
            if *is_dashed {
                if global.is_some() {
                    dashed(area, lx, lx + 30, y, *color, 2)?;
                }
            } else {
                line(area, (lx, y), (lx + 30, y), *color, 2)?;
            }
            pen.text(area, label, (lx + 30 + gap as i32, y), note_size, INK, HPos::Left, false)?;
        }
        Ok(())
    })
}

/// One panel of [`fid_rca_bars`]: a bar per class (`None` drawn as "n/a"), its y axis from 0.
struct BarPanel<'a> {
    title: &'a str,
    values: &'a [Option<f64>],
    /// Bars drawn in [`MUTED`] with a "*" after their value (rank-deficient FID).
    flagged: &'a [bool],
    color: RGBColor,
    /// A solid reference line (RCA parity at 1.0).
    reference: Option<f64>,
}

/// Per-class FID beside class RCA, one panel above the other on the same class axis: the
/// trade-off between visual quality and identity consistency at a glance. Without RCA values,
/// the FID panel alone. Rank-deficient classes (a side with no more images than feature
/// dimensions) are drawn grey with a "*".
pub fn fid_rca_bars(
    path: &Path,
    classes: &[String],
    fid: &[Option<f64>],
    rank_deficient: &[bool],
    rca: Option<&[Option<f64>]>,
) -> Result<(), FigureError> {
    let pen = Pen::new(path)?;
    let n = classes.len();
    let input = |detail: String| FigureError::Input { path: path.to_path_buf(), detail };
    if n == 0 {
        return Err(input("no classes to draw".into()));
    }
    if fid.len() != n || rank_deficient.len() != n || rca.is_some_and(|r| r.len() != n) {
        return Err(input(format!("per-class values do not match the {n} classes")));
    }
    let clean = |v: &Option<f64>| v.filter(|x| x.is_finite() && *x >= 0.0);
    let fid: Vec<Option<f64>> = fid.iter().map(clean).collect();
    let rca: Option<Vec<Option<f64>>> = rca.map(|r| r.iter().map(clean).collect());
    let none = vec![false; n];
    let mut panels =
        vec![BarPanel { title: "per-class FID (lower is better)", values: &fid, flagged: rank_deficient, color: BAR, reference: None }];
    if let Some(r) = &rca {
        panels.push(BarPanel {
            title: "class RCA (1.0 = parity with real)",
            values: r,
            flagged: &none,
            color: GLOBAL,
            reference: Some(1.0),
        });
    }
    let title = "Per-class FID and class RCA";
    let labels: Vec<String> = classes.iter().map(|c| abbreviate(c)).collect();
    let (title_size, axis_size, tick_size, note_size) = (20.0, 16.0, 14.0, 13.0);
    let (pad, gap) = (16u32, 8u32);
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    let plot_w = ((640 / n32).clamp(48, 110).saturating_mul(n32)).max(400);
    let slot = plot_w / n32;
    let plot_h = 240u32;
    let title_h = pen.measure(title_size, title).1;
    let axis_h = pen.measure(axis_size, "Ag").1;
    let tick_h = pen.measure(tick_size, "Ag").1;
    let value_h = pen.measure(note_size, "0").1;
    let label_w = pen.widest(tick_size, &labels);
    let x_rotated = label_w + 6 > slot;
    let x_label_h = if x_rotated { label_w } else { tick_h };
    // Each panel: its ticks and labels.
    let scales: Vec<(f64, Vec<f64>, Vec<String>)> = panels
        .iter()
        .map(|p| {
            let max_v = p.values.iter().flatten().copied().chain(p.reference).fold(0.0f64, f64::max).max(1e-9);
            let step = nice_step(max_v * 1.1, 4.0);
            let y_max = ((max_v * 1.1) / step).ceil() * step;
            let ticks: Vec<f64> = (0..).map(|k| k as f64 * step).take_while(|t| *t <= y_max + step * 1e-9).collect();
            let decimals = (0..=3)
                .find(|d| {
                    let scaled = step * 10f64.powi(*d);
                    (scaled - scaled.round()).abs() < 1e-6
                })
                .unwrap_or(3) as usize;
            let tick_labels = ticks.iter().map(|t| format!("{t:.decimals$}")).collect();
            (y_max, ticks, tick_labels)
        })
        .collect();
    let y_tick_w = scales.iter().map(|(_, _, l)| pen.widest(tick_size, l)).max().unwrap_or(0);
    let left = pad + y_tick_w + gap;
    let panel_h = axis_h + gap + value_h + gap + plot_h + gap;
    let top = pad + title_h + gap;
    let bottom = x_label_h + gap + axis_h + pad;
    let footnote = "* rank-deficient: a side of the class has no more images than feature dimensions";
    let foot_h = if rank_deficient.iter().any(|&b| b) { pen.measure(note_size, footnote).1 + gap } else { 0 };
    let width = (left + plot_w + pad).max(pen.measure(title_size, title).0 + 2 * pad).max(pen.measure(note_size, footnote).0 + 2 * pad);
    let height = top + panel_h * panels.len() as u32 + bottom + foot_h;
    render(path, (width, height), |area| {
        pen.text(area, title, ((width / 2) as i32, (pad + title_h / 2) as i32), title_size, INK, HPos::Center, false)?;
        let px = left as i32;
        let (pw, ph) = (plot_w as i32, plot_h as i32);
        let mut py_last = 0;
        for (k, (panel, (y_max, ticks, tick_labels))) in panels.iter().zip(&scales).enumerate() {
            let panel_top = (top + panel_h * k as u32) as i32;
            pen.text(area, panel.title, (px, panel_top + (axis_h / 2) as i32), axis_size, INK, HPos::Left, false)?;
            let py = panel_top + (axis_h + gap + value_h + gap) as i32;
            py_last = py;
            let y_of = |v: f64| py + ph - ((v / y_max) * ph as f64).round() as i32;
            for (t, l) in ticks.iter().zip(tick_labels) {
                let y = y_of(*t);
                line(area, (px, y), (px + pw, y), GRID, 1)?;
                pen.text(area, l, (px - gap as i32, y), tick_size, INK, HPos::Right, false)?;
            }
            let bar_w = (slot as f64 * 0.62).round().min(72.0) as i32;
            for (c, v) in panel.values.iter().enumerate() {
                let cx = px + c as i32 * slot as i32 + slot as i32 / 2;
                match v {
                    Some(v) => {
                        let color = if panel.flagged[c] { MUTED } else { panel.color };
                        rect(area, (cx - bar_w / 2, y_of(*v)), (cx + bar_w / 2, py + ph), color, true)?;
                    }
                    None => pen.text(area, "n/a", (cx, py + ph - (gap + value_h / 2) as i32), note_size, MUTED, HPos::Center, false)?,
                }
            }
            if let Some(r) = panel.reference {
                line(area, (px, y_of(r)), (px + pw, y_of(r)), PARITY, 2)?;
            }
            // Values last, on a white box, so the reference line cannot hide one.
            for (c, v) in panel.values.iter().enumerate() {
                if let Some(v) = v {
                    let cx = px + c as i32 * slot as i32 + slot as i32 / 2;
                    let cy = y_of(*v) - (gap + value_h / 2) as i32;
                    let label = format!("{}{}", format_value(*v), if panel.flagged[c] { "*" } else { "" });
                    let (half_w, half_h) = ((pen.measure(note_size, &label).0 / 2 + 3) as i32, (value_h / 2 + 1) as i32);
                    rect(area, (cx - half_w, cy - half_h), (cx + half_w, cy + half_h), WHITE, true)?;
                    pen.text(area, &label, (cx, cy), note_size, INK, HPos::Center, false)?;
                }
            }
            line(area, (px, py), (px, py + ph), MUTED, 1)?;
            line(area, (px, py + ph), (px + pw, py + ph), MUTED, 1)?;
        }
        let below = py_last + ph + gap as i32;
        for (c, label) in labels.iter().enumerate() {
            let cx = px + c as i32 * slot as i32 + slot as i32 / 2;
            if x_rotated {
                pen.text(area, label, (cx, below), tick_size, INK, HPos::Right, true)?;
            } else {
                pen.text(area, label, (cx, below + (tick_h / 2) as i32), tick_size, INK, HPos::Center, false)?;
            }
        }
        let x_title_y = below + (x_label_h + gap + axis_h / 2) as i32;
        pen.text(area, "class", (px + pw / 2, x_title_y), axis_size, INK, HPos::Center, false)?;
        if foot_h > 0 {
            let y = x_title_y + (axis_h / 2 + gap + foot_h / 2) as i32;
            pen.text(area, footnote, ((width / 2) as i32, y), note_size, MUTED, HPos::Center, false)?;
        }
        Ok(())
    })
}

/// A bar's value: 3 significant digits, whatever its size (FID runs to hundreds, RCA near 1).
fn format_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Samples of one class for [`sample_grid`]: planar RGB images (3 x H x W each), in position order.
pub struct ClassSamples<'a> {
    pub class: &'a str,
    pub images: &'a [Vec<u8>],
}

/// Per-class sample grid: one row per class (name on the left), its first samples left to
/// right, each image scaled up by an integer factor with nearest-neighbour (pixels stay pixels).
pub fn sample_grid(path: &Path, title: &str, rows: &[ClassSamples], (height, width): (usize, usize)) -> Result<(), FigureError> {
    let pen = Pen::new(path)?;
    let columns = rows.iter().map(|r| r.images.len()).max().unwrap_or(0);
    if rows.is_empty() || columns == 0 || height == 0 || width == 0 {
        return Err(FigureError::Input { path: path.to_path_buf(), detail: "no samples to show".into() });
    }
    if let Some(bad) = rows.iter().flat_map(|r| r.images).find(|im| im.len() != 3 * height * width) {
        return Err(FigureError::Input {
            path: path.to_path_buf(),
            detail: format!("an image has {} values, expected 3x{height}x{width}", bad.len()),
        });
    }
    // Small images (32x32) are scaled so a cell is about 96 px; large ones are shown as they are.
    let scale = (96 / height.max(width)).max(1) as i32;
    let (cell_w, cell_h) = (width as i32 * scale, height as i32 * scale);
    let (gap, text_size, title_size) = (4, 15.0, 18.0);
    let labels: Vec<String> = rows.iter().map(|r| abbreviate(r.class)).collect();
    let left = pen.widest(text_size, &labels) as i32 + 16;
    let top = 40;
    let figure_w = left + columns as i32 * (cell_w + gap) + 12;
    let figure_h = top + rows.len() as i32 * (cell_h + gap) + 12;
    render(path, (figure_w as u32, figure_h as u32), |area| {
        pen.text(area, title, (figure_w / 2, 18), title_size, INK, HPos::Center, false)?;
        for (r, row) in rows.iter().enumerate() {
            let y0 = top + r as i32 * (cell_h + gap);
            pen.text(area, &labels[r], (left - 10, y0 + cell_h / 2), text_size, INK, HPos::Right, false)?;
            for (c, image) in row.images.iter().enumerate() {
                let x0 = left + c as i32 * (cell_w + gap);
                let plane = height * width;
                for y in 0..height {
                    for x in 0..width {
                        let i = y * width + x;
                        let color = RGBColor(image[i], image[plane + i], image[2 * plane + i]);
                        let (px, py) = (x0 + x as i32 * scale, y0 + y as i32 * scale);
                        // plotters fills a rectangle up to, not including, its far corner.
                        area.draw(&Rectangle::new([(px, py), (px + scale, py + scale)], color.filled())).map_err(|e| e.to_string())?;
                    }
                }
            }
        }
        Ok(())
    })
}

/// A training curve: `points` (step, value) as a polyline, with a moving average (window
/// `smooth` points) drawn over it when `smooth > 1`, on a log-scaled value axis when every value
/// is positive (losses span decades early in training).
pub fn loss_curve(path: &Path, title: &str, y_label: &str, points: &[(usize, f64)], smooth: usize) -> Result<(), FigureError> {
    let pen = Pen::new(path)?;
    let input = |detail: String| FigureError::Input { path: path.to_path_buf(), detail };
    let pts: Vec<(f64, f64)> = points.iter().filter(|(_, v)| v.is_finite()).map(|&(s, v)| (s as f64, v)).collect();
    if pts.is_empty() {
        return Err(input("no finite values to draw".into()));
    }
    let log = pts.iter().all(|(_, v)| *v > 0.0);
    let f = |v: f64| if log { v.log10() } else { v };
    let (x0, x1) = (pts[0].0, pts[pts.len() - 1].0.max(pts[0].0 + 1.0));
    let lo = pts.iter().map(|p| f(p.1)).fold(f64::INFINITY, f64::min);
    let hi = pts.iter().map(|p| f(p.1)).fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if hi - lo < 1e-9 { (lo - 0.5, hi + 0.5) } else { (lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)) };
    let (title_size, axis_size, tick_size) = (20.0, 17.0, 14.0);
    let (pad, gap, plot_w, plot_h) = (16u32, 8u32, 640u32, 360u32);
    let title_h = pen.measure(title_size, title).1;
    let axis_h = pen.measure(axis_size, "Ag").1;
    let tick_h = pen.measure(tick_size, "Ag").1;
    let y_ticks: Vec<(f64, String)> = (0..=4)
        .map(|k| {
            let t = lo + (hi - lo) * k as f64 / 4.0;
            let v = if log { 10f64.powf(t) } else { t };
            (t, format!("{v:.3}"))
        })
        .collect();
    let y_tick_w = y_ticks.iter().map(|(_, l)| pen.measure(tick_size, l).0).max().unwrap_or(0);
    let left = pad + axis_h + gap + y_tick_w + gap;
    let top = pad + title_h + 2 * gap;
    let width = left + plot_w + 2 * pad;
    let height = top + plot_h + gap + tick_h + gap + axis_h + pad;
    let smoothed: Vec<(f64, f64)> = if smooth > 1 {
        (0..pts.len())
            .map(|i| {
                let a = i.saturating_sub(smooth - 1);
                let w = &pts[a..=i];
                (pts[i].0, w.iter().map(|p| p.1).sum::<f64>() / w.len() as f64)
            })
            .collect()
    } else {
        Vec::new()
    };
    render(path, (width, height), |area| {
        let (px, py, pw, ph) = (left as i32, top as i32, plot_w as i32, plot_h as i32);
        let xy = |x: f64, v: f64| {
            let sx = px + ((x - x0) / (x1 - x0) * pw as f64).round() as i32;
            let sy = py + ph - ((f(v) - lo) / (hi - lo) * ph as f64).round() as i32;
            (sx, sy)
        };
        pen.text(area, title, ((width / 2) as i32, (pad + title_h / 2) as i32), title_size, INK, HPos::Center, false)?;
        for (t, l) in &y_ticks {
            let y = py + ph - ((t - lo) / (hi - lo) * ph as f64).round() as i32;
            line(area, (px, y), (px + pw, y), GRID, 1)?;
            pen.text(area, l, (px - gap as i32, y), tick_size, INK, HPos::Right, false)?;
        }
        for k in 0..=4 {
            let x = x0 + (x1 - x0) * k as f64 / 4.0;
            let sx = px + (pw as f64 * k as f64 / 4.0).round() as i32;
            pen.text(
                area,
                &format!("{}", x.round() as i64),
                (sx, py + ph + (gap + tick_h / 2) as i32),
                tick_size,
                INK,
                HPos::Center,
                false,
            )?;
        }
        let raw_colour = if smoothed.is_empty() { BAR } else { RGBColor(170, 200, 230) };
        area.draw(&PathElement::new(pts.iter().map(|p| xy(p.0, p.1)).collect::<Vec<_>>(), raw_colour.stroke_width(1)))
            .map_err(|e| e.to_string())?;
        if !smoothed.is_empty() {
            area.draw(&PathElement::new(smoothed.iter().map(|p| xy(p.0, p.1)).collect::<Vec<_>>(), BAR.stroke_width(2)))
                .map_err(|e| e.to_string())?;
        }
        line(area, (px, py), (px, py + ph), MUTED, 1)?;
        line(area, (px, py + ph), (px + pw, py + ph), MUTED, 1)?;
        pen.text(area, "step", (px + pw / 2, py + ph + (gap + tick_h + gap + axis_h / 2) as i32), axis_size, INK, HPos::Center, false)?;
        let y_title = if log { format!("{y_label} (log scale)") } else { y_label.to_string() };
        pen.text(area, &y_title, ((pad + axis_h / 2) as i32, py + ph / 2), axis_size, INK, HPos::Center, true)?;
        Ok(())
    })
}

/// One variation of a sweep on the trade-off figure.
pub struct TradeoffPoint<'a> {
    pub label: &'a str,
    pub rca: f64,
    pub fid: Option<f64>,
    pub kid: Option<f64>,
    /// Merged from unfinished shards: drawn hollow, labelled so.
    pub partial: bool,
}

/// A sweep's trade-off (`rcaflow sweep report`): FID (and KID, when a variation has it) against
/// RCA, one labelled point per variation, joined in RCA order (the curve a paper draws);
/// variations without numbers are listed under the panels (`not_shown`), not dropped.
pub fn tradeoff(path: &Path, title: &str, points: &[TradeoffPoint], not_shown: &[String]) -> Result<(), FigureError> {
    let pen = Pen::new(path)?;
    let any_kid = points.iter().any(|p| p.kid.is_some());
    let panels: Vec<(&str, Vec<(f64, f64, &TradeoffPoint)>)> = [("FID", false), ("KID", true)]
        .into_iter()
        .filter(|(_, kid)| !kid || any_kid)
        .map(|(name, kid)| {
            let mut pts: Vec<(f64, f64, &TradeoffPoint)> = points
                .iter()
                .filter_map(|p| if kid { p.kid } else { p.fid }.filter(|v| v.is_finite() && p.rca.is_finite()).map(|v| (p.rca, v, p)))
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.total_cmp(&b.1)));
            (name, pts)
        })
        .collect();
    let (title_size, axis_size, tick_size, label_size) = (20.0, 17.0, 14.0, 13.0);
    let (pad, gap, plot_w, plot_h) = (16u32, 8u32, 480u32, 360u32);
    let title_h = pen.measure(title_size, title).1;
    let axis_h = pen.measure(axis_size, "Ag").1;
    let tick_h = pen.measure(tick_size, "Ag").1;
    let label_h = pen.measure(label_size, "Ag").1;
    let range = |vals: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = vals.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if hi - lo < 1e-12 {
            (lo - 0.05 * lo.abs().max(0.1), hi + 0.05 * hi.abs().max(0.1))
        } else {
            (lo - 0.08 * (hi - lo), hi + 0.08 * (hi - lo))
        }
    };
    let ticks = |lo: f64, hi: f64| -> Vec<(f64, String)> {
        let step = nice_step(hi - lo, 5.0);
        // As many decimals as the step needs (0.025 needs 3).
        let decimals =
            (0..9usize).find(|&d| ((step * 10f64.powi(d as i32)).round() - step * 10f64.powi(d as i32)).abs() < 1e-6).unwrap_or(9);
        let mut t = (lo / step).ceil() * step;
        let mut out = Vec::new();
        while t <= hi + 1e-12 && out.len() < 20 {
            out.push((t, format!("{t:.decimals$}")));
            t += step;
        }
        out
    };
    let y_ranges: Vec<(f64, f64)> = panels.iter().map(|(_, pts)| range(&mut pts.iter().map(|p| p.1))).collect();
    let y_ticks: Vec<Vec<(f64, String)>> = y_ranges.iter().map(|&(lo, hi)| ticks(lo, hi)).collect();
    let y_tick_w = y_ticks.iter().flatten().map(|(_, l)| pen.measure(tick_size, l).0).max().unwrap_or(0);
    let panel_left = axis_h + gap + y_tick_w + gap;
    let panel_w = panel_left + plot_w + 2 * pad;
    let notes: Vec<String> = if not_shown.is_empty() {
        Vec::new()
    } else {
        // Wrapped to the figure's width.
        let width = pad * 2 + panel_w * panels.len() as u32;
        let mut lines = vec![String::from("not shown:")];
        for item in not_shown {
            let last = lines.last_mut().map(|l| l.clone()).unwrap_or_default();
            let joined = if last == "not shown:" { format!("{last} {item}") } else { format!("{last}; {item}") };
            if pen.measure(label_size, &joined).0 + 2 * pad < width {
                if let Some(l) = lines.last_mut() {
                    *l = joined;
                }
            } else {
                lines.push(item.clone());
            }
        }
        lines
    };
    let top = pad + title_h + 2 * gap;
    let width = pad * 2 + panel_w * panels.len() as u32;
    let notes_h = notes.len() as u32 * (label_h + 4);
    let height = top + plot_h + gap + tick_h + gap + axis_h + gap + notes_h + pad;
    render(path, (width, height), |area| {
        pen.text(area, title, ((width / 2) as i32, (pad + title_h / 2) as i32), title_size, INK, HPos::Center, false)?;
        for (i, (name, pts)) in panels.iter().enumerate() {
            let px = (pad + panel_w * i as u32 + panel_left) as i32;
            let (py, pw, ph) = (top as i32, plot_w as i32, plot_h as i32);
            let (y0, y1) = y_ranges[i];
            let (x0, x1) = range(&mut pts.iter().map(|p| p.0));
            let xy = |x: f64, y: f64| {
                (px + ((x - x0) / (x1 - x0) * pw as f64).round() as i32, py + ph - ((y - y0) / (y1 - y0) * ph as f64).round() as i32)
            };
            for (t, l) in &y_ticks[i] {
                let y = xy(x0, *t).1;
                line(area, (px, y), (px + pw, y), GRID, 1)?;
                pen.text(area, l, (px - gap as i32, y), tick_size, INK, HPos::Right, false)?;
            }
            for (t, l) in ticks(x0, x1) {
                let x = xy(t, y0).0;
                line(area, (x, py), (x, py + ph), GRID, 1)?;
                pen.text(area, &l, (x, py + ph + (gap + tick_h / 2) as i32), tick_size, INK, HPos::Center, false)?;
            }
            line(area, (px, py), (px, py + ph), MUTED, 1)?;
            line(area, (px, py + ph), (px + pw, py + ph), MUTED, 1)?;
            if pts.is_empty() {
                let what = format!("no variation has RCA and {name} yet");
                pen.text(area, &what, (px + pw / 2, py + ph / 2), label_size, MUTED, HPos::Center, false)?;
            }
            if pts.len() > 1 {
                area.draw(&PathElement::new(pts.iter().map(|p| xy(p.0, p.1)).collect::<Vec<_>>(), BAR.stroke_width(2)))
                    .map_err(|e| e.to_string())?;
            }
            for (x, y, p) in pts {
                let at = xy(*x, *y);
                let style = if p.partial { BAR.stroke_width(2) } else { BAR.filled() };
                area.draw(&Circle::new(at, 5, style)).map_err(|e| e.to_string())?;
                let label = if p.partial { format!("{} (partial)", p.label) } else { p.label.to_string() };
                // Left of the point when the label would run off the panel's right edge.
                let w = pen.measure(label_size, &label).0 as i32;
                let (lx, h) = if at.0 + 8 + w > px + pw { (at.0 - 8, HPos::Right) } else { (at.0 + 8, HPos::Left) };
                pen.text(area, &label, (lx, at.1 - (label_h as i32) / 2 - 2), label_size, INK, h, false)?;
            }
            let x_title = "RCA (generated / real accuracy)";
            pen.text(
                area,
                x_title,
                (px + pw / 2, py + ph + (gap + tick_h + gap + axis_h / 2) as i32),
                axis_size,
                INK,
                HPos::Center,
                false,
            )?;
            let y_title = format!("{name} (lower is better)");
            pen.text(area, &y_title, (px - (gap + y_tick_w + gap + axis_h / 2) as i32, py + ph / 2), axis_size, INK, HPos::Center, true)?;
        }
        let mut y = (top + plot_h + gap + tick_h + gap + axis_h + gap + label_h / 2) as i32;
        for note in &notes {
            pen.text(area, note, (pad as i32, y), label_size, MUTED, HPos::Left, false)?;
            y += (label_h + 4) as i32;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blues_ends_and_contrast() {
        assert_eq!(blues(0.0), RGBColor(247, 251, 255));
        assert_eq!(blues(1.0), RGBColor(8, 48, 107));
        assert_eq!(blues(f64::NAN), blues(0.0));
        assert_eq!(text_on(blues(0.0)), INK);
        assert_eq!(text_on(blues(1.0)), WHITE);
    }

    #[test]
    fn abbreviation_and_steps() {
        assert_eq!(abbreviate("short"), "short");
        let long = abbreviate("a very long class name indeed");
        assert_eq!(long.chars().count(), MAX_LABEL_CHARS);
        assert!(long.ends_with('…'));
        assert_eq!(nice_step(1.2, 6.0), 0.2);
        assert_eq!(nice_step(12.0, 6.0), 2.0);
        assert_eq!(percent(0.5), "50%");
        assert_eq!(percent(0.031), "3.1%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(percent(0.0001), "<0.1%");
        assert_eq!(percent(1.0), "100%");
    }

    #[test]
    fn bad_shapes_are_errors_naming_the_path() {
        let dir = std::env::temp_dir();
        let path = dir.join("rcaflow-never-written.png");
        let classes = vec!["a".to_string(), "b".to_string()];
        let e = confusion_heatmap(&path, "t", &classes, &[vec![1, 2]]).unwrap_err();
        assert!(e.to_string().contains("rcaflow-never-written.png"), "{e}");
        assert!(e.to_string().contains("1 rows for 2 classes"), "{e}");
        let e = confusion_heatmap(&path, "t", &classes, &[vec![1, 2], vec![3]]).unwrap_err();
        assert!(e.to_string().contains("row 1 has 1 columns"), "{e}");
        let e = rca_bars(&path, &classes, &[Some(1.0)], None).unwrap_err();
        assert!(e.to_string().contains("1 per-class RCA values for 2 classes"), "{e}");
        assert!(confusion_heatmap(&path, "t", &[], &[]).is_err());
        assert!(!path.exists());
    }

    #[test]
    fn huge_class_count_is_refused_before_allocating() {
        let path = std::env::temp_dir().join("rcaflow-never-written-huge.png");
        let n = 1000;
        let classes: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        let confusion = vec![vec![0u64; n]; n];
        let e = confusion_heatmap(&path, "t", &classes, &confusion).unwrap_err();
        assert!(matches!(e, FigureError::TooLarge { .. }), "{e}");
        assert!(!path.exists());
    }
}
