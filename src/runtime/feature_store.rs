//! The features themselves, per origin, for the sinks whose maths needs every feature rather
//! than sums (kid, precision_recall): float32, one block per applied unit, checkpointed whole
//! with the applied set so a resumed run computes from exactly the features an uninterrupted
//! one holds.
//!
//! Memory: 4 bytes per dimension per image, 8 KB for a 2048-d pool3 feature: a run of the
//! paper's size (10 classes x 5,000 generated images, and as many real) holds 400 MB per side,
//! and its checkpoint is as large. Blocks are shared (`Arc`), so a checkpoint snapshot copies no
//! features.
//!
//! Order: blocks arrive in whatever order units finish; [`FeatureStore::features`] hands them
//! out sorted by (class, position of the unit's first image), so the same images always give
//! the same matrix (what makes KID's seeded subsets reproducible across resumes and replicas).

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::accumulator::Accumulator;
use super::batch::FeatureBatch;
use crate::units::{Origin, UnitSpan};

/// The finite feature rows of one unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitFeatures {
    pub origin: Origin,
    pub class: u32,
    pub first_position: u64,
    /// Row-major `rows x dim`.
    pub features: Vec<f32>,
}

/// A shared block: cloning it (a snapshot) copies a pointer, not the features.
#[derive(Clone, Debug, PartialEq)]
pub struct Shared(pub Arc<UnitFeatures>);

impl Serialize for Shared {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Shared {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        UnitFeatures::deserialize(d).map(|u| Shared(Arc::new(u)))
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureStoreError {
    #[error("a stored unit has {values} values, not a multiple of the feature width {dim}")]
    Corrupt { values: usize, dim: usize },
}

/// Every applied unit's finite features, and how many non-finite rows were left out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FeatureStoreRepr")]
pub struct FeatureStore {
    pub dim: usize,
    pub units: Vec<Shared>,
    pub nonfinite: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureStoreRepr {
    dim: usize,
    units: Vec<Shared>,
    nonfinite: u64,
}

impl TryFrom<FeatureStoreRepr> for FeatureStore {
    type Error = FeatureStoreError;
    fn try_from(r: FeatureStoreRepr) -> Result<Self, Self::Error> {
        if let Some(bad) = r.units.iter().find(|u| r.dim == 0 || u.0.features.len() % r.dim != 0) {
            return Err(FeatureStoreError::Corrupt { values: bad.0.features.len(), dim: r.dim });
        }
        Ok(FeatureStore { dim: r.dim, units: r.units, nonfinite: r.nonfinite })
    }
}

impl FeatureStore {
    pub fn new(dim: usize) -> Self {
        FeatureStore { dim, units: Vec::new(), nonfinite: 0 }
    }

    /// Images held of `origin` (of `class` when given).
    pub fn count(&self, origin: Origin, class: Option<u32>) -> usize {
        self.blocks(origin, class).map(|u| u.features.len() / self.dim).sum()
    }

    fn blocks(&self, origin: Origin, class: Option<u32>) -> impl Iterator<Item = &UnitFeatures> {
        self.units.iter().map(|u| &*u.0).filter(move |u| u.origin == origin && class.is_none_or(|c| u.class == c))
    }

    /// The features of `origin` (of `class` when given), row-major, in (class, position) order.
    pub fn features(&self, origin: Origin, class: Option<u32>) -> Vec<f32> {
        let mut blocks: Vec<&UnitFeatures> = self.blocks(origin, class).collect();
        blocks.sort_by_key(|u| (u.class, u.first_position));
        blocks.iter().flat_map(|u| u.features.iter().copied()).collect()
    }

    /// Bytes of features held.
    pub fn bytes(&self) -> usize {
        self.units.iter().map(|u| u.0.features.len() * 4).sum()
    }
}

impl Accumulator for FeatureStore {
    type Input = FeatureBatch;
    type State = FeatureStore;

    fn apply_unit(&mut self, input: &FeatureBatch, span: &UnitSpan) {
        let d = input.feature_dim;
        let rows = &input.features[span.start * d..(span.start + span.len) * d];
        // Finite rows only: one bad image must not poison the distances or drop its unit.
        let features: Vec<f32> = rows.chunks(d).filter(|r| r.iter().all(|v| v.is_finite())).flatten().copied().collect();
        self.nonfinite += (span.len - features.len() / d) as u64;
        self.units.push(Shared(Arc::new(UnitFeatures {
            origin: span.id.origin,
            class: span.id.class,
            first_position: span.first_position,
            features,
        })));
    }

    fn snapshot(&self) -> FeatureStore {
        self.clone()
    }

    fn restore(state: FeatureStore) -> Self {
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::accumulator::{ExactlyOnce, Snapshot};
    use crate::units::UnitId;

    /// Two 2-d rows per unit; values name (origin, class, unit index, row).
    fn batch(origin: Origin, units: &[(u32, u32)]) -> FeatureBatch {
        let mut features = Vec::new();
        let mut spans = Vec::new();
        for (n, &(class, index)) in units.iter().enumerate() {
            for row in 0..2 {
                let v = origin as u8 as f32 * 1000.0 + class as f32 * 100.0 + index as f32 * 10.0 + row as f32;
                features.extend_from_slice(&[v, -v]);
            }
            spans.push(UnitSpan { id: UnitId { origin, class, index }, start: n * 2, len: 2, first_position: index as u64 * 2 });
        }
        FeatureBatch { labels: vec![0; units.len() * 2], units: spans, feature_dim: 2, features, logit_dim: 0, logits: Vec::new() }
    }

    #[test]
    fn features_come_out_in_class_and_position_order_whatever_the_arrival_order() {
        let mut a = ExactlyOnce::new(FeatureStore::new(2));
        let mut b = ExactlyOnce::new(FeatureStore::new(2));
        let (x, y) = (batch(Origin::Generated, &[(1, 0), (0, 1)]), batch(Origin::Generated, &[(0, 0), (1, 1)]));
        a.apply(&x, &x.units);
        a.apply(&y, &y.units);
        b.apply(&y, &y.units);
        b.apply(&x, &x.units);
        let base = Origin::Generated as u8 as f32 * 1000.0;
        let want: Vec<f32> =
            [0.0, 1.0, 10.0, 11.0, 100.0, 101.0, 110.0, 111.0].iter().map(|v| v + base).flat_map(|v: f32| [v, -v]).collect();
        assert_eq!(a.inner().features(Origin::Generated, None), want);
        assert_eq!(b.inner().features(Origin::Generated, None), want);
        assert_eq!(a.inner().features(Origin::Generated, Some(1)), want[8..]);
        assert_eq!(a.inner().count(Origin::Real, None), 0);
    }

    #[test]
    fn snapshot_round_trips_and_duplicates_and_nonfinite_rows_are_left_out() {
        let mut acc = ExactlyOnce::new(FeatureStore::new(2));
        let mut x = batch(Origin::Real, &[(0, 0), (2, 3)]);
        x.features[1] = f32::NAN;
        acc.apply(&x, &x.units);
        assert_eq!(acc.apply(&x, &x.units), 0);
        assert_eq!((acc.inner().count(Origin::Real, None), acc.inner().nonfinite), (3, 1));
        let bytes = postcard::to_stdvec(&acc.snapshot()).unwrap();
        let back: Snapshot<FeatureStore> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, acc.snapshot());
        // A corrupt block (values not a multiple of the width) is refused on restore.
        let mut bad = acc.snapshot();
        bad.state.dim = 3;
        let bytes = postcard::to_stdvec(&bad).unwrap();
        assert!(postcard::from_bytes::<Snapshot<FeatureStore>>(&bytes).is_err());
    }
}
