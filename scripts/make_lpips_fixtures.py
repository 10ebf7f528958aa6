#!/usr/bin/env python3
"""Reference distances for LPIPS (src/models/lpips.rs) from the `lpips` package v0.1.

Run (any Python with torch, torchvision, numpy and lpips 0.1.4; CI never runs this; nothing is
downloaded, both networks are built with random weights):

    pip install lpips                                  # e.g. /tmp/pyref/bin/pip install lpips
    python scripts/make_lpips_fixtures.py              # writes tests/fixtures/lpips/
    python scripts/make_lpips_fixtures.py --stats      # also prints per-layer distances
    python scripts/make_lpips_fixtures.py --pth DIR    # also saves the random weights as .pth

The metric is the package's own ``lpips.LPIPS(net=..., version='0.1', pretrained=False,
pnet_rand=True)`` (so neither torchvision's ImageNet weights nor the lpips lin weights are
fetched), whose backbone and lin layers are then filled from the PRNG below; images go in as
``lpips.im2tensor`` makes them (uint8 / 127.5 - 1, as float32).

What it produces, in tests/fixtures/lpips/ (about 0.4 MB in all, committed):

* ``size32.json`` (4 pairs at 32x32, the last one identical), ``size64.json`` (2 pairs at
  64x64) and ``odd31x45.json`` (2 pairs at 31x45: alexnet's smallest height, and non-square):
  the uint8 NCHW pixels of both sides of each pair, and for each net ("alex", "vgg") the
  reference distances [N] plus the float32 package's own max abs difference to them.
* ``keys.json``: for each net, every (key, shape) of the torchvision ``features.*`` tensors the
  backbone uses (as torchvision's state_dict names them, i.e. the keys of
  ``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``) and of the lpips lin layers
  (``lin{k}.model.1.weight``, the keys of lpips' ``weights/v0.1/{alex,vgg}.pth``), written from
  torch itself, so the Rust test rebuilds both files independently of the Rust model.

The weights are NOT stored (alexnet's features alone are 2.5M values, vgg16's 14.7M): they come
from the counter-based PRNG of scripts/make_resnet_fixtures.py (imported from it;
tests/common/prng.rs is the bit-exact Rust port), keyed ``"{net}/{torchvision or lin key}"``,
with per-tensor ranges from `tensor_range` below (tests/lpips_parity.rs mirrors it). Convs get
He-uniform weights and small biases, so the ReLU features stay O(1) and alive through all five
slices; lin weights are non-negative like the trained ones (uniform in [0, 0.5): the trained
alex/vgg lin weights lie in [0, 1.3] with means 0.04-0.11), so distances have LPIPS' usual scale.

Image pairs: side 0 is PRNG noise; side 1 blends it with another noise image,
``round((1 - t) * x0 + t * other)``, with a different t per pair, so the distances spread out.

The references are computed in float64 (the float32 weights, the scaling layer's float32
constants and im2tensor's float32 inputs are exactly representable), so the Rust test's
tolerance measures candle's float32 error alone; the float32 package's own error against them is
recorded next to them for scale.
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_resnet_fixtures import images_u8, uniform_f32  # noqa: E402  (the shared PRNG)

import lpips  # noqa: E402

NETS = ["alex", "vgg"]
# Conv weights are uniform(-a, a) with a = CONV_GAIN * sqrt(3 / fan_in): He-uniform, so the
# second moment survives conv + ReLU through vgg16's 13 convs.
CONV_GAIN = math.sqrt(2.0)
LIN_MAX = 0.5

# (case name, height, width, blend factor t per pair; None: an identical pair).
CASES = [
    ("size32", 32, 32, [0.1, 0.4, 1.0, None]),
    ("size64", 64, 64, [0.25, 0.7]),
    ("odd31x45", 31, 45, [0.15, 0.9]),
]


def tensor_range(key: str, shape):
    """(lo, hi) for one tensor (torchvision or lin key); tests/lpips_parity.rs mirrors it."""
    if key.startswith("lin"):  # lin{k}.model.1.weight [1, C, 1, 1]
        return (0.0, LIN_MAX)
    if len(shape) == 4:  # conv weight [out, in, kh, kw]
        fan_in = shape[1] * shape[2] * shape[3]
        a = CONV_GAIN * math.sqrt(3.0 / fan_in)
        return (-a, a)
    if key.endswith(".bias"):  # conv bias
        return (-0.1, 0.1)
    raise ValueError(f"no range for {key} {shape}")


def torchvision_key(lpips_key: str) -> str:
    """`net.slice2.3.weight` -> `features.3.weight` (lpips' slices keep torchvision's indices)."""
    parts = lpips_key.split(".")
    assert parts[0] == "net" and parts[1].startswith("slice"), lpips_key
    return ".".join(["features"] + parts[2:])


def build(net: str):
    """lpips.LPIPS with the PRNG weights, and those weights as the two files users have:
    {torchvision features key: tensor} and {lin key: tensor}."""
    model = lpips.LPIPS(net=net, version="0.1", pretrained=False, pnet_rand=True, verbose=False)
    sd = model.state_dict()
    new = {}
    backbone, lin = {}, {}
    for key, t in sd.items():
        shape = tuple(t.shape)
        if key.startswith("scaling_layer."):
            new[key] = t  # lpips' own float32 constants
            continue
        if key.startswith("lins."):
            continue  # the same modules as lin0..lin4, registered twice; filled through those
        if key.startswith("net."):
            name = torchvision_key(key)
            out = backbone
        else:
            assert key.startswith("lin") and key.endswith(".model.1.weight"), key
            name = key
            out = lin
        lo, hi = tensor_range(name, shape)
        new[key] = out[name] = torch.from_numpy(uniform_f32(f"{net}/{name}", shape, lo, hi))
    for k in range(len(lin)):
        new[f"lins.{k}.model.1.weight"] = new[f"lin{k}.model.1.weight"]
    model.load_state_dict(new, strict=True)
    return model.eval(), backbone, lin


def pairs(case, h, w, ts):
    n = len(ts)
    x0 = images_u8(f"images/lpips/{case}/x0", n, h, w)
    other = images_u8(f"images/lpips/{case}/other", n, h, w).astype(np.float64)
    x1 = x0.copy()
    for i, t in enumerate(ts):
        if t is not None:
            blend = (1.0 - t) * x0[i].astype(np.float64) + t * other[i]
            x1[i] = np.clip(np.round(blend), 0, 255).astype(np.uint8)
    return x0, x1


def im2tensor(pixels: np.ndarray) -> torch.Tensor:
    """lpips.im2tensor for an NCHW batch: float64 pixels / 127.5 - 1, stored as float32."""
    return torch.from_numpy((pixels / (255.0 / 2.0) - 1.0).astype(np.float32))


def distances(model, x0, x1, dtype):
    with torch.no_grad():
        m = model.to(dtype)
        d, per_layer = m(im2tensor(x0).to(dtype), im2tensor(x1).to(dtype), retPerLayer=True)
    return d.reshape(-1).double(), [r.reshape(-1).double() for r in per_layer]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "lpips"))
    parser.add_argument("--stats", action="store_true", help="print per-layer distances")
    parser.add_argument("--pth", help="also save the random weights here as zip .pth files")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    models, keys = {}, {}
    for net in NETS:
        model, backbone, lin = build(net)
        models[net] = model
        keys[net] = {
            "backbone": [[k, list(t.shape)] for k, t in backbone.items()],
            "lin": [[k, list(t.shape)] for k, t in lin.items()],
        }
        n_values = sum(t.numel() for t in backbone.values())
        print(f"{net}: {len(backbone)} backbone tensors ({n_values / 1e6:.1f}M values), "
              f"{len(lin)} lin tensors")
        if args.pth:
            os.makedirs(args.pth, exist_ok=True)
            torch.save(backbone, os.path.join(args.pth, f"{net}_features.pth"))
            torch.save(lin, os.path.join(args.pth, f"{net}_lin.pth"))
            print(f"saved {net} weights to {args.pth}")
    with open(os.path.join(args.out, "keys.json"), "w") as f:
        json.dump(keys, f, separators=(",", ":"))
        f.write("\n")

    for case, h, w, ts in CASES:
        x0, x1 = pairs(case, h, w, ts)
        doc = {
            "case": case,
            "n": len(ts),
            "height": h,
            "width": w,
            "blend": ts,
            "x0": x0.reshape(-1).tolist(),
            "x1": x1.reshape(-1).tolist(),
        }
        for net in NETS:
            ref, per_layer = distances(models[net], x0, x1, torch.float64)
            f32, _ = distances(models[net], x0, x1, torch.float32)
            diff = (ref - f32).abs().max().item()
            print(f"{case} {net}: distances {[round(v, 5) for v in ref.tolist()]}, "
                  f"torch f32 vs f64 max abs diff {diff:.2e}")
            if args.stats:
                for k, r in enumerate(per_layer):
                    print(f"    layer {k}: {[round(v, 5) for v in r.tolist()]}")
            doc[net] = {"distances": ref.tolist(), "torch_f32_max_abs_diff": diff}
        doc["generator"] = ("scripts/make_lpips_fixtures.py, torch " + torch.__version__
                            + ", lpips " + getattr(lpips, "__version__", "0.1.4"))
        with open(os.path.join(args.out, case + ".json"), "w") as f:
            json.dump(doc, f, separators=(",", ":"))
            f.write("\n")
    print(f"wrote fixtures to {os.path.normpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
