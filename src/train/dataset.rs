//! A split of a prepared dataset (`DATA_DIR/train` or `DATA_DIR/eval`, ImageFolder layout) held
//! in memory as uint8 planar images, plus the augmentation the oracle trains with.
//!
//! Augmentation follows torchvision's `RandomCrop(size, padding=4)` (zero fill) and
//! `RandomHorizontalFlip(0.5)`, drawn on the host from a seeded stream.

use std::path::{Path, PathBuf};

use crate::data::image_folder::{decode_rgb_planar, list_classes, list_images};
use crate::data::rng::Rng;

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("dataset \"{}\": {detail}", .path.display())]
    Invalid { path: PathBuf, detail: String },
}

/// Images of one split: `len() x 3 x height x width` uint8, row-major.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub classes: Vec<String>,
    pub pixels: Vec<u8>,
    pub labels: Vec<u32>,
    pub height: usize,
    pub width: usize,
}

impl Dataset {
    /// Loads every image under `root/<class>/`; unreadable files are reported on stderr and
    /// skipped; images of another size than the first are an error.
    pub fn load(root: &Path) -> Result<Dataset, DatasetError> {
        let err = |detail: String| DatasetError::Invalid { path: root.to_path_buf(), detail };
        let classes = list_classes(root).map_err(|e| err(e.to_string()))?;
        // The names go into the model's classes.json, and from there into folder names.
        crate::files::name::check_class_names(&classes).map_err(|e| err(format!("class folder: {e}")))?;
        if classes.is_empty() {
            return Err(err("no class folders (expected DIR/<class>/*.png)".into()));
        }
        let mut out = Dataset { classes: classes.clone(), pixels: Vec::new(), labels: Vec::new(), height: 0, width: 0 };
        for (label, class) in classes.iter().enumerate() {
            for file in list_images(&root.join(class)).map_err(|e| err(e.to_string()))? {
                let (h, w, planar) = match decode_rgb_planar(&file) {
                    Ok(x) => x,
                    Err(e) => {
                        eprintln!("dataset: skipping unreadable image \"{}\": {e}", file.display());
                        continue;
                    }
                };
                if out.labels.is_empty() {
                    (out.height, out.width) = (h, w);
                } else if (h, w) != (out.height, out.width) {
                    return Err(err(format!(
                        "image \"{}\" is {w}x{h}; expected {}x{} like the first image",
                        file.display(),
                        out.width,
                        out.height
                    )));
                }
                out.pixels.extend_from_slice(&planar);
                out.labels.push(label as u32);
            }
        }
        if out.labels.is_empty() {
            return Err(err("no readable images".into()));
        }
        Ok(out)
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes of one image.
    pub fn image_len(&self) -> usize {
        3 * self.height * self.width
    }

    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * self.image_len()..(i + 1) * self.image_len()]
    }

    /// The images `indices`, concatenated (optionally augmented), and their labels.
    pub fn batch(&self, indices: &[usize], augment: Option<&mut Rng>) -> (Vec<u8>, Vec<u32>) {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        match augment {
            Some(rng) => {
                for &i in indices {
                    pixels.extend(crop_flip(self.image(i), self.height, self.width, 4, rng));
                }
            }
            None => {
                for &i in indices {
                    pixels.extend_from_slice(self.image(i));
                }
            }
        }
        (pixels, labels)
    }
}

/// `RandomCrop((h, w), padding=pad)` then `RandomHorizontalFlip(0.5)` of one planar image.
pub fn crop_flip(img: &[u8], h: usize, w: usize, pad: usize, rng: &mut Rng) -> Vec<u8> {
    let dy = rng.below(2 * pad + 1) as isize - pad as isize;
    let dx = rng.below(2 * pad + 1) as isize - pad as isize;
    let flip = rng.chance(0.5);
    let mut out = vec![0u8; img.len()];
    for c in 0..3 {
        for y in 0..h {
            let sy = y as isize + dy;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            for x in 0..w {
                let xo = if flip { w - 1 - x } else { x };
                let sx = x as isize + dx;
                if sx >= 0 && sx < w as isize {
                    out[c * h * w + y * w + xo] = img[c * h * w + sy as usize * w + sx as usize];
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_flip_shifts_pads_with_zero_and_mirrors() {
        // 1x? image: channel c, value = 10 * y + x + 1.
        let (h, w) = (3, 4);
        let img: Vec<u8> = (0..3).flat_map(|_| (0..h).flat_map(move |y| (0..w).map(move |x| (10 * y + x + 1) as u8))).collect();
        let mut seen_flip = false;
        let mut seen_shift = false;
        let mut rng = Rng::keyed(&[1]);
        for _ in 0..50 {
            let out = crop_flip(&img, h, w, 1, &mut rng);
            let plane = &out[..h * w];
            assert_eq!(&out[..h * w], &out[h * w..2 * h * w], "channels move together");
            // Every pixel is either padding (0) or a source value at most one step away.
            for y in 0..h {
                for x in 0..w {
                    let v = plane[y * w + x];
                    if v != 0 {
                        let (sy, sx) = (((v - 1) / 10) as isize, ((v - 1) % 10) as isize);
                        assert!((sy - y as isize).abs() <= 1);
                        let direct = (sx - x as isize).abs() <= 1;
                        let mirrored = (sx - (w - 1 - x) as isize).abs() <= 1;
                        assert!(direct || mirrored);
                    }
                }
            }
            seen_flip |= plane[0] == 4 || plane[1] == 4;
            seen_shift |= plane.contains(&0);
        }
        assert!(seen_flip && seen_shift);
    }
}
