#!/usr/bin/env bash
# The whole test suite: installs what the tests need (a venv with cuda.h and cuda-python from
# PyPI), builds every crate (the shim and cuwired are used by the end-to-end tests as real
# processes), then runs every test, then fuzzes each cargo-fuzz target for a minute. Tests that
# need a GPU skip with a visible message when there is none.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
scripts/setup-test-deps.sh
cargo build --workspace --all-targets
CUWIRE_REQUIRE_CLIENTS=1 cargo test --workspace --no-fail-fast
# Then each fuzz target (frames, handshake, dispatch) for a bounded time from the committed
# seeds: CUWIRE_FUZZ_SECONDS per target, default 60; 0 skips it (the seeds themselves are
# replayed by `cargo test` above in any case).
fuzz_seconds="${CUWIRE_FUZZ_SECONDS:-60}"
if [[ "$fuzz_seconds" != 0 ]]; then
    scripts/fuzz.sh "$fuzz_seconds"
fi
