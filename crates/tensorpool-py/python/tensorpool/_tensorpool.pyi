"""Type stubs of the Rust extension module `tensorpool._tensorpool`."""

import os
from typing import Any, Callable, Iterator, Optional, Sequence, SupportsIndex, Union, overload

import numpy as np
import numpy.typing as npt

_Shape = Union[SupportsIndex, Sequence[SupportsIndex]]
_Order = Optional[str]  # "C" or "F" (None: "C")

MAX_ALLOCATION_SIZE: int
__version__: str

class OutOfMemoryError(MemoryError):
    """Memory ran out in a tensorpool allocator; the message explains its state."""

class Buffer:
    """A block of tensorpool memory, or a slice of one: a writable, one-dimensional
    ``memoryview`` of bytes that owns its block.

    Indexing, slicing (to a ``Buffer`` over the same memory), item and slice
    assignment, ``len``, ``bytes()``, ``tobytes()``, ``hex()``, iteration and
    comparison behave, and fail, as a memoryview's. Freed by the matching
    ``deallocate`` of any view of the block (arenas: ``reset``) or when the last view
    goes. While a ``memoryview`` or array of any view is alive it cannot be freed or
    reset (``BufferError``)."""

    def __len__(self) -> int: ...
    @overload
    def __getitem__(self, key: SupportsIndex, /) -> int: ...
    @overload
    def __getitem__(self, key: slice, /) -> Buffer: ...
    def __setitem__(self, key: Union[SupportsIndex, slice], value: Any, /) -> None: ...
    def __iter__(self) -> Iterator[int]: ...
    def __reversed__(self) -> Iterator[int]: ...
    def __eq__(self, other: object, /) -> bool: ...
    def __ne__(self, other: object, /) -> bool: ...
    __hash__: None  # type: ignore[assignment]
    def __buffer__(self, flags: int, /) -> memoryview: ...
    def __release_buffer__(self, buffer: memoryview, /) -> None: ...
    def tobytes(self, order: Optional[str] = None) -> bytes: ...
    def tolist(self) -> list[int]: ...
    def hex(self, sep: Union[str, bytes] = ..., bytes_per_sep: SupportsIndex = ...) -> str: ...
    @property
    def address(self) -> int:
        """The address of the first byte (0 once released)."""
    @property
    def nbytes(self) -> int:
        """The size in bytes (0 once released)."""
    @property
    def released(self) -> bool:
        """Whether the memory went back to its allocator."""
    @property
    def readonly(self) -> bool: ...
    @property
    def format(self) -> str: ...
    @property
    def itemsize(self) -> int: ...
    @property
    def ndim(self) -> int: ...
    @property
    def shape(self) -> tuple[int]: ...
    @property
    def strides(self) -> tuple[int]: ...
    @property
    def contiguous(self) -> bool: ...
    @property
    def c_contiguous(self) -> bool: ...
    @property
    def f_contiguous(self) -> bool: ...
    @property
    def suboffsets(self) -> tuple[()]: ...

class MemoryManager:
    """A tiered memory manager: size-class pools for small blocks, a best-fit tier
    for large ones, dedicated segments for huge ones, and arenas.

    ``config`` is the path of a TOML or JSON config file (what ``tensorpool plan``
    writes), or, as the lecture's ``MemoryManager(pool_sizes, arena_size)`` has it,
    a dict of pool sizes; ``settings`` are a config file's keys
    (``memory_limit="8 GiB"``, ...) and override it. ``pool_sizes`` maps block sizes
    to block counts (explicit pools, tried first). ``arena_size`` (0 or None: no
    arena) makes the manager's arena, which ``allocate`` falls back to after the
    pools (``reset_arena()`` frees it) and which bounds the scopes ``arena()``
    makes."""

    def __init__(
        self,
        config: Optional[Union[str, os.PathLike[str], dict[int, int]]] = None,
        arena_size: Union[int, str, None] = None,
        *,
        pool_sizes: Optional[dict[int, int]] = None,
        **settings: Any,
    ) -> None: ...
    def empty(self, shape: _Shape, dtype: npt.DTypeLike = None, order: _Order = "C") -> np.ndarray:
        """A new uninitialised array in the manager's memory, as ``numpy.empty``."""
    def zeros(self, shape: _Shape, dtype: npt.DTypeLike = None, order: _Order = "C") -> np.ndarray:
        """A new array of zeros in the manager's memory, as ``numpy.zeros``."""
    def allocate(self, size: int) -> Buffer:
        """Exactly ``size`` bytes as a ``Buffer``: the pools that fit, smallest first,
        then the manager's arena if it has one (else the tiers by size)."""
    def deallocate(self, buffer: Buffer) -> None:
        """Gives a buffer (or a slice of one) back now: its whole block; a block of
        the manager's arena stays until ``reset_arena()``. ``ValueError`` if not
        this manager's, ``BufferError`` while exported."""
    def reset_arena(self) -> None:
        """Frees the manager's arena at once (``BufferError`` while a block of it is
        exported; ``ValueError`` without an arena)."""
    def arena(self, capacity: Optional[int] = None) -> Arena:
        """An arena whose chunks come from this manager; a context manager."""
    def planned_arena(
        self,
        plan: Optional[Union[str, os.PathLike[str]]] = None,
        *,
        trace: Optional[Union[str, os.PathLike[str]]] = None,
        steps: Optional[Union[str, Sequence[int]]] = None,
        align: int = 64,
        time_limit: float = 1.0,
    ) -> PlannedArena:
        """An arena that runs a plan of one step: from a plan file (``plan``), from
        one step of a trace (``trace``, cut at ``steps``: ``"repeating"`` or the
        steps' first events), or, with neither, from the steps it records until
        its ``plan()``."""
    def stats(self) -> dict[str, Any]:
        """The statistics: the keys of the Rust ``Stats``, plus
        ``deferred_arena_scopes``, ``deferred_arena_bytes``, ``handler_invalid_frees``."""
    def summary(self) -> str:
        """The statistics as a table for people."""
    def leaks(self) -> Optional[dict[str, Any]]:
        """In debug mode, the live blocks (count, bytes, largest, sites); else None."""
    def guard_violations(self) -> list[dict[str, Any]]:
        """In debug mode, the overruns of guard bytes found so far."""
    def snapshot(self) -> dict[str, Any]:
        """Every segment and block with its state."""
    def trim(self) -> int:
        """Gives every free byte back to the system now, every thread's included;
        returns the bytes released."""
    def release_idle(self) -> int:
        """Runs a pass of the release policy now if one is due (the background
        thread does this on its own); returns the bytes given back."""
    def set_release_delay(self, ms: Optional[int]) -> None:
        """Sets the release delay in milliseconds (None: free memory goes back only
        when asked, above the soft limit, or on running out)."""
    def set_soft_limit(self, limit: Optional[Union[int, str]]) -> None:
        """Sets the soft limit (bytes or "2 GiB"; None: none): resident bytes above
        it send free memory back at once."""
    def set_memory_limit(self, limit: Optional[Union[int, str]]) -> None:
        """Sets the hard limit on resident bytes (bytes or "8 GiB"; None: none)."""
    def reset_peak_stats(self) -> None:
        """Starts new peaks from the current values."""
    def flush_thread_cache(self) -> None:
        """Gives the calling thread's cached blocks back to the shared pools."""
    def config(self) -> dict[str, Any]:
        """The configuration, as the keys of a config file."""
    def handler(self) -> Any:
        """The NEP 49 ``mem_handler`` capsule over this manager."""
    def recording_handler(self, path: Union[str, os.PathLike[str]]) -> tuple[Any, Callable[[], None]]:
        """A recording handler capsule and the function that stops the recording."""
    def _handler_free(self, address: int) -> None: ...

class FixedSizePool:
    """``pool_size`` blocks of ``block_size`` bytes: O(1) allocate and free."""

    def __init__(self, block_size: int, pool_size: int, *, alignment: int = 64) -> None: ...
    def allocate(self) -> Buffer:
        """A block (``OutOfMemoryError`` when all are out)."""
    def deallocate(self, buffer: Buffer) -> None:
        """Gives a block back (``ValueError`` if not this pool's)."""
    @property
    def block_size(self) -> int: ...
    @property
    def pool_size(self) -> int: ...
    @property
    def available(self) -> int: ...
    def __len__(self) -> int: ...
    def stats(self) -> dict[str, Any]: ...

class Arena:
    """A bump allocator freed all at once; ``Arena(arena_size)`` holds at most
    ``arena_size`` bytes. A context manager: the scope's memory goes back at the end
    (deferred while arrays from it are alive)."""

    def __init__(self, arena_size: int) -> None: ...
    def allocate(self, size: int, align: int = 64) -> Buffer: ...
    def empty(self, shape: _Shape, dtype: npt.DTypeLike = None, order: _Order = "C") -> np.ndarray: ...
    def zeros(self, shape: _Shape, dtype: npt.DTypeLike = None, order: _Order = "C") -> np.ndarray: ...
    def reset(self) -> None:
        """Frees everything (``BufferError`` while arrays or exports are alive)."""
    def close(self) -> None:
        """Ends the scope."""
    def __enter__(self) -> Arena: ...
    def __exit__(self, *exc: object) -> bool: ...
    @property
    def closed(self) -> bool: ...
    def stats(self) -> dict[str, Any]: ...

class PlannedArena:
    """An arena that runs a plan of one step: ``step()`` begins a step, and the
    k-th array of a step gets the plan's k-th offset when its size fits and nothing
    alive is in the way; anything else gets the manager's memory. Arrays own their
    data (freed back to the arena when they go; not resizable in place). Made by
    ``MemoryManager.planned_arena``."""

    def step(self) -> None:
        """Begins a step (arrays still alive keep their memory)."""
    def empty(self, shape: _Shape, dtype: npt.DTypeLike = None, order: _Order = "C") -> np.ndarray: ...
    def zeros(self, shape: _Shape, dtype: npt.DTypeLike = None, order: _Order = "C") -> np.ndarray: ...
    def plan(self, *, align: int = 64, time_limit: float = 1.0) -> None:
        """Plans the step it recorded most often and runs the plan from now on."""
    def write_plan(self, path: Union[str, os.PathLike[str]]) -> None:
        """Writes the plan as a step plan file."""
    @property
    def recording(self) -> bool: ...
    @property
    def arena_bytes(self) -> int: ...
    def stats(self) -> dict[str, Any]:
        """``steps``, ``served``, ``fallback`` and its reasons, ``deferred``,
        ``live_planned``, ``region_bytes``, ``recording``, ``recorded_arrays``."""

def set_handler(handler: Optional[Any]) -> Any:
    """Sets NumPy's data-memory handler in the current context; returns the old one."""

def get_handler() -> Any:
    """NumPy's data-memory handler in the current context."""

def install_everywhere(mm: MemoryManager, /) -> None:
    """NumPy's default handler forwards to ``mm``: every context without a handler of
    its own allocates from it (see ``tensorpool.install_everywhere``)."""

def uninstall_everywhere() -> bool:
    """New arrays take NumPy's own allocator again; returns whether one was serving."""
