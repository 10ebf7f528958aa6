//! The early-stop gate (`rca` sink option `stop_when`): which generated units a run uses when it
//! stops sampling once its per-class figures are tight enough.
//!
//! The decision must not depend on timing, or a killed-and-resumed run would stop elsewhere
//! than an uninterrupted one. So it is taken on a fixed order of the generated units (the
//! sampler's plan with classes interleaved: unit 0 of every class, then unit 1 of every class,
//! ...): one sink, the *decider*, folds the units in that order and after each one asks its rule
//! whether it holds on the counts so far. The first unit where it holds is the last one used;
//! every later one is outside the run. Every other stage that folds generated units holds each
//! one back ([`Holdback`]) until the gate knows whether it is inside, so all sinks fold exactly
//! the same units, however far ahead of the decider they ran; the source stops taking units
//! once they are outside ([`EarlyStopGate::outside`]), which is the control message that ends
//! sampling (the rest drains as usual).
//!
//! Nothing about the gate is checkpointed: the decider's restored state is a prefix of the
//! order (it folds nothing out of order), and the rule evaluated on that prefix says whether the
//! stop had fired at its last unit (it was evaluated, and failed, on every shorter prefix).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::sync::lock;
use crate::units::{cut_into_units, UnitId, UnitPlan, UnitSpan};

/// Whether a generated unit is part of the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Inside,
    Outside,
    /// The decider has not got this far yet.
    Undecided,
}

#[derive(Debug, Default)]
struct GateState {
    /// Units at ranks below this are inside.
    decided: usize,
    /// The rank of the unit at which the rule first held: it is the last one inside.
    stopped_at: Option<usize>,
    /// The decider has ended: what it did not decide is outside.
    closed: bool,
}

/// Shared by every stage of a run whose `rca` sink has `stop_when`.
#[derive(Debug)]
pub struct EarlyStopGate {
    decider: String,
    order: Vec<UnitId>,
    ranks: HashMap<UnitId, usize>,
    state: Mutex<GateState>,
    changed: Condvar,
}

/// The generated units of `plan` in the order the early stop decides on: classes interleaved
/// (unit `i` of every class before unit `i + 1` of any), so every class gains images as the run
/// goes and the stop can come before the last class has begun.
pub fn interleaved(plan: &UnitPlan) -> Vec<UnitId> {
    let mut slots: Vec<_> = cut_into_units(&plan.per_class, plan.unit_size).collect();
    slots.sort_by_key(|s| (s.index, s.class));
    slots.into_iter().map(|s| s.id(plan.origin)).collect()
}

impl EarlyStopGate {
    /// A gate over `order` (from [`interleaved`]) decided by the sink with component id
    /// `decider`.
    pub fn new(decider: &str, order: Vec<UnitId>) -> Self {
        let ranks = order.iter().enumerate().map(|(rank, &id)| (id, rank)).collect();
        EarlyStopGate { decider: decider.to_string(), order, ranks, state: Mutex::new(GateState::default()), changed: Condvar::new() }
    }

    pub fn decider(&self) -> &str {
        &self.decider
    }

    /// The unit's place in the deciding order (`None`: not a generated unit of this run).
    pub fn rank(&self, id: &UnitId) -> Option<usize> {
        self.ranks.get(id).copied()
    }

    pub fn order(&self) -> &[UnitId] {
        &self.order
    }

    pub fn verdict(&self, rank: usize) -> Verdict {
        let s = lock(&self.state);
        match s.stopped_at {
            Some(last) if rank <= last => Verdict::Inside,
            Some(_) => Verdict::Outside,
            None if rank < s.decided => Verdict::Inside,
            None if s.closed => Verdict::Outside,
            None => Verdict::Undecided,
        }
    }

    /// Whether the source should leave this unit unsampled.
    pub fn outside(&self, id: &UnitId) -> bool {
        self.rank(id).is_some_and(|rank| self.verdict(rank) == Verdict::Outside)
    }

    /// The rank the decider must fold next, `None` once the stop fired or the decider ended.
    pub fn next_to_decide(&self) -> Option<usize> {
        let s = lock(&self.state);
        (s.stopped_at.is_none() && !s.closed && s.decided < self.order.len()).then_some(s.decided)
    }

    /// The decider folded the unit of `rank` (the one [`Self::next_to_decide`] named); `holds`
    /// says whether the rule holds on the counts with it.
    pub fn decide(&self, rank: usize, holds: bool) {
        let mut s = lock(&self.state);
        debug_assert_eq!(rank, s.decided, "the decider folds in order");
        s.decided = rank + 1;
        if holds {
            s.stopped_at = Some(rank);
        }
        self.changed.notify_all();
    }

    /// The decider restored a state holding the first `prefix` units of the order; `holds`: the
    /// rule holds on it (so the stop fired at its last unit).
    pub fn resume(&self, prefix: usize, holds: bool) {
        let mut s = lock(&self.state);
        s.decided = prefix;
        if holds && prefix > 0 {
            s.stopped_at = Some(prefix - 1);
        }
        self.changed.notify_all();
    }

    /// The decider ended (its input closed, or it failed): nothing more is decided.
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }

    /// The last unit used, once the stop has fired.
    pub fn stopped_at(&self) -> Option<UnitId> {
        lock(&self.state).stopped_at.map(|rank| self.order[rank])
    }

    /// Waits (at most `timeout`) for the gate to change.
    pub fn wait(&self, timeout: Duration) {
        let s = lock(&self.state);
        let _ = self.changed.wait_timeout(s, timeout);
    }
}

/// Closes the gate when the decider's run ends, however it ends (error or panic included), so
/// nobody waits for a decision that will not come.
pub struct CloseOnDrop<'a>(pub &'a EarlyStopGate);

impl Drop for CloseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Generated units a stage received but may not fold before the gate has decided on them, by
/// rank, each with what the stage needs to fold it later (the payload it came in).
#[derive(Debug)]
pub struct Holdback<T> {
    parked: BTreeMap<usize, (UnitSpan, T)>,
}

impl<T> Default for Holdback<T> {
    fn default() -> Self {
        Holdback { parked: BTreeMap::new() }
    }
}

impl<T> Holdback<T> {
    pub fn park(&mut self, rank: usize, span: UnitSpan, item: T) {
        self.parked.insert(rank, (span, item));
    }

    pub fn is_empty(&self) -> bool {
        self.parked.is_empty()
    }

    /// The parked unit of lowest rank.
    pub fn first_rank(&self) -> Option<usize> {
        self.parked.keys().next().copied()
    }

    /// Takes the parked unit of lowest rank.
    pub fn pop_first(&mut self) -> Option<(usize, UnitSpan, T)> {
        self.parked.pop_first().map(|(rank, (span, item))| (rank, span, item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Origin;

    fn plan() -> UnitPlan {
        UnitPlan { origin: Origin::Generated, per_class: vec![5, 3, 5], unit_size: 2 }
    }

    #[test]
    fn the_order_interleaves_classes_unit_by_unit() {
        let order: Vec<(u32, u32)> = interleaved(&plan()).iter().map(|u| (u.class, u.index)).collect();
        assert_eq!(order, vec![(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1), (0, 2), (2, 2)]);
    }

    #[test]
    fn units_up_to_the_one_where_the_rule_held_are_inside_and_the_rest_outside() {
        let gate = EarlyStopGate::new("rca", interleaved(&plan()));
        assert_eq!(gate.verdict(0), Verdict::Undecided);
        assert_eq!(gate.next_to_decide(), Some(0));
        gate.decide(0, false);
        gate.decide(1, false);
        assert_eq!((gate.verdict(1), gate.verdict(2)), (Verdict::Inside, Verdict::Undecided));
        gate.decide(2, true);
        assert_eq!(gate.next_to_decide(), None);
        assert_eq!((gate.verdict(2), gate.verdict(3)), (Verdict::Inside, Verdict::Outside));
        assert_eq!(gate.stopped_at(), Some(UnitId { origin: Origin::Generated, class: 2, index: 0 }));
        assert!(gate.outside(&UnitId { origin: Origin::Generated, class: 0, index: 1 }));
        assert!(!gate.outside(&UnitId { origin: Origin::Generated, class: 1, index: 0 }));
    }

    #[test]
    fn a_resumed_decider_restores_the_stop_from_its_prefix() {
        let gate = EarlyStopGate::new("rca", interleaved(&plan()));
        gate.resume(4, false);
        assert_eq!((gate.verdict(3), gate.verdict(4), gate.next_to_decide()), (Verdict::Inside, Verdict::Undecided, Some(4)));
        let fired = EarlyStopGate::new("rca", interleaved(&plan()));
        fired.resume(4, true);
        assert_eq!((fired.verdict(3), fired.verdict(4)), (Verdict::Inside, Verdict::Outside));
    }

    #[test]
    fn a_closed_gate_leaves_what_was_not_decided_outside() {
        let gate = EarlyStopGate::new("rca", interleaved(&plan()));
        gate.decide(0, false);
        gate.close();
        assert_eq!((gate.verdict(0), gate.verdict(1)), (Verdict::Inside, Verdict::Outside));
        assert_eq!(gate.stopped_at(), None);
    }
}
