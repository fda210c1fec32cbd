"""Debug mode from Python: MemoryManager(debug=True)."""

import ctypes
import gc

import numpy as np

import tensorpool


def test_overruns_are_found_and_leaks_counted():
    mm = tensorpool.MemoryManager(debug=True)
    assert mm.config()["debug"] is True
    buf = mm.allocate(100)
    assert bytes(memoryview(buf))[:4] == b"\xcd" * 4  # fresh memory is patterned
    ctypes.memset(buf.address + 100, 0, 2)  # two bytes past the end: a C extension's bug
    mm.deallocate(buf)
    [v] = mm.guard_violations()
    assert (v["size"], v["tier"], v["offset"]) == (100, "small", 0)
    assert mm.stats()["num_guard_violations"] == 1
    a = mm.empty(1000)
    b = mm.zeros((100, 100))
    assert not b.any()
    leaks = mm.leaks()
    assert (leaks["count"], leaks["bytes"], leaks["largest"]) == (2, 88_000, 80_000)
    del a, b
    gc.collect()
    assert mm.leaks()["count"] == 0
    assert tensorpool.MemoryManager().leaks() is None


def test_numpy_under_a_debug_manager():
    mm = tensorpool.MemoryManager(debug=True)
    with tensorpool.use(mm):
        x = np.arange(10_000, dtype=np.float64)
        y = np.sort(x[::-1])
        assert (x == y).all()
        del x, y
    gc.collect()
    assert mm.guard_violations() == []
    assert mm.leaks()["count"] == 0


def test_an_arena_scope_that_ends_reports_no_leak(capfd):
    # Found by a user hunt: an arena scope of a debug-mode manager dropped its arena
    # with its blocks still counted live, and debug mode reported them as leaks
    # (also when the last array of a closed scope went).
    mm = tensorpool.MemoryManager(debug=True)
    with mm.arena() as a:
        y = a.zeros(10)
        del y
    scope = mm.arena()
    z = scope.zeros(10)
    scope.close()  # deferred: z still uses it
    del z
    gc.collect()
    assert "leak" not in capfd.readouterr().err
    s = mm.stats()
    assert (s["deferred_arena_scopes"], s["deferred_arena_bytes"]) == (0, 0)
