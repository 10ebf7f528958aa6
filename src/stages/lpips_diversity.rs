//! `lpips_diversity` sink: mean LPIPS distance between pairs of generated images of the same
//! class (DESIGN.md §1; model in [`crate::models::lpips`], pair choice and means in
//! [`crate::metrics::diversity`]).
//!
//! Pairs are planned by position from the class sizes the source announced, so the stage keeps
//! only images that belong to a pair still waiting for its partner, whatever the run's size,
//! and compares the same pairs whatever order batches arrive in.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::metrics::diversity::{plan_pairs, Diversity, DiversityState};
use crate::models::hub_cache;
use crate::models::lpips::{Lpips, LpipsNet};
use crate::models::weights::WeightMap;
use crate::runtime::accumulator::Snapshot;
use crate::runtime::batch::{ImageBatch, Origin, Payload, Summary, UnitId};
use crate::runtime::checkpoint::CheckpointTimer;
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::telemetry;
use crate::topology::config::LpipsDiversityConfig;

/// Pairs are scored in chunks of this many, one LPIPS forward each.
const CHUNK: usize = 16;

/// What the report shows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LpipsResult {
    pub net: LpipsNet,
    #[serde(flatten)]
    pub diversity: Diversity,
    /// Pairs asked for per class (fewer are used where a class has fewer distinct pairs).
    pub pairs_requested: usize,
}

pub struct LpipsDiversityStage {
    cfg: LpipsDiversityConfig,
}

impl LpipsDiversityStage {
    pub fn new(cfg: LpipsDiversityConfig) -> Self {
        LpipsDiversityStage { cfg }
    }
}

/// Where a class's pairs stand.
struct ClassPlan {
    pairs: Vec<(u64, u64)>,
    /// Pair indices each position belongs to.
    by_position: HashMap<u64, Vec<usize>>,
    /// Pairs of a position not scored yet; the image is dropped when it reaches 0.
    open: HashMap<u64, usize>,
}

impl ClassPlan {
    fn new(pairs: Vec<(u64, u64)>) -> Self {
        let mut by_position: HashMap<u64, Vec<usize>> = HashMap::new();
        for (k, &(i, j)) in pairs.iter().enumerate() {
            by_position.entry(i).or_default().push(k);
            by_position.entry(j).or_default().push(k);
        }
        let open = by_position.iter().map(|(p, ks)| (*p, ks.len())).collect();
        ClassPlan { pairs, by_position, open }
    }
}

/// The tracking state: plans, held images, results.
struct Tracker {
    plans: Vec<Option<ClassPlan>>,
    held: HashMap<(usize, u64), Vec<u8>>,
    size: Option<(usize, usize)>,
    ready: Vec<(usize, u64, u64)>,
    applied: BTreeSet<UnitId>,
    /// Pairs scored so far, (class, i, j): with `held`, what a checkpoint needs to rebuild the
    /// plans' progress.
    scored: Vec<(usize, u64, u64)>,
    state: DiversityState,
}

/// The checkpointed form of a [`Tracker`] (its applied units go in the snapshot beside it).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LpipsState {
    held: Vec<(usize, u64, Vec<u8>)>,
    size: Option<(usize, usize)>,
    scored: Vec<(usize, u64, u64)>,
    diversity: DiversityState,
}

impl Tracker {
    fn new(classes: usize) -> Self {
        Tracker {
            plans: (0..classes).map(|_| None).collect(),
            held: HashMap::new(),
            size: None,
            ready: Vec::new(),
            applied: BTreeSet::new(),
            scored: Vec::new(),
            state: DiversityState::new(classes),
        }
    }

    fn snapshot(&self) -> Snapshot<LpipsState> {
        let mut held: Vec<_> = self.held.iter().map(|(&(c, p), px)| (c, p, px.clone())).collect();
        held.sort_by_key(|&(c, p, _)| (c, p));
        let state = LpipsState { held, size: self.size, scored: self.scored.clone(), diversity: self.state.clone() };
        Snapshot { state, applied: self.applied.clone() }
    }

    fn restore(&mut self, snapshot: Snapshot<LpipsState>) {
        let s = snapshot.state;
        self.held = s.held.into_iter().map(|(c, p, px)| ((c, p), px)).collect();
        self.size = s.size;
        self.scored = s.scored;
        self.state = s.diversity;
        self.applied = snapshot.applied;
    }

    /// Builds the pair plans from the class sizes the generated source announced; with a
    /// restored state, replays the scored pairs and queues those whose images are both held.
    fn plan(&mut self, planned: &[u64], pairs: usize) {
        for (c, &count) in planned.iter().enumerate().take(self.plans.len()) {
            self.plans[c] = Some(ClassPlan::new(plan_pairs(count, pairs)));
        }
        let scored: BTreeSet<(usize, u64, u64)> = self.scored.iter().copied().collect();
        for &(c, i, j) in &scored {
            self.release(c, i);
            self.release(c, j);
        }
        for (c, plan) in self.plans.iter().enumerate() {
            let Some(plan) = plan else { continue };
            for &(i, j) in &plan.pairs {
                if !scored.contains(&(c, i, j)) && self.held.contains_key(&(c, i)) && self.held.contains_key(&(c, j)) {
                    self.ready.push((c, i, j));
                }
            }
        }
    }

    /// Records the distance of a scored pair and frees images with no pair left.
    fn finish_pair(&mut self, class: usize, i: u64, j: u64, distance: f64) {
        self.state.add(class, distance);
        self.scored.push((class, i, j));
        self.release(class, i);
        self.release(class, j);
    }

    /// Keeps the images of `batch` that belong to a pair; queues pairs whose both images are here.
    fn take(&mut self, batch: &ImageBatch) -> Result<(), StageError> {
        for span in &batch.units {
            // Real units are held too (they add nothing), so a restart need not send them again.
            if !self.applied.insert(span.id) || span.id.origin != Origin::Generated {
                continue;
            }
            let class = span.id.class as usize;
            let Some(plan) = self.plans.get(class).and_then(Option::as_ref) else {
                return Err(StageError::Failed(format!("image of class {class} has no pair plan")));
            };
            if self.size.is_some_and(|s| s != (batch.height, batch.width)) {
                return Err(StageError::Failed("generated images of different sizes cannot be compared".into()));
            }
            self.size = Some((batch.height, batch.width));
            for i in span.start..span.start + span.len {
                let pos = span.position_of(i);
                let Some(pairs) = plan.by_position.get(&pos) else { continue };
                self.held.insert((class, pos), batch.image(i).to_vec());
                for &k in pairs {
                    let (a, b) = plan.pairs[k];
                    let partner = if a == pos { b } else { a };
                    if self.held.contains_key(&(class, partner)) {
                        self.ready.push((class, a, b));
                    }
                }
            }
        }
        Ok(())
    }

    /// Scores queued pairs (all of them when `all`, else whole chunks only).
    fn score(&mut self, lpips: &Lpips, all: bool) -> Result<(), StageError> {
        let Some((h, w)) = self.size else { return Ok(()) };
        while self.ready.len() >= CHUNK || (all && !self.ready.is_empty()) {
            let chunk: Vec<_> = self.ready.drain(..self.ready.len().min(CHUNK)).collect();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for &(c, i, j) in &chunk {
                a.extend_from_slice(&self.held[&(c, i)]);
                b.extend_from_slice(&self.held[&(c, j)]);
            }
            let d = lpips
                .distance_u8(&a, &b, chunk.len(), h, w)
                .map_err(|e| StageError::Failed(format!("lpips forward on {} pairs of {w}x{h}: {e}", chunk.len())))?;
            for (&(c, i, j), dist) in chunk.iter().zip(d) {
                self.finish_pair(c, i, j, dist as f64);
            }
        }
        Ok(())
    }

    /// One pair of `pos` is done; drops the image when it has no pair left.
    fn release(&mut self, class: usize, pos: u64) {
        if let Some(plan) = self.plans[class].as_mut() {
            if let Some(left) = plan.open.get_mut(&pos) {
                *left -= 1;
                if *left == 0 {
                    self.held.remove(&(class, pos));
                }
            }
        }
    }
}

fn locate(explicit: &Option<PathBuf>, file: &str, what: &str, key: &str) -> Result<PathBuf, StageError> {
    hub_cache::locate(explicit.as_deref(), file, what, &format!("`{key} = FILE`")).map_err(StageError::failed)
}

impl Stage for LpipsDiversityStage {
    fn run(self: Box<Self>, ctx: &mut StageContext) -> Result<Option<Summary>, StageError> {
        let cfg = self.cfg;
        let backbone = locate(&cfg.backbone, cfg.net.backbone_file(), "lpips backbone weights", "backbone")?;
        let lin = locate(&cfg.lin, cfg.net.lin_file(), "lpips lin weights", "lin")?;
        let lpips = Lpips::load(
            cfg.net,
            &WeightMap::load(&backbone, &ctx.device).map_err(StageError::failed)?,
            &WeightMap::load(&lin, &ctx.device).map_err(StageError::failed)?,
        )
        .map_err(StageError::failed)?;
        tracing::info!(stage = %ctx.id, net = %cfg.net, "lpips loaded");

        let mut t = Tracker::new(ctx.classes.len());
        if let Some(snapshot) = ctx.restore::<LpipsState>()? {
            t.restore(snapshot);
        }
        let mut checkpoints = CheckpointTimer::new(ctx.checkpoint_interval);
        while let Some(payload) = ctx.recv() {
            let Payload::Images(batch) = payload else {
                return Err(StageError::Failed("received a non-image payload; the topology check should have refused this edge".into()));
            };
            // The source announced its class sizes before sending anything.
            if t.plans.iter().all(Option::is_none) {
                if let Some(planned) = ctx.control.planned_per_class(Origin::Generated) {
                    t.plan(&planned, cfg.pairs);
                }
            }
            ctx.timed(|| -> Result<(), StageError> {
                t.take(&batch)?;
                t.score(&lpips, false)
            })?;
            ctx.fault("applied")?;
            publish_live(&t.state.finish(), &ctx.classes);
            if checkpoints.due() {
                ctx.checkpoint(&t.snapshot())?;
            }
        }
        ctx.checkpoint(&t.snapshot())?;
        if ctx.control.aborted() {
            return Ok(None);
        }
        ctx.timed(|| t.score(&lpips, true))?;
        ctx.checkpoint(&t.snapshot())?;
        // The pairs scored at the end count too: the last live value equals the report's.
        publish_live(&t.state.finish(), &ctx.classes);
        let result = LpipsResult { net: cfg.net, diversity: t.state.finish(), pairs_requested: cfg.pairs };
        let summary = Summary::Lpips(result);
        ctx.send(Payload::Summary(std::sync::Arc::new(summary.clone())))?;
        Ok(Some(summary))
    }
}

/// Live gauges: mean LPIPS per class (NaN while a class has no scored pair, so a panel shows a
/// gap rather than a misleading 0).
fn publish_live(diversity: &Diversity, classes: &[String]) {
    for (class, value) in classes.iter().zip(&diversity.per_class) {
        metrics::gauge!(telemetry::LPIPS_DIVERSITY, "class" => class.clone()).set(value.unwrap_or(f64::NAN));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::batch::UnitSpan;

    /// Unit `index` of class 0: 2 images (positions 2*index, 2*index+1) of 1x1 pixels.
    fn unit(index: u32) -> ImageBatch {
        let span =
            UnitSpan { id: UnitId { origin: Origin::Generated, class: 0, index }, start: 0, len: 2, first_position: index as u64 * 2 };
        ImageBatch::new(1, 1, vec![index as u8; 6], vec![0, 0], vec![span])
    }

    fn tracker(images: u64, pairs: usize) -> Tracker {
        let mut t = Tracker::new(1);
        t.plan(&[images], pairs);
        t
    }

    #[test]
    fn a_unit_delivered_twice_queues_its_pairs_once() {
        // 4 images, all 6 pairs: unit 1 completes 5 of them (1 was complete within unit 0).
        let mut t = tracker(4, 100);
        t.take(&unit(0)).unwrap();
        assert_eq!(t.ready, vec![(0, 0, 1)]);
        t.take(&unit(0)).unwrap();
        assert_eq!(t.ready.len(), 1);
        t.take(&unit(1)).unwrap();
        t.take(&unit(1)).unwrap();
        let mut ready = t.ready.clone();
        ready.sort();
        assert_eq!(ready, vec![(0, 0, 1), (0, 0, 2), (0, 0, 3), (0, 1, 2), (0, 1, 3), (0, 2, 3)]);
    }

    #[test]
    fn only_images_of_a_planned_pair_are_held_and_released_when_scored() {
        // 8 images, 2 pairs asked (< 28 distinct): the disjoint pairs (0,1), (2,3).
        let mut t = tracker(8, 2);
        for u in 0..4 {
            t.take(&unit(u)).unwrap();
        }
        let mut held: Vec<_> = t.held.keys().copied().collect();
        held.sort();
        assert_eq!(held, vec![(0, 0), (0, 1), (0, 2), (0, 3)]);
        for (c, i, j) in std::mem::take(&mut t.ready) {
            t.finish_pair(c, i, j, 0.5);
        }
        assert!(t.held.is_empty(), "scored pairs free their images");
    }

    #[test]
    fn a_restored_tracker_goes_on_as_the_uninterrupted_one() {
        // 6 images, all 15 pairs; pairs scored as they become ready, distance = i + j.
        let score_all = |t: &mut Tracker| {
            for (c, i, j) in std::mem::take(&mut t.ready) {
                t.finish_pair(c, i, j, (i + j) as f64);
            }
        };
        let mut straight = tracker(6, 100);
        for u in 0..3 {
            straight.take(&unit(u)).unwrap();
            score_all(&mut straight);
        }
        let mut first = tracker(6, 100);
        first.take(&unit(0)).unwrap();
        score_all(&mut first);
        first.take(&unit(1)).unwrap(); // its pairs are ready but not scored when the checkpoint is taken
        let json = serde_json::to_string(&first.snapshot()).unwrap();
        let mut resumed = Tracker::new(1);
        resumed.restore(serde_json::from_str(&json).unwrap());
        resumed.plan(&[6], 100);
        resumed.take(&unit(1)).unwrap(); // redone: ignored
        score_all(&mut resumed);
        resumed.take(&unit(2)).unwrap();
        score_all(&mut resumed);
        assert_eq!(resumed.state.count, straight.state.count);
        assert_eq!(resumed.state.sum, straight.state.sum);
        assert!(resumed.held.is_empty() && straight.held.is_empty());
    }
}
