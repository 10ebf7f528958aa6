"""Reference outputs of diffusers' DDPMScheduler and DDIMScheduler for tests/scheduler_parity.rs.

For each configuration: the inference timesteps, alphas_cumprod, and `step` results for a few
timesteps given fixed model outputs, samples and variance noise (DDPM draws its noise with
randn_tensor, which is patched to return ours), plus a whole 10-step DDIM (eta = 0) chain
with a fake model eps(x, t) = 0.1 x + 0.05 t / 1000. Writes tests/fixtures/schedulers/cases.json.

    /tmp/pyref/bin/python scripts/make_scheduler_fixtures.py      (diffusers 0.42, torch, numpy)
"""
import json
import pathlib

import diffusers
import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers import scheduling_ddpm

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/schedulers/cases.json"
SHAPE = (2, 3, 4, 4)
ALPHA_INDICES = [0, 1, 2, 3, 10, 99, 250, 500, 501, 750, 998, 999]

CASES = [
    ("ddpm-default-1000", "ddpm", {}, 1000, 0.0),
    ("ddpm-default-50", "ddpm", {}, 50, 0.0),
    ("ddpm-fixed-large-noclip", "ddpm", {"variance_type": "fixed_large", "clip_sample": False}, 20, 0.0),
    ("ddpm-scaled-linear-v", "ddpm", {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction"}, 25, 0.0),
    ("ddpm-cosine-sample-clip2", "ddpm", {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample", "clip_sample_range": 2.0}, 30, 0.0),
    ("ddim-default-50-eta0", "ddim", {}, 50, 0.0),
    ("ddim-eta05", "ddim", {"clip_sample": False}, 20, 0.5),
    ("ddim-offset1-noalpha1", "ddim", {"steps_offset": 1, "set_alpha_to_one": False}, 10, 0.0),
    ("ddim-trailing", "ddim", {"timestep_spacing": "trailing", "clip_sample": False}, 10, 0.0),
    ("ddim-linspace-v", "ddim", {"timestep_spacing": "linspace", "prediction_type": "v_prediction"}, 13, 0.3),
]


def arr(rng):
    return rng.standard_normal(SHAPE).astype(np.float32)


def main():
    rng = np.random.default_rng(20261124)
    cases = []
    for name, kind, kwargs, steps, eta in CASES:
        cls = DDPMScheduler if kind == "ddpm" else DDIMScheduler
        s = cls(**kwargs)
        s.set_timesteps(steps)
        timesteps = [int(t) for t in s.timesteps]
        picks = sorted({0, 1, len(timesteps) // 2, len(timesteps) - 1})
        steps_out = []
        for i in picks:
            t = timesteps[i]
            model_output, sample, noise = arr(rng), arr(rng), arr(rng)
            if kind == "ddpm":
                scheduling_ddpm.randn_tensor = lambda *a, **k: torch.from_numpy(noise)
                prev = s.step(torch.from_numpy(model_output), t, torch.from_numpy(sample)).prev_sample
            else:
                prev = s.step(torch.from_numpy(model_output), t, torch.from_numpy(sample), eta=eta, variance_noise=torch.from_numpy(noise)).prev_sample
            steps_out.append({"t": t, "model_output": model_output.ravel().tolist(), "sample": sample.ravel().tolist(),
                              "noise": noise.ravel().tolist(), "prev_sample": prev.numpy().ravel().tolist()})
        x0, z = arr(rng), arr(rng)
        t_noise = timesteps[len(timesteps) // 3]
        noisy = s.add_noise(torch.from_numpy(x0), torch.from_numpy(z), torch.tensor([t_noise])).numpy()
        cases.append({"name": name, "kind": kind, "config": kwargs, "steps": steps, "eta": eta, "timesteps": timesteps,
                      "alphas_cumprod": {str(i): float(s.alphas_cumprod[i]) for i in ALPHA_INDICES}, "step_cases": steps_out,
                      "add_noise": {"t": t_noise, "original": x0.ravel().tolist(), "noise": z.ravel().tolist(), "noisy": noisy.ravel().tolist()}})

    # A whole DDIM eta = 0 chain with a fake model.
    s = DDIMScheduler()
    s.set_timesteps(10)
    x_t = arr(rng)
    x = torch.from_numpy(x_t)
    for t in s.timesteps:
        eps = 0.1 * x + 0.05 * float(t) / 1000.0
        x = s.step(eps, t, x, eta=0.0).prev_sample
    chain = {"steps": 10, "x_t": x_t.ravel().tolist(), "final": x.numpy().ravel().tolist()}

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"diffusers": diffusers.__version__, "shape": SHAPE, "cases": cases, "ddim_chain": chain}))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
