//! The kid and precision_recall sinks and the fid sink's per_class in a run: two image folders
//! (real and generated, noisy colour images) → batcher → random-weight Inception → fid
//! (per_class), kid (per_class), precision_recall (per_class) → report. report.json carries
//! the fields the README documents, and a run killed after the kid sink applied a batch (before
//! its checkpoint) and resumed gives the same numbers as one never interrupted; so do a run that
//! spills every feature to disk, and two such shards merged (`rcaflow merge`).

mod common;

use std::path::{Path, PathBuf};

use common::bin::Ran;
use common::color_set::{identity_image, SplitMix, PALETTE};
use common::topology::Topology;
use serde_json::Value;

const CLASSES: usize = 2;
const REAL: usize = 4;
const GENERATED: usize = 5;

/// Real and generated folders, the Inception weights and the topology `root/<name>.toml`.
fn setup(root: &Path, name: &str) -> PathBuf {
    if !root.join("inception.safetensors").exists() {
        common::random_weights::random_inception(&root.join("inception.safetensors"));
        let mut rng = SplitMix(11);
        for (origin, n) in [("real", REAL), ("generated", GENERATED)] {
            for (class, color) in &PALETTE[..CLASSES] {
                let dir = root.join(origin).join(class);
                std::fs::create_dir_all(&dir).unwrap();
                for i in 0..n {
                    identity_image(&dir.join(format!("{i:03}.png")), 16, *color, &mut rng);
                }
            }
        }
        std::fs::write(root.join("settings.toml"), common::bin::CHECKPOINT_OFTEN).unwrap();
    }
    Topology::new(&format!("run-{name}"))
        .set("run", "default_capacity", 2)
        .image_folder("real", "real")
        .set("sources.real", "unit_size", 2)
        .image_folder("generated", "generated")
        .set("sources.generated", "unit_size", 2)
        .batcher(&["real", "generated"], 3)
        .inception(&["batches"])
        .sink("fid", "fid", &["inception"])
        .set("sinks.fid", "per_class", true)
        .sink("kid", "kid", &["inception"])
        .set("sinks.kid", "subsets", 20)
        .set("sinks.kid", "per_class", true)
        .sink("prc", "precision_recall", &["inception"])
        .set("sinks.prc", "per_class", true)
        .sink("report", "report", &["fid", "kid", "prc"])
        .write(&root.join(format!("{name}.toml")))
}

fn run(root: &Path, topology: &Path, fault: Option<&str>) -> Ran {
    run_with(root, "settings.toml", topology, fault)
}

/// A run with the settings file `root/<settings>`.
fn run_with(root: &Path, settings: &str, topology: &Path, fault: Option<&str>) -> Ran {
    let mut cmd = common::bin::rcaflow();
    cmd.arg("--config").arg(root.join(settings)).args(["run", "--topology"]).arg(topology);
    Ran::with_fault(&mut cmd, fault)
}

fn report(root: &Path, name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(root.join(format!("run-{name}/report.json"))).unwrap()).unwrap()
}

fn unit_interval(v: &Value) -> bool {
    v.as_f64().is_some_and(|x| (0.0..=1.0).contains(&x))
}

#[test]
fn kid_and_precision_recall_reach_the_report_and_survive_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();

    let straight = setup(root, "straight");
    let o = run(root, &straight, None);
    assert!(o.success(), "{}", o.stderr);
    let r = report(root, "straight");

    let kid = &r["kid"];
    assert!(kid["mean"].is_f64() && kid["std"].is_f64(), "{kid}");
    assert_eq!((kid["subsets"].as_u64(), kid["subset_size"].as_u64()), (Some(20), Some((REAL * CLASSES) as u64)));
    assert_eq!(kid["subset_size_requested"], 1000);
    assert!(kid["note"].as_str().unwrap().contains("clipped to 8"), "{kid}");
    assert_eq!((kid["real_images"].as_u64(), kid["generated_images"].as_u64()), (Some(8), Some(10)));
    let per_class = kid["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), CLASSES);
    assert!(per_class.iter().all(|c| c["mean"].is_f64() && c["std"].is_f64()), "{kid}");

    let prc = &r["precision_recall"];
    for key in ["precision", "recall", "coverage"] {
        assert!(unit_interval(&prc[key]), "{key}: {prc}");
    }
    assert!(prc["density"].as_f64().is_some_and(|d| d >= 0.0), "{prc}");
    assert_eq!((prc["k"].as_u64(), prc["real_images"].as_u64(), prc["generated_images"].as_u64()), (Some(3), Some(8), Some(10)));
    let per_class = prc["per_class"].as_array().unwrap();
    assert_eq!(per_class.len(), CLASSES);
    assert!(per_class.iter().all(|c| unit_interval(&c["precision"]) && unit_interval(&c["recall"])), "{prc}");
    // Counts over 10 and 8 images: the values are k / n exactly.
    let scaled = |v: &Value, n: f64| v.as_f64().unwrap() * n;
    assert!((scaled(&prc["precision"], 10.0) - scaled(&prc["precision"], 10.0).round()).abs() < 1e-9);

    let fid = &r["fid"];
    let classes = fid["per_class"].as_array().unwrap();
    assert_eq!(classes.len(), CLASSES);
    assert!(classes.iter().all(Value::is_f64), "{fid}");
    let mean = classes.iter().map(|v| v.as_f64().unwrap()).sum::<f64>() / CLASSES as f64;
    assert!((fid["per_class_mean"].as_f64().unwrap() - mean).abs() <= 1e-12 * mean.abs());
    assert_eq!(fid["per_class_rank_deficient"], serde_json::json!([true, true]));
    let md = std::fs::read_to_string(root.join("run-straight/report.md")).unwrap();
    assert!(md.contains("KID") && md.contains("precision") && md.contains("per-class FID"), "{md}");

    // Killed after kid applied its second batch, before that batch's checkpoint; then resumed.
    let resumed = setup(root, "resumed");
    let o = run(root, &resumed, Some("abort@kid.applied:2"));
    assert!(o.code().is_none(), "the run should have died: {}", o.stderr);
    let o = run(root, &resumed, None);
    assert!(o.success(), "resume failed: {}", o.stderr);
    let again = report(root, "resumed");
    // The features are the same whatever order units arrived in: the same numbers, bit for bit.
    assert_eq!(again["kid"], r["kid"]);
    assert_eq!(again["precision_recall"], r["precision_recall"]);
    for (a, b) in again["fid"]["per_class"].as_array().unwrap().iter().zip(classes) {
        let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
        assert!((a - b).abs() <= 1e-9 * b.abs(), "{a} vs {b}");
    }

    // feature_memory_mib = 0: every feature goes to the spill file; killed after the kid sink
    // spilled and applied its third batch (before its checkpoint: the file is cut back on
    // resume), then resumed. KID reads its subsets' rows from the file, precision/recall all of
    // them: the in-memory run's numbers, bit for bit.
    std::fs::write(root.join("settings-spill.toml"), format!("{}feature_memory_mib = 0\n", common::bin::CHECKPOINT_OFTEN)).unwrap();
    {
        let name = "spilled";
        let topology = setup(root, name);
        let o = run_with(root, "settings-spill.toml", &topology, Some("abort@kid.applied:3"));
        assert!(o.code().is_none(), "the run should have died: {}", o.stderr);
        let o = run_with(root, "settings-spill.toml", &topology, None);
        assert!(o.success(), "{name}: {}", o.stderr);
        let spilled = report(root, name);
        assert_eq!(spilled["kid"], r["kid"], "{name}");
        assert_eq!(spilled["precision_recall"], r["precision_recall"], "{name}");
        // 18 images of 2048 float32 per sink, in the file; the checkpoints hold only where.
        let state = root.join(format!("run-{name}/state"));
        for sink in ["kid", "prc"] {
            let file = std::fs::metadata(state.join(format!("{sink}.features"))).unwrap().len();
            assert_eq!(file, (REAL + GENERATED) as u64 * CLASSES as u64 * 2048 * 4, "{name}: {sink}.features");
            let checkpoint = std::fs::metadata(state.join(format!("{sink}.ckpt"))).unwrap().len();
            assert!(checkpoint < 10_000, "{name}: {sink}.ckpt holds {checkpoint} bytes");
        }
    }

    // Two shards, each spilling every feature, merged by a merge that keeps none in memory
    // either (it copies the shards' blocks into its own spill file): the single run's KID and
    // precision/recall, bit for bit.
    {
        let name = "spilled-shards";
        let topology = setup(root, name);
        let settings = root.join("settings-spill.toml");
        for k in 0..2 {
            let mut cmd = common::bin::rcaflow();
            cmd.arg("--config").arg(&settings).args(["run", "--topology"]).arg(&topology).args(["--shard", &format!("{k}/2")]);
            let o = Ran::of(&mut cmd);
            assert!(o.success(), "{name} shard {k}: {}", o.stderr);
        }
        let run_dir = root.join(format!("run-{name}"));
        let shards: Vec<PathBuf> = (0..2).map(|k| run_dir.join(format!("shard-{k}-of-2"))).collect();
        for dir in &shards {
            let file = std::fs::metadata(dir.join("state/kid.features")).map(|m| m.len()).unwrap_or(0);
            assert!(file > 0, "{}: the shard spilled nothing", dir.display());
        }
        let out = run_dir.join("merged");
        let mut cmd = common::bin::rcaflow();
        cmd.arg("--config").arg(&settings).arg("merge").args(&shards).arg("--out").arg(&out);
        let o = Ran::of(&mut cmd);
        assert!(o.success(), "{name} merge: {}", o.stderr);
        let merged: Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(merged["status"], "complete");
        assert_eq!(merged["kid"], r["kid"], "{name}");
        assert_eq!(merged["precision_recall"], r["precision_recall"], "{name}");
        // FID only sums moments (tests/shards.rs holds it to 1e-9); here 8 and 10 images of
        // 2048 dimensions make both covariances singular, and the matrix square root turns the
        // other order of summation into a 1e-8 relative difference.
        let (a, b) = (merged["fid"]["value"].as_f64().unwrap(), r["fid"]["value"].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-6 * b.abs(), "{name}: FID {a} vs {b}");
        for sink in ["kid", "prc"] {
            let file = std::fs::metadata(out.join(format!("state/{sink}.features"))).unwrap().len();
            assert_eq!(file, (REAL + GENERATED) as u64 * CLASSES as u64 * 2048 * 4, "{name}: merged {sink}.features");
        }
    }
}

#[test]
fn kid_and_precision_recall_without_real_images_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("generated/a")).unwrap();
    common::color_set::write_png(&root.join("generated/a/0.png"), 8, |_, _| [1, 2, 3]);
    common::random_weights::random_inception(&root.join("inception.safetensors"));
    let topology = Topology::new("run")
        .image_folder("generated", "generated")
        .inception(&["generated"])
        .sink("kid", "kid", &["inception"])
        .set("sinks.kid", "subsets", 0)
        .sink("prc", "precision_recall", &["inception"])
        .set("sinks.prc", "k", 0)
        .write(&root.join("t.toml"));
    let o = common::bin::run(["validate", "--topology", topology.to_str().unwrap()]);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    for needle in
        ["sinks.kid", "sinks.prc", "no real images reach it", "subsets must be at least 1, found 0", "k must be at least 1, found 0"]
    {
        assert!(o.stderr.contains(needle), "{needle}: {}", o.stderr);
    }
}
