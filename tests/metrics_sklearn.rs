//! `metrics::rca` against scikit-learn and statsmodels.
//!
//! The fixture is written by `scripts/make_metric_fixtures.py` (sklearn `accuracy_score`,
//! `precision_recall_fscore_support(zero_division=0)`, `confusion_matrix`; statsmodels Wilson
//! intervals). Each confusion matrix is rebuilt here from the raw labels, so the test covers
//! counting as well as the formulas.

use rcaflow::metrics::rca::{relative_accuracy, summarize, Confusion, Interval};
use serde::Deserialize;

const TOL: f64 = 1e-12;

#[derive(Deserialize)]
struct Fixture {
    z95: f64,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    num_classes: usize,
    y_true: Vec<usize>,
    y_pred: Vec<usize>,
    accuracy: Option<f64>,
    accuracy_ci95: Option<[f64; 2]>,
    precision: Vec<f64>,
    recall: Vec<f64>,
    f1: Vec<f64>,
    support: Vec<u64>,
    predicted: Vec<u64>,
    recall_ci95: Vec<Option<[f64; 2]>>,
    confusion: Vec<Vec<u64>>,
}

fn load() -> anyhow::Result<Fixture> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics/classification_cases.json");
    let text = std::fs::read_to_string(path)?;
    Ok(serde_json::from_str(&text)?)
}

fn close(what: &str, case: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= TOL, "{case}: {what} = {got:?}, sklearn says {want:?}");
}

fn close_all(what: &str, case: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{case}: {what} length");
    for (c, (g, w)) in got.iter().zip(want).enumerate() {
        close(&format!("{what}[{c}]"), case, *g, *w);
    }
}

fn close_interval(what: &str, case: &str, got: Option<Interval>, want: Option<[f64; 2]>) {
    match (got, want) {
        (None, None) => {}
        (Some(g), Some([lo, hi])) => {
            close(&format!("{what}.low"), case, g.low, lo);
            close(&format!("{what}.high"), case, g.high, hi);
        }
        (g, w) => panic!("{case}: {what} = {g:?}, reference says {w:?}"),
    }
}

#[test]
fn summaries_match_sklearn() -> anyhow::Result<()> {
    let fixture = load()?;
    assert_eq!(fixture.z95, rcaflow::metrics::rca::Z95);
    assert!(fixture.cases.len() >= 6);
    for case in &fixture.cases {
        let name = case.name.as_str();
        assert_eq!(case.y_true.len(), case.y_pred.len(), "{name}");
        let mut confusion = Confusion::new(case.num_classes);
        for (&t, &p) in case.y_true.iter().zip(&case.y_pred) {
            confusion.add(t, p)?;
        }
        assert_eq!(confusion.rows(), case.confusion, "{name}: confusion matrix");

        let s = summarize(&confusion);
        assert_eq!(s.confusion, case.confusion, "{name}: summary confusion");
        assert_eq!(s.total, case.y_true.len() as u64, "{name}: total");
        match (s.accuracy, case.accuracy) {
            (Some(g), Some(w)) => close("accuracy", name, g, w),
            (g, w) => assert_eq!(g, w, "{name}: accuracy"),
        }
        close_interval("accuracy_ci95", name, s.accuracy_ci95, case.accuracy_ci95);
        close_all("precision", name, &s.precision, &case.precision);
        close_all("recall", name, &s.recall, &case.recall);
        close_all("f1", name, &s.f1, &case.f1);
        assert_eq!(s.support, case.support, "{name}: support");
        assert_eq!(s.predicted, case.predicted, "{name}: predicted");
        assert_eq!(s.recall_ci95.len(), case.recall_ci95.len(), "{name}");
        for (c, (g, w)) in s.recall_ci95.iter().zip(&case.recall_ci95).enumerate() {
            close_interval(&format!("recall_ci95[{c}]"), name, *g, *w);
        }
    }
    Ok(())
}

#[test]
fn merged_batches_equal_one_pass() -> anyhow::Result<()> {
    // A run accumulates per-batch matrices; the merge must equal counting everything at once.
    let fixture = load()?;
    let case = fixture.cases.iter().find(|c| c.name == "random_10_class").ok_or_else(|| anyhow::anyhow!("random_10_class case missing"))?;
    let mut total = Confusion::new(case.num_classes);
    let pairs: Vec<(usize, usize)> = case.y_true.iter().copied().zip(case.y_pred.iter().copied()).collect();
    for chunk in pairs.chunks(64) {
        let mut batch = Confusion::new(case.num_classes);
        for &(t, p) in chunk {
            batch.add(t, p)?;
        }
        total.merge(&batch)?;
    }
    assert_eq!(total.rows(), case.confusion);
    Ok(())
}

fn confusion(n: usize, rows: &[&[u64]]) -> anyhow::Result<Confusion> {
    let mut c = Confusion::new(n);
    for (t, row) in rows.iter().enumerate() {
        for (p, &k) in row.iter().enumerate() {
            c.add_count(t, p, k)?;
        }
    }
    Ok(c)
}

#[test]
fn rca_hand_computed() -> anyhow::Result<()> {
    // Real: 3 classes of 10 items each; recalls 0.9, 0.8, 0.5 → accuracy 22/30.
    let real = confusion(3, &[&[9, 1, 0], &[2, 8, 0], &[3, 2, 5]])?;
    // Generated: 20 items per class; recalls 0.45, 0.8, 0.75 → accuracy 40/60.
    let gen = confusion(3, &[&[9, 11, 0], &[0, 16, 4], &[5, 0, 15]])?;
    let rca = relative_accuracy(&summarize(&real), &summarize(&gen));
    let global = rca.global.ok_or_else(|| anyhow::anyhow!("global rca missing"))?;
    close("global", "hand", global, (40.0 / 60.0) / (22.0 / 30.0)); // = 10/11
    close("global", "hand", global, 10.0 / 11.0);
    let want = [0.5, 1.0, 1.5];
    for (c, (g, w)) in rca.per_class.iter().zip(want).enumerate() {
        let g = g.ok_or_else(|| anyhow::anyhow!("class {c} rca missing"))?;
        close(&format!("per_class[{c}]"), "hand", g, w);
    }
    Ok(())
}

#[test]
fn rca_missing_evidence_is_none() -> anyhow::Result<()> {
    // Class 0: recall 1.0 real, 0.5 generated. Class 1: oracle never right on real data → undefined.
    // Class 2: no real items. Class 3: nothing generated for it.
    let real = confusion(4, &[&[4, 0, 0, 0], &[0, 0, 4, 0], &[0, 0, 0, 0], &[0, 0, 0, 4]])?;
    let gen = confusion(4, &[&[2, 2, 0, 0], &[0, 4, 0, 0], &[0, 0, 4, 0], &[0, 0, 0, 0]])?;
    let real_s = summarize(&real);
    let gen_s = summarize(&gen);
    let rca = relative_accuracy(&real_s, &gen_s);
    // accuracy_real = 8/12, accuracy_gen = 10/12.
    let global = rca.global.ok_or_else(|| anyhow::anyhow!("global rca missing"))?;
    close("global", "missing", global, 10.0 / 8.0);
    assert_eq!(rca.per_class, vec![Some(0.5), None, None, None]);

    // Nothing generated at all: no global RCA either.
    let none = relative_accuracy(&real_s, &summarize(&Confusion::new(4)));
    assert_eq!(none.global, None);
    assert_eq!(none.per_class, vec![None; 4]);
    Ok(())
}
