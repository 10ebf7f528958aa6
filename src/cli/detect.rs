//! `rcaflow detect`: facenet-pytorch's MTCNN ([`crate::models::mtcnn`]) on every image under a
//! folder, every detection one CSV row (the first five columns are what `prep --crop boxes`
//! reads), optionally each image drawn with its detections. Also the detector flags and the
//! weights lookup that `prep --crop mtcnn` shares.
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;

use super::CliError;
use crate::data::face_drawing::draw_faces;
use crate::data::faces::{csv_row, Face, DETECT_HEADER};
use crate::models::mtcnn::{Mtcnn, MtcnnConfig, RgbView, MIN_FACE};
use crate::settings::Settings;

/// The detector's flags (`detect` and `prep --crop mtcnn`).
#[derive(Debug, Clone, Args)]
pub struct MtcnnArgs {
    /// Folder holding facenet-pytorch's pnet.pt, rnet.pt, onet.pt (else $RCAFLOW_MTCNN_DIR, else
    /// the facenet_pytorch/data folder of the `python3` on PATH).
    #[arg(long, value_name = "DIR")]
    pub mtcnn_weights: Option<PathBuf>,
    /// Smallest face searched for, in pixels (facenet-pytorch's min_face_size).
    #[arg(long, default_value_t = 20.0, value_name = "PIXELS", allow_negative_numbers = true)]
    pub min_face: f64,
    /// P-Net, R-Net and O-Net face-probability thresholds, each in (0, 1).
    #[arg(long, default_value = "0.6,0.7,0.7", value_name = "P,R,O")]
    pub thresholds: String,
    /// Scale factor between pyramid levels, in (0, 1).
    #[arg(long, default_value_t = 0.709, allow_negative_numbers = true)]
    pub factor: f64,
    /// Images detected together (P-Net stacks those of one size; R-Net and O-Net take the
    /// crops of all).
    #[arg(long = "detect-batch", default_value_t = 16, value_name = "N", value_parser = super::batch_size)]
    pub detect_batch: usize,
    /// Where the nets run (cpu, cuda, cuda:N; default: the config file's [runtime] device).
    #[arg(long)]
    pub device: Option<String>,
}

impl MtcnnArgs {
    /// The detector's settings, each bad value refused in one line naming its flag.
    pub fn config(&self) -> Result<MtcnnConfig, CliError> {
        let bad = |flag: &str, value: &str, expected: &str| CliError::Input(format!("--{flag} {value}: expected {expected}"));
        if !(self.min_face.is_finite() && self.min_face >= MIN_FACE) {
            return Err(bad("min-face", &self.min_face.to_string(), &format!("at least {MIN_FACE} pixels")));
        }
        if !(self.factor > 0.0 && self.factor < 1.0) {
            return Err(bad("factor", &self.factor.to_string(), "a number in (0, 1)"));
        }
        let t: Vec<f32> =
            self.thresholds.split(',').filter_map(|v| v.trim().parse::<f32>().ok()).filter(|v| *v > 0.0 && *v < 1.0).collect();
        let thresholds: [f32; 3] = match t.try_into() {
            Ok(t) if self.thresholds.split(',').count() == 3 => t,
            _ => return Err(bad("thresholds", &self.thresholds, "three numbers in (0, 1), P-Net's, R-Net's and O-Net's, as 0.6,0.7,0.7")),
        };
        Ok(MtcnnConfig { min_face: self.min_face, thresholds, factor: self.factor })
    }

    /// The nets, from the weights folder [`mtcnn_weights_dir`] finds, on `--device` (else the
    /// config file's), and that folder.
    pub fn load(&self, settings: &Settings) -> Result<(Mtcnn, PathBuf), CliError> {
        let dir = mtcnn_weights_dir(self.mtcnn_weights.as_deref())?;
        let mut settings = settings.clone();
        super::apply_overrides(&mut settings, &None, &self.device)?;
        let device = settings.open_device()?;
        let mtcnn = Mtcnn::load(&dir, &device).map_err(|e| CliError::Input(e.to_string()))?;
        Ok((mtcnn, dir))
    }
}

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Images: DIR/**/*.png|jpg|jpeg.
    #[arg(long, value_name = "DIR")]
    pub input: PathBuf,
    /// Output CSV, one row per detection.
    #[arg(long, value_name = "FILE.csv")]
    pub out: PathBuf,
    /// Also write each image with its boxes and landmarks drawn, as DIR/<file>.png (same
    /// sub-folders as under --input).
    #[arg(long, value_name = "DIR")]
    pub draw: Option<PathBuf>,
    #[command(flatten)]
    pub mtcnn: MtcnnArgs,
}

/// The weights folder: the flag, else `$RCAFLOW_MTCNN_DIR`, else an installed facenet-pytorch.
pub fn mtcnn_weights_dir(flag: Option<&Path>) -> Result<PathBuf, CliError> {
    let has_all = |d: &Path| ["pnet.pt", "rnet.pt", "onet.pt"].iter().all(|f| d.join(f).is_file());
    if let Some(d) = flag {
        return Ok(d.to_path_buf());
    }
    if let Some(d) = std::env::var_os("RCAFLOW_MTCNN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let found = std::process::Command::new("python3")
        .args(["-c", "import facenet_pytorch, os; print(os.path.join(os.path.dirname(facenet_pytorch.__file__), 'data'))"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match found {
        Some(d) if has_all(&d) => Ok(d),
        _ => Err(CliError::Input(
            "mtcnn weights: need pnet.pt, rnet.pt and onet.pt (facenet-pytorch's, MIT); give their folder with --mtcnn-weights or $RCAFLOW_MTCNN_DIR, or get them with `pip download facenet-pytorch --no-deps` and unzip its facenet_pytorch/data/".into(),
        )),
    }
}

fn images_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), CliError> {
    let rd = std::fs::read_dir(dir).map_err(|e| CliError::Input(format!("--input {}: cannot read: {e}", dir.display())))?;
    let mut entries: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            images_under(&p, out)?;
        } else if p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        {
            out.push(p);
        }
    }
    Ok(())
}

/// Where `--draw` puts the drawing of `rel`: the same relative path, `.png` appended unless the
/// name already ends so (`a/b.jpg` -> `a/b.jpg.png`, so `b.jpg` and `b.png` do not collide).
fn drawing_path(draw: &Path, rel: &str) -> PathBuf {
    let is_png = rel.rsplit('.').next().is_some_and(|e| e.eq_ignore_ascii_case("png")) && rel.contains('.');
    draw.join(if is_png { rel.to_string() } else { format!("{rel}.png") })
}

pub fn detect(args: DetectArgs, settings: Settings) -> Result<(), CliError> {
    let cfg = args.mtcnn.config()?;
    if let Some(draw) = &args.draw {
        // Drawings inside the input would overwrite its PNGs, or be read as photos next time.
        let inside = match (std::fs::canonicalize(&args.input), std::fs::canonicalize(draw)) {
            (Ok(input), Ok(draw)) => draw.starts_with(&input),
            _ => false,
        };
        if inside {
            return Err(CliError::Input(format!("--draw {}: inside --input; expected a folder outside it", draw.display())));
        }
    }
    let mut files = Vec::new();
    images_under(&args.input, &mut files)?;
    let (mtcnn, _) = args.mtcnn.load(&settings)?;
    let mut csv = format!("{DETECT_HEADER}\n");
    let mut faces = 0;
    let start = Instant::now();
    let mut done = 0;
    for chunk in files.chunks(args.mtcnn.detect_batch) {
        let mut imgs = Vec::with_capacity(chunk.len());
        for f in chunk {
            let img =
                crate::data::image_folder::open_image(f).map_err(|e| CliError::Input(format!("{}: cannot decode: {e}", f.display())))?;
            imgs.push(img.to_rgb8());
        }
        let views: Vec<RgbView> =
            imgs.iter().map(|i| RgbView { data: i.as_raw(), w: i.width() as usize, h: i.height() as usize }).collect();
        let dets = mtcnn.detect_batch(&views, &cfg).map_err(|e| CliError::Input(e.to_string()))?;
        for ((f, img), dets) in chunk.iter().zip(imgs).zip(dets) {
            let rel = f
                .strip_prefix(&args.input)
                .unwrap_or(f)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            let found: Vec<Face> = dets.iter().map(Face::from).collect();
            for face in &found {
                csv.push_str(&csv_row(&rel, Some(face)));
            }
            faces += found.len();
            if let Some(draw) = &args.draw {
                let mut img = img;
                draw_faces(&mut img, &found);
                let path = drawing_path(draw, &rel);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .map_err(|e| CliError::Output(format!("--draw {}: cannot create: {e}", parent.display())))?;
                }
                crate::files::png::write_rgb8(&path, &img).map_err(|e| CliError::Output(format!("--draw {}: {e}", path.display())))?;
            }
        }
        done += chunk.len();
        eprint!("\rdetect: {done}/{} images", files.len());
    }
    eprintln!();
    let secs = start.elapsed().as_secs_f64();
    std::fs::write(&args.out, csv).map_err(|e| CliError::Output(format!("--out {}: cannot write: {e}", args.out.display())))?;
    println!(
        "detect: {faces} faces in {} images ({:.2} images/s, decoding included), written to {}",
        files.len(),
        files.len() as f64 / secs.max(1e-9),
        args.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(thresholds: &str, min_face: f64, factor: f64) -> MtcnnArgs {
        MtcnnArgs { mtcnn_weights: None, min_face, thresholds: thresholds.into(), factor, detect_batch: 16, device: None }
    }

    #[test]
    fn bad_detector_flags_are_named() {
        let msg = |a: MtcnnArgs| a.config().unwrap_err().to_string();
        assert_eq!(
            args("0.5, 0.6,0.9", 20.0, 0.709).config().unwrap(),
            MtcnnConfig { min_face: 20.0, thresholds: [0.5, 0.6, 0.9], factor: 0.709 }
        );
        let t = "expected three numbers in (0, 1), P-Net's, R-Net's and O-Net's, as 0.6,0.7,0.7";
        assert_eq!(msg(args("0.6,0.7", 20.0, 0.709)), format!("--thresholds 0.6,0.7: {t}"));
        assert_eq!(msg(args("0.6,0.7,1.5", 20.0, 0.709)), format!("--thresholds 0.6,0.7,1.5: {t}"));
        assert_eq!(msg(args("0.6,0.7,0.7,0.7", 20.0, 0.709)), format!("--thresholds 0.6,0.7,0.7,0.7: {t}"));
        assert_eq!(msg(args("0.6,x,0.7", 20.0, 0.709)), format!("--thresholds 0.6,x,0.7: {t}"));
        assert_eq!(msg(args("0.6,0.7,0.7", 20.0, 1.0)), "--factor 1: expected a number in (0, 1)");
        assert_eq!(msg(args("0.6,0.7,0.7", 2.0, 0.709)), "--min-face 2: expected at least 4 pixels");
    }

    #[test]
    fn drawings_keep_names_apart() {
        assert_eq!(drawing_path(Path::new("d"), "a/b.png"), Path::new("d/a/b.png"));
        assert_eq!(drawing_path(Path::new("d"), "a/b.jpg"), Path::new("d/a/b.jpg.png"));
    }
}
