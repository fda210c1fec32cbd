"""FixedSizePool and Arena on their own, and arena scopes of a manager."""

import gc

import numpy as np
import pytest

import tensorpool
from conftest import data_address


def test_fixed_size_pool_hands_out_and_takes_back_blocks():
    pool = tensorpool.FixedSizePool(256, 4)
    assert (pool.block_size, pool.pool_size, len(pool), pool.available) == (256, 4, 0, 4)
    bufs = [pool.allocate() for _ in range(4)]
    assert len({b.address for b in bufs}) == 4
    assert all(len(b) == 256 and b.address % 64 == 0 for b in bufs)
    for i, b in enumerate(bufs):
        memoryview(b)[:] = bytes([i]) * 256
    assert [bytes(memoryview(b))[0] for b in bufs] == [0, 1, 2, 3]
    with pytest.raises(tensorpool.OutOfMemoryError, match="256") as err:
        pool.allocate()
    assert isinstance(err.value, MemoryError)
    assert "free but cannot hold this request" in str(err.value), str(err.value)
    address = bufs[2].address
    pool.deallocate(bufs[2])
    assert pool.available == 1
    assert pool.allocate().address == address
    stats = pool.stats()
    assert (stats["num_allocs"], stats["num_frees"], stats["num_ooms"]) == (5, 2, 1)  # the last buffer was dropped at once


def test_fixed_size_pool_refuses_what_it_did_not_hand_out():
    pool, other = tensorpool.FixedSizePool(64, 2), tensorpool.FixedSizePool(64, 2)
    mine, theirs = pool.allocate(), other.allocate()
    with pytest.raises(ValueError, match="not allocated by this allocator"):
        pool.deallocate(theirs)
    with pytest.raises(ValueError, match="not a tensorpool.Buffer"):
        pool.deallocate(b"x" * 64)
    with pytest.raises(ValueError, match="not allocated by this allocator"):
        pool.deallocate(tensorpool.MemoryManager().allocate(64))
    assert len(pool) == 1 and len(other) == 1 and not theirs.released
    pool.deallocate(mine)
    with pytest.raises(ValueError, match="released"):
        pool.deallocate(mine)  # a double free changes nothing
    assert len(pool) == 0


def test_fixed_size_pool_buffer_freed_while_exported_is_refused():
    pool = tensorpool.FixedSizePool(64, 1)
    buf = pool.allocate()
    arr = np.frombuffer(buf, np.uint8)
    with pytest.raises(BufferError):
        pool.deallocate(buf)
    arr[:] = 7
    del arr
    gc.collect()
    pool.deallocate(buf)


def test_dropped_buffers_go_back_to_their_pool():
    pool = tensorpool.FixedSizePool(64, 2)
    pool.allocate()  # dropped at once
    b = pool.allocate()
    assert len(pool) == 1
    del b
    assert len(pool) == 0


def test_buffers_are_freed_by_reference_count_not_by_the_cycle_collector():
    # Buffers can be in no reference cycle, so the collector does not track them
    # (its passes would walk every live buffer); they, their slices and the hidden
    # base of an arena's arrays go when their last reference does.
    pool = tensorpool.FixedSizePool(64, 2)
    mm = tensorpool.MemoryManager({64: 4}, 4096)
    arena = tensorpool.Arena(4096)
    made = [pool.allocate(), mm.allocate(64), mm.allocate(512), arena.allocate(8)]
    made.append(made[0][2:10])
    made.append(arena.empty(4).base)
    assert not any(gc.is_tracked(b) for b in made)
    gc.disable()
    try:
        whole = pool.allocate()
        part = whole[4:8]
        del whole
        assert len(pool) == 2, "a slice keeps its block"
        del part
        assert len(pool) == 1, "freed with the last view, no collection needed"
    finally:
        gc.enable()


def test_fixed_size_pool_bad_arguments():
    with pytest.raises(ValueError):
        tensorpool.FixedSizePool(0, 4)
    with pytest.raises(ValueError):
        tensorpool.FixedSizePool(64, 0)
    with pytest.raises(ValueError, match="power of two"):
        tensorpool.FixedSizePool(64, 4, alignment=48)


def test_arena_bumps_and_fills_up():
    arena = tensorpool.Arena(4096)
    a, b = arena.allocate(100), arena.allocate(100, align=16)
    assert a.address % 64 == 0 and b.address % 16 == 0
    assert abs(a.address - b.address) >= 100
    with pytest.raises(tensorpool.OutOfMemoryError):
        arena.allocate(8192)
    with pytest.raises(ValueError, match="0 bytes"):
        arena.allocate(0)
    with pytest.raises(ValueError, match="power of two"):
        arena.allocate(8, align=3)
    assert arena.stats()["allocated_bytes"] >= 200


def test_arena_reset_releases_buffers_and_reuses_memory():
    arena = tensorpool.Arena(1 << 16)
    first = arena.allocate(1000)
    address = first.address
    arena.reset()
    assert first.released and len(first) == 0
    with pytest.raises(BufferError):
        memoryview(first)  # never sees the memory reused
    again = arena.allocate(1000)
    assert again.address == address


def test_arena_reset_refuses_while_memory_is_exported():
    arena = tensorpool.Arena(1 << 16)
    buf = arena.allocate(64)
    view = memoryview(buf)
    with pytest.raises(BufferError, match="export"):
        arena.reset()
    view[0] = 1  # still valid
    view.release()
    arr = arena.empty(10)
    with pytest.raises(BufferError, match="1 array"):
        arena.reset()
    del arr
    gc.collect()
    arena.reset()
    assert buf.released


def test_arena_arrays(mm):
    with mm.arena() as a:
        x = a.empty((64, 64), np.float32)
        z = a.zeros((10, 10), np.int32, order="F")
        assert type(x) is np.ndarray and x.shape == (64, 64)
        assert data_address(x) % 64 == 0
        assert not z.any() and z.flags.f_contiguous
        x[:] = 3
        assert float(x.sum()) == 3 * 64 * 64
        assert mm.stats()["arena_bytes"] > 0
        del x, z
    gc.collect()


def test_scope_returns_memory_to_the_manager(mm):
    with mm.arena() as a:
        tmp = a.empty(100_000)
        tmp[:] = 1
        assert mm.stats()["arena_bytes"] > 0
        del tmp
    assert a.closed
    assert mm.stats()["arena_bytes"] == 0
    assert mm.stats()["deferred_arena_scopes"] == 0
    with pytest.raises(ValueError, match="scope has ended"):
        a.empty(3)
    with pytest.raises(ValueError, match="scope has ended"):
        a.allocate(3)


def test_scope_defers_release_while_arrays_live(mm):
    with mm.arena() as a:
        kept = a.empty(50_000)
        kept[:] = 5
        dropped = a.allocate(1000)
    assert dropped.released is False  # still valid: the arena lives on for `kept`
    stats = mm.stats()
    assert stats["deferred_arena_scopes"] == 1
    assert stats["deferred_arena_bytes"] >= 50_000 * 8
    assert stats["arena_bytes"] >= 50_000 * 8
    assert (kept == 5).all()  # memory not reused under it
    view = kept[::2]
    del kept, dropped
    gc.collect()
    assert mm.stats()["deferred_arena_scopes"] == 1
    del view
    gc.collect()
    stats = mm.stats()
    assert stats["deferred_arena_scopes"] == 0 and stats["deferred_arena_bytes"] == 0
    assert stats["arena_bytes"] == 0


def test_arena_size_bounds_the_managers_arenas():
    mm = tensorpool.MemoryManager(arena_size=1 << 16)
    with mm.arena() as a:
        a.allocate(1 << 15)
        with pytest.raises(tensorpool.OutOfMemoryError):
            a.allocate(1 << 16)
    with mm.arena(capacity=1 << 20) as a:
        a.allocate(1 << 19)
    # arena_size=0 means no arena, as in the lecture: scopes are unbounded.
    none = tensorpool.MemoryManager(arena_size=0)
    with none.arena() as a:
        a.allocate(1 << 20)
    with pytest.raises(ValueError):
        none.reset_arena()


def test_arena_scope_ends_on_exceptions_too(mm):
    with pytest.raises(RuntimeError):
        with mm.arena() as a:
            a.empty(1000)
            raise RuntimeError("boom")
    assert a.closed
    assert mm.stats()["arena_bytes"] == 0


@pytest.mark.parametrize("how", ["index", "slice get", "slice set"])
def test_a_key_that_frees_the_buffer_while_it_is_read_is_refused(how):
    # Reading the key runs Python code (`__index__`): a block freed there, and handed
    # to another buffer, must not be read or written through the old one.
    pool = tensorpool.FixedSizePool(64, 1)
    a = pool.allocate()
    taken = []

    class Frees:
        def __index__(self):
            pool.deallocate(a)
            taken.append(pool.allocate())
            taken[0][:5] = b"mine!"
            return 0

    with pytest.raises(ValueError, match="released"):
        if how == "index":
            a[Frees()]
        elif how == "slice get":
            a[Frees() : 5]
        else:
            a[Frees() : 5] = b"hello"
    assert bytes(taken[0][:5]) == b"mine!"
