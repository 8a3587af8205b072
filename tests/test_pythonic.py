"""Python-side behaviour: array-likes, dtype conversion, strides, byte order,
shapes, inputs left untouched, reprs, values, bad dtypes."""

from __future__ import annotations

import array
import dataclasses
import pickle
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dynquant as dq
import numpy as np
import pytest
import reference_np as ref
from strategies import assert_same_f32, assert_same_i8

F32 = np.float32
HERE = Path(__file__).resolve().parent


def _base(rng: np.random.Generator, shape: tuple[int, ...] = (6, 10)) -> np.ndarray:
    return (rng.standard_normal(shape) * 4).astype(F32)


def variants(x: np.ndarray) -> dict[str, Any]:
    """The same float32 values in other layouts and containers."""
    big = np.zeros((x.shape[0], 2 * x.shape[1]), F32)
    big[:, ::2] = x
    rev = np.ascontiguousarray(x[::-1, ::-1])
    return {
        "list": x.tolist(),
        "tuple": tuple(map(tuple, x.tolist())),
        "fortran": np.asfortranarray(x),
        "strided": big[:, ::2],
        "negative-strides": rev[::-1, ::-1],
        "big-endian-f4": x.astype(">f4"),
        "big-endian-f8": x.astype(">f8"),
        "float64": x.astype(np.float64),
        "readonly": _readonly(x),
        "offset-view": np.concatenate([np.zeros(1, F32), x.reshape(-1)])[1:].reshape(x.shape),
    }


def _readonly(x: np.ndarray) -> np.ndarray:
    y = x.copy()
    y.flags.writeable = False
    return y


FUNCS_2D: dict[str, Callable[[Any], Any]] = {
    "quantize_int8": lambda a: dq.quantize_int8(a),
    "quantize_int4": lambda a: dq.quantize_int4(a, dq.Percentile(0.9)),
    "quantize_int8_per_row": lambda a: dq.quantize_int8_per_row(a),
    "compute_scale": lambda a: dq.compute_scale(a, 127.0, dq.Percentile(0.5)),
    "compute_smooth_factors": lambda a: dq.compute_smooth_factors(a, a[:3] if len(a) > 3 else a),
    "smooth_activations": lambda a: dq.smooth_activations(a, np.arange(1, 11, dtype=F32)),
    "smooth_weights": lambda a: dq.smooth_weights(a, np.arange(1, 11, dtype=F32)),
    "calib": lambda a: dq.CalibStats.collect([a, a]),
    "mae": lambda a: dq.quantization_mae(a, dq.quantize_int8(np.ones((6, 10), F32))),
}


def _same(a: Any, b: Any) -> None:
    if isinstance(a, dq.DynQuantTensor):
        assert a == b, (a, b)
    elif isinstance(a, np.ndarray):
        assert_same_f32(a, b)
    else:
        assert a == b


@pytest.mark.parametrize("fn", list(FUNCS_2D), ids=list(FUNCS_2D))
def test_every_input_form_gives_the_same_result(fn: str, rng: np.random.Generator) -> None:
    x = _base(rng)
    want = FUNCS_2D[fn](x)
    for name, v in variants(x).items():
        got = FUNCS_2D[fn](v)
        try:
            _same(got, want)
        except AssertionError as e:
            raise AssertionError(f"{fn} on {name}: {e}") from None


def test_matvec_input_forms(rng: np.random.Generator) -> None:
    w = rng.integers(-128, 128, (7, 12), dtype=np.int8)
    ws = rng.uniform(0.01, 1, 7).astype(F32)
    x = _base(rng, (1, 12))[0]
    want = dq.w8a8_matvec(w, ws, x)
    assert_same_f32(want, ref.w8a8_matvec(w, ws, x))
    wide = np.zeros((7, 24), np.int8)
    wide[:, 1::2] = w
    forms = [
        (np.asfortranarray(w), ws.tolist(), x.tolist()),
        (wide[:, 1::2], ws[::-1][::-1], x.astype(">f4")),
        (np.ascontiguousarray(w[::-1])[::-1], ws.astype(np.float64), x.astype(np.float16)),
        (_readonly_i8(w), _readonly(ws), _readonly(x)),
    ]
    for i, (a, b, c) in enumerate(forms):
        got = dq.w8a8_matvec(a, b, c)
        if i == 2:  # float16 activation: the values changed, compare with the model
            assert_same_f32(got, ref.w8a8_matvec(w, ws, x.astype(np.float16).astype(F32)))
        else:
            assert_same_f32(got, want)


def _readonly_i8(w: np.ndarray) -> np.ndarray:
    y = w.copy()
    y.flags.writeable = False
    return y


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.int32, np.int8, np.uint16])
def test_other_numeric_dtypes_are_converted_to_float32(dtype: type) -> None:
    x = np.array([[1, -2, 3], [100, 0, -7]]).astype(dtype)
    x32 = x.astype(F32)
    assert dq.quantize_int8(x) == dq.quantize_int8(x32)
    assert dq.quantize_int8_per_row(x) == dq.quantize_int8_per_row(x32)
    assert dq.CalibStats.collect([x]) == dq.CalibStats.collect([x32])
    assert_same_f32(dq.smooth_weights(x, [1, 2, 3]), dq.smooth_weights(x32, [1, 2, 3]))


def test_float64_is_rounded_to_float32_first() -> None:
    # 0.1 + tiny in float64 rounds to f32(0.1): the result is that of the f32 value.
    x = np.array([127.0, 2.5 + 1e-12, -2.5 - 1e-12])
    t = dq.quantize_int8(x)
    assert t.data.tolist() == [127, 3, -3]  # 2.5 as f32 is a tie → away from zero


@pytest.mark.parametrize(
    "bad",
    [
        np.array([True, False]),
        np.array([1 + 2j]),
        np.array([1.0, None], dtype=object),
        np.array(["1.0"]),
        np.array([b"1"]),
        np.array(["2024-01-01"], dtype="datetime64[D]"),
        ["a", "b"],
        [True, False],
    ],
    ids=["bool", "complex", "object", "str", "bytes", "datetime", "list-str", "list-bool"],
)
def test_bad_dtypes_raise_dtype_error(bad: Any) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: dq.quantize_int8(bad),
        lambda: dq.quantize_int4(bad),
        lambda: dq.compute_scale(bad, 127.0),
        lambda: dq.CalibStats.collect([bad]),
        lambda: dq.smooth_weights(bad, np.ones(np.size(bad), F32)),
        lambda: dq.smooth_activations(bad, np.ones(np.size(bad), F32)),
        lambda: dq.quantization_mae(bad, dq.quantize_int8([1.0])),
        lambda: dq.w8a8_matvec(np.ones((1, np.size(bad)), np.int8), [1.0], bad),
        lambda: dq.quantize_int8_per_row(np.reshape(bad, (1, -1))),
        lambda: dq.compute_smooth_factors(np.reshape(bad, (1, -1)), np.ones((1, np.size(bad)))),
    ]
    for i, call in enumerate(calls):
        with pytest.raises(dq.DTypeError) as info:
            call()
        assert isinstance(info.value, TypeError), i


def test_ragged_input_is_a_shape_error() -> None:
    with pytest.raises(dq.ShapeMismatchError):
        dq.quantize_int8([[1.0, 2.0], [3.0]])


def test_array_module_and_memoryview_inputs() -> None:
    a = array.array("f", [1.0, -2.0, 4.0])
    want = dq.quantize_int8(np.array([1.0, -2.0, 4.0], F32))
    assert dq.quantize_int8(a) == want
    assert dq.quantize_int8(memoryview(a)) == want


def test_output_keeps_input_shape(rng: np.random.Generator) -> None:
    x = _base(rng, (2, 3, 4))
    for t in (dq.quantize_int8(x), dq.quantize_int4(x)):
        assert t.shape == (2, 3, 4) and t.data.shape == (2, 3, 4)
        assert t.dequantize().shape == (2, 3, 4)
        q, s = ref.quantize_per_tensor(x, 127.0 if t.format.name.startswith("Int8") else 7.0)
        assert_same_i8(t.data, q)
        assert_same_f32(t.scales, [s])
    t = dq.quantize_int8(x.T)
    assert t.shape == (4, 3, 2)
    assert_same_i8(t.data, ref.quantize_int8(np.ascontiguousarray(x.T))[0])


@pytest.mark.parametrize("x", [3.0, np.float32(3.0), np.array(3.0), np.array(3, np.int32)])
def test_zero_d_input_keeps_its_shape(x: Any) -> None:
    assert np.array(3.0, F32).shape == ()
    assert dq.quantize_int8(np.array(3.0, F32)).shape == ()  # this form works
    t = dq.quantize_int8(x)
    assert t.shape == () and t.data.shape == () and t.dequantize().shape == ()


def test_inputs_are_never_modified(rng: np.random.Generator) -> None:
    x = _base(rng)
    x[0, 0] = 0.5 + 127  # something a careless in-place rounding would change
    w8 = rng.integers(-128, 128, (5, 10), dtype=np.int8)
    ws = rng.uniform(0.1, 1, 5).astype(F32)
    f = rng.uniform(0.5, 2, 10).astype(F32)
    keep = {k: v.copy() for k, v in dict(x=x, w8=w8, ws=ws, f=f).items()}
    dq.quantize_int8(x)
    dq.quantize_int4(x)
    dq.quantize_int8_per_row(x)
    dq.compute_scale(x, 127.0, dq.Percentile(0.5))  # a selection must not reorder x
    dq.compute_smooth_factors(x, x)
    dq.smooth_activations(x, f)
    dq.smooth_weights(x, f)
    dq.smooth_weights(x, f, out=np.empty_like(x))
    dq.w8a8_matvec(w8, ws, x[0])
    dq.CalibStats.collect([x, x[1]])
    t = dq.quantize_int8(x)
    data0 = t.data.copy()
    dq.quantization_mae(x, t)
    t.dequantize()
    assert np.array_equal(t.data, data0)
    for k, v in dict(x=x, w8=w8, ws=ws, f=f).items():
        assert np.array_equal(v.view(np.uint8), keep[k].view(np.uint8)), k


def test_outputs_do_not_alias_inputs() -> None:
    x = np.array([[1.0, 2.0]], F32)
    y = dq.smooth_activations(x, [1.0, 1.0])
    y[0, 0] = 99
    assert x[0, 0] == 1.0
    t = dq.quantize_int8(np.array([127.0, 3.0], F32))
    assert not np.shares_memory(t.dequantize(), t.scales)


def test_reprs_are_readable() -> None:
    assert repr(dq.MaxAbs()) == "MaxAbs()"
    assert repr(dq.Percentile(0.99)) == "Percentile(p=0.99)"
    assert repr(dq.DynQuantFormat.Int8PerRow) == "DynQuantFormat.Int8PerRow"
    assert repr(dq.SmoothQuantConfig(0.5)) == "SmoothQuantConfig(alpha=0.5, epsilon=1e-05)"
    r = repr(dq.quantize_int8_per_row(np.ones((1000, 3), F32)))
    assert "Int8PerRow" in r and "(1000, 3)" in r and len(r) < 300
    assert "\n" not in repr(dq.quantize_int8(np.arange(10, dtype=F32)))
    k = repr(dq.kernel_info())
    assert k.startswith("KernelInfo(") and "isa=" in k


def test_modes_are_hashable_frozen_values() -> None:
    assert dq.Percentile(0.5) == dq.Percentile(0.5) != dq.Percentile(0.6)
    assert dq.MaxAbs() == dq.MaxAbs()
    assert len({dq.Percentile(0.5), dq.Percentile(0.5), dq.MaxAbs()}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        dq.Percentile(0.5).p = 0.7  # type: ignore[misc]
    for v in (dq.Percentile(0.25), dq.MaxAbs(), dq.SmoothQuantConfig(0.3, 1e-4)):
        assert pickle.loads(pickle.dumps(v)) == v
    assert pickle.loads(pickle.dumps(dq.DynQuantFormat.Int4PerTensor)) is (
        dq.DynQuantFormat.Int4PerTensor
    )
    assert {f.name for f in dq.DynQuantFormat} == {"Int8PerTensor", "Int8PerRow", "Int4PerTensor"}


def test_public_names() -> None:
    for name in dq.__all__:
        assert hasattr(dq, name), name
    assert isinstance(dq.__version__, str) and dq.__version__


def test_typing_check_script_runs() -> None:
    # tests/typing_check.py is for mypy --strict; running it proves it is not stale.
    runpy.run_path(str(HERE / "typing_check.py"), run_name="__main__")
