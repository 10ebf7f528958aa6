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
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::models::sampling::{quantize_rgb, UnitSampler};
use crate::runtime::accumulator::Snapshot;
use crate::runtime::batch::{ImageBatch, Origin, Payload, Summary, UnitId, UnitSpan};
use crate::runtime::plan::{Plan, WorkQueue, WorkUnit};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::telemetry;
use crate::topology::config::{DdpmSamplerConfig, SchedulerKind};

/// Samples per class kept for the report's grid.
pub const GRID_COLUMNS: usize = 8;

/// The first images of each class, for the report's sample grid (not in report.json).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SampleGrid {
    pub height: usize,
    pub width: usize,
    /// Per class, planar RGB images by position (`None` until generated).
    pub per_class: Vec<Vec<Option<Vec<u8>>>>,
}

/// What the sampler did: published for the report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SamplerResult {
    pub unet: PathBuf,
    pub scheduler: SchedulerKind,
    pub steps: usize,
    pub eta: f64,
    pub seed: u64,
    pub replicas: usize,
    pub unit_size: usize,
    pub planned: Vec<u64>,
    pub generated: Vec<u64>,
    pub units: usize,
    /// Images with a NaN or infinite value before quantisation (sent as quantised, and counted).
    pub nonfinite_images: u64,
    /// From the first unit's start to the last unit's end.
    pub generation_seconds: f64,
    /// Time spent denoising, summed over replicas.
    pub busy_seconds: f64,
    pub images_per_second: Option<f64>,
    /// Stopped by a stop request before the plan was done.
    pub stopped_early: bool,
    #[serde(skip)]
    pub grid: SampleGrid,
}

pub struct DdpmSamplerStage {
    cfg: DdpmSamplerConfig,
}

impl DdpmSamplerStage {
    pub fn new(cfg: DdpmSamplerConfig) -> Self {
        DdpmSamplerStage { cfg }
    }
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

/// What the replicas share besides the queue.
struct Shared {
    in_order: InOrder,
    record: Mutex<Snapshot<SamplerRecord>>,
    first_start: Mutex<Option<Instant>>,
    last_end: Mutex<Option<Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Stage for DdpmSamplerStage {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let cfg = self.cfg;
        let classes = ctx.classes.clone();

        // 1. Load one model per replica first, so a bad folder fails before anything is planned.
        let samplers: Vec<UnitSampler> = (0..cfg.replicas.max(1))
            .map(|_| UnitSampler::load(&cfg.unet, cfg.scheduler, cfg.steps, cfg.eta, &ctx.device))
            .collect::<Result<_, _>>()
            .map_err(StageError::failed)?;
        let (_, height, width) = samplers[0].image_shape();
        let steps = samplers[0].steps();
        if samplers[0].num_classes() != Some(classes.len()) {
            return Err(StageError::Failed(format!(
                "unet \"{}\": num_class_embeds = {:?}, the run has {} classes",
                cfg.unet.display(),
                samplers[0].num_classes(),
                classes.len()
            )));
        }
        tracing::info!(stage = %ctx.id, unet = %cfg.unet.display(), scheduler = %cfg.scheduler, steps, replicas = samplers.len(), "sampler loaded");

        // 2. Plan, and say so before sending anything (position-planned sinks read it).
        let plan = Plan::new(cfg.seed, &vec![cfg.per_class; classes.len()], cfg.unit_size);
        // Units a resumed run skips are done already: progress counts this session's work, and
        // the per-class counters start at what earlier sessions generated.
        let skipped: Vec<_> = plan.units.iter().filter(|u| ctx.skip.contains(&u.id())).copied().collect();
        ctx.control.add_planned(plan.total_images() - skipped.iter().map(|u| u.size as u64).sum::<u64>());
        ctx.control.set_planned_per_class(Origin::Generated, plan.per_class.clone());
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
                samplers.into_iter().map(|sampler| scope.spawn(|| run_replica(sampler, ctx_ref, &queue, &shared))).collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|panic| Err(StageError::Failed(format!("sampler replica panicked: {}", panic_text(&panic)))))
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
            generation_seconds,
            busy_seconds: ctx.stats.status().busy_seconds,
            images_per_second: (generation_seconds > 0.0).then(|| generated as f64 / generation_seconds),
            grid: record.state.grid,
        };
        Ok(Some(Summary::Sampler(Box::new(result))))
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// One replica: take a unit, denoise it, quantise, hand it to the in-order sender; repeat.
fn run_replica(sampler: UnitSampler, ctx: &StageContext, queue: &WorkQueue, shared: &Shared) -> Result<(), StageError> {
    let outcome = (|| {
        while !ctx.control.stop_requested() {
            let Some((rank, unit)) = queue.take() else { break };
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
            if ctx.control.stop_requested() {
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
