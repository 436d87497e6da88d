#!/usr/bin/env bash
# The main job, end to end on this machine: builds cuwire, starts cuwired on an emulated GPU
# pool with development certificates, and runs a plain CUDA program (examples/saxpy.c, built
# with cc against cuda.h and linked with -lcuda) through the shim. No GPU needed.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

echo "== installing cuda.h (PyPI wheel nvidia-cuda-runtime-cu12) into .venv"
scripts/setup-test-deps.sh
include="$(ls -d "$repo"/.venv/lib/python3*/site-packages/nvidia/cuda_runtime/include | head -1)"

echo "== building cuwire"
cargo build --quiet -p cuwire-server -p cuwire-shim
work="$(mktemp -d)"
server_pid=""
cleanup() {
    [[ -n "$server_pid" ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

# The shim under both names a program may look for.
mkdir -p "$work/lib"
ln -s "$repo/target/debug/libcuda.so" "$work/lib/libcuda.so.1"
ln -s "$repo/target/debug/libcuda.so" "$work/lib/libcuda.so"

echo "== starting cuwired (emulated GPU, development certificates in $work/certs)"
./target/debug/cuwired --dev "$work/certs" --listen 127.0.0.1:0 --emu-memory 1GiB >"$work/cuwired.log" 2>&1 &
server_pid=$!
for _ in $(seq 100); do [[ -f "$work/certs/env" ]] && break; sleep 0.1; done
[[ -f "$work/certs/env" ]] || { cat "$work/cuwired.log"; echo "cuwired did not start" >&2; exit 1; }
cat "$work/certs/env"

echo "== building examples/saxpy.c with cc against cuda.h, linked with -lcuda"
cc -O2 -I"$include" examples/saxpy.c -o "$work/saxpy" -L"$work/lib" -lcuda -lm

echo "== running it with the shim as its libcuda.so.1"
set -a
# shellcheck disable=SC1091
source "$work/certs/env"
set +a
LD_LIBRARY_PATH="$work/lib" CUWIRE_STATS=1 "$work/saxpy"
