//! Backpressure: with a deliberately slow sink, the number of image batches in flight never
//! exceeds the sum of the channel capacities plus one per stage.
//!
//! `live_batches` counts every `ImageBatch` alive in the process, so this file holds a single
//! test (one test binary, nothing else creating batches while it measures).
//!
//! Why the bound is `sum(capacities) + stages`: each channel holds at most its capacity; each
//! stage holds at most one batch outside the channels (the one it is working on, or the one it
//! is blocked sending). Payloads are `Arc`s, so fan-out and channel moves never create batches.

mod common;

use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use common::stages::{built, edge, settings, spec, RecordingSink};
use rcaflow::models::device::DeviceSpec;
use rcaflow::report::Summary;
use rcaflow::runtime::batch::{live_batches, reset_peak_live_batches};
use rcaflow::runtime::control::RunControl;
use rcaflow::runtime::{run, ShutdownRequest};
use rcaflow::stages::batcher::BatcherConfig;
use rcaflow::stages::image_folder::ImageFolderConfig;
use rcaflow::stages::{BuildContext, ComponentConfig};
use rcaflow::units::{Origin, UnitId};
use tokio::sync::mpsc;

const CLASSES: [&str; 2] = ["cat", "dog"];
const PER_CLASS: usize = 40;
/// image_folder -> batcher -> slow sink.
const STAGES: usize = 3;

fn write_folder(root: &Path) {
    for (c, class) in CLASSES.iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..PER_CLASS {
            let img = image::RgbImage::from_fn(4, 4, |x, y| image::Rgb([(x * 40) as u8, (y * 40) as u8, (c * 100 + i) as u8]));
            img.save(dir.join(format!("{i:03}.png"))).unwrap();
        }
    }
}

struct Measured {
    peak: usize,
    bound: usize,
    sink_capacity: usize,
}

/// image_folder (unit_size) -> batcher (batch_size) -> slow sink, with the given capacities.
async fn measure(root: &Path, run_dir: &Path, unit_size: usize, batch_size: usize, caps: (usize, usize)) -> Measured {
    // A sink that sleeps on every batch, recording the units and images it saw (and holding no
    // batch after its turn, so that it does not change how many are alive).
    let (sink, seen) = RecordingSink::counting(Duration::from_millis(5));
    // The two real stages come out of their components' build step, as in a run.
    let classes: Vec<String> = CLASSES.iter().map(|s| s.to_string()).collect();
    let source = ImageFolderConfig { path: root.to_path_buf(), origin: Origin::Real, strict: true, unit_size };
    let plan = source.plan(&classes).unwrap().unwrap();
    let cx = BuildContext {
        label: "backpressure".into(),
        classes: Arc::new(classes),
        device: DeviceSpec::Cpu,
        plans: Arc::new([("real".to_string(), plan)].into()),
        feature_memory_mib: 4096,
    };
    let stages = vec![
        built("sources", "real", false, source.build(&cx).unwrap()),
        built("transforms", "batcher", false, BatcherConfig { batch_size }.build(&cx).unwrap()),
        spec("sinks", "slow", true, sink),
    ];
    let edges = [edge("real", "batcher", caps.0), edge("batcher", "slow", caps.1)];
    let settings = settings(run_dir, &CLASSES, Duration::from_secs(5));
    let (_tx, rx) = mpsc::unbounded_channel::<ShutdownRequest>();
    assert_eq!(live_batches().0, 0, "batches left over from an earlier run");
    reset_peak_live_batches();
    let outcome = tokio::time::timeout(Duration::from_secs(20), run(stages, &edges, &settings, RunControl::new(), rx))
        .await
        .expect("run did not end within 20 s")
        .expect("run failed");
    let (live, peak) = live_batches();
    assert_eq!(live, 0, "batches still alive after the run ended");
    assert!(!outcome.interrupted);

    // Nothing lost: every image and every unit reached the sink, each once.
    let seen = seen.lock().unwrap();
    let units_per_class = PER_CLASS.div_ceil(unit_size);
    assert_eq!(seen.images, CLASSES.len() * PER_CLASS, "images lost or duplicated");
    assert_eq!(seen.units.len(), CLASSES.len() * units_per_class);
    for class in 0..CLASSES.len() as u32 {
        for index in 0..units_per_class as u32 {
            assert!(seen.units.contains(&UnitId { origin: Origin::Real, class, index }));
        }
    }
    match outcome.summaries.get("real") {
        Some(Summary::Source(s)) => assert_eq!(s.decoded, vec![PER_CLASS as u64; CLASSES.len()]),
        other => panic!("source summary missing: {other:?}"),
    }

    let bound = caps.0 + caps.1 + STAGES;
    eprintln!(
        "unit_size {unit_size}, batch_size {batch_size}, capacities {caps:?}: peak {peak} live batches, bound {bound}, \
         {} batches reached the sink",
        seen.batch_count
    );
    Measured { peak, bound, sink_capacity: caps.1 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sink_bounds_batches_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    write_folder(&root);
    let total_created = CLASSES.len() * PER_CLASS / 2 + CLASSES.len() * PER_CLASS / 4; // source + batcher batches

    // Small channels: 80 images -> 40 source batches -> 20 batches of 4, far more than the bound.
    let small = measure(&root, &dir.path().join("run-small"), 2, 4, (2, 3)).await;
    assert!(small.peak <= small.bound, "peak {} live batches exceeds the bound {}", small.peak, small.bound);
    assert!(small.bound < total_created / 4, "the test must create far more batches than the bound");
    // The bound binds: with a slow sink the channels fill up, so at least the slow edge's
    // capacity (plus the batch the sink holds) is alive at once. Unbounded channels would let
    // the fast source run ahead and hold nearly all 60 batches.
    assert!(small.peak > small.sink_capacity, "peak {} never reached the slow edge's capacity {}", small.peak, small.sink_capacity);

    // Larger channels: a larger peak, still within its own bound, and above the small bound.
    let large = measure(&root, &dir.path().join("run-large"), 2, 4, (8, 12)).await;
    assert!(large.peak <= large.bound, "peak {} live batches exceeds the bound {}", large.peak, large.bound);
    assert!(
        large.peak > small.bound,
        "larger capacities should let more batches be in flight (peak {} vs small bound {})",
        large.peak,
        small.bound
    );

    // Units that do not divide the batch size: the batcher flushes before taking a unit that
    // would overflow its batch, and must still hold at most one batch while it waits.
    let uneven = measure(&root, &dir.path().join("run-uneven"), 3, 4, (2, 3)).await;
    assert!(uneven.peak <= uneven.bound, "peak {} live batches exceeds the bound {}", uneven.peak, uneven.bound);
    assert!(uneven.peak > uneven.sink_capacity);
}
