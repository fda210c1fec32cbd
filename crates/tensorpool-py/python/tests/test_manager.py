"""MemoryManager: arrays and buffers from the pools, configuration, statistics."""

import gc
import json
import weakref

import numpy as np
import pytest

import tensorpool
from conftest import data_address, live


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int8, np.complex128, "U3", "S5", np.bool_])
def test_empty_is_a_writable_ndarray_in_the_pools(mm, dtype):
    a = mm.empty((3, 5), dtype=dtype)
    assert type(a) is np.ndarray
    assert a.shape == (3, 5) and a.dtype == np.dtype(dtype)
    # The array owns its data as NumPy's own do, freed through the manager's handler.
    assert a.flags.c_contiguous and a.flags.writeable and a.flags.owndata
    assert a.base is None
    assert np._core.multiarray.get_handler_name(a) == "tensorpool"
    assert data_address(a) % 64 == 0
    assert live(mm) == 1
    a[...] = np.ones((3, 5)).astype(dtype)
    assert (a == np.ones((3, 5)).astype(dtype)).all()


SCALAR_TYPES = [np.float64, np.float32, np.float16, np.uint8, np.int8, np.int16, np.uint16,
                np.int32, np.uint32, np.int64, np.uint64, np.longlong, np.bool_, np.complex64,
                np.complex128, np.longdouble, np.datetime64, float, int, bool, complex]


@pytest.mark.parametrize("dtype", SCALAR_TYPES)
def test_every_scalar_type_gives_numpys_own_dtype(mm, dtype):
    # Scalar types are looked up in a table (made once) before NumPy's converter:
    # the dtype must be exactly the one NumPy makes, for every way to name it.
    for name in (dtype, np.dtype(dtype), np.dtype(dtype).str):
        a, expected = mm.zeros(3, dtype=name), np.zeros(3, dtype=name).dtype
        assert a.dtype == expected, (name, a.dtype)
        assert a.dtype.type is expected.type, (name, a.dtype)
        assert a.dtype.byteorder == expected.byteorder


def test_a_subclass_of_a_scalar_type_is_not_taken_for_it(mm):
    class Mine(np.float32):
        pass

    assert mm.empty(2, dtype=Mine).dtype == np.empty(2, dtype=Mine).dtype


def test_shapes_orders_and_defaults(mm):
    assert mm.empty(7).shape == (7,)
    assert mm.empty(7).dtype == np.float64
    assert mm.empty(()).shape == ()
    assert mm.empty((2, 0, 3)).size == 0
    f = mm.empty((4, 6), np.float32, order="F")
    assert f.flags.f_contiguous and not f.flags.c_contiguous
    assert f.strides == (4, 16)
    assert mm.empty([2, 3], dtype=np.dtype("i2")).strides == (6, 2)


def test_zeros_are_zero_even_in_reused_memory(mm):
    for _ in range(3):
        a = mm.empty(1000, np.uint8)
        a[:] = 0xAB
        del a
        z = mm.zeros(1000, np.uint8)
        assert not z.any()
        del z
    big = mm.zeros((1024, 1024), np.float64)
    assert big.sum() == 0


def test_block_returns_to_the_pool_when_the_last_view_dies(mm):
    a = mm.empty((100, 100))
    view = a[10:20, ::2]
    flat = a.reshape(-1)
    del a
    gc.collect()
    assert live(mm) == 1, "views keep the block"
    del view
    assert live(mm) == 1
    del flat
    gc.collect()
    assert live(mm) == 0
    stats = mm.stats()
    assert stats["num_allocs"] == stats["num_frees"] == 1


def test_freed_memory_is_reused(mm):
    a = mm.empty(1000)
    addr = data_address(a)
    del a
    b = mm.empty(1000)
    assert data_address(b) == addr


def test_arrays_outlive_the_manager_object():
    mm = tensorpool.MemoryManager()
    arrays = [mm.empty(n, np.int64) for n in (10, 10_000, 1_000_000)]
    for a in arrays:
        a[:] = np.arange(a.size)
    ref = weakref.ref(mm) if hasattr(mm, "__weakref__") else None
    del mm
    gc.collect()
    assert ref is None or ref() is None
    for a in arrays:
        assert (a == np.arange(a.size)).all()
    del arrays
    gc.collect()


def test_bad_shapes_and_dtypes_are_rejected(mm):
    with pytest.raises(ValueError, match="negative dimensions"):
        mm.empty((2, -1))
    with pytest.raises(ValueError, match="at most 64 dimensions"):
        mm.empty((1,) * 65)
    assert mm.empty((1,) * 64).ndim == 64
    # Up to 8 extents are kept in place, more on the heap: both keep every extent.
    for shape in [(3, 1, 2, 1, 2, 1, 1, 2), (3, 1, 2, 1, 2, 1, 1, 2, 5), (2,) * 12]:
        a = mm.zeros(shape, dtype=np.int8, order="F")
        assert a.shape == shape and a.flags.f_contiguous and not a.any()
        assert a.size == int(np.prod(shape))
        del a
    with pytest.raises(ValueError, match="negative dimensions"):
        mm.empty((1,) * 9 + (-1,))
    with pytest.raises(TypeError, match="shape"):
        mm.empty("abc")
    with pytest.raises(TypeError, match="shape"):
        mm.empty((2, 1.5))
    with pytest.raises(TypeError, match="Python objects"):
        mm.empty(3, dtype=object)
    with pytest.raises(ValueError, match="no size"):
        mm.empty(3, dtype="S")
    with pytest.raises(ValueError, match="too big"):
        mm.empty((2**40, 2**40))
    with pytest.raises(ValueError, match="order"):
        mm.empty(3, order="K")
    with pytest.raises(TypeError):
        mm.empty(3, dtype="not a dtype")
    assert live(mm) == 0


def test_allocate_and_deallocate_buffers(mm):
    buf = mm.allocate(100)
    assert len(buf) == 100 and buf.nbytes == 100 and not buf.released
    mv = memoryview(buf)
    mv[:] = bytes(range(100))
    assert np.frombuffer(buf, np.uint8)[99] == 99
    assert np.asarray(buf)[5] == 5
    with pytest.raises(BufferError, match="export"):
        mm.deallocate(buf)
    mv.release()
    gc.collect()
    mm.deallocate(buf)
    assert buf.released and len(buf) == 0
    with pytest.raises(ValueError, match="released"):
        mm.deallocate(buf)
    with pytest.raises(BufferError):
        memoryview(buf)
    assert live(mm) == 0


def test_deallocate_refuses_foreign_objects(mm):
    other = tensorpool.MemoryManager()
    buf = other.allocate(64)
    with pytest.raises(ValueError, match="not allocated by this allocator"):
        mm.deallocate(buf)
    with pytest.raises(ValueError, match="not a tensorpool.Buffer"):
        mm.deallocate(bytearray(64))
    assert not buf.released
    other.deallocate(buf)


def test_bad_sizes_raise_value_error(mm):
    with pytest.raises(ValueError, match="0 bytes"):
        mm.allocate(0)
    with pytest.raises(ValueError, match="beyond the largest allocation"):
        mm.allocate(tensorpool.MAX_ALLOCATION_SIZE + 1)
    with pytest.raises(OverflowError):
        mm.allocate(-1)


def test_memory_limit_raises_out_of_memory_with_the_report():
    mm = tensorpool.MemoryManager(memory_limit="8 MiB")
    keep = mm.empty(3 << 20, np.uint8)
    with pytest.raises(tensorpool.OutOfMemoryError) as err:
        mm.empty(16 << 20, np.uint8)
    assert isinstance(err.value, MemoryError)
    message = str(err.value)
    assert "8.00 MiB" in message or "8 MiB" in message
    assert "allocated" in message
    assert mm.stats()["num_ooms"] == 1
    del keep


def test_settings_and_config_files(tmp_path):
    mm = tensorpool.MemoryManager(small_threshold=4096, memory_limit="1 GiB")
    config = mm.config()
    assert config["small_threshold"] == 4096 and config["memory_limit"] == 1 << 30
    path = tmp_path / "tp.toml"
    path.write_text('small_threshold = "8 KiB"\nthread_cache_bytes = 0\n')
    mm2 = tensorpool.MemoryManager(str(path), memory_limit=1 << 30)
    assert mm2.config()["thread_cache_bytes"] == 0
    with pytest.raises(ValueError, match="unknown field"):
        tensorpool.MemoryManager(no_such_setting=1)
    with pytest.raises(ValueError, match="small_threshold .* must be a power of two"):
        tensorpool.MemoryManager(small_threshold=1000)
    with pytest.raises(FileNotFoundError):
        tensorpool.MemoryManager(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("small_threshold = [\n")
    with pytest.raises(ValueError):
        tensorpool.MemoryManager(str(bad))
    bad.write_text('soft_limit = "1 GiB"\nmemory_limit = -1\n')
    with pytest.raises(ValueError, match=r"bad.toml: line 2 \(`memory_limit = -1`\).*negative"):
        tensorpool.MemoryManager(bad)


def test_a_bad_setting_is_named():
    cases = {
        "memory_limit=-1": (dict(memory_limit=-1), "negative"),
        "background_release='yes'": (dict(background_release="yes"), "boolean"),
        "upstream='gpu'": (dict(upstream="gpu"), "mmap"),
    }
    for shown, (settings, why) in cases.items():
        with pytest.raises(ValueError, match=why) as err:
            tensorpool.MemoryManager(release_delay_ms=100, **settings)
        assert shown in str(err.value) and "column" not in str(err.value), str(err.value)
    for args, kwargs, error, message in [
        ((None, -1), {}, ValueError, "arena_size: a size cannot be negative, got -1"),
        ((None, [1]), {}, TypeError, "arena_size: a size is an int"),
        (({256: -1},), {}, ValueError, "pool_sizes entry 256: -1: .* cannot be negative"),
        (({256: "x"},), {}, TypeError, "pool_sizes entry 256: 'x'"),
        ((), dict(pool_sizes={512: 4}, pools=[{"block_size": 256, "capacity": 4}]),
         TypeError, "pools given twice"),
    ]:
        with pytest.raises(error, match=message):
            tensorpool.MemoryManager(*args, **kwargs)
    mm = tensorpool.MemoryManager({256: 2}, "16 KiB")  # a size as a string too
    assert len(mm.allocate(10_000)) == 10_000
    with pytest.raises(ValueError, match="memory_limit: a size cannot be negative"):
        mm.set_memory_limit(-1)
    with pytest.raises(ValueError, match="soft_limit: "):
        mm.set_soft_limit("lots")


def test_numpy_integers_are_shapes():
    mm = tensorpool.MemoryManager()
    for n in (np.int64(4), np.array(4), np.uint8(4)):
        a = mm.empty(n, np.float32)
        assert a.shape == np.empty(n, np.float32).shape == (4,)
    with pytest.raises(TypeError, match="shape must be an int or a sequence of ints"):
        mm.empty(4.0)


def test_config_file_pools_as_a_table(tmp_path):
    # the format `tensorpool plan` writes
    path = tmp_path / "plan.toml"
    path.write_text('pools = { "64" = 10, "4096" = 2 }\nmemory_limit = "64 MiB"\n')
    mm = tensorpool.MemoryManager(str(path))
    config = mm.config()
    assert config["pools"] == [{"block_size": 64, "capacity": 10}, {"block_size": 4096, "capacity": 2}]
    assert config["memory_limit"] == 64 << 20


def test_pool_sizes_route_to_pools_first_then_fall_through():
    mm = tensorpool.MemoryManager(pool_sizes={256: 2, 4096: 1})

    def per_pool():
        return {c["block_size"]: c["allocated_blocks"] for c in mm.stats()["classes"]}

    a, b, c = mm.allocate(200), mm.allocate(256), mm.allocate(256)
    # two blocks from the 256-byte pool, the third from the 4096-byte pool
    assert per_pool()[256] == 2 and per_pool()[4096] == 1
    d = mm.allocate(300)  # both pools full now: the tiers take it
    tiers = {t["tier"]: t["allocated_blocks"] for t in mm.stats()["tiers"]}
    assert tiers["pool"] == 3 and tiers["small"] == 1
    for x in (a, b, c, d):
        mm.deallocate(x)
    assert live(mm) == 0
    with pytest.raises(TypeError):
        tensorpool.MemoryManager(pool_sizes={"big": 1})


def test_stats_summary_snapshot_trim(mm):
    arrays = [mm.empty(n) for n in (8, 100, 10_000, 1_000_000)]
    stats = mm.stats()
    for key in ("allocated_bytes", "peak_allocated_bytes", "reserved_bytes", "peak_reserved_bytes",
                "cached_bytes", "fragmentation", "num_allocs", "tiers", "classes",
                "deferred_arena_scopes", "deferred_arena_bytes", "handler_invalid_frees"):
        assert key in stats
    assert stats["allocated_blocks"] == 4
    assert stats["requested_bytes"] == 8 * (8 + 100 + 10_000 + 1_000_000)
    summary = mm.summary()
    assert "tensorpool memory summary" in summary and "allocated" in summary
    snap = mm.snapshot()
    json.dumps(snap)
    states = [b["state"] for seg in snap["segments"] for b in seg["blocks"]]
    # Arrays own raw blocks, as those NumPy allocates through the handler.
    assert states.count("allocated_raw") >= 2
    del arrays
    gc.collect()
    mm.flush_thread_cache()
    assert mm.trim() > 0
    assert mm.stats()["reserved_bytes"] < stats["reserved_bytes"]
    mm.reset_peak_stats()
    assert mm.stats()["peak_allocated_bytes"] == mm.stats()["allocated_bytes"]
    assert "MemoryManager" in repr(mm)


def test_an_array_no_memory_could_back_is_a_memory_error():
    # As np.zeros: refused at once, not granted and killed when touched.
    with open("/proc/sys/vm/overcommit_memory") as f:
        if f.read().strip() == "1":
            pytest.skip("the kernel grants every mapping (overcommit_memory = 1)")
    mm = tensorpool.MemoryManager()
    with pytest.raises(MemoryError, match="refused"):
        mm.zeros(1 << 46, np.uint8)
    assert mm.stats()["reserved_bytes"] == 0
    assert mm.zeros(10).sum() == 0  # and it goes on


def test_arrays_have_numpys_strides_and_flags_also_without_elements():
    mm = tensorpool.MemoryManager()
    arena = tensorpool.Arena(1 << 16)
    for shape, order in [(0, "C"), ((5, 0), "F"), ((0, 3, 2), "C"), ((2, 3), "F"),
                         (7, "C"), ((), "C"), ((2, 3), None)]:
        want = np.empty(shape, order=order)
        for got in (mm.empty(shape, order=order), mm.zeros(shape, order=order),
                    arena.empty(shape, order=order)):
            assert (got.shape, got.strides) == (want.shape, want.strides), (shape, order)
            assert got.flags.c_contiguous == want.flags.c_contiguous
            assert got.flags.f_contiguous == want.flags.f_contiguous


def test_pool_sizes_whose_reading_changes_the_dict_are_read_from_a_snapshot():
    # Found by a user hunt: a size whose `__index__` added to the dict being read
    # raised pyo3's PanicException ("dictionary changed size during iteration").
    pools = {}

    class Size:
        def __hash__(self):
            return 256

        def __eq__(self, other):
            return other is self

        def __index__(self):
            pools[4096] = 10
            return 256

    pools[Size()] = 100
    mm = tensorpool.MemoryManager(pools)
    # The pool as the dict was when read; the entry its code added came after.
    assert mm.config()["pools"] == [{"block_size": 256, "capacity": 100}]
    assert 4096 in pools  # the caller's dict changed, as its code said


def test_a_call_into_the_manager_while_its_first_array_imports_numpy_is_refused():
    # Found by a user hunt: the manager's NumPy handler was made inside a once-cell
    # while NumPy was imported; an import hook that called into the same manager
    # waited for ever on that cell. Now the nested call is refused (NumPy is not
    # ready), the error reaches the outer call, and the manager works afterwards.
    # Run in a child, under a time limit.
    import subprocess
    import sys

    code = """
import builtins, sys
for name in [n for n in sys.modules if n == "numpy" or n.startswith("numpy.")]:
    del sys.modules[name]
import tensorpool
mm = tensorpool.MemoryManager()
real = builtins.__import__
def hook(name, *a, **k):
    if name == "numpy._core._multiarray_umath":
        builtins.__import__ = real
        mm.empty(3)
    return real(name, *a, **k)
builtins.__import__ = hook
try:
    mm.empty(5)
except ImportError as e:
    print("refused:", "still being imported" in str(e))
for name in [n for n in sys.modules if n == "numpy" or n.startswith("numpy.")]:
    del sys.modules[name]
print(mm.empty(7).shape)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["refused: True", "(7,)"], out.stdout
