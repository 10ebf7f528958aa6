//! A tiny antialiased rasteriser for the synthetic faces: a scene is a function from a point of
//! the unit square to a colour, evaluated on an `ss x ss` grid of sample points inside every
//! output pixel and averaged (supersampling followed by a box filter, the textbook way to
//! antialias analytic shapes). Pure maths, no I/O.

/// Linear RGB-ish colour, each channel in [0, 1].
pub type Rgb = [f32; 3];

/// Renders `size x size` pixels, `ss x ss` samples per pixel, as interleaved RGB8.
/// `scene(u, v)` gets coordinates in [0, 1) (u rightwards, v downwards).
pub fn render(size: usize, ss: usize, mut scene: impl FnMut(f64, f64) -> Rgb) -> Vec<u8> {
    let ss = ss.max(1);
    let mut out = Vec::with_capacity(size * size * 3);
    let step = 1.0 / (size * ss) as f64;
    let norm = 1.0 / (ss * ss) as f32;
    for py in 0..size {
        for px in 0..size {
            let mut acc = [0f32; 3];
            for sy in 0..ss {
                for sx in 0..ss {
                    let u = ((px * ss + sx) as f64 + 0.5) * step;
                    let v = ((py * ss + sy) as f64 + 0.5) * step;
                    let c = scene(u, v);
                    for k in 0..3 {
                        acc[k] += c[k];
                    }
                }
            }
            for a in acc {
                out.push(quantise(a * norm));
            }
        }
    }
    out
}

/// [0, 1] to u8, rounding and clamping.
pub fn quantise(x: f32) -> u8 {
    (x.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Inside the axis-aligned ellipse centred at (cx, cy) with half-axes (a, b)?
pub fn in_ellipse(x: f64, y: f64, cx: f64, cy: f64, a: f64, b: f64) -> bool {
    let (dx, dy) = ((x - cx) / a, (y - cy) / b);
    dx * dx + dy * dy <= 1.0
}

/// Distance from (x, y) to the segment (x0, y0)-(x1, y1).
pub fn segment_distance(x: f64, y: f64, x0: f64, y0: f64, x1: f64, y1: f64) -> f64 {
    let (dx, dy) = (x1 - x0, y1 - y0);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 { (((x - x0) * dx + (y - y0) * dy) / len2).clamp(0.0, 1.0) } else { 0.0 };
    let (px, py) = (x0 + t * dx, y0 + t * dy);
    ((x - px).powi(2) + (y - py).powi(2)).sqrt()
}

/// `a + (b - a) t` per channel.
pub fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

/// Each channel times `k`.
pub fn scale(c: Rgb, k: f32) -> Rgb {
    [c[0] * k, c[1] * k, c[2] * k]
}

/// Piecewise-linear lookup in a palette at `t` in [0, 1].
pub fn palette(colours: &[Rgb], t: f64) -> Rgb {
    let n = colours.len();
    if n == 1 {
        return colours[0];
    }
    let x = t.clamp(0.0, 1.0) * (n - 1) as f64;
    let i = (x.floor() as usize).min(n - 2);
    mix(colours[i], colours[i + 1], (x - i as f64) as f32)
}

/// HSV (all in [0, 1]) to RGB.
pub fn hsv(h: f64, s: f64, v: f64) -> Rgb {
    let h = h.rem_euclid(1.0) * 6.0;
    let i = h.floor();
    let f = h - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i as u32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r as f32, g as f32, b as f32]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_antialiased_by_coverage() {
        // Left half white: the pixel column straddling u = 0.5 at size 3 is half covered.
        let img = render(3, 8, |u, _| if u < 0.5 { [1.0; 3] } else { [0.0; 3] });
        let row: Vec<u8> = img[..9].iter().step_by(3).copied().collect();
        assert_eq!(row, vec![255, 128, 0]);
        // Without supersampling the same edge is hard.
        let hard = render(3, 1, |u, _| if u < 0.5 { [1.0; 3] } else { [0.0; 3] });
        assert_eq!(hard[3], 0);
    }

    #[test]
    fn geometry_helpers() {
        assert!(in_ellipse(0.5, 0.5, 0.5, 0.5, 0.1, 0.2));
        assert!(in_ellipse(0.5, 0.69, 0.5, 0.5, 0.1, 0.2));
        assert!(!in_ellipse(0.61, 0.5, 0.5, 0.5, 0.1, 0.2));
        assert!((segment_distance(0.5, 1.0, 0.0, 0.0, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert!((segment_distance(2.0, 0.0, 0.0, 0.0, 1.0, 0.0) - 1.0).abs() < 1e-12);
        assert_eq!(palette(&[[0.0; 3], [1.0; 3]], 0.25), [0.25; 3]);
        assert_eq!(hsv(0.0, 1.0, 1.0), [1.0, 0.0, 0.0]);
    }
}
