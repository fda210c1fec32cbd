#!/usr/bin/env bash
# The edit-test loop's quick check (about a minute warm): formatting, lints, and the
# library's unit and integration tests in a debug build. `scripts/test.sh` runs every
# test (loom, Miri, sanitizers, Python, NumPy's suite) and is what CI runs.
#
#   scripts/check.sh            the whole workspace's lints, the library's tests
#   scripts/check.sh slab::     the same, with the tests filtered by name
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
cargo test --locked -p tensorpool --all-features --lib --tests -- "$@"
