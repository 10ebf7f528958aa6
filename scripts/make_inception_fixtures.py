#!/usr/bin/env python3
"""Reference outputs for the FID Inception (src/models/inception.rs) from pytorch-fid.

Run (any Python with torch, torchvision, numpy and pytorch-fid; CI never runs this; nothing is
downloaded, the network is built with random weights):

    pip install pytorch-fid                              # e.g. /tmp/pyref/bin/pip install ...
    python scripts/make_inception_fixtures.py            # writes tests/fixtures/inception/
    python scripts/make_inception_fixtures.py --stats    # also prints activation scales per block
    python scripts/make_inception_fixtures.py --pth /tmp/fid_random.pth
        # also saves the random weights as torch.save(model.state_dict()) (95 MB, not committed)
        # for the ignored test that loads them from a .pth:
        # RCAFLOW_INCEPTION_PTH=/tmp/fid_random.pth cargo test --test inception_parity -- --ignored

The network is pytorch-fid's ``fid_inception_v3()`` minus its download: torchvision's
``inception_v3(num_classes=1008, aux_logits=False, init_weights=False, weights=None)`` with
Mixed_5b/c/d, Mixed_6b..e, Mixed_7b and Mixed_7c replaced by ``pytorch_fid.inception``'s
FIDInceptionA, FIDInceptionC, FIDInceptionE_1 and FIDInceptionE_2, exactly as that function
does. It is then wrapped in pytorch-fid's own ``InceptionV3([3], resize_input=True,
normalize_input=True)`` (its ``fid_inception_v3`` is swapped for the builder above while the
wrapper is constructed), so the input pipeline (bilinear resize to 299x299 with
align_corners=False, then 2x - 1) and the block order are pytorch-fid's code, not a copy.

What it produces, in tests/fixtures/inception/ (about 0.2 MB in all, committed):

* ``up32.json`` (two 32x32 images: upsampled), ``native299.json`` (one 299x299 image: no
  resize) and ``odd45x71.json`` (one 45x71 image: non-square upsampling): for each, the image
  size, the PRNG key of the uint8 pixels (the Rust test regenerates them; a 299x299 image is too
  big to store as JSON) with their sum as a check, and pytorch-fid's pool3 features [N, 2048] and
  logits [N, 1008] (``pool3 @ fc.weight.T``, no bias: what the Inception Score uses).
* ``state_dict_keys.json``: every (key, shape) of the model's state_dict, in its order, written
  from torch itself, so the Rust test rebuilds the checkpoint independently of the Rust model.

The weights are NOT stored (24M parameters): they come from the counter-based PRNG of
scripts/make_resnet_fixtures.py (imported from it; tests/common/prng.rs is the bit-exact Rust
port), with per-tensor ranges from `tensor_range` below (tests/inception_parity.rs mirrors it).
Convolutions get He-uniform ranges, so activations stay O(1) through the ~20 conv layers of the
deepest path without residual connections, and BatchNorm running statistics are far from the
identity so that eval-mode BatchNorm (eps = 0.001 here) is really exercised.

The references are computed in float64 (the float32 weights and the uint8 inputs are exactly
representable), so the Rust test's tolerance measures candle's float32 error alone; pytorch-fid's
own float32 results' relative error against them is recorded next to them for scale. Values are
stored with 10 significant digits (far below the 1e-4 tolerance).
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torchvision
from pytorch_fid import inception as fid_inception

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_resnet_fixtures import images_u8, uniform_f32  # noqa: E402  (the shared PRNG)

NUM_CLASSES = 1008
# Conv weights are uniform(-a, a) with a = CONV_GAIN * sqrt(3 / fan_in): gain sqrt(2) (He) keeps
# the second moment through conv + ReLU, as there are no residual sums to restore it.
CONV_GAIN = math.sqrt(2.0)

# (case name, n, height, width).
CASES = [
    ("up32", 2, 32, 32),
    ("native299", 1, 299, 299),
    ("odd45x71", 1, 45, 71),
]


def tensor_range(key: str, shape):
    """(lo, hi) for one state_dict tensor; the Rust port in tests/inception_parity.rs mirrors it."""
    if len(shape) == 4:  # conv weight [out, in, kh, kw]
        fan_in = shape[1] * shape[2] * shape[3]
        a = CONV_GAIN * math.sqrt(3.0 / fan_in)
        return (-a, a)
    if key == "fc.weight":
        a = math.sqrt(3.0 / shape[1])
        return (-a, a)
    if key.endswith("running_mean"):
        return (-0.1, 0.1)
    if key.endswith("running_var"):
        return (0.5, 1.5)
    if key.endswith(".bias"):  # BatchNorm bias and fc.bias
        return (-0.1, 0.1)
    if key.endswith(".weight"):  # BatchNorm weights
        return (0.5, 1.5)
    raise ValueError(f"no range for {key} {shape}")


def build_fid_inception() -> torch.nn.Module:
    """pytorch-fid's fid_inception_v3(), without loading the downloaded state_dict."""
    inception = torchvision.models.inception_v3(
        num_classes=NUM_CLASSES, aux_logits=False, init_weights=False, weights=None
    )
    inception.Mixed_5b = fid_inception.FIDInceptionA(192, pool_features=32)
    inception.Mixed_5c = fid_inception.FIDInceptionA(256, pool_features=64)
    inception.Mixed_5d = fid_inception.FIDInceptionA(288, pool_features=64)
    inception.Mixed_6b = fid_inception.FIDInceptionC(768, channels_7x7=128)
    inception.Mixed_6c = fid_inception.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6d = fid_inception.FIDInceptionC(768, channels_7x7=160)
    inception.Mixed_6e = fid_inception.FIDInceptionC(768, channels_7x7=192)
    inception.Mixed_7b = fid_inception.FIDInceptionE_1(1280)
    inception.Mixed_7c = fid_inception.FIDInceptionE_2(2048)
    fill(inception)
    return inception.eval()


def fill(model: torch.nn.Module) -> None:
    sd = model.state_dict()
    new = {}
    for key, t in sd.items():
        if key.endswith("num_batches_tracked"):
            new[key] = t  # int64, unused in eval mode
            continue
        lo, hi = tensor_range(key, tuple(t.shape))
        new[key] = torch.from_numpy(uniform_f32(key, tuple(t.shape), lo, hi))
    model.load_state_dict(new, strict=True)


def build_wrapper(inception: torch.nn.Module) -> torch.nn.Module:
    """pytorch_fid.inception.InceptionV3([3]) around `inception` (its builder swapped in)."""
    original = fid_inception.fid_inception_v3
    fid_inception.fid_inception_v3 = lambda: inception
    try:
        wrapper = fid_inception.InceptionV3(
            [fid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]],
            resize_input=True,
            normalize_input=True,
        )
    finally:
        fid_inception.fid_inception_v3 = original
    return wrapper.eval()


def run(wrapper, fc_weight, pixels, dtype):
    """(pool3 [N, 2048], logits [N, 1008]) as pytorch-fid computes them in `dtype`."""
    # pytorch-fid's ImagePathDataset: ToTensor() gives uint8 / 255 in [0, 1].
    x = torch.from_numpy(pixels).to(dtype) / 255.0
    with torch.no_grad():
        model = wrapper.to(dtype)
        pool3 = model(x)[0].squeeze(3).squeeze(2)
        logits = pool3 @ fc_weight.to(dtype).t()
    return pool3.double(), logits.double()


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def print_stats(wrapper, x):
    inc = wrapper.blocks
    names = {
        "block0": inc[0], "block1": inc[1],
        **{f"Mixed_{i}": m for i, m in zip(["5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e"],
                                          inc[2])},
        **{f"Mixed_{i}": m for i, m in zip(["7a", "7b", "7c", "pool"], inc[3])},
    }
    hooks = [
        m.register_forward_hook(
            lambda m, i, o, name=name: print(
                f"    {name:10s} mean {o.mean().item():.3f} std {o.std().item():.3f}")
        )
        for name, m in names.items()
    ]
    with torch.no_grad():
        wrapper(x)
    for h in hooks:
        h.remove()


def sig(values, digits=10):
    return [[float(f"{v:.{digits}g}") for v in row] for row in values.tolist()]


def make_case(out_dir, wrapper, fc_weight, case, n, h, w, stats):
    key = f"images/inception/{case}"
    pixels = images_u8(key, n, h, w)
    pool3, logits = run(wrapper, fc_weight, pixels, torch.float64)
    pool3_f32, logits_f32 = run(wrapper, fc_weight, pixels, torch.float32)
    errs = (rel_err(pool3_f32, pool3), rel_err(logits_f32, logits))
    spread = f"; image 0 vs 1 rel diff {rel_err(pool3[0], pool3[1]):.2e}" if n > 1 else ""
    print(f"{case}: pool3 range [{pool3.min().item():.3f}, {pool3.max().item():.3f}], logits "
          f"range [{logits.min().item():.3f}, {logits.max().item():.3f}]; torch f32 vs f64 "
          f"rel err pool3 {errs[0]:.2e}, logits {errs[1]:.2e}{spread}")
    if stats:
        print_stats(wrapper.float(), torch.from_numpy(pixels).float() / 255.0)
    doc = {
        "case": case,
        "n": n,
        "height": h,
        "width": w,
        "pixels_key": key,
        "pixels_sum": int(pixels.astype(np.int64).sum()),
        "pool3": sig(pool3),
        "logits": sig(logits),
        "torch_f32_pool3_rel_err": errs[0],
        "torch_f32_logits_rel_err": errs[1],
        "generator": "scripts/make_inception_fixtures.py, torch " + torch.__version__
        + ", torchvision " + torchvision.__version__ + ", pytorch-fid "
        + getattr(sys.modules["pytorch_fid"], "__version__", "?"),
    }
    with open(os.path.join(out_dir, case + ".json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


def write_keys(out_dir, inception):
    keys = [[k, list(t.shape)] for k, t in inception.state_dict().items()]
    with open(os.path.join(out_dir, "state_dict_keys.json"), "w") as f:
        json.dump({"keys": keys}, f, separators=(",", ":"))
        f.write("\n")
    print(f"state_dict: {len(keys)} tensors, "
          f"{sum(math.prod(s) for _, s in keys) / 1e6:.1f}M values")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "inception"))
    parser.add_argument("--stats", action="store_true", help="print activation mean/std per block")
    parser.add_argument("--pth", help="also save the random weights' state_dict (zip) here")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    import pytorch_fid  # noqa: F401  (for its __version__)

    inception = build_fid_inception()
    write_keys(args.out, inception)
    if args.pth:
        torch.save(inception.state_dict(), args.pth)  # an OrderedDict, as pytorch-fid's file
        print(f"saved the state_dict to {args.pth}")
    fc_weight = inception.fc.weight.detach().clone()
    wrapper = build_wrapper(inception)
    for case in CASES:
        make_case(args.out, wrapper, fc_weight, *case, stats=args.stats)
    print(f"wrote fixtures to {os.path.normpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
