#!/usr/bin/env bash
# Creates <repo>/.venv with what the end-to-end tests need (idempotent; fast
# when already done; prints nothing but errors):
#   - nvidia-cuda-runtime-cu12: its include/cuda.h is what the C clients build against
#   - cuda-bindings: the Python client (cuda.bindings.driver), which loads
#     libcuda.so.1 by name and reaches the driver through cuGetProcAddress_v2
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
stamp="$venv/.cuwire-test-deps"
want="$(printf '%s\n' "${requirements[@]}")"

have_headers() {
    compgen -G "$venv/lib/python3*/site-packages/nvidia/cuda_runtime/include/cuda.h" >/dev/null
}

if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && have_headers; then
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
printf '%s\n' "$want" >"$stamp"
