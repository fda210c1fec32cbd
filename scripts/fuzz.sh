#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time (default 60 s each):
#
#   ./scripts/fuzz.sh [SECONDS] [TARGET ...]
#
# Targets (fuzz/fuzz_targets): manager_ops (the manager under arbitrary operation
# sequences and configurations, invariants checked after each step), strategies (the
# pool, best fit and arena on their own), trace_parsers (every trace format, gzip,
# and config files on arbitrary bytes). Needs the nightly toolchain; installs the
# pinned cargo-fuzz if it is missing. Corpora grow in fuzz/corpus/<target> (not
# committed); a crash is saved in fuzz/artifacts/<target>. Replay it with
# `cargo +nightly fuzz run <target> fuzz/artifacts/<target>/<file>`, and make the
# fix's regression test a unit test beside the code it fixes (the operations
# inlined, as every test of a bad input in crates/tensorpool/src does).
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_FUZZ_VERSION=0.13.1
SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(manager_ops strategies trace_parsers)
fi

if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    echo "cargo-fuzz needs the nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
    cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

status=0
mkdir -p fuzz/logs
for target in "${TARGETS[@]}"; do
    printf '\n==> fuzzing %s for %s s (log: fuzz/logs/%s.log)\n' "$target" "$SECONDS_EACH" "$target"
    mkdir -p "fuzz/corpus/$target"
    if cargo +nightly fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" -- \
        -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 -print_final_stats=1 \
        >"fuzz/logs/$target.log" 2>&1; then
        grep -E "^#[0-9]+ +DONE|^stat::(number_of_executed_units|new_units_added)" "fuzz/logs/$target.log"
    else
        status=1
        tail -n 60 "fuzz/logs/$target.log"
        echo "!!! $target found a failure: the input is in fuzz/artifacts/$target" >&2
    fi
done
exit $status
