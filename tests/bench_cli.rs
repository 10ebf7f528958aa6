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

/// `bench --pipeline` at a tiny size: the three runs count every image, the figures follow from
/// the walls, and every file stays inside the folder given.
#[test]
fn pipeline_runs_three_legs_inside_its_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pipe");
    let demo_unet = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/unet-demo.json");
    let args = [
        "bench",
        "--pipeline",
        dir.to_str().unwrap(),
        "--classes",
        "2",
        "--per-class",
        "3",
        "--real-per-class",
        "2",
        "--steps",
        "2",
        "--unit-size",
        "2",
        "--batch",
        "4",
        "--unet-config",
        demo_unet.to_str().unwrap(),
        "--json",
    ];
    let out = run(args);
    assert!(out.success(), "{}", out.stderr);
    let r: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout));
    assert_eq!(r["generated_images"], 6);
    assert_eq!(r["real_images"], 4);
    assert_eq!(r["steps"], 2);
    assert_eq!(r["scheduler"], "ddim");
    assert_eq!(r["sampler_device"], "cpu");
    let f = |path: &[&str]| path.iter().fold(&r, |v, k| &v[*k]).as_f64().unwrap_or_else(|| panic!("{path:?} in {r}"));
    let (gen, eval, pipe) = (f(&["generation", "wall_seconds"]), f(&["evaluation", "wall_seconds"]), f(&["pipelined", "wall_seconds"]));
    assert!(gen > 0.0 && eval > 0.0 && pipe > 0.0, "{r}");
    assert!(f(&["generation", "total_seconds"]) >= gen, "{r}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
    assert!(close(f(&["pipelined_ratio"]), pipe / gen.max(eval)), "{r}");
    assert!(close(f(&["no_overlap_ratio"]), (gen + eval) / gen.max(eval)), "{r}");
    assert!(close(f(&["generation_image_steps_per_second"]), 12.0 / gen), "{r}");
    assert!(close(f(&["evaluation_images_per_second"]), 10.0 / eval), "{r}");
    // The paper's run: 50,000 images x 1,000 steps at the measured rates, times the ratio.
    let full_gen = 5e7 / f(&["generation_image_steps_per_second"]);
    let full_eval = 50_004.0 / f(&["evaluation_images_per_second"]);
    assert!(close(f(&["projection", "generation_seconds"]), full_gen), "{r}");
    assert!(close(f(&["projection", "evaluation_seconds"]), full_eval), "{r}");
    assert!(close(f(&["projection", "wall_seconds"]), f(&["pipelined_ratio"]) * full_gen.max(full_eval)), "{r}");

    // Nothing outside the folder; the samples of both generating runs are there.
    let outside: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(outside, [std::ffi::OsString::from("pipe")]);
    let pngs = |sub: &str| common::tiny_run::walk(&dir.join(sub)).iter().filter(|p| p.extension().is_some_and(|e| e == "png")).count();
    assert_eq!(pngs("generated"), 6);
    assert_eq!(pngs("pipelined-samples"), 6);
    assert_eq!(pngs("real"), 4);

    // An earlier bench's folder is emptied and reused; the table names the ratio.
    let table = run(&args[..args.len() - 1]);
    assert!(table.success(), "{}", table.stderr);
    assert!(table.stdout.contains("pipelined ratio wall(pipelined) / max(generation, evaluation) = "), "{}", table.stdout);
    assert!(table.stdout.contains("projection, 50000 images x 1000 steps"), "{}", table.stdout);
    assert_eq!(pngs("generated"), 6, "a second bench replaces the first's files");
}

#[test]
fn pipeline_refuses_a_folder_that_is_not_its_own_and_bad_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("thesis.tex"), "keep me").unwrap();
    let dir = tmp.path().to_str().unwrap();
    refused(&["bench", "--pipeline", dir], "is not empty and not an earlier bench's");
    assert_eq!(std::fs::read_to_string(tmp.path().join("thesis.tex")).unwrap(), "keep me");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1, "nothing written");
    let fresh = tmp.path().join("new");
    let fresh = fresh.to_str().unwrap();
    refused(&["bench", "--pipeline", fresh, "--classes", "0"], "--classes must be at least 1");
    refused(&["bench", "--pipeline", fresh, "--steps", "0"], "--steps must be at least 1");
    refused(&["bench", "--pipeline", fresh, "--scheduler", "euler"], "--scheduler \"euler\": expected ddim or ddpm");
    refused(&["bench", "--pipeline", fresh, "--sampler-device", "tpu"], "--sampler-device: device \"tpu\": expected");
    refused(&["bench", "--pipeline", fresh, "--dtype", "bf16"], "--dtype: dtype \"bf16\" on device \"cpu\"");
    #[cfg(not(feature = "cuda"))]
    refused(&["bench", "--pipeline", fresh, "--sampler-device", "cuda"], "this rcaflow is a CPU-only build");
    assert!(!tmp.path().join("new").exists(), "a refused bench writes nothing");
}
