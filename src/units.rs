//! The bottom vocabulary of a run (DESIGN.md §2 "Exactly once"), imported by every layer and
//! importing nothing of rcaflow: where images come from ([`Origin`]), the identity of a work
//! unit ([`UnitId`]) and of its images inside a batch ([`UnitSpan`]), a unit of generation
//! ([`WorkUnit`]) with its seed ([`unit_seed`]), the one rule that cuts a class's images into
//! units ([`cut_into_units`]) and a source's plan made with it ([`UnitPlan`]).
//!
//! A *unit* is the grain of exactly-once accounting: a fixed chunk of one class's images from
//! one origin. Batches only ever hold whole units, so an accumulator can apply or skip a unit
//! atomically by its id, whatever re-batching happened upstream.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where the images of a unit come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Real,
    Generated,
}

impl Origin {
    pub const ALL: [Origin; 2] = [Origin::Real, Origin::Generated];

    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Real => "real",
            Origin::Generated => "generated",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Origin {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "real" => Ok(Origin::Real),
            "generated" => Ok(Origin::Generated),
            other => Err(format!("origin \"{other}\": expected \"real\" or \"generated\"")),
        }
    }
}

/// Identity of a work unit: the `index`-th chunk of class `class` from `origin`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UnitId {
    pub origin: Origin,
    pub class: u32,
    pub index: u32,
}

impl fmt::Display for UnitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.origin, self.class, self.index)
    }
}

/// The images `[start, start + len)` of a batch belong to unit `id`. `first_position` is the
/// position of the unit's first image in its class's deterministic order (file-name order for
/// folders), which order-dependent metrics such as the Inception Score splits rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitSpan {
    pub id: UnitId,
    pub start: usize,
    pub len: usize,
    pub first_position: u64,
}

impl UnitSpan {
    /// Position in its class's deterministic order of the batch image `i` (inside this span).
    pub fn position_of(&self, i: usize) -> u64 {
        self.first_position + (i - self.start) as u64
    }
}

/// One unit's place in its class: chunk `index` of `class`, images `first_position..+len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitSlot {
    pub class: u32,
    pub index: u32,
    pub first_position: u64,
    pub len: u64,
}

impl UnitSlot {
    pub fn id(&self, origin: Origin) -> UnitId {
        UnitId { origin, class: self.class, index: self.index }
    }
}

/// The rule that cuts each class's images into units, class-major: class `c`'s `per_class[c]`
/// images in chunks of `unit_size` (at least 1), the last one shorter when it does not divide.
/// Sources, the run manifest and the resume all list units through this one function, so they
/// agree on every unit id.
pub fn cut_into_units(per_class: &[u64], unit_size: usize) -> impl Iterator<Item = UnitSlot> + '_ {
    let size = unit_size.max(1) as u64;
    per_class.iter().enumerate().flat_map(move |(class, &n)| {
        (0..n.div_ceil(size)).map(move |index| UnitSlot {
            class: class as u32,
            index: index as u32,
            first_position: index * size,
            len: size.min(n - index * size),
        })
    })
}

/// How a source's images are cut into units: enough to list every unit id. Computed once per
/// run from the topology (validation's class list, the folder listing or `per_class`), recorded
/// in the run manifest and handed to the stages that need class sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitPlan {
    pub origin: Origin,
    pub per_class: Vec<u64>,
    pub unit_size: usize,
}

impl UnitPlan {
    /// Where each class starts in the class-major order of all the plan's images.
    pub fn class_offsets(&self) -> Vec<u64> {
        self.per_class
            .iter()
            .scan(0u64, |sum, n| {
                let offset = *sum;
                *sum += n;
                Some(offset)
            })
            .collect()
    }
}

/// One unit of generation: `size` images of `class`, positions `first_position..+size` in the
/// class's order, drawn from `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkUnit {
    pub class: u32,
    pub index: u32,
    pub first_position: u64,
    pub size: usize,
    pub seed: u64,
}

impl WorkUnit {
    pub fn id(&self) -> UnitId {
        UnitId { origin: Origin::Generated, class: self.class, index: self.index }
    }
}

/// One shard of a run cut across machines (DESIGN.md §2 "Beyond one machine"): shard `index`
/// of `count`, `0 <= index < count`. Written `K/N` on the command line and in run manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// Why a shard string or pair of numbers is not a shard.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("shard \"{0}\": expected K/N with whole numbers, shard K of N counted from 0 (e.g. 0/4)")]
    Syntax(String),
    #[error("shard {index}/{count}: the shard count must be at least 1")]
    NoShards { index: u32, count: u32 },
    #[error("shard {index}/{count}: the shard index must be below the shard count (shards are 0 to {last})", last = .count.saturating_sub(1))]
    OutOfRange { index: u32, count: u32 },
}

impl Shard {
    pub fn new(index: u32, count: u32) -> Result<Shard, ShardError> {
        if count == 0 {
            return Err(ShardError::NoShards { index, count });
        }
        if index >= count {
            return Err(ShardError::OutOfRange { index, count });
        }
        Ok(Shard { index, count })
    }

    /// Whether unit `id` is this shard's work ([`shard_of`]).
    pub fn holds(&self, id: UnitId) -> bool {
        shard_of(id, self.count) == self.index
    }

    /// The folder name of this shard under a run directory: `shard-K-of-N`.
    pub fn dir_name(&self) -> String {
        format!("shard-{}-of-{}", self.index, self.count)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = ShardError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || ShardError::Syntax(s.to_string());
        let (k, n) = s.trim().split_once('/').ok_or_else(syntax)?;
        let k: u32 = k.trim().parse().map_err(|_| syntax())?;
        let n: u32 = n.trim().parse().map_err(|_| syntax())?;
        Shard::new(k, n)
    }
}

/// The shard of `count` that runs unit `id`: `(class + index) mod count`. A pure function of
/// the unit id and the shard count, so every machine agrees on it without talking to the
/// others. Within a class consecutive units go to consecutive shards (every class is spread
/// over all shards, to within one unit each), and each class starts one shard further than the
/// one before, so the shards that get a class's extra unit rotate: shards stay balanced to
/// within one unit per class whatever the class sizes. Real and generated units of the same
/// (class, index) go to the same shard.
pub fn shard_of(id: UnitId, count: u32) -> u32 {
    let count = u64::from(count.max(1));
    ((u64::from(id.class) + u64::from(id.index)) % count) as u32
}

/// splitmix64's finaliser: a bijective 64-bit mix (unit seeds here, the samplers' noise in
/// `models::noise`).
pub fn mix64(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One splitmix64 step: advance by the golden ratio increment, then mix.
fn splitmix64(z: u64) -> u64 {
    mix64(z.wrapping_add(0x9E37_79B9_7F4A_7C15))
}

/// The seed of unit `index` of `class`: a hash of the three, nothing else (not the unit size,
/// the replica, the device or the time), so a unit gives the same images wherever it runs.
pub fn unit_seed(run_seed: u64, class: u32, index: u32) -> u64 {
    splitmix64(splitmix64(splitmix64(run_seed) ^ u64::from(class)) ^ u64::from(index))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_cover_each_class_in_order_with_a_short_last_unit() {
        let shape: Vec<_> = cut_into_units(&[5, 0, 4], 2).map(|u| (u.class, u.index, u.first_position, u.len)).collect();
        assert_eq!(shape, vec![(0, 0, 0, 2), (0, 1, 2, 2), (0, 2, 4, 1), (2, 0, 0, 2), (2, 1, 2, 2)]);
    }

    #[test]
    fn shards_parse_refuse_bad_values_and_cover_every_unit_once_and_evenly() {
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { index: 1, count: 3 }));
        assert_eq!("0/1".parse::<Shard>().unwrap().to_string(), "0/1");
        assert_eq!(
            "3/3".parse::<Shard>().unwrap_err().to_string(),
            "shard 3/3: the shard index must be below the shard count (shards are 0 to 2)"
        );
        assert_eq!("0/0".parse::<Shard>().unwrap_err().to_string(), "shard 0/0: the shard count must be at least 1");
        for bad in ["", "1", "a/3", "1/b", "-1/3", "1/3/4", "1.5/3"] {
            assert!(matches!(bad.parse::<Shard>(), Err(ShardError::Syntax(_))), "{bad}");
        }
        // 10 classes of 7 units: every unit in exactly one shard, each class within one unit.
        let ids: Vec<UnitId> = cut_into_units(&[14; 10], 2).map(|s| s.id(Origin::Generated)).collect();
        for count in 1..=5u32 {
            let shards: Vec<Shard> = (0..count).map(|k| Shard::new(k, count).unwrap()).collect();
            for id in &ids {
                assert_eq!(shards.iter().filter(|s| s.holds(*id)).count(), 1, "{id} in {count} shards");
            }
            let sizes: Vec<usize> = shards.iter().map(|s| ids.iter().filter(|id| s.holds(**id)).count()).collect();
            let (min, max) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            assert!(max - min <= 1, "{count} shards: {sizes:?}");
        }
        // The rule itself (documented, the same on every machine).
        assert_eq!(shard_of(UnitId { origin: Origin::Real, class: 2, index: 5 }, 3), 1);
    }

    #[test]
    fn seeds_depend_on_run_seed_class_and_index_only() {
        assert_ne!(unit_seed(7, 1, 2), unit_seed(7, 2, 1), "no symmetric mixing of class and index");
        assert_ne!(unit_seed(7, 0, 0), unit_seed(8, 0, 0));
        assert_eq!(unit_seed(7, 3, 4), unit_seed(7, 3, 4));
    }
}
