#!/usr/bin/env bash
# Creates <repo>/.venv with what the end-to-end tests need (idempotent; fast
# when already done; prints nothing but errors):
#   - nvidia-cuda-runtime-cu12: its include/cuda.h is what the C clients build against
#   - cuda-bindings: the Python client (cuda.bindings.driver), which loads
#     libcuda.so.1 by name and reaches the driver through cuGetProcAddress_v2
#   - CUDA 13 nvcc, libNVVM, crt headers and libcudart 13 (about 100 MB of wheels), for
#     e2e/tests/nvcc13.rs. They go to <repo>/.venv/cuda13 (pip --target), not into
#     site-packages: cuda-pathfinder looks in site-packages/nvidia/cu13 before the CUDA 12
#     wheels, so there they would change which libNVVM and headers numba-cuda and
#     cuda-bindings 12.9 pick. nvcc is <repo>/.venv/cuda13/nvidia/cu13/bin/nvcc (override the
#     directory with CUWIRE_CUDA13); it needs a host C++ compiler (g++).
# The e2e harness finds them at .venv/bin/python and
# .venv/lib/python3*/site-packages/nvidia/cuda_runtime/include
# (override with CUWIRE_PYTHON / CUWIRE_CUDA_INCLUDE).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
python="${PYTHON:-python3}"
requirements=(
    "nvidia-cuda-runtime-cu12==12.9.79"
    "cuda-bindings==12.9.*"
    "nvidia-cuda-nvcc-cu12==12.9.86"
    "nvidia-cuda-nvrtc-cu12==12.9.86"
    "numba-cuda==0.30.4"
    "numba==0.68.1"
    "llvmlite==0.50.0"
    "cuda-core==1.2.2"
    "numpy==2.4.6"
)
cuda13="$venv/cuda13"
cuda13_requirements=(
    "nvidia-cuda-nvcc==13.0.88"
    "nvidia-nvvm==13.0.88"
    "nvidia-cuda-crt==13.0.88"
    "nvidia-cuda-runtime==13.0.96"
)
stamp="$venv/.cuwire-test-deps"
want="$(printf '%s\n' "${requirements[@]}" "--target $cuda13" "${cuda13_requirements[@]}")"

have_headers() {
    compgen -G "$venv/lib/python3*/site-packages/nvidia/cuda_runtime/include/cuda.h" >/dev/null
}
have_nvcc13() {
    [[ -x "$cuda13/nvidia/cu13/bin/nvcc" && -f "$cuda13/nvidia/cu13/lib/libcudart.so.13" ]]
}

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && have_headers && have_nvcc13; then
    exit 0
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
fail() {
    echo "setup-test-deps: $1 (output below)" >&2
    cat "$log" >&2
    exit 1
}

if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv" >"$log" 2>&1 || fail "could not create the venv $venv with $python"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "${requirements[@]}" >"$log" 2>&1 || fail "pip install failed"
"$venv/bin/python" -c "from cuda.bindings import driver" >"$log" 2>&1 \
    || fail "cuda.bindings.driver does not import"
have_headers || fail "cuda.h not found under $venv/lib/python3*/site-packages/nvidia/cuda_runtime/include"
# --upgrade: replace what an earlier, different pin left there (pip --target does not).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$cuda13" \
    "${cuda13_requirements[@]}" >"$log" 2>&1 || fail "pip install --target $cuda13 failed"
have_nvcc13 || fail "nvcc or libcudart.so.13 not found under $cuda13/nvidia/cu13"
printf '%s\n' "$want" >"$stamp"
