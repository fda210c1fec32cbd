#!/usr/bin/env bash
# NumPy's own tests with tensorpool as NumPy's allocator (the NEP 49 handler installed
# for the whole session by crates/tensorpool-py/python/tests/numpy_suite_plugin.py).
#
#   ./scripts/numpy_suite.sh            the whole numpy/_core/tests/test_multiarray.py (~2 min)
#   ./scripts/numpy_suite.sh --quick    the memory-heavy classes the test command runs (~20 s)
#   ./scripts/numpy_suite.sh --compare  the whole file without tensorpool too, to compare
#   ./scripts/numpy_suite.sh --preload LIB  the quick classes with libtensorpool.so preloaded
#                                       (tensorpool as Python's and NumPy's malloc; no handler)
#
# Expects .venv with the package built (./scripts/test.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK_CLASSES="TestResize or TestCreation or TestPickling or TestNewBufferProtocol or \
TestFromBuffer or TestZeroFill or TestAlignment or TestStructured or TestFancyIndexing or \
TestMethods or TestArrayCreationCopyArgument or TestBool or TestTake or TestPutmask or \
TestConcatenate or TestCopyTo or TestHashing or TestRecord or TestView or TestArgmax or \
TestArgmin or TestMinMax or TestClip or TestCompress or TestWhere or TestChoose or \
TestRepeat or TestStringify or TestSizeOf"

run() {
    .venv/bin/python -m pytest -q -p no:cacheprovider "$@" --pyargs numpy._core.tests.test_multiarray
}

case "${1:-}" in
    --quick)
        PYTHONPATH=crates/tensorpool-py/python/tests run -p numpy_suite_plugin -k "$QUICK_CLASSES"
        ;;
    --preload)
        LD_PRELOAD="$(realpath "$2")" run -k "$QUICK_CLASSES"
        ;;
    --compare)
        echo "==> without tensorpool"
        run | tail -n 1
        echo "==> with tensorpool as NumPy's allocator"
        PYTHONPATH=crates/tensorpool-py/python/tests run -p numpy_suite_plugin | tail -n 3
        ;;
    *)
        PYTHONPATH=crates/tensorpool-py/python/tests run -p numpy_suite_plugin
        ;;
esac
