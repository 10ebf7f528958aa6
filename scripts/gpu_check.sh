#!/usr/bin/env bash
# The GPU checks in one script, for a machine with an NVIDIA GPU that may have no Rust toolchain
# and no network: run from the repository root with the bundle scripts/gpu_bundle.sh made
# elsewhere (the CUDA rcaflow and the GPU tests' executables):
#
#   scripts/gpu_check.sh [gpu-bundle]
#
# It finds the CUDA 13 libraries (the system's, else those of an installed PyTorch), prints the
# GPU, runs every GPU test (UNet/ResNet/Inception/LPIPS parity on CUDA, a DDIM run and a
# pipelined run against the CPU's), then the benchmarks side by side with PyTorch. Fits in 10
# minutes on an H100/H200. Exit status: non-zero when any test failed.
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
exit $status
