"""DynQuantTensor (dequantize, memory_bytes, compression_ratio,
element_count, construction checks, equality, pickling) and quantization_mae."""

from __future__ import annotations

import copy
import pickle

import dynquant as dq
import numpy as np
import pytest
import reference_np as ref
from hypothesis import given
from strategies import any_shape_arrays, assert_same_f32, matrices, mode_of, percentiles

F32 = np.float32
FMT = dq.DynQuantFormat


# ─── dequantize ─────────────────────────────────────────────────────────────


@given(x=any_shape_arrays, p=percentiles)
def test_dequantize_per_tensor(x: np.ndarray, p: float | None) -> None:
    for quantize, clip in ((dq.quantize_int8, 127.0), (dq.quantize_int4, 7.0)):
        t = quantize(x, mode_of(p))
        q, s = ref.quantize_per_tensor(x, clip, p)
        d = t.dequantize()
        assert d.shape == x.shape  # dynquant keeps the caller's shape
        assert_same_f32(d, ref.dequantize_per_tensor(q, s))


@given(x=matrices, p=percentiles)
def test_dequantize_per_row(x: np.ndarray, p: float | None) -> None:
    t = dq.quantize_int8_per_row(x, mode_of(p))
    q, s = ref.quantize_int8_per_row(x, p)
    d = t.dequantize()
    assert d.shape == x.shape
    assert_same_f32(d, ref.dequantize_per_row(q, s))


def test_dequantize_hand_values() -> None:
    t = dq.DynQuantTensor(
        np.array([[1, -2], [127, 0]], np.int8), np.array([0.5, 2.0], F32), (2, 2), FMT.Int8PerRow
    )
    assert t.dequantize().tolist() == [[0.5, -1.0], [254.0, 0.0]]
    q4 = np.array([3, -7], np.int8)
    t = dq.DynQuantTensor(q4, np.array([0.25], F32), (2,), FMT.Int4PerTensor)
    assert t.dequantize().tolist() == [0.75, -1.75]
    assert t.dequantize().dtype == np.float32


def test_dequantize_empty() -> None:
    assert dq.quantize_int8(np.zeros(0, F32)).dequantize().shape == (0,)
    assert dq.quantize_int8_per_row(np.zeros((4, 0), F32)).dequantize().shape == (4, 0)
    assert dq.quantize_int8_per_row(np.zeros((0, 4), F32)).dequantize().shape == (0, 4)


# ─── memory, compression, count ───────────────────────────────────────────


@pytest.mark.parametrize(
    ("shape", "per_row", "memory", "ratio"),
    [
        ((12,), False, 12 + 4, 48 / 16),
        ((3, 4), False, 12 + 4, 3.0),
        ((3, 4), True, 12 + 12, 2.0),
        ((0,), False, 4, 0.0),  # one scale, no data: ratio 0, not 1
        ((3, 0), True, 0, 1.0),  # no bytes at all: 1.0
        ((1, 1), True, 5, 0.8),
        ((7,), False, 11, 28 / 11),
    ],
)
def test_memory_and_compression(
    shape: tuple[int, ...], per_row: bool, memory: int, ratio: float
) -> None:
    x = np.ones(shape, F32)
    t = dq.quantize_int8_per_row(x) if per_row else dq.quantize_int8(x)
    assert t.memory_bytes() == memory
    assert t.compression_ratio() == float(np.float32(ratio))
    assert t.compression_ratio() == ref.compression_ratio(t.data.size, t.scales.size)
    assert t.element_count() == int(np.prod(shape))
    assert isinstance(t.memory_bytes(), int) and isinstance(t.element_count(), int)
    assert isinstance(t.compression_ratio(), float)


def test_compression_ratio_is_float32_division() -> None:
    # 4 * 1000 / 1004 in f32 = 3.984064 (f32), which differs from the f64 quotient.
    t = dq.quantize_int4(np.ones(1000, F32))
    want = np.float32(4000) / np.float32(1004)
    assert t.compression_ratio() == float(want)
    assert float(want) != 4000 / 1004


# ─── quantization_mae ─────────────────────────────────────────────────────


@given(x=any_shape_arrays, p=percentiles)
def test_mae_matches_reference(x: np.ndarray, p: float | None) -> None:
    with np.errstate(over="ignore"):
        if not np.isfinite(np.abs(x).astype(np.float64).sum()):
            return
    for t in (dq.quantize_int8(x, mode_of(p)), dq.quantize_int4(x, mode_of(p))):
        got = dq.quantization_mae(x, t)
        want = ref.mae(x, t.dequantize())
        assert isinstance(got, float)
        # f32 result of an f64 mean (dynquant) vs the model's f64 mean.
        assert got == pytest.approx(want, rel=1e-6, abs=1e-45)


@given(x=matrices)
def test_mae_per_row_matches_reference(x: np.ndarray) -> None:
    with np.errstate(over="ignore"):
        if not np.isfinite(np.abs(x).astype(np.float64).sum()):
            return
    t = dq.quantize_int8_per_row(x)
    q, s = ref.quantize_int8_per_row(x)
    assert dq.quantization_mae(x, t) == pytest.approx(
        ref.mae(x, ref.dequantize_per_row(q, s)), rel=1e-6, abs=1e-45
    )


def test_mae_hand_values() -> None:
    t = dq.DynQuantTensor(np.array([1, 2], np.int8), np.array([1.0], F32), (2,), FMT.Int8PerTensor)
    assert dq.quantization_mae([1.5, 2.0], t) == 0.25
    # Common length: the extra original value (100) does not count, and a
    # shorter original uses only its own length.
    assert dq.quantization_mae([1.5, 2.0, 100.0], t) == 0.25
    assert dq.quantization_mae([4.0], t) == 3.0
    assert dq.quantization_mae([], t) == 0.0
    assert dq.quantization_mae(np.zeros(0, F32), dq.quantize_int8(np.zeros(0, F32))) == 0.0


def test_mae_refuses_a_transposed_original() -> None:
    """Two arrays of 2-D or more with different shapes are a mistake (a
    transposed or reshaped original), not a common length; flat originals
    keep the reference's common-length rule."""
    x = np.arange(12, dtype=F32).reshape(3, 4)
    t = dq.quantize_int8_per_row(x)
    with pytest.raises(dq.ShapeMismatchError) as info:
        dq.quantization_mae(x.T, t)
    assert info.value.expected == (3, 4) and info.value.actual == (4, 3)
    assert "(4, 3)" in str(info.value) and "(3, 4)" in str(info.value)
    with pytest.raises(dq.ShapeMismatchError):
        dq.quantization_mae(x.reshape(2, 6), dq.quantize_int8(x))
    assert dq.quantization_mae(x.reshape(-1), t) == dq.quantization_mae(x, t)
    assert dq.quantization_mae(x, dq.quantize_int8(x.reshape(-1))) == dq.quantization_mae(
        x.reshape(-1), dq.quantize_int8(x.reshape(-1))
    )


def test_mae_of_ties_is_exact_and_positive() -> None:
    x = np.array([127, 0.5, -0.5, 2.5], F32)  # scale 1: errors 0, .5, .5, .5
    assert dq.quantization_mae(x, dq.quantize_int8(x)) == pytest.approx(1.5 / 4)


def test_mae_is_more_accurate_than_a_float32_sum() -> None:
    # 1.5M errors of f32(0.3) (0.3 quantizes to 0 under scale 1): a sequential
    # float32 sum stalls on multiples of 1/32 near 450000 and is ~4% off; the
    # SPEC allows (and dynquant does) a float64 sum.
    n = 3_000_000
    x = np.tile(np.array([127.0, 0.3], F32), n // 2)
    t = dq.quantize_int8(x)
    assert t.data[1] == 0
    want = float(np.float32(0.3)) / 2
    naive = float(np.cumsum(np.abs(x - t.dequantize()), dtype=F32)[-1]) / n
    assert abs(naive - want) > 1e-3 * want  # the check below can tell them apart
    assert dq.quantization_mae(x, t) == pytest.approx(want, rel=1e-6)


# ─── hand-built tensors: checks, equality, pickling ──────────────────────


def test_hand_built_tensor_equals_quantizer_output() -> None:
    x = np.array([[1.0, -2.0], [4.0, 0.5]], F32)
    t = dq.quantize_int8_per_row(x)
    u = dq.DynQuantTensor(t.data.copy(), t.scales.copy(), (2, 2), FMT.Int8PerRow)
    assert u == t
    assert not (u != t)
    u2 = dq.DynQuantTensor(t.data.copy(), t.scales * 2, (2, 2), FMT.Int8PerRow)
    assert u2 != t
    assert dq.quantize_int8(x) != dq.quantize_int4(x)
    assert dq.quantize_int8(x) != dq.quantize_int8(x.reshape(4))  # shapes differ
    assert t != "not a tensor"


def test_tensor_shape_accepts_a_list() -> None:
    t = dq.DynQuantTensor(np.zeros((2, 3), np.int8), np.zeros(1, F32), [2, 3], FMT.Int8PerTensor)
    assert t.shape == (2, 3)


@pytest.mark.parametrize(
    ("data", "scales", "shape", "fmt", "error"),
    [
        (np.zeros(3, np.int16), np.ones(1, F32), (3,), FMT.Int8PerTensor, dq.DTypeError),
        (np.zeros(3, np.float32), np.ones(1, F32), (3,), FMT.Int8PerTensor, dq.DTypeError),
        (np.zeros(3, np.int8), np.ones(1, np.float64), (3,), FMT.Int8PerTensor, dq.DTypeError),
        (np.zeros(3, np.int8), np.ones((1, 1), F32), (3,), FMT.Int8PerTensor, dq.DTypeError),
        (np.zeros(3, np.int8), np.ones(1, F32), (4,), FMT.Int8PerTensor, dq.ShapeMismatchError),
        (np.zeros(3, np.int8), np.ones(2, F32), (3,), FMT.Int8PerTensor, dq.ShapeMismatchError),
        (np.zeros(3, np.int8), np.ones(0, F32), (3,), FMT.Int4PerTensor, dq.ShapeMismatchError),
        (np.zeros((2, 3), np.int8), np.ones(3, F32), (2, 3), FMT.Int8PerRow, dq.ShapeMismatchError),
        (np.zeros(6, np.int8), np.ones(2, F32), (6,), FMT.Int8PerRow, dq.ShapeMismatchError),
        (np.zeros((2, 0), np.int8), np.ones(2, F32), (2, 0), FMT.Int8PerRow, dq.ShapeMismatchError),
        (np.full(3, 8, np.int8), np.ones(1, F32), (3,), FMT.Int4PerTensor, dq.InvalidArgumentError),
        (np.full(3, -128, np.int8), np.ones(1, F32), (3,), FMT.Int8PerTensor,
         dq.InvalidArgumentError),
        (np.zeros(3, np.int8), np.ones(1, F32), (3,), "Int8PerTensor", dq.ArgumentTypeError),
        (np.zeros(3, np.int8), np.ones(1, F32), (3,), 0, dq.ArgumentTypeError),
    ],
)  # fmt: skip
def test_inconsistent_hand_built_tensor_raises(
    data: np.ndarray, scales: np.ndarray, shape: tuple[int, ...], fmt: object, error: type
) -> None:
    with pytest.raises(error) as info:
        dq.DynQuantTensor(data, scales, shape, fmt)  # type: ignore[arg-type]
    assert isinstance(info.value, dq.DynQuantError)


def test_valid_edge_tensors_construct() -> None:
    """The extremes of each format are valid, and keep their values."""
    half = np.float32(0.5)
    t = dq.DynQuantTensor(np.full(3, -127, np.int8), np.full(1, half), (3,), FMT.Int8PerTensor)
    assert t.dequantize().tolist() == [-63.5] * 3 and t.element_count() == 3
    t = dq.DynQuantTensor(np.full(3, -7, np.int8), np.full(1, half), (3,), FMT.Int4PerTensor)
    assert t.dequantize().tolist() == [-3.5] * 3
    t = dq.DynQuantTensor(np.zeros((2, 0), np.int8), np.ones(0, F32), (2, 0), FMT.Int8PerRow)
    assert t.dequantize().shape == (2, 0) and t.element_count() == 0
    t = dq.DynQuantTensor(np.zeros(0, np.int8), np.zeros(1, F32), (0,), FMT.Int8PerTensor)
    assert t.dequantize().shape == (0,) and t.memory_bytes() == 4  # the scale alone


@pytest.mark.parametrize(
    "make",
    [
        lambda: dq.quantize_int8(np.linspace(-3, 5, 24, dtype=F32).reshape(2, 3, 4)),
        lambda: dq.quantize_int4(np.array([0.1, -0.7, 3.0], F32), dq.Percentile(0.5)),
        lambda: dq.quantize_int8_per_row(np.arange(12, dtype=F32).reshape(3, 4) - 5),
        lambda: dq.quantize_int8_per_row(np.zeros((3, 0), F32)),
        lambda: dq.quantize_int8(np.zeros(0, F32)),
    ],
)
def test_tensor_pickle_and_copy_round_trip(make: object) -> None:
    t = make()  # type: ignore[operator]
    for u in (pickle.loads(pickle.dumps(t)), copy.deepcopy(t), copy.copy(t)):
        assert isinstance(u, dq.DynQuantTensor)
        assert u == t
        assert u.format is t.format and u.shape == t.shape
        assert u.data.dtype == np.int8 and u.scales.dtype == np.float32
        assert_same_f32(u.dequantize(), t.dequantize())


def test_tensor_is_unhashable_and_repr_is_readable() -> None:
    t = dq.quantize_int8(np.arange(100, dtype=F32).reshape(10, 10))
    with pytest.raises(TypeError):
        hash(t)
    r = repr(t)
    assert "DynQuantTensor" in r and "Int8PerTensor" in r and "(10, 10)" in r
    assert len(r) < 300  # summarised, not 100 values
    assert "Int8PerRow" in repr(dq.quantize_int8_per_row(np.ones((2, 2), F32)))
    assert repr(FMT.Int4PerTensor) == "DynQuantFormat.Int4PerTensor"


@pytest.mark.parametrize("qt", ["not a tensor", None, np.zeros(3, np.int8)])
def test_mae_rejects_a_non_tensor(qt: object) -> None:
    with pytest.raises(dq.ArgumentTypeError):
        dq.quantization_mae([1.0, 2.0, 3.0], qt)  # type: ignore[arg-type]
