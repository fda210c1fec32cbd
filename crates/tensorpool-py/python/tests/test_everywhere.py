"""tensorpool for every NumPy array of a process (`install_everywhere`): each test runs
in a fresh interpreter, since the switch patches NumPy's default handler for the whole
process."""

import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import concurrent.futures, gc, os, threading
import numpy as np
import tensorpool
try:
    from numpy._core.multiarray import get_handler_name
except ImportError:
    from numpy.core.multiarray import get_handler_name
mm = tensorpool.MemoryManager()
def allocated():
    return mm.stats()["allocated_bytes"]
"""


def run(body: str) -> str:
    """Runs `body` after the prelude in a new interpreter; returns its output."""
    code = PRELUDE + textwrap.dedent(body)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tensorpool:" not in done.stderr, done.stderr  # no bad pointer reported
    return done.stdout


def test_threads_started_later_allocate_from_the_manager():
    run(
        """
        before = np.ones(100_000)            # NumPy's, made before
        tensorpool.install_everywhere(mm)
        assert get_handler_name() == "tensorpool"
        names, arrays = [], []
        def work():
            names.append(get_handler_name())
            arrays.append(np.ones(50_000))   # 400,000 bytes
        t = threading.Thread(target=work)
        t.start(); t.join()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            arrays += list(pool.map(lambda n: np.zeros(n), [10_000, 20_000]))
        assert names == ["tensorpool"], names
        assert allocated() >= 8 * (50_000 + 10_000 + 20_000), allocated()
        del before                           # freed by NumPy's own free
        arrays.clear(); gc.collect()
        assert allocated() == 0, allocated()
        assert mm.stats()["handler_invalid_frees"] == 0
        """
    )


def test_threads_started_from_c_allocate_from_the_manager():
    # A thread that C code starts (pthread_create, as native libraries' pools do)
    # and that then calls into Python, as a ctypes callback does in a foreign thread.
    run(
        """
        import ctypes
        tensorpool.install_everywhere(mm)
        libc = ctypes.CDLL(None)
        seen = []
        @ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)
        def work(_):
            seen.append((threading.current_thread().name, get_handler_name()))
            seen.append(np.ones(25_000))         # 200,000 bytes
            return None
        tid = ctypes.c_ulong()
        assert libc.pthread_create(ctypes.byref(tid), None, work, None) == 0
        assert libc.pthread_join(tid, None) == 0
        (name, handler), array = seen
        assert name.startswith("Dummy-"), name   # not a thread Python started
        assert handler == "tensorpool", handler
        assert allocated() >= 200_000, allocated()
        seen.clear(); del array; gc.collect()
        assert allocated() == 0, allocated()
        """
    )


def test_at_most_16_managers_serve_everywhere_over_a_process_life():
    out = run(
        """
        managers = [mm] + [tensorpool.MemoryManager() for _ in range(15)]
        for m in managers:
            tensorpool.install_everywhere(m)
            a = np.ones(1000)
            assert m.stats()["allocated_bytes"] >= 8000
            del a
        try:
            tensorpool.install_everywhere(tensorpool.MemoryManager())
        except RuntimeError as e:
            print("refused:", e)
        tensorpool.install_everywhere(managers[3])   # one it knows: still fine
        b = np.ones(1000)
        assert managers[3].stats()["allocated_bytes"] >= 8000
        """
    )
    assert out.startswith("refused:") and "16" in out, out


def test_uninstall_leaves_tensorpool_arrays_to_tensorpool():
    run(
        """
        tensorpool.install_everywhere(mm)
        ours = [np.arange(1000.0) for _ in range(10)]
        assert tensorpool.uninstall_everywhere() is True
        assert get_handler_name() != "tensorpool"
        theirs = np.ones(100_000)            # NumPy's own again
        held = allocated()
        assert held >= 10 * 8000
        x = ours[0].copy(); ours[1].resize(5000, refcheck=False)  # realloc of ours
        ours.clear(); gc.collect()
        assert allocated() < held
        del x, theirs; gc.collect()
        assert allocated() == 0, allocated()
        assert tensorpool.uninstall_everywhere() is False
        tensorpool.install_everywhere(mm)    # and back
        y = np.ones(1000)
        assert allocated() >= 8000
        del y; gc.collect()
        assert allocated() == 0
        """
    )


def test_reallocation_across_the_switch():
    run(
        """
        a = np.zeros(10)                     # NumPy's
        tensorpool.install_everywhere(mm)
        a.resize(100_000, refcheck=False)    # realloc of NumPy's block: by NumPy
        b = np.zeros(10)
        b.resize(100_000, refcheck=False)    # realloc of ours: by tensorpool
        assert allocated() >= 800_000
        assert float(a.sum()) == 0.0 and float(b.sum()) == 0.0
        del a, b; gc.collect()
        assert allocated() == 0
        """
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_keeps_working():
    out = run(
        """
        tensorpool.install_everywhere(mm)
        kept = np.ones(1000)
        pid = os.fork()
        if pid == 0:
            child = [np.ones(10_000) for _ in range(10)]
            ok = get_handler_name() == "tensorpool" and allocated() >= 800_000
            child.clear(); del kept; gc.collect()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        print("child", os.waitstatus_to_exitcode(status))
        """
    )
    assert "child 0" in out


def test_two_managers_over_a_process_life():
    run(
        """
        other = tensorpool.MemoryManager()
        tensorpool.install_everywhere(mm)
        mine = np.ones(10_000)
        tensorpool.install_everywhere(other)
        theirs = np.ones(10_000)
        assert allocated() >= 80_000 and other.stats()["allocated_bytes"] >= 80_000
        del mine, theirs; gc.collect()
        assert allocated() == 0 and other.stats()["allocated_bytes"] == 0
        """
    )
