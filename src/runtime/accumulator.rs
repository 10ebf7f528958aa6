//! Exactly-once folding of work units into results (DESIGN.md §2).
//!
//! An [`Accumulator`] knows how to fold one unit's data into its state. [`ExactlyOnce`] wraps it
//! with the set of unit ids already applied, so a unit delivered twice (a redone unit after a
//! restart, a duplicate) changes nothing, and its snapshot holds state and set together: they
//! are checkpointed and restored as one.

use std::collections::BTreeSet;

use serde::{de::DeserializeOwned, Deserialize, Serialize};

use super::batch::{UnitId, UnitSpan};

/// The metric-specific half: fold the images `[span.start, span.start + span.len)` of `input`.
pub trait Accumulator {
    type Input: ?Sized;
    type State: Serialize + DeserializeOwned + Clone;

    fn apply_unit(&mut self, input: &Self::Input, span: &UnitSpan);
    fn snapshot(&self) -> Self::State;
    fn restore(state: Self::State) -> Self;
}

/// State plus the units it contains, the form a checkpoint takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
