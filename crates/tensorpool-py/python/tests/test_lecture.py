"""The lecture's programs, as its readers paste them, on tensorpool's classes; and the
memoryview behaviour of `Buffer` they rely on."""

import gc

import numpy as np
import pytest

import tensorpool
from tensorpool import Arena, FixedSizePool, MemoryManager, OutOfMemoryError


# ---- the lecture's four uses --------------------------------------------------------


def test_pool_of_100_blocks_of_1_kib():
    pool = FixedSizePool(1024, 100)
    tensor = pool.allocate()
    tensor[:5] = b"hello"
    assert bytes(tensor[:10])[:5] == b"hello"
    assert tensor[:10].tobytes()[:5] == b"hello"
    assert len(tensor[:10]) == 10
    pool.deallocate(tensor)
    assert pool.available == 100
    tensors = [pool.allocate() for _ in range(100)]
    assert pool.available == 0
    with pytest.raises(OutOfMemoryError):
        pool.allocate()
    for t in tensors:
        pool.deallocate(t)
    assert pool.available == 100


def test_arena_of_4_kib():
    arena = Arena(4096)
    a = arena.allocate(1024)
    a[:] = b"A" * 1024
    b = arena.allocate(2048)
    b[:] = b"B" * 2048
    assert bytes(a) == b"A" * 1024 and bytes(b) == b"B" * 2048
    arena.reset()
    assert a.released and b.released and len(a) == 0
    c = arena.allocate(4096)
    c[:] = b"C" * 4096
    assert bytes(c) == b"C" * 4096


def test_a_fresh_arena_serves_its_whole_size_at_once():
    # Not only after a reset: the first allocation may take every byte.
    for size in (100, 1024, 4096):
        whole = Arena(size).allocate(size)
        whole[:] = b"W" * size
        assert len(whole) == size and whole.address % 64 == 0
    mm = MemoryManager({64: 2}, 1024)
    assert len(mm.allocate(1000)) == 1000  # no pool fits: the arena, all of it
    with pytest.raises(tensorpool.OutOfMemoryError):
        mm.allocate(100)


def test_manager_with_pools_and_an_arena():
    mm = MemoryManager({64: 1000, 128: 500, 256: 250}, 4096 * 10)
    t = mm.allocate(64)
    t[:] = b"D" * 64
    assert t == b"D" * 64
    mm.deallocate(t)
    assert t.released
    big = mm.allocate(512)  # no pool fits: the arena
    big[:] = b"E" * 512
    assert bytes(big) == b"E" * 512
    mm.reset_arena()
    assert big.released


def test_manager_with_one_pool_and_no_arena():
    mm = MemoryManager({256: 10000}, 0)
    tensors = [mm.allocate(256) for _ in range(10000)]
    for t in tensors:
        t[:] = b"F" * 256
    assert all(t == b"F" * 256 for t in tensors[::997])
    pool = next(p for p in mm.stats()["tiers"] if p["tier"] == "pool")
    assert pool["allocated_blocks"] == 10000
    for t in tensors:
        mm.deallocate(t)
    assert mm.stats()["allocated_bytes"] == 0


# ---- the lecture's API, where it is sound ----------------------------------------------


def test_positional_pool_sizes_and_arena_size():
    mm = MemoryManager({64: 2}, 1024)
    # Pools that fit, smallest first; exactly `size` bytes; then the arena.
    a = mm.allocate(40)
    assert len(a) == 40
    b = mm.allocate(64)
    c = mm.allocate(64)  # the pool is full: the arena
    assert len(c) == 64
    with pytest.raises(OutOfMemoryError):
        mm.allocate(2048)  # beyond the arena
    for x in (a, b, c):
        mm.deallocate(x)  # the arena block: nothing to do, as in the lecture
    assert not c.released
    mm.reset_arena()
    assert c.released
    with pytest.raises(TypeError):
        MemoryManager({64: 2}, pool_sizes={128: 1})


def test_without_an_arena_allocate_falls_back_to_the_tiers():
    for mm in (MemoryManager({64: 1}, 0), MemoryManager(pool_sizes={64: 1}), MemoryManager()):
        blocks = [mm.allocate(100_000) for _ in range(3)]
        assert all(len(b) == 100_000 for b in blocks)
        with pytest.raises(ValueError):
            mm.reset_arena()
        for b in blocks:
            mm.deallocate(b)
        assert mm.stats()["allocated_bytes"] == 0


def test_reset_arena_refuses_while_a_block_is_exported():
    mm = MemoryManager({64: 1}, 4096)
    mm.allocate(64)
    block = mm.allocate(100)  # from the arena
    view = memoryview(block[10:20])
    with pytest.raises(BufferError):
        mm.reset_arena()
    assert not block.released
    view.release()
    mm.reset_arena()
    assert block.released


def test_deallocating_a_slice_frees_its_block():
    mm = MemoryManager({256: 4})
    block = mm.allocate(256)
    tensor = block[:100]  # as the lecture's allocate returns block[:size]
    assert isinstance(tensor, tensorpool.Buffer) and len(tensor) == 100
    mm.deallocate(tensor)
    assert block.released and tensor.released
    with pytest.raises(ValueError):
        mm.deallocate(block)  # freed already: nothing happens
    assert mm.stats()["allocated_bytes"] == 0


def test_a_slice_keeps_its_block_alive():
    pool = FixedSizePool(64, 1)
    view = pool.allocate()[8:16]
    gc.collect()
    assert pool.available == 0  # the slice holds the block
    view[:] = b"x" * 8
    assert bytes(view) == b"x" * 8
    del view
    gc.collect()
    assert pool.available == 1


def test_foreign_buffers_are_refused():
    a, b = MemoryManager({64: 4}, 1024), MemoryManager({64: 4}, 1024)
    x = a.allocate(64)
    y = a.allocate(500)  # a's arena
    for buf in (x, y):
        with pytest.raises(ValueError):
            b.deallocate(buf)
        assert not buf.released
    with pytest.raises(ValueError):
        a.deallocate(b"not a buffer")


# ---- Buffer behaves as a writable 1-D memoryview of bytes --------------------------------


def both(n=32):
    """A Buffer and a memoryview over a bytearray with the same bytes."""
    buf = FixedSizePool(64, 1).allocate()[:n]
    ref = memoryview(bytearray(n))
    for i in range(n):
        buf[i] = ref[i] = (i * 7) % 256
    return buf, ref


def test_indexing_and_slicing_as_memoryview():
    buf, ref = both()
    for i in (0, 5, -1, -32, 31):
        assert buf[i] == ref[i]
    for s in (slice(None), slice(2, 9), slice(-5, None), slice(None, None, 3),
              slice(20, 3, -2), slice(100, 200), slice(None, None, -1)):
        assert bytes(buf[s]) == bytes(ref[s]), s
        assert len(buf[s]) == len(ref[s])
        assert buf[s].tolist() == ref[s].tolist()
        assert isinstance(buf[s], tensorpool.Buffer)
    assert bytes(buf[2:20][3:9:2]) == bytes(ref[2:20][3:9:2])
    for i in (32, -33):
        with pytest.raises(IndexError) as ours:
            buf[i]
        with pytest.raises(IndexError) as theirs:
            ref[i]
        assert str(ours.value) == str(theirs.value)


def test_assignment_as_memoryview():
    buf, ref = both()
    buf[3] = ref[3] = 200
    buf[4:8] = ref[4:8] = b"wxyz"
    buf[::4] = ref[::4] = bytes(range(8))
    buf[10:14] = ref[10:14] = bytearray(b"abcd")
    buf[20:24] = ref[20:24] = memoryview(b"1234")
    assert bytes(buf) == bytes(ref)
    for key, value in [(slice(0, 3), b"ab"), (0, 256), (0, -1), (0, b"a"),
                       (slice(0, 2), "ab"), (40, 1), (slice(None, None, 2), b"x")]:
        errors = []
        for target in (buf, ref):
            with pytest.raises((ValueError, TypeError, IndexError)) as e:
                target[key] = value
            errors.append((type(e.value), str(e.value)))
        assert errors[0] == errors[1], (key, value)
    assert bytes(buf) == bytes(ref)  # failed assignments changed nothing


def test_conversions_iteration_and_comparison_as_memoryview():
    buf, ref = both(16)
    assert len(buf) == 16
    assert bytes(buf) == ref.tobytes() == buf.tobytes()
    assert buf.hex() == ref.hex()
    assert buf.hex(":", 2) == ref.hex(":", 2)
    assert list(buf) == list(ref)
    assert buf.tolist() == ref.tolist()
    assert buf == ref.tobytes() and buf == ref and buf == bytearray(ref)
    assert not (buf != ref.tobytes())
    assert buf != b"other" and buf[::2] == ref[::2]
    assert (buf.readonly, buf.format, buf.itemsize, buf.ndim, buf.shape) == (
        False, "B", 1, 1, (16,))
    assert list(reversed(buf)) == list(reversed(ref))
    assert list(reversed(buf[2:9:3])) == list(reversed(ref[2:9:3]))
    for target in (buf, ref):  # the same refusals, of the same types
        with pytest.raises(ValueError, match="cannot hash writable"):
            hash(target)
        with pytest.raises(TypeError, match="cannot delete memory"):
            del target[0]
        with pytest.raises(TypeError, match="cannot delete memory"):
            del target[1:3]
    assert np.asarray(buf[::2]).tolist() == ref[::2].tolist()
    for strided in (buf[::2], ref[::2]):  # not contiguous: refused alike
        with pytest.raises(BufferError):
            np.frombuffer(strided, dtype=np.uint8)
    assert np.frombuffer(buf[2:6], dtype=np.uint8).tolist() == ref[2:6].tolist()
    arr = np.asarray(buf[1::3])
    arr[0] = 99
    assert buf[1] == 99  # a view, not a copy


def test_a_released_buffer_refuses_what_needs_its_memory():
    pool = FixedSizePool(64, 1)
    buf = pool.allocate()
    part = buf[:8]
    pool.deallocate(buf)
    for b in (buf, part):
        assert len(b) == 0 and b.released
        with pytest.raises(ValueError):
            b[0]
        with pytest.raises(ValueError):
            b[0] = 1
        with pytest.raises(BufferError):
            memoryview(b)
        with pytest.raises(ValueError):
            b.tobytes()


def test_an_export_of_a_slice_holds_the_whole_block():
    pool = FixedSizePool(64, 1)
    buf = pool.allocate()
    view = memoryview(buf[8:16])
    with pytest.raises(BufferError):
        pool.deallocate(buf)
    assert not buf.released
    view.release()
    pool.deallocate(buf)
    assert pool.available == 1


# ---- found by a differential test against memoryview (a user hunt) ------------------


def test_a_strided_slice_is_not_exported_as_contiguous():
    # A consumer that asked for C-contiguous memory got a reversed slice's last
    # byte as the start of its bytes, and read or wrote the next block.
    import ctypes

    class Py_buffer(ctypes.Structure):
        _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.py_object),
                    ("len", ctypes.c_ssize_t), ("itemsize", ctypes.c_ssize_t),
                    ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                    ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p),
                    ("strides", ctypes.c_void_p), ("suboffsets", ctypes.c_void_p),
                    ("internal", ctypes.c_void_p)]

    get = ctypes.pythonapi.PyObject_GetBuffer
    get.argtypes = [ctypes.py_object, ctypes.POINTER(Py_buffer), ctypes.c_int]
    release = ctypes.pythonapi.PyBuffer_Release
    release.argtypes = [ctypes.POINTER(Py_buffer)]
    PyBUF_WRITABLE, PyBUF_STRIDES, PyBUF_FORMAT = 0x0001, 0x0018, 0x0004
    contiguous = (0x0038, 0x0058, 0x0098)  # C, F and any order
    pool = FixedSizePool(64, 2)
    block = pool.allocate()
    for strided in (block[::-1], block[::2], memoryview(bytearray(64))[::-1]):
        for flag in contiguous:
            view = Py_buffer()
            with pytest.raises(BufferError):  # ctypes raises the error it set
                get(strided, ctypes.byref(view), flag | PyBUF_WRITABLE)
        # Asked with strides, it is exported, with its step.
        view = Py_buffer()
        assert get(strided, ctypes.byref(view), PyBUF_STRIDES | PyBUF_FORMAT) == 0
        release(ctypes.byref(view))
    for target in (block[::-1], memoryview(bytearray(8))[::-1]):
        assert (target.contiguous, target.c_contiguous, target.f_contiguous) == (
            False, False, False)
        assert target.suboffsets == ()
    assert (block.contiguous, block.c_contiguous, block.f_contiguous) == (True, True, True)


def test_hex_takes_its_arguments_by_name_too():
    buf, ref = both(16)
    assert buf.hex(sep=":") == ref.hex(sep=":")
    assert buf.hex(":", bytes_per_sep=2) == ref.hex(":", bytes_per_sep=2)
    assert buf.hex(sep="-", bytes_per_sep=-3) == ref.hex(sep="-", bytes_per_sep=-3)


def test_iteration_reads_as_it_goes():
    # It copied the whole buffer first: a write during the loop was not seen, and a
    # 16 MiB buffer took 128 MiB of ints for its first byte.
    buf, ref = both(3)
    for target in (buf, ref):
        target[:] = b"\x00\x00\x00"
        seen = []
        for i, x in enumerate(target):
            if i == 0:
                target[1] = 99
            seen.append(x)
        assert seen == [0, 99, 0]
    pool = FixedSizePool(4096, 1)
    block = pool.allocate()
    it = iter(block)
    next(it)
    pool.deallocate(block)  # no export held: the block goes, and the iteration stops
    with pytest.raises(ValueError):
        next(it)
    assert list(reversed(buf)) == list(reversed(ref))
    assert 99 in buf and 7 not in buf


def test_pickling_is_refused_as_for_memoryview():
    import copy
    import pickle

    buf, ref = both(8)
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for target in (buf, ref):
            with pytest.raises(TypeError, match="cannot pickle"):
                pickle.dumps(target, protocol=protocol)
    for target in (buf, ref):
        with pytest.raises(TypeError):
            copy.copy(target)


def test_a_buffer_is_a_sequence_as_memoryview_is():
    import collections.abc

    buf, ref = both(4)
    assert isinstance(ref, collections.abc.Sequence)
    assert isinstance(buf, collections.abc.Sequence)
