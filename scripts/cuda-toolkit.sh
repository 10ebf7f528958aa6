#!/usr/bin/env bash
# Installs the CUDA 13.0 toolkit pieces a `--features cuda` build needs (nvcc, the runtime
# headers, CCCL, crt, nvvm) from NVIDIA's PyPI wheels into .cuda/ of this repository (ignored by
# git), without a GPU and without a system CUDA. Then:
#
#   eval "$(scripts/cuda-toolkit.sh --env)"
#   cargo build --release --features cuda
#
# CUDA_COMPUTE_CAP (default 90: H100/H200) picks the GPUs the kernels are built for; set it
# before building for another (80: A100, 89: L40/RTX 4090). The binary itself loads libcuda,
# cudart, cuBLAS and cuRAND when it starts (candle 0.11 links them dynamically), so the machine
# that runs it needs the NVIDIA driver and those CUDA 13 libraries (PyTorch's cu13 wheels carry
# them: add their lib folders to LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD/.cuda"
CUDA="$ROOT/nvidia/cu13"
if [ "${1:-}" = "--env" ]; then
    echo "export PATH=\"$CUDA/bin:\$PATH\" CUDA_ROOT=\"$CUDA\" CUDA_PATH=\"$CUDA\" CUDA_COMPUTE_CAP=\"\${CUDA_COMPUTE_CAP:-90}\""
    exit 0
fi
if [ ! -x "$CUDA/bin/nvcc" ] || [ ! -e "$CUDA/include/nv/target" ]; then
    rm -rf "$ROOT"
    # One install, so pip lays every wheel into the same nvidia/cu13 tree.
    python3 -m pip install --quiet --no-deps --target "$ROOT" \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*" \
        "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*"
fi
"$CUDA/bin/nvcc" --version | tail -n 1
echo "CUDA toolkit in $CUDA; for the build: eval \"\$(scripts/cuda-toolkit.sh --env)\""
