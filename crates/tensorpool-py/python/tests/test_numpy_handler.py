"""tensorpool as NumPy's data-memory handler (NEP 49), and recording traces."""

import contextvars
import gc
import json
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import tensorpool
from conftest import data_address, live
from tensorpool.workloads import mlp_training


def test_install_makes_numpy_allocate_from_the_manager(mm):
    assert tensorpool.get_handler_name() == "default_allocator"
    tensorpool.install(mm)
    assert tensorpool.get_handler_name() == "tensorpool"
    before = mm.stats()["num_allocs"]
    a = np.ones(1000)
    b = a * 2
    assert mm.stats()["num_allocs"] >= before + 2
    assert data_address(b) % 64 == 0
    tensorpool.uninstall()
    assert tensorpool.get_handler_name() == "default_allocator"
    del a, b
    gc.collect()
    assert live(mm) == 0


def test_numpy_core_multiarray_names_the_handler(mm):
    with tensorpool.use(mm):
        assert np._core.multiarray.get_handler_name() == "tensorpool"
        assert np._core.multiarray.get_handler_name(np.ones(3)) == "tensorpool"
    assert np._core.multiarray.get_handler_name() == "default_allocator"


def test_use_restores_the_previous_handler_even_on_errors(mm):
    other = tensorpool.MemoryManager()
    with tensorpool.use(mm):
        with tensorpool.use(other):
            x = np.ones(100)
        y = np.ones(100)
        with pytest.raises(ZeroDivisionError):
            with tensorpool.use(other):
                1 / 0
        z = np.ones(100)
    assert tensorpool.get_handler_name() == "default_allocator"
    assert live(other) == 1 and live(mm) == 2
    del x, y, z
    gc.collect()
    assert live(other) == 0 and live(mm) == 0


def test_arrays_are_freed_by_their_handler_after_uninstall(mm):
    with tensorpool.use(mm):
        arrays = [np.full(n, 7, np.int32) for n in (1, 100, 100_000, 3_000_000)]
    default_array = np.ones(10)
    assert live(mm) == 4
    assert all((a == 7).all() for a in arrays)
    del arrays
    gc.collect()
    assert live(mm) == 0
    del default_array


def test_the_manager_lives_while_numpy_holds_its_arrays():
    mm = tensorpool.MemoryManager()
    with tensorpool.use(mm):
        a = np.arange(10_000)
    del mm
    gc.collect()
    assert a.sum() == 10_000 * 9_999 // 2
    del a
    gc.collect()


def test_calloc_gives_zeros_in_reused_memory(mm):
    with tensorpool.use(mm):
        for n in (10, 1000, 100_000, 2_000_000):
            dirty = np.full(n, 0xAB, np.uint8)
            del dirty
            z = np.zeros(n, np.uint8)
            assert not z.any()
            del z


def test_realloc_keeps_contents(mm):
    with tensorpool.use(mm):
        a = np.arange(100, dtype=np.int64)
        a.resize(100_000, refcheck=False)  # realloc to the large tier
        assert (a[:100] == np.arange(100)).all()
        a.resize(10, refcheck=False)  # and back down
        assert (a == np.arange(10)).all()
        grown = np.fromiter(range(50_000), dtype=np.int64)  # grows by realloc
        assert (grown == np.arange(50_000)).all()
        s = np.array(["a", "bb"]).astype("U50")
        assert s[1] == "bb"
    del a, grown, s
    gc.collect()
    assert live(mm) == 0


def test_bad_pointers_from_numpy_are_reported_and_change_nothing(mm, capfd):
    with tensorpool.use(mm):
        keep = np.ones(1000)
    addr = data_address(keep)
    before = mm.stats()
    mm._handler_free(addr + 8)  # inside a block
    mm._handler_free(0x1000)  # never ours
    block = mm.allocate(64)
    mm._handler_free(block.address)  # a typed block, not NumPy's
    err = capfd.readouterr().err
    assert err.count("tensorpool: NumPy freed a pointer") == 3
    assert "inside" in err or "interior" in err.lower()
    after = mm.stats()
    assert after["handler_invalid_frees"] == 3
    assert after["allocated_blocks"] == before["allocated_blocks"] + 1
    assert (keep == 1).all()
    mm._handler_free(addr)  # the real free works...
    mm._handler_free(addr)  # ...once
    assert mm.stats()["handler_invalid_frees"] == 4
    # `keep` no longer owns its memory as far as the manager knows; let NumPy's own
    # free of it be the fifth report rather than a crash.
    del keep
    gc.collect()
    assert mm.stats()["handler_invalid_frees"] == 5


def test_out_of_memory_under_the_handler_is_a_memory_error():
    mm = tensorpool.MemoryManager(memory_limit="16 MiB")
    with tensorpool.use(mm):
        small = np.ones(1000)
        with pytest.raises(MemoryError):
            np.empty(64 << 20, np.uint8)
        assert (small == 1).all()
        after = np.ones(1 << 20, np.uint8)  # later allocations work
    assert mm.stats()["num_ooms"] >= 1
    del small, after


def test_new_threads_start_on_numpys_default_and_can_install(mm):
    tensorpool.install(mm)
    names = []
    t = threading.Thread(target=lambda: names.append(tensorpool.get_handler_name()))
    t.start()
    t.join()
    assert names == ["default_allocator"]
    with ThreadPoolExecutor(2, initializer=tensorpool.install, initargs=(mm,)) as pool:
        assert set(pool.map(lambda _: tensorpool.get_handler_name(), range(8))) == {"tensorpool"}
    ctx = contextvars.copy_context()
    t = threading.Thread(target=lambda: names.append(ctx.run(tensorpool.get_handler_name)))
    t.start()
    t.join()
    assert names[-1] == "tensorpool"


def test_threads_allocate_and_free_through_the_handler_without_the_gil(mm):
    """NumPy releases the GIL in large operations; arrays also die in other threads."""
    results, handoff = [], []
    lock = threading.Lock()

    def work(seed):
        # made before the handler: a Generator keeps a small array cached for good
        rng = np.random.default_rng(seed)
        tensorpool.install(mm)
        total = 0.0
        for i in range(200):
            a = rng.standard_normal(int(rng.integers(1, 200_000)))
            b = np.sort(a)  # releases the GIL
            c = b @ b
            total += float(c)
            if i % 10 == 0:
                with lock:
                    handoff.append(a)  # freed by another thread
            elif handoff:
                with lock:
                    if handoff:
                        handoff.pop()
        results.append(total)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(np.isfinite(results))
    handoff.clear()
    gc.collect()
    assert live(mm) == 0
    assert mm.stats()["handler_invalid_frees"] == 0


def test_mlp_training_gives_identical_results_under_install(mm):
    losses, w1 = mlp_training(steps=40)
    with tensorpool.use(mm):
        losses_tp, w1_tp = mlp_training(steps=40)
        assert np._core.multiarray.get_handler_name(w1_tp) == "tensorpool"
    assert losses == losses_tp
    assert np.array_equal(w1, w1_tp)
    assert losses[-1] < losses[0]
    assert mm.stats()["num_allocs"] > 1000


def test_record_writes_a_trace_the_command_replays(tmp_path, mm):
    path = tmp_path / "numpy.csv"
    outlives = None
    with tensorpool.record(path, mm) as used:
        assert used is mm
        assert tensorpool.get_handler_name() == "tensorpool"
        for n in (10, 1000, 100_000):
            a = np.ones(n)
            b = a + 1
            del a, b
        outlives = np.zeros(500)
        c = np.arange(10)
        c.resize(1000, refcheck=False)
        del c
    assert tensorpool.get_handler_name() == "default_allocator"
    del outlives  # after the recording: not in the trace
    gc.collect()
    lines = path.read_text().splitlines()
    assert lines[0] == "Thread,Time,Action,Pointer,Size,Stream"
    actions = [line.split(",")[2] for line in lines[1:]]
    assert actions.count("allocate") == actions.count("free") + 1
    sizes = {int(line.split(",")[4]) for line in lines[1:]}
    assert {80, 8000, 800_000, 4000, 8000}.issubset(sizes)
    # addresses freed are ones allocated before
    live_addresses = set()
    for line in lines[1:]:
        _, _, action, ptr, _, _ = line.split(",")
        if action == "allocate":
            assert ptr not in live_addresses
            live_addresses.add(ptr)
        else:
            live_addresses.remove(ptr)
    cli = _tensorpool_command()
    if cli is None:
        pytest.skip("the tensorpool command is not built (cargo build --release)")
    out = subprocess.run([cli, "replay", str(path), "--reps", "1", "--json", "--quiet"],
                         capture_output=True, text=True, check=True)
    [row] = json.loads(out.stdout)
    assert row["allocations"] == actions.count("allocate")
    assert row["unmatched_frees"] == 0 and row["leaked_blocks"] == 1
    ours = [a for a in row["allocators"] if a["name"] == "tensorpool"]
    assert ours and ours[0]["error"] is None


def test_a_recorded_realloc_has_both_blocks_live_during_the_copy(tmp_path, mm):
    # A trace sizes replays and plans: its peak must be the program's.
    path = tmp_path / "realloc.csv"
    with tensorpool.record(path, mm):
        a = np.zeros(100_000)
        a.resize(200_000, refcheck=False)
        a[:] = 1
        assert a[:10].tolist() == [1.0] * 10
        del a
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    rows = [r for r in rows if int(r[4]) >= 800_000]  # not NumPy's scalars
    assert [(r[2], int(r[4])) for r in rows] == [
        ("allocate", 800_000), ("allocate", 1_600_000), ("free", 800_000), ("free", 1_600_000)]
    live = peak = 0
    for _, _, action, _, size, _ in rows:
        live += int(size) if action == "allocate" else -int(size)
        peak = max(peak, live)
    assert peak == 2_400_000


def test_a_failed_realloc_is_recorded_as_a_failed_allocation(tmp_path):
    # A failed allocation was recorded, a failed resize not (a user hunt).
    mm = tensorpool.MemoryManager(memory_limit="16 MiB")
    path = tmp_path / "failed.csv"
    with tensorpool.record(path, mm):
        a = np.ones(1000)
        with pytest.raises(MemoryError):
            a.resize(4_000_000, refcheck=False)
        assert (a == 1).all()
        del a
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    assert ["allocate failure", "32000000"] in [[r[2], r[4]] for r in rows]


def test_record_reports_a_path_it_cannot_write(tmp_path):
    with pytest.raises(OSError, match="cannot record"):
        with tensorpool.record(tmp_path / "no" / "such" / "dir.csv"):
            pass
    assert tensorpool.get_handler_name() == "default_allocator"


def test_install_rejects_what_is_not_a_manager():
    with pytest.raises(TypeError, match="MemoryManager"):
        tensorpool.install("mm")
    tensorpool.install()
    assert tensorpool.get_handler_name() == "tensorpool"
    assert tensorpool.default_manager().stats()["num_allocs"] >= 0


def _tensorpool_command():
    import os
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[4]
    for profile in ("release", "debug"):
        exe = root / "target" / profile / "tensorpool"
        if exe.exists():
            return str(exe)
    return os.environ.get("TENSORPOOL_COMMAND")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_writes_nothing_into_the_recording(tmp_path):
    # Found by a review: a child forked during a recording (a multiprocessing
    # worker) wrote its own arrays into the parent's trace, and at its exit a copy
    # of the parent's buffered lines.
    path = tmp_path / "forked.csv"
    code = f"""
import os, sys, numpy as np, tensorpool
with tensorpool.record({str(path)!r}):
    keep = [np.ones(1000) for _ in range(10)]
    pid = os.fork()
    if pid == 0:
        more = [np.ones(2000) for _ in range(50)]
        sys.exit(0)
    os.waitpid(pid, 0)
    del keep
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    lines = path.read_text().splitlines()[1:]
    assert not any(",16000," in line for line in lines), "the child's arrays were recorded"
    allocs = [line for line in lines if ",allocate," in line]
    frees = [line for line in lines if ",free," in line]
    assert len(allocs) == len(frees) == len(set(allocs)), "lines written twice"
