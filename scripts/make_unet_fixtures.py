#!/usr/bin/env python3
"""Reference outputs for the class-conditional UNet (src/models/unet/) from diffusers' UNet2DModel.

Run (any Python with torch, diffusers 0.42, numpy and safetensors; CI never runs this; nothing is
downloaded, every network is built from its config with pseudo-random weights):

    python scripts/make_unet_fixtures.py            # writes tests/fixtures/unet/
    python scripts/make_unet_fixtures.py --stats    # also prints activation scales per block

What it produces, in tests/fixtures/unet/<case>/ for each case of CASES (tens of kB in all):

* ``config.json``: the model's config exactly as diffusers saves it (``save_config``, with
  ``_class_name`` and ``_diffusers_version``), so the Rust test also parses a real diffusers file.
* ``parity.json``: the (key, shape) of every tensor of the model's state_dict, in its order (the
  Rust test rebuilds the checkpoint from this list, independently of the Rust model), the inputs
  (sample [N, C, H, W] float32, per-sample timesteps, class labels), diffusers' output, the
  sinusoidal timestep embedding diffusers computed (``time_proj``, always float32 in diffusers)
  and, for scale, the relative error of diffusers' own float32 output.

The weights are NOT stored: they come from the counter-based PRNG of
scripts/make_resnet_fixtures.py (imported from it; tests/common/prng.rs is the bit-exact Rust
port), keyed by the state_dict name, with per-tensor ranges from `tensor_range` below
(tests/unet_parity.rs mirrors it). Convolutions and linear layers are uniform(-a, a) with
a = sqrt(3 / fan_in) (unit-variance propagation), GroupNorm scales are in [0.5, 1.5] and biases
in [-0.1, 0.1], so activations stay O(1) through every block (check with --stats) and the
attention logits are O(1) (softmax neither uniform nor one-hot).

The reference output is computed in float64 (the float32 weights and inputs are exactly
representable) except for the sinusoidal timestep embedding, which diffusers computes in float32
whatever the model's dtype; the Rust test's tolerance thus measures candle's float32 error alone.
Outputs are stored with 10 significant digits (far below the 1e-4 tolerance).
"""

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import diffusers
from diffusers import UNet2DModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_resnet_fixtures import uniform_f32  # noqa: E402  (the shared PRNG)

# Each case: the UNet2DModel kwargs and the inputs. Together they cover every supported config
# field with a non-default value somewhere.
CASES = {
    # The protocol's model in miniature: nn.Embedding class conditioning, attention in a down
    # block, the mid block and an up block, several heads, integer timesteps, diffusers defaults.
    "class_attn": {
        "config": dict(
            sample_size=8,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=8,
            num_class_embeds=3,
        ),
        "shape": (3, 3, 8, 8),
        "timesteps": ("int64", [999, 500, 1]),
        "labels": ("int64", [2, 0, 1]),
    },
    # Three blocks, two resnets per down block (three per up block), attention at both ends,
    # a head width that does not divide the channels (16 // 12 = 1 head of 12), the DDPM-style
    # time embedding (sin first, freq_shift 1), padding-0 downsampling, a centred input, a mid
    # block scale, its own attention group count, a custom time embedding width, class labels
    # embedded like timesteps, fractional timesteps and a non-square input.
    "deep_timestep_class": {
        "config": dict(
            sample_size=(8, 12),
            in_channels=3,
            out_channels=3,
            center_input_sample=True,
            block_out_channels=(16, 32, 48),
            down_block_types=("AttnDownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D", "AttnUpBlock2D"),
            layers_per_block=2,
            norm_num_groups=4,
            attn_norm_num_groups=2,
            attention_head_dim=12,
            flip_sin_to_cos=False,
            freq_shift=1,
            downsample_padding=0,
            mid_block_scale_factor=math.sqrt(2.0),
            norm_eps=1e-6,
            time_embedding_dim=40,
            class_embed_type="timestep",
        ),
        "shape": (2, 3, 8, 12),
        "timesteps": ("float32", [0.0, 250.5]),
        "labels": ("int64", [7, 3]),
    },
    # FiLM-style time conditioning (scale_shift), resnet down/upsamplers in the attention blocks,
    # no mid-block attention, single-head attention (attention_head_dim null), precomputed class
    # embeddings ("identity") and different input/output channel counts.
    "scale_shift_resnet": {
        "config": dict(
            sample_size=8,
            in_channels=1,
            out_channels=2,
            block_out_channels=(16, 32),
            down_block_types=("AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1,
            norm_num_groups=8,
            attention_head_dim=None,
            resnet_time_scale_shift="scale_shift",
            downsample_type="resnet",
            upsample_type="resnet",
            add_attention=False,
            class_embed_type="identity",
        ),
        "shape": (2, 1, 8, 8),
        "timesteps": ("int64", [3, 640]),
        "labels": ("embedding", None),
    },
    # Unconditional, no mid block, plain blocks only.
    "unconditional_no_mid": {
        "config": dict(
            sample_size=8,
            block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D"),
            mid_block_type=None,
            layers_per_block=1,
            norm_num_groups=4,
        ),
        "shape": (2, 3, 8, 8),
        "timesteps": ("int64", [10, 20]),
        "labels": None,
    },
}


def tensor_range(key: str, shape):
    """(lo, hi) for one state_dict tensor; the Rust port in tests/unet_parity.rs mirrors it."""
    if key == "class_embedding.weight":  # nn.Embedding [num_classes, time_embed_dim]
        return (-1.0, 1.0)
    if len(shape) == 4:  # conv weight [out, in, kh, kw]
        a = math.sqrt(3.0 / (shape[1] * shape[2] * shape[3]))
        return (-a, a)
    if len(shape) == 2:  # linear weight [out, in]
        a = math.sqrt(3.0 / shape[1])
        return (-a, a)
    if key.endswith(".bias"):  # conv, linear and GroupNorm biases
        return (-0.1, 0.1)
    if key.endswith(".weight"):  # GroupNorm scales
        return (0.5, 1.5)
    raise ValueError(f"no range for {key} {shape}")


def fill(model: torch.nn.Module) -> None:
    new = {}
    for key, t in model.state_dict().items():
        lo, hi = tensor_range(key, tuple(t.shape))
        new[key] = torch.from_numpy(uniform_f32(key, tuple(t.shape), lo, hi))
    model.load_state_dict(new, strict=True)


def inputs(case: str, spec: dict, time_embed_dim: int):
    n = spec["shape"][0]
    sample = uniform_f32(f"unet/{case}/sample", spec["shape"], -1.0, 1.0)
    t_dtype, t_values = spec["timesteps"]
    timesteps = torch.tensor(t_values, dtype=getattr(torch, t_dtype))
    labels = spec["labels"]
    if labels is None:
        class_labels = None
    elif labels[0] == "embedding":  # class_embed_type "identity": [N, time_embed_dim] floats
        class_labels = torch.from_numpy(uniform_f32(f"unet/{case}/labels", (n, time_embed_dim), -1.0, 1.0))
    else:
        class_labels = torch.tensor(labels[1], dtype=getattr(torch, labels[0]))
    return torch.from_numpy(sample), timesteps, class_labels


def run(model, sample, timesteps, class_labels, dtype):
    model = model.to(dtype)
    labels = class_labels
    if labels is not None and labels.is_floating_point():
        labels = labels.to(dtype)
    with torch.no_grad():
        return model(sample.to(dtype), timesteps, class_labels=labels).sample.double()


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def print_stats(model, sample, timesteps, class_labels):
    names = ["conv_in", *[f"down_blocks.{i}" for i in range(len(model.down_blocks))], "mid_block",
             *[f"up_blocks.{i}" for i in range(len(model.up_blocks))], "conv_out"]
    hooks = []
    for name in names:
        if name == "mid_block" and model.mid_block is None:
            continue
        module = model.get_submodule(name)

        def hook(m, i, o, name=name):
            o = o[0] if isinstance(o, tuple) else o
            print(f"    {name:14s} mean {o.mean().item():+.3f} std {o.std().item():.3f}")

        hooks.append(module.register_forward_hook(hook))
    run(model, sample, timesteps, class_labels, torch.float32)
    for h in hooks:
        h.remove()


def sig(values, digits=10):
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def make_case(out_dir, case, spec, stats):
    model = UNet2DModel(**spec["config"]).eval()
    fill(model)
    if spec["config"].get("class_embed_type") == "timestep":
        # diffusers feeds the float32 sinusoid of the labels to `class_embedding` without the
        # cast it applies to the timesteps' one, which fails in a float64 model: cast it (the
        # float32 values are exact in float64, so the float64 reference is unchanged otherwise).
        model.class_embedding.register_forward_pre_hook(
            lambda m, args: (args[0].to(m.linear_1.weight.dtype),))
    time_embed_dim = model.time_embedding.linear_2.out_features
    sample, timesteps, class_labels = inputs(case, spec, time_embed_dim)
    ref = run(model, sample, timesteps, class_labels, torch.float64)
    f32 = run(model, sample, timesteps, class_labels, torch.float32)
    err = rel_err(f32, ref)
    spread = rel_err(ref[0], ref[1])
    print(f"{case}: output range [{ref.min().item():.3f}, {ref.max().item():.3f}], torch f32 vs f64 "
          f"rel err {err:.2e}; sample 0 vs 1 rel diff {spread:.2e}")
    if stats:
        print_stats(model.float(), sample, timesteps, class_labels)
    with torch.no_grad():
        t_emb = model.time_proj(timesteps)  # float32 whatever the model's dtype
    case_dir = os.path.join(out_dir, case)
    os.makedirs(case_dir, exist_ok=True)
    model.save_config(case_dir)
    doc = {
        "case": case,
        "state_dict": [[k, list(t.shape)] for k, t in model.state_dict().items()],
        "sample_shape": list(sample.shape),
        "sample": sig(sample.numpy()),
        "timesteps": timesteps.tolist(),
        "class_labels": None if class_labels is None else class_labels.reshape(-1).tolist(),
        "class_labels_dtype": None if class_labels is None else str(class_labels.dtype).replace("torch.", ""),
        "time_proj": sig(t_emb.numpy()),
        "output_shape": list(ref.shape),
        "output": sig(ref.numpy()),
        "torch_f32_rel_err": err,
        "generator": "scripts/make_unet_fixtures.py, torch " + torch.__version__
        + ", diffusers " + diffusers.__version__,
    }
    with open(os.path.join(case_dir, "parity.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "unet"))
    parser.add_argument("--stats", action="store_true", help="print activation statistics per block")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    # Quiet the "modules that should be kept in float32: []" warning of every `model.to(dtype)`.
    diffusers.utils.logging.set_verbosity_error()
    for case, spec in CASES.items():
        make_case(args.out, case, spec, args.stats)
    print(f"wrote fixtures to {os.path.normpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
