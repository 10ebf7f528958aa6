//! End-to-end tests of the `rcaflow` binary on tiny generated image sets: `eval` report
//! contents, `baseline` reuse, bad inputs (corrupt images, bad weights, mismatched class
//! folders), and a graceful stop on SIGINT with live metrics scraped while the run goes on.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::Tensor;
use common::bin::{rcaflow, Ran};
use common::color_set::{self, color_oracle, write_png, PALETTE};
use common::random_weights::{random_inception, random_lpips_weights};
use common::topology::Topology;
use serde_json::Value;

const SIZE: u32 = 8;

fn colors() -> Vec<[u8; 3]> {
    PALETTE.iter().map(|(_, c)| *c).collect()
}

/// `root/<class>/<i>.png`, uniform images; `drawn(class, i)` picks the colour index.
fn write_set(root: &Path, per_class: usize, drawn: impl Fn(usize, usize) -> usize) {
    for (c, (name, _)) in PALETTE.iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let color = PALETTE[drawn(c, i)].1;
            write_png(&dir.join(format!("{i:03}.png")), SIZE, |_, _| color);
        }
    }
}

fn save_oracle(path: &Path, state: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(state, path).unwrap();
}

/// Real: 3 faithful images per class. Generated: the same, except class 3 (emerald), whose
/// images 0 and 1 were drawn in class 0's colour (amber), and a corrupt file in class 1.
fn tiny_set(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (real, generated, oracle) = (root.join("real"), root.join("generated"), root.join("oracle.safetensors"));
    write_set(&real, 3, |c, _| c);
    write_set(&generated, 3, |c, i| if c == 3 && i < 2 { 0 } else { c });
    std::fs::write(generated.join("azure").join("zzz-corrupt.png"), b"\x89PNG\r\n\x1a\nnot really a png").unwrap();
    save_oracle(&oracle, &color_oracle(&colors()));
    (real, generated, oracle)
}

fn oracle_flags(oracle: &Path) -> Vec<String> {
    [
        "--oracle",
        &oracle.display().to_string(),
        "--oracle-arch",
        "resnet18",
        "--oracle-stem",
        "cifar",
        "--oracle-norm",
        "minus-one-one",
        "--batch-size",
        "4",
        "--metrics-addr",
        "off",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn eval(real: &Path, generated: &Path, oracle: &Path, out: &Path) -> Ran {
    eval_with(real, generated, oracle, out, &[])
}

/// `rcaflow eval` of these folders with the colour oracle, and `extra` flags.
fn eval_with(real: &Path, generated: &Path, oracle: &Path, out: &Path, extra: &[&str]) -> Ran {
    Ran::of(
        rcaflow()
            .arg("eval")
            .args([
                "--real",
                &real.display().to_string(),
                "--generated",
                &generated.display().to_string(),
                "--out",
                &out.display().to_string(),
            ])
            .args(oracle_flags(oracle))
            .args(extra),
    )
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn eval_reports_accuracies_rca_and_figures() {
    let tmp = tempfile::tempdir().unwrap();
    let (real, generated, oracle) = tiny_set(tmp.path());
    let out = tmp.path().join("out");
    let o = eval(&real, &generated, &oracle, &out);
    assert!(o.success(), "eval failed: {}", o.stderr);

    let r = read_json(&out.join("report.json"));
    assert_eq!(r["schema_version"], 1);
    assert_eq!(r["status"], "complete");
    assert_eq!(r["classes"], serde_json::json!(["amber", "azure", "crimson", "emerald"]));
    // Real: all 12 recognised.
    assert_eq!(r["real"]["accuracy"], 1.0);
    assert_eq!(r["real"]["support"], serde_json::json!([3, 3, 3, 3]));
    // Generated: emerald 0 and 1 look amber; the corrupt file is skipped, not counted.
    assert_eq!(r["generated"]["confusion"], serde_json::json!([[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0], [2, 0, 0, 1]]));
    assert_eq!(r["generated"]["total"], 12);
    let acc_gen = r["generated"]["accuracy"].as_f64().unwrap();
    assert!((acc_gen - 10.0 / 12.0).abs() < 1e-12);
    assert!((r["rca"]["global"].as_f64().unwrap() - 10.0 / 12.0).abs() < 1e-12);
    let per_class: Vec<f64> = r["rca"]["per_class"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert_eq!(per_class.len(), 4);
    for (got, want) in per_class.iter().zip([1.0, 1.0, 1.0, 1.0 / 3.0]) {
        assert!((got - want).abs() < 1e-12, "class RCA {per_class:?}");
    }
    // sklearn conventions: amber predicted 5 times, 3 right.
    assert!((r["generated"]["precision"][0].as_f64().unwrap() - 0.6).abs() < 1e-12);
    assert!((r["generated"]["f1"][3].as_f64().unwrap() - 0.5).abs() < 1e-12);
    // Metrics of later issues are present and null.
    for key in ["fid", "inception_score", "lpips_diversity", "kid", "precision_recall"] {
        assert!(r.get(key).is_some_and(Value::is_null), "{key} should be null");
    }
    // The corrupt file is reported by path.
    let bad = &r["inputs"]["generated"]["unreadable"];
    assert_eq!(bad.as_array().unwrap().len(), 1);
    assert!(bad[0]["path"].as_str().unwrap().ends_with("azure/zzz-corrupt.png"));
    assert_eq!(r["inputs"]["generated"]["decoded"], serde_json::json!([3, 3, 3, 3]));
    // Figures exist and are real PNGs.
    for name in ["confusion_real.png", "confusion_generated.png", "rca_per_class.png"] {
        let img = image::open(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(img.width() > 300 && img.height() > 200, "{name} is {}x{}", img.width(), img.height());
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("**RCA (global) = 0.8333**"), "{md}");
    assert!(md.contains("zzz-corrupt.png"), "{md}");
    // The rca stage checkpointed its state with the units it applied (2 origins x 4 classes).
    let applied = rcaflow::runtime::checkpoint::read_applied(&out, "rca").unwrap();
    assert_eq!(applied.len(), 8);
    // `rcaflow status` reads the run directory: finished, every unit held.
    let s = Ran::of(rcaflow().arg("status").arg(&out));
    let text = &s.stdout;
    assert!(s.success() && text.contains("finished (report.json written)"), "{text}{}", s.stderr);
    // 13 files listed (one of them unreadable: counted in the report, not as an image).
    assert!(text.contains("source generated (generated): 13/13 images, 4/4 units"), "{text}");
    // The topology eval built is kept, and is a valid topology for `rcaflow run`.
    let v = Ran::of(rcaflow().args(["validate", "--topology"]).arg(out.join("topology.toml")));
    assert!(v.success(), "{}", v.stderr);

    // The same folder for another evaluation (the real images as the generated ones): refused,
    // and the folder's files stay as they were; --fresh starts over.
    let files = |dir: &Path| -> Vec<(std::ffi::OsString, Vec<u8>)> {
        let mut f: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.path().is_file())
            .map(|e| (e.file_name(), std::fs::read(e.path()).unwrap()))
            .collect();
        f.retain(|(n, _)| n != "run.lock");
        f.sort();
        f
    };
    let before = files(&out);
    let o = eval(&real, &real, &oracle, &out);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("holds a run of another topology or other files: sources.generated changed (path)"), "{}", o.stderr);
    assert!(files(&out) == before, "a refused eval changes nothing in its folder");
    let o = eval_with(&real, &real, &oracle, &out, &["--fresh"]);
    assert!(o.success(), "{}", o.stderr);
    assert_eq!(read_json(&out.join("report.json"))["generated"]["accuracy"], 1.0);
}

#[test]
fn baseline_file_replaces_real_images() {
    let tmp = tempfile::tempdir().unwrap();
    let (real, _generated, oracle) = tiny_set(tmp.path());
    let baseline = tmp.path().join("baseline.json");
    let o = Ran::of(
        rcaflow()
            .arg("baseline")
            .args(["--real", &real.display().to_string(), "--out", &baseline.display().to_string()])
            .args(oracle_flags(&oracle)),
    );
    assert!(o.success(), "{}", o.stderr);
    let b = read_json(&baseline);
    assert_eq!(b["schema"], "rcaflow-baseline/1");
    assert_eq!(b["real"]["accuracy"], 1.0);
    assert_eq!(b["real"]["confusion"], serde_json::json!([[3, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0], [0, 0, 0, 3]]));

    let topology = Topology::new("run")
        .image_folder("generated", "generated")
        .set("sources.generated", "unit_size", 2)
        .batcher(&["generated"], 4)
        .oracle(&["batches"])
        .sink("rca", "rca", &["oracle"])
        .set("sinks.rca", "baseline", "baseline.json")
        .sink("report", "report", &["rca"])
        .write(&tmp.path().join("with-baseline.toml"));
    let o = Ran::of(rcaflow().args(["run", "--metrics-addr", "off", "--topology"]).arg(&topology));
    assert!(o.success(), "{}", o.stderr);
    let r = read_json(&tmp.path().join("run").join("report.json"));
    assert!((r["rca"]["global"].as_f64().unwrap() - 10.0 / 12.0).abs() < 1e-12);
    assert!(r["real_source"].as_str().unwrap().starts_with("baseline "));
    assert_eq!(r["real"]["total"], 12);
}

/// Runs eval with a modified oracle and returns (exit code, stderr, whether a report exists).
fn eval_with_weights(edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> (i32, String, PathBuf, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (real, generated, _) = tiny_set(tmp.path());
    let mut state = color_oracle(&colors());
    edit(&mut state);
    let oracle = tmp.path().join("bad-oracle.safetensors");
    save_oracle(&oracle, &state);
    let out = tmp.path().join("out");
    let o = eval(&real, &generated, &oracle, &out);
    let has_report = out.join("report.json").exists() || out.join("report.md").exists();
    let kept = tmp.keep();
    (o.code().unwrap_or(-1), o.stderr, kept.join("bad-oracle.safetensors"), has_report)
}

#[test]
fn missing_tensor_fails_naming_stage_and_tensor_without_report() {
    let (code, err, oracle, has_report) = eval_with_weights(|s| {
        s.remove("layer3.1.conv2.weight");
    });
    // The build step loads the weights before anything runs: a topology error (exit 2).
    assert_eq!(code, 2, "{err}");
    let want = format!("  - transforms.oracle: weights {}: tensor \"layer3.1.conv2.weight\" is missing", oracle.display());
    assert!(err.lines().any(|l| l == want), "expected line {want:?} in:\n{err}");
    assert!(!has_report, "a failed run must not leave a report");
}

#[test]
fn wrong_shape_fails_naming_tensor_and_both_shapes() {
    let (code, err, oracle, has_report) = eval_with_weights(|s| {
        let t = Tensor::zeros((64, 64, 1, 1), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        s.insert("layer1.0.conv1.weight".into(), t);
    });
    assert_eq!(code, 2, "{err}");
    let want = format!(
        "  - transforms.oracle: weights {}: tensor \"layer1.0.conv1.weight\" has shape [64, 64, 1, 1], expected [64, 64, 3, 3]",
        oracle.display()
    );
    assert!(err.lines().any(|l| l == want), "expected line {want:?} in:\n{err}");
    assert!(!has_report);
}

#[test]
fn class_folder_missing_from_one_tree_is_refused_before_running() {
    let tmp = tempfile::tempdir().unwrap();
    let (real, generated, oracle) = tiny_set(tmp.path());
    std::fs::remove_dir_all(generated.join("crimson")).unwrap();
    let out = tmp.path().join("out");
    let o = eval(&real, &generated, &oracle, &out);
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    let want =
        format!("  - sources.generated: class folders of \"{}\" disagree with sources.real: missing [\"crimson\"]", generated.display());
    assert!(o.stderr.lines().any(|l| l == want), "expected {want:?} in:\n{}", o.stderr);
    assert!(!out.join("report.json").exists());
}

#[test]
fn strict_source_stops_at_the_corrupt_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, generated, _) = tiny_set(tmp.path());
    let topology = Topology::new("run")
        .set("run", "classes", vec!["amber", "azure", "crimson", "emerald"])
        .image_folder("generated", "generated")
        .set("sources.generated", "strict", true)
        .sink("rca", "rca", &["oracle"])
        .set("sinks.rca", "baseline", "none.json")
        .write(&tmp.path().join("strict.toml"));
    // The graph is incomplete on purpose first: validation lists every problem at once.
    let o = Ran::of(rcaflow().args(["validate", "--topology"]).arg(&topology));
    assert_eq!(o.code(), Some(2));
    let err = o.stderr;
    assert!(err.contains("sinks.rca: input \"oracle\" does not exist"), "{err}");
    assert!(err.contains("sinks.rca: baseline file"), "{err}");
    assert!(err.contains("sources.generated: its output (images) is not consumed"), "{err}");

    Topology::new("run")
        .image_folder("real", "real")
        .image_folder("generated", "generated")
        .set("sources.generated", "strict", true)
        .oracle(&["real", "generated"])
        .sink("rca", "rca", &["oracle"])
        .sink("report", "report", &["rca"])
        .write(&topology);
    let o = Ran::of(rcaflow().args(["run", "--metrics-addr", "off", "--topology"]).arg(&topology));
    assert_eq!(o.code(), Some(1), "{}", o.stderr);
    let corrupt = generated.join("azure").join("zzz-corrupt.png");
    assert!(o.stderr.contains(&format!("error: stage sources.generated failed: image {}: ", corrupt.display())), "{}", o.stderr);
    assert!(!tmp.path().join("run").join("report.json").exists());
}

/// GET /metrics from the exporter.
fn scrape(addr: &str) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn sigint_drains_and_reports_interrupted_with_live_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    // Enough 32x32 images that the run is still going when the signal comes.
    let root = tmp.path();
    color_set::make_example(root, 150, 32, 7);
    let out = root.join("out");
    // Small units and capacities, so what is in flight when the stop comes drains quickly.
    let topology = Topology::new("out")
        .set("run", "default_capacity", 1)
        .image_folder("real", "real")
        .set("sources.real", "unit_size", 4)
        .image_folder("generated", "generated")
        .set("sources.generated", "unit_size", 4)
        .batcher(&["real", "generated"], 8)
        .oracle(&["batches"])
        .sink("rca", "rca", &["oracle"])
        .sink("report", "report", &["rca"])
        .write(&root.join("slow.toml"));
    let mut child = rcaflow()
        .args(["run", "--topology", &topology.display().to_string()])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // The log says where metrics are served; read stderr on a thread so the child never blocks.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr_pipe = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("no metrics address logged");
        if let Some(rest) = line.split("metrics on http://").nth(1) {
            break rest.trim_end_matches("/metrics").to_string();
        }
    };
    // Wait for the oracle to have processed something, scraping live metrics meanwhile.
    let mut body = String::new();
    while Instant::now() < deadline {
        body = scrape(&addr);
        // Counters exist from the start at 0: wait for the rca sink to have received images.
        let rca_images = body
            .lines()
            .find(|l| l.starts_with("rcaflow_stage_images_in_total") && l.contains("stage=\"rca\""))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
        if rca_images.is_some_and(|n| n > 0.0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for name in [
        "rcaflow_stage_images_in_total",
        "rcaflow_stage_images_out_total",
        "rcaflow_stage_batch_duration_seconds_bucket",
        "rcaflow_stage_busy_ratio",
        "rcaflow_channel_depth_batches",
        "rcaflow_channel_capacity_batches",
        "rcaflow_run_images_planned",
        "rcaflow_accuracy_ratio",
    ] {
        assert!(body.lines().any(|l| l.starts_with(name)), "metric {name} missing from scrape:\n{body}");
    }
    assert!(body.contains("edge=\"batches->oracle\""), "{body}");
    assert!(body.contains("run=\"out\""), "global run label missing:\n{body}");

    let status = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let code = child.wait().unwrap().code();
    let log = reader.join().unwrap();
    assert_eq!(code, Some(130), "{log}");
    assert!(log.contains("stop requested"), "{log}");
    let r = read_json(&out.join("report.json"));
    assert_eq!(r["status"], "interrupted");
    // Drained: whatever the oracle saw was counted; not everything planned was seen.
    let total = r["real"]["total"].as_u64().unwrap() + r["generated"]["total"].as_u64().unwrap();
    assert!(total > 0 && total < 1200, "total {total}");
    assert_eq!(r["timing"]["stages"]["oracle"]["images_out"].as_u64().unwrap(), total);
}

#[test]
fn lpips_diversity_compares_the_planned_same_class_pairs() {
    use rcaflow::data::image_folder::decode_rgb_planar;
    use rcaflow::models::lpips::{Lpips, LpipsNet};
    use rcaflow::models::weights::WeightMap;

    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    color_set::make_example(root, 6, 32, 11);
    let (backbone, lin) = random_lpips_weights(root);
    let out = root.join("out");
    let (real, generated) = (root.join("real"), root.join("generated"));
    let (backbone_flag, lin_flag) = (backbone.display().to_string(), lin.display().to_string());
    let lpips_flags = ["--lpips-net", "alex", "--lpips-backbone", &backbone_flag, "--lpips-lin", &lin_flag, "--lpips-pairs", "10"];
    let o = eval_with(&real, &generated, &root.join("oracle.safetensors"), &out, &lpips_flags);
    assert!(o.success(), "{}", o.stderr);
    let r = read_json(&out.join("report.json"));
    let l = &r["lpips_diversity"];
    assert_eq!(l["net"], "alex");
    assert_eq!(l["pairs_requested"], 10);
    // 6 images give 15 distinct pairs, more than the 10 asked: the disjoint pairs (0,1), (2,3),
    // (4,5) of each class.
    assert_eq!(l["pairs_per_class"], serde_json::json!([3, 3, 3, 3]));

    // The same pairs scored directly with the model give the same means.
    let dev = candle_core::Device::Cpu;
    let lpips = Lpips::load(LpipsNet::Alex, &WeightMap::load(&backbone, &dev).unwrap(), &WeightMap::load(&lin, &dev).unwrap()).unwrap();
    let mut all = Vec::new();
    for (c, (name, _)) in PALETTE.iter().enumerate() {
        let image = |i: u64| decode_rgb_planar(&root.join("generated").join(name).join(format!("{i:05}.png"))).unwrap().2;
        let mut sum = 0.0;
        for (i, j) in [(0, 1), (2, 3), (4, 5)] {
            let d = lpips.distance_u8(&image(i), &image(j), 1, 32, 32).unwrap()[0] as f64;
            sum += d;
            all.push(d);
        }
        let got = l["per_class"][c].as_f64().unwrap();
        assert!((got - sum / 3.0).abs() < 1e-6, "class {name}: report {got}, direct {}", sum / 3.0);
        assert!(got > 0.0);
    }
    let mean = all.iter().sum::<f64>() / all.len() as f64;
    assert!((l["mean"].as_f64().unwrap() - mean).abs() < 1e-6);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("## LPIPS diversity (alex)"), "{md}");
}

fn parse_fid(o: &Ran) -> f64 {
    assert!(o.success(), "{}", o.stderr);
    let out = &o.stdout;
    out.lines().find_map(|l| l.strip_prefix("FID: ")).unwrap_or_else(|| panic!("no FID line in {out}")).trim().parse().unwrap()
}

#[test]
fn fid_and_inception_score_in_eval_agree_with_the_fid_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    color_set::make_example(root, 2, 32, 5);
    let inception = root.join("inception.safetensors");
    random_inception(&inception);
    let (real, generated) = (root.join("real"), root.join("generated"));
    let out = root.join("out");
    let inception_flags =
        ["--inception", &inception.display().to_string(), "--is-splits", "2", "--kid", "--precision-recall", "--per-class"];
    let o = eval_with(&real, &generated, &root.join("oracle.safetensors"), &out, &inception_flags);
    assert!(o.success(), "{}", o.stderr);
    let r = read_json(&out.join("report.json"));
    // --kid, --precision-recall, --per-class: 2 images per class per side, 8 in all.
    let (kid, prc) = (&r["kid"], &r["precision_recall"]);
    assert!(kid["mean"].is_f64() && kid["subset_size"] == 8, "{kid}");
    assert_eq!(kid["per_class"].as_array().map(Vec::len), Some(4), "{kid}");
    assert!(prc["precision"].is_f64() && prc["real_images"] == 8 && prc["k"] == 3, "{prc}");
    // A class of 2 images per side cannot have 3-NN radii.
    assert!(prc["per_class"].as_array().unwrap().iter().all(Value::is_null), "{prc}");
    let per_class = r["fid"]["per_class"].as_array().unwrap();
    assert!(per_class.len() == 4 && per_class.iter().all(Value::is_f64), "{}", r["fid"]);
    assert!(out.join(r["figures"]["fid_rca_per_class"].as_str().unwrap()).is_file(), "{}", r["figures"]);
    let fid = &r["fid"];
    let value = fid["value"].as_f64().unwrap();
    assert!(value.is_finite() && value > 0.0, "{fid}");
    assert_eq!(fid["real_images"], 8);
    assert_eq!(fid["generated_images"], 8);
    assert_eq!(fid["rank_deficient"], true);
    assert_eq!(fid["nonfinite_images"], 0);
    let is = &r["inception_score"];
    assert_eq!(is["splits"], 2);
    assert_eq!(is["images"], 8);
    assert!(is["mean"].as_f64().unwrap() >= 1.0);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("**FID = "), "{md}");

    // `rcaflow fid` on the same folders, and through saved statistics, gives the same distance.
    let inception_flag = ["--inception".to_string(), inception.display().to_string()];
    let direct = parse_fid(&Ran::of(rcaflow().arg("fid").arg(&real).arg(&generated).args(&inception_flag)));
    assert!((direct - value).abs() <= 1e-6 * value, "fid command {direct} vs eval {value}");
    let stats = root.join("real-stats.npz");
    let o = Ran::of(rcaflow().arg("fid-stats").arg(&real).arg("--out").arg(&stats).args(&inception_flag));
    assert!(o.success(), "{}", o.stderr);
    let via_stats = parse_fid(&Ran::of(rcaflow().arg("fid").arg(&stats).arg(&generated).args(&inception_flag)));
    assert!((via_stats - value).abs() <= 1e-6 * value, "via stats {via_stats} vs eval {value}");
    let o = Ran::of(rcaflow().arg("fid").arg(&stats).arg(&stats));
    let both_stats = parse_fid(&o);
    // 8 images in 2048 dimensions: singular covariances, so (as with pytorch-fid, which gives
    // -1.9e-4 for 8 such images with tr S = 182) the distance to itself is rounding noise
    // around 0, small against tr S1 + tr S2, and the command says so.
    let saved = rcaflow::data::fid_stats::FidStats::read(&stats).unwrap();
    let trace: f64 = (0..saved.dim()).map(|i| saved.sigma[i * saved.dim() + i]).sum();
    assert!(both_stats.abs() < 1e-5 * 2.0 * trace, "a distribution is at distance ~0 from itself: {both_stats} (tr S = {trace})");
    assert!(o.stderr.contains("note: the covariances are singular"), "{}", o.stderr);

    // A topology's fid sink can use the statistics instead of real images.
    let topology = Topology::new("ref-run")
        .image_folder("generated", "generated")
        .inception(&["generated"])
        .sink("fid", "fid", &["inception"])
        .set("sinks.fid", "reference", "real-stats.npz")
        .set("sinks.fid", "interval_secs", 0.001)
        .sink("report", "report", &["fid"])
        .write(&root.join("reference.toml"));
    let o = Ran::of(rcaflow().args(["run", "--metrics-addr", "off", "--topology"]).arg(&topology));
    assert!(o.success(), "{}", o.stderr);
    let r = read_json(&root.join("ref-run").join("report.json"));
    let with_reference = r["fid"]["value"].as_f64().unwrap();
    assert!((with_reference - value).abs() <= 1e-6 * value, "reference {with_reference} vs eval {value}");
    assert!(r["fid"]["reference"].as_str().unwrap().ends_with("real-stats.npz"));
    assert!(r["rca"].is_null() && r["real"].is_null());

    // Bad statistics files are named.
    let bogus = root.join("bogus.npz");
    std::fs::write(&bogus, b"not a zip").unwrap();
    let o = Ran::of(rcaflow().arg("fid").arg(&bogus).arg(&stats));
    assert_eq!(o.code(), Some(2));
    assert!(o.stderr.contains(&format!("error: fid statistics \"{}\": cannot read", bogus.display())), "{}", o.stderr);
}
