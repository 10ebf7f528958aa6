//! Exactly-once folding of work units into results (DESIGN.md §2).
//!
//! An [`Accumulator`] knows how to fold one unit's data into its state. [`ExactlyOnce`] wraps it
//! with the set of unit ids already applied, so a unit delivered twice (a redone unit after a
//! restart, a duplicate) changes nothing, and its snapshot holds state and set together: they
//! are checkpointed and restored as one.

use std::collections::BTreeSet;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::units::{UnitId, UnitSpan};

/// The metric-specific half: fold the images `[span.start, span.start + span.len)` of `input`.
pub trait Accumulator {
    type Input: ?Sized;
    type State: Serialize + DeserializeOwned + Clone;

    fn apply_unit(&mut self, input: &Self::Input, span: &UnitSpan);
    fn snapshot(&self) -> Self::State;
    fn restore(state: Self::State) -> Self;
}

/// State plus the units it contains, the form a checkpoint takes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot<S> {
    pub state: S,
    pub applied: BTreeSet<UnitId>,
}

/// An accumulator that applies each unit id at most once.
#[derive(Debug)]
pub struct ExactlyOnce<A> {
    inner: A,
    applied: BTreeSet<UnitId>,
    duplicates: u64,
}

impl<A: Accumulator> ExactlyOnce<A> {
    pub fn new(inner: A) -> Self {
        ExactlyOnce { inner, applied: BTreeSet::new(), duplicates: 0 }
    }

    /// Applies every unit of `spans` not applied before; returns the images folded in.
    pub fn apply(&mut self, input: &A::Input, spans: &[UnitSpan]) -> usize {
        let mut images = 0;
        for span in spans {
            if self.applied.insert(span.id) {
                self.inner.apply_unit(input, span);
                images += span.len;
            } else {
                self.duplicates += 1;
            }
        }
        images
    }

    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// The state, for work that does not apply units (scoring what they made ready).
    pub fn inner_mut(&mut self) -> &mut A {
        &mut self.inner
    }

    /// Whether the unit `id` is folded in.
    pub fn holds(&self, id: &UnitId) -> bool {
        self.applied.contains(id)
    }

    pub fn units_applied(&self) -> usize {
        self.applied.len()
    }

    /// Units delivered again after they had been applied (and ignored).
    pub fn duplicates_ignored(&self) -> u64 {
        self.duplicates
    }

    pub fn snapshot(&self) -> Snapshot<A::State> {
        Snapshot { state: self.inner.snapshot(), applied: self.applied.clone() }
    }

    pub fn restore(snapshot: Snapshot<A::State>) -> Self {
        ExactlyOnce { inner: A::restore(snapshot.state), applied: snapshot.applied, duplicates: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::Origin;
    use proptest::prelude::*;

    /// Folds each unit's value into a sum and counts the images: applying a unit twice, or
    /// losing one, changes the result.
    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Sum {
        total: u64,
        images: u64,
    }

    impl Accumulator for Sum {
        type Input = [u64];
        type State = Sum;

        fn apply_unit(&mut self, input: &[u64], span: &UnitSpan) {
            for v in &input[span.start..span.start + span.len] {
                self.total += v;
            }
            self.images += span.len as u64;
        }

        fn snapshot(&self) -> Sum {
            self.clone()
        }

        fn restore(state: Sum) -> Self {
            state
        }
    }

    const UNITS: u32 = 12;

    /// Unit `k`: `k % 3 + 1` images whose values depend on k.
    fn unit(k: u32) -> (Vec<u64>, UnitSpan) {
        let len = (k % 3 + 1) as usize;
        let values = (0..len as u64).map(|i| 1 + u64::from(k) * 1000 + i * 7).collect();
        (values, UnitSpan { id: UnitId { origin: Origin::Generated, class: k % 2, index: k / 2 }, start: 0, len, first_position: 0 })
    }

    #[derive(Clone, Debug)]
    enum Op {
        Deliver(u32),
        Checkpoint,
        CrashAndRestore,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![6 => (0..UNITS).prop_map(Op::Deliver), 2 => Just(Op::Checkpoint), 1 => Just(Op::CrashAndRestore)]
    }

    proptest! {
        /// Any interleaving of deliveries (duplicates included), checkpoints and crashes that
        /// restore the last checkpoint, followed by the resume (the units the accumulator does
        /// not hold are delivered again), ends in the state of applying each unit once.
        #[test]
        fn any_interleaving_ends_as_applying_each_unit_once(ops in proptest::collection::vec(op(), 0..60)) {
            let mut straight = ExactlyOnce::new(Sum::default());
            for k in 0..UNITS {
                let (values, span) = unit(k);
                straight.apply(&values[..], &[span]);
            }

            let mut acc = ExactlyOnce::new(Sum::default());
            let mut disk: Option<String> = None;
            for op in ops {
                match op {
                    Op::Deliver(k) => {
                        let (values, span) = unit(k);
                        acc.apply(&values[..], &[span]);
                    }
                    Op::Checkpoint => disk = Some(serde_json::to_string(&acc.snapshot()).unwrap()),
                    Op::CrashAndRestore => {
                        acc = match &disk {
                            Some(json) => ExactlyOnce::restore(serde_json::from_str(json).unwrap()),
                            None => ExactlyOnce::new(Sum::default()),
                        };
                    }
                }
            }
            // The resume: every unit not held is delivered again (in any order), and a
            // duplicate of a held one changes nothing.
            for k in (0..UNITS).rev() {
                let (values, span) = unit(k);
                acc.apply(&values[..], &[span]);
                acc.apply(&values[..], &[span]);
            }
            prop_assert_eq!(acc.snapshot(), straight.snapshot());
        }
    }
}
