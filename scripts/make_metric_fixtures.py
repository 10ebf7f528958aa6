#!/usr/bin/env python3
"""Reference classification metrics for `tests/metrics_sklearn.rs`.

Writes `tests/fixtures/metrics/classification_cases.json`: for each case, the labels
(`y_true`, `y_pred`, class count) and what scikit-learn says about them:

- `accuracy_score(y_true, y_pred)` (null for an empty set),
- `precision_recall_fscore_support(y_true, y_pred, labels=range(n), average=None,
  zero_division=0)`,
- `confusion_matrix(y_true, y_pred, labels=range(n))` (rows = true class, columns = predicted),
- Wilson 95% intervals for the accuracy and for each class's recall, from
  `statsmodels.stats.proportion.proportion_confint(method="wilson")` when statsmodels is
  installed, otherwise from the same formula in numpy (the JSON's `wilson_source` says which).

The Rust side rebuilds each confusion matrix from the labels and must agree to 1e-12.
CI never runs this script; the JSON is committed.

Run from the repository root:

    python -m venv /tmp/pyref
    /tmp/pyref/bin/pip install numpy scikit-learn statsmodels
    /tmp/pyref/bin/python scripts/make_metric_fixtures.py
"""

import json
import os
import sys

import numpy as np
import sklearn
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

try:
    import statsmodels
    from statsmodels.stats.proportion import proportion_confint

    WILSON_SOURCE = f"statsmodels {statsmodels.__version__} proportion_confint(method='wilson')"
except ImportError:  # fall back to the formula statsmodels implements
    proportion_confint = None
    WILSON_SOURCE = "numpy formula (statsmodels not installed)"

# norm.isf(0.025), as statsmodels computes it for alpha=0.05.
Z95 = 1.959963984540054
OUT = os.path.join("tests", "fixtures", "metrics", "classification_cases.json")


def wilson(successes, trials):
    """Wilson score 95% interval as [low, high], or None for 0 trials."""
    if trials == 0:
        return None
    if proportion_confint is not None:
        low, high = proportion_confint(successes, trials, alpha=0.05, method="wilson")
        return [float(low), float(high)]
    n = float(trials)
    q = successes / n
    z2 = Z95**2
    denom = 1 + z2 / n
    center = (q + z2 / (2 * n)) / denom
    dist = Z95 * np.sqrt(q * (1.0 - q) / n + z2 / (4.0 * n**2)) / denom
    return [float(np.clip(center - dist, 0, 1)), float(np.clip(center + dist, 0, 1))]


def cases():
    rng = np.random.default_rng(20240611)
    yield "normal_4_class", 4, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 0, 1, 2, 3], [
        0, 0, 1, 1, 1, 2, 2, 2, 0, 3, 3, 1, 0, 1, 3, 3]
    # class 2 is present in y_true but never predicted: precision and F1 hit zero_division.
    yield "class_never_predicted", 3, [0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 0, 1, 0]
    # class 1 never occurs in y_true (recall hits zero_division) but is predicted once;
    # class 3 occurs nowhere at all.
    yield "empty_true_class", 4, [0, 0, 0, 2, 2, 2], [0, 1, 0, 2, 2, 0]
    yield "perfect", 3, [0, 1, 2, 2, 1, 0, 1], [0, 1, 2, 2, 1, 0, 1]
    # 10 classes, a few hundred items, a mostly-right classifier with class-dependent skill.
    n = 10
    y_true = rng.integers(0, n, size=347)
    skill = np.linspace(0.3, 0.95, n)
    right = rng.random(y_true.size) < skill[y_true]
    y_pred = np.where(right, y_true, rng.integers(0, n, size=y_true.size))
    yield "random_10_class", n, y_true.tolist(), y_pred.tolist()
    yield "all_wrong", 3, [0, 1, 2, 0, 1, 2], [1, 2, 0, 2, 0, 1]


def case_record(name, n, y_true, y_pred):
    labels = list(range(n))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    p, r, f, s = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    correct = int(np.trace(cm))
    total = int(cm.sum())
    return {
        "name": name,
        "num_classes": n,
        "y_true": [int(v) for v in y_true],
        "y_pred": [int(v) for v in y_pred],
        "accuracy": float(accuracy_score(y_true, y_pred)) if total else None,
        "accuracy_ci95": wilson(correct, total),
        "precision": [float(v) for v in p],
        "recall": [float(v) for v in r],
        "f1": [float(v) for v in f],
        "support": [int(v) for v in s],
        "predicted": [int(v) for v in cm.sum(axis=0)],
        "recall_ci95": [wilson(int(cm[c, c]), int(cm[c].sum())) for c in labels],
        "confusion": cm.astype(int).tolist(),
    }


def main():
    doc = {
        "generator": "scripts/make_metric_fixtures.py",
        "sklearn_version": sklearn.__version__,
        "numpy_version": np.__version__,
        "wilson_source": WILSON_SOURCE,
        "z95": Z95,
        "cases": [case_record(*c) for c in cases()],
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    # One case per line keeps the file small and its diffs readable. Python's json writes the
    # shortest float string that round-trips, so no precision is lost.
    head = {k: v for k, v in doc.items() if k != "cases"}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    body = ",\n".join("  " + json.dumps(c) for c in doc["cases"])
    with open(OUT, "w") as fh:
        fh.write("{\n" + "\n".join(lines) + '\n "cases": [\n' + body + "\n ]\n}\n")
    json.load(open(OUT))  # the hand-assembled layout must still be valid JSON
    print(f"wrote {OUT} ({len(doc['cases'])} cases, wilson: {WILSON_SOURCE})", file=sys.stderr)


if __name__ == "__main__":
    main()
