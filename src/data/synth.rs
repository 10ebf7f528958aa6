//! `rcaflow synth`: a synthetic identity dataset of cartoon faces, drawn by code.
//!
//! Stands in for the paper's face set (KoIn10: ten identities, 32x32) where no photos are at
//! hand: each class is an *identity*, a vector of [`PARAMS`] numbers in [0, 1] (face shape,
//! skin tone, hair colour, length, volume and fringe, eye spacing, size, height and colour,
//! brows, nose, mouth, glasses, earrings, hat, blush); each image of a class redraws what
//! varies between photos of one person (pose: offset, scale, roll and a little yaw; expression:
//! smile, open mouth, blinking; lighting: brightness and a directional gradient; background; a
//! small random occluder; sensor noise).
//!
//! `similarity` s in [0, 1] pulls every identity towards one common face m (drawn from the
//! seed): p = m + (1 - s)(p_raw - m). At s = 0 identities are independent uniform draws; at
//! s = 1 all classes are the same face and only per-image variation is left, so the
//! fine-grained difficulty of the task is set by one number.
//!
//! Every image is drawn from its own random stream keyed by (seed, class, index), so a file
//! never depends on generation order. Rendering: 4x4 supersampling, box-averaged
//! ([`super::raster::render`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::raster::{hsv, in_ellipse, mix, palette, render, scale, segment_distance, Rgb};
use super::rng::Rng;

/// Number of identity parameters.
pub const PARAMS: usize = 24;
/// Samples per pixel side.
const SUPERSAMPLE: usize = 4;
/// Stream key of the common face (no class index can reach it).
const COMMON_FACE: u64 = u64::MAX;

/// Errors of `synth`.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("synth: {0}")]
    Invalid(String),
    #[error("synth: cannot write \"{}\": {cause}", .path.display())]
    Write { path: PathBuf, cause: String },
}

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SynthConfig {
    pub classes: usize,
    pub per_class: usize,
    pub size: usize,
    pub similarity: f64,
    pub seed: u64,
}

impl SynthConfig {
    pub fn validate(&self) -> Result<(), SynthError> {
        if self.classes < 1 {
            return Err(SynthError::Invalid("--classes 0: expected at least 1".into()));
        }
        if self.per_class < 1 {
            return Err(SynthError::Invalid("--per-class 0: expected at least 1".into()));
        }
        if !(8..=512).contains(&self.size) {
            return Err(SynthError::Invalid(format!("--size {}: expected 8 to 512 pixels", self.size)));
        }
        if !(0.0..=1.0).contains(&self.similarity) {
            return Err(SynthError::Invalid(format!("--similarity {}: expected a number in [0, 1]", self.similarity)));
        }
        Ok(())
    }

    /// Class folder names, `id_00`, `id_01`, ... (zero-padded so they sort in class order).
    pub fn class_names(&self) -> Vec<String> {
        let width = (self.classes.saturating_sub(1)).to_string().len().max(2);
        (0..self.classes).map(|c| format!("id_{c:0width$}")).collect()
    }
}

/// The identity parameters of every class (each a vector of [`PARAMS`] values in [0, 1]).
pub fn identities(cfg: &SynthConfig) -> Vec<[f64; PARAMS]> {
    let draw = |key: u64| {
        let mut rng = Rng::keyed(&[cfg.seed, key]);
        std::array::from_fn::<f64, PARAMS, _>(|_| rng.uniform())
    };
    let common = draw(COMMON_FACE);
    let keep = 1.0 - cfg.similarity;
    (0..cfg.classes as u64)
        .map(|c| {
            let raw = draw(c);
            std::array::from_fn(|i| common[i] + keep * (raw[i] - common[i]))
        })
        .collect()
}

/// One face as drawn: identity mapped to geometry and colours.
struct Face {
    fw: f64,
    fh: f64,
    jaw: f64,
    skin: Rgb,
    hair: Rgb,
    hair_len: f64,
    hair_vol: f64,
    fringe: f64,
    parting: f64,
    eye_dx: f64,
    eye_r: f64,
    eye_y: f64,
    iris: Rgb,
    brow_w: f64,
    brow_tilt: f64,
    nose_len: f64,
    mouth_w: f64,
    glasses: Option<Rgb>,
    earrings: bool,
    hat: Option<Rgb>,
    blush: f32,
}

impl Face {
    fn from_identity(p: &[f64; PARAMS]) -> Face {
        const SKIN: [Rgb; 4] = [[0.99, 0.87, 0.76], [0.91, 0.72, 0.57], [0.72, 0.52, 0.36], [0.45, 0.30, 0.20]];
        const HAIR: [Rgb; 7] = [
            [0.08, 0.06, 0.05],
            [0.35, 0.20, 0.10],
            [0.62, 0.25, 0.10],
            [0.93, 0.80, 0.45],
            [0.75, 0.75, 0.78],
            [0.20, 0.35, 0.85],
            [0.90, 0.40, 0.65],
        ];
        const IRIS: [Rgb; 4] = [[0.35, 0.20, 0.08], [0.20, 0.45, 0.85], [0.20, 0.60, 0.30], [0.45, 0.45, 0.50]];
        Face {
            fw: 0.22 + 0.09 * p[0],
            fh: 0.27 + 0.08 * p[1],
            jaw: 1.5 + 2.0 * p[2],
            skin: palette(&SKIN, p[3]),
            hair: scale(palette(&HAIR, p[4]), (0.75 + 0.45 * p[5]) as f32),
            hair_len: p[6],
            hair_vol: 0.02 + 0.09 * p[7],
            fringe: 0.10 + 0.45 * p[8],
            parting: 2.0 * p[9] - 1.0,
            eye_dx: 0.075 + 0.07 * p[10],
            eye_r: 0.028 + 0.025 * p[11],
            eye_y: -0.08 * p[12],
            iris: palette(&IRIS, p[13]),
            brow_w: 0.008 + 0.018 * p[14],
            brow_tilt: 0.6 * p[15] - 0.3,
            nose_len: 0.04 + 0.06 * p[16],
            mouth_w: 0.05 + 0.08 * p[17],
            // Accessories are on/off: the parameter decides past a threshold, so identities pulled
            // together by `similarity` also agree on them.
            glasses: (p[18] > 0.65).then(|| palette(&[[0.05, 0.05, 0.05], [0.7, 0.1, 0.1], [0.8, 0.65, 0.2]], p[19])),
            earrings: p[20] > 0.7,
            hat: (p[21] > 0.78).then(|| hsv(p[22], 0.7, 0.8)),
            blush: (0.45 * p[23]) as f32,
        }
    }
}

/// What varies between images of one identity.
struct Shot {
    cx: f64,
    cy: f64,
    zoom: f64,
    cos: f64,
    sin: f64,
    yaw: f64,
    smile: f64,
    mouth_open: bool,
    eye_open: f64,
    brightness: f32,
    light: (f64, f64),
    bg_top: Rgb,
    bg_bottom: Rgb,
    occluder: Option<(f64, f64, f64, bool, Rgb)>,
    noise_seed: u64,
}

impl Shot {
    fn draw(rng: &mut Rng) -> Shot {
        let roll = rng.range(-12.0, 12.0).to_radians();
        let bg_h = rng.uniform();
        Shot {
            cx: 0.5 + rng.range(-0.06, 0.06),
            cy: 0.52 + rng.range(-0.05, 0.05),
            zoom: rng.range(0.9, 1.1),
            cos: roll.cos(),
            sin: roll.sin(),
            yaw: rng.range(-1.0, 1.0),
            smile: rng.range(-0.5, 1.0),
            mouth_open: rng.chance(0.25),
            eye_open: if rng.chance(0.1) { 0.15 } else { rng.range(0.6, 1.0) },
            brightness: rng.range(0.75, 1.15) as f32,
            light: (rng.range(-0.35, 0.35), rng.range(-0.35, 0.35)),
            bg_top: hsv(bg_h, rng.range(0.1, 0.6), rng.range(0.4, 0.95)),
            bg_bottom: hsv(bg_h + rng.range(-0.15, 0.15), rng.range(0.1, 0.6), rng.range(0.3, 0.9)),
            occluder: rng.chance(0.3).then(|| {
                (rng.uniform(), rng.uniform(), rng.range(0.05, 0.1), rng.chance(0.5), hsv(rng.uniform(), 0.6, rng.range(0.3, 0.9)))
            }),
            noise_seed: rng.next_u64(),
        }
    }
}

/// The colour at image point (u, v) of `face` in `shot`.
fn shade(face: &Face, shot: &Shot, u: f64, v: f64) -> Rgb {
    // Image point to face coordinates: undo offset, roll and zoom (origin = face centre).
    let (dx, dy) = ((u - shot.cx) / shot.zoom, (v - shot.cy) / shot.zoom);
    let x = shot.cos * dx + shot.sin * dy;
    let y = -shot.sin * dx + shot.cos * dy;
    let f = face;
    // Yaw: features slide sideways, the far side of the face narrows a little.
    let feat = 0.035 * shot.yaw;

    let mut c = mix(shot.bg_top, shot.bg_bottom, v as f32);
    let hair_a = f.fw + f.hair_vol;
    let hair_b = f.fh + f.hair_vol;
    // Long hair behind the head: down to the chin (hair_len 0.5) or the shoulders (1).
    let hair_end = f.fh * (-0.2 + 1.6 * f.hair_len);
    if in_ellipse(x, y, 0.0, 0.0, hair_a, hair_b) || (x.abs() < hair_a && y > 0.0 && y < hair_end) {
        c = f.hair;
    }
    // Ears, then the face: an ellipse above, a superellipse (pointy to square jaw) below.
    if in_ellipse(x.abs(), y, f.fw, 0.02, 0.035, 0.055) {
        c = scale(f.skin, 0.9);
    }
    if f.earrings && in_ellipse(x.abs(), y, f.fw + 0.005, 0.085, 0.016, 0.016) {
        c = [0.95, 0.8, 0.2];
    }
    let n = if y > 0.0 { f.jaw } else { 2.0 };
    if (x / f.fw).abs().powf(n) + (y / f.fh).abs().powf(n) <= 1.0 {
        c = f.skin;
        // Blush on the cheeks.
        if f.blush > 0.0 && in_ellipse(x.abs(), y, f.eye_dx + 0.03, f.eye_y + 0.08, 0.04, 0.025) {
            c = mix(c, [0.95, 0.45, 0.5], f.blush);
        }
    }
    // Hair on top: inside the hair outline and above the fringe line (slanted by the parting).
    let fringe_line = -f.fh + f.fringe * f.fh + 0.08 * f.parting * x;
    if in_ellipse(x, y, 0.0, 0.0, hair_a, hair_b) && y < fringe_line && y < 0.0 {
        c = f.hair;
    }
    // Eyes: white, iris, pupil (blinking squashes the white).
    for side in [-1.0, 1.0] {
        let ex = side * f.eye_dx + feat;
        let (ra, rb) = (f.eye_r * 1.3, f.eye_r * shot.eye_open);
        if in_ellipse(x, y, ex, f.eye_y, ra, rb) {
            c = [0.97, 0.97, 0.97];
            let ix = ex + 0.3 * f.eye_r * shot.yaw;
            if in_ellipse(x, y, ix, f.eye_y, f.eye_r * 0.75, f.eye_r * 0.75) {
                c = f.iris;
            }
            if in_ellipse(x, y, ix, f.eye_y, f.eye_r * 0.35, f.eye_r * 0.35) {
                c = [0.02, 0.02, 0.02];
            }
        }
        // Brow: a thick segment above the eye, tilted towards or away from the nose.
        let by = f.eye_y - f.eye_r * 1.9;
        let (x0, x1) = (ex - side * f.eye_r * 1.3, ex + side * f.eye_r * 1.3);
        if segment_distance(x, y, x0, by + f.brow_tilt * 0.03, x1, by - f.brow_tilt * 0.03) < f.brow_w {
            c = scale(f.hair, 0.8);
        }
        // Glasses: a ring around each eye, a bridge between them.
        if let Some(frame) = f.glasses {
            let r = f.eye_r * 2.0;
            let d = ((x - ex).powi(2) + (y - f.eye_y).powi(2)).sqrt();
            if (d - r).abs() < 0.009 {
                c = frame;
            }
        }
    }
    if let Some(frame) = f.glasses {
        let r = f.eye_r * 2.0;
        if segment_distance(x, y, -f.eye_dx + r + feat, f.eye_y, f.eye_dx - r + feat, f.eye_y) < 0.008 {
            c = frame;
        }
    }
    // Nose: a darker vertical stroke.
    let ny0 = f.eye_y + f.eye_r;
    if segment_distance(x, y, feat * 1.3, ny0, feat * 1.5, ny0 + f.nose_len) < 0.012 {
        c = scale(f.skin, 0.8);
    }
    // Mouth: a parabola (corners up when smiling), or an open ellipse.
    let my = f.eye_y + f.eye_r + f.nose_len + 0.06;
    let mx = x - feat;
    if shot.mouth_open {
        if in_ellipse(mx, y, 0.0, my + 0.01, f.mouth_w * 0.7, 0.025 + 0.01 * shot.smile) {
            c = [0.45, 0.08, 0.1];
        }
    } else if mx.abs() <= f.mouth_w {
        let curve = my + 0.03 * shot.smile * (1.0 - (mx / f.mouth_w).powi(2)) - 0.015 * shot.smile;
        if (y - curve).abs() < 0.011 {
            c = [0.6, 0.15, 0.18];
        }
    }
    // Hat: a crown over the top of the head and a brim.
    if let Some(hat) = f.hat {
        let top = -f.fh * 0.55;
        if (y < top && in_ellipse(x, y, 0.0, 0.0, hair_a + 0.03, hair_b + 0.04)) || (x.abs() < hair_a + 0.08 && (y - top).abs() < 0.025) {
            c = hat;
        }
    }
    // Lighting in image space: overall brightness and a directional gradient.
    let light = shot.brightness * (1.0 + (shot.light.0 * (u - 0.5) + shot.light.1 * (v - 0.5)) as f32);
    c = scale(c, light);
    // A small occluder in front of everything (a hand, a microphone, a caption...).
    if let Some((ox, oy, r, round, colour)) = shot.occluder {
        let inside = if round { in_ellipse(u, v, ox, oy, r, r) } else { (u - ox).abs() < r && (v - oy).abs() < r * 0.6 };
        if inside {
            c = colour;
        }
    }
    c
}

/// Renders image `index` of class `class` as interleaved RGB8, `size x size`.
pub fn render_image(cfg: &SynthConfig, identity: &[f64; PARAMS], class: usize, index: usize) -> Vec<u8> {
    let face = Face::from_identity(identity);
    let mut rng = Rng::keyed(&[cfg.seed, class as u64, index as u64]);
    let shot = Shot::draw(&mut rng);
    let mut pixels = render(cfg.size, SUPERSAMPLE, |u, v| shade(&face, &shot, u, v));
    // Sensor noise, +-2 levels, after quantisation.
    let mut noise = Rng::keyed(&[shot.noise_seed]);
    for p in pixels.iter_mut() {
        *p = (*p as i32 + noise.below(5) as i32 - 2).clamp(0, 255) as u8;
    }
    pixels
}

/// What `synth` wrote (`manifest.json` in the output folder).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SynthManifest {
    pub generator: String,
    pub config: SynthConfig,
    pub classes: Vec<String>,
    /// Identity parameters per class, in class order.
    pub identities: Vec<Vec<f64>>,
    /// Mean Euclidean distance between the identity vectors of two classes.
    pub mean_identity_distance: f64,
    pub images: usize,
}

/// Mean pairwise Euclidean distance between identity vectors (0 for one class).
pub fn mean_pairwise_distance(ids: &[[f64; PARAMS]]) -> f64 {
    let (mut sum, mut pairs) = (0.0, 0usize);
    for i in 0..ids.len() {
        for j in i + 1..ids.len() {
            sum += ids[i].iter().zip(&ids[j]).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
            pairs += 1;
        }
    }
    if pairs == 0 {
        0.0
    } else {
        sum / pairs as f64
    }
}

/// Writes the dataset under `out` (`out/<class>/<NNNNNN>.png`, `out/manifest.json` and
/// `out/contact_sheet.png`: the first 8 images of each class, one row per class), calling
/// `progress` after each image.
pub fn generate(cfg: &SynthConfig, out: &Path, mut progress: impl FnMut()) -> Result<SynthManifest, SynthError> {
    cfg.validate()?;
    let write_err = |path: &Path, cause: String| SynthError::Write { path: path.to_path_buf(), cause };
    let names = cfg.class_names();
    let ids = identities(cfg);
    let cols = cfg.per_class.min(8);
    let mut sheet = image::RgbImage::new((cols * cfg.size) as u32, (cfg.classes * cfg.size) as u32);
    for (c, name) in names.iter().enumerate() {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| write_err(&dir, e.to_string()))?;
        for i in 0..cfg.per_class {
            let pixels = render_image(cfg, &ids[c], c, i);
            let img = image::RgbImage::from_raw(cfg.size as u32, cfg.size as u32, pixels)
                .ok_or_else(|| SynthError::Invalid("internal: rendered buffer has the wrong size".into()))?;
            let path = dir.join(format!("{i:06}.png"));
            crate::files::png::write_rgb8(&path, &img).map_err(|e| write_err(&path, e))?;
            if i < cols {
                image::imageops::replace(&mut sheet, &img, (i * cfg.size) as i64, (c * cfg.size) as i64);
            }
            progress();
        }
    }
    let sheet_path = out.join("contact_sheet.png");
    crate::files::png::write_rgb8(&sheet_path, &sheet).map_err(|e| write_err(&sheet_path, e))?;
    let manifest = SynthManifest {
        generator: format!("rcaflow synth {}", env!("CARGO_PKG_VERSION")),
        config: cfg.clone(),
        classes: names,
        identities: ids.iter().map(|p| p.to_vec()).collect(),
        mean_identity_distance: mean_pairwise_distance(&ids),
        images: cfg.classes * cfg.per_class,
    };
    let path = out.join("manifest.json");
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| write_err(&path, e.to_string()))?;
    crate::files::atomic::write(&path, &json, "json.write").map_err(|e| write_err(&path, e.to_string()))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(similarity: f64, seed: u64) -> SynthConfig {
        SynthConfig { classes: 6, per_class: 3, size: 32, similarity, seed }
    }

    #[test]
    fn same_seed_same_pixels_other_seed_other_pixels() {
        let a = cfg(0.3, 1);
        let ids = identities(&a);
        assert_eq!(render_image(&a, &ids[2], 2, 1), render_image(&a, &ids[2], 2, 1));
        assert_eq!(render_image(&a, &ids[2], 2, 1).len(), 32 * 32 * 3);
        assert_ne!(render_image(&a, &ids[2], 2, 1), render_image(&a, &ids[2], 2, 0), "images of a class vary");
        let b = cfg(0.3, 2);
        assert_ne!(identities(&b), ids);
        assert_ne!(render_image(&b, &identities(&b)[2], 2, 1), render_image(&a, &ids[2], 2, 1));
    }

    #[test]
    fn similarity_pulls_identities_together() {
        let d: Vec<f64> = [0.0, 0.5, 0.9, 1.0].iter().map(|&s| mean_pairwise_distance(&identities(&cfg(s, 7)))).collect();
        assert!(d[0] > 1.0, "independent identities are far apart: {d:?}");
        assert!((d[1] / d[0] - 0.5).abs() < 1e-9, "distance scales with 1 - similarity: {d:?}");
        assert!(d[2] < d[1] && d[3] == 0.0, "{d:?}");
        // Rendered: at s = 1 two classes differ only by per-image variation, so the mean images
        // of two classes are closer than at s = 0.
        let class_gap = |s: f64| {
            let c = SynthConfig { classes: 2, per_class: 24, size: 16, similarity: s, seed: 3 };
            let ids = identities(&c);
            let mean = |k: usize| {
                let mut m = vec![0f64; 16 * 16 * 3];
                for i in 0..c.per_class {
                    for (a, &p) in m.iter_mut().zip(&render_image(&c, &ids[k], k, i)) {
                        *a += p as f64 / c.per_class as f64;
                    }
                }
                m
            };
            let (a, b) = (mean(0), mean(1));
            a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum::<f64>() / a.len() as f64
        };
        let (far, near) = (class_gap(0.0), class_gap(1.0));
        assert!(far > 2.0 * near, "class means differ by {far} at s = 0, {near} at s = 1");
    }

    #[test]
    fn bad_config_is_refused() {
        let e = |c: SynthConfig| c.validate().unwrap_err().to_string();
        assert_eq!(e(SynthConfig { similarity: 1.5, ..cfg(0.0, 0) }), "synth: --similarity 1.5: expected a number in [0, 1]");
        assert_eq!(e(SynthConfig { classes: 0, ..cfg(0.0, 0) }), "synth: --classes 0: expected at least 1");
        assert_eq!(SynthConfig { classes: 101, ..cfg(0.0, 0) }.class_names()[7], "id_007");
    }

    #[test]
    fn writes_image_folder_and_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let c = SynthConfig { classes: 3, per_class: 2, size: 24, similarity: 0.2, seed: 5 };
        let mut n = 0;
        let m = generate(&c, dir.path(), || n += 1).unwrap();
        assert_eq!((n, m.images), (6, 6));
        let img = image::open(dir.path().join("id_02/000001.png")).unwrap();
        assert_eq!((img.width(), img.height()), (24, 24));
        let back: SynthManifest = serde_json::from_slice(&std::fs::read(dir.path().join("manifest.json")).unwrap()).unwrap();
        assert_eq!(back.classes, vec!["id_00", "id_01", "id_02"]);
        assert_eq!(back.config, c);
        assert_eq!(crate::data::image_folder::list_classes(dir.path()).unwrap(), back.classes);
    }
}
