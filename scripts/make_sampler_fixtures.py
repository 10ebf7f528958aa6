#!/usr/bin/env python3
"""Reference outputs for whole sampling runs (src/models/sampling.rs) from diffusers.

Run (any Python with torch, diffusers 0.42, numpy and safetensors; CI never runs this; nothing is
downloaded):

    python scripts/make_sampler_fixtures.py     # writes tests/fixtures/sampler/

For each case of CASES, tests/fixtures/sampler/<case>/ gets:

* ``config.json``: the tiny class-conditional UNet2DModel's config as diffusers saves it;
* ``scheduler_config.json`` when the case configures its scheduler (otherwise the sampler must
  fall back to DDIMScheduler's own defaults, which is part of what is checked);
* ``run.json``: the state_dict's (key, shape) list (the weights are not stored: both sides draw
  them from the shared counter-based PRNG, keyed by tensor name, with the ranges of
  make_unet_fixtures.py), the initial noise x_T, the class labels, the step count, and
  diffusers' final samples (unquantised) after the whole DDIM (eta = 0) run.

The loop is DDIMPipeline's with class labels added (the pipeline itself has no class input):
``for t in scheduler.timesteps: eps = unet(x, t, class_labels).sample;
x = scheduler.step(eps, t, x, eta=0).prev_sample`` in float32, as users run it. With eta = 0 DDIM
draws no noise, so the Rust sampler given the same x_T must land on the same samples
(tests/sampler.rs, max abs error <= 1e-3).
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import diffusers
from diffusers import DDIMScheduler, UNet2DModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_resnet_fixtures import uniform_f32  # noqa: E402  (the shared PRNG)
from make_unet_fixtures import fill  # noqa: E402  (weights keyed by tensor name)

UNET = dict(
    sample_size=8,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=8,
    num_class_embeds=3,
)

CASES = {
    # No scheduler_config.json: DDIMScheduler() defaults (clip_sample, set_alpha_to_one,
    # "leading" spacing, steps_offset 0), 10 steps.
    "ddim_defaults": dict(scheduler=None, steps=10, labels=[0, 1, 2, 2]),
    # The folder's own scheduler config: a DDPM-trained model's file (as `train ddpm` writes and
    # DDPMPipeline saves), read by DDIM: steps_offset 1, a wider clip range, "trailing" spacing
    # (without clipping, random weights predict noise that is not noise and x0 runs to +-500).
    "ddim_folder_config": dict(
        scheduler=dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                       clip_sample=True, clip_sample_range=1.5, steps_offset=1, timestep_spacing="trailing", set_alpha_to_one=False),
        steps=7,
        labels=[2, 0, 1],
    ),
}


def normal_f32(key, shape):
    """Standard normal draws from the shared uniform PRNG (Box-Muller), as float32."""
    n = int(np.prod(shape))
    u = uniform_f32(key, (2 * n,), 0.0, 1.0).astype(np.float64)
    u1, u2 = np.clip(u[:n], 1e-12, 1.0), u[n:]
    z = np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)
    return z.astype(np.float32).reshape(shape)


def sig(values, digits=10):
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=np.float64).reshape(-1)]


def make_case(out_dir, case, spec):
    model = UNet2DModel(**UNET).eval()
    fill(model)
    if spec["scheduler"] is None:
        scheduler = DDIMScheduler()
    else:
        scheduler = DDIMScheduler(**spec["scheduler"])
    scheduler.set_timesteps(spec["steps"])
    labels = torch.tensor(spec["labels"], dtype=torch.int64)
    shape = (len(spec["labels"]), UNET.get("in_channels", 3), UNET["sample_size"], UNET["sample_size"])
    x_t = normal_f32(f"sampler/{case}/x_t", shape)
    x = torch.from_numpy(x_t.copy())
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = model(x, t, class_labels=labels).sample
            x = scheduler.step(eps, t, x, eta=0.0).prev_sample
    print(f"{case}: timesteps {scheduler.timesteps.tolist()}, output range "
          f"[{x.min().item():.3f}, {x.max().item():.3f}]")

    case_dir = os.path.join(out_dir, case)
    os.makedirs(case_dir, exist_ok=True)
    model.save_config(case_dir)
    if spec["scheduler"] is not None:
        scheduler.save_config(case_dir)
    doc = {
        "case": case,
        "state_dict": [[k, list(t.shape)] for k, t in model.state_dict().items()],
        "steps": spec["steps"],
        "timesteps": scheduler.timesteps.tolist(),
        "labels": spec["labels"],
        "x_t_shape": list(shape),
        "x_t": sig(x_t),
        "output": sig(x.numpy()),
        "generator": "scripts/make_sampler_fixtures.py, torch " + torch.__version__
        + ", diffusers " + diffusers.__version__,
    }
    with open(os.path.join(case_dir, "run.json"), "w") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures", "sampler"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    diffusers.utils.logging.set_verbosity_error()
    for case, spec in CASES.items():
        make_case(args.out, case, spec)
    print(f"wrote fixtures to {os.path.normpath(args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
