#!/usr/bin/env python3
"""What any NEP 49 handler costs: `x + 1` on 100 doubles under NumPy's own allocator,
under tensorpool's handler, and under two handlers that do no more than an allocator
can (built here from C with `cc`), in alternating rounds.

    .venv/bin/python crates/tensorpool-py/bench_handler_floor.py [--rounds N]

The two C handlers:
  - `malloc`: glibc's `malloc`/`free` (a thread cache of recently freed blocks);
  - `cache`: NumPy's own scheme, an exact-size cache of up to 7 blocks per size under
    1 KiB in front of `malloc`, with nothing checked.
Each `x + 1` makes three allocations and frees (the result and two 0-d arrays). NumPy's
built-in path uses the same cache without a handler's indirection (`PyDataMem_UserNEW`
through the handler capsule); the `cache` handler measures what that indirection alone
costs, a floor under any handler, validated or not. Prints the best time of each and
the median of the per-round ratios to NumPy's built-in path.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import sysconfig
import tempfile
import timeit

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import tensorpool  # noqa: E402

C_SOURCE = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_22_API_VERSION
#include <numpy/arrayobject.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ctx 0: malloc and free; ctx 1: NumPy's exact-size cache in front of them. */
#define SIZES 1024
#define DEPTH 7
static void *cache[SIZES][DEPTH];
static int cached[SIZES];

static void *floor_malloc(void *ctx, size_t size) {
    if ((intptr_t)ctx == 1 && size < SIZES && cached[size] > 0)
        return cache[size][--cached[size]];
    return malloc(size ? size : 1);
}
static void *floor_calloc(void *ctx, size_t n, size_t each) {
    size_t size = n * each;
    void *p = floor_malloc(ctx, size);
    if (p) memset(p, 0, size ? size : 1);
    return p;
}
static void *floor_realloc(void *ctx, void *p, size_t size) {
    (void)ctx;
    return realloc(p, size ? size : 1);
}
static void floor_free(void *ctx, void *p, size_t size) {
    if ((intptr_t)ctx == 1 && p && size < SIZES && cached[size] < DEPTH) {
        cache[size][cached[size]++] = p;
        return;
    }
    free(p);
}
static PyDataMem_Handler by_malloc = {"floor_malloc", 1,
    {(void *)0, floor_malloc, floor_calloc, floor_realloc, floor_free}};
static PyDataMem_Handler by_cache = {"floor_cache", 1,
    {(void *)1, floor_malloc, floor_calloc, floor_realloc, floor_free}};

static PyObject *handler(PyObject *self, PyObject *which) {
    long cached_one = PyLong_AsLong(which);
    return PyCapsule_New(cached_one ? &by_cache : &by_malloc, "mem_handler", NULL);
}
static PyObject *set_handler(PyObject *self, PyObject *capsule) {
    return PyDataMem_SetHandler(capsule);
}
static PyMethodDef methods[] = {
    {"handler", handler, METH_O, "a handler capsule: 0 malloc, 1 cache"},
    {"set_handler", set_handler, METH_O, "sets the handler, returns the last"},
    {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "handler_floor", NULL, -1, methods};
PyMODINIT_FUNC PyInit_handler_floor(void) {
    import_array();
    return PyModule_Create(&module);
}
"""


def build(directory: str):
    """Compiles the C handlers into an extension module in `directory` and imports it."""
    source = os.path.join(directory, "handler_floor.c")
    with open(source, "w") as f:
        f.write(C_SOURCE)
    target = os.path.join(directory, "handler_floor" + sysconfig.get_config_var("EXT_SUFFIX"))
    subprocess.run(
        ["cc", "-O2", "-shared", "-fPIC", "-I", sysconfig.get_paths()["include"],
         "-I", np.get_include(), source, "-o", target],
        check=True,
    )
    sys.path.insert(0, directory)
    import handler_floor

    return handler_floor


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--number", type=int, default=300_000, help="calls per measurement")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        floor = build(directory)
        mm = tensorpool.MemoryManager()
        x = np.ones(100)

        def op():
            return x + 1

        def timed():
            return timeit.timeit(op, number=args.number) / args.number

        def under(capsule):
            last = floor.set_handler(capsule)
            try:
                return timed()
            finally:
                floor.set_handler(last)

        def under_tensorpool():
            with tensorpool.use(mm):
                return timed()

        ways = {
            "NumPy's allocator": timed,
            "tensorpool's handler": under_tensorpool,
            "handler: malloc": lambda: under(floor.handler(0)),
            "handler: NumPy's cache": lambda: under(floor.handler(1)),
        }
        times = {name: [] for name in ways}
        for _ in range(args.rounds):
            for name, way in ways.items():
                times[name].append(way())
        base = times["NumPy's allocator"]
        print("| `x + 1`, 100 doubles | best | ratio (median) |")
        print("|---|---:|---:|")
        for name, ts in times.items():
            ratios = sorted(t / b for t, b in zip(ts, base))
            print(f"| {name} | {min(ts) * 1e9:.0f} ns | {ratios[len(ratios) // 2]:.3f}x |")


if __name__ == "__main__":
    main()
