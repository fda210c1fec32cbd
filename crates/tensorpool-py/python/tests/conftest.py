import gc

import numpy as np
import pytest

import tensorpool


@pytest.fixture
def mm():
    return tensorpool.MemoryManager()


@pytest.fixture(autouse=True)
def default_handler_after_each_test():
    """No test leaks tensorpool into NumPy's handler for the next one."""
    yield
    tensorpool.uninstall()
    gc.collect()
    assert tensorpool.get_handler_name() == "default_allocator"


def live(mm):
    return mm.stats()["allocated_blocks"]


def data_address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]
