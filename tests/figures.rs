//! Report figures render, decode as PNG, have the expected size and are not blank.
//!
//! Set `RCAFLOW_FIGURE_DIR=/some/dir` to keep the rendered PNGs for a look by eye (the layout
//! is checked that way; these tests guard against regressions that break decoding or sizing).

use std::path::{Path, PathBuf};

use rcaflow::report::figures::{confusion_heatmap, fid_rca_bars, loss_curve, rca_bars, sample_grid, ClassSamples};

fn out_dir(tmp: &tempfile::TempDir) -> anyhow::Result<PathBuf> {
    match std::env::var_os("RCAFLOW_FIGURE_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            Ok(PathBuf::from(dir))
        }
        None => Ok(tmp.path().to_path_buf()),
    }
}

/// Decodes `path` and checks it has more than a handful of distinct colours.
fn check_png(path: &Path) -> anyhow::Result<(u32, u32)> {
    let bytes = std::fs::read(path)?;
    assert!(bytes.starts_with(b"\x89PNG"), "{} is not a PNG", path.display());
    let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png)?.to_rgb8();
    let mut colours = std::collections::HashSet::new();
    for p in img.pixels() {
        colours.insert(p.0);
        if colours.len() > 50 {
            break;
        }
    }
    assert!(colours.len() > 50, "{} looks blank", path.display());
    Ok(img.dimensions())
}

fn classes(n: usize) -> Vec<String> {
    let names = ["Jang Wonyoung", "Karina", "Winter", "Jisoo", "Jennie", "Rosé", "Lisa", "IU", "Kim Chaewon of LE SSERAFIM", "Hanni"];
    names.iter().cycle().take(n).map(|s| s.to_string()).collect()
}

/// A diagonal-heavy matrix with one empty row when `n` > 2.
fn matrix(n: usize) -> Vec<Vec<u64>> {
    (0..n)
        .map(|t| {
            if n > 2 && t == 3 {
                return vec![0; n];
            }
            (0..n).map(|p| if p == t { 4000 + 100 * t as u64 } else { ((t * 7 + p * 3) % 11) as u64 * 9 }).collect()
        })
        .collect()
}

#[test]
fn heatmaps_render_for_2_and_10_classes() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = out_dir(&tmp)?;
    let mut sizes = Vec::new();
    for n in [2usize, 10] {
        let path = dir.join(format!("confusion_{n}.png"));
        confusion_heatmap(&path, &format!("generated images: oracle confusion ({n} classes)"), &classes(n), &matrix(n))?;
        let (w, h) = check_png(&path)?;
        assert!(w >= 300 && h >= 250, "{n} classes: {w}x{h} too small");
        assert!(w <= 4000 && h <= 4000, "{n} classes: {w}x{h} too large");
        sizes.push((w, h));
    }
    // More classes, larger figure.
    assert!(sizes[1].0 > sizes[0].0 && sizes[1].1 > sizes[0].1, "{sizes:?}");
    Ok(())
}

#[test]
fn all_zero_confusion_renders() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = out_dir(&tmp)?.join("confusion_empty.png");
    confusion_heatmap(&path, "nothing yet", &classes(3), &vec![vec![0; 3]; 3])?;
    check_png(&path)?;
    Ok(())
}

#[test]
fn rca_bars_render_for_2_and_10_classes() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = out_dir(&tmp)?;
    let cases: [(usize, Vec<Option<f64>>, Option<f64>); 3] = [
        (2, vec![Some(0.91), None], Some(0.91)),
        (
            10,
            vec![Some(0.95), Some(1.08), Some(0.42), None, Some(0.0), Some(0.77), Some(0.99), Some(1.31), Some(0.66), Some(0.88)],
            Some(0.83),
        ),
        (3, vec![None, None, None], None),
    ];
    let mut sizes = Vec::new();
    for (n, values, global) in cases {
        let path = dir.join(format!("rca_{n}.png"));
        rca_bars(&path, &classes(n), &values, global)?;
        let (w, h) = check_png(&path)?;
        assert!(w >= 300 && h >= 250, "{n} classes: {w}x{h}");
        sizes.push(w);
    }
    assert!(sizes[1] > sizes[0], "{sizes:?}");
    Ok(())
}

#[test]
fn fid_beside_rca_renders_with_and_without_rca_and_refuses_mismatched_lengths() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = out_dir(&tmp)?;
    let fid = [Some(41.2), Some(187.0), None, Some(8.4), Some(95.5), Some(63.0), Some(120.3), Some(12.9), Some(77.7), Some(55.0)];
    let rca = [Some(0.95), Some(0.41), Some(1.02), None, Some(0.8), Some(0.7), Some(0.55), Some(1.1), Some(0.66), Some(0.9)];
    let flags = [false, true, false, false, false, false, true, false, false, false];
    let both = dir.join("fid_rca_10.png");
    fid_rca_bars(&both, &classes(10), &fid, &flags, Some(&rca))?;
    let alone = dir.join("fid_rca_3.png");
    fid_rca_bars(&alone, &classes(3), &fid[..3], &[false; 3], None)?;
    let ((wb, hb), (wa, ha)) = (check_png(&both)?, check_png(&alone)?);
    assert!(hb > ha && wb > wa, "{wb}x{hb} vs {wa}x{ha}");
    let e = fid_rca_bars(&dir.join("bad.png"), &classes(3), &fid[..2], &[false; 3], None).unwrap_err().to_string();
    assert!(e.contains("bad.png") && e.contains("3 classes"), "{e}");
    Ok(())
}

#[test]
fn unwritable_path_is_an_error_naming_it() {
    let path = Path::new("/nonexistent-rcaflow-dir/figure.png");
    let e = rca_bars(path, &classes(2), &[Some(1.0), Some(0.5)], Some(0.75)).expect_err("directory does not exist");
    assert!(e.to_string().contains("/nonexistent-rcaflow-dir/figure.png"), "{e}");
}

#[test]
fn sample_grid_shows_every_class_row_at_an_integer_scale() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = out_dir(&tmp)?;
    let names = classes(10);
    // 8 gradient images of 32x32 per class, tinted by class.
    let images: Vec<Vec<Vec<u8>>> = (0..10)
        .map(|c| {
            (0..8)
                .map(|k| {
                    let plane = 32 * 32;
                    (0..3 * plane).map(|v| ((v % plane) as f64 / plane as f64 * 180.0) as u8 + (c * 5 + k * (v / plane)) as u8).collect()
                })
                .collect()
        })
        .collect();
    let mut images = images;
    // One image of a single colour found nowhere else: its cell must be solid, 96x96 pixels.
    images[3][2] = [vec![201u8; 32 * 32], vec![7u8; 32 * 32], vec![13u8; 32 * 32]].concat();
    let rows: Vec<ClassSamples> = names.iter().zip(&images).map(|(n, im)| ClassSamples { class: n, images: im }).collect();
    let path = dir.join("samples_grid.png");
    sample_grid(&path, "generated samples (first 8 per class)", &rows, (32, 32))?;
    let (w, h) = check_png(&path)?;
    let solid = image::open(&path)?.to_rgb8().pixels().filter(|p| p.0 == [201, 7, 13]).count();
    assert_eq!(solid, 96 * 96, "an image is drawn as solid pixels, without gaps between them");
    // 32x32 images at 3x: 8 columns and 10 rows of 96 px cells plus labels and title.
    assert!(w > 8 * 96 && w < 8 * 100 + 300, "width {w}");
    assert!(h > 10 * 96 && h < 10 * 100 + 80, "height {h}");
    let err = sample_grid(&path, "x", &[ClassSamples { class: "a", images: &[vec![0; 5]] }], (32, 32)).unwrap_err();
    assert!(err.to_string().contains("an image has 5 values, expected 3x32x32"), "{err}");
    Ok(())
}

#[test]
fn loss_curve_draws_raw_and_smoothed_losses() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = out_dir(&tmp)?;
    let points: Vec<(usize, f64)> = (1..=300).map(|s| (s, 1.0 / (s as f64).sqrt() + 0.05 * ((s * 7919) % 13) as f64 / 13.0)).collect();
    let path = dir.join("loss.png");
    loss_curve(&path, "DDPM training loss", "MSE (epsilon)", &points, 10)?;
    let (w, h) = check_png(&path)?;
    assert!(w > 600 && h > 350, "{w}x{h}");
    // Zero or negative values switch to a linear axis rather than failing.
    loss_curve(&dir.join("linear.png"), "t", "v", &[(0, 0.0), (1, -1.0)], 1)?;
    let e = loss_curve(&dir.join("none.png"), "t", "v", &[(0, f64::NAN)], 1).unwrap_err().to_string();
    assert!(e.contains("no finite values to draw"), "{e}");
    Ok(())
}
