//! The sampler: whole DDIM runs equal to diffusers', deterministic units, `rcaflow sample`, and
//! an end-to-end `rcaflow run` of a sampler topology whose report does not depend on the
//! number of sampler replicas.
//!
//! The fixtures in tests/fixtures/sampler/<case>/ come from scripts/make_sampler_fixtures.py: a
//! tiny class-conditional UNet's config (and, for one case, its scheduler_config.json), x_T, the
//! labels and diffusers' final samples. The weights are drawn from the keyed PRNG shared with
//! the script (tests/common/random_weights.rs).

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use common::bin::{rcaflow, Ran};
use common::{random_weights, tiny_run};
use rcaflow::models::sampling::UnitSampler;
use rcaflow::models::schedulers::SchedulerKind;
use rcaflow::runtime::plan::Plan;
use serde::Deserialize;
use serde_json::Value;

/// The issue's bound for a whole DDIM run against diffusers.
const RUN_TOLERANCE: f64 = 1e-3;

/// An f16 UNet against diffusers' f32 one: f16 keeps 11 bits of mantissa (5e-4 relative) per
/// operation, and ten DDIM steps of the random-weight fixture compound it to 6.8e-2 (measured;
/// about 9 uint8 levels). A wrong half-precision path (unconverted weights, a lost timestep
/// embedding) is off by the samples' own scale, about 1.
const F16_RUN_TOLERANCE: f64 = 0.1;

#[derive(Deserialize)]
struct RunFixture {
    state_dict: Vec<(String, Vec<usize>)>,
    steps: usize,
    labels: Vec<u32>,
    x_t_shape: Vec<usize>,
    x_t: Vec<f64>,
    output: Vec<f64>,
}

fn fixture_dir(case: &str) -> PathBuf {
    common::repo().join("tests/fixtures/sampler").join(case)
}

fn fixture(case: &str) -> RunFixture {
    serde_json::from_slice(&std::fs::read(fixture_dir(case).join("run.json")).unwrap()).unwrap()
}

/// The case's model folder (config, scheduler config if any, PRNG weights) under `root/unet`.
fn unet_folder(case: &str, root: &Path) -> (PathBuf, RunFixture) {
    let fx = fixture(case);
    let dir = root.join("unet");
    random_weights::unet_folder(&fixture_dir(case), &fx.state_dict, &dir);
    (dir, fx)
}

fn read_npy(path: &Path) -> Vec<f64> {
    Tensor::read_npy(path).unwrap().flatten_all().unwrap().to_dtype(candle_core::DType::F64).unwrap().to_vec1().unwrap()
}

/// `rcaflow sample --noise --labels --out-npy` against diffusers' DDIM (eta = 0) loop.
fn ddim_run_matches_diffusers(case: &str) {
    let err = ddim_run_error(case, &["--device", "cpu"]);
    assert!(err <= RUN_TOLERANCE, "{case}: max abs error {err} > {RUN_TOLERANCE}");
}

/// The largest difference between `rcaflow sample ARGS` and diffusers' f32 samples.
fn ddim_run_error(case: &str, args: &[&str]) -> f64 {
    let fx = fixture(case);
    let ours = ddim_samples(case, args);
    assert_eq!(ours.len(), fx.output.len());
    let err = max_abs_diff(&ours, &fx.output);
    println!("{case} {args:?}: {} steps, max abs error against diffusers {err:.2e}", fx.steps);
    err
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max)
}

/// The final samples of `rcaflow sample ARGS` from the case's x_T and labels.
fn ddim_samples(case: &str, args: &[&str]) -> Vec<f64> {
    let tmp = tempfile::tempdir().unwrap();
    let (unet, fx) = unet_folder(case, tmp.path());
    let x_t: Vec<f32> = fx.x_t.iter().map(|&v| v as f32).collect();
    let noise = tmp.path().join("x_t.npy");
    Tensor::from_vec(x_t, fx.x_t_shape.as_slice(), &Device::Cpu).unwrap().write_npy(&noise).unwrap();
    let out = tmp.path().join("samples.npy");
    let labels = fx.labels.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    let o = Ran::of(
        rcaflow()
            .args(["sample", "--scheduler", "ddim", "--steps", &fx.steps.to_string(), "--labels", &labels])
            .args(args)
            .arg("--unet")
            .arg(&unet)
            .arg("--noise")
            .arg(&noise)
            .arg("--out-npy")
            .arg(&out),
    );
    assert!(o.success(), "{}", o.stderr);
    read_npy(&out)
}

/// A whole DDIM run on GPU 0 equals the CPU's, f32 and the same host noise on both.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build and a GPU (scripts/gpu_check.sh)")]
fn ddim_run_on_cuda_equals_the_cpu_run() {
    common::gpu::cuda();
    for case in ["ddim_defaults", "ddim_folder_config"] {
        let (cpu, gpu) = (ddim_samples(case, &["--device", "cpu"]), ddim_samples(case, &["--device", "cuda"]));
        let err = max_abs_diff(&cpu, &gpu);
        println!("{case}: max abs difference cuda vs cpu {err:.2e}");
        assert!(err <= RUN_TOLERANCE, "{case}: cuda vs cpu {err} > {RUN_TOLERANCE}");
    }
}

/// The pipelined tiny run (sampler and every evaluator on GPU 0, each on a stream of its own)
/// gives the CPU's report: counts exactly, floats within 1e-6 relative.
#[test]
#[cfg_attr(not(feature = "cuda"), ignore = "needs a CUDA build and a GPU (scripts/gpu_check.sh)")]
fn pipelined_run_on_cuda_gives_the_cpu_report() {
    common::gpu::cuda();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut reports = Vec::new();
    for device in ["cpu", "cuda"] {
        let topology = tiny_run::write_topology(root, device, 1, None);
        let o = Ran::of(rcaflow().args(["run", "--metrics-addr", "off", "--device", device, "--topology"]).arg(&topology));
        assert!(o.success(), "{device}: {}", o.stderr);
        let report: Value = serde_json::from_slice(&std::fs::read(root.join(format!("run-{device}/report.json"))).unwrap()).unwrap();
        reports.push(tiny_run::comparable(report));
    }
    assert_eq!(reports[1]["status"], "complete");
    let differences = tiny_run::differences(&reports[0], &reports[1], 1e-6);
    assert!(differences.is_empty(), "cuda and cpu reports differ:\n{}", differences.join("\n"));
}

#[test]
fn ddim_run_with_scheduler_defaults_equals_diffusers() {
    ddim_run_matches_diffusers("ddim_defaults");
}

#[test]
fn ddim_run_with_the_folders_scheduler_config_equals_diffusers() {
    ddim_run_matches_diffusers("ddim_folder_config");
}

/// Half precision runs the same loop with the UNet's rounding alone changed: f16 (which candle's
/// CPU backend has) stays near diffusers' f32 samples; bf16, which it lacks, is refused before
/// any work, naming the flag.
#[test]
fn half_precision_follows_f32_and_bf16_is_refused_on_the_cpu() {
    let err = ddim_run_error("ddim_defaults", &["--device", "cpu", "--dtype", "f16"]);
    assert!(err > 0.0 && err <= F16_RUN_TOLERANCE, "f16: max abs error {err}, expected (0, {F16_RUN_TOLERANCE}]");
    let tmp = tempfile::tempdir().unwrap();
    let (unet, _) = unet_folder("ddim_defaults", tmp.path());
    let o = Ran::of(rcaflow().args(["sample", "--classes", "0", "--per-class", "1", "--dtype", "bf16", "--device", "cpu", "--unet"]).arg(&unet).arg("--out").arg(tmp.path().join("out")));
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("--dtype: dtype \"bf16\" on device \"cpu\""), "{}", o.stderr);
    assert!(!tmp.path().join("out").exists(), "nothing written");
    let o = Ran::of(rcaflow().args(["sample", "--classes", "0", "--per-class", "1", "--dtype", "half", "--unet"]).arg(&unet).arg("--out").arg(tmp.path().join("out")));
    assert_eq!(o.code(), Some(2), "{}", o.stderr);
    assert!(o.stderr.contains("--dtype: dtype \"half\": expected \"f32\", \"bf16\" or \"f16\""), "{}", o.stderr);
}

#[test]
fn a_unit_gives_the_same_images_whatever_runs_it_and_when() {
    let tmp = tempfile::tempdir().unwrap();
    let (unet, _) = unet_folder("ddim_defaults", tmp.path());
    let load = |kind, steps| UnitSampler::load(&unet, kind, Some(steps), 0.0, &Device::Cpu).unwrap();
    let plan = Plan::new(11, &[3, 3, 3], 2);
    for (kind, steps) in [(SchedulerKind::Ddpm, 4), (SchedulerKind::Ddim, 3)] {
        // Two "replicas" (separately loaded models), units in opposite orders.
        let (a, b) = (load(kind, steps), load(kind, steps));
        let forward: Vec<Vec<f32>> = plan.units.iter().map(|u| a.sample_unit(u).unwrap()).collect();
        let mut backward: Vec<Vec<f32>> = plan.units.iter().rev().map(|u| b.sample_unit(u).unwrap()).collect();
        backward.reverse();
        assert_eq!(forward, backward, "{kind}: same unit, other replica, other order");
        assert_eq!(forward[0], a.sample_unit(&plan.units[0]).unwrap(), "{kind}: same unit twice");
        assert_ne!(forward[0][..3 * 64], forward[1][..3 * 64], "{kind}: units differ (their seeds do)");
        assert!(forward.iter().flatten().all(|v| v.is_finite()));
    }
    // DDPM draws step noise from the unit's seed: a different run seed gives other images.
    let ddpm = load(SchedulerKind::Ddpm, 4);
    let other = Plan::new(12, &[3, 3, 3], 2);
    assert_ne!(ddpm.sample_unit(&plan.units[0]).unwrap(), ddpm.sample_unit(&other.units[0]).unwrap());
}

#[test]
fn sampler_refuses_bad_step_counts_and_models_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let (unet, _) = unet_folder("ddim_defaults", tmp.path());
    let err = UnitSampler::load(&unet, SchedulerKind::Ddim, Some(1001), 0.0, &Device::Cpu).err().unwrap();
    assert_eq!(err.to_string(), "steps = 1001: expected 1 to num_train_timesteps = 1000");
    let text = std::fs::read_to_string(unet.join("config.json")).unwrap().replace("\"out_channels\": 3", "\"out_channels\": 6");
    std::fs::write(unet.join("config.json"), text).unwrap();
    let err = UnitSampler::load(&unet, SchedulerKind::Ddpm, None, 0.0, &Device::Cpu).err().unwrap().to_string();
    assert!(err.contains("conv_out.weight"), "a checkpoint that disagrees with its config is named: {err}");
}

#[test]
fn sample_writes_image_folders_of_the_chosen_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let (unet, _) = unet_folder("ddim_defaults", tmp.path());
    let out = tmp.path().join("out");
    let run = |out: &Path, extra: &[&str]| {
        Ran::of(
            rcaflow()
                .args(["sample", "--scheduler", "ddim", "--steps", "2", "--device", "cpu", "--unit-size", "2", "--unet"])
                .arg(&unet)
                .arg("--out")
                .arg(out)
                .args(extra),
        )
    };
    let o = run(&out, &["--classes", "0,2", "--per-class", "3", "--seed", "5"]);
    assert!(o.success(), "{}", o.stderr);
    let listing = |dir: &Path| -> Vec<String> {
        let mut files: Vec<String> = tiny_run::walk(dir).iter().map(|p| p.strip_prefix(dir).unwrap().display().to_string()).collect();
        files.sort();
        files
    };
    let expected: Vec<String> = ["class_00", "class_02"].iter().flat_map(|c| (0..3).map(move |i| format!("{c}/{i:06}.png"))).collect();
    assert_eq!(listing(&out), expected);
    let img = image::open(out.join("class_02/000002.png")).unwrap();
    assert_eq!((img.width(), img.height()), (8, 8));

    // Class names from the folder's classes.json; the same seed gives the same files.
    std::fs::write(unet.join("classes.json"), r#"["ant", "bee", "cat"]"#).unwrap();
    let named = tmp.path().join("named");
    assert!(run(&named, &["--classes", "cat", "--per-class", "3", "--seed", "5"]).success());
    assert_eq!(std::fs::read(named.join("cat/000002.png")).unwrap(), std::fs::read(out.join("class_02/000002.png")).unwrap());

    // Bad requests are named.
    let o = run(&named, &["--classes", "dog", "--per-class", "1"]);
    assert_eq!(o.code(), Some(2));
    assert!(o.stderr.contains("--classes: \"dog\" is neither a label below 3 nor a class name (ant, bee, cat)"), "{}", o.stderr);
    let noise = tmp.path().join("bad.npy");
    Tensor::zeros((2, 3, 4, 4), candle_core::DType::F32, &Device::Cpu).unwrap().write_npy(&noise).unwrap();
    let o = run(&named, &["--labels", "0,1", "--noise", noise.to_str().unwrap()]);
    assert_eq!(o.code(), Some(2));
    assert!(o.stderr.contains("shape [2, 3, 4, 4], expected [2, 3, 8, 8]"), "{}", o.stderr);
}

#[test]
fn run_scores_sampled_images_in_every_stage_and_replicas_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let mut reports = Vec::new();
    for replicas in [1, 2] {
        let topology = tiny_run::write_topology(root, &replicas.to_string(), replicas, None);
        let o = Ran::of(rcaflow().args(["run", "--metrics-addr", "off", "--topology"]).arg(&topology));
        assert!(o.success(), "{replicas} replicas: {}", o.stderr);
        let report: Value = serde_json::from_slice(&std::fs::read(root.join(format!("run-{replicas}/report.json"))).unwrap()).unwrap();
        reports.push(report);
    }
    let r = &reports[0];
    assert_eq!(r["status"], "complete");
    // Per-class counts: 5 generated images of each class went through every stage.
    let generation = &r["generation"]["sampler"];
    assert_eq!(generation["planned"], serde_json::json!([5, 5, 5]));
    assert_eq!(generation["generated"], serde_json::json!([5, 5, 5]));
    assert_eq!(generation["units"], 9, "3 units of 2, 2, 1 images per class");
    let confusion = r["generated"]["confusion"].as_array().unwrap();
    let row_sums: Vec<u64> = confusion.iter().map(|row| row.as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).sum()).collect();
    assert_eq!(row_sums, vec![5, 5, 5]);
    assert_eq!(r["real"]["accuracy"], 1.0, "the color oracle knows the real colors");
    assert!(r["rca"]["global"].as_f64().is_some());
    assert_eq!(r["fid"]["generated_images"], 15);
    assert_eq!(r["fid"]["real_images"], 12);
    assert!(r["fid"]["value"].as_f64().unwrap() > 0.0);
    assert!(r["inception_score"]["mean"].as_f64().unwrap() >= 1.0);
    // 5 images a class, 4 pairs asked: fewer than the 10 distinct pairs, so the disjoint (0,1), (2,3).
    let lpips = &r["lpips_diversity"];
    assert_eq!(lpips["pairs_per_class"], serde_json::json!([2, 2, 2]));
    assert!(lpips["per_class"].as_array().unwrap().iter().all(|d| d.as_f64().unwrap() > 0.0), "{lpips}");
    assert!(r["timing"]["generation_seconds"].as_f64().unwrap() > 0.0);
    assert!(r["timing"]["evaluation_seconds"].as_f64().unwrap() > 0.0);
    assert!(root.join("run-1").join(r["figures"]["samples_grid"].as_str().unwrap()).is_file());
    // Saved PNGs: per class, by position.
    let saved = tiny_run::walk(&root.join("samples-1"));
    assert_eq!(saved.len(), 15);

    // Two replicas: the same report to the last bit (units reach the sinks in plan order) and
    // the same image files.
    assert_eq!(tiny_run::comparable(reports[0].clone()), tiny_run::comparable(reports[1].clone()));
    for path in saved {
        let twin = root.join("samples-2").join(path.strip_prefix(root.join("samples-1")).unwrap());
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&twin).unwrap(), "{}", path.display());
    }
}
