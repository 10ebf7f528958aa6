//! `ddpm_sampler` source: generates `per_class` images of every class with a class-conditional
//! diffusers UNet and a DDPM or DDIM scheduler ([`crate::models::sampling`]), and sends them
//! into the graph while the evaluation stages are scoring what came before (DESIGN.md §2).
//!
//! The run is cut into units by [`crate::runtime::plan`]; `replicas` sampler threads, each with
//! its own copy of the model, pull units from one shared queue. A unit's images depend only on
//! (seed, class, index), so which replica runs it changes nothing; and finished units leave in
//! plan order whichever replica finished first ([`InOrder`]), so the sinks fold the same
//! sequence whatever the replica count: their float sums (FID moments) depend on order, and the
//! same run must give the same report to the last bit.
//! Images are quantised to uint8 as they would be stored (DESIGN.md §1) before they leave.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{BuildContext, ComponentConfig};
use crate::models::device::DeviceSpec;
use crate::models::precision::Precision;
use crate::models::sampling::{quantize_rgb, UnitSampler};
use crate::models::schedulers::SchedulerKind;
use crate::models::unet::{UNet2DConfig, CONFIG_FILE as UNET_CONFIG_FILE, WEIGHTS_FILE as UNET_WEIGHTS_FILE};
use crate::report::results::{SampleGrid, SamplerResult, GRID_COLUMNS};
use crate::report::Summary;
use crate::runtime::accumulator::Snapshot;
use crate::runtime::batch::{ImageBatch, Payload};
use crate::runtime::merge::{MergeError, MergeState, ShardFold};
use crate::runtime::plan::{Plan, WorkQueue};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::runtime::sync::{lock, panic_message};
use crate::telemetry;
use crate::topology::config::{from_str, resolve};
use crate::topology::{Checks, DataKind, GraphFacts, HashedInput, NamedClasses, Section};
use crate::units::UnitPlan;
use crate::units::WorkUnit;
use crate::units::{Origin, UnitId, UnitSpan};

fn default_unit_size() -> usize {
    64
}

fn default_replicas() -> usize {
    1
}

/// `ddpm_sampler` source: a class-conditional diffusers UNet2DModel sampled with DDPM or DDIM,
/// `per_class` images of every class, cut into units of `unit_size` (DESIGN.md §2).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DdpmSamplerConfig {
    /// A diffusers model folder: config.json, diffusion_pytorch_model.safetensors and, if present,
    /// scheduler_config.json (else the scheduler's diffusers defaults).
    pub unet: PathBuf,
    #[serde(default, deserialize_with = "from_str")]
    pub scheduler: SchedulerKind,
    /// Denoising steps (default: every training timestep for DDPM, 50 for DDIM).
    pub steps: Option<usize>,
    /// DDIM's eta (0: deterministic given x_T); DDPM ignores it.
    #[serde(default)]
    pub eta: f64,
    pub per_class: u64,
    /// Images per unit: the grain of planning, seeding, batching and exactly-once accounting.
    #[serde(default = "default_unit_size")]
    pub unit_size: usize,
    /// Run seed: each unit's noise derives from (seed, class, index) alone.
    #[serde(default)]
    pub seed: u64,
    /// Sampler threads sharing the plan, each with its own copy of the model.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// Where it runs (`cpu`, `cuda`, `cuda:N`); default: `--device`, else `[runtime] device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceSpec>,
    /// The UNet's precision (`f32`; `bf16` or `f16` on a GPU). Unlike the device, it changes the
    /// images, so it is part of what the run computes (run.json records it when not f32).
    #[serde(default, skip_serializing_if = "Precision::is_f32")]
    pub dtype: Precision,
}

/// The files of a model folder the images depend on (those present).
const MODEL_FILES: [&str; 4] = ["config.json", "diffusion_pytorch_model.safetensors", "scheduler_config.json", "classes.json"];

impl ComponentConfig for DdpmSamplerConfig {
    const SECTION: Section = Section::Sources;
    const ACCEPTS: Option<DataKind> = None;
    const PRODUCES: Option<DataKind> = Some(DataKind::Images);
    const RESTARTABLE: bool = false;
    const ACCUMULATES: bool = false;
    const HOLDS_UNITS: bool = false;

    fn source_origin(&self) -> Option<Origin> {
        Some(Origin::Generated)
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.unet = resolve(base, &self.unet);
    }

    fn check(&self, checks: &mut Checks) {
        if self.per_class == 0 {
            checks.error("per_class must be at least 1 image, found 0");
        }
        // A unit is one model batch: its size bounds the sampler's memory.
        if let Err(e) = crate::limits::count("unit_size", self.unit_size, crate::limits::MAX_UNIT_SIZE, "image") {
            checks.error(e);
        }
        if self.replicas == 0 {
            checks.error("replicas must be at least 1 replica, found 0");
        }
        if self.steps == Some(0) {
            checks.error("steps must be at least 1, found 0");
        }
        if !(self.eta.is_finite() && self.eta >= 0.0) {
            checks.error(format!("eta must be a finite number >= 0, found {}", self.eta));
        }
        if !self.unet.is_dir() {
            checks.error(format!("unet folder \"{}\" does not exist; expected a diffusers model folder", self.unet.display()));
            return;
        }
        for file in [UNET_CONFIG_FILE, UNET_WEIGHTS_FILE] {
            if !self.unet.join(file).is_file() {
                checks.error(format!("unet folder \"{}\" has no {file}; expected a diffusers UNet2DModel folder", self.unet.display()));
            }
        }
        match class_count(&self.unet) {
            Err(e) => checks.error(e),
            Ok(None) => checks.error(format!(
                "unet \"{}\" is not class-conditional (num_class_embeds is null); expected a class-conditional model",
                self.unet.display()
            )),
            Ok(Some(_)) => {}
        }
    }

    fn class_names(&self, _checks: &mut Checks) -> Option<NamedClasses> {
        None
    }

    fn check_in_graph(&self, facts: &GraphFacts, checks: &mut Checks) {
        let Some(classes) = facts.classes else {
            checks.error(
                "the class names are unknown; expected `classes = [...]` in [run] (in the order of the model's class labels) or an image_folder source",
            );
            return;
        };
        if let Ok(Some(found)) = class_count(&self.unet) {
            if found != classes.len() {
                checks.error(format!(
                    "unet \"{}\" has num_class_embeds = {found}, the topology has {} classes",
                    self.unet.display(),
                    classes.len()
                ));
            }
        }
    }

    fn describe(&self) -> String {
        format!(
            "unet={} scheduler={} steps={} eta={} per_class={} unit_size={} seed={} replicas={}{}{}",
            self.unet.display(),
            self.scheduler,
            self.steps.map_or("default".into(), |s| s.to_string()),
            self.eta,
            self.per_class,
            self.unit_size,
            self.seed,
            self.replicas,
            self.device.map_or(String::new(), |d| format!(" device={d}")),
            if self.dtype.is_f32() { String::new() } else { format!(" dtype={}", self.dtype) }
        )
    }

    fn plan(&self, classes: &[String]) -> Result<Option<UnitPlan>, String> {
        Ok(Some(UnitPlan { origin: Origin::Generated, per_class: vec![self.per_class; classes.len()], unit_size: self.unit_size }))
    }

    fn hashed_inputs(&self, _classes: &[String]) -> Result<Vec<HashedInput>, String> {
        Ok(MODEL_FILES
            .iter()
            .map(|f| HashedInput::File { what: format!("unet {f}"), path: self.unet.join(f) })
            .filter(|h| matches!(h, HashedInput::File { path, .. } if path.exists()))
            .collect())
    }

    /// Merge: the sample grid and non-finite counts of every shard.
    fn fold_shards(&self, id: &str, fold: &ShardFold) -> Result<usize, MergeError> {
        fold.fold::<SamplerRecord>(id)
    }

    /// Loads one model per replica, so a bad folder fails before anything runs.
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn Stage>, String> {
        self.dtype.check_on(cx.device_of(self.device)).map_err(|e| e.to_string())?;
        // Each replica on a device (stream) of its own.
        let samplers: Vec<UnitSampler> = (0..self.replicas.max(1))
            .map(|_| {
                let device = cx.open_device(self.device)?;
                UnitSampler::load_as(&self.unet, self.scheduler, self.steps, self.eta, &device, self.dtype).map_err(|e| e.to_string())
            })
            .collect::<Result<_, String>>()?;
        if samplers[0].num_classes() != Some(cx.classes.len()) {
            return Err(format!(
                "unet \"{}\": num_class_embeds = {:?}, the run has {} classes",
                self.unet.display(),
                samplers[0].num_classes(),
                cx.classes.len()
            ));
        }
        Ok(Box::new(DdpmSamplerStage { cfg: self.clone(), samplers }))
    }
}

/// `num_class_embeds` of a diffusers model folder's config.json, checked for what the sampler
/// can run, without loading weights.
fn class_count(folder: &Path) -> Result<Option<usize>, String> {
    let path = folder.join(UNET_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("unet config \"{}\": cannot read: {e}", path.display()))?;
    let config = UNet2DConfig::from_json_str(&text).map_err(|e| format!("unet config \"{}\": {e}", path.display()))?;
    Ok(config.num_class_embeds)
}

pub struct DdpmSamplerStage {
    cfg: DdpmSamplerConfig,
    /// One loaded model per replica.
    samplers: Vec<UnitSampler>,
}

/// What the units sent so far left for the report: the sampler's checkpoint, written before
/// each unit is sent, so a resumed run that skips a unit still has its grid images and
/// non-finite count (a redone unit is recorded again, idempotently).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SamplerRecord {
    pub grid: SampleGrid,
    /// Images with non-finite values, per unit that had any.
    pub nonfinite: BTreeMap<UnitId, u64>,
}

/// Each grid cell from the shard that generated it (positions are disjoint); every shard's
/// non-finite counts.
impl MergeState for SamplerRecord {
    fn merge(&mut self, other: SamplerRecord) -> Result<(), String> {
        let (a, b) = (&mut self.grid, other.grid);
        let shape = |g: &SampleGrid| (g.height, g.width, g.per_class.iter().map(Vec::len).collect::<Vec<_>>());
        if shape(a) != shape(&b) {
            return Err("the sample grids differ in size".into());
        }
        for (mine, theirs) in a.per_class.iter_mut().zip(b.per_class) {
            for (cell, image) in mine.iter_mut().zip(theirs) {
                if cell.is_none() {
                    *cell = image;
                }
            }
        }
        self.nonfinite.extend(other.nonfinite);
        Ok(())
    }
}

/// What the replicas share besides the queue.
struct Shared {
    in_order: InOrder,
    record: Mutex<Snapshot<SamplerRecord>>,
    first_start: Mutex<Option<Instant>>,
    last_end: Mutex<Option<Instant>>,
}

impl Stage for DdpmSamplerStage {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let cfg = self.cfg;
        let classes = ctx.classes.clone();
        // 1. The models were loaded by the build step.

        let samplers = self.samplers;
        let (_, height, width) = samplers[0].image_shape();
        let steps = samplers[0].steps();
        tracing::info!(stage = %ctx.id, unet = %cfg.unet.display(), scheduler = %cfg.scheduler, steps, replicas = samplers.len(), "sampler loaded");

        // 2. Plan (the same cut as the run manifest's: `units::cut_into_units`).
        let plan = Plan::new(cfg.seed, &vec![cfg.per_class; classes.len()], cfg.unit_size);
        // A shard runs its own units only; their seeds are the whole plan's.
        let mut plan = match ctx.shard {
            Some(shard) => plan.shard(shard),
            None => plan,
        };
        // A run that may stop early samples in the order the stop is decided on (classes
        // interleaved), so every class gains images as it goes.
        if let Some(gate) = ctx.control.early_stop() {
            plan.units.sort_by_key(|u| gate.rank(&u.id()).unwrap_or(usize::MAX));
        }
        // Units a resumed run skips are done already: progress counts this session's work, and
        // the per-class counters start at what earlier sessions generated.
        let skipped: Vec<_> = plan.units.iter().filter(|u| ctx.skip.contains(&u.id())).copied().collect();
        ctx.control.add_planned(plan.total_images() - skipped.iter().map(|u| u.size as u64).sum::<u64>());
        metrics::gauge!(telemetry::RUN_IMAGES_PLANNED, "origin" => Origin::Generated.as_str()).increment(plan.total_images() as f64);
        for (class, &n) in classes.iter().zip(&plan.per_class) {
            metrics::gauge!(telemetry::CLASS_IMAGES_PLANNED, "class" => class.clone()).set(n as f64);
            // Counters at 0 from the start: a class not begun shows 0% rather than no bar, and
            // `increase` sees the first unit.
            metrics::counter!(telemetry::CLASS_IMAGES_GENERATED, "class" => class.clone()).increment(0);
        }
        for unit in &skipped {
            metrics::counter!(telemetry::CLASS_IMAGES_GENERATED, "class" => classes[unit.class as usize].clone())
                .increment(unit.size as u64);
        }
        metrics::counter!(telemetry::SAMPLER_UNITS_DONE).increment(0);
        metrics::counter!(telemetry::NONFINITE_IMAGES, "stage" => ctx.id.clone()).increment(0);
        let planned = plan.per_class.clone();
        let queue = WorkQueue::new(plan, (*ctx.skip).clone());
        let record = ctx.restore::<SamplerRecord>()?.unwrap_or_else(|| Snapshot {
            state: SamplerRecord {
                grid: SampleGrid { height, width, per_class: vec![vec![None; GRID_COLUMNS.min(cfg.per_class as usize)]; classes.len()] },
                nonfinite: BTreeMap::new(),
            },
            applied: Default::default(),
        });
        let shared = Shared {
            in_order: InOrder::new(cfg.replicas.max(1)),
            record: Mutex::new(record),
            first_start: Mutex::new(None),
            last_end: Mutex::new(None),
        };

        // 3. Replicas pull units until the plan is done or a stop is requested.
        let ctx_ref: &StageContext = ctx;
        let outcomes: Vec<Result<(), StageError>> = std::thread::scope(|scope| {
            let workers: Vec<_> =
                samplers.into_iter().map(|sampler| scope.spawn(|| {
                    // A replica is a thread of its own: its kernels go to the stage's pool, if any.
                    crate::models::threads::in_pool(ctx_ref.pool.as_ref(), || run_replica(sampler, ctx_ref, &queue, &shared))
                })).collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|panic| Err(StageError::Failed(format!("sampler replica panicked: {}", panic_message(&panic)))))
                })
                .collect()
        });
        if let Some(err) = outcomes.into_iter().find_map(Result::err) {
            return Err(err);
        }

        let progress = queue.progress();
        let generation_seconds = match (*lock(&shared.first_start), *lock(&shared.last_end)) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64(),
            _ => 0.0,
        };
        let generated: u64 = progress.done_per_class.iter().sum();
        // After an early stop the units not sampled are out of the plan (the README's "Early
        // stop"): the planned counts become what was generated, so progress ends complete.
        if ctx.control.early_stop().is_some_and(|g| g.stopped_at().is_some()) {
            let unsent = queue.plan().total_images() - generated;
            ctx.control.remove_planned(unsent);
            metrics::gauge!(telemetry::RUN_IMAGES_PLANNED, "origin" => Origin::Generated.as_str()).decrement(unsent as f64);
            for (class, &n) in classes.iter().zip(&progress.done_per_class) {
                metrics::gauge!(telemetry::CLASS_IMAGES_PLANNED, "class" => class.clone()).set(n as f64);
            }
        }
        let record = lock(&shared.record).clone();
        let result = SamplerResult {
            unet: cfg.unet.clone(),
            scheduler: cfg.scheduler,
            steps,
            eta: cfg.eta,
            seed: cfg.seed,
            replicas: cfg.replicas.max(1),
            unit_size: cfg.unit_size,
            stopped_early: progress.done_per_class != planned,
            planned,
            generated: progress.done_per_class,
            units: record.applied.len(),
            nonfinite_images: record.state.nonfinite.values().sum(),
            nonfinite_units: record.state.nonfinite.clone(),
            generation_seconds,
            busy_seconds: ctx.stats.status().busy_seconds,
            images_per_second: (generation_seconds > 0.0).then(|| generated as f64 / generation_seconds),
            grid: record.state.grid,
        };
        Ok(Some(Summary::Sampler(Box::new(result))))
    }
}

/// One replica: take a unit, denoise it, quantise, hand it to the in-order sender; repeat.
fn run_replica(sampler: UnitSampler, ctx: &StageContext, queue: &WorkQueue, shared: &Shared) -> Result<(), StageError> {
    let outcome = (|| {
        while !ctx.control.stop_requested() {
            let Some((rank, unit)) = queue.take() else { break };
            // The early stop fired before this unit: it is not sampled (nor any after it).
            if ctx.control.early_stop().is_some_and(|g| g.outside(&unit.id())) {
                break;
            }
            lock(&shared.first_start).get_or_insert_with(Instant::now);
            let batch = ctx.timed(|| -> Result<Finished, StageError> {
                let samples = sampler.sample_unit(&unit).map_err(|e| StageError::Failed(format!("unit {}: {e}", unit.id())))?;
                Ok(to_batch(&unit, &samples, sampler.image_shape(), &ctx.id))
            })?;
            *lock(&shared.last_end) = Some(Instant::now());
            if !shared.in_order.deliver(rank, unit, batch, ctx, |unit, batch| send_unit(unit, batch, ctx, queue, shared))? {
                break;
            }
        }
        Ok(())
    })();
    if outcome.is_err() {
        shared.in_order.abandon();
    }
    outcome
}

/// Records one finished unit (checkpointed before it leaves), sends it downstream and counts
/// it as done.
fn send_unit(
    unit: WorkUnit,
    (batch, nonfinite): (ImageBatch, u64),
    ctx: &StageContext,
    queue: &WorkQueue,
    shared: &Shared,
) -> Result<(), StageError> {
    {
        let mut record = lock(&shared.record);
        keep_for_grid(&unit, &batch, &mut record.state.grid);
        if nonfinite > 0 {
            record.state.nonfinite.insert(unit.id(), nonfinite);
        }
        record.applied.insert(unit.id());
        ctx.checkpoint(&*record)?;
    }
    ctx.fault("unit")?;
    ctx.send(Payload::Images(Arc::new(batch)))?;
    let progress = queue.finish(&unit);
    metrics::counter!(telemetry::SAMPLER_UNITS_DONE).increment(1);
    metrics::counter!(telemetry::CLASS_IMAGES_GENERATED, "class" => ctx.classes[unit.class as usize].clone()).increment(unit.size as u64);
    if let Some(eta) = progress.eta {
        metrics::gauge!(telemetry::RUN_ETA).set(eta.as_secs_f64());
    }
    Ok(())
}

/// Puts the units the replicas finish back into plan order (by their rank in the queue) before
/// they are sent. A replica whose unit is ahead of the next one to send parks it here; at most
/// `replicas` units are parked before the replica that parked waits, so memory stays bounded.
struct InOrder {
    state: Mutex<InOrderState>,
    changed: Condvar,
    limit: usize,
}

struct InOrderState {
    /// Rank of the next unit to send.
    next: usize,
    parked: BTreeMap<usize, (WorkUnit, Finished)>,
    /// A replica failed: the unit it held will never come, so nobody waits for it.
    abandoned: bool,
}

impl InOrder {
    fn new(limit: usize) -> Self {
        InOrder { state: Mutex::new(InOrderState { next: 0, parked: BTreeMap::new(), abandoned: false }), changed: Condvar::new(), limit }
    }

    /// Parks the unit of `rank`, then sends (with `send`) every parked unit whose turn has come.
    /// Returns `Ok(false)` when the replica should stop: another replica failed, or a stop was
    /// requested while this one waited for room.
    fn deliver(
        &self,
        rank: usize,
        unit: WorkUnit,
        batch: Finished,
        ctx: &StageContext,
        mut send: impl FnMut(WorkUnit, Finished) -> Result<(), StageError>,
    ) -> Result<bool, StageError> {
        let mut state = lock(&self.state);
        state.parked.insert(rank, (unit, batch));
        // Sending happens under the lock: it keeps the order, and a replica that finishes while
        // a send is blocked on backpressure has nowhere to send anyway.
        while let Some((unit, batch)) = {
            let next = state.next;
            state.parked.remove(&next)
        } {
            send(unit, batch)?;
            state.next += 1;
        }
        self.changed.notify_all();
        while state.parked.len() >= self.limit && !state.abandoned {
            if ctx.control.stop_requested() || ctx.control.early_stop().is_some_and(|g| g.stopped_at().is_some()) {
                return Ok(false);
            }
            state = self.changed.wait_timeout(state, Duration::from_millis(100)).unwrap_or_else(|e| e.into_inner()).0;
        }
        Ok(!state.abandoned)
    }

    fn abandon(&self) {
        lock(&self.state).abandoned = true;
        self.changed.notify_all();
    }
}

/// A unit's quantised images and how many of them had non-finite values.
type Finished = (ImageBatch, u64);

/// Quantised RGB batch of one unit; 1-channel models are shown as grey RGB.
fn to_batch(unit: &WorkUnit, samples: &[f32], (channels, h, w): (usize, usize, usize), stage: &str) -> Finished {
    let per_image = channels * h * w;
    let mut pixels = Vec::with_capacity(unit.size * 3 * h * w);
    let mut nonfinite = 0;
    for image in samples.chunks(per_image) {
        if image.iter().any(|v| !v.is_finite()) {
            nonfinite += 1;
        }
        pixels.extend(quantize_rgb(image, channels));
    }
    if nonfinite > 0 {
        tracing::warn!(unit = %unit.id(), images = nonfinite, "generated images with NaN or infinite values");
        metrics::counter!(telemetry::NONFINITE_IMAGES, "stage" => stage.to_string()).increment(nonfinite);
    }
    let span = UnitSpan { id: unit.id(), start: 0, len: unit.size, first_position: unit.first_position };
    (ImageBatch::new(h, w, pixels, vec![unit.class; unit.size], vec![span]), nonfinite)
}

fn keep_for_grid(unit: &WorkUnit, batch: &ImageBatch, grid: &mut SampleGrid) {
    let Some(row) = grid.per_class.get_mut(unit.class as usize) else { return };
    for i in 0..batch.len() {
        let position = unit.first_position as usize + i;
        if let Some(slot) = row.get_mut(position) {
            *slot = Some(batch.image(i).to_vec());
        }
    }
}
