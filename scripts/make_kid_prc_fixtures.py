#!/usr/bin/env python3
"""Reference KID, precision/recall, density and coverage for tests/kid_prc_maths.rs.

Run from the repository root (CI never runs this; the JSON is committed):

    pip install --target /tmp/pyref torch numpy torch-fidelity==0.4.0 prdc scikit-learn
    PYTHONPATH=/tmp/pyref python scripts/make_kid_prc_fixtures.py

Features are not stored: they are drawn from the counter-based PRNG of
scripts/make_resnet_fixtures.py (`uniform01` / `uniform_f32`, re-implemented in
tests/common/prng.rs), so the Rust test regenerates the same float32 values:

* `uniform`: float32(lo + (hi - lo) * u_i), row-major n x d (the script's `uniform_f32`);
* `grid`: float32(floor(u_i * levels) * step): few distinct values, so many distances are
  exactly equal (ties at the k-NN radius, duplicated rows), and every distance is exact in
  float32 and float64 arithmetic alike.

Written to tests/fixtures/kid_prc/reference.json:

* `kid`: torch-fidelity 0.4.0 `kid_features_to_metric` (polynomial kernel (x.y/d + 1)^3,
  unbiased MMD^2, numpy RandomState(rng_seed) subsets) on the features given as float64 tensors
  (numpy then computes the kernels in float64, as rcaflow does), with `mmds` (every subset's
  value, for the standard error) when there are several subsets. `mean_float32` is the same
  call on float32 tensors, torch-fidelity's usual dtype, for the record: its kernel sums are
  float32, so it differs from the float64 value by ~1e-4 relative or more.
* `prc`: torch-fidelity 0.4.0 `prc_features_to_metric` (features_1 = generated, features_2 =
  real; radius = the (k+1)-th smallest distance of a point to its own set, itself included;
  inside = distance <= radius) on float64 tensors, and prdc 0.2 `compute_prdc` (Naeem et al.
  2020; strict `<`) for density and coverage (its precision/recall are kept as
  `prdc_precision`/`prdc_recall`: they differ from torch-fidelity's only on ties).
  `precision_float32`/`recall_float32` are torch-fidelity on float32 tensors, for the record.
"""

import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from make_resnet_fixtures import uniform01, uniform_f32  # noqa: E402
from prdc import compute_prdc  # noqa: E402
from torch_fidelity.metric_kid import kid_features_to_metric  # noqa: E402
from torch_fidelity.metric_prc import prc_features_to_metric  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "kid_prc")


def features(spec):
    """A feature set from its spec (see the module docstring); the Rust test reads the same spec."""
    kind, key, n, d = spec["kind"], spec["key"], spec["n"], spec["d"]
    if kind == "uniform":
        return uniform_f32(key, (n, d), spec["lo"], spec["hi"])
    if kind == "grid":
        u = uniform01(key, n * d)
        return (np.floor(u * spec["levels"]) * spec["step"]).astype(np.float32).reshape(n, d)
    raise ValueError(kind)


def uniform(key, n, d, lo, hi):
    return {"kind": "uniform", "key": key, "n": n, "d": d, "lo": lo, "hi": hi}


def grid(key, n, d, levels, step):
    return {"kind": "grid", "key": key, "n": n, "d": d, "levels": levels, "step": step}


def kid_case(name, gen, real, subsets, subset_size, seed=2020):
    f1, f2 = features(gen), features(real)
    kw = dict(kid_subsets=subsets, kid_subset_size=subset_size, rng_seed=seed, verbose=False)
    out64 = kid_features_to_metric(torch.from_numpy(f1.astype(np.float64)), torch.from_numpy(f2.astype(np.float64)), **kw)
    out32 = kid_features_to_metric(torch.from_numpy(f1), torch.from_numpy(f2), **kw)
    case = {
        "name": name, "generated": gen, "real": real, "subsets": subsets, "subset_size": subset_size,
        "rng_seed": seed,
        "mean": out64["kernel_inception_distance_mean"], "std": out64["kernel_inception_distance_std"],
        "mean_float32": out32["kernel_inception_distance_mean"],
    }
    if subsets > 1:
        # The same draw as kid_features_to_metric's, to keep every subset's value.
        from torch_fidelity.metric_kid import kernel_mmd

        rng = np.random.RandomState(seed)
        a, b = f1.astype(np.float64), f2.astype(np.float64)
        mmds = []
        for _ in range(subsets):
            x = a[rng.choice(len(a), subset_size, replace=False)]
            y = b[rng.choice(len(b), subset_size, replace=False)]
            mmds.append(float(kernel_mmd(x, y, kid_kernel="poly", kid_kernel_poly_degree=3,
                                         kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1)))
        assert abs(np.mean(mmds) - case["mean"]) <= 1e-12 * abs(case["mean"]) + 1e-15
        case["mmds"] = mmds
    print(f"kid {name}: mean {case['mean']!r} std {case['std']!r} (float32 {case['mean_float32']!r})")
    return case


def prc_case(name, gen, real, k):
    f1, f2 = features(gen), features(real)
    kw = dict(prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    out64 = prc_features_to_metric(torch.from_numpy(f1.astype(np.float64)), torch.from_numpy(f2.astype(np.float64)), **kw)
    out32 = prc_features_to_metric(torch.from_numpy(f1), torch.from_numpy(f2), **kw)
    # save_cpu_ram=True takes the batched path; it must agree with the full one.
    part = prc_features_to_metric(torch.from_numpy(f1.astype(np.float64)), torch.from_numpy(f2.astype(np.float64)),
                                  **{**kw, "save_cpu_ram": True})
    assert part["precision"] == out64["precision"] and part["recall"] == out64["recall"]
    prdc = compute_prdc(real_features=f2.astype(np.float64), fake_features=f1.astype(np.float64), nearest_k=k)
    case = {
        "name": name, "generated": gen, "real": real, "k": k,
        "precision": out64["precision"], "recall": out64["recall"],
        "precision_float32": out32["precision"], "recall_float32": out32["recall"],
        "density": float(prdc["density"]), "coverage": float(prdc["coverage"]),
        "prdc_precision": float(prdc["precision"]), "prdc_recall": float(prdc["recall"]),
    }
    print(f"prc {name}: " + ", ".join(f"{key} {case[key]!r}" for key in
          ("precision", "recall", "density", "coverage", "prdc_precision", "prdc_recall", "precision_float32", "recall_float32")))
    return case


def main():
    os.makedirs(OUT, exist_ok=True)
    kid = [
        # One subset of every feature: the estimator does not depend on the draw.
        kid_case("one_subset_pool3", uniform("kid/one/gen", 120, 2048, 0.0, 1.0), uniform("kid/one/real", 120, 2048, 0.05, 1.1), 1, 120),
        kid_case("one_subset_narrow", uniform("kid/narrow/gen", 300, 64, 0.0, 2.0), uniform("kid/narrow/real", 300, 64, 0.0, 1.8), 1, 300),
        kid_case("one_subset_grid", grid("kid/grid/gen", 90, 16, 3, 0.5), grid("kid/grid/real", 90, 16, 3, 0.5), 1, 90),
        # Random subsets: torch-fidelity's defaults (100 subsets), smaller sets.
        kid_case("subsets", uniform("kid/sub/gen", 400, 64, 0.0, 2.0), uniform("kid/sub/real", 350, 64, 0.0, 1.8), 100, 100),
    ]
    prc = [
        prc_case("continuous", uniform("prc/cont/gen", 300, 64, 0.0, 1.0), uniform("prc/cont/real", 250, 64, 0.1, 1.1), 3),
        prc_case("continuous_k5", uniform("prc/cont/gen", 300, 64, 0.0, 1.0), uniform("prc/cont/real", 250, 64, 0.1, 1.1), 5),
        prc_case("pool3", uniform("prc/pool3/gen", 120, 2048, 0.0, 1.0), uniform("prc/pool3/real", 100, 2048, 0.02, 1.0), 3),
        # Few distinct values: exact ties at the radii and duplicated rows.
        prc_case("ties", grid("prc/ties/gen", 200, 6, 3, 0.5), grid("prc/ties/real", 150, 6, 3, 0.5), 3),
        prc_case("ties_shifted", grid("prc/ties2/gen", 160, 4, 4, 0.25), grid("prc/ties2/real", 180, 4, 3, 0.5), 3),
    ]
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump({"torch_fidelity": "0.4.0", "kid": kid, "prc": prc}, f, indent=1)


if __name__ == "__main__":
    main()
