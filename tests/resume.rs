//! Nothing lost (DESIGN.md §2, "Exactly once"): a run killed at any point and started again ends
//! with the report an uninterrupted run gives (counts exactly, FID / IS / LPIPS within 1e-9
//! relative) and the same saved images; a stage that panics is restarted where the topology
//! allows it; bad inputs are refused with one line and leave the run directory as it was;
//! `rcaflow status` reads where a run stands.
//!
//! Faults come from `RCAFLOW_FAULT` (src/fault.rs): `abort` ends the process at once,
//! with no unwinding, no flushing and no final checkpoint, as SIGKILL or a power cut would; one
//! test also kills the process with a real SIGKILL from outside. The run is the tiny sampler
//! topology of tests/common/tiny_run.rs, checkpointing after every batch.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::bin::{rcaflow_checkpointing, Ran};
use common::{color_set, tiny_run};
use serde_json::Value;

/// The bound for the float metrics of a resumed run (their sums see units in another order).
const RELATIVE: f64 = 1e-9;

fn run(root: &Path, topology: &Path, fault: Option<&str>) -> Ran {
    let mut cmd = rcaflow_checkpointing(root);
    cmd.args(["run", "--topology"]).arg(topology);
    Ran::with_fault(&mut cmd, fault)
}

fn report(root: &Path, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(root.join(format!("run-{name}/report.json"))).unwrap()).unwrap()
}

/// The uninterrupted run every resumed one is compared with (made once per test binary).
fn straight() -> &'static (PathBuf, Value) {
    static STRAIGHT: OnceLock<(PathBuf, Value)> = OnceLock::new();
    STRAIGHT.get_or_init(|| {
        // In the target folder (not leaked into /tmp), made afresh by each run of this binary.
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("resume-straight");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let topology = tiny_run::write_topology(&root, "straight", 1, None);
        let o = run(&root, &topology, None);
        assert!(o.success(), "{}", o.stderr);
        let r = report(&root, "straight");
        assert_eq!(r["status"], "complete");
        (root, r)
    })
}

/// Equal reports: the same keys, integers (counts, confusion matrices) exactly, floats within
/// [`RELATIVE`].
fn assert_same(resumed: &Value, straight: &Value, path: &str) {
    match (resumed, straight) {
        (Value::Object(a), Value::Object(b)) => {
            assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "keys of {path}");
            for (k, v) in a {
                assert_same(v, &b[k], &format!("{path}.{k}"));
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "length of {path}");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_same(x, y, &format!("{path}[{i}]"));
            }
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!((x - y).abs() <= RELATIVE * x.abs().max(y.abs()), "{path}: {x} resumed, {y} uninterrupted");
        }
        _ => assert_eq!(resumed, straight, "{path}"),
    }
}

/// The resumed run `name` equals the uninterrupted one: report and saved PNGs.
fn assert_equals_straight(root: &Path, name: &str) {
    let (straight_root, straight_report) = straight();
    // Paths in the report name each test's own folder and run name.
    let rooted = |r: Value, root: &Path, name: &str| -> Value {
        let text = serde_json::to_string(&tiny_run::comparable(r)).unwrap();
        serde_json::from_str(&text.replace(&root.display().to_string(), "ROOT").replace(&format!("-{name}"), "-NAME")).unwrap()
    };
    assert_same(&rooted(report(root, name), root, name), &rooted(straight_report.clone(), straight_root, "straight"), "report");
    let ours = tiny_run::walk(&root.join(format!("samples-{name}")));
    let theirs = tiny_run::walk(&straight_root.join("samples-straight"));
    assert_eq!(ours.len(), 15, "every generated image saved once: {ours:?}");
    for (a, b) in ours.iter().zip(&theirs) {
        assert_eq!(a.file_name(), b.file_name());
        assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap(), "{}", a.display());
    }
}

fn sessions(root: &Path, name: &str) -> Vec<Value> {
    let manifest: Value = serde_json::from_slice(&std::fs::read(root.join(format!("run-{name}/run.json"))).unwrap()).unwrap();
    manifest["sessions"].as_array().unwrap().clone()
}

fn killed(o: &Ran) -> bool {
    o.code().is_none()
}

/// Crashes the run at `fault` (and at `second`, on the first restart), then runs it to the end.
fn crash_and_resume(name: &str, fault: &str, second: Option<&str>) {
    let _ = straight();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let topology = tiny_run::write_topology(root, name, 1, None);
    let o = run(root, &topology, Some(fault));
    assert!(killed(&o), "{fault}: the run should have died: {}", o.stderr);
    assert!(!root.join(format!("run-{name}/report.json")).exists(), "a killed run writes no report");
    let mut runs = 1;
    if let Some(second) = second {
        let o = run(root, &topology, Some(second));
        assert!(killed(&o), "{second}: the resumed run should have died: {}", o.stderr);
        runs += 1;
    }
    let o = run(root, &topology, None);
    assert!(o.success(), "{fault}: resume failed: {}", o.stderr);
    let s = sessions(root, name);
    assert_eq!(s.len(), runs + 1, "one session per start: {s:?}");
    assert_eq!(s[0]["units_skipped"], 0);
    assert_equals_straight(root, name);
    // Nothing half-written is left behind.
    let leftovers: Vec<_> =
        tiny_run::walk(root).into_iter().filter(|p| p.to_string_lossy().contains(rcaflow::files::atomic::TEMP_MARK)).collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn killed_while_sampling_resumes_to_the_same_report() {
    // The sampler recorded its 4th unit and died before sending it.
    crash_and_resume("sampling", "abort@sampler.unit:4", None);
}

#[test]
fn killed_between_a_stages_work_and_its_checkpoint_resumes_to_the_same_report() {
    // rca folded its 3rd batch in and died before checkpointing it; then, resumed, lpips dies
    // after its 2nd batch: two crashes at different points.
    crash_and_resume("applied", "abort@rca.applied:3", Some("abort@lpips.applied:2"));
}

#[test]
fn killed_while_writing_a_checkpoint_resumes_to_the_same_report() {
    // The FID checkpoint's temporary file is written (64 MB) but not yet renamed.
    crash_and_resume("writing", "abort@checkpoint.fid.write:3", None);
}

#[test]
fn sigkill_from_outside_resumes_to_the_same_report() {
    let _ = straight();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let topology = tiny_run::write_topology(root, "sigkill", 1, None);
    let mut child = rcaflow_checkpointing(root)
        .args(["run", "--topology"])
        .arg(&topology)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the evaluation has checkpointed something and the sampler is under way.
    let rca = root.join("run-sigkill/state/rca.ckpt");
    let started = Instant::now();
    while !rca.exists() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let status = Ran::of(rcaflow_checkpointing(root).arg("status").arg(root.join("run-sigkill")));
    let text = &status.stdout;
    // The run may have been killed after it finished everything but the report, or before.
    if !root.join("run-sigkill/report.json").exists() {
        assert!(text.contains("stopped (run the same command again to resume)"), "{text}{}", status.stderr);
    }
    assert!(text.contains("source sampler (generated): ") && text.contains("/15 images"), "{text}");
    let o = run(root, &topology, None);
    assert!(o.success(), "{}", o.stderr);
    assert_equals_straight(root, "sigkill");
    let status = Ran::of(rcaflow_checkpointing(root).arg("status").arg(root.join("run-sigkill")));
    let text = &status.stdout;
    assert!(text.contains("finished") && text.contains("15/15 images, 9/9 units"), "{text}");
}

#[test]
fn a_panicking_stage_with_restart_completes_with_the_right_counts() {
    let _ = straight();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let topology = tiny_run::write_topology(root, "restart", 1, Some(1));
    let o = run(root, &topology, Some("panic@oracle.batch:3"));
    assert!(o.success(), "{}", o.stderr);
    assert!(o.stderr.contains("restarting it and redoing its batch in flight"), "{}", o.stderr);
    assert_equals_straight(root, "restart");

    // Without `restart`, the run stops naming the stage; the state stays, and a resume completes.
    let topology = tiny_run::write_topology(root, "norestart", 1, None);
    let o = run(root, &topology, Some("panic@oracle.batch:3"));
    assert_eq!(o.code(), Some(1), "{}", o.stderr);
    assert!(o.stderr.contains("stage transforms.oracle failed: panicked: RCAFLOW_FAULT: injected panic at oracle.batch"), "{}", o.stderr);
    assert!(root.join("run-norestart/state/rca.ckpt").exists());
    let o = run(root, &topology, None);
    assert!(o.success(), "{}", o.stderr);
    assert_equals_straight(root, "norestart");
}

/// Every file of the run directory, with a hash of its bytes.
fn snapshot_dir(dir: &Path) -> Vec<(PathBuf, u64)> {
    use std::hash::{Hash, Hasher};
    let hash = |bytes: Vec<u8>| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        h.finish()
    };
    // run.lock aside: the holder's pid and start time are rewritten by each start.
    let files = tiny_run::walk(dir).into_iter().filter(|p| !p.ends_with("run.lock"));
    files.map(|p| (p.clone(), hash(std::fs::read(&p).unwrap()))).collect()
}

fn one_line_error(o: &Ran) -> String {
    let text = &o.stderr;
    text.lines().find(|l| l.starts_with("error")).unwrap_or_else(|| panic!("no error line in {text}")).to_string()
}

#[test]
fn bad_inputs_are_refused_and_leave_the_run_directory_intact() {
    let _ = straight();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let topology = tiny_run::write_topology(root, "bad", 1, None);
    let dir = root.join("run-bad");
    let o = run(root, &topology, Some("abort@inception.batch:4"));
    assert!(killed(&o), "{}", o.stderr);

    // 1. A tampered checkpoint: refused by its checksum, nothing written.
    let fid = dir.join("state/fid.ckpt");
    let good = std::fs::read(&fid).unwrap();
    let mut tampered = good.clone();
    tampered[good.len() / 2] ^= 0x10;
    std::fs::write(&fid, &tampered).unwrap();
    let before = snapshot_dir(&dir);
    let o = run(root, &topology, None);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert!(one_line_error(&o).contains("fid.ckpt\": checksum mismatch: the file is truncated or was changed"), "{}", o.stderr);
    assert_eq!(snapshot_dir(&dir), before, "a refused resume changes nothing");
    std::fs::write(&fid, &good).unwrap();

    // 2. Another topology: refused naming the component and field.
    let text = std::fs::read_to_string(&topology).unwrap();
    let other = root.join("other.toml");
    std::fs::write(&other, text.replace("pairs = 4", "pairs = 6")).unwrap();
    let before = snapshot_dir(&dir);
    let o = run(root, &other, None);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert!(one_line_error(&o).contains("holds a run of another topology or other files: sinks.lpips changed (pairs)"), "{}", o.stderr);
    assert_eq!(snapshot_dir(&dir), before);

    // 3. Other model weights (same path, new content): refused naming the file.
    let oracle = root.join("oracle.safetensors");
    let weights = std::fs::read(&oracle).unwrap();
    let colors: Vec<[u8; 3]> = color_set::PALETTE[1..4].iter().map(|(_, c)| *c).collect();
    candle_core::safetensors::save(&color_set::color_oracle(&colors), &oracle).unwrap();
    let o = run(root, &topology, None);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert!(one_line_error(&o).contains("transforms.oracle weights changed (sha256 "), "{}", o.stderr);
    assert_eq!(snapshot_dir(&dir), before);
    std::fs::write(&oracle, weights).unwrap();

    // 4. The directory's OS lock held by another process (this test stands in for it): refused
    // with the holder's pid and start time; a pid of a live process in an unlocked run.lock (a
    // lock file of an older rcaflow) blocks nothing.
    let held = std::fs::OpenOptions::new().write(true).open(dir.join("run.lock")).unwrap();
    held.try_lock().unwrap();
    std::fs::write(dir.join("run.lock"), "pid 4242\nstarted_unix 1767225600\n").unwrap();
    let o = run(root, &topology, None);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert!(
        one_line_error(&o).contains("in use by another rcaflow run (pid 4242, started 2026-01-01 00:00:00 UTC, holds run.lock)"),
        "{}",
        o.stderr
    );
    drop(held);
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    std::fs::write(dir.join("run.lock"), sleeper.id().to_string()).unwrap();

    // 5. A full disk while checkpointing: the run stops naming the file; the previous
    // checkpoint stays valid and no temporary file is left.
    let held_before = rcaflow::runtime::checkpoint::read_applied(&dir, "rca").unwrap();
    let o = run(root, &topology, Some("enospc@checkpoint.rca.write:2"));
    assert_eq!(o.code(), Some(1), "{}", o.stderr);
    assert!(o.stderr.contains("rca.ckpt\": cannot write: No space left on device"), "{}", o.stderr);
    let held_after = rcaflow::runtime::checkpoint::read_applied(&dir, "rca").unwrap();
    assert!(held_after.is_superset(&held_before) && !held_after.is_empty());
    assert!(!tiny_run::walk(&dir.join("state")).iter().any(|p| p.to_string_lossy().contains(rcaflow::files::atomic::TEMP_MARK)));

    // After all that (the old-style pid of `sleep` in run.lock blocks nothing), the run still resumes to the
    // uninterrupted report.
    let o = run(root, &topology, None);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert!(o.success(), "{}", o.stderr);
    assert_equals_straight(root, "bad");
    assert!(sessions(root, "bad").len() >= 3);
    // A refused start keeps the finished run's report too.
    let before = snapshot_dir(&dir);
    let o = run(root, &other, None);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert_eq!(snapshot_dir(&dir), before);
    assert!(dir.join("report.json").exists());
}

#[test]
fn weights_that_fail_to_load_stop_the_run_in_its_build_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let topology = tiny_run::write_topology(root, "weights", 1, None);
    // A truncated Inception file: the build step fails loading it, as a bad topology fails.
    let path = root.join("inception.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
    let o = run(root, &topology, None);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    let line = o.stderr.lines().find(|l| l.contains("- transforms.inception:")).unwrap_or_else(|| panic!("stage named:\n{}", o.stderr));
    assert!(line.contains("inception.safetensors"), "{line}");
    // No stage ran: the run directory was not even made.
    assert!(!root.join("run-weights").exists());
}

#[test]
fn status_of_a_directory_that_is_not_a_run_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let o = Ran::of(rcaflow_checkpointing(tmp.path()).arg("status").arg(tmp.path()));
    assert_eq!(o.code(), Some(2));
    assert!(one_line_error(&o).contains("no run.json (not a run directory, or never started)"), "{}", o.stderr);
}

/// Starts the run, waits until the evaluation has checkpointed something, then sends `signals`
/// SIGINTs; returns the exit code.
fn interrupt(root: &Path, topology: &Path, name: &str, signals: usize) -> Option<i32> {
    let mut child = rcaflow_checkpointing(root)
        .args(["run", "--topology"])
        .arg(topology)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rca = root.join(format!("run-{name}/state/rca.ckpt"));
    let started = Instant::now();
    while !rca.exists() && started.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(20));
    }
    for _ in 0..signals {
        let kill = Command::new("sh").arg("-c").arg(format!("kill -INT {}", child.id())).status().unwrap();
        assert!(kill.success());
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait().unwrap().code()
}

#[test]
fn ctrl_c_once_drains_twice_stops_and_both_resume() {
    let _ = straight();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    // Once: a graceful drain, an interrupted report, exit 130; then the resume completes it.
    let topology = tiny_run::write_topology(root, "once", 1, None);
    let code = interrupt(root, &topology, "once", 1);
    if code == Some(130) {
        let r = report(root, "once");
        assert_eq!(r["status"], "interrupted");
    } else {
        assert_eq!(code, Some(0), "the run may only have finished before the signal came");
    }
    let o = run(root, &topology, None);
    assert!(o.success(), "{}", o.stderr);
    assert_equals_straight(root, "once");
    // Twice: an immediate stop (exit 130, no final checkpoints), still resumable.
    let topology = tiny_run::write_topology(root, "twice", 1, None);
    let code = interrupt(root, &topology, "twice", 2);
    assert!(matches!(code, Some(130) | Some(0)), "{code:?}");
    let o = run(root, &topology, None);
    assert!(o.success(), "{}", o.stderr);
    assert_equals_straight(root, "twice");
}

// ---- early stop (`stop_when`) ----

/// The tiny run (5 images a class in units of 2, classes interleaved) with `stop_when` on its
/// rca sink: at most 0.45 half-width (every interval of 2 or more images is that tight) and at
/// least 4 images a class, so the rule first holds after the second unit of every class.
fn early_stop_topology(root: &Path, name: &str) -> PathBuf {
    let path = tiny_run::write_topology(root, name, 1, None);
    let text = std::fs::read_to_string(&path).unwrap();
    let stopped = text.replace("[sinks.rca]\n", "[sinks.rca]\nstop_when = { ci_half_width = 0.45, min_per_class = 4 }\n");
    assert_ne!(stopped, text, "the tiny topology has no [sinks.rca]");
    std::fs::write(&path, stopped).unwrap();
    path
}

/// The saved PNGs of run `name`, relative to its samples folder, with their bytes.
fn saved(root: &Path, name: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = root.join(format!("samples-{name}"));
    let mut files: Vec<_> =
        tiny_run::walk(&dir).into_iter().map(|p| (p.strip_prefix(&dir).unwrap().to_path_buf(), std::fs::read(&p).unwrap())).collect();
    files.sort();
    files
}

#[test]
fn early_stop_ends_at_the_first_unit_where_the_rule_holds_and_a_killed_run_resumes_to_the_same_report() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let topology = early_stop_topology(root, "stop");
    // One decision over all classes cannot be split into shards: refused before anything runs.
    let mut sharded = rcaflow_checkpointing(root);
    let o = Ran::of(sharded.args(["run", "--shard", "0/2", "--topology"]).arg(&topology));
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert_eq!(
        o.stderr.trim().lines().last().unwrap_or_default(),
        "error: sinks.rca: stop_when cannot run with --shard 0/2: an early stop is decided over every class of the whole run, not per shard; run unsharded, or drop stop_when"
    );
    assert!(!root.join("run-stop").exists(), "a refused shard touches no run directory");
    let o = run(root, &topology, None);
    assert!(o.success(), "{}", o.stderr);
    let r = report(root, "stop");
    assert_eq!(r["status"], "complete", "an early stop is a complete run");
    // The progress gauge ends complete: the units not sampled are no longer planned. The last
    // progress line carries the gauge's final value.
    let line = o.stderr.lines().rev().find(|l| l.contains("progress: ")).unwrap_or_else(|| panic!("no progress line:\n{}", o.stderr));
    let progress = line.split("progress: ").nth(1).unwrap();
    let (done, planned) = progress.split(" images").next().unwrap().split_once('/').unwrap();
    assert_eq!(done, planned, "{line}");
    assert!(progress.ends_with("images (1.000)"), "{line}");
    let stop = &r["early_stop"];
    // Units of 2 interleaved: after 6 units every class has 4 images, the minimum.
    assert_eq!(stop["last_unit"], "generated/2/1", "{stop}");
    assert_eq!((stop["units_used"].as_u64(), stop["images_used"].as_u64(), stop["images_planned"].as_u64()), (Some(6), Some(12), Some(15)));
    assert_eq!((stop["ci_half_width"].as_f64(), stop["min_per_class"].as_u64()), (Some(0.45), Some(4)));
    let confusion = &r["generated"]["confusion"];
    for c in 0..tiny_run::CLASSES {
        let class = &stop["per_class"][c];
        let row: Vec<u64> = confusion[c].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        let (images, correct) = (row.iter().sum::<u64>(), row[c]);
        assert_eq!((class["images"].as_u64(), class["planned"].as_u64(), images), (Some(4), Some(5), 4), "class {c}: {class}");
        // The interval is the Wilson interval of the counts the report holds.
        let ci = rcaflow::metrics::rca::wilson_interval(correct, images, rcaflow::metrics::rca::Z95).unwrap();
        assert_eq!((class["ci95"]["low"].as_f64(), class["ci95"]["high"].as_f64()), (Some(ci.low), Some(ci.high)), "class {c}");
        assert_eq!(class["half_width"].as_f64(), Some((ci.high - ci.low) / 2.0));
        assert!((ci.high - ci.low) / 2.0 <= 0.45);
        assert_eq!(class["recall"].as_f64(), Some(correct as f64 / 4.0));
    }
    // Every stage used the same 12 images, whatever the sampler had in flight at the stop.
    assert_eq!(r["generated"]["total"], 12);
    assert_eq!(r["fid"]["generated_images"], 12);
    let sampler = &r["generation"]["sampler"];
    assert_eq!(
        (sampler["generated"].clone(), sampler["units"].clone(), sampler["stopped_early"].clone()),
        (serde_json::json!([4, 4, 4]), 6.into(), true.into())
    );
    let files = saved(root, "stop");
    let names: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
    assert_eq!(names.len(), 12, "{names:?}");
    assert!(names.iter().all(|n| ["000000", "000001", "000002", "000003"].iter().any(|p| n.contains(p))), "{names:?}");
    // `cas --generated RUN_DIR` finds the run's saved images and its oracle in run.json, and
    // refuses, in one line, a recipe that is not the oracle's and images of another size.
    let cas = |arch: &str| {
        let mut cmd = rcaflow_checkpointing(root);
        cmd.args(["cas", "--generated"]).arg(root.join("run-stop")).args(["--real-eval"]).arg(root.join("real"));
        Ran::of(cmd.args(["--arch", arch, "--stem", "cifar", "--norm", "minus-one-one", "--out"]).arg(root.join("cas")))
    };
    let o = cas("resnet34");
    let oracle = root.join("oracle.safetensors");
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    let expected = format!(
        "error: --arch resnet34: the run's oracle ({}) has resnet18; CAS trains the oracle's architecture with its recipe",
        oracle.display()
    );
    assert_eq!(o.stderr.trim(), expected);
    let o = cas("resnet18");
    let expected =
        format!("error: --generated {}: images are 32x32, --real-eval's 8x8 (expected one size)", root.join("samples-stop").display());
    assert_eq!((o.code(), o.stderr.trim()), (Some(2), expected.as_str()));
    assert!(!root.join("cas").exists());
    let md = std::fs::read_to_string(root.join("run-stop/report.md")).unwrap();
    assert!(
        md.contains("## Early stop") && md.contains("Sampling stopped after unit `generated/2/1` (6 units, 12 of 15 planned images)"),
        "{md}"
    );

    // Killed while sampling, and killed after the stop fired (writing the report): the resumed
    // runs stop at the same unit and give the same report and the same saved images.
    let comparable = |root: &Path, name: &str| -> Value {
        let text = serde_json::to_string(&tiny_run::comparable(report(root, name))).unwrap();
        serde_json::from_str(&text.replace(&root.display().to_string(), "ROOT").replace(&format!("-{name}"), "-NAME")).unwrap()
    };
    let straight = comparable(root, "stop");
    for (name, fault) in [("stop-sampling", "abort@sampler.unit:3"), ("stop-report", "abort@report.write:1")] {
        let topology = early_stop_topology(root, name);
        let o = run(root, &topology, Some(fault));
        assert!(killed(&o), "{fault}: the run should have died: {}", o.stderr);
        let o = run(root, &topology, None);
        assert!(o.success(), "{fault}: resume failed: {}", o.stderr);
        assert_eq!(sessions(root, name).len(), 2);
        assert_same(&comparable(root, name), &straight, "report");
        assert_eq!(saved(root, name), files, "{fault}: saved images");
    }
}
