//! Hostile and broken inputs, the write side (issue 16): nothing lost when a write fails, one
//! run per directory, nothing written outside its place, range checks. Every input is made
//! here; a full disk is injected through the fault points of the one atomic writer
//! (`RCAFLOW_FAULT=enospc@png.write:N`, src/fault.rs), which fail where a real ENOSPC would.

mod common;

use std::path::{Path, PathBuf};

use common::bin::{rcaflow_checkpointing, Ran};
use common::tiny_run;

fn run(root: &Path, topology: &Path, fault: Option<&str>) -> Ran {
    let mut cmd = rcaflow_checkpointing(root);
    cmd.args(["run", "--topology"]).arg(topology);
    Ran::with_fault(&mut cmd, fault)
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
        let mut cmd = rcaflow_checkpointing(root);
        cmd.args(["sample", "--scheduler", "ddim", "--steps", "2", "--classes", "all", "--per-class", "2", "--unit-size", "2"])
            .arg("--unet")
            .arg(root.join("unet"))
            .arg("--out")
            .arg(&out);
        Ran::with_fault(&mut cmd, fault)
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
        let mut cmd = rcaflow_checkpointing(root);
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

    // A model folder whose classes.json names a class "../../escape": refused before anything is
    // generated, naming the file and the name.
    let unet = root.join("unet");
    let classes_json = unet.join("classes.json");
    std::fs::write(&classes_json, r#"["red", "../../escape", "blue"]"#).unwrap();
    let o = sample(None);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    let line = error_line(&o);
    assert!(
        line.contains(&format!("class names \"{}\": class name \"../../escape\": contains a path separator", classes_json.display())),
        "{line}"
    );
    assert!(!out.join("../../escape").exists() && !root.join("escape").exists());
    std::fs::remove_file(&classes_json).unwrap();

    // A config.json asking for 100000x100000 samples: refused, not a 120 GB allocation.
    let config = unet.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"sample_size\": 32", "\"sample_size\": 100000")).unwrap();
    let o = sample(None);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    let line = error_line(&o);
    assert!(line.contains("sample_size") && line.contains("100000") && line.contains("sides must be between 1 and 4096 pixels"), "{line}");
    std::fs::write(&config, text).unwrap();
}

/// Starts `rcaflow run` held at `wait@POINT` until `release` exists; waits until it holds the
/// run lock of `dir`.
fn start_held(root: &Path, topology: &Path, point: &str, release: &Path, dir: &Path) -> std::process::Child {
    let child = rcaflow_checkpointing(root)
        .args(["run", "--topology"])
        .arg(topology)
        .env("RCAFLOW_FAULT", format!("wait@{point}"))
        .env("RCAFLOW_FAULT_RELEASE", release)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = dir.join("run.lock");
    let started = std::time::Instant::now();
    let mine = format!("pid {}\n", child.id());
    while !std::fs::read_to_string(&lock).is_ok_and(|t| t.starts_with(&mine)) {
        assert!(started.elapsed() < std::time::Duration::from_secs(300), "the first run never took the lock");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child
}

#[test]
fn one_run_per_directory_and_a_killed_runs_directory_is_reusable() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let topology = tiny_run::write_topology(root, "locked", 1, None);
    let dir = root.join("run-locked");
    let release = root.join("go");
    let mut first = start_held(root, &topology, "sampler.unit:2", &release, &dir);

    // A second run on the same directory is refused, naming the holder; nothing ran.
    let o = run(root, &topology, None);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    let line = error_line(&o);
    assert!(line.contains(&format!("\"{}\": in use by another rcaflow run (pid {}, started ", dir.display(), first.id())), "{line}");
    assert!(line.ends_with("UTC, holds run.lock); wait for it to end, or use another --run-dir"), "{line}");
    let status = Ran::of(rcaflow_checkpointing(root).arg("status").arg(&dir));
    assert!(status.stdout.contains(&format!("running (pid {}, started ", first.id())), "{}{}", status.stdout, status.stderr);

    // The first run, let go, finishes unharmed.
    std::fs::write(&release, b"").unwrap();
    assert!(first.wait().unwrap().success());
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "complete");
    assert_eq!(report["generated"]["total"], 15);
    assert_eq!(pngs(&root.join("samples-locked")).len(), 15);

    // A run killed (SIGKILL) while it holds the lock: the kernel released it, a new run goes on.
    std::fs::remove_file(&release).unwrap();
    let topology = tiny_run::write_topology(root, "killed", 1, None);
    let dir = root.join("run-killed");
    let mut doomed = start_held(root, &topology, "sampler.unit:1", &release, &dir);
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let o = run(root, &topology, None);
    assert!(o.success(), "{}", o.stderr);
    assert!(dir.join("report.json").exists());
}

/// `rcaflow validate` of `text` written as `root/<name>.toml`.
fn validate(root: &Path, name: &str, text: &str) -> Ran {
    let path = root.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    Ran::of(rcaflow_checkpointing(root).args(["validate", "--topology"]).arg(&path))
}

#[test]
fn class_names_that_are_not_one_folder_name_are_refused_wherever_they_come_from() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    for bad in ["../../x", "a/b", "..", ".hidden", "", "tab\tname"] {
        let text = format!(
            "[run]\ndir = \"run\"\nclasses = [\"a\", {bad:?}]\n[sources.s]\ntype = \"ddpm_sampler\"\nunet = \"u\"\nper_class = 1\n[sinks.out]\ntype = \"save_images\"\ninputs = [\"s\"]\npath = \"out\"\n"
        );
        let o = validate(root, "classes", &text);
        assert_eq!(o.code(), Some(2), "{bad:?}: {}", o.stderr);
        let shown: String = bad.escape_debug().collect();
        let line = o.stderr.lines().find(|l| l.contains("run.classes: class name")).unwrap_or_else(|| panic!("{bad:?}: {}", o.stderr));
        assert!(line.contains(&format!("class name \"{shown}\": ")) && line.contains("expected one folder name"), "{line}");
    }
    // A class folder whose name is not a harmless folder name (a control character).
    let real = root.join("real");
    std::fs::create_dir_all(real.join("alice")).unwrap();
    std::fs::create_dir_all(real.join("bad\nname")).unwrap();
    let text = "[run]\ndir = \"run\"\n[sources.real]\ntype = \"image_folder\"\npath = \"real\"\norigin = \"real\"\n[sinks.out]\ntype = \"save_images\"\ninputs = [\"real\"]\npath = \"out\"\n";
    let o = validate(root, "folders", text);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert!(
        o.stderr.contains("sources.real: class folder of \"")
            && o.stderr.contains("class name \"bad\\nname\": contains a control character"),
        "{}",
        o.stderr
    );
    assert!(!root.join("run").exists() && !root.join("out").exists(), "nothing ran");
}

#[cfg(unix)]
#[test]
fn a_path_through_a_symlink_and_up_is_the_folder_the_file_system_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // current -> runs/7; current/../real is runs/real, not ./real (a decoy).
    std::fs::create_dir_all(root.join("runs/7")).unwrap();
    std::fs::create_dir_all(root.join("runs/real/alice")).unwrap();
    std::fs::create_dir_all(root.join("real/decoy")).unwrap();
    std::os::unix::fs::symlink("runs/7", root.join("current")).unwrap();
    let resolved = rcaflow::topology::config::resolve(root, Path::new("current/../real"));
    assert_eq!(resolved, root.join("runs/real").canonicalize().unwrap());
    // Without a symlink the text is folded as before (messages keep relative paths).
    assert_eq!(rcaflow::topology::config::resolve(Path::new("topology"), Path::new("../example/real")), PathBuf::from("example/real"));
}

#[test]
fn durations_and_sizes_out_of_range_are_refused_with_exit_2_not_a_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("real/alice")).unwrap();
    let text = "[run]\ndir = \"run\"\n[sources.real]\ntype = \"image_folder\"\npath = \"real\"\norigin = \"real\"\nunit_size = 100000000\n[transforms.batches]\ntype = \"batcher\"\ninputs = [\"real\"]\nbatch_size = 100000000\n[transforms.inception]\ntype = \"inception\"\ninputs = [\"batches\"]\nweights = \"missing.safetensors\"\n[sinks.fid]\ntype = \"fid\"\ninputs = [\"inception\"]\nreference = \"missing.npz\"\ninterval_secs = 1e300\n";
    let o = validate(root, "ranges", text);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    for expected in [
        "sinks.fid: interval_secs must be a positive number of seconds up to 2592000 (30 days), found 1e300",
        "sources.real: unit_size must be at most 4096 images, found 100000000",
        "transforms.batches: batch_size must be at most 4096 images, found 100000000",
    ] {
        assert!(o.stderr.contains(expected), "{expected}\n{}", o.stderr);
    }
    let settings = root.join("huge.toml");
    std::fs::write(&settings, "[runtime]\nshutdown_deadline_secs = 1e300\n").unwrap();
    let o = Ran::of(common::bin::rcaflow().arg("--config").arg(&settings).args(["validate", "--topology"]).arg(root.join("ranges.toml")));
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert!(
        error_line(&o).contains("runtime.shutdown_deadline_secs must be a positive number of seconds up to 2592000 (30 days), found 1e300"),
        "{}",
        o.stderr
    );
    let o = common::bin::run(["fid-stats", "real", "--out", "x.npz", "--batch-size", "0"]);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("the batch size must be at least 1 image, found 0"), "{}", o.stderr);
}

#[test]
fn a_full_disk_while_saving_a_training_checkpoint_keeps_the_previous_one_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let cmd = |args: &[&str], fault: Option<&str>| {
        let mut c = common::bin::rcaflow();
        c.args(args).current_dir(root);
        Ran::with_fault(&mut c, fault)
    };
    let o = cmd(&["synth", "--out", "data/train", "--classes", "2", "--per-class", "2", "--size", "8"], None);
    assert!(o.success(), "{}", o.stderr);
    let unet = r#"{"block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1, "norm_num_groups": 4,
        "attention_head_dim": 8, "num_class_embeds": 2}"#;
    std::fs::write(root.join("unet.json"), unet).unwrap();
    let train = ["train", "ddpm", "--data", "data", "--out", "m", "--batch-size", "2", "--checkpoint-every", "1", "--metrics-addr", "off"];
    // Each checkpoint writes two weight files (EMA weights, training state): the 3rd write is the
    // second checkpoint's first.
    let o = cmd(&[&train[..], &["--steps", "2", "--unet-config", "unet.json"]].concat(), Some("enospc@weights.write:3"));
    assert_eq!(o.code(), Some(1), "{}", o.stderr);
    let line = error_line(&o);
    assert!(line.contains("diffusion_pytorch_model.safetensors") && line.contains("No space left on device"), "{line}");
    let checkpoints = root.join("m/checkpoints");
    let names: Vec<String> =
        std::fs::read_dir(&checkpoints).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["step-00000001"], "the first checkpoint stays, no half or temporary folder: {names:?}");
    let o = cmd(&[&train[..], &["--steps", "2", "--resume"]].concat(), None);
    assert!(o.success(), "{}", o.stderr);
    for file in ["training_state.json", "training_state.safetensors", "diffusion_pytorch_model.safetensors"] {
        assert!(std::fs::metadata(checkpoints.join("step-00000002").join(file)).unwrap().len() > 0, "{file}");
    }
}
