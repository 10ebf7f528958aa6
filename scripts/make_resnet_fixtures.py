#!/usr/bin/env python3
"""Reference outputs for the ResNet oracle (src/models/resnet/) from torchvision.

Run (any Python with torch, torchvision, numpy and safetensors; CI never runs this):

    python scripts/make_resnet_fixtures.py            # writes tests/fixtures/resnet/
    python scripts/make_resnet_fixtures.py --stats    # also prints activation scales per stage

What it produces, in tests/fixtures/resnet/ (about 0.3 MB in all, committed):

* ``resnet18_cifar.json``, ``resnet18_imagenet.json``, ``resnet34_cifar.json``,
  ``resnet34_imagenet.json``: one parity case each: architecture, stem, class count, the
  normalisation string (as `Normalization::from_str` parses it), a few uint8 NCHW images and the
  logits torchvision computes for them. The weights are NOT stored (45-90 MB each): they are
  drawn from a tiny counter-based PRNG that tests/resnet_parity.rs re-implements bit for bit, so
  the Rust test regenerates exactly the float32 values torchvision was given.
* ``tiny_state_dict.pth`` (zip format, as torch >= 1.6 writes it), ``tiny_state_dict.safetensors``
  (the same tensors) and ``tiny_state_dict_legacy.pth`` (``_use_new_zipfile_serialization=False``,
  the pre-1.6 format, which `WeightMap::load` reads too).
* ``legacy_dtypes.pth`` and ``legacy_py2_nested.pth`` (a few hundred bytes each): the legacy
  format's corners for tests/legacy_pth.rs (see `make_legacy_fixtures`); their values are simple
  formulas that the test restates.

The PRNG (keep in sync with tests/common/prng.rs):

    seed(key)   = FNV-1a 64 of the UTF-8 bytes of the tensor key
    z_i         = splitmix64(seed + (i + 1) * 0x9E3779B97F4A7C15)   (wrapping u64, i = 0, 1, ...)
    u_i         = (z_i >> 11) * 2**-53                               (float64 in [0, 1))
    value_i     = float32(lo + (hi - lo) * u_i)                      (computed in float64)

Values fill the tensor in row-major (C) order. Per-tensor ranges are chosen so activations stay
O(1) through all blocks (see `tensor_range`), and BatchNorm running statistics are far from the
identity so that eval-mode BatchNorm is really exercised.

The reference logits are computed in float64 (the float32 weights and inputs are exactly
representable), so the tolerance in the Rust test measures candle's float32 error alone; the
float32 torchvision logits' own distance to that reference is recorded next to them for scale.
"""

import argparse
import collections
import json
import math
import os
import pickle
import struct
import sys
import types

import numpy as np
import torch
import torch.nn as nn
import torchvision

MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
NUM_CLASSES = 10
# Conv weights are uniform(-a, a) with a = CONV_GAIN * sqrt(3 / fan_in): unit-variance
# propagation for gain 1, before ReLU halves it; the residual sums grow it back.
CONV_GAIN = 1.0
IMAGENET = "imagenet"
MINUS_ONE_ONE = "minus-one-one"

# (case name, arch, stem, normalisation string, n, height, width). The odd, non-square size of
# the last case exercises the padding arithmetic of the strided convs and of the max-pool.
CASES = [
    ("resnet18_cifar", "resnet18", "cifar", IMAGENET, 3, 32, 32),
    ("resnet18_imagenet", "resnet18", "imagenet", MINUS_ONE_ONE, 3, 64, 64),
    ("resnet34_cifar", "resnet34", "cifar", MINUS_ONE_ONE, 3, 32, 32),
    ("resnet34_imagenet", "resnet34", "imagenet", IMAGENET, 2, 61, 77),
]


def fnv1a64(key: str) -> int:
    h = 0xCBF29CE484222325
    for b in key.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & MASK64
    return h


def uniform01(key: str, n: int) -> np.ndarray:
    """n float64 values in [0, 1): splitmix64 over (seed(key) + (i+1) * golden), vectorised."""
    seed = np.uint64(fnv1a64(key))
    i = np.arange(1, n + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = seed + i * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def uniform_f32(key: str, shape, lo: float, hi: float) -> np.ndarray:
    n = int(np.prod(shape, dtype=np.int64))
    u = uniform01(key, n)
    return (lo + (hi - lo) * u).astype(np.float32).reshape(shape)


def images_u8(key: str, n: int, h: int, w: int) -> np.ndarray:
    # floor(u * 256) is at most 255 because u <= 1 - 2**-53.
    return np.floor(uniform01(key, n * 3 * h * w) * 256.0).astype(np.uint8).reshape(n, 3, h, w)


def tensor_range(key: str, shape):
    """(lo, hi) for one state_dict tensor; the Rust port in tests/resnet_parity.rs mirrors it."""
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
    if key.endswith("bn2.weight"):
        # The last BatchNorm of each residual branch: smaller, so the identity path dominates
        # and the residual sums do not grow the activations block after block (ResNet-34 has 16).
        return (0.25, 0.75)
    if key.endswith(".weight"):  # other BatchNorm weights
        return (0.5, 1.5)
    raise ValueError(f"no range for {key} {shape}")


def build(arch: str, stem: str) -> nn.Module:
    ctor = {"resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34}[arch]
    model = ctor(weights=None, num_classes=NUM_CLASSES)
    if stem == "cifar":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model.eval()


def fill(model: nn.Module) -> None:
    sd = model.state_dict()
    new = {}
    for key, t in sd.items():
        if key.endswith("num_batches_tracked"):
            new[key] = t  # int64, unused in eval mode
            continue
        lo, hi = tensor_range(key, tuple(t.shape))
        new[key] = torch.from_numpy(uniform_f32(key, tuple(t.shape), lo, hi))
    model.load_state_dict(new, strict=True)


def normalise(pixels: np.ndarray, norm: str) -> np.ndarray:
    """float64 model input; mirrors Normalization::to_input."""
    x = pixels.astype(np.float64)
    if norm == MINUS_ONE_ONE:
        return 2.0 * x / 255.0 - 1.0
    if norm == IMAGENET:
        mean = np.array([0.485, 0.456, 0.406], dtype=np.float32).astype(np.float64)
        std = np.array([0.229, 0.224, 0.225], dtype=np.float32).astype(np.float64)
        return (x / 255.0 - mean[None, :, None, None]) / std[None, :, None, None]
    raise ValueError(norm)


def print_stats(model: nn.Module, x: torch.Tensor) -> None:
    names = ["conv1", "layer1", "layer2", "layer3", "layer4"]
    for name in names:
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: print(f"    {name:8s} std {o.std().item():.3f}")
        )
    with torch.no_grad():
        model(x)


def make_case(out_dir, case, arch, stem, norm, n, h, w, stats):
    model = build(arch, stem)
    fill(model)
    pixels = images_u8(f"images/{case}", n, h, w)
    x64 = torch.from_numpy(normalise(pixels, norm))
    with torch.no_grad():
        ref = model.double()(x64)
        f32 = model.float()(x64.float()).double()
    diff = (ref - f32).abs().max().item()
    print(f"{case}: logits range [{ref.min().item():.3f}, {ref.max().item():.3f}], "
          f"torch f32 vs f64 max abs diff {diff:.2e}")
    if stats:
        print_stats(model.float(), x64.float())
    doc = {
        "case": case,
        "arch": arch,
        "stem": stem,
        "num_classes": NUM_CLASSES,
        "norm": norm,
        "n": n,
        "height": h,
        "width": w,
        "pixels": pixels.reshape(-1).tolist(),
        "logits": ref.numpy().tolist(),
        "torch_f32_max_abs_diff": diff,
        "generator": "scripts/make_resnet_fixtures.py, torch " + torch.__version__
        + ", torchvision " + torchvision.__version__,
    }
    with open(os.path.join(out_dir, case + ".json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


def make_tiny_state_dicts(out_dir):
    from safetensors.torch import save_file

    sd = {
        "conv.weight": torch.from_numpy(uniform_f32("tiny/conv.weight", (4, 3, 3, 3), -1, 1)),
        "bn.weight": torch.from_numpy(uniform_f32("tiny/bn.weight", (4,), 0.5, 1.5)),
        "bn.running_var": torch.from_numpy(uniform_f32("tiny/bn.running_var", (4,), 0.5, 1.5)),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        # float64 in the file: WeightMap converts it to float32.
        "fc.bias": torch.from_numpy(uniform_f32("tiny/fc.bias", (2,), -1, 1)).double(),
        # Stored transposed (a Fortran-order view) in the .pth: candle's reader must undo it.
        "fc.weight": torch.from_numpy(uniform_f32("tiny/fc.weight", (4, 2), -1, 1)).t(),
    }
    torch.save(sd, os.path.join(out_dir, "tiny_state_dict.pth"))
    torch.save(sd, os.path.join(out_dir, "tiny_state_dict_legacy.pth"),
               _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in sd.items()},
              os.path.join(out_dir, "tiny_state_dict.safetensors"))


class _Py2Long(int):
    """An int that `_Py2StylePickler` writes as a Python 2 long (LONG1)."""


class _Py2StylePickler(pickle._Pickler):
    """Pickles the way torch < 1.0 under Python 2 did, as in lpips' weights/v0.1/*.pth: str as
    SHORT_BINSTRING/BINSTRING, OrderedDict as a REDUCE of its list of [key, value] pairs, storage
    sizes as longs, and (here) storage locations on a GPU."""

    dispatch = pickle._Pickler.dispatch.copy()
    dispatch_table = {
        collections.OrderedDict: lambda od: (
            collections.OrderedDict, ([[k, v] for k, v in od.items()],), vars(od) or None),
    }

    def save_str(self, obj):
        data = obj.encode("utf-8")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_str

    def save_py2_long(self, obj):
        data = pickle.encode_long(int(obj))
        self.write(pickle.LONG1 + bytes([len(data)]) + data)

    dispatch[_Py2Long] = save_py2_long

    def save_pers(self, pid):
        if pid[0] == "storage":
            # ("storage", storage_type, key, location, numel, view_metadata)
            pid = pid[:3] + ("cuda:0", _Py2Long(pid[4])) + pid[5:]
        super().save_pers(pid)


_PY2_STYLE_PICKLE = types.SimpleNamespace(
    __name__="py2_style_pickle",
    Pickler=_Py2StylePickler,
    dump=lambda obj, f, protocol=2: _Py2StylePickler(f, protocol).dump(obj),
)


def make_legacy_fixtures(out_dir):
    """Legacy-format (torch < 1.6) corner cases; keep the formulas in tests/legacy_pth.rs."""
    # One float32 storage behind three tensors (offsets 2, 6 and 1; the last non-contiguous).
    base = torch.arange(12, dtype=torch.float32) * 0.25 - 1.0
    sd = collections.OrderedDict()
    sd["f64"] = (torch.arange(6, dtype=torch.float64) * 0.5 - 1.25).reshape(2, 3)
    sd["f16"] = torch.arange(4, dtype=torch.float16) * 0.25 - 0.5
    sd["bf16"] = torch.tensor([1.5, -2.0, 0.0078125], dtype=torch.bfloat16)
    sd["i64"] = torch.tensor([-3, 0, 1 << 40], dtype=torch.int64)
    sd["i32"] = torch.tensor([[-7, 8]], dtype=torch.int32)
    sd["u8"] = torch.tensor([0, 1, 255], dtype=torch.uint8)
    sd["i16"] = torch.tensor([-300, 7], dtype=torch.int16)
    sd["i8"] = torch.tensor([-128, 5], dtype=torch.int8)
    sd["bool"] = torch.tensor([True, False, True])
    sd["scalar"] = torch.tensor(2.5)
    sd["transposed"] = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    sd["view.a"] = base[2:6]
    sd["view.b"] = base[6:].view(2, 3)
    sd["view.cols"] = base.view(3, 4)[:, 1:3]
    sd["empty"] = torch.zeros(0, 3)
    # Enough entries for more than 256 memo slots (LONG_BINPUT/LONG_BINGET), as in real files.
    for i in range(100):
        sd[f"many.{i}"] = torch.tensor(float(i))
    torch.save(sd, os.path.join(out_dir, "legacy_dtypes.pth"),
               _use_new_zipfile_serialization=False)

    # A training checkpoint nesting the state_dict under "model", written Python-2 style, with
    # a Parameter (keep_vars=True state_dicts hold them).
    model = collections.OrderedDict()
    model["lin0.model.1.weight"] = (torch.arange(4, dtype=torch.float32) * 0.125).view(1, 4, 1, 1)
    model["conv.bias"] = nn.Parameter(torch.tensor([0.5, -0.5]))
    ckpt = {"epoch": 3, "model": model}
    torch.save(ckpt, os.path.join(out_dir, "legacy_py2_nested.pth"),
               pickle_module=_PY2_STYLE_PICKLE, _use_new_zipfile_serialization=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "resnet"))
    parser.add_argument("--stats", action="store_true", help="print activation std per stage")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for case in CASES:
        make_case(args.out, *case, stats=args.stats)
    make_tiny_state_dicts(args.out)
    make_legacy_fixtures(args.out)
    print(f"wrote fixtures to {os.path.normpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
