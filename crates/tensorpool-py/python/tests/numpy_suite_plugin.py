"""A pytest plugin that runs a test session with tensorpool as NumPy's allocator.

``python -m pytest -p numpy_suite_plugin --pyargs numpy._core.tests.test_multiarray``
(with this folder on PYTHONPATH) runs NumPy's own tests with every array NumPy makes
allocated by a tensorpool manager; at the end it checks that the handler was in place
and that NumPy never handed tensorpool a bad pointer.
"""

import tensorpool

_mm = None


def pytest_configure(config):
    global _mm
    _mm = tensorpool.MemoryManager()
    tensorpool.install(_mm)


def pytest_unconfigure(config):
    stats = _mm.stats()
    print(
        f"\ntensorpool handled NumPy's data: {stats['num_allocs']} allocations, "
        f"{stats['num_frees']} frees, peak {stats['peak_allocated_bytes']} bytes, "
        f"{stats['handler_invalid_frees']} invalid frees"
    )
    assert stats["num_allocs"] > 0, "tensorpool was not NumPy's allocator"
    assert stats["handler_invalid_frees"] == 0, "NumPy freed pointers tensorpool did not hand out"


def pytest_report_header(config):
    return f"NumPy's data-memory handler: {tensorpool.get_handler_name()}"
