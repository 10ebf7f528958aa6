//! State every stage of a run shares: the stop and abort flags (the broadcast half of
//! mini-redis-style shutdown), per-stage counters, and the results finished stages publish.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::early_stop::EarlyStopGate;
use super::sync::lock;
use crate::report::Summary;
use crate::telemetry;

/// Lifecycle of a stage, as `status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageState {
    Starting,
    Running,
    Draining,
    Finished,
    Failed,
}

impl StageState {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => StageState::Starting,
            1 => StageState::Running,
            2 => StageState::Draining,
            3 => StageState::Finished,
            _ => StageState::Failed,
        }
    }
}

/// Counters of one stage, updated by its thread and read by status, progress and metrics.
#[derive(Debug)]
pub struct StageStats {
    pub id: String,
    /// Run progress counts the images this stage takes in.
    pub counts_progress: bool,
    state: AtomicU8,
    images_in: AtomicU64,
    images_out: AtomicU64,
    batches: AtomicU64,
    busy_nanos: AtomicU64,
    started: Instant,
}

/// A snapshot of [`StageStats`].
#[derive(Clone, Debug, Serialize)]
pub struct StageStatus {
    pub id: String,
    pub state: StageState,
    pub images_in: u64,
    pub images_out: u64,
    pub batches: u64,
    pub busy_seconds: f64,
    pub busy_ratio: f64,
}

impl StageStats {
    pub fn new(id: &str, counts_progress: bool) -> Self {
        // Every stage's counters exist from the start, at 0: `rate` and `increase` need a sample
        // before the first event to see it (an errors alert would miss a stage's first error),
        // and idle stages show as 0 on a dashboard instead of missing.
        for name in [telemetry::STAGE_IMAGES_IN, telemetry::STAGE_IMAGES_OUT, telemetry::STAGE_BATCHES, telemetry::STAGE_ERRORS] {
            metrics::counter!(name, "stage" => id.to_string()).increment(0);
        }
        StageStats {
            id: id.to_string(),
            counts_progress,
            state: AtomicU8::new(0),
            images_in: AtomicU64::new(0),
            images_out: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    pub fn set_state(&self, state: StageState) {
        self.state.store(state as u8, Ordering::Relaxed);
    }

    pub fn state(&self) -> StageState {
        StageState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub fn images_in(&self) -> u64 {
        self.images_in.load(Ordering::Relaxed)
    }

    pub fn add_in(&self, images: usize) {
        self.images_in.fetch_add(images as u64, Ordering::Relaxed);
        metrics::counter!(telemetry::STAGE_IMAGES_IN, "stage" => self.id.clone()).increment(images as u64);
    }

    pub fn add_out(&self, images: usize) {
        self.images_out.fetch_add(images as u64, Ordering::Relaxed);
        metrics::counter!(telemetry::STAGE_IMAGES_OUT, "stage" => self.id.clone()).increment(images as u64);
    }

    /// Records one batch's processing time: latency histogram, busy time and busy ratio.
    pub fn add_busy(&self, busy: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let total = self.busy_nanos.fetch_add(busy.as_nanos() as u64, Ordering::Relaxed) + busy.as_nanos() as u64;
        let elapsed = self.started.elapsed().as_nanos().max(1) as f64;
        metrics::counter!(telemetry::STAGE_BATCHES, "stage" => self.id.clone()).increment(1);
        metrics::histogram!(telemetry::STAGE_BATCH_SECONDS, "stage" => self.id.clone()).record(busy.as_secs_f64());
        metrics::gauge!(telemetry::STAGE_BUSY_RATIO, "stage" => self.id.clone()).set((total as f64 / elapsed).min(1.0));
    }

    pub fn status(&self) -> StageStatus {
        let busy = self.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        StageStatus {
            id: self.id.clone(),
            state: self.state(),
            images_in: self.images_in(),
            images_out: self.images_out.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            busy_seconds: busy,
            busy_ratio: (busy / elapsed).min(1.0),
        }
    }
}

/// Shared by every stage of one run.
#[derive(Debug)]
pub struct RunControl {
    stop: AtomicBool,
    abort: AtomicBool,
    planned_images: AtomicU64,
    pub started: Instant,
    stats: Mutex<BTreeMap<String, Arc<StageStats>>>,
    results: Mutex<BTreeMap<String, Summary>>,
    /// Set when an `rca` sink has `stop_when`: which generated units the run uses.
    early_stop: Option<Arc<EarlyStopGate>>,
}

impl Default for RunControl {
    fn default() -> Self {
        RunControl {
            stop: AtomicBool::new(false),
            abort: AtomicBool::new(false),
            planned_images: AtomicU64::new(0),
            started: Instant::now(),
            stats: Mutex::new(BTreeMap::new()),
            results: Mutex::new(BTreeMap::new()),
            early_stop: None,
        }
    }
}

impl RunControl {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The control of a run that may stop early through `gate`.
    pub fn with_early_stop(gate: Option<Arc<EarlyStopGate>>) -> Arc<Self> {
        Arc::new(RunControl { early_stop: gate, ..Self::default() })
    }

    pub fn early_stop(&self) -> Option<&Arc<EarlyStopGate>> {
        self.early_stop.as_ref()
    }

    /// Graceful stop: sources take no new work; everything downstream drains.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// A stage failed: the others must not present partial results as final.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::SeqCst)
    }

    pub fn add_planned(&self, images: u64) {
        self.planned_images.fetch_add(images, Ordering::Relaxed);
    }

    /// Images a source will not send after all (the rest of its plan after an early stop): no
    /// longer planned, so progress reaches 1 when what was sent is folded in.
    pub fn remove_planned(&self, images: u64) {
        let _ = self.planned_images.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| Some(p.saturating_sub(images)));
    }

    /// Images folded in over images planned (`None` before anything is planned): the progress
    /// gauge and the run's last progress line.
    pub fn progress(&self) -> Option<(u64, u64, f64)> {
        let (done, planned) = (self.completed_images(), self.planned_images());
        (planned > 0).then(|| (done, planned, done as f64 / planned as f64))
    }

    pub fn planned_images(&self) -> u64 {
        self.planned_images.load(Ordering::Relaxed)
    }

    pub fn register(&self, stats: Arc<StageStats>) {
        lock(&self.stats).insert(stats.id.clone(), stats);
    }

    pub fn statuses(&self) -> Vec<StageStatus> {
        lock(&self.stats).values().map(|s| s.status()).collect()
    }

    /// Images every stage that counts progress has taken in (the slowest one counts).
    pub fn completed_images(&self) -> u64 {
        lock(&self.stats).values().filter(|s| s.counts_progress).map(|s| s.images_in()).min().unwrap_or(0)
    }

    /// Called by a stage before its outputs close, so downstream stages can read it.
    pub fn publish(&self, stage: &str, summary: Summary) {
        lock(&self.results).insert(stage.to_string(), summary);
    }

    pub fn results(&self) -> BTreeMap<String, Summary> {
        lock(&self.results).clone()
    }
}
