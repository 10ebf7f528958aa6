#!/usr/bin/env bash
# The GPU checks in one script, for a machine with an NVIDIA GPU that may have no Rust toolchain
# and no network: run from the repository root with the bundle scripts/gpu_bundle.sh made
# elsewhere (the CUDA rcaflow and the GPU tests' executables):
#
#   scripts/gpu_check.sh [gpu-bundle]
#
# It finds the CUDA 13 libraries (the system's, else those of an installed PyTorch), prints the
# GPU, runs every GPU test (UNet/ResNet/Inception/LPIPS parity on CUDA, a DDIM run and a
# pipelined run against the CPU's), then the benchmarks side by side with PyTorch eager on the
# same GPU: the paper UNet in f32 and bf16 at batches 64, 256 and 1024 against diffusers, and the
# evaluators against pytorch-fid, torchvision and lpips; last the pipelined ratio of a
# koin10-shaped run of 2,000 images and its projection to the full run. Meant to fit in 10
# minutes on an H100/H200 (not yet run on one). Exit status: non-zero when any test failed.
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-gpu-bundle}
[ -d "$BUNDLE/bin" ] || { echo "gpu_check: no bundle at $BUNDLE/bin; make one with scripts/gpu_bundle.sh" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for f in "$BUNDLE"/bin/*.xz; do
    exe="$WORK/$(basename "${f%.xz}")"
    xz -dc "$f" >"$exe" && chmod +x "$exe"
done

# candle links cuBLAS, cuBLASLt, cuRAND and NVRTC (CUDA 13) and the driver's libcuda.so.1.
if ! ldconfig -p | grep -q 'libcublas\.so\.13'; then
    site=$(python3 -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' 2>/dev/null || true)
    if [ -n "$site" ] && [ -d "$site/nvidia" ]; then
        libs=$(find "$site/nvidia" -name 'lib*.so*' -printf '%h\n' | sort -u | paste -sd:)
        export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
        echo "CUDA libraries from PyTorch's install: $site/nvidia"
    else
        echo "gpu_check: no CUDA 13 libraries (libcublas.so.13) on the system and no PyTorch with them" >&2
        exit 2
    fi
fi
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
date -u +"date: %Y-%m-%d %H:%M UTC"
echo "bundle built from commit $(cat "$BUNDLE/commit" 2>/dev/null || echo unknown)"

export RCAFLOW_TEST_REPO="$PWD" RCAFLOW_TEST_BIN="$WORK/rcaflow"
status=0
echo "== GPU tests"
for t in unet_parity resnet_parity inception_parity lpips_parity sampler; do
    # The GPU variants' names all contain "cuda"; their println lines give the errors.
    if ! "$WORK/$t" cuda --nocapture --test-threads 1; then
        echo "gpu_check: $t: a GPU test FAILED" >&2
        status=1
    fi
done

echo "== benchmarks (rcaflow bench vs scripts/bench_torch.py on the same GPU)"
# The PyTorch side needs diffusers, pytorch-fid and lpips beside the installed torch: from the
# bundle's wheels when they are missing (no network here).
if ! python3 -c 'import diffusers, pytorch_fid, lpips' 2>/dev/null; then
    # One wheel at a time: a binary wheel built for another Python (pyyaml, charset_normalizer)
    # is skipped with pip's message rather than failing the others; the import check says
    # whether what was installed suffices.
    for wheel in "$BUNDLE"/wheels/*.whl; do
        python3 -m pip install --quiet --no-index --no-deps --target "$WORK/py" "$wheel" ||
            echo "gpu_check: skipped $(basename "$wheel")" >&2
    done
    export PYTHONPATH="$WORK/py${PYTHONPATH:+:$PYTHONPATH}"
    python3 -c 'import diffusers, pytorch_fid, lpips' || echo "gpu_check: the PyTorch side lacks a module (above)" >&2
fi
bench_pair() { # NAME ARGS...: both benchmarks with the same arguments, then the side-by-side table
    local name=$1
    shift
    "$WORK/rcaflow" bench --device cuda "$@" --json >"$WORK/$name.rcaflow.json" &&
        python3 scripts/bench_torch.py --device cuda "$@" --json >"$WORK/$name.torch.json" 2>"$WORK/$name.torch.log" &&
        python3 scripts/bench_torch.py --compare "$WORK/$name.rcaflow.json" "$WORK/$name.torch.json" ||
        { echo "gpu_check: benchmark $name did not run (see above; torch: $(tail -n 1 "$WORK/$name.torch.log" 2>/dev/null))" >&2; }
}
for dtype in f32 bf16; do
    for batch in 64 256 1024; do
        bench_pair "unet-$dtype-$batch" --models unet --dtype "$dtype" --batch "$batch" --warmup 2 --repeats 5
    done
done
bench_pair evaluators --models inception,resnet18,resnet34,lpips-alex,lpips-vgg --warmup 2 --repeats 5

echo "== pipelined run (rcaflow bench --pipeline: generation alone, evaluation alone, both; projection of koin10)"
# koin10's shape at 2,000 generated + 1,000 real images, the paper UNet in bf16, every stage on
# GPU 0 with its own stream; ancestral DDPM at 100 steps so both halves take seconds.
"$WORK/rcaflow" bench --pipeline "$WORK/pipeline" --device cuda --dtype bf16 --scheduler ddpm --steps 100 ||
    { echo "gpu_check: the pipelined benchmark FAILED" >&2; status=1; }
exit $status
