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

#[path = "../examples/common/color_set.rs"]
mod color_set;
#[path = "../tests/common/prng.rs"]
mod prng;
#[path = "../tests/common/random_weights.rs"]
mod random_weights;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

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

const CLASSES: usize = 3;

/// The tiny model, weights and real images, in `root`.
fn setup(root: &Path) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sampler/ddim_defaults");
    #[derive(serde::Deserialize)]
    struct Keys {
        state_dict: Vec<(String, Vec<usize>)>,
    }
    let keys: Keys = serde_json::from_slice(&std::fs::read(fixture.join("run.json")).unwrap()).unwrap();
    let unet = root.join("unet");
    random_weights::unet_folder(&fixture, &keys.state_dict, &unet);
    // 32x32 (LPIPS' alexnet needs >= 31x31); no weight depends on the size.
    let config = std::fs::read_to_string(unet.join("config.json")).unwrap();
    std::fs::write(unet.join("config.json"), config.replace("\"sample_size\": 8", "\"sample_size\": 32")).unwrap();
    let colors: Vec<[u8; 3]> = color_set::PALETTE[..CLASSES].iter().map(|(_, c)| *c).collect();
    candle_core::safetensors::save(&color_set::color_oracle(&colors), root.join("oracle.safetensors")).unwrap();
    random_weights::random_inception(&root.join("inception.safetensors"));
    random_weights::random_lpips_weights(root);
    for (name, color) in &color_set::PALETTE[..CLASSES] {
        let dir = root.join("real").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..16 {
            color_set::write_png(&dir.join(format!("{i:03}.png")), 32, |_, _| *color);
        }
    }
    // save_images names class folders after the run's classes: the real set's.
}

fn sampler_section(o: &Options) -> String {
    format!(
        "[sources.sampler]\ntype = \"ddpm_sampler\"\nunet = \"unet\"\nscheduler = \"ddim\"\nsteps = {}\nper_class = {}\nunit_size = {}\nseed = 1\n",
        o.steps, o.per_class, o.unit_size
    )
}

/// The evaluation graph after a source named `generated`.
const EVALUATION: &str = r#"
[sources.real]
type = "image_folder"
path = "real"
origin = "real"

[transforms.batches]
type = "batcher"
inputs = ["real", "generated"]
batch_size = 16

[transforms.oracle]
type = "oracle_classifier"
inputs = ["batches"]
weights = "oracle.safetensors"
arch = "resnet18"
stem = "cifar"
normalization = "minus-one-one"

[transforms.inception]
type = "inception_v3"
inputs = ["batches"]
weights = "inception.safetensors"

[sinks.rca]
type = "rca"
inputs = ["oracle"]

[sinks.fid]
type = "fid"
inputs = ["inception"]
interval_secs = 1000

[sinks.inception_score]
type = "inception_score"
inputs = ["inception"]
splits = 2

[sinks.lpips]
type = "lpips_diversity"
inputs = ["batches"]
net = "alex"
backbone = "alexnet.safetensors"
lin = "alex-lin.safetensors"
pairs = 8

[sinks.report]
type = "report"
inputs = ["rca", "fid", "inception_score", "lpips"]
figures = false
"#;

fn write_topologies(root: &Path, o: &Options) -> [PathBuf; 3] {
    let generate = format!(
        "[run]\ndir = \"run-generate\"\nclasses = {classes:?}\n{}\n[sinks.samples]\ntype = \"save_images\"\ninputs = [\"sampler\"]\npath = \"generated\"\n",
        sampler_section(o),
        classes = color_set::PALETTE[..CLASSES].iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(),
    );
    let evaluate = format!("[run]\ndir = \"run-evaluate\"\n[sources.generated]\ntype = \"image_folder\"\npath = \"generated\"\norigin = \"generated\"\n{EVALUATION}");
    let pipelined =
        format!("[run]\ndir = \"run-pipelined\"\n{}{EVALUATION}", sampler_section(o).replace("[sources.sampler]", "[sources.generated]"));
    let paths = [root.join("generate.toml"), root.join("evaluate.toml"), root.join("pipelined.toml")];
    for (path, text) in paths.iter().zip([generate, evaluate, pipelined]) {
        std::fs::write(path, text).unwrap();
    }
    paths
}

/// Runs a topology with the release binary; returns (wall seconds, report if any).
fn run(topology: &Path, device: &str, report_dir: &Path) -> (f64, Option<Value>) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_rcaflow"))
        .env_remove("RUST_LOG")
        .args(["run", "--metrics-addr", "off", "--device", device, "--topology"])
        .arg(topology)
        .output()
        .expect("start rcaflow");
    let wall = start.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}: {}", topology.display(), String::from_utf8_lossy(&out.stderr));
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
