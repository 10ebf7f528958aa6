//! Generation overlapped with evaluation (issue 4's benchmark): for one fixed tiny
//! configuration, three `rcaflow run`s of the release binary:
//!
//! 1. generation alone: `ddpm_sampler -> save_images`;
//! 2. evaluation alone: the saved images, read back by an `image_folder` source, through the
//!    whole evaluation graph (batcher, oracle, Inception, LPIPS; rca, fid, inception_score,
//!    lpips_diversity, report), with the real images;
//! 3. the pipelined run: the sampler feeding that same graph directly.
//!
//! It prints sampler images x steps per second, evaluation images per second, and the ratio
//! wall(3) / max(wall(1), wall(2)): 1.0 means generation and evaluation overlap perfectly (the
//! run takes as long as its slower half); 2.0 means no overlap at all. The goal is <= 1.05 when
//! the two halves have their own hardware (sampler on a GPU, evaluation on the CPU, or the
//! reverse); when both share the same cores, as on a 2-core CPU, the cores are the bottleneck
//! and the ratio tends to (gen + eval) / max(gen, eval) whatever the overlap.
//!
//! Run: `cargo bench --bench pipeline` (add `-- --device cuda` for a CUDA build's binary, and
//! `-- --per-class N --steps N` to change the size). Random weights: the figures measure speed,
//! not quality.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::bin::{rcaflow, Ran};
use common::color_set;
use common::tiny_run::{self, CLASSES};
use common::topology::{Sampler, Topology};
use serde_json::Value;

struct Options {
    device: String,
    per_class: usize,
    steps: usize,
    unit_size: usize,
}

fn options() -> Options {
    let mut o = Options { device: "cpu".into(), per_class: 16, steps: 20, unit_size: 8 };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).unwrap_or_else(|| panic!("{} needs a value", args[i])).clone();
        match args[i].as_str() {
            "--device" => o.device = value(),
            "--per-class" => o.per_class = value().parse().expect("--per-class N"),
            "--steps" => o.steps = value().parse().expect("--steps N"),
            "--unit-size" => o.unit_size = value().parse().expect("--unit-size N"),
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown option {other}; expected --device, --per-class, --steps, --unit-size"),
        }
        i += 2;
    }
    o
}

/// The tiny model, weights and real images, in `root`.
fn setup(root: &Path) {
    // 32x32 (LPIPS' alexnet needs >= 31x31); no weight depends on the size.
    tiny_run::write_networks(root);
    tiny_run::write_oracle(root);
    tiny_run::write_real(root, 16, 32);
    // save_images names class folders after the run's classes: the real set's.
}

fn sampler(t: Topology, name: &str, o: &Options) -> Topology {
    let size = Sampler { steps: o.steps as i64, per_class: o.per_class as i64, unit_size: o.unit_size as i64, seed: 1 };
    t.sampler(name, "ddim", size)
}

/// The evaluation graph after a source named `generated`, with the real images.
fn evaluation(t: Topology) -> Topology {
    t.image_folder("real", "real").evaluation("generated", 16, 8).set("sinks.fid", "interval_secs", 1000).set(
        "sinks.report",
        "figures",
        false,
    )
}

fn write_topologies(root: &Path, o: &Options) -> [PathBuf; 3] {
    let classes: Vec<&str> = color_set::PALETTE[..CLASSES].iter().map(|(n, _)| *n).collect();
    let generate = sampler(Topology::new("run-generate").set("run", "classes", classes), "sampler", o)
        .sink("samples", "save_images", &["sampler"])
        .set("sinks.samples", "path", "generated");
    let evaluate = evaluation(Topology::new("run-evaluate").image_folder("generated", "generated"));
    let pipelined = evaluation(sampler(Topology::new("run-pipelined"), "generated", o));
    [
        generate.write(&root.join("generate.toml")),
        evaluate.write(&root.join("evaluate.toml")),
        pipelined.write(&root.join("pipelined.toml")),
    ]
}

/// Runs a topology with the release binary; returns (wall seconds, report if any).
fn run(topology: &Path, device: &str, report_dir: &Path) -> (f64, Option<Value>) {
    let start = Instant::now();
    let out = Ran::of(rcaflow().args(["run", "--metrics-addr", "off", "--device", device, "--topology"]).arg(topology));
    let wall = start.elapsed().as_secs_f64();
    assert!(out.success(), "{}: {}", topology.display(), out.stderr);
    let report = std::fs::read(report_dir.join("report.json")).ok().map(|b| serde_json::from_slice(&b).unwrap());
    (wall, report)
}

fn main() {
    let o = options();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    setup(root);
    let [generate, evaluate, pipelined] = write_topologies(root, &o);
    let images = o.per_class * CLASSES;
    println!(
        "pipeline bench: {CLASSES} classes x {} images, DDIM {} steps, 32x32, unit size {}, device {}",
        o.per_class, o.steps, o.unit_size, o.device
    );

    let (gen_wall, _) = run(&generate, &o.device, &root.join("run-generate"));
    let (eval_wall, eval_report) = run(&evaluate, &o.device, &root.join("run-evaluate"));
    let (pipe_wall, pipe_report) = run(&pipelined, &o.device, &root.join("run-pipelined"));
    let pipe_report = pipe_report.expect("pipelined report");
    assert_eq!(eval_report.expect("evaluation report")["generated"]["total"], pipe_report["generated"]["total"]);

    let timing = &pipe_report["timing"];
    let sampler = &pipe_report["generation"]["generated"];
    println!("generation alone      {gen_wall:8.2} s wall   {:10.1} images x steps / s", (images * o.steps) as f64 / gen_wall);
    println!(
        "evaluation alone      {eval_wall:8.2} s wall   {:10.1} images / s (generated + {} real)",
        (images + CLASSES * 16) as f64 / eval_wall,
        CLASSES * 16
    );
    println!(
        "pipelined             {pipe_wall:8.2} s wall   (sampler span {:.2} s, evaluation busy {:.2} s summed over stages)",
        timing["generation_seconds"].as_f64().unwrap_or(f64::NAN),
        timing["evaluation_seconds"].as_f64().unwrap_or(f64::NAN)
    );
    println!(
        "sampler in the pipelined run: {:.1} images x steps / s",
        sampler["images_per_second"].as_f64().unwrap_or(f64::NAN) * o.steps as f64
    );
    println!(
        "ratio wall(pipelined) / max(generation, evaluation) = {:.3}   (goal <= 1.05 on separate hardware)",
        pipe_wall / gen_wall.max(eval_wall)
    );
    println!("no-overlap bound (gen + eval) / max(gen, eval)      = {:.3}", (gen_wall + eval_wall) / gen_wall.max(eval_wall));
}
