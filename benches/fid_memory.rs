//! Memory of the `fid` sink's state over a long run: 20,000 images' pool3 features (2048-d,
//! batches of 50, as the inception stage sends them) folded exactly once into the float64
//! moments, with the live FID recomputed along the way, while the process's resident memory is
//! sampled from /proc. The state is O(d^2) (two 2048x2048 sums), so resident memory must stay
//! flat once the first batch has allocated it; growth with the number of images would be a leak
//! or an O(n) buffer.
//!
//! Run: `cargo bench --bench fid_memory` (Linux; prints a table and fails on growth).
//!
//! The features are pseudo-random, not Inception outputs: running InceptionV3 on 20,000 images
//! takes hours on a CPU and says nothing more about the sink's memory.

use rcaflow::metrics::fid::{frechet_distance, GaussianStats};
use rcaflow::runtime::accumulator::ExactlyOnce;
use rcaflow::runtime::batch::FeatureBatch;
use rcaflow::stages::fid::FidState;
use rcaflow::units::{Origin, UnitId, UnitSpan};

const DIM: usize = 2048;
const IMAGES: u32 = 20_000;
const BATCH: u32 = 50;
/// Allowed growth of resident memory after the first live FID (MiB): allocator noise only.
const SLACK_MIB: f64 = 16.0;

fn resident_mib() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm (this benchmark needs Linux)");
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("resident pages in statm");
    pages * 4096.0 / (1024.0 * 1024.0)
}

/// xorshift features in [0, 1): deterministic, cheap, and full rank.
fn batch(origin: Origin, first: u32, state: &mut u64) -> FeatureBatch {
    let mut features = Vec::with_capacity(BATCH as usize * DIM);
    for _ in 0..BATCH as usize * DIM {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        features.push((*state >> 40) as f32 / (1u64 << 24) as f32);
    }
    let class = first / 2_000;
    let units =
        vec![UnitSpan { id: UnitId { origin, class, index: first / BATCH }, start: 0, len: BATCH as usize, first_position: first as u64 }];
    FeatureBatch { labels: vec![class; BATCH as usize], units, feature_dim: DIM, features, logit_dim: 0, logits: Vec::new() }
}

fn main() {
    let start = std::time::Instant::now();
    let mut acc = ExactlyOnce::new(FidState {
        real: GaussianStats::new(DIM),
        generated: GaussianStats::new(DIM),
        nonfinite: 0,
        per_class: Vec::new(),
    });
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut baseline = None;
    println!("{:>8} {:>12} {:>14} {:>10}", "images", "rss (MiB)", "live FID", "secs");
    for first in (0..IMAGES).step_by(BATCH as usize) {
        for origin in [Origin::Real, Origin::Generated] {
            let b = batch(origin, first, &mut rng);
            acc.apply(&b, &b.units);
        }
        let done = first + BATCH;
        if done.is_multiple_of(2_500) {
            let s = acc.inner();
            let (r, g) = (&s.real, &s.generated);
            let fid = frechet_distance(&r.mean(), &r.covariance().unwrap(), &g.mean(), &g.covariance().unwrap()).unwrap().fid;
            let rss = resident_mib();
            baseline.get_or_insert(rss);
            println!("{done:>8} {rss:>12.1} {fid:>14.6} {:>10.1}", start.elapsed().as_secs_f64());
        }
    }
    let (first, last) = (baseline.unwrap(), resident_mib());
    println!("resident memory after the first live FID: {first:.1} MiB; after {IMAGES} images per origin: {last:.1} MiB");
    assert!(last - first <= SLACK_MIB, "resident memory grew by {:.1} MiB over {IMAGES} images (allowed {SLACK_MIB} MiB)", last - first);
}
