//! Inception Score (Salimans et al. 2016), streaming: IS = exp(E_x KL(p(y|x) || p(y))), per
//! split, then the mean and population standard deviation (ddof = 0) over splits, as the
//! reference implementations report them. p(y|x) is the softmax over the 1008 unbiased logits
//! of pytorch-fid's InceptionV3 (DESIGN.md §1).
//!
//! An image's split is its position in the run's deterministic order modulo the number of
//! splits (not a contiguous chunk of arrival order), so the score does not depend on the order
//! batches arrive in. Per split the state is: count, sum over images of sum_y p log p, and the
//! sum of p (a 1008 vector), since
//! mean KL = (sum_x sum_y p log p - sum_y P_y log(P_y / count)) / count with P = sum_x p.
//! States of disjoint sets of images [`merge`](InceptionScoreState::merge) by adding these sums.
//!
//! A split without any image makes [`finish`](InceptionScoreState::finish) an error (rather than
//! a score over fewer splits that would read as if all splits were there): ask for fewer splits
//! than images. The reference (tests/fixtures/fid, scripts/make_fid_fixtures.py) is numpy's
//! float64 computation with the same split rule; the contiguous-chunk rule of other
//! implementations (split k = images k·n/splits .. (k+1)·n/splits of arrival order) gives a
//! different number on the same images (2.94450 ± 0.03339 versus 2.94358 ± 0.03182 for the
//! fixture's 60 images, 10 splits).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InceptionScoreError {
    #[error("logits have {found} values for {n} images of {classes} classes")]
    Shape { found: usize, n: usize, classes: usize },
    #[error("logits contain NaN or infinite values")]
    NonFinite,
    #[error("the number of splits must be at least 1")]
    NoSplits,
    #[error("split {0} has no image; need at least as many images as splits")]
    EmptySplit(usize),
    #[error("cannot merge a state of {found_splits} splits x {found_classes} classes into one of {splits} x {classes}")]
    Mismatch { splits: usize, classes: usize, found_splits: usize, found_classes: usize },
    #[error("inconsistent inception score state: {0}")]
    Corrupt(String),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitState {
    pub count: u64,
    pub sum_plogp: f64,
    pub sum_p: Vec<f64>,
}

/// Deserialisation checks that every split has `classes` sums, so a corrupt checkpoint is an
/// error, not a panic later.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StateRepr")]
pub struct InceptionScoreState {
    pub classes: usize,
    pub splits: Vec<SplitState>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StateRepr {
    classes: usize,
    splits: Vec<SplitState>,
}

impl TryFrom<StateRepr> for InceptionScoreState {
    type Error = InceptionScoreError;
    fn try_from(r: StateRepr) -> Result<Self, InceptionScoreError> {
        if r.splits.is_empty() {
            return Err(InceptionScoreError::Corrupt("no splits".into()));
        }
        if let Some((i, s)) = r.splits.iter().enumerate().find(|(_, s)| s.sum_p.len() != r.classes) {
            return Err(InceptionScoreError::Corrupt(format!("split {i} has {} class sums, expected {}", s.sum_p.len(), r.classes)));
        }
        Ok(InceptionScoreState { classes: r.classes, splits: r.splits })
    }
}

/// The reported figure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InceptionScore {
    pub mean: f64,
    /// Population standard deviation over splits (ddof = 0).
    pub std: f64,
    pub splits: usize,
    pub per_split: Vec<f64>,
    pub images: u64,
}

impl InceptionScoreState {
    pub fn new(splits: usize, classes: usize) -> Self {
        InceptionScoreState {
            classes,
            splits: (0..splits).map(|_| SplitState { sum_p: vec![0.0; classes], ..Default::default() }).collect(),
        }
    }

    /// Adds `n` images' logits (row-major `n x classes`) at the given positions.
    pub fn add(&mut self, logits: &[f32], n: usize, positions: &[u64]) -> Result<(), InceptionScoreError> {
        let k = self.classes;
        if self.splits.is_empty() {
            return Err(InceptionScoreError::NoSplits);
        }
        if logits.len() != n * k || positions.len() != n {
            return Err(InceptionScoreError::Shape { found: logits.len(), n, classes: k });
        }
        if logits.iter().any(|v| !v.is_finite()) {
            return Err(InceptionScoreError::NonFinite);
        }
        let mut p = vec![0.0f64; k];
        for (row, &pos) in logits.chunks(k).zip(positions) {
            // Softmax in f64, shifted by the maximum for stability; p log p = p (z - log Z).
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let mut z = 0.0;
            for (pj, &v) in p.iter_mut().zip(row) {
                *pj = (v as f64 - max).exp();
                z += *pj;
            }
            let log_z = z.ln();
            let splits = self.splits.len() as u64;
            let split = &mut self.splits[(pos % splits) as usize];
            let mut plogp = 0.0;
            for ((pj, &v), acc) in p.iter_mut().zip(row).zip(split.sum_p.iter_mut()) {
                *pj /= z;
                if *pj > 0.0 {
                    plogp += *pj * (v as f64 - max - log_z);
                }
                *acc += *pj;
            }
            split.sum_plogp += plogp;
            split.count += 1;
        }
        Ok(())
    }

    /// Folds in the state of other images (same splits and classes, positions disjoint from
    /// this state's): the result equals adding all of them to one state, up to rounding.
    pub fn merge(&mut self, other: &InceptionScoreState) -> Result<(), InceptionScoreError> {
        if other.classes != self.classes || other.splits.len() != self.splits.len() {
            return Err(InceptionScoreError::Mismatch {
                splits: self.splits.len(),
                classes: self.classes,
                found_splits: other.splits.len(),
                found_classes: other.classes,
            });
        }
        for (mine, theirs) in self.splits.iter_mut().zip(&other.splits) {
            mine.count += theirs.count;
            mine.sum_plogp += theirs.sum_plogp;
            for (a, b) in mine.sum_p.iter_mut().zip(&theirs.sum_p) {
                *a += b;
            }
        }
        Ok(())
    }

    pub fn images(&self) -> u64 {
        self.splits.iter().map(|s| s.count).sum()
    }

    pub fn finish(&self) -> Result<InceptionScore, InceptionScoreError> {
        if self.splits.is_empty() {
            return Err(InceptionScoreError::NoSplits);
        }
        let mut per_split = Vec::with_capacity(self.splits.len());
        for (i, s) in self.splits.iter().enumerate() {
            if s.count == 0 {
                return Err(InceptionScoreError::EmptySplit(i));
            }
            let n = s.count as f64;
            let cross: f64 = s.sum_p.iter().filter(|&&p| p > 0.0).map(|&p| p * (p / n).ln()).sum();
            per_split.push(((s.sum_plogp - cross) / n).exp());
        }
        let k = per_split.len() as f64;
        let mean = per_split.iter().sum::<f64>() / k;
        let std = (per_split.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / k).sqrt();
        Ok(InceptionScore { mean, std, splits: per_split.len(), per_split, images: self.images() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_predictions_score_one_and_confident_distinct_ones_score_k() {
        let mut s = InceptionScoreState::new(1, 3);
        s.add(&[0.0; 6], 2, &[0, 1]).unwrap();
        assert!((s.finish().unwrap().mean - 1.0).abs() < 1e-12);
        // Three images, each certain of a different class: IS = 3.
        let mut s = InceptionScoreState::new(1, 3);
        let big = 1000.0;
        s.add(&[big, 0.0, 0.0, 0.0, big, 0.0, 0.0, 0.0, big], 3, &[0, 1, 2]).unwrap();
        assert!((s.finish().unwrap().mean - 3.0).abs() < 1e-9);
    }

    #[test]
    fn arrival_order_does_not_matter_and_empty_splits_are_errors() {
        let logits: Vec<f32> = (0..40).map(|i| ((i * 7 % 11) as f32) / 3.0).collect();
        let pos: Vec<u64> = (0..10).collect();
        let mut a = InceptionScoreState::new(2, 4);
        a.add(&logits, 10, &pos).unwrap();
        let mut b = InceptionScoreState::new(2, 4);
        b.add(&logits[20..], 5, &pos[5..]).unwrap();
        b.add(&logits[..20], 5, &pos[..5]).unwrap();
        let (ra, rb) = (a.finish().unwrap(), b.finish().unwrap());
        assert!((ra.mean - rb.mean).abs() < 1e-12 && (ra.std - rb.std).abs() < 1e-12);
        assert_eq!(InceptionScoreState::new(3, 4).finish(), Err(InceptionScoreError::EmptySplit(0)));
    }
}
