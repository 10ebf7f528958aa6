//! Mock stages for tests of `rcaflow::runtime::run` (tests/runtime.rs, tests/backpressure.rs),
//! and the small pieces a run of them needs (stage specs, edges, settings).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcaflow::report::results::SourceResult;
use rcaflow::report::Summary;
use rcaflow::runtime::batch::{ImageBatch, Payload};
use rcaflow::runtime::stage::{Stage, StageContext, StageError};
use rcaflow::runtime::{RunSettings, StageSpec};
use rcaflow::topology::Edge;
use rcaflow::units::{Origin, UnitId, UnitSpan};

/// One 1x1 image, one unit (`generated/0/index`).
pub fn tiny_batch(index: u32) -> ImageBatch {
    let span = UnitSpan { id: UnitId { origin: Origin::Generated, class: 0, index }, start: 0, len: 1, first_position: index as u64 };
    ImageBatch::new(1, 1, vec![index as u8; 3], vec![0], vec![span])
}

/// A source of tiny batches: `limit` of them, or endless until a stop is requested.
pub struct TinySource {
    limit: Option<u32>,
    sent: Arc<AtomicUsize>,
}

impl TinySource {
    /// The source, and the count of batches it has sent.
    pub fn new(limit: Option<u32>) -> (Self, Arc<AtomicUsize>) {
        let sent = Arc::new(AtomicUsize::new(0));
        (TinySource { limit, sent: sent.clone() }, sent)
    }
}

impl Stage for TinySource {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let mut index = 0;
        while self.limit.is_none_or(|n| index < n) {
            if ctx.control.stop_requested() {
                break;
            }
            ctx.send(Payload::Images(Arc::new(tiny_batch(index))))?;
            self.sent.fetch_add(1, Ordering::SeqCst);
            index += 1;
        }
        Ok(None)
    }
}

/// What a [`RecordingSink`] received.
#[derive(Default)]
pub struct Recorded {
    /// The batches themselves, in order (so fan-out can be checked to share them); only when
    /// the sink keeps them, which is fine for the few hundred 1x1 batches tests make.
    pub batches: Vec<Arc<ImageBatch>>,
    /// How many batches arrived.
    pub batch_count: usize,
    /// How many images they held.
    pub images: usize,
    /// The units they carried; only when the sink does not keep its batches (it then checks
    /// that no unit arrives twice).
    pub units: BTreeSet<UnitId>,
}

pub type Received = Arc<Mutex<Recorded>>;

/// A sink that sleeps `delay` on every batch and records it. With `publish`, it behaves like an
/// accumulator and hands a summary to the run at the end, unless the run was aborted.
pub struct RecordingSink {
    delay: Duration,
    publish: bool,
    keep: bool,
    received: Received,
}

impl RecordingSink {
    /// A sink keeping every batch it receives.
    pub fn new(delay: Duration, publish: bool) -> (Self, Received) {
        let received = Received::default();
        (RecordingSink { delay, publish, keep: true, received: received.clone() }, received)
    }

    /// A sink that holds no batch once it has slept on it (so it does not change how many
    /// batches are alive): it counts batches and images, records units and fails its stage
    /// (by a panic) when a unit arrives twice. It publishes nothing.
    pub fn counting(delay: Duration) -> (Self, Received) {
        let received = Received::default();
        (RecordingSink { delay, publish: false, keep: false, received: received.clone() }, received)
    }
}

impl Stage for RecordingSink {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        while let Some(payload) = ctx.recv() {
            let Payload::Images(batch) = payload else {
                return Err(StageError::Failed("expected images".into()));
            };
            std::thread::sleep(self.delay);
            let mut received = self.received.lock().unwrap();
            received.batch_count += 1;
            received.images += batch.len();
            if self.keep {
                received.batches.push(batch);
            } else {
                for span in &batch.units {
                    assert!(received.units.insert(span.id), "unit {} delivered twice", span.id);
                }
            }
        }
        if !self.publish || ctx.control.aborted() {
            return Ok(None);
        }
        let n = self.received.lock().unwrap().batch_count as u64;
        Ok(Some(Summary::Source(SourceResult {
            origin: Origin::Generated,
            path: "memory".into(),
            files: vec![n],
            decoded: vec![n],
            unreadable: Vec::new(),
            stopped_early: false,
        })))
    }
}

/// How a [`Faulty`] stage goes wrong on its `at`-th batch.
#[derive(Clone, Copy)]
pub enum Fault {
    Fail,
    Panic,
}

/// A transform forwarding batches until its `at`-th one, which makes it fail or panic.
pub struct Faulty {
    pub at: usize,
    pub fault: Fault,
}

impl Stage for Faulty {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let mut n = 0;
        while let Some(payload) = ctx.recv() {
            n += 1;
            if n == self.at {
                match self.fault {
                    Fault::Fail => return Err(StageError::Failed(format!("injected failure at batch {n}"))),
                    Fault::Panic => panic!("boom at batch {n}"),
                }
            }
            ctx.send(payload)?;
        }
        Ok(None)
    }
}

/// A stage that ignores stop requests and sleeps in a loop; it only ends when the run is
/// aborted (after the deadline or a forced stop), or after `limit`, so its thread does not
/// outlive the test process by much.
pub struct Stuck {
    pub limit: Duration,
}

impl Stage for Stuck {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let start = Instant::now();
        while !ctx.control.aborted() && start.elapsed() < self.limit {
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(None)
    }
}

/// The stage `section.id`, without restarts.
pub fn spec(section: &str, id: &str, accumulates: bool, stage: impl Stage) -> StageSpec {
    built(section, id, accumulates, Box::new(stage))
}

/// A stage spec for a stage a component's build step made.
pub fn built(section: &str, id: &str, accumulates: bool, stage: Box<dyn Stage>) -> StageSpec {
    StageSpec { id: id.into(), qualified: format!("{section}.{id}"), counts_progress: accumulates, stage, restart: None, pool: None }
}

pub fn edge(from: &str, to: &str, capacity: usize) -> Edge {
    Edge { from: from.into(), to: to.into(), capacity }
}

/// Settings of a CPU run in `run_dir` with these classes; checkpoints hourly (never, in a test).
pub fn settings(run_dir: &Path, classes: &[&str], shutdown_deadline: Duration) -> RunSettings {
    RunSettings {
        run_dir: run_dir.to_path_buf(),
        classes: Arc::new(classes.iter().map(|s| s.to_string()).collect()),
        shutdown_deadline,
        checkpoint_interval: Duration::from_secs(3600),
        skip: Default::default(),
        shard: None,
    }
}
