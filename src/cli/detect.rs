//! `rcaflow detect`: facenet-pytorch's MTCNN ([`crate::models::mtcnn`]) on every image under a
//! folder, every detection one CSV row (the first five columns are what `prep --crop boxes`
//! reads).
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use candle_core::Device;
use clap::Args;

use super::CliError;
use crate::models::mtcnn::{Mtcnn, MtcnnConfig};

/// The CSV header of `rcaflow detect` (and of `prep --save-boxes`).
pub const DETECT_HEADER: &str =
    "file,x,y,w,h,score,left_eye_x,left_eye_y,right_eye_x,right_eye_y,nose_x,nose_y,mouth_left_x,mouth_left_y,mouth_right_x,mouth_right_y";

#[derive(Debug, Args)]
pub struct DetectArgs {
    /// Images: DIR/**/*.png|jpg|jpeg.
    #[arg(long, value_name = "DIR")]
    pub input: PathBuf,
    /// Folder holding facenet-pytorch's pnet.pt, rnet.pt, onet.pt (else $RCAFLOW_MTCNN_DIR, else
    /// the facenet_pytorch/data folder of the `python3` on PATH).
    #[arg(long, value_name = "DIR")]
    pub mtcnn_weights: Option<PathBuf>,
    /// Output CSV, one row per detection.
    #[arg(long, value_name = "FILE.csv")]
    pub out: PathBuf,
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

pub fn detect(args: DetectArgs) -> Result<(), CliError> {
    let dir = mtcnn_weights_dir(args.mtcnn_weights.as_deref())?;
    let mtcnn = Mtcnn::load(&dir, &Device::Cpu).map_err(|e| CliError::Input(e.to_string()))?;
    let mut files = Vec::new();
    images_under(&args.input, &mut files)?;
    let mut csv = format!("{DETECT_HEADER}\n");
    let mut faces = 0;
    for (i, f) in files.iter().enumerate() {
        let img = image::open(f).map_err(|e| CliError::Input(format!("{}: cannot decode: {e}", f.display())))?.to_rgb8();
        let (w, h) = img.dimensions();
        let dets =
            mtcnn.detect(img.as_raw(), w as usize, h as usize, &MtcnnConfig::default()).map_err(|e| CliError::Input(e.to_string()))?;
        let rel =
            f.strip_prefix(&args.input).unwrap_or(f).components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        for d in &dets {
            let [x1, y1, x2, y2] = d.bbox;
            let _ = write!(csv, "{rel},{x1},{y1},{},{},{}", x2 - x1, y2 - y1, d.score);
            for p in &d.landmarks {
                let _ = write!(csv, ",{},{}", p[0], p[1]);
            }
            csv.push('\n');
        }
        faces += dets.len();
        eprint!("\rdetect: {}/{} images", i + 1, files.len());
    }
    eprintln!();
    std::fs::write(&args.out, csv).map_err(|e| CliError::Output(format!("--out {}: cannot write: {e}", args.out.display())))?;
    println!("detect: {faces} faces in {} images, written to {}", files.len(), args.out.display());
    Ok(())
}
