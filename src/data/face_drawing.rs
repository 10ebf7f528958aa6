//! `detect --draw`: an image with its detections drawn on it, for looking at what the detector
//! found. Boxes are green outlines, landmarks filled dots (eyes red, nose yellow, mouth
//! corners blue); the line width grows with the image so the marks stay visible on big photos.

use image::{Rgb, RgbImage};

use super::faces::Face;

const BOX: Rgb<u8> = Rgb([0, 230, 0]);
/// Left eye, right eye, nose, mouth left, mouth right.
const LANDMARKS: [Rgb<u8>; 5] = [Rgb([255, 40, 40]), Rgb([255, 40, 40]), Rgb([255, 220, 0]), Rgb([40, 120, 255]), Rgb([40, 120, 255])];

/// Fills the pixels of `[x0, x1) x [y0, y1)` that lie inside the image.
fn fill(img: &mut RgbImage, (x0, y0, x1, y1): (f64, f64, f64, f64), colour: Rgb<u8>) {
    let (w, h) = (img.width() as f64, img.height() as f64);
    let (xa, xb) = (x0.max(0.0).floor() as u32, x1.min(w).ceil().max(0.0) as u32);
    let (ya, yb) = (y0.max(0.0).floor() as u32, y1.min(h).ceil().max(0.0) as u32);
    for y in ya..yb.min(img.height()) {
        for x in xa..xb.min(img.width()) {
            img.put_pixel(x, y, colour);
        }
    }
}

/// Draws every face of `faces` on `img` (parts outside the image are clipped).
pub fn draw_faces(img: &mut RgbImage, faces: &[Face]) {
    let t = (img.width().min(img.height()) as f64 / 160.0).round().max(1.0);
    for f in faces {
        let (x0, y0, x1, y1) = (f.x, f.y, f.x + f.w, f.y + f.h);
        fill(img, (x0 - t / 2.0, y0 - t / 2.0, x1 + t / 2.0, y0 + t / 2.0), BOX);
        fill(img, (x0 - t / 2.0, y1 - t / 2.0, x1 + t / 2.0, y1 + t / 2.0), BOX);
        fill(img, (x0 - t / 2.0, y0 - t / 2.0, x0 + t / 2.0, y1 + t / 2.0), BOX);
        fill(img, (x1 - t / 2.0, y0 - t / 2.0, x1 + t / 2.0, y1 + t / 2.0), BOX);
        let r = t + 1.0;
        for (p, colour) in f.landmarks.iter().zip(LANDMARKS) {
            // A disc: rows of the square around the point, cut to the circle.
            let (cx, cy) = (p[0], p[1]);
            let mut dy = -r;
            while dy <= r {
                let half = (r * r - dy * dy).max(0.0).sqrt();
                fill(img, (cx - half, cy + dy, cx + half + 1.0, cy + dy + 1.0), colour);
                dy += 1.0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_box_and_landmarks_clipped_to_the_image() {
        let mut img = RgbImage::from_pixel(40, 30, Rgb([0, 0, 0]));
        let f = Face {
            x: 10.0,
            y: 5.0,
            w: 20.0,
            h: 20.0,
            score: 1.0,
            landmarks: [[15.0, 12.0], [25.0, 12.0], [20.0, 17.0], [16.0, 21.0], [39.5, 29.5]],
        };
        draw_faces(&mut img, &[f, Face { x: -10.0, y: -10.0, w: 100.0, h: 100.0, ..f }]);
        assert_eq!(*img.get_pixel(10, 15), BOX);
        assert_eq!(*img.get_pixel(20, 25), BOX);
        assert_eq!(*img.get_pixel(15, 12), LANDMARKS[0]);
        assert_eq!(*img.get_pixel(20, 17), LANDMARKS[2]);
        assert_eq!(*img.get_pixel(39, 29), LANDMARKS[4]);
        // Inside the box, away from the marks: untouched.
        assert_eq!(*img.get_pixel(20, 8), Rgb([0, 0, 0]));
    }
}
