"""Hypothesis strategies and exact-comparison helpers shared by the tests."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

F32 = np.float32


def assert_same_f32(actual: Any, expected: Any, what: str = "") -> None:
    """Bit-for-bit float32 equality (so -0.0 != 0.0 and NaN == same NaN)."""
    a = np.asarray(actual)
    e = np.asarray(expected)
    assert a.dtype == np.float32, f"{what}: dtype {a.dtype}, want float32"
    e = e.astype(np.float32)
    assert a.shape == e.shape, f"{what}: shape {a.shape}, want {e.shape}"
    ab, eb = a.view(np.uint32), e.view(np.uint32)
    if not np.array_equal(ab, eb):
        bad = np.flatnonzero(ab.reshape(-1) != eb.reshape(-1))
        i = int(bad[0])
        raise AssertionError(
            f"{what}: {bad.size} of {a.size} values differ; first at flat {i}: "
            f"got {a.reshape(-1)[i]!r} ({ab.reshape(-1)[i]:#010x}), "
            f"want {e.reshape(-1)[i]!r} ({eb.reshape(-1)[i]:#010x})"
        )


def assert_same_i8(actual: Any, expected: Any, what: str = "") -> None:
    a = np.asarray(actual)
    e = np.asarray(expected)
    assert a.dtype == np.int8, f"{what}: dtype {a.dtype}, want int8"
    assert a.shape == e.shape, f"{what}: shape {a.shape}, want {e.shape}"
    if not np.array_equal(a, e):
        bad = np.flatnonzero(a.reshape(-1) != e.reshape(-1))
        i = int(bad[0])
        raise AssertionError(
            f"{what}: {bad.size} of {a.size} values differ; first at flat {i}: "
            f"got {a.reshape(-1)[i]}, want {e.reshape(-1)[i]}"
        )


def ulp_distance(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.int64]:
    """Distance in units in the last place between positive finite float32s."""
    ai = np.asarray(a, dtype=F32).view(np.int32).astype(np.int64)
    bi = np.asarray(b, dtype=F32).view(np.int32).astype(np.int64)
    return np.abs(ai - bi)


# ─── float32 data over many magnitudes ──────────────────────────────────────

_unit = st.floats(-1.0, 1.0, width=32)
_any_finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@st.composite
def scaled_f32(draw: st.DrawFn, shape: Any) -> npt.NDArray[np.float32]:
    """float32 arrays whose magnitude is 10^e for e in [-30, 30] (subnormal
    products included), or anything finite, or half-integer ties with
    max |x| == 127 (scale exactly 1.0), or mostly zeros."""
    kind = draw(st.sampled_from(["scaled", "scaled", "any", "ties", "sparse"]))
    if kind == "scaled":
        base = draw(hnp.arrays(np.float32, shape, elements=_unit))
        e = draw(st.integers(-30, 30))
        with np.errstate(under="ignore"):
            return (base.astype(np.float64) * 10.0**e).astype(F32)
    if kind == "any":
        return draw(hnp.arrays(np.float32, shape, elements=_any_finite))
    if kind == "ties":
        halves = draw(hnp.arrays(np.int16, shape, elements=st.integers(-254, 254)))
        x = (halves.astype(F32) / F32(2)).astype(F32)
        if x.size:
            x.reshape(-1)[draw(st.integers(0, x.size - 1))] = draw(
                st.sampled_from([F32(127), F32(-127)])
            )
        return x
    x = draw(hnp.arrays(np.float32, shape, elements=st.sampled_from([0.0, -0.0, 1.5, -3.0])))
    return x.astype(F32)


vectors = st.integers(0, 300).flatmap(lambda n: scaled_f32((n,)))
nonempty_vectors = st.integers(1, 300).flatmap(lambda n: scaled_f32((n,)))
matrices = st.tuples(st.integers(0, 9), st.integers(0, 70)).flatmap(scaled_f32)
nonempty_matrices = st.tuples(st.integers(1, 9), st.integers(1, 70)).flatmap(scaled_f32)
any_shape_arrays = hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=7).flatmap(
    scaled_f32
)

#: ``None`` for MaxAbs, else a percentile p in (0, 1] as the Python float the user passes.
percentiles = st.one_of(
    st.none(),
    st.floats(min_value=1e-6, max_value=1.0),
    st.sampled_from([0.5, 0.9, 0.99, 0.999, 1.0]),
)


def mode_of(p: float | None) -> Any:
    import dynquant as dq

    return dq.MaxAbs() if p is None else dq.Percentile(p)
