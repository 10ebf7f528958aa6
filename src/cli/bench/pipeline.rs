//! `rcaflow bench --pipeline DIR`: how well generation and evaluation overlap (DESIGN.md section
//! 2), for a koin10-shaped run with random weights, and what that projects for the paper's full
//! run. Three runs, in-process, of the topologies [`super::pipeline_files`] writes into DIR:
//!
//! 1. generation alone: `ddpm_sampler -> save_images`;
//! 2. evaluation alone: those images read back by an `image_folder`, with the real images,
//!    through koin10's evaluation (batcher, oracle, Inception, LPIPS; rca, fid,
//!    inception_score, lpips_diversity, report);
//! 3. the two pipelined: the sampler feeding that evaluation directly (and its `save_images`).
//!
//! The pipelined ratio is wall(3) / max(wall(1), wall(2)): 1.0 when the run takes as long as its
//! slower half (perfect overlap), (gen + eval) / max(gen, eval) when nothing overlaps. Walls
//! are the runtime's (stages started to stages finished), without the model loading, which a
//! long run pays once. The projection scales each half to the paper's run (50,000 images x
//! 1,000 steps, the same real set) by its measured rate and multiplies the slower by the ratio.
//!
//! DIR is the bench's own: it must be empty, missing, or an earlier bench's (its marker file
//! says so), and nothing is written outside it.

use std::path::Path;

use serde_json::Value;

use super::pipeline_files::{self, PipelineShape, Topologies, EVALUATE_RUN, GENERATE_RUN, PIPELINED_RUN};
use crate::cli::{execute, CliError};
use crate::models::unet::UNet2DConfig;
use crate::settings::Settings;
use crate::stages::Graph;

/// The file that marks DIR as a pipeline bench's: a later bench may empty such a folder.
pub const MARKER: &str = ".rcaflow-bench-pipeline";

/// The paper's full run that the figures are projected to.
pub const FULL_IMAGES: usize = 50_000;
pub const FULL_STEPS: usize = 1_000;

/// One of the three runs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Leg {
    /// The runtime's wall seconds (stages started to finished).
    pub wall_seconds: f64,
    /// Seconds with model loading and the run directory's setup.
    pub total_seconds: f64,
}

/// The measurement, as `--json` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PipelineReport {
    pub framework: &'static str,
    pub version: &'static str,
    pub device: String,
    pub sampler_device: String,
    pub dtype: String,
    pub threads: usize,
    pub classes: usize,
    pub generated_images: usize,
    pub real_images: usize,
    pub scheduler: String,
    pub steps: usize,
    pub unit_size: usize,
    pub batch: usize,
    pub generation: Leg,
    pub evaluation: Leg,
    pub pipelined: Leg,
    /// Sampler image-steps per second, generation alone.
    pub generation_image_steps_per_second: f64,
    /// Images (generated and real) per second through the evaluation, evaluation alone.
    pub evaluation_images_per_second: f64,
    /// wall(pipelined) / max(wall(generation), wall(evaluation)).
    pub pipelined_ratio: f64,
    /// (wall(generation) + wall(evaluation)) / max(both): the ratio with no overlap at all.
    pub no_overlap_ratio: f64,
    /// The paper's run (50,000 images x 1,000 steps) from the rates above.
    pub projection: Projection,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Projection {
    pub images: usize,
    pub steps: usize,
    pub real_images: usize,
    pub generation_seconds: f64,
    pub evaluation_seconds: f64,
    /// pipelined_ratio x the slower half.
    pub wall_seconds: f64,
}

/// Empties `dir` for a fresh bench (creating it), refusing a folder that is not a bench's.
fn prepare(dir: &Path) -> Result<(), CliError> {
    let shown = dir.display();
    match std::fs::read_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(CliError::Input(format!("--pipeline \"{shown}\": cannot read the folder: {e}"))),
        Ok(mut entries) => {
            let empty = entries.next().is_none();
            if !empty && !dir.join(MARKER).is_file() {
                return Err(CliError::Input(format!(
                    "--pipeline \"{shown}\": the folder is not empty and not an earlier bench's (no {MARKER} in it); give a new or empty folder"
                )));
            }
            if !empty {
                // An earlier bench's: everything in it is the bench's own.
                for entry in std::fs::read_dir(dir).map_err(|e| CliError::Output(format!("--pipeline \"{shown}\": {e}")))? {
                    let path = entry.map_err(|e| CliError::Output(format!("--pipeline \"{shown}\": {e}")))?.path();
                    let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                    removed.map_err(|e| CliError::Output(format!("--pipeline: cannot remove \"{}\": {e}", path.display())))?;
                }
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| CliError::Output(format!("--pipeline \"{shown}\": cannot create the folder: {e}")))?;
    std::fs::write(dir.join(MARKER), "written by rcaflow bench --pipeline; the folder is emptied by the next one\n")
        .map_err(|e| CliError::Output(format!("--pipeline \"{shown}\": cannot write {MARKER}: {e}")))
}

/// Runs one topology from scratch; returns its timing and its report, if it wrote one.
fn run_leg(topology: &Path, dir: &Path, run: &str, settings: &Settings) -> Result<(Leg, Option<Value>), CliError> {
    let start = std::time::Instant::now();
    let graph = Graph::load_with(topology, &[])?;
    let run_dir = dir.join(run);
    let outcome = execute::execute_with(&graph, &run_dir, settings, execute::Options { fresh: true, ..Default::default() })?;
    if outcome.interrupted {
        return Err(CliError::Interrupted(format!("bench --pipeline: {run} was stopped; no figures")));
    }
    let leg = Leg { wall_seconds: outcome.wall.as_secs_f64(), total_seconds: start.elapsed().as_secs_f64() };
    let report = match std::fs::read(run_dir.join("report.json")) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes).map_err(|e| CliError::Output(format!("{}: unreadable report.json: {e}", run_dir.display())))?,
        ),
        Err(_) => None,
    };
    Ok((leg, report))
}

/// How many generated images a report counted.
fn generated_total(report: &Option<Value>, run: &str) -> Result<u64, CliError> {
    report
        .as_ref()
        .and_then(|r| r["generated"]["total"].as_u64())
        .ok_or_else(|| CliError::Output(format!("bench --pipeline: {run} wrote no report with generated.total")))
}

/// Writes the files into `dir`, runs the three legs and works out the figures.
pub fn measure(dir: &Path, unet: &UNet2DConfig, shape: &PipelineShape, settings: &Settings) -> Result<PipelineReport, CliError> {
    prepare(dir)?;
    let out = |e: String| CliError::Output(format!("bench --pipeline \"{}\": {e}", dir.display()));
    eprintln!("bench --pipeline: writing random-weight models and {} real images into {}", shape.real(), dir.display());
    pipeline_files::write_models(dir, unet, shape).map_err(out)?;
    pipeline_files::write_real(dir, shape).map_err(out)?;
    let Topologies { generate, evaluate, pipelined } = pipeline_files::write_topologies(dir, shape).map_err(out)?;

    eprintln!("bench --pipeline: 1/3 generation alone");
    let (generation, _) = run_leg(&generate, dir, GENERATE_RUN, settings)?;
    eprintln!("bench --pipeline: 2/3 evaluation alone");
    let (evaluation, eval_report) = run_leg(&evaluate, dir, EVALUATE_RUN, settings)?;
    eprintln!("bench --pipeline: 3/3 generation and evaluation pipelined");
    let (pipelined_leg, pipe_report) = run_leg(&pipelined, dir, PIPELINED_RUN, settings)?;
    // Both evaluations must have scored every image, or the walls compare different work.
    let (eval_total, pipe_total) = (generated_total(&eval_report, EVALUATE_RUN)?, generated_total(&pipe_report, PIPELINED_RUN)?);
    if eval_total != pipe_total || eval_total != shape.generated() as u64 {
        return Err(CliError::Output(format!(
            "bench --pipeline: the evaluation alone scored {eval_total} generated images and the pipelined run {pipe_total}; expected {}",
            shape.generated()
        )));
    }

    let (gen_s, eval_s, pipe_s) = (generation.wall_seconds, evaluation.wall_seconds, pipelined_leg.wall_seconds);
    let slower = gen_s.max(eval_s);
    let gen_rate = (shape.generated() * shape.steps) as f64 / gen_s;
    let eval_rate = (shape.generated() + shape.real()) as f64 / eval_s;
    let ratio = pipe_s / slower;
    let full_gen = (FULL_IMAGES * FULL_STEPS) as f64 / gen_rate;
    let full_eval = (FULL_IMAGES + shape.real()) as f64 / eval_rate;
    let device = settings.runtime.device.clone();
    Ok(PipelineReport {
        framework: "rcaflow",
        version: env!("CARGO_PKG_VERSION"),
        sampler_device: shape.sampler_device.clone().unwrap_or_else(|| device.clone()),
        device,
        dtype: shape.dtype.clone(),
        threads: rayon::current_num_threads(),
        classes: shape.classes,
        generated_images: shape.generated(),
        real_images: shape.real(),
        scheduler: shape.scheduler.clone(),
        steps: shape.steps,
        unit_size: shape.unit_size,
        batch: shape.batch,
        generation,
        evaluation,
        pipelined: pipelined_leg,
        generation_image_steps_per_second: gen_rate,
        evaluation_images_per_second: eval_rate,
        pipelined_ratio: ratio,
        no_overlap_ratio: (gen_s + eval_s) / slower,
        projection: Projection {
            images: FULL_IMAGES,
            steps: FULL_STEPS,
            real_images: shape.real(),
            generation_seconds: full_gen,
            evaluation_seconds: full_eval,
            wall_seconds: ratio * full_gen.max(full_eval),
        },
    })
}

/// The human summary.
pub fn print_table(r: &PipelineReport) {
    println!(
        "rcaflow {} bench --pipeline: {} classes x {} images ({} real), {} {} steps, 32x32, unit {}, batch {}; sampler {} {}, evaluation {}, {} threads",
        r.version,
        r.classes,
        r.generated_images / r.classes.max(1),
        r.real_images,
        r.scheduler,
        r.steps,
        r.unit_size,
        r.batch,
        r.sampler_device,
        r.dtype,
        r.device,
        r.threads
    );
    println!("{:<18} {:>9} {:>11}  rate", "run", "wall s", "w/ load s");
    let row = |name: &str, leg: &Leg, rate: String| println!("{name:<18} {:>9.2} {:>11.2}  {rate}", leg.wall_seconds, leg.total_seconds);
    row("generation alone", &r.generation, format!("{:.1} image-steps/s", r.generation_image_steps_per_second));
    row("evaluation alone", &r.evaluation, format!("{:.1} images/s (generated and real)", r.evaluation_images_per_second));
    row("pipelined", &r.pipelined, "both at once".to_string());
    println!(
        "pipelined ratio wall(pipelined) / max(generation, evaluation) = {:.3} (no overlap: {:.3}; goal <= 1.05 where the halves have their own hardware)",
        r.pipelined_ratio, r.no_overlap_ratio
    );
    let p = &r.projection;
    println!(
        "projection, {} images x {} steps (+{} real): generation {}, evaluation {}, pipelined wall {}",
        p.images,
        p.steps,
        p.real_images,
        duration(p.generation_seconds),
        duration(p.evaluation_seconds),
        duration(p.wall_seconds)
    );
}

/// Seconds as `1d 02h`, `3h 04m`, `5m 06s` or `7.0 s`.
fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    match s {
        _ if !seconds.is_finite() => "-".into(),
        s if s >= 86_400 => format!("{}d {:02}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{seconds:.1} s"),
    }
}

#[cfg(test)]
mod tests {
    use super::duration;

    #[test]
    fn durations_read_at_a_glance() {
        assert_eq!(duration(7.04), "7.0 s");
        assert_eq!(duration(366.0), "6m 06s");
        assert_eq!(duration(3.0 * 3600.0 + 240.0), "3h 04m");
        assert_eq!(duration(2.0 * 86_400.0 + 7200.0), "2d 02h");
        assert_eq!(duration(f64::NAN), "-");
    }
}
