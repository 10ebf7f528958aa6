//! Folding the checkpoints of a sharded run's shards into one run directory (DESIGN.md §2
//! "Beyond one machine"; `rcaflow merge`). Each shard is an ordinary run that holds some units;
//! its checkpoints are its mergeable partial result: a stage's state and the unit ids in it,
//! exact and serialised. [`ShardFold::fold`] reads one stage's checkpoint in every shard,
//! refuses a unit held by two shards, folds the states in shard order ([`MergeState`]) and
//! writes the result as that stage's checkpoint in the merged directory, where a run that skips
//! every unit ends exactly as the single-machine run does (the same finish and report code).
//!
//! The folds are the accumulators' own algebra: confusion counts and FID moments add, the
//! Inception Score's split sums add, LPIPS keeps both sides' scored pairs and held images (the
//! pairs split across shards are scored by the merged run), feature stores (kid,
//! precision_recall) concatenate, sorted in unit order. Only the order of floating-point
//! summation differs from one machine's run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use super::accumulator::Snapshot;
use super::checkpoint::{self, CheckpointError};
use super::feature_store::FeatureStore;
use crate::units::UnitId;

/// A state that folds in the state of a disjoint set of units.
pub trait MergeState: Sized {
    /// Folds `other` into `self`: the result equals one state holding both sets of units, up
    /// to the order of floating-point sums.
    fn merge(&mut self, other: Self) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("stage {stage}: unit {unit} is held by two shards, \"{first}\" and \"{second}\"; each unit must come from one shard")]
    Duplicate { stage: String, unit: UnitId, first: PathBuf, second: PathBuf },
    #[error("stage {stage}: the state in shard \"{dir}\" does not fold into the others: {message}")]
    Fold { stage: String, dir: PathBuf, message: String },
}

/// The shard directories being merged (in shard order) and the directory the merge writes.
pub struct ShardFold<'a> {
    pub shards: &'a [PathBuf],
    pub out: &'a Path,
}

impl ShardFold<'_> {
    /// Folds `stage`'s checkpoints of every shard into one in the merged directory. A shard with
    /// no checkpoint of it yet (still starting) adds nothing; no shard with one, no file.
    /// Returns the units the merged state holds.
    pub fn fold<S: MergeState + Serialize + DeserializeOwned>(&self, stage: &str) -> Result<usize, MergeError> {
        let mut merged: Option<Snapshot<S>> = None;
        let mut owner: BTreeMap<UnitId, &Path> = BTreeMap::new();
        for dir in self.shards {
            let Some(part) = checkpoint::read::<S>(dir, stage)? else { continue };
            for id in &part.applied {
                if let Some(first) = owner.insert(*id, dir) {
                    return Err(MergeError::Duplicate { stage: stage.into(), unit: *id, first: first.into(), second: dir.clone() });
                }
            }
            match &mut merged {
                None => merged = Some(part),
                Some(m) => {
                    m.state.merge(part.state).map_err(|message| MergeError::Fold { stage: stage.into(), dir: dir.clone(), message })?;
                    m.applied.extend(part.applied);
                }
            }
        }
        match merged {
            Some(m) => {
                checkpoint::write(self.out, stage, &m)?;
                Ok(m.applied.len())
            }
            None => Ok(0),
        }
    }
}

/// A stage whose checkpoint is the applied set alone (save_images).
impl MergeState for () {
    fn merge(&mut self, _other: ()) -> Result<(), String> {
        Ok(())
    }
}

/// Blocks concatenate, sorted by unit (origin, class, first position): the order
/// [`FeatureStore::features`] hands them out in anyway, so the merged store is the one a
/// single run would hold.
impl MergeState for FeatureStore {
    fn merge(&mut self, other: FeatureStore) -> Result<(), String> {
        if other.dim != self.dim && !other.units.is_empty() && !self.units.is_empty() {
            return Err(format!("features are {}-dimensional here, {} there", self.dim, other.dim));
        }
        // A spilled block names a place in its own shard's spill file, which the merged run
        // does not have: refused rather than folded into features that cannot be read.
        if let Some(u) = other.units.iter().chain(&self.units).find(|u| u.0.spilled_at.is_some()) {
            return Err(format!(
                "the features of unit {}/{} (from position {}) were spilled to a shard's state/*.features file, which merge cannot fold yet; run the shards with [runtime] feature_memory_mib large enough to keep them in memory",
                u.0.origin, u.0.class, u.0.first_position
            ));
        }
        if self.units.is_empty() {
            self.dim = other.dim;
        }
        self.units.extend(other.units);
        self.units.sort_by_key(|u| (u.0.origin, u.0.class, u.0.first_position));
        self.nonfinite += other.nonfinite;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::accumulator::{Accumulator, ExactlyOnce};
    use crate::runtime::batch::FeatureBatch;
    use crate::units::{Origin, UnitSpan};

    /// Unit `index` of class 0, generated: two 2-d rows whose values depend on it.
    fn unit(index: u32) -> FeatureBatch {
        let span =
            UnitSpan { id: UnitId { origin: Origin::Generated, class: 0, index }, start: 0, len: 2, first_position: 2 * index as u64 };
        let x = index as f32;
        FeatureBatch {
            labels: vec![0, 0],
            units: vec![span],
            feature_dim: 2,
            features: vec![x, x + 0.5, -x, 1.0],
            logit_dim: 0,
            logits: Vec::new(),
        }
    }

    fn store(units: &[u32]) -> ExactlyOnce<FeatureStore> {
        let mut s = ExactlyOnce::new(FeatureStore::new(2));
        for &u in units {
            let b = unit(u);
            s.apply(&b, &b.units);
        }
        s
    }

    #[test]
    fn shards_fold_into_the_single_runs_state_and_a_unit_in_two_shards_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..3).map(|k| tmp.path().join(format!("s{k}"))).collect();
        // Shard 2 has not checkpointed yet: it adds nothing.
        checkpoint::write(&dirs[0], "kid", &store(&[3, 0]).snapshot()).unwrap();
        checkpoint::write(&dirs[1], "kid", &store(&[1, 2]).snapshot()).unwrap();
        let out = tmp.path().join("merged");
        let fold = ShardFold { shards: &dirs, out: &out };
        assert_eq!(fold.fold::<FeatureStore>("kid").unwrap(), 4);
        let merged: Snapshot<FeatureStore> = checkpoint::read(&out, "kid").unwrap().unwrap();
        let single = store(&[0, 1, 2, 3]).snapshot();
        assert_eq!(merged.applied, single.applied);
        assert_eq!(merged.state.features(Origin::Generated, None), single.state.features(Origin::Generated, None));
        assert_eq!(merged.state, {
            let mut s = single.state.clone();
            s.units.sort_by_key(|u| u.0.first_position);
            s
        });
        // The same unit in two shards.
        checkpoint::write(&dirs[2], "kid", &store(&[2]).snapshot()).unwrap();
        let e = fold.fold::<FeatureStore>("kid").unwrap_err().to_string();
        assert!(e.contains("unit generated/0/2 is held by two shards") && e.contains("s1") && e.contains("s2"), "{e}");
        assert!(FeatureStore::restore(FeatureStore::new(2)).units.is_empty());
    }

    /// A shard's spilled block names its own spill file: merge says so rather than folding a
    /// block the merged run could not read.
    #[test]
    fn a_spilled_block_is_refused_naming_the_unit_and_the_setting() {
        let mut merged = store(&[0]).snapshot().state;
        let mut spilled = store(&[1]).snapshot().state;
        let block = &spilled.units[0].0;
        let moved = super::super::feature_store::UnitFeatures { features: Vec::new(), spilled_at: Some(0), ..(**block).clone() };
        spilled.units[0] = super::super::feature_store::Shared(std::sync::Arc::new(moved));
        let e = merged.merge(spilled).unwrap_err();
        assert!(e.contains("unit generated/0 (from position 2) were spilled") && e.contains("feature_memory_mib"), "{e}");
    }
}
