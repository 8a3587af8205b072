"""compute_scale and the three quantizers against the NumPy reference model
(tests/reference_np.py) and against hand-computed values."""

from __future__ import annotations

from typing import Any

import dynquant as dq
import numpy as np
import pytest
import reference_np as ref
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    any_shape_arrays,
    assert_same_f32,
    assert_same_i8,
    matrices,
    mode_of,
    percentiles,
    vectors,
)

F32 = np.float32
TINY = np.float32(np.finfo(np.float32).smallest_subnormal)  # 2^-149


def tiny(k: int) -> np.float32:
    """k * 2^-149 (exact for k < 2^23)."""
    return np.uint32(k).view(np.float32)


# ─── the reference model itself (so its own building blocks can fail) ─────


def test_reference_rounding_is_half_away_from_zero() -> None:
    x = np.array([0.49999997, 0.5, 1.5, 2.5, -0.5, -2.5, -0.49999997, 126.5, 3e38], F32)
    want = np.array([0, 1, 2, 3, -1, -3, 0, 127, 3e38], F32)
    assert_same_f32(ref.round_half_away(x), want)


def test_reference_percentile_index_uses_float32() -> None:
    assert ref.percentile_index(0.999, 32999) == 32965
    # The same formula in float64 gives 32966: the f32 one is not an accident.
    assert int(np.ceil(np.float64(np.float32(0.999)) * 32999)) - 1 == 32966
    assert ref.percentile_index(1.0, 2**24 + 1) == 2**24 - 1  # n rounds to 2^24 in f32
    assert ref.percentile_index(1e-9, 10) == 0


# ─── hypothesis: dynquant == reference model, bit for bit ─────────────────


@given(x=any_shape_arrays, p=percentiles)
def test_quantize_int8_matches_reference(x: np.ndarray, p: float | None) -> None:
    t = dq.quantize_int8(x, mode_of(p))
    q, s = ref.quantize_int8(x, p)
    assert t.format is dq.DynQuantFormat.Int8PerTensor
    assert t.shape == x.shape
    assert_same_i8(t.data, q, "data")
    assert_same_f32(t.scales, np.array([s], F32), "scales")


@given(x=any_shape_arrays, p=percentiles)
def test_quantize_int4_matches_reference(x: np.ndarray, p: float | None) -> None:
    t = dq.quantize_int4(x, mode_of(p))
    q, s = ref.quantize_int4(x, p)
    assert t.format is dq.DynQuantFormat.Int4PerTensor
    assert t.shape == x.shape
    assert_same_i8(t.data, q, "data")
    assert_same_f32(t.scales, np.array([s], F32), "scales")
    assert int(np.abs(t.data.astype(np.int16)).max(initial=0)) <= 7


@given(x=matrices, p=percentiles)
def test_quantize_int8_per_row_matches_reference(x: np.ndarray, p: float | None) -> None:
    t = dq.quantize_int8_per_row(x, mode_of(p))
    q, s = ref.quantize_int8_per_row(x, p)
    assert t.format is dq.DynQuantFormat.Int8PerRow
    assert t.shape == x.shape
    assert_same_i8(t.data, q, "data")
    assert_same_f32(t.scales, s, "scales")


@given(
    x=vectors,
    clip=st.sampled_from([127.0, 7.0, 1.0, 255.0, 0.1, 1e-30, 3e38]),
    p=percentiles,
)
def test_compute_scale_matches_reference(x: np.ndarray, clip: float, p: float | None) -> None:
    got = dq.compute_scale(x, clip, mode_of(p))
    assert isinstance(got, float)
    assert_same_f32(np.float32(got), ref.compute_scale(x, clip, p))


# ─── crafted cases ──────────────────────────────────────────────────────────


def test_ties_round_half_away_from_zero_with_scale_one() -> None:
    # amax 127 gives scale exactly 1.0, so x / s == x and every .5 is a tie.
    x = np.array([127, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999997, -126.5, 126.5, 3.4999998], F32)
    t = dq.quantize_int8(x)
    assert t.scales.tolist() == [1.0]
    assert t.data.tolist() == [127, 1, -1, 2, -2, 3, -3, 0, -127, 127, 3]
    # numpy's own rounding is half-to-even: it would give 0, 2, -2 here.
    assert np.round(x[[1, 5, 6]]).tolist() == [0.0, 2.0, -2.0]


def test_int4_ties_and_clamp() -> None:
    x = np.array([7, 3.5, -3.5, 0.5, -6.5, 2.4999998], F32)
    t = dq.quantize_int4(x)
    assert t.scales.tolist() == [1.0]
    assert t.data.tolist() == [7, 4, -4, 1, -7, 2]
    # Percentile(0.5) of |x| = [1, 2, 100, 7]: k = ceil(0.5 * 4) - 1 = 1 → amax 2,
    # scale f32(2/7) = 0.2857143 (rounded up), so 1 / s = 3.4999998 → 3 (not 4);
    # 100 / s = 350 clamps to 7, -7 / s = -24.5 clamps to -7.
    t = dq.quantize_int4(np.array([1, -2, 100, -7], F32), dq.Percentile(0.5))
    assert t.scales[0] == np.float32(2) / np.float32(7)
    assert np.float32(1) / t.scales[0] < np.float32(3.5)
    assert t.data.tolist() == [3, -7, 7, -7]


def test_true_division_not_reciprocal_multiplication() -> None:
    # Found by search: x * (1/s) lands on the other side of a .5 than x / s.
    amax, x = np.float32(14.843882), np.float32(13.265988)
    s = amax / np.float32(127)
    by_div = ref.round_half_away(np.array([x / s], F32))[0]
    by_mul = ref.round_half_away(np.array([x * (np.float32(1) / s)], F32))[0]
    assert (by_div, by_mul) == (113, 114)  # the case really discriminates
    t = dq.quantize_int8(np.array([amax, x], F32))
    assert t.data.tolist() == [127, 113]
    # And an exact tie under division that the reciprocal misses: 92.5 → 93.
    amax, x = np.float32(3.2421317), np.float32(2.3613951)
    assert x / (amax / np.float32(127)) == np.float32(92.5)
    assert dq.quantize_int8(np.array([x, -amax], F32)).data.tolist() == [93, -127]


def test_minus_zero_and_zero() -> None:
    t = dq.quantize_int8(np.array([-0.0, 0.0, -0.0], F32))
    assert t.scales.view(np.uint32).tolist() == [0]  # +0.0, not -0.0
    assert t.data.tolist() == [0, 0, 0]
    assert dq.compute_scale(np.array([-0.0], F32), 127.0) == 0.0


def test_empty_inputs() -> None:
    for quantize in (dq.quantize_int8, dq.quantize_int4):
        t = quantize(np.zeros(0, F32))
        assert t.data.shape == (0,) and t.data.dtype == np.int8
        assert t.scales.tolist() == [0.0] and t.scales.dtype == np.float32
        assert t.shape == (0,)
    assert dq.compute_scale(np.zeros(0, F32), 127.0) == 0.0
    assert dq.compute_scale([], 7.0, dq.Percentile(0.5)) == 0.0
    for shape in [(0, 5), (3, 0), (0, 0)]:
        t = dq.quantize_int8_per_row(np.zeros(shape, F32))
        assert t.data.shape == shape
        assert t.scales.shape == (0,) and t.scales.dtype == np.float32
    # A zero-size tensor of higher rank keeps its shape per tensor.
    t = dq.quantize_int8(np.zeros((2, 0, 3), F32))
    assert t.data.shape == (2, 0, 3) and t.scales.tolist() == [0.0]


@pytest.mark.parametrize("v", [3.0, -3.0, 1e-30, -1e30, 127.0, 0.0])
def test_one_element(v: float) -> None:
    t = dq.quantize_int8(np.array([v], F32))
    if v == 0:
        assert (t.data.tolist(), t.scales.tolist()) == ([0], [0.0])
    else:
        assert t.data.tolist() == [127 if v > 0 else -127]
        assert t.scales[0] == np.float32(abs(v)) / np.float32(127)
    t4 = dq.quantize_int4(np.array([v], F32))
    assert t4.data.tolist() == ([0] if v == 0 else [7 if v > 0 else -7])


@pytest.mark.parametrize("n", [*range(1, 40), 63, 64, 65, 127, 128, 129, 255, 257, 1023, 1025])
def test_odd_lengths_match_reference(n: int, rng: np.random.Generator) -> None:
    x = (rng.standard_normal(n) * rng.choice([1e-3, 1.0, 1e4])).astype(F32)
    for quantize, clip in ((dq.quantize_int8, 127.0), (dq.quantize_int4, 7.0)):
        t = quantize(x)
        q, s = ref.quantize_per_tensor(x, clip)
        assert_same_i8(t.data, q, f"n={n}")
        assert_same_f32(t.scales, [s])


def test_subnormal_amax_scale_underflows_to_zero() -> None:
    # 63 * 2^-149 / 127 < half the smallest subnormal: the scale is 0.0 and,
    # because the quantizers test the *scale*, every q is 0 (not a division by 0).
    x = np.array([tiny(63), -tiny(63), tiny(5), 0], F32)
    assert x[0] != 0
    t = dq.quantize_int8(x)
    assert t.scales.view(np.uint32).tolist() == [0]
    assert t.data.tolist() == [0, 0, 0, 0]
    assert dq.compute_scale(x, 127.0) == 0.0
    # 64 * 2^-149 / 127 rounds up to 2^-149: q = x / 2^-149 = 64, -64, 5.
    x = np.array([tiny(64), -tiny(64), tiny(5)], F32)
    t = dq.quantize_int8(x)
    assert t.scales.view(np.uint32).tolist() == [1]
    assert t.data.tolist() == [64, -64, 5]
    # int4: 3 * 2^-149 / 7 rounds to 0, 4 * 2^-149 / 7 to 2^-149.
    assert dq.quantize_int4(np.array([tiny(3)], F32)).scales.view(np.uint32).tolist() == [0]
    t = dq.quantize_int4(np.array([tiny(4), -tiny(4)], F32))
    assert (t.scales.view(np.uint32).tolist(), t.data.tolist()) == ([1], [4, -4])
    # Per row: the subnormal row is all zero, the other row is normal.
    t = dq.quantize_int8_per_row(np.array([[tiny(63), tiny(1)], [2.0, -1.0]], F32))
    assert t.scales.view(np.uint32)[0] == 0
    assert t.scales[1] == np.float32(2) / np.float32(127)
    assert t.data.tolist() == [[0, 0], [127, -64]]


def test_huge_magnitudes() -> None:
    x = np.array([1e30, -3e30, 2e29, 3.4028235e38, -1.7e38], F32)
    t = dq.quantize_int8(x)
    q, s = ref.quantize_int8(x)
    assert_same_i8(t.data, q)
    assert_same_f32(t.scales, [s])
    assert t.data.tolist() == [0, 0, 0, 127, -63]
    assert np.isfinite(t.scales).all()


def test_all_zero_rows_per_row() -> None:
    x = np.array([[0, 0, 0], [1, -2, 0.5], [0, -0.0, 0], [254, 127, -0.5]], F32)
    t = dq.quantize_int8_per_row(x)
    assert t.scales.tolist() == [0.0, np.float32(2) / np.float32(127), 0.0, 2.0]
    # 127 / 2 = 63.5 → 64; -0.5 / 2 = -0.25 → 0; 0.5 / (2/127) = 31.75 → 32.
    assert t.data.tolist() == [[0, 0, 0], [64, -127, 32], [0, 0, 0], [127, 64, 0]]


def test_percentile_index_is_float32_at_n_32999() -> None:
    # |x| sorted is 1..32999, so element k is k + 1. In f32 the index is 32965
    # (element 32966); an f64 index would be 32966 (element 32967).
    n = 32999
    x = np.random.default_rng(7).permutation(np.arange(1, n + 1, dtype=F32))
    x[::3] *= -1
    want = np.float32(32966) / np.float32(127)
    assert dq.compute_scale(x, 127.0, dq.Percentile(0.999)) == want
    assert dq.quantize_int8(x, dq.Percentile(0.999)).scales[0] == want
    assert want != np.float32(32967) / np.float32(127)
    t = dq.quantize_int8_per_row(x.reshape(1, n), dq.Percentile(0.999))
    assert t.scales.tolist() == [want]


def test_percentile_n_rounds_to_float32_above_2_pow_24() -> None:
    # n = 2^24 + 1 rounds to 2^24 as f32, so Percentile(1.0) picks index
    # 2^24 - 1, not the maximum at index 2^24: the scale is 1/127, not 5/127.
    n = 2**24 + 1
    x = np.ones(n, F32)
    x[-1] = -5.0
    assert dq.compute_scale(x, 127.0, dq.Percentile(1.0)) == np.float32(1) / np.float32(127)
    assert dq.compute_scale(x, 127.0) == np.float32(5) / np.float32(127)


def test_percentile_python_float_is_rounded_to_float32() -> None:
    # p = 0.6 becomes f32 0.60000002; 0.60000002 * 25 = 15.0000006 rounds to the
    # f32 15.000001 → ceil 16 → index 15 (element 16). In f64, 0.6 * 25 rounds
    # to 15.0 → index 14 (element 15).
    x = np.arange(1, 26, dtype=F32)
    assert dq.compute_scale(x, 1.0, dq.Percentile(0.6)) == 16.0
    assert ref.percentile_index(0.6, 25) == 15
    assert int(np.ceil(0.6 * 25)) - 1 == 14


@pytest.mark.parametrize(
    ("p", "want"), [(1e-6, 1.0), (0.1, 1.0), (0.11, 2.0), (0.5, 5.0), (0.99, 10.0), (1.0, 10.0)]
)
def test_percentile_small_examples(p: float, want: float) -> None:
    x = -np.arange(1, 11, dtype=F32)[::-1]
    assert dq.compute_scale(x, 1.0, dq.Percentile(p)) == want


@pytest.mark.parametrize("n", [200_003, 1_000_001])
def test_large_inputs_take_the_parallel_paths(n: int, rng: np.random.Generator) -> None:
    x = (rng.standard_normal(n) * np.exp(rng.uniform(-5, 5, n))).astype(F32)
    for p in (None, 0.99):
        t = dq.quantize_int8(x, mode_of(p))
        q, s = ref.quantize_int8(x, p)
        assert_same_f32(t.scales, [s])
        assert_same_i8(t.data, q)
    rows = x[: n // 1000 * 1000].reshape(-1, 1000)
    t = dq.quantize_int8_per_row(rows)
    q, s = ref.quantize_int8_per_row(rows)
    assert_same_f32(t.scales, s)
    assert_same_i8(t.data, q)


def test_calls_with_positional_and_default_mode() -> None:
    x = np.array([1.0, -2.0, 4.0], F32)
    assert dq.quantize_int8(x) == dq.quantize_int8(x, dq.MaxAbs())
    assert dq.compute_scale(x, 127.0) == dq.compute_scale(x, 127, dq.MaxAbs())
    assert dq.compute_scale(x, 127.0) == np.float32(4) / np.float32(127)


@pytest.mark.parametrize("clip", [0.0, -127.0])
def test_compute_scale_odd_clips_follow_the_formula(clip: float) -> None:
    # The reference divides whatever clip it gets: 4 / 0 = inf, 4 / -127 < 0.
    x = np.array([1.0, -4.0], F32)
    want: Any = np.float32(4) / np.float32(clip) if clip else np.float32(np.inf)
    assert_same_f32(np.float32(dq.compute_scale(x, clip)), want)


# ─── NaN and infinities ──────────────────────────────────────────────────


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_raises_by_default_with_the_first_index(bad: float) -> None:
    x = np.array([[1.0, 2.0, 3.0], [4.0, bad, 6.0], [bad, 0.0, 1.0]], F32)
    calls = [
        lambda: dq.quantize_int8(x),
        lambda: dq.quantize_int4(x),
        lambda: dq.quantize_int8(x, dq.Percentile(0.5)),
        lambda: dq.quantize_int8_per_row(x),
        lambda: dq.quantize_int8_per_row(x, dq.Percentile(0.9)),
        lambda: dq.compute_scale(x, 127.0),
        lambda: dq.compute_scale(x, 7.0, dq.Percentile(0.99)),
    ]
    for call in calls:
        with pytest.raises(dq.NonFiniteError) as info:
            call()
        assert info.value.index == 4  # flat index of the first bad value
        assert np.isnan(info.value.value) if np.isnan(bad) else info.value.value == bad
        assert "4" in str(info.value)


def test_non_finite_index_in_a_large_per_row_input() -> None:
    # Rows are quantized in parallel: the error must still name the first bad value.
    x = np.ones((3000, 100), F32)
    x[2999, 5] = np.nan
    x[1500, 7] = np.inf
    x[17, 99] = -np.inf
    for call in (lambda: dq.quantize_int8_per_row(x), lambda: dq.quantize_int8(x)):
        with pytest.raises(dq.NonFiniteError) as info:
            call()
        assert info.value.index == 17 * 100 + 99


def test_reference_policy_nan() -> None:
    x = np.array([1.0, np.nan, -2.0, 0.5], F32)
    t = dq.quantize_int8(x, nan_policy="reference")
    assert t.scales[0] == F32(2) / F32(127)  # MaxAbs skips NaN
    assert t.data.tolist() == [64, 0, -127, 32]  # NaN quantizes to 0
    assert dq.compute_scale(x, 127.0, nan_policy="reference") == F32(2) / F32(127)
    t = dq.quantize_int4(np.full(3, np.nan, F32), nan_policy="reference")
    assert (t.data.tolist(), t.scales.tolist()) == ([0, 0, 0], [0.0])  # all NaN: scale 0
    # Percentile with a NaN: the reference's sort panics; dynquant raises.
    with pytest.raises(dq.NonFiniteError) as info:
        dq.quantize_int8(x, dq.Percentile(0.5), nan_policy="reference")
    assert info.value.index == 1
    with pytest.raises(dq.NonFiniteError):
        dq.compute_scale(x, 127.0, dq.Percentile(1.0), nan_policy="reference")
    with pytest.raises(dq.NonFiniteError):
        dq.quantize_int8_per_row(x.reshape(2, 2), dq.Percentile(0.5), nan_policy="reference")


def test_reference_policy_inf() -> None:
    x = np.array([1.0, -np.inf, 3.0], F32)
    for quantize in (dq.quantize_int8, dq.quantize_int4):
        t = quantize(x, nan_policy="reference")
        assert t.scales.tolist() == [np.inf]  # scale inf, every q 0
        assert t.data.tolist() == [0, 0, 0]
    # Percentile without NaN sorts the inf to the top; a finite percentile scale
    # then clamps the inf itself to ±clip.
    t = dq.quantize_int8(np.array([1.0, -np.inf, 2.0, 0.5], F32), dq.Percentile(0.5),
                         nan_policy="reference")  # fmt: skip
    assert t.scales[0] == F32(1) / F32(127)
    assert t.data.tolist() == [127, -127, 127, 64]
    # Per row: only the row with the inf is zeroed.
    t = dq.quantize_int8_per_row(
        np.array([[1.0, np.inf], [2.0, -1.0]], F32), nan_policy="reference"
    )
    assert t.scales.tolist() == [np.inf, F32(2) / F32(127)]
    assert t.data.tolist() == [[0, 0], [127, -64]]


@given(x=vectors, data=st.data(), p=st.one_of(st.none(), st.just(0.5), st.just(1.0)))
def test_reference_policy_matches_the_model(
    x: np.ndarray, data: st.DataObject, p: float | None
) -> None:
    if x.size:
        idx = data.draw(st.lists(st.integers(0, x.size - 1), max_size=4))
        vals = data.draw(
            st.lists(
                st.sampled_from([np.nan, np.inf, -np.inf]), min_size=len(idx), max_size=len(idx)
            )
        )
        x = x.copy()
        x[idx] = np.array(vals, F32)
    try:
        q, s = ref.quantize_int8(x, p)
    except ref.ReferencePanic:
        with pytest.raises(dq.NonFiniteError):
            dq.quantize_int8(x, mode_of(p), nan_policy="reference")
        return
    t = dq.quantize_int8(x, mode_of(p), nan_policy="reference")
    assert_same_i8(t.data, q)
    assert_same_f32(t.scales, [s])
    t4 = dq.quantize_int4(x, mode_of(p), nan_policy="reference")
    q4, s4 = ref.quantize_int4(x, p)
    assert_same_i8(t4.data, q4)
    assert_same_f32(t4.scales, [s4])


@pytest.mark.parametrize("policy", ["Raise", "", "ignore", None, 0])
def test_bad_nan_policy(policy: object) -> None:
    with pytest.raises(dq.InvalidArgumentError):
        dq.quantize_int8([1.0], nan_policy=policy)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", [dq.Percentile, "maxabs", 0.5, None])
def test_bad_mode_is_an_argument_type_error(mode: object) -> None:
    for call in (dq.quantize_int8, dq.quantize_int4, dq.quantize_int8_per_row):
        with pytest.raises(dq.ArgumentTypeError):
            call(np.ones((2, 2), F32), mode)  # type: ignore[operator]
    with pytest.raises(dq.ArgumentTypeError):
        dq.compute_scale([1.0], 127.0, mode)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(3,), (2, 2, 2), ()])
def test_per_row_needs_2d(shape: tuple[int, ...]) -> None:
    with pytest.raises(dq.ShapeMismatchError) as info:
        dq.quantize_int8_per_row(np.ones(shape, F32))
    assert info.value.expected == "2-D"


@pytest.mark.parametrize(
    "kind", ["equal", "half-zero", "subnormal-mix", "one-bucket", "signed-zeros"]
)
@pytest.mark.parametrize("p", [1e-6, 0.25, 0.5, 0.99, 0.999, 1.0])
def test_percentile_selection_on_large_inputs(kind: str, p: float) -> None:
    # Above a few thousand values dynquant selects instead of sorting; the
    # element must be the one a sort puts at the f32 index.
    rng = np.random.default_rng([len(kind), int(p * 1e6)])  # deterministic
    n = 50_001
    if kind == "equal":
        x = np.full(n, -3.25, F32)
    elif kind == "half-zero":
        x = np.where(rng.random(n) < 0.5, F32(0), rng.standard_normal(n).astype(F32))
    elif kind == "subnormal-mix":
        sub = rng.integers(1, 2**23, n).astype(np.uint32).view(F32)
        x = np.where(rng.random(n) < 0.7, sub, rng.standard_normal(n).astype(F32) * F32(1e30))
    elif kind == "one-bucket":  # all values share their top bits
        x = (F32(1) + rng.random(n).astype(F32) * F32(1e-4)) * rng.choice([F32(-1), F32(1)], n)
    else:
        x = np.where(rng.random(n) < 0.5, F32(-0.0), F32(0.0)).astype(F32)
        x[rng.integers(0, n, 10)] = F32(2.0)
    x = x.astype(F32)
    want = ref.compute_scale(x, 127.0, p)
    assert_same_f32(np.float32(dq.compute_scale(x, 127.0, dq.Percentile(p))), want)
    assert_same_f32(dq.quantize_int4(x, dq.Percentile(p)).scales, [ref.compute_scale(x, 7.0, p)])
