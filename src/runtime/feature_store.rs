//! The features themselves, per origin, for the sinks whose maths needs every feature rather
//! than sums (kid, precision_recall): float32, one block per applied unit, checkpointed with the
//! applied set so a resumed run computes from exactly the features an uninterrupted one holds.
//!
//! Memory: 4 bytes per dimension per image, 8 KB for a 2048-d pool3 feature: a run of the
//! paper's size (10 classes x 5,000 generated images, and as many real) holds 400 MB per side.
//! Blocks are shared (`Arc`), so a checkpoint snapshot copies no features.
//!
//! Spill: past a memory limit (`[runtime] feature_memory_mib`), new blocks go to an append-only
//! float32 file next to the checkpoint, `state/<stage>.features` (little-endian, row-major), and
//! the store keeps only where each block starts. Each block is synced before the checkpoint can
//! name it, and the checkpoint records the file's length; on restore the file is cut back to that
//! length (a block appended after the last checkpoint, or torn by a kill, goes; its unit is not
//! in the applied set, so it comes again). Reading back: [`FeatureStore::rows`] reads the rows
//! it is asked for (KID's subsets), [`FeatureStore::features`] all of them (precision/recall's
//! neighbourhoods need every pair).
//!
//! Order: blocks arrive in whatever order units finish; [`FeatureStore::features`] hands them
//! out sorted by (class, position of the unit's first image), so the same images always give
//! the same matrix (what makes KID's seeded subsets reproducible across resumes and replicas).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::accumulator::{Accumulator, ExactlyOnce};
use super::batch::FeatureBatch;
use super::stage::{StageContext, StageError};
use super::sync::lock;
use crate::units::{Origin, UnitSpan};

/// The finite feature rows of one unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitFeatures {
    pub origin: Origin,
    pub class: u32,
    pub first_position: u64,
    pub rows: u64,
    /// Row-major `rows x dim`; empty when the block is in the spill file.
    pub features: Vec<f32>,
    /// Where the block starts in the spill file, in floats; `None`: it is in `features`.
    pub spilled_at: Option<u64>,
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
    #[error("a stored unit has {values} values for {rows} rows, expected {dim} per row")]
    Corrupt { values: usize, rows: u64, dim: usize },
    #[error("a stored unit lies at floats {at}..{end} of the spill file, which the checkpoint says holds {spilled}")]
    OutsideSpill { at: u64, end: u64, spilled: u64 },
    #[error("feature spill file \"{path}\": {message}")]
    Spill { path: PathBuf, message: String },
}

/// The spill file of a store, opened (created on the first block it takes).
#[derive(Debug)]
struct SpillFile {
    path: PathBuf,
    file: Mutex<Option<File>>,
    /// Bytes of features the store keeps in memory before it spills.
    limit_bytes: u64,
    /// The first failed write: the stage fails with it after the batch.
    error: Mutex<Option<FeatureStoreError>>,
}

impl SpillFile {
    fn error(&self, message: impl std::fmt::Display) -> FeatureStoreError {
        FeatureStoreError::Spill { path: self.path.clone(), message: message.to_string() }
    }

    /// Writes `floats` at float offset `at` (the end of what is vouched for) and syncs them.
    fn append(&self, at: u64, floats: &[f32]) -> Result<(), FeatureStoreError> {
        crate::fault::at("features.write").map_err(|e| self.error(format!("cannot write: {e}")))?;
        let mut file = lock(&self.file);
        if file.is_none() {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&self.path)
                .map_err(|e| self.error(format!("cannot create: {e}")))?;
            *file = Some(f);
        }
        let Some(f) = file.as_ref() else { return Err(self.error("not open")) };
        let bytes: Vec<u8> = floats.iter().flat_map(|v| v.to_le_bytes()).collect();
        f.write_all_at(&bytes, at * 4).map_err(|e| self.error(format!("cannot write: {e}")))?;
        f.sync_data().map_err(|e| self.error(format!("cannot sync: {e}")))
    }

    /// `n` floats from float offset `at`.
    fn read(&self, at: u64, n: usize, out: &mut Vec<f32>) -> Result<(), FeatureStoreError> {
        let mut file = lock(&self.file);
        if file.is_none() {
            *file = Some(File::open(&self.path).map_err(|e| self.error(format!("cannot open: {e}")))?);
        }
        let Some(f) = file.as_ref() else { return Err(self.error("not open")) };
        let mut bytes = vec![0u8; n * 4];
        f.read_exact_at(&mut bytes, at * 4).map_err(|e| self.error(format!("cannot read {n} floats at {at}: {e}")))?;
        out.extend(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        Ok(())
    }
}

/// Every applied unit's finite features, and how many non-finite rows were left out.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(try_from = "FeatureStoreRepr")]
pub struct FeatureStore {
    pub dim: usize,
    pub units: Vec<Shared>,
    pub nonfinite: u64,
    /// Floats written to the spill file that this state's blocks may name (the length the file
    /// is cut back to on restore).
    pub spilled: u64,
    #[serde(skip)]
    spill: Option<Arc<SpillFile>>,
}

/// Equal features, wherever they are kept.
impl PartialEq for FeatureStore {
    fn eq(&self, other: &Self) -> bool {
        self.dim == other.dim && self.units == other.units && self.nonfinite == other.nonfinite && self.spilled == other.spilled
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureStoreRepr {
    dim: usize,
    units: Vec<Shared>,
    nonfinite: u64,
    spilled: u64,
}

impl TryFrom<FeatureStoreRepr> for FeatureStore {
    type Error = FeatureStoreError;
    fn try_from(r: FeatureStoreRepr) -> Result<Self, Self::Error> {
        for u in r.units.iter().map(|u| &*u.0) {
            let values = (u.rows as usize).saturating_mul(r.dim);
            match u.spilled_at {
                None if r.dim > 0 && u.features.len() == values => {}
                Some(at) if r.dim > 0 && u.features.is_empty() => {
                    let end = at.saturating_add(values as u64);
                    if end > r.spilled {
                        return Err(FeatureStoreError::OutsideSpill { at, end, spilled: r.spilled });
                    }
                }
                _ => return Err(FeatureStoreError::Corrupt { values: u.features.len(), rows: u.rows, dim: r.dim }),
            }
        }
        Ok(FeatureStore { dim: r.dim, units: r.units, nonfinite: r.nonfinite, spilled: r.spilled, spill: None })
    }
}

impl FeatureStore {
    pub fn new(dim: usize) -> Self {
        FeatureStore { dim, units: Vec::new(), nonfinite: 0, spilled: 0, spill: None }
    }

    /// Spills blocks to `path` once more than `limit_bytes` of features are in memory. An
    /// existing file is cut back to the length this state vouches for (what a run killed after
    /// its last checkpoint appended goes); one shorter than that is refused.
    pub fn spill_to(&mut self, path: &Path, limit_bytes: u64) -> Result<(), FeatureStoreError> {
        let error = |message: String| FeatureStoreError::Spill { path: path.to_path_buf(), message };
        let want = self.spilled * 4;
        match std::fs::metadata(path) {
            Ok(meta) => {
                if meta.len() < want {
                    return Err(error(format!("holds {} bytes, the checkpoint names {want}; it was truncated or replaced", meta.len())));
                }
                if meta.len() > want {
                    let f = std::fs::OpenOptions::new().write(true).open(path).map_err(|e| error(format!("cannot open: {e}")))?;
                    f.set_len(want).map_err(|e| error(format!("cannot cut back to {want} bytes: {e}")))?;
                    f.sync_all().map_err(|e| error(format!("cannot sync: {e}")))?;
                }
            }
            Err(_) if want > 0 => return Err(error(format!("is missing; the checkpoint names {want} bytes of it"))),
            Err(_) => {}
        }
        self.spill = Some(Arc::new(SpillFile { path: path.to_path_buf(), file: Mutex::new(None), limit_bytes, error: Mutex::new(None) }));
        Ok(())
    }

    /// The first spill write that failed, if one did (the stage fails with it).
    pub fn spill_error(&self) -> Option<FeatureStoreError> {
        self.spill.as_ref().and_then(|s| lock(&s.error).clone())
    }

    /// Images held of `origin` (of `class` when given).
    pub fn count(&self, origin: Origin, class: Option<u32>) -> usize {
        self.blocks(origin, class).map(|u| u.rows as usize).sum()
    }

    fn blocks(&self, origin: Origin, class: Option<u32>) -> impl Iterator<Item = &UnitFeatures> {
        self.units.iter().map(|u| &*u.0).filter(move |u| u.origin == origin && class.is_none_or(|c| u.class == c))
    }

    /// The blocks of `origin` (of `class`) in (class, position) order.
    fn ordered(&self, origin: Origin, class: Option<u32>) -> Vec<&UnitFeatures> {
        let mut blocks: Vec<&UnitFeatures> = self.blocks(origin, class).collect();
        blocks.sort_by_key(|u| (u.class, u.first_position));
        blocks
    }

    /// Rows `first..first + n` of `block`, appended to `out`.
    fn read_rows(&self, block: &UnitFeatures, first: usize, n: usize, out: &mut Vec<f32>) -> Result<(), FeatureStoreError> {
        let d = self.dim;
        match block.spilled_at {
            None => {
                out.extend_from_slice(&block.features[first * d..(first + n) * d]);
                Ok(())
            }
            Some(at) => match &self.spill {
                Some(spill) => spill.read(at + (first * d) as u64, n * d, out),
                None => {
                    Err(FeatureStoreError::Spill { path: PathBuf::new(), message: "a block is spilled but no spill file is open".into() })
                }
            },
        }
    }

    /// The features of `origin` (of `class` when given), row-major, in (class, position) order.
    pub fn features(&self, origin: Origin, class: Option<u32>) -> Result<Vec<f32>, FeatureStoreError> {
        let blocks = self.ordered(origin, class);
        let mut out = Vec::with_capacity(blocks.iter().map(|b| b.rows as usize).sum::<usize>() * self.dim);
        for b in blocks {
            self.read_rows(b, 0, b.rows as usize, &mut out)?;
        }
        Ok(out)
    }

    /// Rows `indices` (into the (class, position) order of [`Self::features`]) of `origin` (of
    /// `class`), row-major, in the order asked: only those rows are read.
    pub fn rows(&self, origin: Origin, class: Option<u32>, indices: &[usize]) -> Result<Vec<f32>, FeatureStoreError> {
        let blocks = self.ordered(origin, class);
        let starts: Vec<usize> = blocks
            .iter()
            .scan(0usize, |sum, b| {
                let start = *sum;
                *sum += b.rows as usize;
                Some(start)
            })
            .collect();
        let total = blocks.iter().map(|b| b.rows as usize).sum::<usize>();
        let mut out = Vec::with_capacity(indices.len() * self.dim);
        for &i in indices {
            if i >= total {
                return Err(FeatureStoreError::Corrupt { values: i, rows: total as u64, dim: self.dim });
            }
            let b = starts.partition_point(|&s| s <= i) - 1;
            self.read_rows(blocks[b], i - starts[b], 1, &mut out)?;
        }
        Ok(out)
    }

    /// A state made of `units` (blocks in memory or at their place in a spill file of
    /// `spilled` floats): what a merge assembles from the shards' blocks.
    pub fn from_blocks(dim: usize, units: Vec<Shared>, nonfinite: u64, spilled: u64) -> Self {
        FeatureStore { dim, units, nonfinite, spilled, spill: None }
    }

    /// Opens `path` read-only as the spill file this state's spilled blocks are in (a shard's,
    /// read by `merge`): never written or cut back, as its shard may still be running. One
    /// shorter than the state names is refused.
    pub fn read_spill_from(&mut self, path: &Path) -> Result<(), FeatureStoreError> {
        let error = |message: String| FeatureStoreError::Spill { path: path.to_path_buf(), message };
        let want = self.spilled * 4;
        match std::fs::metadata(path) {
            Ok(meta) if meta.len() < want => {
                return Err(error(format!("holds {} bytes, the checkpoint names {want}; it was truncated or replaced", meta.len())))
            }
            Ok(_) => {}
            Err(_) if want > 0 => return Err(error(format!("is missing; the checkpoint names {want} bytes of it"))),
            Err(_) => {}
        }
        self.spill =
            Some(Arc::new(SpillFile { path: path.to_path_buf(), file: Mutex::new(None), limit_bytes: u64::MAX, error: Mutex::new(None) }));
        Ok(())
    }

    /// Every feature of block `i` of [`Self::units`], from memory or the spill file.
    pub fn block_features(&self, i: usize) -> Result<Vec<f32>, FeatureStoreError> {
        let block = &self.units[i].0;
        let mut out = Vec::with_capacity(block.rows as usize * self.dim);
        self.read_rows(block, 0, block.rows as usize, &mut out)?;
        Ok(out)
    }

    /// Bytes of features held in memory.
    pub fn bytes(&self) -> usize {
        self.units.iter().map(|u| u.0.features.len() * 4).sum()
    }
}

/// The spill file of stage `stage`: `RUN_DIR/state/<stage>.features`, beside its checkpoint.
pub fn spill_path(run_dir: &Path, stage: &str) -> PathBuf {
    run_dir.join(super::run_dir::STATE_DIR).join(format!("{stage}.features"))
}

/// Lets the store of the stage of `ctx` spill past `limit_bytes` (the sinks' `start`).
pub fn spill_to(acc: &mut ExactlyOnce<FeatureStore>, ctx: &StageContext, limit_bytes: u64) -> Result<(), StageError> {
    let path = spill_path(&ctx.run_dir, &ctx.id);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| StageError::Failed(format!("run directory \"{}\": cannot create: {e}", dir.display())))?;
    }
    acc.inner_mut().spill_to(&path, limit_bytes).map_err(StageError::failed)
}

impl Accumulator for FeatureStore {
    type Input = FeatureBatch;
    type State = FeatureStore;

    fn apply_unit(&mut self, input: &FeatureBatch, span: &UnitSpan) {
        let d = input.feature_dim;
        let rows = &input.features[span.start * d..(span.start + span.len) * d];
        // Finite rows only: one bad image must not poison the distances or drop its unit.
        let mut features: Vec<f32> = rows.chunks(d).filter(|r| r.iter().all(|v| v.is_finite())).flatten().copied().collect();
        let kept = (features.len() / d.max(1)) as u64;
        self.nonfinite += span.len as u64 - kept;
        let mut spilled_at = None;
        if let Some(spill) = self.spill.clone() {
            // Past the limit, the block goes to the file; should the write fail, it stays in
            // memory (the results stay right) and the stage fails after the batch.
            if (self.bytes() + features.len() * 4) as u64 > spill.limit_bytes && lock(&spill.error).is_none() {
                match spill.append(self.spilled, &features) {
                    Ok(()) => {
                        spilled_at = Some(self.spilled);
                        self.spilled += features.len() as u64;
                        features = Vec::new();
                    }
                    Err(e) => *lock(&spill.error) = Some(e),
                }
            }
        }
        self.units.push(Shared(Arc::new(UnitFeatures {
            origin: span.id.origin,
            class: span.id.class,
            first_position: span.first_position,
            rows: kept,
            features,
            spilled_at,
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
    use std::io::Write;

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
        assert_eq!(a.inner().features(Origin::Generated, None).unwrap(), want);
        assert_eq!(b.inner().features(Origin::Generated, None).unwrap(), want);
        assert_eq!(a.inner().features(Origin::Generated, Some(1)).unwrap(), want[8..]);
        assert_eq!(a.inner().rows(Origin::Generated, None, &[3, 0]).unwrap(), [&want[6..8], &want[0..2]].concat());
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

    #[test]
    fn spilled_features_read_back_the_same_and_a_restore_cuts_the_file_back() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("kid.features");
        let x = batch(Origin::Generated, &[(1, 0), (0, 1), (0, 0)]);
        let mut memory = ExactlyOnce::new(FeatureStore::new(2));
        memory.apply(&x, &x.units);
        // 16 bytes in memory at most: the first unit (2 rows x 2 floats) stays, the others spill.
        let mut spilling = ExactlyOnce::new(FeatureStore::new(2));
        spilling.inner_mut().spill_to(&path, 16).unwrap();
        spilling.apply(&x, &x.units[..2]);
        let checkpoint = postcard::to_stdvec(&spilling.snapshot()).unwrap();
        spilling.apply(&x, &x.units[2..]);
        assert_eq!((spilling.inner().bytes(), spilling.inner().spilled), (16, 8));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 32);
        for class in [None, Some(0), Some(1)] {
            assert_eq!(spilling.inner().features(Origin::Generated, class), memory.inner().features(Origin::Generated, class));
        }
        assert_eq!(spilling.inner().rows(Origin::Generated, None, &[5, 1, 2]), memory.inner().rows(Origin::Generated, None, &[5, 1, 2]));
        // Killed after the third unit was spilled but before its checkpoint, with a torn tail:
        // the restore cuts the file back to what the checkpoint names, and the unit comes again.
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(&[1, 2, 3]).unwrap();
        let back: Snapshot<FeatureStore> = postcard::from_bytes(&checkpoint).unwrap();
        let mut resumed: ExactlyOnce<FeatureStore> = ExactlyOnce::restore(back);
        resumed.inner_mut().spill_to(&path, 16).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16);
        resumed.apply(&x, &x.units);
        assert_eq!(resumed.inner().features(Origin::Generated, None), memory.inner().features(Origin::Generated, None));
        // A file shorter than its checkpoint says is refused, naming it.
        std::fs::write(&path, [0u8; 4]).unwrap();
        let back: Snapshot<FeatureStore> = postcard::from_bytes(&checkpoint).unwrap();
        let e = ExactlyOnce::<FeatureStore>::restore(back).inner_mut().spill_to(&path, 16).unwrap_err().to_string();
        assert!(e.contains("kid.features") && e.contains("holds 4 bytes, the checkpoint names 16"), "{e}");
    }
}
