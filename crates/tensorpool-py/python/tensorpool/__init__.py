"""tensorpool: a memory allocator for tensors, from Python.

NumPy arrays whose data lives in tensorpool's pools::

    import numpy as np
    import tensorpool

    mm = tensorpool.MemoryManager(memory_limit="8 GiB")
    x = mm.empty((1024, 1024), dtype=np.float32)   # a real numpy.ndarray, zero-copy
    with mm.arena() as a:                          # short-lived arrays: bump allocation
        tmp = a.empty((1024, 1024))
    print(mm.summary())

and tensorpool as NumPy's allocator, for every array NumPy makes::

    with tensorpool.use(mm):
        y = np.ones(1_000_000)                     # allocated by tensorpool

    with tensorpool.record("trace.csv"):           # replay with `tensorpool replay trace.csv`
        run_my_program()

NumPy's handler is a context variable: new threads start with NumPy's default. Install
tensorpool in worker threads with an initializer, for example
``ThreadPoolExecutor(initializer=tensorpool.install, initargs=(mm,))``.
"""

from __future__ import annotations

import contextlib
import collections.abc
import os
import threading
from typing import Iterator, Optional, Union

from ._tensorpool import (
    MAX_ALLOCATION_SIZE,
    Arena,
    Buffer,
    FixedSizePool,
    MemoryManager,
    OutOfMemoryError,
    PlannedArena,
    __version__,
    get_handler as _get_handler,
    install_everywhere as _install_everywhere,
    set_handler as _set_handler,
    uninstall_everywhere as _uninstall_everywhere,
)

# A sequence of bytes, as a memoryview is registered.
collections.abc.Sequence.register(Buffer)

__all__ = [
    "MAX_ALLOCATION_SIZE",
    "Arena",
    "Buffer",
    "FixedSizePool",
    "MemoryManager",
    "OutOfMemoryError",
    "PlannedArena",
    "default_manager",
    "get_handler_name",
    "install",
    "install_everywhere",
    "record",
    "uninstall",
    "uninstall_everywhere",
    "use",
]

_default: Optional[MemoryManager] = None
_default_lock = threading.Lock()


def default_manager() -> MemoryManager:
    """The process-wide manager that ``install()``, ``use()`` and ``record()`` use
    when given none (made with the default settings on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = MemoryManager()
        return _default


def _manager(mm: Optional[MemoryManager]) -> MemoryManager:
    if mm is None:
        return default_manager()
    if not isinstance(mm, MemoryManager):
        raise TypeError(f"expected a tensorpool.MemoryManager, not {type(mm).__name__}")
    return mm


def install(mm: Optional[MemoryManager] = None) -> None:
    """Makes tensorpool NumPy's data-memory handler (NEP 49) in the current context:
    every array NumPy allocates from now on takes its data from ``mm`` (default:
    ``default_manager()``). Arrays keep the handler that allocated them, so they are
    freed correctly wherever they die, also after ``uninstall()``.

    The handler is a context variable: call ``install`` in each thread that should use
    it (``ThreadPoolExecutor(initializer=tensorpool.install, initargs=(mm,))``)."""
    _set_handler(_manager(mm).handler())


def uninstall() -> None:
    """Restores NumPy's default handler in the current context."""
    _set_handler(None)


def install_everywhere(mm: Optional[MemoryManager] = None) -> None:
    """Makes tensorpool the allocator of every NumPy array of the process: in every
    thread, also those started later by thread pools, joblib or C code, but contexts
    that set a handler of their own (``use()``, another library's handler).

    NumPy's default handler is made to forward to ``mm`` (default:
    ``default_manager()``); arrays made before are still freed by NumPy's own
    functions, and ``numpy._core.multiarray.get_handler_name()`` says
    ``"tensorpool"`` in every such context. ``uninstall_everywhere()`` undoes it for new
    arrays. A forked child keeps working. At most 16 managers can serve this way over
    a process's life (their blocks may be alive anywhere, so they are kept)."""
    _install_everywhere(_manager(mm))


def uninstall_everywhere() -> bool:
    """New arrays take NumPy's own allocator again in every context with the default
    handler; arrays tensorpool made are still freed by tensorpool. Returns whether a
    manager was serving."""
    return _uninstall_everywhere()


@contextlib.contextmanager
def use(mm: Optional[MemoryManager] = None) -> Iterator[MemoryManager]:
    """``with tensorpool.use(mm):`` makes tensorpool NumPy's allocator for the block
    and restores the previous handler after it (also on an exception)."""
    mm = _manager(mm)
    previous = _set_handler(mm.handler())
    try:
        yield mm
    finally:
        _set_handler(previous)


@contextlib.contextmanager
def record(
    path: Union[str, os.PathLike], mm: Optional[MemoryManager] = None
) -> Iterator[MemoryManager]:
    """``with tensorpool.record("trace.csv"):`` records every NumPy data allocation and
    free of the block into ``path``, in the RMM CSV format that ``tensorpool replay``
    reads. NumPy allocates from ``mm`` (default: ``default_manager()``) meanwhile;
    the previous handler is restored after the block. Frees of arrays that outlive
    the block are not recorded (the trace shows them as live at its end)."""
    mm = _manager(mm)
    handler, stop = mm.recording_handler(os.fspath(path))
    previous = _set_handler(handler)
    try:
        yield mm
    finally:
        _set_handler(previous)
        stop()


def get_handler_name() -> str:
    """The name of NumPy's data-memory handler in the current context
    (``"tensorpool"`` when installed, ``"default_allocator"`` otherwise)."""
    import numpy as np

    try:
        from numpy._core.multiarray import get_handler_name as name
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import get_handler_name as name  # type: ignore
    del np
    return name()


def _current_handler():  # for tests: the capsule NumPy holds now
    return _get_handler()
