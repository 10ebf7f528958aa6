#!/usr/bin/env python3
"""The PyTorch side of `rcaflow bench`: the same models at the same shapes, batches and thread
count, with PyTorch eager, random weights, eval mode and no_grad, warm-ups excluded, median and
spread of the repeats; the same table and the same --json keys (framework "torch").

    PYTHONPATH=/path/to/site python3 scripts/bench_torch.py --threads 2 --json > torch.json
    rcaflow bench --threads 2 --json > rcaflow.json
    python3 scripts/bench_torch.py --compare rcaflow.json torch.json    # side by side

Run by hand, never in CI. Needs torch, torchvision, diffusers, pytorch-fid and lpips; no
network: every network is built with random weights (pytorch-fid's FID Inception is built as
its fid_inception_v3() does, without loading the released weights; lpips with pnet_rand=True,
pretrained=False).

The models (as in src/bench/mod.rs):
- unet: diffusers UNet2DModel at config/unet-paper.json (or --unet-config), one forward of a
  32x32 batch at timestep 500 with class labels: batch image-steps;
- inception: pytorch_fid.inception.InceptionV3([pool3], resize_input=True, normalize_input=True)
  on 32x32 images in [0, 1] (resized to 299), plus the 1008-way fc rcaflow computes for IS;
- resnet18, resnet34: torchvision resnets with the cifar stem (3x3 stride-1 conv1, no max-pool);
- lpips-alex, lpips-vgg: lpips.LPIPS on pairs of 32x32 images in [-1, 1].
"""

import argparse
import contextlib
import json
import os
import sys
import time
import warnings


MODELS = ["unet", "inception", "resnet18", "resnet34", "lpips-alex", "lpips-vgg"]
DEFAULT_BATCH = {"unet": 16, "inception": 50, "resnet18": 64, "resnet34": 64, "lpips-alex": 32, "lpips-vgg": 32}
UNIT = {"unet": "image-steps/s", "inception": "images/s", "resnet18": "images/s", "resnet34": "images/s",
        "lpips-alex": "pairs/s", "lpips-vgg": "pairs/s"}
SIZE = 32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def stats(samples):
    import numpy as np
    s = np.asarray(samples, dtype=np.float64)
    q = np.percentile(s, [50, 25, 75, 0, 100])  # numpy's linear rule, as src/bench/stats.rs
    return {"median": q[0], "q1": q[1], "q3": q[2], "min": q[3], "max": q[4]}


def peak_rss_mib():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def random_fid_inception_v3():
    """pytorch_fid.inception.fid_inception_v3 without loading the released weights."""
    from pytorch_fid import inception as pf
    net = pf._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pf.FIDInceptionE_1(1280)
    net.Mixed_7c = pf.FIDInceptionE_2(2048)
    return net


def build(model, batch, unet_config, device="cpu", dtype="f32"):
    """(forward closure) for one model with random weights and a random input batch on `device`;
    the UNet in `dtype` (the evaluators stay float32, as in rcaflow)."""
    import torch
    g = torch.Generator().manual_seed(0)
    on = lambda t: t.to(device)
    if model == "unet":
        from diffusers import UNet2DModel
        with open(unet_config) as f:
            cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
        unet_dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dtype]
        net = UNet2DModel(**cfg).eval().to(device, unet_dtype)
        side = cfg.get("sample_size", SIZE)
        h, w = (side, side) if isinstance(side, int) else side
        x = on((torch.rand(batch, cfg.get("in_channels", 3), h, w, generator=g) * 2 - 1).to(unet_dtype))
        t = on(torch.full((batch,), 500, dtype=torch.long))
        classes = cfg.get("num_class_embeds") or 0
        labels = on(torch.arange(batch) % max(classes, 1)) if classes else None
        return lambda: net(x, t, class_labels=labels).sample
    if model == "inception":
        from pytorch_fid import inception as pf
        pf.fid_inception_v3 = random_fid_inception_v3
        block = pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]
        net = on(pf.InceptionV3([block], resize_input=True, normalize_input=True, use_fid_inception=True).eval())
        fc = on(torch.randn(1008, 2048, generator=g) * 0.02)
        x = on(torch.randint(0, 256, (batch, 3, SIZE, SIZE), generator=g).float() / 255.0)

        def forward():
            pool3 = net(x)[0].flatten(1)
            return pool3 @ fc.t()
        return forward
    if model in ("resnet18", "resnet34"):
        import torchvision
        net = getattr(torchvision.models, model)(num_classes=10)
        net.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = torch.nn.Identity()
        net = on(net.eval())
        x = on(torch.rand(batch, 3, SIZE, SIZE, generator=g) * 4 - 2)
        return lambda: net(x)
    if model in ("lpips-alex", "lpips-vgg"):
        import lpips
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            # lpips prints what it sets up, and torchvision warns about its `pretrained` flag.
            warnings.simplefilter("ignore")
            net = on(lpips.LPIPS(net=model.split("-")[1], pretrained=False, pnet_rand=True, verbose=False).eval())
        x0 = on(torch.rand(batch, 3, SIZE, SIZE, generator=g) * 2 - 1)
        x1 = on(torch.rand(batch, 3, SIZE, SIZE, generator=g) * 2 - 1)
        return lambda: net(x0, x1)
    raise ValueError(model)


def bench_model(model, batch, warmup, repeats, unet_config, device="cpu", dtype="f32"):
    import torch
    reset_peak_rss()
    built = build(model, batch, unet_config, device, dtype)
    # A GPU runs asynchronously: each pass is waited for, as rcaflow bench does.
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    forward = lambda: (built(), sync())
    with torch.inference_mode():
        for _ in range(warmup):
            forward()
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            forward()
            seconds.append(time.perf_counter() - start)
    return {
        "model": model, "batch": batch, "unit": UNIT[model], "warmup": warmup, "repeats": repeats,
        "seconds": stats(seconds), "throughput": stats([batch / s for s in seconds]),
        "peak_rss_mib": peak_rss_mib(),
    }


def row(r):
    t = r["throughput"]
    rss = "-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f} MiB"
    text = f"{t['median']:.2f} {r['unit']} ({t['min']:.2f}-{t['max']:.2f})"
    return f"{r['model']:<11} {r['batch']:>5}  {text:>32}  {r['seconds']['median']:>10.4f}  {rss:>9}"


def compare(paths):
    """Side by side: the first report's throughput over the second's, model by model."""
    reports = [json.load(open(p)) for p in paths]
    a, b = reports
    print(f"{a['framework']} ({a['threads']} threads) vs {b['framework']} ({b['threads']} threads), {a['device']}")
    print(f"| model | batch | {b['framework']} | {a['framework']} | {a['framework']} / {b['framework']} | peak RSS {b['framework']} / {a['framework']} |")
    print("|---|---|---|---|---|---|")
    theirs = {r["model"]: r for r in b["results"]}
    for r in a["results"]:
        o = theirs.get(r["model"])
        if o is None:
            continue
        ratio = r["throughput"]["median"] / o["throughput"]["median"]
        rss = lambda x: "-" if x["peak_rss_mib"] is None else f"{x['peak_rss_mib']:.0f}"
        print(f"| {r['model']} | {r['batch']} | {o['throughput']['median']:.2f} {o['unit']} | "
              f"{r['throughput']['median']:.2f} {r['unit']} | {ratio:.2f} | {rss(o)} / {rss(r)} MiB |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batch", type=int)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: every core)")
    p.add_argument("--unet-config", default=os.path.join(ROOT, "config", "unet-paper.json"))
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16", "f16"], help="the UNet's precision")
    p.add_argument("--json", action="store_true")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="print two --json reports side by side (A / B ratios) and exit")
    args = p.parse_args()
    if args.compare:
        compare(args.compare)
        return
    models = [m.strip() for m in args.models.split(",")]
    for m in models:
        if m not in MODELS:
            sys.exit(f"error: --models: unknown model \"{m}\"; expected one of {', '.join(MODELS)}")
    import torch
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    if not args.json:
        print(f"torch {torch.__version__} bench: {args.device}, unet {args.dtype}, {torch.get_num_threads()} threads, {args.warmup} warm-up, "
              f"{args.repeats} repeats (median, min-max)")
        print(f"{'model':<11} {'batch':>5}  {'throughput':>32}  {'s/forward':>10}  {'peak RSS':>9}")
    results = []
    for m in models:
        r = bench_model(m, args.batch or DEFAULT_BATCH[m], args.warmup, args.repeats, args.unet_config, args.device, args.dtype)
        if not args.json:
            print(row(r), flush=True)
        results.append(r)
    if args.json:
        print(json.dumps({"framework": "torch", "version": torch.__version__, "device": args.device,
                          "dtype": args.dtype, "threads": torch.get_num_threads(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
