//! Classification maths for Relative Classification Accuracy (RCA), DESIGN.md §1.
//!
//! Conventions, chosen so the numbers equal scikit-learn's (checked against fixtures produced by
//! `scripts/make_metric_fixtures.py` in `tests/metrics_sklearn.rs`):
//! - [`Confusion`] is `sklearn.metrics.confusion_matrix(y_true, y_pred, labels=range(n))`:
//!   rows = true (intended) class, columns = predicted class.
//! - accuracy is `accuracy_score`: correct / total.
//! - precision, recall and F1 per class are
//!   `precision_recall_fscore_support(labels=range(n), average=None, zero_division=0)`:
//!   a ratio with a zero denominator is 0, and F1 = 2·tp / (support + predicted), which is
//!   2PR/(P+R) where defined and 0 when P + R = 0 (sklearn ≥ 1.3 computes it the same way).
//! - confidence intervals are Wilson score intervals, as
//!   `statsmodels.stats.proportion.proportion_confint(method="wilson")`, clipped to [0, 1].
//! - RCA = accuracy_gen / accuracy_real; class RCA_c = recall_gen(c) / recall_real(c).
//!
//! Everything here is pure: no threads, no I/O.

use serde::{Deserialize, Serialize};

/// z for a two-sided 95% interval: `scipy.stats.norm.isf(0.025)`, the value statsmodels uses.
pub const Z95: f64 = 1.959963984540054;

/// Errors from building or combining confusion matrices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RcaError {
    #[error("{role} class {class} is out of range for {num_classes} classes")]
    ClassOutOfRange { role: &'static str, class: usize, num_classes: usize },
    #[error("cannot merge a confusion matrix of {found} classes into one of {expected} classes")]
    ClassCountMismatch { expected: usize, found: usize },
    #[error("confusion matrix of {num_classes} classes needs {expected} counts, found {found}")]
    BadCounts { num_classes: usize, expected: usize, found: usize },
    #[error("confusion count overflow at true class {true_class}, predicted class {predicted_class}")]
    Overflow { true_class: usize, predicted_class: usize },
}

/// Square matrix of counts: `counts[t * n + p]` = items of true class `t` predicted as `p`.
///
/// Serialised as `{"num_classes": n, "counts": [...]}` (row-major); deserialisation checks the
/// length, so a corrupt checkpoint is an error rather than a panic later.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ConfusionRepr", into = "ConfusionRepr")]
pub struct Confusion {
    num_classes: usize,
    counts: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfusionRepr {
    num_classes: usize,
    counts: Vec<u64>,
}

impl TryFrom<ConfusionRepr> for Confusion {
    type Error = RcaError;
    fn try_from(r: ConfusionRepr) -> Result<Self, RcaError> {
        Confusion::from_counts(r.num_classes, r.counts)
    }
}

impl From<Confusion> for ConfusionRepr {
    fn from(c: Confusion) -> Self {
        ConfusionRepr { num_classes: c.num_classes, counts: c.counts }
    }
}

impl Confusion {
    /// An all-zero matrix for `num_classes` classes.
    pub fn new(num_classes: usize) -> Self {
        Confusion { num_classes, counts: vec![0; num_classes * num_classes] }
    }

    /// A matrix from row-major counts; `counts.len()` must be `num_classes²`.
    pub fn from_counts(num_classes: usize, counts: Vec<u64>) -> Result<Self, RcaError> {
        let expected =
            num_classes.checked_mul(num_classes).ok_or(RcaError::BadCounts { num_classes, expected: usize::MAX, found: counts.len() })?;
        if counts.len() != expected {
            return Err(RcaError::BadCounts { num_classes, expected, found: counts.len() });
        }
        Ok(Confusion { num_classes, counts })
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Records one item whose true (intended) class is `true_class`, predicted as
    /// `predicted_class`.
    pub fn add(&mut self, true_class: usize, predicted_class: usize) -> Result<(), RcaError> {
        self.add_count(true_class, predicted_class, 1)
    }

    /// Records `k` items of true class `t` predicted as `p`.
    pub fn add_count(&mut self, t: usize, p: usize, k: u64) -> Result<(), RcaError> {
        let n = self.num_classes;
        if t >= n {
            return Err(RcaError::ClassOutOfRange { role: "true", class: t, num_classes: n });
        }
        if p >= n {
            return Err(RcaError::ClassOutOfRange { role: "predicted", class: p, num_classes: n });
        }
        let cell = &mut self.counts[t * n + p];
        *cell = cell.checked_add(k).ok_or(RcaError::Overflow { true_class: t, predicted_class: p })?;
        Ok(())
    }

    /// Adds `other`'s counts into `self` (e.g. per-batch matrices into a run total). On error
    /// `self` is left unchanged.
    pub fn merge(&mut self, other: &Confusion) -> Result<(), RcaError> {
        if other.num_classes != self.num_classes {
            return Err(RcaError::ClassCountMismatch { expected: self.num_classes, found: other.num_classes });
        }
        // Check every cell first so a failed merge does not leave a half-added matrix.
        let n = self.num_classes;
        let mut merged = self.counts.clone();
        for (i, (m, o)) in merged.iter_mut().zip(&other.counts).enumerate() {
            *m = m.checked_add(*o).ok_or(RcaError::Overflow { true_class: i / n, predicted_class: i % n })?;
        }
        self.counts = merged;
        Ok(())
    }

    /// Count of items of true class `t` predicted as `p` (0 when out of range).
    pub fn get(&self, t: usize, p: usize) -> u64 {
        if t < self.num_classes && p < self.num_classes {
            self.counts[t * self.num_classes + p]
        } else {
            0
        }
    }

    /// Row-major counts, `num_classes²` long.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// The matrix as rows (true class) of columns (predicted class).
    pub fn rows(&self) -> Vec<Vec<u64>> {
        if self.num_classes == 0 {
            return Vec::new();
        }
        self.counts.chunks(self.num_classes).map(|r| r.to_vec()).collect()
    }

    /// Number of items recorded (saturating: a hand-edited checkpoint must not panic here).
    pub fn total(&self) -> u64 {
        self.counts.iter().fold(0, |a, &k| a.saturating_add(k))
    }

    /// Number of items whose prediction equals their true class (the diagonal).
    pub fn correct(&self) -> u64 {
        (0..self.num_classes).fold(0, |a, c| a.saturating_add(self.get(c, c)))
    }
}

/// A closed interval `[low, high]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub low: f64,
    pub high: f64,
}

/// Wilson score interval for a binomial proportion `successes / trials`, with critical value `z`
/// (use [`Z95`] for 95%). `None` for 0 trials (there is no proportion to bound) and for
/// `successes > trials` (not a proportion).
///
/// Same arithmetic as statsmodels' `proportion_confint(method="wilson")`, clipped to [0, 1].
/// At a proportion of exactly 0 or 1 the matching bound is exactly 0 or 1 in theory; rounding
/// leaves it an ulp away (statsmodels too, e.g. 0.9999999999999999 for 7 of 7), so it is set
/// exactly, which keeps "all right" from printing as "< 100%".
pub fn wilson_interval(successes: u64, trials: u64, z: f64) -> Option<Interval> {
    if trials == 0 || successes > trials {
        return None;
    }
    let n = trials as f64;
    let q = successes as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (q + z2 / (2.0 * n)) / denom;
    let dist = z * (q * (1.0 - q) / n + z2 / (4.0 * n * n)).sqrt() / denom;
    let low = if successes == 0 { 0.0 } else { (center - dist).clamp(0.0, 1.0) };
    let high = if successes == trials { 1.0 } else { (center + dist).clamp(0.0, 1.0) };
    Some(Interval { low, high })
}

/// Everything the report says about one set of predictions (real or generated).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationSummary {
    /// correct / total; `None` when no item was recorded.
    pub accuracy: Option<f64>,
    /// Wilson 95% interval of the accuracy; `None` when no item was recorded.
    pub accuracy_ci95: Option<Interval>,
    /// Per class: tp / predicted, 0 when the class was never predicted.
    pub precision: Vec<f64>,
    /// Per class: tp / support, 0 when the class has no item.
    pub recall: Vec<f64>,
    /// Per class: Wilson 95% interval of the recall; `None` when the class has no item.
    pub recall_ci95: Vec<Option<Interval>>,
    /// Per class: 2·tp / (support + predicted), 0 when both are 0.
    pub f1: Vec<f64>,
    /// Per class: items whose true class it is (row sums).
    pub support: Vec<u64>,
    /// Per class: items predicted as it (column sums).
    pub predicted: Vec<u64>,
    /// Items recorded.
    pub total: u64,
    /// The confusion matrix, rows = true class, columns = predicted class.
    pub confusion: Vec<Vec<u64>>,
}

/// `a / b` with scikit-learn's `zero_division=0`.
fn div0(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Accuracy, per-class precision/recall/F1, supports and intervals of a confusion matrix.
pub fn summarize(confusion: &Confusion) -> ClassificationSummary {
    let n = confusion.num_classes();
    let total = confusion.total();
    let correct = confusion.correct();
    // Sums saturate, like `total`, so absurd counts degrade instead of panicking.
    let support: Vec<u64> = (0..n).map(|t| (0..n).fold(0u64, |a, p| a.saturating_add(confusion.get(t, p)))).collect();
    let predicted: Vec<u64> = (0..n).map(|p| (0..n).fold(0u64, |a, t| a.saturating_add(confusion.get(t, p)))).collect();
    let tp: Vec<u64> = (0..n).map(|c| confusion.get(c, c)).collect();

    let precision = (0..n).map(|c| div0(tp[c], predicted[c])).collect();
    let recall = (0..n).map(|c| div0(tp[c], support[c])).collect();
    let recall_ci95 = (0..n).map(|c| wilson_interval(tp[c], support[c], Z95)).collect();
    // sklearn computes F-beta from counts, not from rounded P and R (in float64, as here).
    let f1 = (0..n)
        .map(|c| {
            let denom = support[c].saturating_add(predicted[c]);
            if denom == 0 {
                0.0
            } else {
                (2.0 * tp[c] as f64) / denom as f64
            }
        })
        .collect();

    ClassificationSummary {
        accuracy: (total > 0).then(|| correct as f64 / total as f64),
        accuracy_ci95: wilson_interval(correct, total, Z95),
        precision,
        recall,
        recall_ci95,
        f1,
        support,
        predicted,
        total,
        confusion: confusion.rows(),
    }
}

/// RCA of a generator: how much of the oracle's real-data accuracy survives on generated images.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RcaSummary {
    /// accuracy_gen / accuracy_real.
    pub global: Option<f64>,
    /// Per class: recall_gen(c) / recall_real(c).
    pub per_class: Vec<Option<f64>>,
}

/// Ratios of generated to real accuracy, globally and per class.
///
/// A ratio is `None` rather than 0 or infinity wherever it has no evidence behind it:
/// - global: either set is empty (accuracy `None`), or the oracle is never right on real data
///   (accuracy_real = 0, so the ratio is undefined);
/// - class c: no real item of class c or no generated item asked for class c (sklearn would
///   report recall 0 there, but that 0 means "nothing measured", and dividing by or into it
///   would report a failure or an infinite success that never happened), or recall_real(c) = 0
///   (undefined ratio);
/// - classes present in only one summary (mismatched class counts) are `None` too; the
///   vector is as long as the longer summary.
pub fn relative_accuracy(real: &ClassificationSummary, generated: &ClassificationSummary) -> RcaSummary {
    let global = match (real.accuracy, generated.accuracy) {
        (Some(r), Some(g)) if r > 0.0 => Some(g / r),
        _ => None,
    };
    let n = real.recall.len().max(generated.recall.len());
    let per_class = (0..n)
        .map(|c| {
            let real_support = real.support.get(c).copied().unwrap_or(0);
            let gen_support = generated.support.get(c).copied().unwrap_or(0);
            let real_recall = real.recall.get(c).copied().unwrap_or(0.0);
            let gen_recall = generated.recall.get(c).copied().unwrap_or(0.0);
            if real_support == 0 || gen_support == 0 || real_recall == 0.0 {
                None
            } else {
                Some(gen_recall / real_recall)
            }
        })
        .collect();
    RcaSummary { global, per_class }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confusion_from(n: usize, pairs: &[(usize, usize)]) -> Confusion {
        let mut c = Confusion::new(n);
        for &(t, p) in pairs {
            c.add(t, p).expect("in range");
        }
        c
    }

    #[test]
    fn empty_confusion_has_no_accuracy_and_zero_scores() {
        let s = summarize(&Confusion::new(3));
        assert_eq!(s.accuracy, None);
        assert_eq!(s.accuracy_ci95, None);
        assert_eq!(s.precision, vec![0.0; 3]);
        assert_eq!(s.recall, vec![0.0; 3]);
        assert_eq!(s.f1, vec![0.0; 3]);
        assert_eq!(s.recall_ci95, vec![None; 3]);
        assert_eq!(s.total, 0);
        assert_eq!(s.confusion, vec![vec![0; 3]; 3]);
    }

    #[test]
    fn zero_classes_is_empty_not_a_panic() {
        let c = Confusion::new(0);
        assert!(c.rows().is_empty());
        let s = summarize(&c);
        assert_eq!(s.accuracy, None);
        assert!(s.precision.is_empty());
    }

    #[test]
    fn rows_are_true_class_columns_predicted() {
        let c = confusion_from(3, &[(0, 1), (0, 1), (2, 0)]);
        assert_eq!(c.rows(), vec![vec![0, 2, 0], vec![0, 0, 0], vec![1, 0, 0]]);
        assert_eq!(c.counts(), &[0, 2, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(c.total(), 3);
        assert_eq!(c.correct(), 0);
    }

    #[test]
    fn never_predicted_class_has_zero_precision_and_f1() {
        // class 2 is true twice, never predicted.
        let c = confusion_from(3, &[(0, 0), (1, 1), (2, 0), (2, 1)]);
        let s = summarize(&c);
        assert_eq!(s.predicted[2], 0);
        assert_eq!(s.precision[2], 0.0);
        assert_eq!(s.recall[2], 0.0);
        assert_eq!(s.f1[2], 0.0);
        assert_eq!(s.precision[0], 0.5);
        assert_eq!(s.recall[0], 1.0);
        assert!((s.f1[0] - 2.0 / 3.0).abs() < 1e-15);
        assert_eq!(s.accuracy, Some(0.5));
    }

    #[test]
    fn class_absent_from_truth_has_zero_recall_and_no_interval() {
        // class 1 never true, predicted once.
        let c = confusion_from(2, &[(0, 0), (0, 1)]);
        let s = summarize(&c);
        assert_eq!(s.support[1], 0);
        assert_eq!(s.recall[1], 0.0);
        assert_eq!(s.recall_ci95[1], None);
        assert_eq!(s.precision[1], 0.0);
        assert_eq!(s.f1[1], 0.0);
    }

    #[test]
    fn add_rejects_out_of_range_classes() {
        let mut c = Confusion::new(2);
        let e = c.add(2, 0).unwrap_err();
        assert_eq!(e.to_string(), "true class 2 is out of range for 2 classes");
        let e = c.add(0, 5).unwrap_err();
        assert_eq!(e.to_string(), "predicted class 5 is out of range for 2 classes");
        assert_eq!(c.total(), 0);
    }

    #[test]
    fn merge_adds_and_rejects_mismatched_sizes() {
        let mut a = confusion_from(2, &[(0, 0), (1, 0)]);
        let b = confusion_from(2, &[(1, 1)]);
        a.merge(&b).expect("same size");
        assert_eq!(a.rows(), vec![vec![1, 0], vec![1, 1]]);
        assert!(matches!(a.merge(&Confusion::new(3)), Err(RcaError::ClassCountMismatch { expected: 2, found: 3 })));
    }

    #[test]
    fn overflow_is_an_error_and_leaves_matrix_unchanged() {
        let mut a = Confusion::new(2);
        a.add_count(1, 0, u64::MAX).expect("fits");
        assert!(matches!(a.add(1, 0), Err(RcaError::Overflow { .. })));
        let mut b = Confusion::new(2);
        b.add(0, 0).expect("fits");
        b.add(1, 0).expect("fits");
        assert!(b.merge(&a).is_err());
        assert_eq!(b.rows(), vec![vec![1, 0], vec![1, 0]]);
        // Summaries of absurd counts saturate rather than panic.
        a.add_count(1, 1, u64::MAX).expect("fits");
        assert_eq!(a.total(), u64::MAX);
        let s = summarize(&a);
        assert_eq!(s.support[1], u64::MAX);
    }

    #[test]
    fn serde_round_trip_and_length_check() {
        let c = confusion_from(2, &[(0, 1), (1, 1), (1, 1)]);
        let json = serde_json::to_string(&c).expect("serialise");
        assert_eq!(json, r#"{"num_classes":2,"counts":[0,1,0,2]}"#);
        let back: Confusion = serde_json::from_str(&json).expect("deserialise");
        assert_eq!(back, c);
        let bad = serde_json::from_str::<Confusion>(r#"{"num_classes":2,"counts":[0,1,0]}"#);
        assert!(bad.is_err());
    }

    #[test]
    fn wilson_edges() {
        assert_eq!(wilson_interval(0, 0, Z95), None);
        assert_eq!(wilson_interval(3, 2, Z95), None);
        let zero = wilson_interval(0, 10, Z95).expect("trials");
        assert_eq!(zero.low, 0.0);
        assert!(zero.high > 0.0 && zero.high < 0.35);
        let all = wilson_interval(10, 10, Z95).expect("trials");
        assert_eq!(all.high, 1.0);
        assert!(all.low > 0.65 && all.low < 1.0);
        // Known value: 5 of 10 at 95% is centred on 0.5, half-width 0.2633...
        let half = wilson_interval(5, 10, Z95).expect("trials");
        assert!((half.low - 0.236_593_090_512_563_94).abs() < 1e-12, "{half:?}");
        assert!((half.low + half.high - 1.0).abs() < 1e-15);
    }

    fn summary(acc: Option<f64>, recall: Vec<f64>, support: Vec<u64>) -> ClassificationSummary {
        let n = recall.len();
        ClassificationSummary {
            accuracy: acc,
            accuracy_ci95: None,
            precision: vec![0.0; n],
            recall,
            recall_ci95: vec![None; n],
            f1: vec![0.0; n],
            support,
            predicted: vec![0; n],
            total: 0,
            confusion: vec![vec![0; n]; n],
        }
    }

    #[test]
    fn rca_ratios_and_missing_evidence() {
        let real = summary(Some(0.8), vec![0.9, 0.0, 0.5, 0.6], vec![10, 10, 0, 10]);
        let gen = summary(Some(0.4), vec![0.45, 0.3, 0.5, 0.0], vec![10, 10, 10, 0]);
        let r = relative_accuracy(&real, &gen);
        assert_eq!(r.global, Some(0.5));
        // class 1: real recall 0 → undefined; class 2: no real items; class 3: none generated.
        assert_eq!(r.per_class, vec![Some(0.5), None, None, None]);
    }

    #[test]
    fn rca_generated_zero_recall_is_zero_not_missing() {
        let real = summary(Some(0.5), vec![0.5], vec![4]);
        let gen = summary(Some(0.0), vec![0.0], vec![4]);
        let r = relative_accuracy(&real, &gen);
        assert_eq!(r.global, Some(0.0));
        assert_eq!(r.per_class, vec![Some(0.0)]);
    }

    #[test]
    fn rca_undefined_global() {
        let real = summary(Some(0.0), vec![0.0], vec![4]);
        let gen = summary(Some(0.5), vec![0.5], vec![4]);
        assert_eq!(relative_accuracy(&real, &gen).global, None);
        let empty = summary(None, vec![0.0], vec![0]);
        assert_eq!(relative_accuracy(&empty, &gen).global, None);
        assert_eq!(relative_accuracy(&gen, &empty).global, None);
    }

    #[test]
    fn rca_mismatched_lengths_pad_with_none() {
        let real = summary(Some(1.0), vec![1.0, 1.0], vec![1, 1]);
        let gen = summary(Some(1.0), vec![1.0], vec![1]);
        assert_eq!(relative_accuracy(&real, &gen).per_class, vec![Some(1.0), None]);
    }
}
