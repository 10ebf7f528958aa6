#!/usr/bin/env bash
# Installs the CUDA 13.0 toolkit a `--features cuda` build needs, from NVIDIA's PyPI wheels, into
# .cuda/ of this repository (ignored by git), on a machine with no GPU and no system CUDA:
#
#   scripts/cuda-toolkit.sh                  # everything a linked build needs (about 1 GB)
#   scripts/cuda-toolkit.sh --compile-only   # nvcc and headers: enough for `cargo check` (CI)
#   eval "$(scripts/cuda-toolkit.sh --env)"  # PATH, CUDA_ROOT, CUDA_PATH, CUDA_COMPUTE_CAP,
#                                            # CUDAFORGE_THREADS
#   cargo build --release --features cuda
#
# Compile pieces: nvcc, the runtime headers, CCCL (`nv/target`), crt, nvvm. Link pieces: cudart, cuBLAS,
# cuBLASLt, cuRAND and NVRTC, with the unversioned `libX.so` names the linker looks for, and a
# stub libcuda.so (the driver library is not on PyPI: it comes with the NVIDIA driver). The stub
# defines every driver entry point cudarc declares and does nothing; it only satisfies the
# linker, and carries the driver's soname (libcuda.so.1) so the built binary loads the real
# driver on the machine that runs it.
#
# CUDA_COMPUTE_CAP (default 90: H100/H200) picks the GPUs the kernels are built for; set it
# before building for another (80: A100, 89: L40/RTX 4090). CUDAFORGE_THREADS (default: every
# core) is how many nvcc runs candle-kernels' build script starts at once; its own default is
# half the cores, and on 2 cores its 12 minutes of nvcc then ran on one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD/.cuda"
CUDA="$ROOT/nvidia/cu13"
if [ "${1:-}" = "--env" ]; then
    echo "export PATH=\"$CUDA/bin:\$PATH\" CUDA_ROOT=\"$CUDA\" CUDA_PATH=\"$CUDA\" CUDA_COMPUTE_CAP=\"\${CUDA_COMPUTE_CAP:-90}\" CUDAFORGE_THREADS=\"\${CUDAFORGE_THREADS:-$(nproc)}\""
    exit 0
fi
COMPILE=("nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-crt==13.0.*"
    "nvidia-nvvm==13.0.*" "nvidia-cuda-cccl==13.0.*")
LINK=("nvidia-cublas==13.0.*" "nvidia-curand==10.4.0.*" "nvidia-cuda-nvrtc==13.0.*")
if [ "${1:-}" = "--compile-only" ]; then SET=compile; WANT=("${COMPILE[@]}"); else SET=full; WANT=("${COMPILE[@]}" "${LINK[@]}"); fi

# .cuda/.installed says which set is there ("compile" or "full"). pip --target into an existing
# tree skips wheels whose top folder (nvidia/) exists, so a set is installed whole, in one call.
HAVE=$(cat "$ROOT/.installed" 2>/dev/null || true)
if [ "$HAVE" != full ] && [ "$HAVE" != "$SET" ]; then
    rm -rf "$ROOT"
    python3 -m pip install --quiet --no-deps --target "$ROOT" "${WANT[@]}"
    echo "$SET" >"$ROOT/.installed"
fi

if [ "${1:-}" != "--compile-only" ]; then
    for lib in cudart cublas cublasLt curand nvrtc; do
        real=$(ls "$CUDA/lib/lib$lib.so."* | sort | head -n 1)
        ln -sf "$(basename "$real")" "$CUDA/lib/lib$lib.so"
    done
    # The driver entry points: the names cudarc's bindings load, read from the cudarc source
    # the lock file pins (downloaded by cargo if need be).
    cudarc=$(cargo metadata --locked --format-version 1 --features cuda |
        python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cudarc"))')
    mkdir -p "$CUDA/lib/stubs"
    grep -o 'load::<_F>("cu[A-Za-z0-9_]*")' "$(dirname "$cudarc")/src/driver/sys/mod.rs" | sed 's/.*("\(.*\)")/\1/' | sort -u |
        awk '{ print "int " $1 "(void) { return 999; /* CUDA_ERROR_UNKNOWN */ }" }' >"$CUDA/lib/stubs/libcuda-stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CUDA/lib/stubs/libcuda.so" "$CUDA/lib/stubs/libcuda-stub.c"
    echo "linking: cuBLAS, cuRAND, NVRTC in $CUDA/lib; driver stub ($(wc -l <"$CUDA/lib/stubs/libcuda-stub.c") entry points) in $CUDA/lib/stubs"
fi
"$CUDA/bin/nvcc" --version | tail -n 1
echo "CUDA toolkit in $CUDA; for the build: eval \"\$(scripts/cuda-toolkit.sh --env)\""
