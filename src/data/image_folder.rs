//! Image folders on disk: listing an ImageFolder tree (`root/<class>/**/*.png|jpg|jpeg`, class
//! order = sorted folder names, as torchvision's `ImageFolder`), decoding one image to planar
//! RGB, and writing one as a PNG. Shared by the image_folder source, `save_images`, `prep`, the
//! trainers' datasets and the run manifest; decoding uses the `image` crate (PNG and JPEG only).
//!
//! Images come from anywhere (folders scraped from the web): each file's declared size is read
//! from its header and checked against [`ImageLimits`] before anything is decoded, so a 31 KB
//! PNG declaring 16000x16000 pixels is refused at once. Folder walks follow directory symlinks
//! (datasets are often assembled from links) but enter each directory (device, inode) once, so a
//! symlink loop ends the walk of that branch instead of hanging it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use image::{DynamicImage, ImageDecoder};
use serde::{Deserialize, Serialize};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// How large an image may be: checked against each file's header before it is decoded. A
/// process-wide setting (`[images]` in the config file, see [`set_image_limits`]), since images
/// are decoded in stages, trainers, `prep` and `fid` alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageLimits {
    pub max_width: u32,
    pub max_height: u32,
    /// The most memory one decode may allocate, in MiB (the decoded pixels and the decoder's
    /// own buffers).
    pub max_alloc_mib: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits { max_width: 8192, max_height: 8192, max_alloc_mib: 512 }
    }
}

static MAX_WIDTH: AtomicU32 = AtomicU32::new(8192);
static MAX_HEIGHT: AtomicU32 = AtomicU32::new(8192);
static MAX_ALLOC_MIB: AtomicU64 = AtomicU64::new(512);

/// Sets the limits every later decode in this process checks (the binary does it once, from the
/// settings).
pub fn set_image_limits(limits: ImageLimits) {
    MAX_WIDTH.store(limits.max_width, Ordering::Relaxed);
    MAX_HEIGHT.store(limits.max_height, Ordering::Relaxed);
    MAX_ALLOC_MIB.store(limits.max_alloc_mib, Ordering::Relaxed);
}

/// The limits in force.
pub fn image_limits() -> ImageLimits {
    ImageLimits {
        max_width: MAX_WIDTH.load(Ordering::Relaxed),
        max_height: MAX_HEIGHT.load(Ordering::Relaxed),
        max_alloc_mib: MAX_ALLOC_MIB.load(Ordering::Relaxed),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("image folder \"{path}\": cannot list: {source}")]
    List { path: PathBuf, source: std::io::Error },
    #[error("image folder \"{0}\": class folder missing")]
    MissingClass(PathBuf),
}

/// Class folder names under `root`, sorted. Hidden folders (`.name`) are not classes.
pub fn list_classes(root: &Path) -> Result<Vec<String>, FolderError> {
    let list_err = |source| FolderError::List { path: root.to_path_buf(), source };
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(root).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && !name.starts_with('.') {
            classes.push(name);
        }
    }
    classes.sort();
    Ok(classes)
}

/// Image files of one class folder, recursively, sorted by path. Directory symlinks are
/// followed, but a directory already entered (same device and inode) is not entered again.
pub fn list_images(class_dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let mut files = Vec::new();
    let mut dirs = vec![class_dir.to_path_buf()];
    let mut entered = HashSet::new();
    while let Some(dir) = dirs.pop() {
        let list_err = |source| FolderError::List { path: dir.clone(), source };
        if !entered.insert(dir_identity(&dir).map_err(list_err)?) {
            tracing::debug!(path = %dir.display(), "directory already listed (a symlink loop?); not entered again");
            continue;
        }
        for entry in std::fs::read_dir(&dir).map_err(list_err)? {
            let path = entry.map_err(list_err)?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if has_image_extension(&path) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// What makes a directory the same one whatever path reaches it.
#[cfg(unix)]
fn dir_identity(dir: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dir)?;
    Ok((m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn dir_identity(dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::canonicalize(dir)
}

fn has_image_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Decodes one image file, once, after checking the size its header declares against
/// [`image_limits`]. The error says why the file is unreadable (without the path: callers name it).
pub fn open_image(path: &Path) -> Result<DynamicImage, String> {
    let limits = image_limits();
    let max_alloc = limits.max_alloc_mib.saturating_mul(1 << 20);
    let mut reader = image::ImageReader::open(path).map_err(|e| e.to_string())?.with_guessed_format().map_err(|e| e.to_string())?;
    // Only the header is read here; the limits are set on the decoder after the size check
    // below, which is what names the cause (the decoder's own error would not).
    reader.no_limits();
    let mut decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (w, h) = decoder.dimensions();
    if w > limits.max_width || h > limits.max_height {
        return Err(format!(
            "image is {w}x{h} pixels, larger than the {}x{} limit (images.max_width and \
             images.max_height in the config file)",
            limits.max_width, limits.max_height
        ));
    }
    let bytes = decoder.total_bytes();
    if bytes > max_alloc {
        return Err(format!(
            "image is {w}x{h} pixels of {:?}, {bytes} bytes decoded, more than the {} MiB limit \
             (images.max_alloc_mib in the config file)",
            decoder.color_type(),
            limits.max_alloc_mib
        ));
    }
    // The decoder's own buffers are bounded too.
    let mut decoder_limits = image::Limits::default();
    decoder_limits.max_alloc = Some(max_alloc);
    decoder_limits.max_image_width = Some(limits.max_width);
    decoder_limits.max_image_height = Some(limits.max_height);
    decoder.set_limits(decoder_limits).map_err(|e| e.to_string())?;
    DynamicImage::from_decoder(decoder).map_err(|e| e.to_string())
}

/// Decodes one file to planar RGB (3 x H x W) and its size: the decoded image is read straight
/// into the planar buffer (alpha dropped, grey replicated, as `to_rgb8` does), without an
/// interleaved RGB copy in between for the common 8-bit layouts.
pub fn decode_rgb_planar(path: &Path) -> Result<(usize, usize, Vec<u8>), String> {
    let image = open_image(path)?;
    let (w, h) = (image.width() as usize, image.height() as usize);
    let plane = h * w;
    let mut planar = vec![0u8; 3 * plane];
    let (r, rest) = planar.split_at_mut(plane);
    let (g, b) = rest.split_at_mut(plane);
    match image {
        DynamicImage::ImageRgb8(img) => {
            for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
                (r[i], g[i], b[i]) = (px[0], px[1], px[2]);
            }
        }
        DynamicImage::ImageRgba8(img) => {
            for (i, px) in img.as_raw().chunks_exact(4).enumerate() {
                (r[i], g[i], b[i]) = (px[0], px[1], px[2]);
            }
        }
        DynamicImage::ImageLuma8(img) => {
            for (i, &l) in img.as_raw().iter().enumerate() {
                (r[i], g[i], b[i]) = (l, l, l);
            }
        }
        other => {
            for (i, px) in other.into_rgb8().pixels().enumerate() {
                (r[i], g[i], b[i]) = (px.0[0], px.0[1], px.0[2]);
            }
        }
    }
    Ok((h, w, planar))
}

/// Encodes planar RGB (3 x H x W) as a PNG in memory and writes it at `path` through the atomic
/// writer (fault point `png.write`). The folder is not fsynced: a caller writing many images
/// calls `files::atomic::sync_dir` before it records them as written.
pub fn write_png(path: &Path, height: usize, width: usize, planar: &[u8]) -> Result<(), String> {
    let plane = height * width;
    let interleaved: Vec<u8> = (0..plane).flat_map(|i| [planar[i], planar[plane + i], planar[2 * plane + i]]).collect();
    let bytes = crate::files::png::encode_rgb8(width as u32, height as u32, &interleaved).map_err(|e| e.to_string())?;
    crate::files::atomic::write_unsynced_dir(path, &bytes, "png.write").map_err(|e| e.to_string())
}
