"""CalibStats.collect: exact min/max/p99/suggested_scale, tolerant mean and
std_dev (the SPEC allows float64 accumulation), empty and zero inputs."""

from __future__ import annotations

import dataclasses
import pickle

import dynquant as dq
import numpy as np
import pytest
import reference_np as ref
from hypothesis import given
from hypothesis import strategies as st
from strategies import scaled_f32

F32 = np.float32

batch_lists = st.lists(
    st.integers(0, 60).flatmap(lambda n: scaled_f32((n,))), min_size=0, max_size=5
)


def check(stats: dq.CalibStats, want: ref.Calib) -> None:
    assert stats.min == want.min and stats.max == want.max
    assert np.float32(stats.p99).view(np.uint32) == np.float32(want.p99).view(np.uint32)
    sc = np.float32(stats.suggested_scale).view(np.uint32)
    assert sc == np.float32(want.suggested_scale).view(np.uint32)
    # Every field is a float32 value carried in a Python float.
    for f in dataclasses.fields(stats):
        v = getattr(stats, f.name)
        assert isinstance(v, float)
        assert np.isnan(v) or float(np.float32(v)) == v
    spread = max(abs(want.min), abs(want.max))
    assert stats.mean == pytest.approx(want.mean, rel=1e-5, abs=1e-6 * spread)
    assert stats.std_dev == pytest.approx(want.std_dev, rel=1e-5, abs=1e-6 * spread)


@given(batches=batch_lists)
def test_collect_matches_reference(batches: list[np.ndarray]) -> None:
    with np.errstate(over="ignore"):
        if any(np.isinf(b.astype(np.float64).sum() * 2) for b in batches):
            return  # f64 overflow is not what this test is about
    check(dq.CalibStats.collect(batches), ref.calib_collect(batches))


def test_collect_hand_values() -> None:
    s = dq.CalibStats.collect([[1.0, 2.0, 3.0], np.array([-1.0, 0.0, 4.0], F32)])
    assert (s.min, s.max, s.p99) == (-1.0, 4.0, 4.0)
    assert s.suggested_scale == float(F32(4) / F32(127))
    assert s.mean == pytest.approx(1.5)
    assert s.std_dev == pytest.approx(np.sqrt(17.5 / 6))


def test_p99_uses_the_float32_index() -> None:
    # 100 values 1..100: 0.99 (f32 0.99000001) * 100 rounds to 99.0 in f32 →
    # index 98 → p99 = 99.
    s = dq.CalibStats.collect([np.arange(1, 101, dtype=F32)])
    assert s.p99 == 99.0
    assert s.suggested_scale == float(F32(99) / F32(127))
    # 1..1000 with one batch split in three: index ceil(990) - 1 = 989 → 990.
    x = np.arange(1, 1001, dtype=F32)
    s = dq.CalibStats.collect([x[:10], x[10:500].reshape(10, 49), x[500:][::-1]])
    assert s.p99 == 990.0
    assert s.p99 == ref.calib_collect([x]).p99


def test_suggested_scale_fallbacks() -> None:
    # p99 == 0 but max |x| > 0: the scale is max|x| / 127.
    x = np.zeros(100, F32)
    x[37] = -5.0
    s = dq.CalibStats.collect([x])
    assert s.p99 == 0.0
    assert s.suggested_scale == float(F32(5) / F32(127))
    assert (s.min, s.max) == (-5.0, 0.0)
    # all zeros: 1/127
    s = dq.CalibStats.collect([np.zeros(10, F32), np.zeros((2, 2), F32)])
    assert (s.min, s.max, s.mean, s.std_dev, s.p99) == (0.0, 0.0, 0.0, 0.0, 0.0)
    assert s.suggested_scale == float(F32(1) / F32(127))


@pytest.mark.parametrize("batches", [[], [[]], [np.zeros(0, F32), np.zeros((3, 0), F32)]])
def test_no_values_gives_all_zero(batches: list[object]) -> None:
    s = dq.CalibStats.collect(batches)
    assert dataclasses.astuple(s) == (0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def test_collect_accepts_any_iterable_and_shapes() -> None:
    def gen():  # type: ignore[no-untyped-def]
        yield np.array([[1.0, -2.0], [3.0, 4.0]])  # float64, 2-D
        yield [5]  # list of ints
        yield np.arange(3, dtype=np.float16)

    s = dq.CalibStats.collect(gen())
    assert (s.min, s.max) == (-2.0, 5.0)
    assert s.mean == pytest.approx(14 / 8)


def test_mean_and_std_are_accurate() -> None:
    # 1e6 values of 0.1 and one of 1e4: a sequential f32 sum drifts, f64 does not.
    x = np.full(1_000_000, 0.1, F32)
    x[0] = 1e4
    s = dq.CalibStats.collect([x])
    x64 = x.astype(np.float64)
    assert s.mean == pytest.approx(x64.mean(), rel=1e-6)
    assert s.std_dev == pytest.approx(x64.std(), rel=1e-6)
    assert s.p99 == float(F32(0.1)) and s.max == 1e4


def test_large_collect_parallel_paths(rng: np.random.Generator, two_threads: None) -> None:
    batches = [
        (rng.standard_normal(300_001) * 3).astype(F32),
        (rng.standard_normal((700, 300)) * 0.01).astype(F32),
        np.zeros(5, F32),
    ]
    check(dq.CalibStats.collect(batches), ref.calib_collect(batches))


def test_non_finite() -> None:
    with pytest.raises(dq.NonFiniteError) as info:
        dq.CalibStats.collect([np.ones(3, F32), np.array([1.0, np.inf, np.nan], F32)])
    assert info.value.index == 4  # flat index over all batches
    # NaN has no reference result (its sort panics): always an error.
    with pytest.raises(dq.NonFiniteError) as info:
        dq.CalibStats.collect([np.array([np.nan], F32)], nan_policy="reference")
    assert info.value.index == 0
    # Infinities follow the reference: max inf, p99 inf, mean inf/NaN.
    x = np.array([1.0, np.inf] + [0.5] * 98, F32)
    s = dq.CalibStats.collect([x], nan_policy="reference")
    assert (s.max, s.min) == (np.inf, 0.5)
    want = ref.calib_collect([x])
    assert s.p99 == want.p99 == 1.0  # index 98 of the sorted |x| is 1.0
    assert s.suggested_scale == float(F32(1) / F32(127))
    assert s.mean == np.inf and np.isnan(s.std_dev)
    with pytest.raises(dq.InvalidArgumentError):
        dq.CalibStats.collect([x], nan_policy="skip")


def test_bad_batches() -> None:
    with pytest.raises(dq.DTypeError):
        dq.CalibStats.collect([np.array([True])])
    with pytest.raises(dq.DTypeError):
        dq.CalibStats.collect([np.ones(2, complex)])
    with pytest.raises(TypeError):
        dq.CalibStats.collect(3)  # type: ignore[arg-type]


def test_calibstats_is_a_frozen_picklable_value() -> None:
    s = dq.CalibStats.collect([np.array([1.0, -3.0, 2.5], F32)])
    t = pickle.loads(pickle.dumps(s))
    assert t == s and hash(t) == hash(s)
    assert t is not s
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.min = 0.0  # type: ignore[misc]
    r = repr(s)
    assert r.startswith("CalibStats(") and "p99=" in r and "suggested_scale=" in r
    assert s != dq.CalibStats.collect([np.array([1.0, -3.0, 2.0], F32)])
