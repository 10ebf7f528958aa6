//! PNG encoding in memory (the `image` crate's encoder into a `Vec`), so every PNG rcaflow
//! writes goes to disk through [`super::atomic`] and a failed write is an error, not an empty
//! file.

use std::path::Path;

/// Encodes interleaved 8-bit RGB (`width * height * 3` bytes) as a PNG.
pub fn encode_rgb8(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, image::ImageError> {
    use image::ImageEncoder;
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes).write_image(rgb, width, height, image::ExtendedColorType::Rgb8)?;
    Ok(bytes)
}

/// Writes an RGB image as a PNG at `path` through the atomic writer (fault point `png.write`).
pub fn write_rgb8(path: &Path, image: &image::RgbImage) -> Result<(), String> {
    let bytes = encode_rgb8(image.width(), image.height(), image.as_raw()).map_err(|e| e.to_string())?;
    super::atomic::write(path, &bytes, "png.write").map_err(|e| e.to_string())
}
