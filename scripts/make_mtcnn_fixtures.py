#!/usr/bin/env python3
"""Reference outputs of facenet-pytorch's MTCNN (src/models/mtcnn/, issue 18).

Run (any Python with torch, numpy, Pillow, scikit-image and facenet-pytorch 2.6.0; CI never runs
this; nothing is downloaded):

    pip install --no-deps facenet-pytorch              # the wheel ships pnet.pt/rnet.pt/onet.pt
    python scripts/make_mtcnn_fixtures.py              # writes tests/fixtures/mtcnn/

What it produces, in tests/fixtures/mtcnn/ (committed):

* ``pnet.pt``, ``rnet.pt``, ``onet.pt`` and ``LICENSE``: the weights exactly as the wheel ships
  them under ``facenet_pytorch/data/`` (MIT, Copyright (c) 2019 Timothy Esler), copied byte for
  byte so the Rust reader is tested on the real files.
* ``nets/{pnet,rnet,onet}_in.npy`` (float32 NCHW inputs from a seeded normal PRNG, already in the
  nets' normalised range) and ``nets/{net}_{head}.npy``: each net's outputs in the order its
  ``forward`` returns them (P-Net: reg [N,4,h,w], prob [N,2,h,w]; R-Net: reg [N,4], prob [N,2];
  O-Net: reg [N,4], landmarks [N,10], prob [N,2]). P-Net's input is 23x31 (odd, non-square) so
  that the ceil-mode pool's partial window is exercised.
* ``photos/*.png`` (small RGB photographs and composites, see PHOTOS below) and
  ``detections.json``: for each photo, facenet-pytorch's ``MTCNN(keep_all=True).detect(img,
  landmarks=True)`` with its default settings (min_face_size 20, thresholds [0.6, 0.7, 0.7],
  factor 0.709): boxes [x1, y1, x2, y2], probabilities and five landmarks (x, y), or empty lists
  where it finds no face.
* ``prep_boxes.csv``: for the raw set RAW_SET below (an ImageFolder of the committed photos, which
  tests/mtcnn_parity.rs lays out in a temporary folder), facenet-pytorch's kept face of each
  image, ``MTCNN.select_boxes(..., method="largest")`` on ``detect``'s output, in the CSV layout of
  ``rcaflow detect`` (file,x,y,w,h,score, five landmarks; ``w = x2 - x1``); an image without a
  face gets a row with empty fields. ``--prep-boxes-only`` writes just this file.
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import facenet_pytorch
from facenet_pytorch import MTCNN
from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
import skimage.data

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "mtcnn"
SKIMAGE = Path(skimage.data.__file__).parent


def sk(name):
    img = Image.open(SKIMAGE / name)
    return img.convert("RGB")


def fit(img, longest):
    w, h = img.size
    s = longest / max(w, h)
    return img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)


def photos():
    """The committed photos: skimage's astronaut (NASA, public domain) and camera (CC0, Lav
    Varshney) downscaled, a composite of both at several scales, and two texture photos without
    faces (brick and gravel, CC0 Textures)."""
    astro, camera = sk("astronaut.png"), sk("camera.png")
    out = {
        "astronaut.png": fit(astro, 256),
        "camera.png": fit(camera, 192),
    }
    canvas = Image.new("RGB", (256, 192), (118, 124, 130))
    canvas.paste(fit(astro, 128), (0, 0))
    canvas.paste(fit(astro, 92), (150, 100))
    canvas.paste(fit(camera, 100), (140, 0))
    out["group.png"] = canvas
    out["brick.png"] = fit(sk("brick.png"), 128)
    out["gravel.png"] = fit(sk("gravel.png"), 160)
    return out


# class/file in the raw set -> committed photo.
RAW_SET = {"a/astronaut.png": "astronaut.png", "a/camera.png": "camera.png", "b/brick.png": "brick.png", "b/group.png": "group.png"}
HEADER = ("file,x,y,w,h,score,left_eye_x,left_eye_y,right_eye_x,right_eye_y,nose_x,nose_y,"
          "mouth_left_x,mouth_left_y,mouth_right_x,mouth_right_y")


def prep_boxes():
    torch.set_num_threads(1)
    mtcnn = MTCNN(keep_all=True, device="cpu")
    rows = [HEADER]
    for rel, photo in sorted(RAW_SET.items()):
        img = Image.open(OUT / "photos" / photo).convert("RGB")
        boxes, probs, points = mtcnn.detect(img, landmarks=True)
        if boxes is None:
            rows.append(rel + "," * HEADER.count(","))
            continue
        box, prob, pts = mtcnn.select_boxes(boxes, probs, points, img, method="largest")
        box, prob, pts = np.reshape(box, (-1, 4))[0], np.reshape(prob, -1)[0], np.reshape(pts, (-1, 5, 2))[0]
        x1, y1, x2, y2 = (float(v) for v in box)
        fields = [x1, y1, x2 - x1, y2 - y1, float(prob)] + [float(v) for p in pts for v in p]
        rows.append(",".join([rel] + [repr(v) for v in fields]))
    (OUT / "prep_boxes.csv").write_text("\n".join(rows) + "\n")
    print("prep_boxes.csv", len(rows) - 1, "images")


def main():
    if "--prep-boxes-only" in sys.argv[1:]:
        prep_boxes()
        return
    torch.manual_seed(0)
    torch.set_num_threads(1)
    data = Path(facenet_pytorch.__file__).parent / "data"
    for f in ["pnet.pt", "rnet.pt", "onet.pt"]:
        shutil.copyfile(data / f, OUT / f)
    lic = next(Path(facenet_pytorch.__file__).parent.parent.glob("facenet_pytorch-*.dist-info/LICENSE*"))
    shutil.copyfile(lic, OUT / "LICENSE")

    nets = OUT / "nets"
    nets.mkdir(exist_ok=True)
    rng = np.random.default_rng(18)
    shapes = {"pnet": (2, 3, 23, 31), "rnet": (5, 3, 24, 24), "onet": (3, 3, 48, 48)}
    heads = {"pnet": ["reg", "prob"], "rnet": ["reg", "prob"], "onet": ["reg", "landmarks", "prob"]}
    for name, cls in [("pnet", PNet), ("rnet", RNet), ("onet", ONet)]:
        net = cls().eval()
        x = rng.standard_normal(shapes[name]).astype(np.float32)
        np.save(nets / f"{name}_in.npy", x)
        with torch.no_grad():
            outs = net(torch.from_numpy(x))
        for head, t in zip(heads[name], outs):
            np.save(nets / f"{name}_{head}.npy", t.numpy().astype(np.float32))

    mtcnn = MTCNN(keep_all=True, device="cpu")
    det = {}
    pdir = OUT / "photos"
    pdir.mkdir(exist_ok=True)
    for fname, img in photos().items():
        img.save(pdir / fname)
        img = Image.open(pdir / fname).convert("RGB")
        boxes, probs, points = mtcnn.detect(img, landmarks=True)
        if boxes is None:
            det[fname] = {"size": list(img.size), "boxes": [], "probs": [], "landmarks": []}
        else:
            det[fname] = {
                "size": list(img.size),
                "boxes": boxes.astype(float).tolist(),
                "probs": probs.astype(float).tolist(),
                "landmarks": points.astype(float).tolist(),
            }
        print(fname, img.size, len(det[fname]["boxes"]), [round(p, 4) for p in det[fname]["probs"]])
    (OUT / "detections.json").write_text(json.dumps(det, indent=1) + "\n")
    prep_boxes()


if __name__ == "__main__":
    main()
