//! The work plan of a sampling run (DESIGN.md §2): `per_class` images of each class, cut into
//! units of at most `unit_size` images, each with a seed derived from (run seed, class, index)
//! alone. A unit therefore produces the same images whichever sampler replica runs it, on
//! whatever device, in whatever order, before or after a restart.
//!
//! [`WorkQueue`] hands units to sampler replicas (each unit once) and takes them back as done,
//! keeping the per-class counts that progress and ETA are computed from.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::sync::lock;
use crate::units::{cut_into_units, unit_seed, Shard, UnitId, WorkUnit};

/// Every unit of a run, class-major.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub run_seed: u64,
    pub per_class: Vec<u64>,
    pub unit_size: usize,
    pub units: Vec<WorkUnit>,
}

impl Plan {
    /// `unit_size` must be at least 1 (validation refuses 0).
    pub fn new(run_seed: u64, per_class: &[u64], unit_size: usize) -> Self {
        let units = cut_into_units(per_class, unit_size)
            .map(|slot| WorkUnit {
                class: slot.class,
                index: slot.index,
                first_position: slot.first_position,
                size: slot.len as usize,
                seed: unit_seed(run_seed, slot.class, slot.index),
            })
            .collect();
        Plan { run_seed, per_class: per_class.to_vec(), unit_size: unit_size.max(1), units }
    }

    /// The part of the plan that `shard` runs: its units (seeds, positions unchanged) and, per
    /// class, the images they hold.
    pub fn shard(mut self, shard: Shard) -> Plan {
        self.units.retain(|u| shard.holds(u.id()));
        self.per_class = self.units.iter().fold(vec![0; self.per_class.len()], |mut n, u| {
            n[u.class as usize] += u.size as u64;
            n
        });
        self
    }

    pub fn total_images(&self) -> u64 {
        self.per_class.iter().sum()
    }
}

/// Progress of the plan, as the queue last saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct Progress {
    pub done_per_class: Vec<u64>,
    pub planned_per_class: Vec<u64>,
    /// Seconds to finish at the rate units have been completing since the queue started;
    /// `None` until a unit is done.
    pub eta: Option<Duration>,
}

/// Hands out the units of a plan to any number of sampler replicas.
#[derive(Debug)]
pub struct WorkQueue {
    plan: Plan,
    /// Units not to run (already held by every accumulator, on resume).
    skip: BTreeSet<UnitId>,
    /// The units to run, in plan order (the plan less the skipped ones).
    runnable: Vec<WorkUnit>,
    next: AtomicUsize,
    done: Mutex<Vec<u64>>,
    started: Instant,
}

impl WorkQueue {
    pub fn new(plan: Plan, skip: BTreeSet<UnitId>) -> Self {
        let done = plan.units.iter().filter(|u| skip.contains(&u.id())).fold(vec![0u64; plan.per_class.len()], |mut d, u| {
            d[u.class as usize] += u.size as u64;
            d
        });
        let runnable = plan.units.iter().filter(|u| !skip.contains(&u.id())).copied().collect();
        WorkQueue { plan, skip, runnable, next: AtomicUsize::new(0), done: Mutex::new(done), started: Instant::now() }
    }

    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The next unit nobody has taken, in plan order, with its rank among the units to run
    /// (0, 1, 2, ...: the order results are sent downstream in); `None` when all are taken.
    pub fn take(&self) -> Option<(usize, WorkUnit)> {
        let rank = self.next.fetch_add(1, Ordering::Relaxed);
        self.runnable.get(rank).map(|&unit| (rank, unit))
    }

    /// How many units this queue hands out in all.
    pub fn runnable(&self) -> usize {
        self.runnable.len()
    }

    /// Records a finished unit and returns the progress so far.
    pub fn finish(&self, unit: &WorkUnit) -> Progress {
        let mut done = lock(&self.done);
        done[unit.class as usize] += unit.size as u64;
        self.progress_of(&done)
    }

    pub fn progress(&self) -> Progress {
        let done = lock(&self.done);
        self.progress_of(&done)
    }

    fn progress_of(&self, done: &[u64]) -> Progress {
        let skipped: u64 = self.plan.units.iter().filter(|u| self.skip.contains(&u.id())).map(|u| u.size as u64).sum();
        let finished: u64 = done.iter().sum::<u64>() - skipped;
        let left = self.plan.total_images() - done.iter().sum::<u64>();
        let eta = (finished > 0).then(|| self.started.elapsed().mul_f64(left as f64 / finished as f64));
        Progress { done_per_class: done.to_vec(), planned_per_class: self.plan.per_class.clone(), eta }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_cover_each_class_in_order_with_a_short_last_unit() {
        let plan = Plan::new(7, &[5, 0, 4], 2);
        let shape: Vec<_> = plan.units.iter().map(|u| (u.class, u.index, u.first_position, u.size)).collect();
        assert_eq!(shape, vec![(0, 0, 0, 2), (0, 1, 2, 2), (0, 2, 4, 1), (2, 0, 0, 2), (2, 1, 2, 2)]);
        assert_eq!(plan.total_images(), 9);
    }

    #[test]
    fn seeds_depend_on_run_seed_class_and_index_only() {
        let a = Plan::new(7, &[10, 10], 5);
        let b = Plan::new(7, &[10, 10, 3], 5);
        assert_eq!(a.units[..4], b.units[..4], "more classes change no existing unit");
        assert_eq!(a.units[1].seed, unit_seed(7, 0, 1));
        let seeds: BTreeSet<u64> = a.units.iter().map(|u| u.seed).collect();
        assert_eq!(seeds.len(), 4, "distinct seeds per unit");
        assert_ne!(Plan::new(8, &[10, 10], 5).units[0].seed, a.units[0].seed);
        // Swapping class and index gives a different seed (no symmetric mixing).
        assert_ne!(unit_seed(7, 1, 2), unit_seed(7, 2, 1));
    }

    #[test]
    fn a_shard_keeps_its_units_with_their_seeds_and_counts_its_images() {
        let whole = Plan::new(7, &[5, 4], 2);
        let parts: Vec<Plan> = (0..2).map(|k| whole.clone().shard(Shard::new(k, 2).unwrap())).collect();
        assert_eq!(parts[0].units.iter().map(|u| (u.class, u.index)).collect::<Vec<_>>(), vec![(0, 0), (0, 2), (1, 1)]);
        assert_eq!(parts[0].per_class, vec![3, 2]);
        assert_eq!(parts[1].per_class, vec![2, 2]);
        let mut joined: Vec<WorkUnit> = parts.iter().flat_map(|p| p.units.clone()).collect();
        joined.sort_by_key(|u| (u.class, u.index));
        assert_eq!(joined, whole.units, "the shards' units are the plan's, seeds included");
    }

    #[test]
    fn replicas_share_the_queue_and_each_unit_runs_once() {
        let plan = Plan::new(1, &[40, 37], 3);
        let total_units = plan.units.len();
        let queue = std::sync::Arc::new(WorkQueue::new(plan, BTreeSet::new()));
        let taken: Vec<WorkUnit> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    let q = queue.clone();
                    s.spawn(move || {
                        let mut mine = Vec::new();
                        while let Some((_, u)) = q.take() {
                            q.finish(&u);
                            mine.push(u);
                        }
                        mine
                    })
                })
                .collect();
            workers.into_iter().flat_map(|w| w.join().unwrap()).collect()
        });
        assert_eq!(taken.len(), total_units);
        assert_eq!(taken.iter().map(|u| u.id()).collect::<BTreeSet<_>>().len(), total_units);
        let p = queue.progress();
        assert_eq!(p.done_per_class, vec![40, 37]);
        assert_eq!(p.eta, Some(Duration::ZERO));
    }

    #[test]
    fn skipped_units_are_not_handed_out_and_count_as_done() {
        let plan = Plan::new(1, &[6], 2);
        let skip: BTreeSet<UnitId> = [plan.units[1].id()].into();
        let queue = WorkQueue::new(plan, skip);
        assert_eq!(queue.progress().done_per_class, vec![2]);
        assert_eq!(queue.progress().eta, None);
        let order: Vec<(usize, u32)> = std::iter::from_fn(|| queue.take()).map(|(rank, u)| (rank, u.index)).collect();
        assert_eq!(order, vec![(0, 0), (1, 2)], "ranks count the units to run only");
        assert_eq!(queue.runnable(), 2);
    }
}
