//! Hostile and broken inputs, the write side (issue 16): nothing lost when a write fails, one
//! run per directory, nothing written outside its place, range checks. Every input is made
//! here; a full disk is injected through the fault points of the one atomic writer
//! (`RCAFLOW_FAULT=enospc@png.write:N`, src/fault.rs), which fail where a real ENOSPC would.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::bin::Ran;
use common::tiny_run;

fn rcaflow(root: &Path) -> Command {
    let config = root.join("settings.toml");
    if !config.exists() {
        std::fs::write(&config, "[metrics]\nlisten = \"off\"\n[runtime]\ncheckpoint_interval_secs = 0.001\n").unwrap();
    }
    let mut cmd = common::bin::rcaflow();
    cmd.arg("--config").arg(config);
    cmd
}

fn run(root: &Path, topology: &Path, fault: Option<&str>) -> Ran {
    let mut cmd = rcaflow(root);
    cmd.args(["run", "--topology"]).arg(topology);
    if let Some(f) = fault {
        cmd.env("RCAFLOW_FAULT", f);
    }
    Ran::of(&mut cmd)
}

fn error_line(o: &Ran) -> String {
    o.stderr.lines().find(|l| l.starts_with("error")).unwrap_or_else(|| panic!("no error line in {}", o.stderr)).to_string()
}

/// The PNGs under `dir` (recursively), each with its size.
fn pngs(dir: &Path) -> Vec<(PathBuf, u64)> {
    if !dir.exists() {
        return Vec::new();
    }
    tiny_run::walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect()
}

fn temporaries(dir: &Path) -> Vec<PathBuf> {
    tiny_run::walk(dir).into_iter().filter(|p| p.to_string_lossy().contains(rcaflow::files::atomic::TEMP_MARK)).collect()
}

#[test]
fn a_full_disk_while_saving_images_stops_the_run_and_the_resume_writes_every_image() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let topology = tiny_run::write_topology(root, "enospc", 1, None);
    let samples = root.join("samples-enospc");
    // The 7th PNG fails as on a full disk.
    let o = run(root, &topology, Some("enospc@png.write:7"));
    assert_eq!(o.code(), Some(1), "{}", o.stderr);
    let line = error_line(&o);
    assert!(line.contains("stage sinks.samples failed") && line.contains("cannot write: No space left on device"), "{line}");
    assert!(line.contains(&samples.display().to_string()) && line.contains(".png\""), "the file is named: {line}");
    assert!(!root.join("run-enospc/report.json").exists(), "a failed run writes no report");
    let written = pngs(&samples);
    assert_eq!(written.len(), 6, "{written:?}");
    assert!(written.iter().all(|(_, len)| *len > 0), "no empty PNG: {written:?}");
    assert!(temporaries(root).is_empty(), "{:?}", temporaries(root));

    // Space freed: the resume writes the images the failed run did not record as saved.
    let o = run(root, &topology, None);
    assert!(o.success(), "{}", o.stderr);
    let written = pngs(&samples);
    assert_eq!(written.len(), 15, "every image of 3 classes x 5: {written:?}");
    for (path, len) in &written {
        assert!(*len > 0, "{}", path.display());
        rcaflow::data::image_folder::decode_rgb_planar(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }

    // A full disk while drawing a figure: the run fails naming the figure, writes no
    // report.json, and the resume (every unit already held) writes the whole report.
    let o = run(root, &topology, Some("enospc@figure.write:1"));
    assert_eq!(o.code(), Some(1), "{}", o.stderr);
    let line = error_line(&o);
    assert!(line.contains("figure \"") && line.contains(".png\": cannot write: No space left on device"), "{line}");
    assert!(!root.join("run-enospc/report.json").exists());
    let o = run(root, &topology, Some("enospc@report.write:2"));
    assert_eq!(o.code(), Some(1), "{}", o.stderr);
    assert!(error_line(&o).contains("report.json\": cannot write: No space left on device"), "{}", o.stderr);
    assert!(!root.join("run-enospc/report.json").exists());
    let o = run(root, &topology, None);
    assert!(o.success(), "{}", o.stderr);
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(root.join("run-enospc/report.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "complete");
    assert_eq!(report["generated"]["total"], 15);
    for figure in ["confusion_real.png", "rca_per_class.png", "samples_grid.png"] {
        assert!(std::fs::metadata(root.join("run-enospc").join(figure)).unwrap().len() > 0, "{figure}");
    }
    assert!(temporaries(root).is_empty(), "{:?}", temporaries(root));
}

#[test]
fn a_full_disk_in_sample_and_fid_stats_is_an_error_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    tiny_run::write_models(root);
    let out = root.join("sampled");
    let sample = |fault: Option<&str>| {
        let mut cmd = rcaflow(root);
        cmd.args(["sample", "--scheduler", "ddim", "--steps", "2", "--classes", "all", "--per-class", "2", "--unit-size", "2"])
            .arg("--unet")
            .arg(root.join("unet"))
            .arg("--out")
            .arg(&out);
        if let Some(f) = fault {
            cmd.env("RCAFLOW_FAULT", f);
        }
        Ran::of(&mut cmd)
    };
    let o = sample(Some("enospc@png.write:3"));
    assert_eq!(o.code(), Some(1), "{}", o.stderr);
    let line = error_line(&o);
    assert!(line.contains("image \"") && line.contains(".png\": cannot write: No space left on device"), "{line}");
    assert!(pngs(&out).iter().all(|(_, len)| *len > 0) && pngs(&out).len() == 2, "{:?}", pngs(&out));
    let o = sample(None);
    assert!(o.success(), "{}", o.stderr);
    assert_eq!(pngs(&out).len(), 6);

    let stats = root.join("stats.npz");
    let fid_stats = |fault: &str| {
        let mut cmd = rcaflow(root);
        cmd.arg("fid-stats").arg(root.join("real")).arg("--out").arg(&stats).arg("--inception").arg(root.join("inception.safetensors"));
        cmd.env("RCAFLOW_FAULT", fault);
        Ran::of(&mut cmd)
    };
    let o = fid_stats("enospc@npz.write:1");
    assert_eq!(o.code(), Some(1), "{}", o.stderr);
    assert!(
        error_line(&o).contains(&format!("fid statistics \"{}\": cannot write: No space left on device", stats.display())),
        "{}",
        o.stderr
    );
    assert!(!stats.exists());
    assert!(temporaries(root).is_empty(), "{:?}", temporaries(root));
    let o = fid_stats("enospc@npz.write:2");
    assert!(o.success(), "{}", o.stderr);
    let back = rcaflow::data::fid_stats::FidStats::read(&stats).unwrap();
    assert_eq!(back.dim(), 2048);
}
