#!/usr/bin/env bash
# Fuzzes cuwire's untrusted-input paths with cargo-fuzz (libFuzzer): frame decoding, the
# handshake, and request dispatch on the emulated GPU (fuzz/src/lib.rs).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s each, every target)
#
# Installs cargo-fuzz if it is missing. cargo-fuzz needs nightly compiler features; on a stable
# toolchain RUSTC_BOOTSTRAP=1 unlocks them (set here unless the toolchain is nightly). The
# sanitizer is off (`-s none`): every crate the targets reach forbids unsafe code, and without
# ASan the build is faster and the executions several times more. FUZZ_SANITIZER=address turns
# it back on.
#
# Starts from the committed seeds in fuzz/corpus/<target>/ and writes new inputs to a scratch
# directory (fuzz/target/corpus-new/<target>), so the committed corpus is left alone. A crash
# leaves its input in fuzz/artifacts/<target>/ and makes this script fail.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame_decode handshake dispatch)
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi
if ! rustc --version | grep -q nightly; then
    export RUSTC_BOOTSTRAP=1
fi
# The fuzz workspace uses the versions the main workspace has locked.
[ -f fuzz/Cargo.lock ] || cp Cargo.lock fuzz/Cargo.lock

sanitizer="${FUZZ_SANITIZER:-none}"
start=$(date +%s)
# One cargo invocation builds every target (they share all their dependencies).
cargo fuzz build -s "$sanitizer" || { echo "fuzz.sh: building the fuzz targets failed" >&2; exit 1; }
built=$(date +%s)
echo "fuzz.sh: built in $((built - start)) s" >&2

status=0
for t in "${targets[@]}"; do
    scratch="fuzz/target/corpus-new/$t"
    log="fuzz/target/fuzz-$t.log"
    mkdir -p "$scratch"
    echo "fuzz.sh: $t for ${secs} s (log: $log)" >&2
    # New inputs go to the scratch directory (the first one named); the seeds are only read.
    # No allocation beyond the frame limit: a frame is at most 64 MiB and the decoder holds one
    # at a time, so the process must stay far below 512 MB (it peaks near 70 MB); an input
    # that runs longer than 10 s is reported as a hang.
    if cargo fuzz run -s "$sanitizer" "$t" "$scratch" "fuzz/corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=512 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        echo "fuzz.sh: $t ok: $(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}') runs," \
            "coverage $(grep -oE 'cov: [0-9]+' "$log" | tail -n 1), peak RSS $(grep -E '^stat::peak_rss_mb' "$log" | awk '{print $2}') MB" >&2
    else
        echo "fuzz.sh: $t FAILED (input in fuzz/artifacts/$t/):" >&2
        grep -E "panicked|ERROR|SUMMARY|Test unit written" "$log" >&2 || tail -n 20 "$log" >&2
        status=1
    fi
done
echo "fuzz.sh: finished in $(( $(date +%s) - start )) s" >&2
exit $status
