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
//! precision_recall) concatenate, sorted in unit order, their spilled blocks copied into the
//! merged directory's spill file. Only the order of floating-point summation differs from one
//! machine's run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

use super::accumulator::Snapshot;
use super::checkpoint::{self, CheckpointError};
use super::feature_store::{spill_path, FeatureStore, Shared, UnitFeatures};
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
    /// Feature blocks the merged feature stores keep in memory before they spill into `out`
    /// (the merge's own `[runtime] feature_memory_mib`).
    pub feature_memory_bytes: u64,
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

impl ShardFold<'_> {
    /// [`ShardFold::fold`] for a feature store (kid, precision_recall), whose blocks may lie in
    /// a shard's spill file (`[runtime] feature_memory_mib`): each block is re-homed, in memory
    /// while the merged state holds at most `feature_memory_bytes` there, else appended to the
    /// merged directory's own spill file, one block at a time, so the merge's memory stays
    /// bounded however many features the shards hold. The shards' files are only read.
    pub fn fold_features(&self, stage: &str) -> Result<usize, MergeError> {
        let fold_err = |dir: &Path, message: String| MergeError::Fold { stage: stage.into(), dir: dir.to_path_buf(), message };
        let out_path = spill_path(self.out, stage);
        let mut merged: Option<Snapshot<FeatureStore>> = None;
        let mut owner: BTreeMap<UnitId, &Path> = BTreeMap::new();
        let mut writer: Option<std::fs::File> = None;
        let (mut written, mut in_memory) = (0u64, 0u64);
        for dir in self.shards {
            let Some(mut part) = checkpoint::read::<FeatureStore>(dir, stage)? else { continue };
            for id in &part.applied {
                if let Some(first) = owner.insert(*id, dir) {
                    return Err(MergeError::Duplicate { stage: stage.into(), unit: *id, first: first.into(), second: dir.clone() });
                }
            }
            if part.state.spilled > 0 {
                part.state.read_spill_from(&spill_path(dir, stage)).map_err(|e| fold_err(dir, e.to_string()))?;
            }
            let mut blocks = Vec::with_capacity(part.state.units.len());
            for (i, block) in part.state.units.iter().enumerate() {
                let bytes = block.0.rows * part.state.dim as u64 * 4;
                if block.0.spilled_at.is_none() && in_memory + bytes <= self.feature_memory_bytes {
                    in_memory += bytes;
                    blocks.push(block.clone());
                    continue;
                }
                let floats = part.state.block_features(i).map_err(|e| fold_err(dir, e.to_string()))?;
                let file = match &mut writer {
                    Some(f) => f,
                    None => writer.insert(create_spill(&out_path).map_err(|e| fold_err(self.out, e))?),
                };
                let data: Vec<u8> = floats.iter().flat_map(|v| v.to_le_bytes()).collect();
                std::io::Write::write_all(file, &data)
                    .map_err(|e| fold_err(self.out, format!("\"{}\": cannot write: {e}", out_path.display())))?;
                let moved = UnitFeatures { features: Vec::new(), spilled_at: Some(written), ..(*block.0).clone() };
                written += floats.len() as u64;
                blocks.push(Shared(std::sync::Arc::new(moved)));
            }
            let state = FeatureStore::from_blocks(part.state.dim, blocks, part.state.nonfinite, 0);
            let part = Snapshot { state, applied: part.applied };
            match &mut merged {
                None => merged = Some(part),
                Some(m) => {
                    m.state.merge(part.state).map_err(|message| fold_err(dir, message))?;
                    m.applied.extend(part.applied);
                }
            }
        }
        if let Some(f) = &writer {
            // Synced before the checkpoint that names it, as a run's own spill file is.
            f.sync_all().map_err(|e| fold_err(self.out, format!("\"{}\": cannot sync: {e}", out_path.display())))?;
        }
        match merged {
            Some(mut m) => {
                m.state.spilled = written;
                checkpoint::write(self.out, stage, &m)?;
                Ok(m.applied.len())
            }
            None => Ok(0),
        }
    }
}

/// A new spill file at `path` (its folder created).
fn create_spill(path: &Path) -> Result<std::fs::File, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("\"{}\": cannot create: {e}", dir.display()))?;
    }
    crate::fault::at("features.write").map_err(|e| format!("\"{}\": cannot write: {e}", path.display()))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| format!("\"{}\": cannot create: {e}", path.display()))
}

/// A stage whose checkpoint is the applied set alone (save_images).
impl MergeState for () {
    fn merge(&mut self, _other: ()) -> Result<(), String> {
        Ok(())
    }
}

/// Blocks concatenate, sorted by unit (origin, class, first position): the order
/// [`FeatureStore::features`] hands them out in anyway, so the merged store is the one a
/// single run would hold. Spilled blocks name places in one spill file: the stores merged here
/// must share it ([`ShardFold::fold_features`] moves every shard's blocks into the merge's).
impl MergeState for FeatureStore {
    fn merge(&mut self, other: FeatureStore) -> Result<(), String> {
        if other.dim != self.dim && !other.units.is_empty() && !self.units.is_empty() {
            return Err(format!("features are {}-dimensional here, {} there", self.dim, other.dim));
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
    use std::io::Write;

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
        let fold = ShardFold { shards: &dirs, out: &out, feature_memory_bytes: u64::MAX };
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

    /// Spilled shards (one still appending past its checkpoint) fold into the single run's
    /// features, the merge keeping at most its own limit in memory and the rest in its own
    /// spill file; the shards' files are left as they were.
    #[test]
    fn spilled_shards_fold_into_the_single_runs_features_through_the_merges_own_spill_file() {
        use super::super::feature_store::spill_path;
        let tmp = tempfile::tempdir().unwrap();
        let dirs: Vec<PathBuf> = (0..2).map(|k| tmp.path().join(format!("s{k}"))).collect();
        // Shard 0 keeps one unit (2 rows x 2 floats, 16 bytes) in memory and spills the others.
        for (dir, units, limit) in [(&dirs[0], &[3u32, 0, 4][..], 16u64), (&dirs[1], &[1, 2][..], u64::MAX)] {
            std::fs::create_dir_all(dir.join("state")).unwrap();
            let mut s = ExactlyOnce::new(FeatureStore::new(2));
            s.inner_mut().spill_to(&spill_path(dir, "kid"), limit).unwrap();
            for &u in units {
                let b = unit(u);
                s.apply(&b, &b.units);
            }
            checkpoint::write(dir, "kid", &s.snapshot()).unwrap();
        }
        // Shard 0 is still running: it appended a block its checkpoint does not name yet.
        let shard_file = spill_path(&dirs[0], "kid");
        std::fs::OpenOptions::new().append(true).open(&shard_file).unwrap().write_all(&[7u8; 16]).unwrap();
        let shard_bytes = std::fs::read(&shard_file).unwrap();
        let out = tmp.path().join("merged");
        let fold = ShardFold { shards: &dirs, out: &out, feature_memory_bytes: 32 };
        assert_eq!(fold.fold_features("kid").unwrap(), 5);
        assert_eq!(std::fs::read(&shard_file).unwrap(), shard_bytes, "a shard's spill file is only read");
        let mut merged: Snapshot<FeatureStore> = checkpoint::read(&out, "kid").unwrap().unwrap();
        // Units 3 (shard 0) and 1 (shard 1) fit the 32 bytes; units 0, 4 and 2 went to the file.
        assert_eq!((merged.state.bytes(), merged.state.spilled), (32, 12));
        assert_eq!(std::fs::metadata(spill_path(&out, "kid")).unwrap().len(), 48);
        // As the merged run's stage opens it.
        merged.state.spill_to(&spill_path(&out, "kid"), 32).unwrap();
        let single = store(&[0, 1, 2, 3, 4]).snapshot();
        assert_eq!(merged.applied, single.applied);
        assert_eq!(merged.state.features(Origin::Generated, None).unwrap(), single.state.features(Origin::Generated, None).unwrap());
        assert_eq!(merged.state.rows(Origin::Generated, None, &[9, 0, 4]), single.state.rows(Origin::Generated, None, &[9, 0, 4]));
        // A shard's file shorter than its checkpoint names is refused, naming the file.
        std::fs::write(&shard_file, [0u8; 4]).unwrap();
        let e = fold.fold_features("kid").unwrap_err().to_string();
        assert!(e.contains("s0") && e.contains("kid.features") && e.contains("holds 4 bytes, the checkpoint names 32"), "{e}");
    }
}
