//! `lpips_diversity` sink: mean LPIPS distance between pairs of generated images of the same
//! class (DESIGN.md §1; model in [`crate::models::lpips`], pair choice and means in
//! [`crate::metrics::diversity`]).
//!
//! Pairs are planned by position from the class sizes the source announced, so the stage keeps
//! only images that belong to a pair still waiting for its partner, whatever the run's size,
//! and compares the same pairs whatever order batches arrive in.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{BuildContext, ComponentConfig};
use crate::metrics::diversity::{plan_pairs, Diversity, DiversityState};
use crate::models::device::DeviceSpec;
use crate::models::hub_cache;
use crate::models::lpips::{Lpips, LpipsNet};
use crate::models::weights::WeightMap;
use crate::report::results::LpipsResult;
use crate::report::Summary;
use crate::runtime::accumulator::{Accumulator, ExactlyOnce};
use crate::runtime::batch::ImageBatch;
use crate::runtime::merge::{MergeError, MergeState, ShardFold};
use crate::runtime::sink::{SinkMaths, SinkStage};
use crate::runtime::stage::{Stage, StageContext, StageError};
use crate::telemetry;
use crate::topology::config::{from_str, resolve};
use crate::topology::{Checks, DataKind, GraphFacts, HashedInput, NamedClasses, Section};
use crate::units::{Origin, UnitPlan, UnitSpan};

/// Pairs are scored in chunks of this many, one LPIPS forward each.
const CHUNK: usize = 16;

fn default_pairs() -> usize {
    1000
}

/// `lpips_diversity` sink: mean LPIPS distance between pairs of generated images per class.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LpipsDiversityConfig {
    #[serde(deserialize_with = "from_str")]
    pub net: LpipsNet,
    /// torchvision alexnet/vgg16 state_dict; when absent, its standard name in the torch hub cache.
    pub backbone: Option<PathBuf>,
    /// lpips v0.1 lin weights (`alex.pth` / `vgg.pth`); when absent, looked up the same way.
    pub lin: Option<PathBuf>,
    /// Pairs per class: all distinct pairs when a class has no more, else the disjoint pairs
    /// (0,1), (2,3), ... of its deterministic order.
    #[serde(default = "default_pairs")]
    pub pairs: usize,
    /// Where it runs (`cpu`, `cuda`, `cuda:N`); default: `--device`, else `[runtime] device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceSpec>,
}

impl LpipsDiversityConfig {
    /// The two weight files, by key: each the one named, else its standard name in the torch
    /// hub cache.
    fn weight_files(&self) -> [(&'static str, Option<&Path>, &'static str, &'static str); 2] {
        [
            ("backbone", self.backbone.as_deref(), self.net.backbone_file(), "lpips backbone weights"),
            ("lin", self.lin.as_deref(), self.net.lin_file(), "lpips lin weights"),
        ]
    }

    fn locate(explicit: Option<&Path>, file: &str, what: &str, key: &str) -> Result<PathBuf, String> {
        hub_cache::locate(explicit, file, what, &format!("`{key} = FILE`")).map_err(|e| e.to_string())
    }
}

impl ComponentConfig for LpipsDiversityConfig {
    const SECTION: Section = Section::Sinks;
    const ACCEPTS: Option<DataKind> = Some(DataKind::Images);
    const PRODUCES: Option<DataKind> = Some(DataKind::Summaries);
    const RESTARTABLE: bool = false;
    const ACCUMULATES: bool = true;
    const HOLDS_UNITS: bool = true;

    fn source_origin(&self) -> Option<Origin> {
        None
    }

    fn resolve_paths(&mut self, base: &Path) {
        self.backbone.iter_mut().chain(self.lin.iter_mut()).for_each(|p| *p = resolve(base, p));
    }

    fn check(&self, checks: &mut Checks) {
        if self.pairs == 0 {
            checks.error("pairs must be at least 1 per class, found 0");
        }
        for (key, path, file, what) in self.weight_files() {
            match path {
                Some(p) if !p.is_file() => checks.error(format!("{key} file \"{}\" does not exist", p.display())),
                Some(_) => {}
                None => {
                    if let Err(e) = Self::locate(None, file, what, key) {
                        checks.error(e);
                    }
                }
            }
        }
    }

    fn class_names(&self, _checks: &mut Checks) -> Option<NamedClasses> {
        None
    }

    fn check_in_graph(&self, _facts: &GraphFacts, _checks: &mut Checks) {}

    fn describe(&self) -> String {
        let device = self.device.map_or(String::new(), |d| format!(" device={d}"));
        format!("net={} pairs={}{device}", self.net, self.pairs)
    }

    fn plan(&self, _classes: &[String]) -> Result<Option<UnitPlan>, String> {
        Ok(None)
    }

    fn hashed_inputs(&self, _classes: &[String]) -> Result<Vec<HashedInput>, String> {
        self.weight_files()
            .into_iter()
            .map(|(key, path, file, what)| Ok(HashedInput::File { what: key.into(), path: Self::locate(path, file, what, key)? }))
            .collect()
    }

    /// Merge: the pairs and held images of every shard.
    fn fold_shards(&self, id: &str, fold: &ShardFold) -> Result<usize, MergeError> {
        fold.fold::<LpipsState>(id)
    }

    /// Loads the network; pairs are planned from the generated source's class sizes.
    fn build(&self, cx: &BuildContext) -> Result<Box<dyn Stage>, String> {
        let [(_, backbone, file, what), (_, lin, lin_file, lin_what)] = self.weight_files();
        let backbone = Self::locate(backbone, file, what, "backbone")?;
        let lin = Self::locate(lin, lin_file, lin_what, "lin")?;
        let device = cx.open_device(self.device)?;
        let load = |path: &Path| WeightMap::load(path, &device).map_err(|e| e.to_string());
        let lpips = Lpips::load(self.net, &load(&backbone)?, &load(&lin)?).map_err(|e| e.to_string())?;
        let planned = cx.plan_of(Origin::Generated).map(|p| p.per_class.clone()).unwrap_or_else(|| vec![0; cx.classes.len()]);
        Ok(Box::new(SinkStage(LpipsMaths { net: self.net, pairs: self.pairs, planned, lpips })))
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

/// The tracking state: plans, held images, results (the units applied are kept beside it by
/// [`ExactlyOnce`]).
pub struct Tracker {
    plans: Vec<Option<ClassPlan>>,
    held: HashMap<(usize, u64), Vec<u8>>,
    size: Option<(usize, usize)>,
    ready: Vec<(usize, u64, u64)>,
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
            scored: Vec::new(),
            state: DiversityState::new(classes),
        }
    }

    /// Builds the pair plans from the generated source's class sizes; with a restored state,
    /// replays the scored pairs and queues those whose images are both held.
    fn plan(&mut self, planned: &[u64], pairs: usize) {
        self.plans = planned.iter().map(|&count| Some(ClassPlan::new(plan_pairs(count, pairs)))).collect();
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

impl Accumulator for Tracker {
    type Input = ImageBatch;
    type State = LpipsState;

    /// Keeps the images of the unit that belong to a pair; queues pairs whose both images are
    /// here. Real units add nothing (they are held, so a restart need not send them again).
    fn apply_unit(&mut self, batch: &ImageBatch, span: &UnitSpan) {
        if span.id.origin != Origin::Generated {
            return;
        }
        let class = span.id.class as usize;
        // `LpipsMaths::check_batch` made sure the class has a plan and the size is this one.
        let Some(plan) = self.plans.get(class).and_then(Option::as_ref) else { return };
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

    fn snapshot(&self) -> LpipsState {
        let mut held: Vec<_> = self.held.iter().map(|(&(c, p), px)| (c, p, px.clone())).collect();
        held.sort_by_key(|&(c, p, _)| (c, p));
        LpipsState { held, size: self.size, scored: self.scored.clone(), diversity: self.state.clone() }
    }

    /// The plans are not part of the state: [`Tracker::plan`] rebuilds them.
    fn restore(s: LpipsState) -> Self {
        Tracker {
            plans: Vec::new(),
            held: s.held.into_iter().map(|(c, p, px)| ((c, p), px)).collect(),
            size: s.size,
            ready: Vec::new(),
            scored: s.scored,
            state: s.diversity,
        }
    }
}

/// Both sides' scored pairs and distance sums, and their held images: a pair whose images came
/// from two shards is held on both sides and scored when the merged state is drained.
impl MergeState for LpipsState {
    fn merge(&mut self, other: LpipsState) -> Result<(), String> {
        if let (Some(a), Some(b)) = (self.size, other.size) {
            if a != b {
                return Err(format!("images of {}x{} here, {}x{} there", a.1, a.0, b.1, b.0));
            }
        }
        if other.diversity.sum.len() != self.diversity.sum.len() {
            return Err(format!("{} classes here, {} there", self.diversity.sum.len(), other.diversity.sum.len()));
        }
        self.size = self.size.or(other.size);
        self.held.extend(other.held);
        self.held.sort_by_key(|&(c, p, _)| (c, p));
        self.held.dedup_by_key(|&mut (c, p, _)| (c, p));
        self.scored.extend(other.scored);
        for (c, (s, n)) in other.diversity.sum.iter().zip(&other.diversity.count).enumerate() {
            self.diversity.sum[c] += s;
            self.diversity.count[c] += n;
        }
        Ok(())
    }
}

/// The lpips_diversity sink's maths: the network and the pair plan's inputs.
pub struct LpipsMaths {
    net: LpipsNet,
    pairs: usize,
    /// Generated images per class (the generated source's plan).
    planned: Vec<u64>,
    lpips: Lpips,
}

impl SinkMaths for LpipsMaths {
    type Acc = Tracker;
    type Input = ImageBatch;

    fn fresh(&mut self, _ctx: &StageContext) -> Result<Tracker, StageError> {
        Ok(Tracker::new(self.planned.len()))
    }

    fn start(&mut self, acc: &mut ExactlyOnce<Tracker>, ctx: &StageContext) -> Result<(), StageError> {
        acc.inner_mut().plan(&self.planned, self.pairs);
        tracing::info!(stage = %ctx.id, net = %self.net, "lpips running");
        Ok(())
    }

    fn check_batch(&self, acc: &ExactlyOnce<Tracker>, batch: &ImageBatch) -> Result<(), StageError> {
        let t = acc.inner();
        for span in batch.units.iter().filter(|s| s.id.origin == Origin::Generated) {
            let class = span.id.class as usize;
            if t.plans.get(class).and_then(Option::as_ref).is_none() {
                return Err(StageError::Failed(format!("image of class {class} has no pair plan")));
            }
            if t.size.is_some_and(|s| s != (batch.height, batch.width)) {
                return Err(StageError::Failed("generated images of different sizes cannot be compared".into()));
            }
        }
        Ok(())
    }

    fn after_batch(&mut self, acc: &mut ExactlyOnce<Tracker>, ctx: &StageContext) -> Result<(), StageError> {
        ctx.timed(|| acc.inner_mut().score(&self.lpips, false))?;
        publish_live(&acc.inner().state.finish(), &ctx.classes);
        Ok(())
    }

    fn drain(&mut self, acc: &mut ExactlyOnce<Tracker>, ctx: &StageContext) -> Result<(), StageError> {
        ctx.timed(|| acc.inner_mut().score(&self.lpips, true))
    }

    fn finish(&mut self, acc: &ExactlyOnce<Tracker>, ctx: &StageContext) -> Result<Summary, StageError> {
        // The pairs scored at the end count too: the last live value equals the report's.
        let diversity = acc.inner().state.finish();
        publish_live(&diversity, &ctx.classes);
        Ok(Summary::Lpips(LpipsResult { net: self.net, diversity, pairs_requested: self.pairs }))
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
    use crate::units::UnitId;

    /// Unit `index` of class 0: 2 images (positions 2*index, 2*index+1) of 1x1 pixels.
    fn unit(index: u32) -> ImageBatch {
        let span =
            UnitSpan { id: UnitId { origin: Origin::Generated, class: 0, index }, start: 0, len: 2, first_position: index as u64 * 2 };
        ImageBatch::new(1, 1, vec![index as u8; 6], vec![0, 0], vec![span])
    }

    fn tracker(images: u64, pairs: usize) -> ExactlyOnce<Tracker> {
        let mut t = ExactlyOnce::new(Tracker::new(1));
        t.inner_mut().plan(&[images], pairs);
        t
    }

    /// Delivers one unit batch, as the sink driver does.
    fn take(t: &mut ExactlyOnce<Tracker>, batch: &ImageBatch) {
        t.apply(batch, &batch.units);
    }

    #[test]
    fn a_unit_delivered_twice_queues_its_pairs_once() {
        // 4 images, all 6 pairs: unit 1 completes 5 of them (1 was complete within unit 0).
        let mut t = tracker(4, 100);
        take(&mut t, &unit(0));
        assert_eq!(t.inner().ready, vec![(0, 0, 1)]);
        take(&mut t, &unit(0));
        assert_eq!(t.inner().ready.len(), 1);
        take(&mut t, &unit(1));
        take(&mut t, &unit(1));
        let mut ready = t.inner().ready.clone();
        ready.sort();
        assert_eq!(ready, vec![(0, 0, 1), (0, 0, 2), (0, 0, 3), (0, 1, 2), (0, 1, 3), (0, 2, 3)]);
    }

    #[test]
    fn only_images_of_a_planned_pair_are_held_and_released_when_scored() {
        // 8 images, 2 pairs asked (< 28 distinct): the disjoint pairs (0,1), (2,3).
        let mut t = tracker(8, 2);
        for u in 0..4 {
            take(&mut t, &unit(u));
        }
        let t = t.inner_mut();
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
        let score_all = |t: &mut ExactlyOnce<Tracker>| {
            let t = t.inner_mut();
            for (c, i, j) in std::mem::take(&mut t.ready) {
                t.finish_pair(c, i, j, (i + j) as f64);
            }
        };
        let mut straight = tracker(6, 100);
        for u in 0..3 {
            take(&mut straight, &unit(u));
            score_all(&mut straight);
        }
        let mut first = tracker(6, 100);
        take(&mut first, &unit(0));
        score_all(&mut first);
        take(&mut first, &unit(1)); // its pairs are ready but not scored when the checkpoint is taken
        let json = serde_json::to_string(&first.snapshot()).unwrap();
        // Through the checkpoint's serialised form, as a restart would; the plan is rebuilt.
        let mut resumed = ExactlyOnce::<Tracker>::restore(serde_json::from_str(&json).unwrap());
        resumed.inner_mut().plan(&[6], 100);
        take(&mut resumed, &unit(1)); // redone: ignored
        score_all(&mut resumed);
        take(&mut resumed, &unit(2));
        score_all(&mut resumed);
        let (resumed, straight) = (resumed.inner(), straight.inner());
        assert_eq!(resumed.state.count, straight.state.count);
        assert_eq!(resumed.state.sum, straight.state.sum);
        assert!(resumed.held.is_empty() && straight.held.is_empty());
    }
}
