//! Face detections as `prep --crop mtcnn` and `detect` record them: the rule that keeps one
//! face per image (and its runner-up), the manifest's face record, and the rows of the detect
//! CSV (whose first five columns are the `file,x,y,w,h` that `prep --crop boxes` reads).
//!
//! Boxes are facenet-pytorch's `[x1, y1, x2, y2]` (f32) turned into a corner and a size in f64
//! (`w = x2 - x1`, exact in f64), and written with Rust's shortest round-trip formatting, so a
//! CSV read back gives the very same box, hence the very same crop.

use std::fmt;
use std::fmt::Write as _;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::prep::FaceBox;
use crate::models::mtcnn::Detection;

/// The header of the detect CSV (`rcaflow detect --out`, `prep --save-boxes`).
pub const DETECT_HEADER: &str =
    "file,x,y,w,h,score,left_eye_x,left_eye_y,right_eye_x,right_eye_y,nose_x,nose_y,mouth_left_x,mouth_left_y,mouth_right_x,mouth_right_y";

/// Which face of an image `prep --crop mtcnn` keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaceSelect {
    /// The largest box (facenet-pytorch's `select_largest=True`, its default).
    Largest,
    /// The box whose centre is nearest the image's centre (ties: the larger).
    Center,
    /// The highest face probability (facenet-pytorch's `select_largest=False`).
    MostConfident,
}

impl FromStr for FaceSelect {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "largest" => Ok(FaceSelect::Largest),
            "center" => Ok(FaceSelect::Center),
            "most-confident" => Ok(FaceSelect::MostConfident),
            other => Err(format!("unknown rule \"{other}\": expected \"largest\", \"center\" or \"most-confident\"")),
        }
    }
}

impl fmt::Display for FaceSelect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaceSelect::Largest => "largest",
            FaceSelect::Center => "center",
            FaceSelect::MostConfident => "most-confident",
        })
    }
}

/// One detected face: its box (corner and size, pixels), O-Net's probability and the five
/// landmarks (left eye, right eye, nose, mouth left, mouth right) as (x, y).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Face {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    pub score: f64,
    pub landmarks: [[f64; 2]; 5],
}

impl From<&Detection> for Face {
    fn from(d: &Detection) -> Self {
        let [x1, y1, x2, y2] = d.bbox.map(f64::from);
        Face { x: x1, y: y1, w: x2 - x1, h: y2 - y1, score: f64::from(d.score), landmarks: d.landmarks.map(|p| p.map(f64::from)) }
    }
}

impl Face {
    pub fn face_box(&self) -> FaceBox {
        FaceBox { x: self.x, y: self.y, w: self.w, h: self.h }
    }
}

/// What the manifest records of an image cropped by detection: every face found (in the
/// detector's order, largest first), the one the rule kept and the one it would have kept next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaceRecord {
    pub detections: Vec<Face>,
    /// Index into `detections`.
    pub selected: usize,
    /// Index into `detections`; `None` for an image with one face.
    pub runner_up: Option<usize>,
}

/// The indices of `faces` in the rule's order of preference, best first (a stable order:
/// ties keep the detector's order, largest first).
pub fn rank(faces: &[Face], rule: FaceSelect, image_w: u32, image_h: u32) -> Vec<usize> {
    let mut order: Vec<usize> = (0..faces.len()).collect();
    let area = |f: &Face| f.w * f.h;
    let (cx, cy) = (f64::from(image_w) / 2.0, f64::from(image_h) / 2.0);
    let dist2 = |f: &Face| (f.x + f.w / 2.0 - cx).powi(2) + (f.y + f.h / 2.0 - cy).powi(2);
    match rule {
        FaceSelect::Largest => order.sort_by(|&a, &b| area(&faces[b]).total_cmp(&area(&faces[a]))),
        FaceSelect::MostConfident => order.sort_by(|&a, &b| faces[b].score.total_cmp(&faces[a].score)),
        FaceSelect::Center => {
            order.sort_by(|&a, &b| dist2(&faces[a]).total_cmp(&dist2(&faces[b])).then(area(&faces[b]).total_cmp(&area(&faces[a]))))
        }
    }
    order
}

/// One row of the detect CSV for `file` (relative to the input folder, `/` separators): the
/// face, or, with `None`, the file and empty fields (`prep --save-boxes` writes that for an image
/// without a face; `--crop boxes` reads it as "no face: skip").
pub fn csv_row(file: &str, face: Option<&Face>) -> String {
    let mut row = String::from(file);
    match face {
        Some(f) => {
            let _ = write!(row, ",{},{},{},{},{}", f.x, f.y, f.w, f.h, f.score);
            for p in &f.landmarks {
                let _ = write!(row, ",{},{}", p[0], p[1]);
            }
        }
        None => row.push_str(&",".repeat(DETECT_HEADER.matches(',').count())),
    }
    row.push('\n');
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face(x: f64, y: f64, side: f64, score: f64) -> Face {
        Face { x, y, w: side, h: side, score, landmarks: [[0.0; 2]; 5] }
    }

    #[test]
    fn rules_rank_faces() {
        // 100x100 image: a big face in a corner, a small confident one in the middle, a
        // medium one.
        let faces = [face(0.0, 0.0, 40.0, 0.9), face(45.0, 45.0, 10.0, 0.999), face(60.0, 10.0, 20.0, 0.95)];
        assert_eq!(rank(&faces, FaceSelect::Largest, 100, 100), vec![0, 2, 1]);
        assert_eq!(rank(&faces, FaceSelect::MostConfident, 100, 100), vec![1, 2, 0]);
        assert_eq!(rank(&faces, FaceSelect::Center, 100, 100), vec![1, 2, 0]);
        assert_eq!("most-confident".parse::<FaceSelect>(), Ok(FaceSelect::MostConfident));
        assert_eq!(
            "middle".parse::<FaceSelect>().unwrap_err(),
            "unknown rule \"middle\": expected \"largest\", \"center\" or \"most-confident\""
        );
    }

    #[test]
    fn rows_round_trip_the_box_exactly() {
        let d = Detection { bbox: [90.866539, 31.543201, 134.15367, 88.338966], score: 0.99997556, landmarks: [[1.5, 2.25]; 5] };
        let f = Face::from(&d);
        let row = csv_row("a/b.png", Some(&f));
        let fields: Vec<&str> = row.trim_end().split(',').collect();
        assert_eq!(fields.len(), DETECT_HEADER.split(',').count());
        let back: Vec<f64> = fields[1..5].iter().map(|v| v.parse().unwrap()).collect();
        assert_eq!(back, [f.x, f.y, f.w, f.h]);
        assert_eq!(f.w, f64::from(d.bbox[2]) - f64::from(d.bbox[0]));
        assert_eq!(csv_row("c.png", None), "c.png,,,,,,,,,,,,,,,\n");
    }
}
