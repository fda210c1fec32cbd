#!/usr/bin/env bash
# Every test of the project, in the order that fails fastest. `.ci/run` calls this.
#
#   formatting and lints (rustfmt, clippy -D warnings), docs without warnings,
#   the Markdown's links
#   the Rust tests: unit, property (proptest), integration, doc tests, all features
#   loom models of the small-block engine's hand-offs (remote frees, collection,
#   adoption of an exited thread's heap, the trim handshake)
#   the unsafe core under Miri (a fast subset, see docs/TESTING.md), and the
#   multi-threaded stress test under Miri's data-race detector (in the background)
#   the library's unit, property and integration tests again under AddressSanitizer
#   the Python package: built with maturin into .venv (pinned requirements), pytest,
#   then NumPy's own tests (test_multiarray.py, the memory-heavy classes) with
#   tensorpool as NumPy's allocator
#   libtensorpool.so preloaded under real programs (scripts/preload_test.sh): the C
#   test program, tools, NumPy and its tests, `tensorpool run`
set -euo pipefail
cd "$(dirname "$0")/.."

# Every build here starts from a clean tree in CI, where incremental compilation
# only adds work (about 10% of each build of the workspace's crates).
export CARGO_INCREMENTAL=0

step() { printf '\n==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

# Miri interprets one test at a time on one core: it runs in the background from
# here on, while the other steps build and run on the other, and reports at the end.
MIRI_LOG=target/miri-test.log
MIRI_PID=
trap 'if [ -n "$MIRI_PID" ]; then kill "$MIRI_PID" 2>/dev/null || true; fi' EXIT
NIGHTLY=
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    NIGHTLY=1
    step "Miri (in the background, log in $MIRI_LOG): the unsafe core and the threads"
    if ! cargo +nightly miri --version >/dev/null 2>&1; then
        rustup component add --toolchain nightly miri rust-src
    fi
    mkdir -p target
    # Bounded, so that a test gone slow under Miri fails here, naming itself in the
    # log, instead of running CI out of time (about 5 minutes is usual).
    (
        set -e
        MIRIFLAGS="-Zmiri-strict-provenance" timeout 1200 cargo +nightly miri test -p tensorpool --lib --locked -- \
            arena:: fixed_pool:: best_fit:: huge:: upstream:: manager:: tensor:: slab:: debug::
        timeout 900 cargo +nightly miri test -p tensorpool --test threads --locked
    ) >"$MIRI_LOG" 2>&1 &
    MIRI_PID=$!
else
    printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
    printf '!!! NO NIGHTLY TOOLCHAIN: Miri and AddressSanitizer DID NOT RUN (see docs/TESTING.md) !!!\n'
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'
fi

step "the fuzz targets build (their own workspace; scripts/fuzz.sh runs them)"
# In the main target directory: the dependencies clippy just checked are reused.
CARGO_TARGET_DIR=target cargo check --locked --manifest-path fuzz/Cargo.toml
cargo fmt --manifest-path fuzz/Cargo.toml -- --check

step "cargo doc: no warnings (broken links included)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked --all-features -p tensorpool --lib
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked -p tensorpool-cli --lib
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked -p tensorpool-py --document-private-items
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --locked -p tensorpool-malloc

step "Markdown: every relative link and #anchor resolves"
python3 scripts/check_links.py

step "cargo test (all features)"
cargo test --workspace --all-features --locked

step "loom: the small-block engine's hand-offs, every interleaving up to 3 preemptions"
# tensorpool itself unoptimised (its test binary builds in 10 s instead of 55 s; the
# models then run in about 28 s instead of 19 s), loom and the other dependencies
# optimised as the test profile has them.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test --locked -p tensorpool --lib \
    --config 'profile.test.package.tensorpool.opt-level=0' -- loom_models

if [ -n "$NIGHTLY" ]; then
    # The doc tests are left out here: each is its own binary to build with the
    # sanitizer (minutes on 2 cores), they use only the public API, and they ran above.
    # So are the long randomized workloads of tests/faults.rs and tests/patterns.rs
    # (a minute or more each under the sanitizer): they ran natively above, and the
    # fuzz targets drive the same operations under the sanitizer (scripts/fuzz.sh).
    # Unoptimised: the sanitizer's checks do not need it, and the build takes half
    # the time (about 1 minute on 2 cores instead of 2; the tests run 30 s instead of 17).
    step "AddressSanitizer: the library's unit and property tests, threads and debug mode"
    CARGO_PROFILE_TEST_OPT_LEVEL=0 RUSTFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR=target/asan \
        cargo +nightly test --locked -p tensorpool --all-features --lib --test threads \
        --test debug_mode --target x86_64-unknown-linux-gnu
fi

step "Python: the tensorpool package (maturin) and its tests (pytest)"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r crates/tensorpool-py/requirements.txt
(cd crates/tensorpool-py && ../../.venv/bin/maturin develop --release --locked --quiet)
.venv/bin/python -m pytest -q -p no:cacheprovider crates/tensorpool-py/python/tests

step "NumPy's own tests (memory-heavy classes of test_multiarray.py) with tensorpool as NumPy's allocator"
./scripts/numpy_suite.sh --quick

step "libtensorpool.so under real programs (LD_PRELOAD, tensorpool run)"
./scripts/preload_test.sh

if [ -n "$MIRI_PID" ]; then
    step "Miri: waiting for the background run"
    if wait "$MIRI_PID"; then
        grep -E '^test result' "$MIRI_LOG"
    else
        tail -n 60 "$MIRI_LOG"
        echo "Miri FAILED (full log: $MIRI_LOG)" >&2
        exit 1
    fi
fi

step "all tests passed"
