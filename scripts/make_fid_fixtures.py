#!/usr/bin/env python3
"""Reference FID and Inception Score values for tests/fid_maths.rs.

Run from the repository root (CI never runs this; the JSON is committed):

    python -m venv /tmp/pyref
    /tmp/pyref/bin/pip install torch numpy scipy pytorch-fid
    /tmp/pyref/bin/python scripts/make_fid_fixtures.py

Features and logits are not stored: they are drawn from the counter-based PRNG of
scripts/make_resnet_fixtures.py (`uniform_f32`, re-implemented in tests/common/prng.rs), so the
Rust test regenerates the same float32 values. Written to tests/fixtures/fid/reference.json:

* `frechet`: feature sets (key, n, d, affine scale) -> float64 mean and `np.cov(rowvar=False)`
  (ddof=1), and `pytorch_fid.fid_score.calculate_frechet_distance` between two sets, for
  full-rank (n > d) and rank-deficient (n <= d) statistics. The mean/covariance of the first
  full-rank set are stored whole, to check the streaming moments. For the rank-deficient cases
  pytorch-fid's value carries rounding noise of ~1e-8 relative (the square roots of the
  rounding-size eigenvalues of the singular product S1 S2; see src/metrics/fid.rs), so the Rust
  test holds them to 2e-8 and the full-rank ones to 1e-12. scipy 1.13 and 1.17 give the same
  values to 2e-10 and never take pytorch-fid's "adding eps to diagonal" branch on these inputs.
* `inception_score`: random 1008-way logits; IS with an image's split = its position modulo the
  number of splits (rcaflow's rule), softmax and KL in float64, mean and population std
  (ddof=0). For the record, `contiguous_chunks` gives the score with the contiguous-chunk rule
  of other implementations, which differs.
* `per_class`: per-class feature sets (one real and one generated set per class, d = 48 as the
  `frechet` cases), each class's mean/covariance and `calculate_frechet_distance` between its
  real and generated statistics, the mean of those values, and whether a side has no more
  images than dimensions (class 2: 30 generated images of 48-d features). tests/fid_maths.rs
  streams the sets through the fid sink's accumulator (`per_class = true`) and compares.
"""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from make_resnet_fixtures import uniform_f32  # noqa: E402
from pytorch_fid.fid_score import calculate_frechet_distance  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "fid")


def features(key, n, d, scale, offset):
    """Correlated, non-negative features like pool3's: uniform draws mixed by a fixed matrix."""
    # Computed in float64 and rounded once to float32, so the Rust test gets the same values.
    base = uniform_f32(key, (n, d), 0.0, 1.0).astype(np.float64)
    mix = uniform_f32(key + "/mix", (d, d), 0.0, 1.0 / d).astype(np.float64)
    x = (base @ mix) * scale + base * 0.5 + offset
    return x.astype(np.float32)


def stats(x):
    x = x.astype(np.float64)
    return x.mean(axis=0), np.cov(x, rowvar=False)


def frechet_case(name, a, b):
    xa, xb = features(*a), features(*b)
    (m1, s1), (m2, s2) = stats(xa), stats(xb)
    fid = float(calculate_frechet_distance(m1, s1, m2, s2))
    print(f"{name}: n={a[1]}/{b[1]} d={a[2]} fid={fid!r}")
    return {"name": name, "a": list(a), "b": list(b), "fid": fid}


def inception_score(logits, splits, split_of):
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    scores = []
    for k in range(splits):
        part = p[split_of == k]
        py = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(part) - np.log(py))).sum(axis=1)
        scores.append(float(np.exp(kl.mean())))
    return scores


def main():
    os.makedirs(OUT, exist_ok=True)
    # (key, n, d, scale, offset)
    full_a = ("fid/full-a", 600, 48, 4.0, 0.0)
    cases = [
        frechet_case("full_rank", full_a, ("fid/full-b", 500, 48, 5.0, 0.05)),
        frechet_case("full_rank_wide", ("fid/wide-a", 700, 256, 4.0, 0.0), ("fid/wide-b", 650, 256, 3.0, 0.1)),
        frechet_case("rank_deficient", ("fid/rd-a", 30, 48, 4.0, 0.0), ("fid/rd-b", 25, 48, 5.0, 0.05)),
        frechet_case("rank_deficient_one_side", ("fid/rd1-a", 500, 48, 4.0, 0.0), ("fid/rd1-b", 20, 48, 5.0, 0.05)),
    ]
    m, s = stats(features(*full_a))

    per_class = []
    for c, (n_real, n_gen, scale) in enumerate([(120, 100, 5.0), (90, 80, 3.0), (70, 30, 6.0)]):
        real = (f"fid/class{c}/real", n_real, 48, 4.0, 0.0)
        gen = (f"fid/class{c}/gen", n_gen, 48, scale, 0.05 * c)
        case = frechet_case(f"class{c}", real, gen)
        case["rank_deficient"] = min(n_real, n_gen) <= 48
        per_class.append(case)
    per_class_mean = float(np.mean([c["fid"] for c in per_class]))
    print(f"per-class mean {per_class_mean!r}")

    n, k, splits = 60, 1008, 10
    logits = uniform_f32("is/logits", (n, k), -6.0, 6.0).astype(np.float32)
    modulo = inception_score(logits, splits, np.arange(n) % splits)
    chunks = inception_score(logits, splits, np.arange(n) // (n // splits))
    out = {
        "frechet": cases,
        "per_class": {"classes": per_class, "mean": per_class_mean},
        "moments": {"set": list(full_a), "mean": m.tolist(), "cov": s.ravel().tolist()},
        "inception_score": {
            "key": "is/logits", "n": n, "classes": k, "splits": splits, "lo": -6.0, "hi": 6.0,
            "per_split": modulo, "mean": float(np.mean(modulo)), "std": float(np.std(modulo)),
            "contiguous_chunks": {"mean": float(np.mean(chunks)), "std": float(np.std(chunks))},
        },
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(out, f, indent=1)
    print("IS modulo", np.mean(modulo), np.std(modulo), "chunks", np.mean(chunks), np.std(chunks))


if __name__ == "__main__":
    main()
