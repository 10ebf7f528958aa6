//! The runtime's promises (DESIGN.md §2), tested through `rcaflow::runtime::run` with small
//! custom stages: failures and panics stop the run and name the stage, a graceful shutdown
//! drains without losing a batch, the deadline names the stages still busy, a second request
//! stops at once, fan-out delivers every batch to every consumer, and accumulators apply each
//! unit exactly once across snapshots.
//!
//! Every run is wrapped in a timeout, so a hang fails the test instead of blocking CI.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::stages::{edge, settings, spec, Fault, Faulty, Received, RecordingSink, Stuck, TinySource};
use rcaflow::report::Summary;
use rcaflow::runtime::accumulator::{ExactlyOnce, Snapshot};
use rcaflow::runtime::batch::PredictionBatch;
use rcaflow::runtime::checkpoint;
use rcaflow::runtime::control::{RunControl, StageState};
use rcaflow::models::threads::StagePool;
use rcaflow::runtime::stage::{Stage, StageContext, StageError};
use rcaflow::runtime::{run, RunError, RunOutcome, ShutdownRequest, StageSpec};
use rcaflow::stages::rca::RcaState;
use rcaflow::topology::Edge;
use rcaflow::units::{Origin, UnitId, UnitSpan};
use tokio::sync::mpsc;

/// Longest any run here may take before the test fails as hung.
const HANG: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Helpers (the test stages are in tests/common/stages.rs)

/// Runs the stages, sending one shutdown request after each delay in `stops` (measured from
/// the start); fails the test if the run takes longer than [`HANG`]. Returns the result, the
/// time it took, and the run's control (to inspect after a failed run).
async fn run_with(
    stages: Vec<StageSpec>,
    edges: &[Edge],
    deadline: Duration,
    stops: &[Duration],
) -> (Result<RunOutcome, RunError>, Duration, Arc<RunControl>) {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path(), &["zero"], deadline);
    let control = RunControl::new();
    let (tx, rx) = mpsc::unbounded_channel();
    let stops = stops.to_vec();
    let start = Instant::now();
    // Keeps `tx` alive until the run ends, whether or not it sends anything.
    let sender = tokio::spawn(async move {
        let start = tokio::time::Instant::now();
        for at in stops {
            tokio::time::sleep_until(start + at).await;
            let _ = tx.send(ShutdownRequest);
        }
        std::future::pending::<()>().await;
    });
    let result = tokio::time::timeout(HANG, run(stages, edges, &settings, control.clone(), rx))
        .await
        .unwrap_or_else(|_| panic!("run did not end within {HANG:?}"));
    let took = start.elapsed();
    sender.abort();
    (result, took, control)
}

fn indices(received: &Received) -> Vec<u32> {
    received.lock().unwrap().batches.iter().map(|b| b.units[0].id.index).collect()
}

fn state_of(control: &RunControl, id: &str) -> StageState {
    control.statuses().into_iter().find(|s| s.id == id).unwrap_or_else(|| panic!("no status for {id}")).state
}

// ---------------------------------------------------------------------------------------------
// Failures

/// A stage failing mid-stream stops the whole run: the error names it and its cause, the
/// stages up- and downstream end, and the accumulating sink publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_stage_stops_the_run_and_is_named() {
    let (source, sent) = TinySource::new(None);
    let (sink, received) = RecordingSink::new(Duration::ZERO, true);
    let stages = vec![
        spec("sources", "gen", false, source),
        spec("transforms", "faulty", false, Faulty { at: 5, fault: Fault::Fail }),
        spec("sinks", "acc", true, sink),
    ];
    let edges = [edge("gen", "faulty", 2), edge("faulty", "acc", 2)];
    let (result, took, control) = run_with(stages, &edges, Duration::from_secs(5), &[]).await;

    match result {
        Err(RunError::StageFailed { first, others }) => {
            assert_eq!(first.stage, "transforms.faulty");
            assert_eq!(first.cause, "injected failure at batch 5");
            assert!(others.is_empty(), "only the faulty stage failed; also reported: {others:?}");
        }
        other => panic!("expected StageFailed, got {other:?}"),
    }
    assert!(took < Duration::from_secs(3), "the run took {took:?} to stop after a failure");
    assert!(control.aborted());
    // The endless source stopped (it would otherwise never end), the sink saw only what the
    // faulty stage forwarded before failing, and published no result.
    assert_eq!(indices(&received), vec![0, 1, 2, 3]);
    assert!(sent.load(Ordering::SeqCst) >= 5);
    assert!(control.results().is_empty(), "results published by an aborted run: {:?}", control.results());
    assert_eq!(state_of(&control, "faulty"), StageState::Failed);
    assert_eq!(state_of(&control, "acc"), StageState::Finished);
}

/// A panic is caught on the stage's thread and reported as a failure of that stage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_stage_is_reported_as_failed() {
    let (source, _) = TinySource::new(None);
    let (sink, received) = RecordingSink::new(Duration::ZERO, true);
    let stages = vec![
        spec("sources", "gen", false, source),
        spec("transforms", "faulty", false, Faulty { at: 3, fault: Fault::Panic }),
        spec("sinks", "acc", true, sink),
    ];
    let edges = [edge("gen", "faulty", 2), edge("faulty", "acc", 2)];
    let (result, took, control) = run_with(stages, &edges, Duration::from_secs(5), &[]).await;

    match result {
        Err(RunError::StageFailed { first, others }) => {
            assert_eq!(first.stage, "transforms.faulty");
            assert_eq!(first.cause, "panicked: boom at batch 3");
            assert!(others.is_empty(), "{others:?}");
            let message = RunError::StageFailed { first, others }.to_string();
            assert_eq!(message, "stage transforms.faulty failed: panicked: boom at batch 3");
        }
        other => panic!("expected StageFailed, got {other:?}"),
    }
    assert!(took < Duration::from_secs(3), "the run took {took:?} to stop after a panic");
    assert_eq!(indices(&received), vec![0, 1]);
    assert!(control.results().is_empty());
}

/// A failing source ends the run the same way (nothing upstream to stop; downstream drains).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_sink_stops_an_endless_source() {
    let (source, _) = TinySource::new(None);
    let stages = vec![spec("sources", "gen", false, source), spec("sinks", "faulty", false, Faulty { at: 7, fault: Fault::Fail })];
    // The source is most likely blocked on the full channel when the sink fails: it must be
    // released by the channel closing, not by the stop flag it only checks between batches.
    let edges = [edge("gen", "faulty", 1)];
    let (result, took, _) = run_with(stages, &edges, Duration::from_secs(5), &[]).await;
    match result {
        Err(RunError::StageFailed { first, others }) => {
            assert_eq!(first.stage, "sinks.faulty");
            assert!(others.is_empty(), "a cancelled producer is not a failure: {others:?}");
        }
        other => panic!("expected StageFailed, got {other:?}"),
    }
    assert!(took < Duration::from_secs(3));
}

// ---------------------------------------------------------------------------------------------
// Shutdown

/// One request: the source stops taking work, everything it sent is drained to the sink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_drains_everything_sent() {
    let (source, sent) = TinySource::new(None);
    // A slightly slow sink, so batches are queued when the stop comes and must be drained.
    let (sink, received) = RecordingSink::new(Duration::from_millis(1), true);
    let stages = vec![spec("sources", "gen", false, source), spec("sinks", "acc", true, sink)];
    let edges = [edge("gen", "acc", 8)];
    let (result, took, _) = run_with(stages, &edges, Duration::from_secs(5), &[Duration::from_millis(100)]).await;

    let outcome = result.expect("a graceful stop is not an error");
    assert!(outcome.interrupted);
    assert!(took >= Duration::from_millis(100) && took < Duration::from_secs(3), "took {took:?}");
    let sent = sent.load(Ordering::SeqCst);
    let got = indices(&received);
    assert!(sent > 10, "the source only sent {sent} batches in 100 ms");
    assert_eq!(got, (0..sent as u32).collect::<Vec<_>>(), "batches lost, duplicated or reordered in the drain");
    // The accumulating sink ended normally and published; the counters agree.
    assert!(matches!(outcome.summaries.get("acc"), Some(Summary::Source(s)) if s.decoded == vec![sent as u64]));
    let status = |id: &str| outcome.stages.iter().find(|s| s.id == id).unwrap().clone();
    assert_eq!(status("gen").images_out, sent as u64);
    assert_eq!(status("acc").images_in, sent as u64);
    assert_eq!(status("gen").state, StageState::Finished);
    assert_eq!(status("acc").state, StageState::Finished);
}

/// A stage that ignores the stop request outlives the deadline: the error names it (by its
/// component id, which is what stage statuses carry) and only it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_names_the_stage_still_busy() {
    let (source, sent) = TinySource::new(None);
    let (sink, received) = RecordingSink::new(Duration::ZERO, false);
    let stages = vec![
        spec("sources", "gen", false, source),
        spec("sinks", "acc", false, sink),
        spec("transforms", "stuck", false, Stuck { limit: HANG }),
    ];
    let edges = [edge("gen", "acc", 4)];
    let deadline = Duration::from_millis(300);
    let (result, took, control) = run_with(stages, &edges, deadline, &[Duration::from_millis(100)]).await;

    match result {
        Err(RunError::DeadlineExceeded { deadline: d, busy }) => {
            assert_eq!(d, deadline);
            assert_eq!(busy, vec!["transforms.stuck".to_string()], "the well-behaved stages drained in time");
        }
        other => panic!("expected DeadlineExceeded, got {other:?}"),
    }
    assert!(took >= Duration::from_millis(400) && took < Duration::from_secs(3), "took {took:?}");
    // The stages that honoured the stop drained fully; the run is aborted so no partial
    // result is taken for a final one (and the stuck stage's thread can end).
    assert_eq!(indices(&received).len(), sent.load(Ordering::SeqCst));
    assert!(control.aborted());
}

/// A second request before the deadline stops at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_request_forces_the_stop() {
    let (source, _) = TinySource::new(None);
    let (sink, _) = RecordingSink::new(Duration::ZERO, false);
    let stages = vec![
        spec("sources", "gen", false, source),
        spec("sinks", "acc", false, sink),
        spec("transforms", "stuck", false, Stuck { limit: HANG }),
    ];
    let edges = [edge("gen", "acc", 4)];
    let stops = [Duration::from_millis(100), Duration::from_millis(200)];
    let (result, took, control) = run_with(stages, &edges, Duration::from_secs(5), &stops).await;

    assert!(matches!(result, Err(RunError::ForcedStop)), "expected ForcedStop, got {result:?}");
    assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(2), "took {took:?}: the deadline was waited for");
    assert!(control.aborted());
}

/// With no stop request a finite run ends on its own, not interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finite_run_ends_on_its_own() {
    let (source, _) = TinySource::new(Some(30));
    let (sink, received) = RecordingSink::new(Duration::ZERO, true);
    let stages = vec![spec("sources", "gen", false, source), spec("sinks", "acc", true, sink)];
    let (result, _, _) = run_with(stages, &[edge("gen", "acc", 2)], Duration::from_secs(5), &[]).await;
    let outcome = result.expect("run failed");
    assert!(!outcome.interrupted);
    assert_eq!(indices(&received), (0..30).collect::<Vec<_>>());
    assert!(outcome.summaries.contains_key("acc"));
}

/// An edge naming a stage that is not in the run is refused before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_to_unknown_stage_is_refused() {
    let (source, _) = TinySource::new(Some(3));
    let stages = vec![spec("sources", "gen", false, source)];
    let (result, _, _) = run_with(stages, &[edge("gen", "nowhere", 2)], Duration::from_secs(5), &[]).await;
    match result {
        Err(RunError::Start(message)) => assert!(message.contains("nowhere"), "{message}"),
        other => panic!("expected Start error, got {other:?}"),
    }
}

/// What a stage saw of its kernel threads while it ran.
type Seen = Arc<std::sync::Mutex<Option<(usize, String)>>>;

/// A sink that drains its input and records the rayon pool it ran in.
struct PoolProbe(Seen);

impl Stage for PoolProbe {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        while ctx.recv().is_some() {}
        let name = std::thread::current().name().unwrap_or_default().to_string();
        *self.0.lock().unwrap() = Some((rayon::current_num_threads(), name));
        Ok(None)
    }
}

/// `threads = N` on a component runs its stage, and so its kernels, on a pool of N threads of
/// its own; a stage without it runs on its own thread with the process-wide pool's kernels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_with_its_own_threads_runs_its_kernels_on_them() {
    let (source, _) = TinySource::new(Some(5));
    let (pinned, shared): (Seen, Seen) = Default::default();
    let mut own = spec("sinks", "pinned", false, PoolProbe(pinned.clone()));
    own.pool = Some(StagePool::new("sinks.pinned", 3).unwrap());
    let stages = vec![spec("sources", "gen", false, source), own, spec("sinks", "shared", false, PoolProbe(shared.clone()))];
    let (result, _, _) = run_with(stages, &[edge("gen", "pinned", 2), edge("gen", "shared", 2)], Duration::from_secs(5), &[]).await;
    result.expect("run failed");
    let (threads, name) = pinned.lock().unwrap().clone().expect("the pinned stage ran");
    assert_eq!(threads, 3);
    assert!(name.starts_with("stage-sinks.pinned-"), "ran on {name}");
    let (threads, name) = shared.lock().unwrap().clone().expect("the shared stage ran");
    assert_eq!(name, "stage-shared");
    assert_eq!(threads, rayon::current_num_threads(), "the process-wide pool");
}

// ---------------------------------------------------------------------------------------------
// Fan-out

/// One source, two sinks of different speeds and capacities: both receive every batch, in
/// order, and share the same batch (fan-out clones the `Arc`, never the pixels).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_delivers_every_batch_to_every_consumer() {
    let (source, sent) = TinySource::new(Some(40));
    let (fast, fast_received) = RecordingSink::new(Duration::ZERO, true);
    let (slow, slow_received) = RecordingSink::new(Duration::from_millis(2), true);
    let stages = vec![spec("sources", "gen", false, source), spec("sinks", "fast", true, fast), spec("sinks", "slow", true, slow)];
    let edges = [edge("gen", "fast", 2), edge("gen", "slow", 5)];
    let (result, _, _) = run_with(stages, &edges, Duration::from_secs(5), &[]).await;
    let outcome = result.expect("run failed");

    assert_eq!(sent.load(Ordering::SeqCst), 40);
    let expected: Vec<u32> = (0..40).collect();
    assert_eq!(indices(&fast_received), expected);
    assert_eq!(indices(&slow_received), expected);
    let fast = fast_received.lock().unwrap();
    let slow = slow_received.lock().unwrap();
    for (a, b) in fast.batches.iter().zip(slow.batches.iter()) {
        assert!(Arc::ptr_eq(a, b), "fan-out copied a batch instead of sharing it");
    }
    assert!(outcome.summaries.contains_key("fast") && outcome.summaries.contains_key("slow"));
    assert_eq!(outcome.stages.iter().find(|s| s.id == "gen").unwrap().images_out, 40);
}

// ---------------------------------------------------------------------------------------------
// Exactly once

const NUM_CLASSES: usize = 3;
const UNIT_LEN: usize = 4;

/// Predictions for whole units `(origin, class, index)`, `UNIT_LEN` images each: the oracle is
/// right on the first `index % UNIT_LEN + 1` images and says `class + 1` on the others.
fn predictions(units: &[(Origin, u32, u32)]) -> PredictionBatch {
    let mut labels = Vec::new();
    let mut predicted = Vec::new();
    let mut spans = Vec::new();
    for &(origin, class, index) in units {
        spans.push(UnitSpan {
            id: UnitId { origin, class, index },
            start: labels.len(),
            len: UNIT_LEN,
            first_position: (index as usize * UNIT_LEN) as u64,
        });
        for j in 0..UNIT_LEN {
            labels.push(class);
            let right = j <= index as usize % UNIT_LEN;
            predicted.push(if right { class } else { (class + 1) % NUM_CLASSES as u32 });
        }
    }
    PredictionBatch { labels, predicted, units: spans }
}

fn apply(acc: &mut ExactlyOnce<RcaState>, batch: &PredictionBatch) -> usize {
    acc.apply(batch, &batch.units)
}

#[test]
fn exactly_once_ignores_units_applied_before() {
    let first = predictions(&[(Origin::Real, 0, 0), (Origin::Real, 1, 0), (Origin::Generated, 2, 0)]);
    let mut acc = ExactlyOnce::new(RcaState::new(NUM_CLASSES));
    assert_eq!(apply(&mut acc, &first), 3 * UNIT_LEN);
    let after_first = acc.snapshot();
    assert_eq!(after_first.state.real.total(), 2 * UNIT_LEN as u64);
    assert_eq!(after_first.state.generated.total(), UNIT_LEN as u64);
    assert_eq!(acc.units_applied(), 3);
    assert_eq!(acc.duplicates_ignored(), 0);

    // The same batch again: nothing changes, every unit is counted as a duplicate.
    assert_eq!(apply(&mut acc, &first), 0);
    assert_eq!(acc.snapshot(), after_first);
    assert_eq!(acc.units_applied(), 3);
    assert_eq!(acc.duplicates_ignored(), 3);

    // A re-batched mix of an old and a new unit: only the new one is folded in, and the
    // result equals applying the new unit alone to the earlier state.
    let mixed = predictions(&[(Origin::Generated, 2, 0), (Origin::Generated, 2, 1)]);
    assert_eq!(apply(&mut acc, &mixed), UNIT_LEN);
    assert_eq!(acc.duplicates_ignored(), 4);
    let mut expected = ExactlyOnce::restore(after_first);
    apply(&mut expected, &predictions(&[(Origin::Generated, 2, 1)]));
    assert_eq!(acc.snapshot(), expected.snapshot());
    assert_eq!(acc.snapshot().state.generated.total(), 2 * UNIT_LEN as u64);
}

#[test]
fn exactly_once_snapshot_round_trips_and_continues_identically() {
    let before = predictions(&[(Origin::Real, 0, 0), (Origin::Real, 1, 1), (Origin::Generated, 0, 0), (Origin::Generated, 2, 3)]);
    let after = predictions(&[(Origin::Generated, 1, 0), (Origin::Real, 2, 2)]);

    let mut original = ExactlyOnce::new(RcaState::new(NUM_CLASSES));
    apply(&mut original, &before);

    let json = serde_json::to_string(&original.snapshot()).unwrap();
    let decoded: Snapshot<RcaState> = serde_json::from_str(&json).unwrap();
    assert_eq!(decoded, original.snapshot());
    let mut restored = ExactlyOnce::restore(decoded);
    assert_eq!(restored.units_applied(), original.units_applied());

    // Both go on identically: new units are applied, old ones are still known and skipped.
    for acc in [&mut original, &mut restored] {
        assert_eq!(apply(acc, &after), 2 * UNIT_LEN);
        assert_eq!(apply(acc, &before), 0);
    }
    assert_eq!(restored.snapshot(), original.snapshot());
    assert_eq!(restored.units_applied(), 6);
    let units: BTreeSet<UnitId> = restored.snapshot().applied;
    assert!(units.contains(&UnitId { origin: Origin::Generated, class: 2, index: 3 }));

    // The same through a checkpoint file (atomic write, stage-checked read).
    let dir = tempfile::tempdir().unwrap();
    checkpoint::write(dir.path(), "rca", &original.snapshot()).unwrap();
    let from_file: Snapshot<RcaState> = checkpoint::read(dir.path(), "rca").unwrap().unwrap();
    assert_eq!(from_file, original.snapshot());
    assert!(checkpoint::read::<RcaState>(dir.path(), "other").unwrap().is_none(), "no checkpoint: the stage starts fresh");
}

#[test]
fn exactly_once_rejects_a_corrupt_snapshot() {
    let mut acc = ExactlyOnce::new(RcaState::new(NUM_CLASSES));
    apply(&mut acc, &predictions(&[(Origin::Real, 0, 0)]));
    let mut value = serde_json::to_value(acc.snapshot()).unwrap();
    // A confusion matrix with the wrong number of counts is refused, not restored.
    value["state"]["real"]["counts"] = serde_json::json!([1, 2, 3]);
    assert!(serde_json::from_value::<Snapshot<RcaState>>(value).is_err());
}
