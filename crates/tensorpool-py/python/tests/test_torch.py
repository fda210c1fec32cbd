"""PyTorch tensors over tensorpool memory: `torch.from_numpy` shares the array's data,
and the block lives as long as the tensor does. Needs `torch` (several GB from PyPI, so
not in the test command, where this file is skipped): `scripts/torch_check.sh` installs
it into a venv of its own and runs these tests."""

import gc

import numpy as np
import pytest

import tensorpool

torch = pytest.importorskip("torch")


def allocated(mm):
    return mm.stats()["allocated_bytes"]


def test_from_numpy_shares_the_block():
    mm = tensorpool.MemoryManager()
    a = mm.empty((64, 1024), dtype=np.float32)
    t = torch.from_numpy(a)
    assert t.data_ptr() == a.ctypes.data  # no copy
    t[0, 0] = 42.0
    assert a[0, 0] == 42.0
    a[1, 1] = 7.0
    assert float(t[1, 1]) == 7.0


def test_the_tensor_alone_keeps_the_block_alive():
    mm = tensorpool.MemoryManager()
    a = mm.zeros(100_000, dtype=np.float64)
    t = torch.from_numpy(a)
    held = allocated(mm)
    assert held >= 800_000
    del a
    gc.collect()
    assert allocated(mm) == held  # the tensor holds the array, which holds the block
    t.add_(1.0)
    assert float(t.sum()) == 100_000.0
    del t
    gc.collect()
    assert allocated(mm) == 0


def test_arrays_numpy_makes_under_the_handler():
    mm = tensorpool.MemoryManager()
    with tensorpool.use(mm):
        t = torch.from_numpy(np.ones(10_000))
    assert allocated(mm) >= 80_000
    assert float(t.sum()) == 10_000.0
    del t
    gc.collect()
    assert allocated(mm) == 0
