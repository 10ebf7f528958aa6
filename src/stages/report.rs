//! `report` sink: when its inputs close, writes the run's report into the run directory:
//! PNG figures, `report.md`, then `report.json` last, each replaced atomically, so a
//! `report.json` on disk always belongs to a run that ended (complete or interrupted), never to
//! one that failed half-way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{BuildContext, ComponentConfig};
use crate::runtime::merge::{MergeError, ShardFold};
use crate::topology::{Checks, DataKind, GraphFacts, HashedInput, NamedClasses, Section};
use crate::units::{Origin, UnitPlan};

use crate::report::figures;
use crate::report::json::{Report, RunStatus, StageTiming, Timing, SCHEMA_VERSION};
use crate::report::markdown;
use crate::report::results::SamplerResult;
use crate::report::Summary;
use crate::runtime::batch::Payload;
use crate::runtime::stage::{Stage, StageContext, StageError};

/// Report files a run writes; removed before a run starts so none is left from an earlier one.
pub const REPORT_FILES: [&str; 6] =
    ["report.json", "report.md", "confusion_real.png", "confusion_generated.png", "rca_per_class.png", "samples_grid.png"];

fn default_true() -> bool {
    true
}

/// `report` sink: writes report.json, report.md and figures into the run directory.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    #[serde(default = "default_true")]
    pub figures: bool,
}

impl ComponentConfig for ReportConfig {
    const SECTION: Section = Section::Sinks;
    const ACCEPTS: Option<DataKind> = Some(DataKind::Summaries);
    const PRODUCES: Option<DataKind> = None;
    const RESTARTABLE: bool = false;
    const ACCUMULATES: bool = false;
    const HOLDS_UNITS: bool = false;

    fn source_origin(&self) -> Option<Origin> {
        None
    }

    fn resolve_paths(&mut self, _base: &Path) {}

    fn check(&self, _checks: &mut Checks) {}

    fn class_names(&self, _checks: &mut Checks) -> Option<NamedClasses> {
        None
    }

    fn check_in_graph(&self, _facts: &GraphFacts, _checks: &mut Checks) {}

    fn describe(&self) -> String {
        format!("figures={}", self.figures)
    }

    fn plan(&self, _classes: &[String]) -> Result<Option<UnitPlan>, String> {
        Ok(None)
    }

    fn hashed_inputs(&self, _classes: &[String]) -> Result<Vec<HashedInput>, String> {
        Ok(Vec::new())
    }

    /// Merge: writes files, holds no state: nothing to fold.
    fn fold_shards(&self, _id: &str, _fold: &ShardFold) -> Result<usize, MergeError> {
        Ok(0)
    }

    fn build(&self, cx: &BuildContext) -> Result<Box<dyn Stage>, String> {
        Ok(Box::new(ReportStage { cfg: self.clone(), topology: cx.label.clone() }))
    }
}

pub struct ReportStage {
    cfg: ReportConfig,
    topology: String,
}

impl Stage for ReportStage {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let mut rca = None;
        let mut lpips = None;
        let mut fid = None;
        let mut inception_score = None;
        let mut kid = None;
        let mut precision_recall = None;
        while let Some(payload) = ctx.recv() {
            let Payload::Summary(summary) = payload else {
                return Err(StageError::Failed("received a non-summary payload; the topology check should have refused this edge".into()));
            };
            // One result of each kind: a report has one slot for each.
            let (slot_taken, kind) = match &*summary {
                Summary::Rca(r) => (rca.replace((**r).clone()).is_some(), "rca"),
                Summary::Lpips(r) => (lpips.replace(r.clone()).is_some(), "lpips_diversity"),
                Summary::Fid(r) => (fid.replace((**r).clone()).is_some(), "fid"),
                Summary::InceptionScore(r) => (inception_score.replace(r.clone()).is_some(), "inception_score"),
                Summary::Kid(r) => (kid.replace((**r).clone()).is_some(), "kid"),
                Summary::PrecisionRecall(r) => (precision_recall.replace((**r).clone()).is_some(), "precision_recall"),
                Summary::Source(_) | Summary::Sampler(_) => (false, "source"),
            };
            if slot_taken {
                return Err(StageError::Failed(format!("received results from two {kind} sinks; a report takes one of each")));
            }
        }
        // A failed run writes no report: partial numbers must not look like results.
        if ctx.control.aborted() {
            return Ok(None);
        }
        let results = ctx.control.results();
        let inputs = results
            .iter()
            .filter_map(|(id, s)| match s {
                Summary::Source(src) => Some((id.clone(), src.clone())),
                _ => None,
            })
            .collect();
        let early_stop = rca.as_ref().and_then(|r| r.early_stop.clone());
        let generation: BTreeMap<String, SamplerResult> = results
            .iter()
            .filter_map(|(id, s)| match s {
                Summary::Sampler(r) => Some((id.clone(), (**r).clone())),
                _ => None,
            })
            .map(|(id, mut g)| {
                // The sampler may have sampled past the stop (units in flight when it fired).
                if let Some(stop) = &early_stop {
                    g.cut_to(stop);
                }
                (id, g)
            })
            .collect();
        let sources: Vec<&String> =
            results.iter().filter(|(_, s)| matches!(s, Summary::Source(_) | Summary::Sampler(_))).map(|(id, _)| id).collect();
        let statuses = ctx.control.statuses();
        // Evaluation: every stage that is neither a source nor this report.
        let evaluation_seconds = statuses.iter().filter(|s| !sources.contains(&&s.id) && s.id != ctx.id).map(|s| s.busy_seconds).sum();
        let stages = statuses
            .into_iter()
            .map(|s| {
                let t = StageTiming {
                    busy_seconds: s.busy_seconds,
                    busy_ratio: s.busy_ratio,
                    images_in: s.images_in,
                    images_out: s.images_out,
                    batches: s.batches,
                };
                (s.id, t)
            })
            .collect();
        let mut report = Report {
            schema_version: SCHEMA_VERSION,
            status: if ctx.control.stop_requested() { RunStatus::Interrupted } else { RunStatus::Complete },
            rcaflow_version: env!("CARGO_PKG_VERSION").to_string(),
            topology: self.topology.clone(),
            classes: ctx.classes.to_vec(),
            real: rca.as_ref().map(|r| r.real.clone()),
            generated: rca.as_ref().map(|r| r.generated.clone()),
            rca: rca.as_ref().map(|r| r.rca.clone()),
            real_source: rca.as_ref().map(|r| r.real_source.clone()),
            fid,
            inception_score,
            kid,
            precision_recall,
            early_stop,
            lpips_diversity: lpips,
            inputs,
            timing: Timing {
                wall_seconds: ctx.control.started.elapsed().as_secs_f64(),
                generation_seconds: generation.values().map(|g| g.generation_seconds).reduce(f64::max),
                evaluation_seconds,
                stages,
            },
            generation,
            figures: BTreeMap::new(),
        };
        let dir = ctx.run_dir.clone();
        std::fs::create_dir_all(&dir)
            .map_err(|e| StageError::Failed(format!("run directory \"{}\": cannot create: {e}", dir.display())))?;
        if self.cfg.figures {
            report.figures = write_figures(&dir, &report)?;
        }
        let md = markdown::render(&report);
        write(&dir.join("report.md"), md.as_bytes())?;
        let json = serde_json::to_vec_pretty(&report).map_err(StageError::failed)?;
        write(&dir.join("report.json"), &json)?;
        tracing::info!(dir = %dir.display(), "report written");
        Ok(None)
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), StageError> {
    crate::files::atomic::write(path, bytes, "report.write")
        .map_err(|e| StageError::Failed(format!("report file \"{}\": cannot write: {e}", path.display())))
}

/// Draws each figure (written through the atomic writer by [`figures`]).
fn write_figures(dir: &Path, r: &Report) -> Result<BTreeMap<String, PathBuf>, StageError> {
    let mut out = BTreeMap::new();
    let mut draw = |name: &str, file: &str, render: &dyn Fn(&Path) -> Result<(), figures::FigureError>| -> Result<(), StageError> {
        render(&dir.join(file)).map_err(StageError::failed)?;
        out.insert(name.to_string(), PathBuf::from(file));
        Ok(())
    };
    for (name, file, summary) in
        [("confusion_real", "confusion_real.png", &r.real), ("confusion_generated", "confusion_generated.png", &r.generated)]
    {
        if let Some(s) = summary.as_ref().filter(|s| s.total > 0) {
            let title = format!("Oracle confusion, {} images (n = {})", name.trim_start_matches("confusion_"), s.total);
            draw(name, file, &|p| figures::confusion_heatmap(p, &title, &r.classes, &s.confusion))?;
        }
    }
    // One generated-origin source per topology, so at most one sampler.
    for g in r.generation.values() {
        let grid = &g.grid;
        let images: Vec<Vec<Vec<u8>>> = grid.per_class.iter().map(|row| row.iter().map_while(|im| im.clone()).collect()).collect();
        if images.iter().any(|row| !row.is_empty()) {
            let rows: Vec<figures::ClassSamples> =
                r.classes.iter().zip(&images).map(|(class, images)| figures::ClassSamples { class, images }).collect();
            let title = format!(
                "Generated samples: first {} per class ({} {} steps)",
                rows.iter().map(|r| r.images.len()).max().unwrap_or(0),
                g.scheduler,
                g.steps
            );
            draw("samples_grid", "samples_grid.png", &|p| figures::sample_grid(p, &title, &rows, (grid.height, grid.width)))?;
        }
    }
    if let Some(rca) = &r.rca {
        if r.generated.as_ref().is_some_and(|g| g.total > 0) {
            draw("rca_per_class", "rca_per_class.png", &|p| figures::rca_bars(p, &r.classes, &rca.per_class, rca.global))?;
        }
    }
    if let Some(per_class) = r.fid.as_ref().and_then(|f| f.per_class.as_ref()) {
        let flags = r.fid.as_ref().and_then(|f| f.per_class_rank_deficient.clone()).unwrap_or_else(|| vec![false; per_class.len()]);
        let rca = r.rca.as_ref().filter(|_| r.generated.as_ref().is_some_and(|g| g.total > 0)).map(|rca| rca.per_class.as_slice());
        draw("fid_rca_per_class", "fid_rca_per_class.png", &|p| figures::fid_rca_bars(p, &r.classes, per_class, &flags, rca))?;
    }
    Ok(out)
}
