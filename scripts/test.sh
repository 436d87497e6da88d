#!/usr/bin/env bash
# The whole test suite: installs what the tests need (a venv with cuda.h and cuda-python from
# PyPI), builds every crate (the shim and cuwired are used by the end-to-end tests as real
# processes), then runs every test. Tests that need a GPU skip with a visible message when
# there is none.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
scripts/setup-test-deps.sh
cargo build --workspace --all-targets
CUWIRE_REQUIRE_CLIENTS=1 cargo test --workspace --no-fail-fast
