//! `rcaflow bench`: its JSON names every model asked for, in order, with a positive throughput
//! and the batch, unit and repeat counts asked; bad flags are refused with one line and exit 2.
//! Not a timed test: the numbers themselves are only checked to exist.

mod common;

use std::path::Path;

use common::bin::run;
use serde_json::Value;

fn refused(args: &[&str], expected: &str) {
    let out = run(args);
    assert_eq!(out.code(), Some(2), "{args:?}: {}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {}", out.stderr);
    assert!(out.stderr.contains(expected), "{args:?}: {}", out.stderr);
    assert!(out.stdout.is_empty(), "nothing measured: {}", out.stdout);
}

#[test]
fn json_has_a_positive_throughput_for_each_model_asked() {
    let demo_unet = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/unet-demo.json");
    let out = run([
        "bench",
        "--models",
        "resnet18,lpips-alex,unet",
        "--batch",
        "2",
        "--repeats",
        "2",
        "--warmup",
        "0",
        "--threads",
        "1",
        "--unet-config",
        demo_unet.to_str().unwrap(),
        "--json",
    ]);
    assert!(out.success(), "{}", out.stderr);
    let report: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout));
    assert_eq!(report["framework"], "rcaflow");
    assert_eq!(report["device"], "cpu");
    assert_eq!(report["threads"], 1);
    let results = report["results"].as_array().unwrap();
    let names: Vec<&str> = results.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(names, ["resnet18", "lpips-alex", "unet"]);
    for (r, unit) in results.iter().zip(["images/s", "pairs/s", "image-steps/s"]) {
        assert_eq!(r["batch"], 2, "{r}");
        assert_eq!(r["repeats"], 2, "{r}");
        assert_eq!(r["unit"], unit, "{r}");
        let t = &r["throughput"];
        let (min, median, max) = (t["min"].as_f64().unwrap(), t["median"].as_f64().unwrap(), t["max"].as_f64().unwrap());
        assert!(min > 0.0 && min <= median && median <= max, "{r}");
        // Throughput is the batch over the seconds of the same repeat: the slowest repeat gives
        // the lowest throughput, the fastest the highest.
        let seconds = &r["seconds"];
        assert!((min * seconds["max"].as_f64().unwrap() - 2.0).abs() < 1e-9, "{r}");
        assert!((max * seconds["min"].as_f64().unwrap() - 2.0).abs() < 1e-9, "{r}");
        assert!(r["peak_rss_mib"].as_f64().unwrap() > 1.0, "{r}");
    }
}

#[test]
fn the_table_has_a_row_per_model() {
    let out = run(["bench", "--models", "lpips-alex", "--batch", "1", "--repeats", "1", "--warmup", "0"]);
    assert!(out.success(), "{}", out.stderr);
    let rows: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("lpips-alex")).collect();
    assert_eq!(rows.len(), 1, "{}", out.stdout);
    assert!(rows[0].contains("pairs/s"), "{}", out.stdout);
}

#[test]
fn bad_flags_are_refused_with_one_line() {
    refused(&["bench", "--models", "resnet18,vit"], "--models: unknown model \"vit\"; expected one of unet, inception,");
    refused(&["bench", "--repeats", "0"], "--repeats must be at least 1");
    refused(&["bench", "--batch", "0"], "--batch must be at least 1");
    refused(&["bench", "--threads", "0"], "--threads must be at least 1");
    refused(&["bench", "--unet-config", "/nonexistent/config.json"], "--unet-config \"/nonexistent/config.json\": cannot read");
    refused(&["bench", "--device", "tpu"], "--device: device \"tpu\": expected");
    refused(&["bench", "--dtype", "fp8"], "--dtype: dtype \"fp8\": expected \"f32\", \"bf16\" or \"f16\"");
    refused(&["bench", "--device", "cpu", "--dtype", "bf16"], "--dtype: dtype \"bf16\" on device \"cpu\"");
    #[cfg(not(feature = "cuda"))]
    refused(&["bench", "--device", "cuda"], "this rcaflow is a CPU-only build");
}
