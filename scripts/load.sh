#!/usr/bin/env bash
# The load run of issue 7: CUWIRE_LOAD_CLIENTS client processes (default 64) each running
# CUWIRE_LOAD_OPS mixed, verified operations (default 10000) against one cuwired on the emulated
# backend; e2e/tests/load.rs checks errors, checksums and that memory comes back, and prints
# throughput and latency percentiles. Needs the client toolchain (scripts/setup-test-deps.sh).
#
#   scripts/load.sh                                        # 64 x 10000
#   CUWIRE_LOAD_CLIENTS=16 CUWIRE_LOAD_OPS=2000 scripts/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

export CUWIRE_LOAD_CLIENTS="${CUWIRE_LOAD_CLIENTS:-64}"
export CUWIRE_LOAD_OPS="${CUWIRE_LOAD_OPS:-10000}"

# The tests take cuwired and the shim from the profile they are built in (debug).
cargo build --workspace
echo "load: ${CUWIRE_LOAD_CLIENTS} clients x ${CUWIRE_LOAD_OPS} ops"
CUWIRE_REQUIRE_CLIENTS=1 cargo test -p cuwire-e2e --test load -- --ignored --nocapture --test-threads=1 load
