#!/usr/bin/env python3
"""Face detection speed: `rcaflow detect` against facenet-pytorch's MTCNN, images per second on
the same 256x256 photos with the same CPU threads and batch, back to back over rounds.

    cargo build --release
    PYTHONPATH=/path/to/site python3 scripts/bench_detect.py [--threads N] [--images 64] [--batch 16] [--rounds 3]

Needs torch, numpy, Pillow and facenet-pytorch 2.6.0 (`pip install --no-deps facenet-pytorch`)
on PYTHONPATH; run by hand, never in CI. The photos are made from the committed fixtures
(tests/fixtures/mtcnn/photos: astronaut, camera, the two-face composite), brought to 256x256 and
flipped / brightened so that no two are the same, in a temporary folder removed at the end.

What is timed: rcaflow's own figure, which `detect` prints (decoding and detection of every
image, from the first decode to the last detection; the weights' loading is not counted); for
facenet-pytorch, the same span: PIL decodes each batch of `--batch` images and
`MTCNN(keep_all=True).detect(batch, landmarks=True)` runs on it (facenet-pytorch stacks a batch
of equal-size images, as rcaflow does), after one untimed warm-up batch. Each round runs rcaflow
then facenet-pytorch, so a change in the machine's load hits both alike; the table gives the
median of the rounds and the range of the ratio. Both sides must find the same number of faces.

Environment: RCAFLOW (default target/release/rcaflow).
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "mtcnn"


def make_photos(folder, n):
    from PIL import Image, ImageEnhance
    bases = []
    for name in ["astronaut.png", "camera.png", "group.png"]:
        img = Image.open(FIXTURES / "photos" / name).convert("RGB")
        # Pad to a square on a grey canvas (no stretching), then to 256x256.
        side = max(img.size)
        canvas = Image.new("RGB", (side, side), (118, 124, 130))
        canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
        bases.append(canvas.resize((256, 256), Image.LANCZOS))
    for i in range(n):
        img = bases[i % len(bases)]
        if (i // len(bases)) % 2:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img = ImageEnhance.Brightness(img).enhance(0.8 + 0.4 * ((i * 7919) % 97) / 96)
        img.save(folder / f"{i:05d}.png")


def run_rcaflow(binary, threads, folder, weights, batch, out_csv):
    cmd = [binary, "--threads", str(threads), "--log-level", "warn", "detect", "--input", str(folder),
           "--mtcnn-weights", str(weights), "--out", str(out_csv), "--detect-batch", str(batch)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)} failed: {done.stderr.strip()}")
    m = re.search(r"detect: (\d+) faces in (\d+) images \(([0-9.]+) images/s", done.stdout)
    if not m:
        sys.exit(f"error: no throughput in rcaflow's output: {done.stdout.strip()}")
    return float(m.group(3)), int(m.group(1))


def run_torch(mtcnn, files, batch):
    from PIL import Image

    def detect(chunk):
        imgs = [Image.open(f).convert("RGB") for f in chunk]
        boxes, _, _ = mtcnn.detect(imgs, landmarks=True)
        return sum(0 if b is None else len(b) for b in boxes)

    detect(files[:batch])  # warm-up, untimed
    start = time.perf_counter()
    faces = sum(detect(files[i:i + batch]) for i in range(0, len(files), batch))
    return len(files) / (time.perf_counter() - start), faces


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    binary = os.environ.get("RCAFLOW", str(ROOT / "target" / "release" / "rcaflow"))
    if not os.access(binary, os.X_OK):
        sys.exit(f"error: {binary} is not an executable; build it with cargo build --release or set RCAFLOW")

    import torch
    from facenet_pytorch import MTCNN
    torch.set_num_threads(args.threads)
    mtcnn = MTCNN(keep_all=True, device="cpu")
    weights = Path(sys.modules["facenet_pytorch"].__file__).parent / "data"

    tmp = Path(tempfile.mkdtemp(prefix="bench_detect_"))
    try:
        photos = tmp / "photos"
        photos.mkdir()
        make_photos(photos, args.images)
        files = sorted(photos.iterdir())
        print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, load "
              f"{' '.join(open('/proc/loadavg').read().split()[:3])}; {args.threads} threads, {args.images} "
              f"images of 256x256, batch {args.batch}, {args.rounds} rounds; torch {torch.__version__}", file=sys.stderr)
        ours, theirs = [], []
        for r in range(args.rounds):
            a, fa = run_rcaflow(binary, args.threads, photos, weights, args.batch, tmp / "faces.csv")
            b, fb = run_torch(mtcnn, files, args.batch)
            if fa != fb:
                sys.exit(f"error: rcaflow found {fa} faces, facenet-pytorch {fb}")
            print(f"round {r + 1}/{args.rounds}: rcaflow {a:.2f} images/s, facenet-pytorch {b:.2f} images/s ({fa} faces)",
                  file=sys.stderr)
            ours.append(a)
            theirs.append(b)
        ratios = [a / b for a, b in zip(ours, theirs)]
        print("| detector | threads | batch | facenet-pytorch | rcaflow | rcaflow / facenet-pytorch (median of rounds, min-max) |")
        print("|---|---|---|---|---|---|")
        print(f"| MTCNN, 256x256 | {args.threads} | {args.batch} | {statistics.median(theirs):.2f} images/s | "
              f"{statistics.median(ours):.2f} images/s | {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) |")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
