#!/usr/bin/env bash
# Builds, on this machine (Rust, no GPU needed), what scripts/gpu_check.sh runs on a GPU machine
# that may have no Rust toolchain and no network: the CUDA rcaflow, the test executables of the
# GPU tests (`cargo test --no-run --features cuda`), stripped and xz-compressed, and the Python
# wheels the PyTorch side of the benchmarks needs beside an installed torch. Into gpu-bundle/
# (ignored by git; about 40 MB), which travels with the repository:
#
#   scripts/gpu_bundle.sh                 # here
#   scripts/gpu_check.sh gpu-bundle       # there, from the repository root
#
# PY (default 3.12) is the GPU machine's Python version, for the one binary wheel (safetensors
# is abi3, the rest are pure Python). CUDA_COMPUTE_CAP (default 90) as for any CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=gpu-bundle
TESTS=(unet_parity resnet_parity inception_parity lpips_parity sampler)
PY=${PY:-3.12}

scripts/cuda-toolkit.sh >/dev/null
eval "$(scripts/cuda-toolkit.sh --env)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/wheels"

cargo build --release --locked --features cuda --bin rcaflow
cp "$CARGO_TARGET_DIR/release/rcaflow" "$OUT/bin/rcaflow"
cargo test --release --locked --features cuda --no-run --message-format=json "${TESTS[@]/#/--test=}" |
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])' |
    while read -r name exe; do cp "$exe" "$OUT/bin/$name"; done
strip "$OUT"/bin/*
xz -T0 -6 "$OUT"/bin/*

# The reference side: diffusers (UNet2DModel), pytorch-fid (InceptionV3), lpips, and what they
# import that a PyTorch install lacks.
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PY" \
    --platform manylinux2014_x86_64 --implementation cp --dest "$OUT/wheels" \
    "diffusers==0.35.*" "huggingface_hub<1" "safetensors" "importlib_metadata" "zipp" "filelock" \
    "requests" "urllib3" "idna" "certifi" "charset_normalizer" "tqdm" "pyyaml" "packaging" "fsspec" \
    "pytorch-fid==0.3.0" "lpips==0.1.4"
git rev-parse HEAD >"$OUT/commit"
du -sh "$OUT"
