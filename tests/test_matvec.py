"""w8a8_matvec against the NumPy model (exact int64 sums, then
``(acc as f32 * ws) * act_scale``), crafted sizes and the error order."""

from __future__ import annotations

import dynquant as dq
import numpy as np
import pytest
import reference_np as ref
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from strategies import assert_same_f32, scaled_f32

F32 = np.float32

int8_any = st.integers(-128, 127)


@st.composite
def matvec_cases(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    out = draw(st.integers(0, 9))
    n_in = draw(st.integers(1, 300))
    kind = draw(st.sampled_from(["any", "extremes"]))
    if kind == "any":
        w = draw(hnp.arrays(np.int8, (out, n_in), elements=int8_any))
    else:
        w = draw(hnp.arrays(np.int8, (out, n_in), elements=st.sampled_from([-128, 127, -127, 0])))
    ws = draw(scaled_f32((out,)))
    x = draw(scaled_f32((n_in,)))
    return w, ws, x


@given(case=matvec_cases())
def test_matvec_matches_reference(case: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    w, ws, x = case
    y = dq.w8a8_matvec(w, ws, x)
    assert y.shape == (w.shape[0],)
    assert_same_f32(y, ref.w8a8_matvec(w, ws, x))


def test_matvec_hand_values() -> None:
    # amax 127 → act scale 1.0 and q == x.
    x = np.array([127.0, -127.0, 1.0], F32)
    w = np.array([[-128, -128, -128], [127, -128, 0], [1, 2, 3]], np.int8)
    ws = np.array([1.0, 0.5, 2.0], F32)
    y = dq.w8a8_matvec(w, ws, x)
    assert y.tolist() == [-128.0, (127 * 127 + 128 * 127) * 0.5, (127 - 254 + 3) * 2.0]


def test_matvec_quantizes_the_activation_per_tensor() -> None:
    x = np.array([2.0, 1.0, -0.5], F32)  # scale 2/127: q = 127, 63.5 → 64, -31.75 → -32
    w = np.eye(3, dtype=np.int8)
    y = dq.w8a8_matvec(w, np.ones(3, F32), x)
    s = F32(2) / F32(127)
    assert y.tolist() == [F32(127) * s, F32(64) * s, F32(-32) * s]


def test_acc_rounds_to_float32_above_2_pow_24() -> None:
    # acc = 127 * 127 * 1041 = 16790289, odd and above 2^24: `acc as f32` is
    # 16790288 (a tie, to even), and (16790288 * 1) * f32(1/127) = 132206.98,
    # whereas the exact product would be 132207.0.
    n = 1041
    w = np.full((1, n), 127, np.int8)
    x = np.ones(n, F32)
    y = dq.w8a8_matvec(w, np.ones(1, F32), x)
    act_scale = F32(1) / F32(127)
    assert F32(16790289) == F32(16790288)
    assert y[0] == (F32(16790288) * F32(1)) * act_scale
    assert y[0] != F32(132207.0)  # what an exact (f64) accumulation would give
    assert_same_f32(y, ref.w8a8_matvec(w, np.ones(1, F32), x))


def test_scale_multiplication_order(rng: np.random.Generator) -> None:
    # (acc * ws) * act_scale and acc * (ws * act_scale) differ in the last bit
    # for some inputs; the SPEC fixes the first order.
    w = rng.integers(-128, 128, (2000, 64)).astype(np.int8)
    ws = rng.uniform(1e-3, 1, 2000).astype(F32)
    x = (rng.standard_normal(64) * 3).astype(F32)
    q, s = ref.quantize_int8(x)
    acc = ref.acc_to_f32(w.astype(np.int64) @ q.astype(np.int64))
    other_order = (acc * (ws * s).astype(F32)).astype(F32)
    want = ref.w8a8_matvec(w, ws, x)
    assert (other_order != want).any()  # the inputs discriminate
    assert_same_f32(dq.w8a8_matvec(w, ws, x), want)


def test_minus_128_weights_are_exact() -> None:
    n = 1000
    w = np.full((2, n), -128, np.int8)
    w[1, ::2] = 127
    x = np.full(n, -3.0, F32)  # q = -127 everywhere
    y = dq.w8a8_matvec(w, np.ones(2, F32), x)
    s = F32(3) / F32(127)
    assert y[0] == F32(128 * 127 * n) * s
    assert y[1] == F32(128 * 127 * (n // 2) - 127 * 127 * (n // 2)) * s


@pytest.mark.parametrize("n", [140_001, 300_007])
def test_no_i32_overflow_past_140k_columns(n: int, rng: np.random.Generator) -> None:
    w = np.full((3, n), -128, np.int8)
    w[1] = rng.integers(-128, 128, n, dtype=np.int8)
    w[2] = 127
    x = np.full(n, -1.0, F32)
    x[::7] = rng.uniform(-1, -0.9, x[::7].size).astype(F32)
    x[0] = -1.0
    ws = np.array([1.0, 0.01, 0.5], F32)
    y = dq.w8a8_matvec(w, ws, x)
    assert_same_f32(y, ref.w8a8_matvec(w, ws, x))
    # The exact sum of row 0 is beyond i32; the reference's i32 sum would wrap.
    q, s = ref.quantize_int8(x)
    acc0 = int(w[0].astype(np.int64) @ q.astype(np.int64))
    assert acc0 > 2**31
    wrapped = (acc0 + 2**31) % 2**32 - 2**31
    assert y[0] == (F32(acc0) * ws[0]) * s != (F32(wrapped) * ws[0]) * s


def test_zero_outputs_and_zero_activation() -> None:
    y = dq.w8a8_matvec(np.zeros((0, 5), np.int8), np.zeros(0, F32), np.ones(5, F32))
    assert y.shape == (0,) and y.dtype == np.float32
    y = dq.w8a8_matvec(np.ones((2, 3), np.int8), np.ones(2, F32), np.zeros(3, F32))
    assert y.tolist() == [0.0, 0.0]


def test_large_matvec_parallel_path(rng: np.random.Generator) -> None:
    w = rng.integers(-128, 128, (3001, 517), dtype=np.int8)
    ws = rng.uniform(1e-4, 1e-2, 3001).astype(F32)
    x = (rng.standard_normal(517) * 10).astype(F32)
    assert_same_f32(dq.w8a8_matvec(w, ws, x), ref.w8a8_matvec(w, ws, x))


# ─── errors, in the reference's order ─────────────────────────────────────


def test_empty_activation_is_checked_first() -> None:
    with pytest.raises(dq.EmptyInputError) as info:
        dq.w8a8_matvec(np.ones((2, 3), np.int8), np.ones(5, F32), np.zeros(0, F32))
    assert isinstance(info.value, ValueError)


def test_activation_length_is_checked_before_scales() -> None:
    with pytest.raises(dq.ShapeMismatchError) as info:
        dq.w8a8_matvec(np.ones((2, 3), np.int8), np.ones(5, F32), np.ones(4, F32))
    assert (info.value.expected, info.value.actual) == (3, 4)
    assert "3" in str(info.value) and "4" in str(info.value)


def test_scale_length_is_checked() -> None:
    with pytest.raises(dq.ShapeMismatchError) as info:
        dq.w8a8_matvec(np.ones((2, 3), np.int8), np.ones(5, F32), np.ones(3, F32))
    assert (info.value.expected, info.value.actual) == (2, 5)
    assert "2" in str(info.value) and "5" in str(info.value)


@pytest.mark.parametrize(
    ("w", "ws", "x"),
    [
        (np.ones(6, np.int8), np.ones(2, F32), np.ones(3, F32)),  # 1-D weights
        (np.ones((1, 2, 3), np.int8), np.ones(2, F32), np.ones(3, F32)),
        (np.ones((2, 3), np.int8), np.ones((2, 1), F32), np.ones(3, F32)),
        (np.ones((2, 3), np.int8), np.ones(2, F32), np.ones((1, 3), F32)),
    ],
)
def test_wrong_ndim_is_a_shape_error(w: np.ndarray, ws: np.ndarray, x: np.ndarray) -> None:
    with pytest.raises(dq.ShapeMismatchError):
        dq.w8a8_matvec(w, ws, x)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, np.int64, bool])
def test_weights_must_be_int8(dtype: type) -> None:
    with pytest.raises(dq.DTypeError) as info:
        dq.w8a8_matvec(np.ones((2, 3), dtype), np.ones(2, F32), np.ones(3, F32))
    assert isinstance(info.value, TypeError)
    assert "int8" in str(info.value)
    assert info.value.expected == "int8"
    with pytest.raises(dq.DTypeError):
        dq.w8a8_matvec([[1, 2, 3]], [1.0], [1.0, 2.0, 3.0])  # a list of ints is int64


def test_non_finite_activation() -> None:
    w = np.array([[1, 2, 3], [-128, 0, 127]], np.int8)
    ws = np.array([0.5, 0.25], F32)
    with pytest.raises(dq.NonFiniteError) as info:
        dq.w8a8_matvec(w, ws, np.array([1.0, 2.0, np.nan], F32))
    assert info.value.index == 2
    with pytest.raises(dq.NonFiniteError) as info:
        dq.w8a8_matvec(w, ws, np.array([-np.inf, 2.0, np.nan], F32))
    assert info.value.index == 0
    # reference: NaN quantizes to 0 and MaxAbs skips it
    got = dq.w8a8_matvec(w, ws, np.array([1.0, np.nan, -2.0], F32), nan_policy="reference")
    assert_same_f32(got, dq.w8a8_matvec(w, ws, np.array([1.0, 0.0, -2.0], F32)))
    assert_same_f32(got, ref.w8a8_matvec(w, ws, np.array([1.0, np.nan, -2.0], F32)))
    # reference: an infinity makes the scale inf and every q 0 → 0 * inf = NaN
    got = dq.w8a8_matvec(w, ws, np.array([1.0, np.inf, -2.0], F32), nan_policy="reference")
    assert np.isnan(got).all()
    assert_same_f32(got, ref.w8a8_matvec(w, ws, np.array([1.0, np.inf, -2.0], F32)))
