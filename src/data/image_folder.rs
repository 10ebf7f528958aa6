//! Image folders on disk: listing an ImageFolder tree (`root/<class>/**/*.png|jpg|jpeg`, class
//! order = sorted folder names, as torchvision's `ImageFolder`), decoding one image to planar
//! RGB, and writing one as a PNG. Shared by the image_folder source, `save_images`, `prep`, the
//! trainers' datasets and the run manifest; decoding uses the `image` crate (PNG and JPEG only).

use std::path::{Path, PathBuf};

const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

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

/// Image files of one class folder, recursively, sorted by path.
pub fn list_images(class_dir: &Path) -> Result<Vec<PathBuf>, FolderError> {
    let mut files = Vec::new();
    let mut dirs = vec![class_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let list_err = |source| FolderError::List { path: dir.clone(), source };
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

fn has_image_extension(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Decodes one file to planar RGB (3 x H x W) and its size.
pub fn decode_rgb_planar(path: &Path) -> Result<(usize, usize, Vec<u8>), String> {
    let image = image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .decode()
        .map_err(|e| e.to_string())?
        .to_rgb8();
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut planar = vec![0u8; 3 * h * w];
    for (i, px) in image.pixels().enumerate() {
        for c in 0..3 {
            planar[c * h * w + i] = px.0[c];
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
