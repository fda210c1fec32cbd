"""tensorpool.PlannedArena: arrays of a repeating step at their planned offsets."""

import gc

import numpy as np
import pytest

import tensorpool


def forward(arena, n=256, keep=None):
    """One step of a small network: each array's values checked after the next
    ones are made (a planned slot must never overlap a live array)."""
    x = arena.empty((n,), dtype=np.float64)
    x[:] = 1.0
    h = arena.zeros((n, 4), dtype=np.float32)
    h += x[:, None].astype(np.float32)
    del x
    y = arena.empty((n * 2,), dtype=np.float64)
    y[:] = 3.0
    assert np.all(h == 1.0)
    out = float(h.sum() + y.sum())
    if keep is not None:
        keep.append(h)
    del h
    z = arena.empty((n,), dtype=np.float64)
    z[:] = 2.0
    assert np.all(y == 3.0)
    out += float(z.sum())
    return out


def expected(n=256):
    return n * 4 * 1.0 + 2 * n * 3.0 + n * 2.0


def recorded_and_planned():
    """A manager, and an arena of it that recorded two steps of `forward` and plans
    them."""
    mm = tensorpool.MemoryManager()
    arena = mm.planned_arena()
    for _ in range(2):
        arena.step()
        forward(arena)
    arena.plan(time_limit=0.5)
    return mm, arena


def test_recorded_steps_are_planned_and_served():
    mm = tensorpool.MemoryManager()
    arena = mm.planned_arena()
    assert arena.recording
    for _ in range(3):
        arena.step()
        assert forward(arena) == expected()
    assert arena.stats()["recorded_arrays"] == 12
    arena.plan(time_limit=0.5)
    assert not arena.recording
    # 2 KiB and 4 KiB live together, then 4 KiB and 4 KiB, then 4 KiB and 2 KiB.
    assert 8192 <= arena.arena_bytes <= 2048 + 4096 + 4096
    for _ in range(20):
        arena.step()
        assert forward(arena) == expected()
    s = arena.stats()
    assert s["served"] == 80 and s["fallback"] == 0, s
    assert s["live_planned"] == 0
    assert "80 served" in repr(arena)


def test_an_array_kept_past_its_step_is_deferred_and_never_overwritten():
    _, arena = recorded_and_planned()
    kept = []
    arena.step()
    forward(arena, keep=kept)  # h stays alive
    for _ in range(3):
        arena.step()
        assert forward(arena) == expected()
        assert np.all(kept[0] == 1.0)
    s = arena.stats()
    assert s["deferred"] == 3, s
    assert s["fallback_conflict"] >= 1, s
    del kept
    gc.collect()
    arena.step()
    before = arena.stats()["served"]
    forward(arena)
    assert arena.stats()["served"] == before + 4


def test_a_diverging_step_falls_back_and_stays_correct():
    _, arena = recorded_and_planned()
    arena.step()
    assert forward(arena, n=512) == expected(512)  # every array larger
    s = arena.stats()
    assert s["fallback_mismatch"] == 4, s
    arena.step()
    extra = arena.empty(10)
    assert forward(arena) == expected()  # shifted by one: sizes differ
    del extra
    assert arena.stats()["fallback"] >= 5


def test_arrays_outlive_the_arena_object():
    mm = tensorpool.MemoryManager()
    arena = mm.planned_arena()
    arena.step()
    forward(arena)
    arena.step()
    forward(arena)
    early = arena.zeros(100)  # recorded, alive when the plan starts
    early += 1
    arena.plan(time_limit=0.1)
    arena.step()
    forward(arena)
    assert early.sum() == 100
    del early  # the manager's block, given back through the running arena
    arena.step()
    a = arena.zeros(256)
    a += 5
    del arena
    gc.collect()
    assert a.sum() == 5 * 256


def test_a_plan_file_and_a_trace_give_the_same_arena(tmp_path):
    mm, recorded = recorded_and_planned()
    path = tmp_path / "step.csv"
    recorded.write_plan(path)
    assert path.read_text().startswith("slot,size,offset,freed_before,free_event\n")
    from_file = mm.planned_arena(path)
    assert from_file.arena_bytes == recorded.arena_bytes
    from_file.step()
    assert forward(from_file) == expected()
    assert from_file.stats()["served"] == 4
    # A trace of three steps in MiniMalloc's format, its period found.
    rows = ["id,lower,upper,size"]
    for s in range(3):
        t, i = 10 * s, 3 * s
        rows += [f"{i},{t},{t + 2},4096", f"{i + 1},{t + 1},{t + 3},1024", f"{i + 2},{t + 2},{t + 4},3072"]
    trace = tmp_path / "t.csv"
    trace.write_text("\n".join(rows) + "\n")
    for steps in (None, "repeating", [0, 6, 12]):
        arena = mm.planned_arena(trace=trace, steps=steps, time_limit=0.1)
        assert arena.arena_bytes == 5120
        arena.step()
        a = arena.empty(4096, dtype=np.uint8)
        b = arena.empty(1024, dtype=np.uint8)
        del a
        c = arena.empty(3072, dtype=np.uint8)
        assert arena.stats()["served"] == 3
        del b, c


def test_bad_settings_are_refused_by_name(tmp_path):
    mm = tensorpool.MemoryManager()
    trace = tmp_path / "t.csv"
    trace.write_text("id,lower,upper,size\n0,0,2,10\n1,1,3,20\n2,2,5,30\n")
    with pytest.raises(ValueError, match="does not repeat"):
        mm.planned_arena(trace=trace)
    with pytest.raises(ValueError, match="repeating"):
        mm.planned_arena(trace=trace, steps="soon")
    with pytest.raises(ValueError, match="must increase"):
        mm.planned_arena(trace=trace, steps=[2, 1])
    with pytest.raises(ValueError, match="give trace="):
        mm.planned_arena(steps="repeating")
    with pytest.raises(ValueError, match="not both"):
        mm.planned_arena(trace, trace=trace)
    for bad in (-1, float("nan"), 1e20):
        with pytest.raises(ValueError, match="time_limit"):
            mm.planned_arena(trace=trace, steps=[0, 2], time_limit=bad)
    for bad in (48, 16, 2**40):
        with pytest.raises(ValueError, match="align"):
            mm.planned_arena(trace=trace, steps=[0, 2], align=bad)
    with pytest.raises(ValueError, match="no `offset` column"):
        mm.planned_arena(trace)
    with pytest.raises(ValueError, match="cannot read"):
        mm.planned_arena(tmp_path / "missing.csv")
    arena = mm.planned_arena()
    with pytest.raises(ValueError, match="call step"):
        arena.plan()
    with pytest.raises(ValueError, match="no plan yet"):
        arena.write_plan(tmp_path / "p.csv")
    arena.step()
    arena.step()  # twice in a row: one step
    arena.empty(8)
    arena.plan(time_limit=0.1)
    with pytest.raises(ValueError, match="already runs a plan"):
        arena.plan()


def test_a_planned_array_owns_its_data_and_is_not_moved():
    mm, arena = recorded_and_planned()
    arena.step()
    a = arena.zeros(256)
    assert a.flags.owndata and a.base is None
    from numpy._core.multiarray import get_handler_name

    assert get_handler_name(a) == "tensorpool"
    a += 3
    with pytest.raises(MemoryError):
        a.resize(10_000, refcheck=False)
    assert a.shape == (256,) and np.all(a == 3)
    view = a[10:20]
    del a
    gc.collect()
    assert np.all(view == 3)  # the view keeps the block
    del view
    assert mm.stats()["handler_invalid_frees"] == 0
    assert arena.stats()["live_planned"] == 0
