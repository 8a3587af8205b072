"""The exception hierarchy: one base, one subclass per failure, each also a
builtin (ValueError / TypeError), with fields and messages that say what was
expected and what came in."""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from typing import Any

import dynquant as dq
import numpy as np
import numpy.typing as npt
import pytest

F32 = np.float32

VALUE_ERRORS = [
    dq.ShapeMismatchError,
    dq.EmptyInputError,
    dq.InvalidAlphaError,
    dq.InvalidEpsilonError,
    dq.FeatureDimMismatchError,
    dq.NonFiniteError,
    dq.InvalidPercentileError,
    dq.InvalidArgumentError,
]
TYPE_ERRORS = [dq.DTypeError, dq.ArgumentTypeError]


@pytest.mark.parametrize("cls", VALUE_ERRORS)
def test_value_errors(cls: type[Exception]) -> None:
    assert issubclass(cls, dq.DynQuantError)
    assert issubclass(cls, ValueError)
    assert not issubclass(cls, TypeError)


@pytest.mark.parametrize("cls", TYPE_ERRORS)
def test_type_errors(cls: type[Exception]) -> None:
    assert issubclass(cls, dq.DynQuantError)
    assert issubclass(cls, TypeError)
    assert not issubclass(cls, ValueError)


def test_base_and_internal() -> None:
    assert issubclass(dq.DynQuantError, Exception)
    assert not issubclass(dq.DynQuantError, (ValueError, TypeError))
    assert issubclass(dq.InternalError, dq.DynQuantError)
    assert issubclass(dq.InternalError, RuntimeError)
    exported = {
        name
        for name in dq.__all__
        if isinstance(getattr(dq, name), type) and issubclass(getattr(dq, name), BaseException)
    }
    assert exported == {c.__name__ for c in [*VALUE_ERRORS, *TYPE_ERRORS]} | {
        "DynQuantError",
        "InternalError",
    }


X = np.ones((2, 3), F32)

# (call, expected class, fields that must be set, words the message must contain)
CASES: list[tuple[str, Callable[[], Any], type[Exception], dict[str, Any], list[str]]] = [
    (
        "matvec activation length",
        lambda: dq.w8a8_matvec(np.ones((2, 3), np.int8), np.ones(2, F32), np.ones(4, F32)),
        dq.ShapeMismatchError,
        {"expected": 3, "actual": 4},
        ["3", "4", "activation", "weight_i8"],
    ),
    (
        "matvec scales length",
        lambda: dq.w8a8_matvec(np.ones((2, 3), np.int8), np.ones(7, F32), np.ones(3, F32)),
        dq.ShapeMismatchError,
        {"expected": 2, "actual": 7},
        ["2", "7", "weight_scales"],
    ),
    (
        "matvec empty",
        lambda: dq.w8a8_matvec(np.ones((2, 3), np.int8), np.ones(2, F32), []),
        dq.EmptyInputError,
        {},
        ["empty", "activation"],
    ),
    (
        "per-row needs 2-D",
        lambda: dq.quantize_int8_per_row(np.ones(5, F32)),
        dq.ShapeMismatchError,
        {"expected": "2-D", "actual": (5,)},
        ["2-D", "(5,)"],
    ),
    (
        "alpha",
        lambda: dq.SmoothQuantConfig(1.25),
        dq.InvalidAlphaError,
        {"alpha": 1.25},
        ["1.25"],
    ),
    (
        "epsilon",
        lambda: dq.SmoothQuantConfig(0.5, -2.0),
        dq.InvalidEpsilonError,
        {"epsilon": -2.0},
        ["-2.0"],
    ),
    (
        "factors length",
        lambda: dq.smooth_activations(X, np.ones(4, F32)),
        dq.FeatureDimMismatchError,
        {"in_features": 3, "sf_len": 4, "argument": "factors"},
        ["3", "4"],
    ),
    (
        "factor in-features",
        lambda: dq.compute_smooth_factors(X, np.ones((5, 2), F32)),
        dq.FeatureDimMismatchError,
        {"in_features": 3, "sf_len": 2, "argument": "weights"},
        ["3", "2"],
    ),
    (
        # The Python layer checks widths first; the core's own error (what a
        # width it missed would raise) maps to the same class, naming the input.
        "core observer width",
        lambda: dq.ChannelMaxObserver(3)._impl.update(np.ones((2, 4), F32)),
        dq.FeatureDimMismatchError,
        {"in_features": 3, "sf_len": 4, "argument": "data"},
        ["in_features 3", "data has width 4"],
    ),
    (
        "nan",
        lambda: dq.quantize_int8(np.array([[1, 2], [np.nan, 4]], F32)),
        dq.NonFiniteError,
        {"index": 2},
        ["nan", "2"],
    ),
    (
        "percentile",
        lambda: dq.Percentile(1.5),
        dq.InvalidPercentileError,
        {"p": 1.5},
        ["1.5"],
    ),
    (
        "nan policy",
        lambda: dq.quantize_int8(X, nan_policy="ignore"),
        dq.InvalidArgumentError,
        {},
        ["ignore", "raise", "reference"],
    ),
    (
        "dtype",
        lambda: dq.quantize_int8(np.array(["a", "b"])),
        dq.DTypeError,
        {"expected": None, "actual": "<U1"},
        ["<U1"],
    ),
    (
        "weights dtype",
        lambda: dq.w8a8_matvec(np.ones((2, 3), np.float32), np.ones(2, F32), np.ones(3, F32)),
        dq.DTypeError,
        {"expected": "int8", "actual": "float32"},
        ["int8", "float32"],
    ),
    (
        "mode type",
        lambda: dq.quantize_int8(X, "maxabs"),  # type: ignore[arg-type]
        dq.ArgumentTypeError,
        {},
        ["maxabs"],
    ),
    (
        "clip type",
        lambda: dq.compute_scale(X, "127"),  # type: ignore[arg-type]
        dq.ArgumentTypeError,
        {},
        ["clip_val"],
    ),
]


@pytest.mark.parametrize(
    ("call", "cls", "fields", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_raised_errors_carry_fields_and_messages(
    call: Callable[[], Any], cls: type[Exception], fields: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(cls) as info:
        call()
    e = info.value
    assert type(e) is cls
    for name, value in fields.items():
        assert hasattr(e, name), name
        if value is not None:
            assert getattr(e, name) == value, (name, getattr(e, name))
    msg = str(e).lower()
    for word in words:
        assert word.lower() in msg, (word, str(e))
    # caught generically as well
    with pytest.raises(dq.DynQuantError):
        call()
    # errors survive pickling (multiprocessing, dask) with their fields
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is cls and str(e2) == str(e)
    for name in fields:
        a, b = getattr(e, name), getattr(e2, name)
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("p", [0.0, -0.5, 1.0000001, math.nan, math.inf, 1e-50, "0.5", None, True])
def test_invalid_percentiles(p: Any) -> None:
    with pytest.raises(dq.InvalidPercentileError):
        dq.Percentile(p)


@pytest.mark.parametrize("p", [1.0, 0.5, 1e-30, 1.00000001, np.float32(0.99), 1])
def test_valid_percentiles(p: Any) -> None:
    # 1.00000001 rounds to the f32 1.0, which is in range.
    mode = dq.Percentile(p)
    assert mode.p == float(p)
    assert 0 < np.float32(mode.p) <= 1


def test_errors_can_be_caught_as_builtins() -> None:
    try:
        dq.quantize_int8_per_row(np.ones(3, F32))
    except ValueError as e:
        assert isinstance(e, dq.ShapeMismatchError)
    else:
        pytest.fail("no error")
    try:
        dq.quantize_int8([True, False])
    except TypeError as e:
        assert isinstance(e, dq.DTypeError)
    else:
        pytest.fail("no error")


# Every boolean keyword of the public API, as a call taking the value.
BOOL_KEYWORDS: list[tuple[str, str, Callable[[Any], Any]]] = [
    (
        "w8a8_matmul",
        "per_token",
        lambda v: dq.w8a8_matmul(X, np.ones((2, 3), np.int8), [1.0, 1.0], per_token=v),
    ),
    (
        "w4a8_matmul",
        "per_token",
        lambda v: dq.w4a8_matmul(
            X, np.full((2, 2), 0x88, np.uint8), np.ones((2, 1), F32), per_token=v
        ),
    ),
    (
        "QuantizedLinear.from_float",
        "per_token",
        lambda v: dq.QuantizedLinear.from_float(X, per_token=v),
    ),
    ("CalibObserver", "exact", lambda v: dq.CalibObserver(exact=v)),
    ("calibrate", "exact", lambda v: dq.calibrate([X], exact=v)),
    ("calibrate", "progress", lambda v: dq.calibrate([X], progress=v)),
    (
        "CalibObserver.update_many",
        "progress",
        lambda v: dq.CalibObserver().update_many([X], progress=v),
    ),
    (
        "ChannelMaxObserver.update_many",
        "progress",
        lambda v: dq.ChannelMaxObserver().update_many([X], progress=v),
    ),
]


@pytest.mark.parametrize(
    ("call", "name"),
    [c[2:0:-1] for c in BOOL_KEYWORDS],
    ids=[f"{c[0]}-{c[1]}" for c in BOOL_KEYWORDS],
)
@pytest.mark.parametrize("value", ["no", "", 0, 1, None, np.int64(1), np.array([True]), [False]])
def test_boolean_keywords_take_bools_only(
    call: Callable[[Any], Any], name: str, value: Any
) -> None:
    """``per_token="no"`` used to mean True (truthiness): now anything but a
    bool or numpy.bool_ is an ArgumentTypeError naming the argument, what it
    takes and what came in."""
    with pytest.raises(dq.ArgumentTypeError) as info:
        call(value)
    msg = str(info.value)
    assert name in msg and "bool" in msg and type(value).__name__ in msg, msg
    assert info.value.expected == "bool" and info.value.actual == type(value).__name__


@pytest.mark.parametrize(
    ("call", "name"),
    [c[2:0:-1] for c in BOOL_KEYWORDS],
    ids=[f"{c[0]}-{c[1]}" for c in BOOL_KEYWORDS],
)
def test_boolean_keywords_take_numpy_bools(call: Callable[[Any], Any], name: str) -> None:
    for value in (False, True):
        want, got = call(value), call(np.bool_(value))
        if isinstance(want, np.ndarray):
            assert np.array_equal(want, got)
        elif isinstance(want, dq.QuantizedLinear):
            assert got.per_token is value
        elif name == "exact":
            assert got.exact is value


HINT = 'pass nan_policy="reference"'
NAN_X = np.array([[1.0, np.nan, 2.0], [0.5, -1.0, 3.0]], F32)
INF_X = np.array([[1.0, np.inf, 2.0], [0.5, -1.0, 3.0]], F32)
INF_NAN_X = np.array([[1.0, np.inf, 2.0], [0.5, np.nan, 3.0]], F32)  # the Inf comes first
W3 = np.arange(12, dtype=F32).reshape(4, 3) / 7 - 0.5
WQ3, WS3 = dq.quantize_weights_int8(W3)
PK3, PS3 = dq.quantize_weights_int4(W3)
PCT = dq.Percentile(0.5)
SMOOTH = (dq.SmoothQuantConfig(0.5), np.abs(W3).max(axis=0) + 1)


def _linear(**kwargs: Any) -> dq.QuantizedLinear:
    return dq.QuantizedLinear.from_float(W3, **kwargs)


# (id, call taking nan_policy and the batch, argument named in the error)
NON_FINITE_CALLS: list[tuple[str, Callable[[str, Any], Any], str]] = [
    ("quantize_int8", lambda pol, x: dq.quantize_int8(x, nan_policy=pol), "x"),
    ("quantize_int8 Percentile", lambda pol, x: dq.quantize_int8(x, PCT, nan_policy=pol), "x"),
    ("quantize_int4 Percentile", lambda pol, x: dq.quantize_int4(x, PCT, nan_policy=pol), "x"),
    ("per_row", lambda pol, x: dq.quantize_int8_per_row(x, nan_policy=pol), "x"),
    ("per_row Percentile", lambda pol, x: dq.quantize_int8_per_row(x, PCT, nan_policy=pol), "x"),
    ("compute_scale", lambda pol, x: dq.compute_scale(x, 127.0, nan_policy=pol), "x"),
    (
        "compute_scale Percentile",
        lambda pol, x: dq.compute_scale(x, 127.0, PCT, nan_policy=pol),
        "x",
    ),
    (
        "w8a8_matvec",
        lambda pol, x: dq.w8a8_matvec(WQ3, WS3, x.reshape(-1)[:3], nan_policy=pol),
        "activation",
    ),
    ("w8a8_matmul", lambda pol, x: dq.w8a8_matmul(x, WQ3, WS3, nan_policy=pol), "x"),
    (
        "w8a8_matmul Percentile per tensor",
        lambda pol, x: dq.w8a8_matmul(x, WQ3, WS3, act_mode=PCT, per_token=False, nan_policy=pol),
        "x",
    ),
    ("w4a8_matmul", lambda pol, x: dq.w4a8_matmul(x, PK3, PS3, nan_policy=pol), "x"),
    (
        "w4a8_matmul Percentile",
        lambda pol, x: dq.w4a8_matmul(x, PK3, PS3, act_mode=PCT, nan_policy=pol),
        "x",
    ),
    (
        "w4a8_matvec",
        lambda pol, x: dq.w4a8_matvec(PK3, PS3, x.reshape(-1)[:3], nan_policy=pol),
        "activation",
    ),
    ("QuantizedLinear", lambda pol, x: _linear()(x, nan_policy=pol), "x"),
    ("QuantizedLinear Percentile", lambda pol, x: _linear(act_mode=PCT)(x, nan_policy=pol), "x"),
    ("QuantizedLinear smooth", lambda pol, x: _linear(smooth=SMOOTH)(x, nan_policy=pol), "x"),
    (
        "QuantizedLinear smooth Percentile",
        lambda pol, x: _linear(smooth=SMOOTH, act_mode=PCT, bits=4)(x, nan_policy=pol),
        "x",
    ),
    (
        "smooth_activations",
        lambda pol, x: dq.smooth_activations(x, [1.0, 2.0, 3.0], nan_policy=pol),
        "activations",
    ),
    (
        "compute_smooth_factors",
        lambda pol, x: dq.compute_smooth_factors(x, W3, nan_policy=pol),
        "activations",
    ),
    ("CalibStats.collect", lambda pol, x: dq.CalibStats.collect([x], nan_policy=pol), "batches"),
    ("CalibObserver", lambda pol, x: dq.CalibObserver(nan_policy=pol).update(x), "batch"),
    ("calibrate", lambda pol, x: dq.calibrate([x], nan_policy=pol), "batch"),
    (
        "ChannelMaxObserver",
        lambda pol, x: dq.ChannelMaxObserver(nan_policy=pol).update(x),
        "activations",
    ),
]


@pytest.mark.parametrize(
    ("call", "argument"), [c[1:] for c in NON_FINITE_CALLS], ids=[c[0] for c in NON_FINITE_CALLS]
)
@pytest.mark.parametrize("x", [NAN_X, INF_X, INF_NAN_X], ids=["nan", "inf", "inf-then-nan"])
def test_non_finite_hint_only_where_the_reference_policy_helps(
    call: Callable[[str, Any], Any], argument: str, x: npt.NDArray[np.float32]
) -> None:
    """The message used to suggest nan_policy="reference" everywhere, also
    where that raises too (NaN under Percentile, NaN in calibration) and to
    callers who had passed it. The hint is there exactly when the same call
    with nan_policy="reference" has a result."""
    try:
        call("reference", x)
    except dq.NonFiniteError as e:
        reference_helps = False
        assert HINT not in str(e) and "NaN has no result" in str(e), str(e)
        assert e.argument == argument and f"of {argument}" in str(e), str(e)
    else:
        reference_helps = True
    with pytest.raises(dq.NonFiniteError) as info:
        call("raise", x)
    e = info.value
    assert (HINT in str(e)) == reference_helps, str(e)
    if not reference_helps:
        assert "NaN has no result" in str(e), str(e)
    assert e.argument == argument and f"of {argument}" in str(e), str(e)
    flat = x.reshape(-1)
    assert e.index == 1 and not math.isfinite(flat[1])  # the first NaN/Inf
    assert (math.isnan(e.value) and math.isnan(flat[1])) or e.value == flat[1]
    e2 = pickle.loads(pickle.dumps(e))
    assert e2.argument == e.argument and str(e2) == str(e)


@pytest.mark.parametrize(
    ("call", "argument"), [c[1:] for c in NON_FINITE_CALLS], ids=[c[0] for c in NON_FINITE_CALLS]
)
def test_reference_policy_names_the_nan_not_an_earlier_inf(
    call: Callable[[str, Any], Any], argument: str
) -> None:
    """Under nan_policy="reference" an infinity is accepted and only a NaN can
    raise, so the error names the first NaN even after an Inf. The Percentile
    and CalibStats paths used to name the Inf (flat index 1) while
    CalibObserver named the NaN."""
    try:
        call("reference", INF_NAN_X)
    except dq.NonFiniteError as e:
        assert (e.index, e.argument) == (4, argument), str(e)
        assert math.isnan(e.value) and "value nan at flat index 4" in str(e), str(e)


def test_weights_name_their_argument() -> None:
    with pytest.raises(dq.NonFiniteError) as info:
        dq.quantize_weights_int8(np.where(W3 > 0, np.nan, W3))
    assert info.value.argument == "weight" and HINT not in str(info.value)


def _bad(a: Any, index: int, value: float) -> npt.NDArray[np.float32]:
    b = np.array(a, F32)
    b.reshape(-1)[index] = value
    return b


def _layer_with_scales(scales: npt.NDArray[np.float32], bits: int = 8) -> dq.QuantizedLinear:
    layer = dq.QuantizedLinear.from_float(W3, bits=bits)
    layer.weight_scales = scales
    return layer


B4 = np.linspace(-1, 1, 4).astype(F32)
PKG3, PSG3 = dq.quantize_weights_int4(np.tile(W3, (1, 22)), 32)  # [4, 66]: 3 groups per row
X66 = np.ones((2, 66), F32)

# (id, call taking nan_policy and the bad value, argument, bad index)
BAD_SCALE_CALLS: list[tuple[str, Callable[[str, float], Any], str, int]] = [
    (
        "w8a8_matmul scales",
        lambda pol, v: dq.w8a8_matmul(X, WQ3, _bad(WS3, 2, v), nan_policy=pol),
        "weight_scales",
        2,
    ),
    (
        "w8a8_matmul scales, no tokens",
        lambda pol, v: dq.w8a8_matmul(np.ones((0, 3)), WQ3, _bad(WS3, 3, v), nan_policy=pol),
        "weight_scales",
        3,
    ),
    (
        "w8a8_matmul bias",
        lambda pol, v: dq.w8a8_matmul(X, WQ3, WS3, bias=_bad(B4, 1, v), nan_policy=pol),
        "bias",
        1,
    ),
    (
        "w4a8_matmul scales",
        lambda pol, v: dq.w4a8_matmul(X66, PKG3, _bad(PSG3, 7, v), group_size=32, nan_policy=pol),
        "scales",
        7,
    ),
    (
        "w4a8_matmul bias",
        lambda pol, v: dq.w4a8_matmul(X, PK3, PS3, bias=_bad(B4, 0, v), nan_policy=pol),
        "bias",
        0,
    ),
    (
        "w4a8_matvec scales",
        lambda pol, v: dq.w4a8_matvec(PK3, _bad(PS3, 3, v), X[0], nan_policy=pol),
        "scales",
        3,
    ),
    (
        "QuantizedLinear bias",
        lambda pol, v: dq.QuantizedLinear.from_float(W3, _bad(B4, 2, v)),
        "bias",
        2,
    ),
    (
        "QuantizedLinear bias, bits=4",
        lambda pol, v: dq.QuantizedLinear.from_float(W3, _bad(B4, 3, v), bits=4),
        "bias",
        3,
    ),
    (
        "QuantizedLinear weight_scales reassigned",
        lambda pol, v: _layer_with_scales(_bad(WS3, 1, v))(X, nan_policy=pol),
        "weight_scales",
        1,
    ),
    (
        # The 4-bit layer passes them to w4a8_matmul, whose argument is
        # `scales`; the error used to name that instead of the attribute.
        "QuantizedLinear weight_scales reassigned, bits=4",
        lambda pol, v: _layer_with_scales(_bad(PS3, 2, v), bits=4)(X, nan_policy=pol),
        "weight_scales",
        2,
    ),
]


@pytest.mark.parametrize(
    ("call", "argument", "index"),
    [c[1:] for c in BAD_SCALE_CALLS],
    ids=[c[0] for c in BAD_SCALE_CALLS],
)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("nan_policy", ["raise", "reference"])
def test_non_finite_weight_scales_and_bias_are_refused(
    call: Callable[[str, float], Any], argument: str, index: int, value: float, nan_policy: str
) -> None:
    """These used to pass through (every output NaN/Inf, silently). The
    reference has no such function; its w8a8_matvec keeps passing them
    through (see test_w8a8_matvec_passes_non_finite_scales_through)."""
    with pytest.raises(dq.NonFiniteError) as info:
        call(nan_policy, value)
    e = info.value
    assert type(e) is dq.NonFiniteError
    assert (e.argument, e.index) == (argument, index)
    assert e.value == value or (math.isnan(e.value) and math.isnan(value))
    msg = str(e)
    assert f"index {index} of {argument}" in msg and "nan_policy" not in msg, msg
    e2 = pickle.loads(pickle.dumps(e))
    assert (e2.argument, e2.index, str(e2)) == (e.argument, e.index, msg)


@pytest.mark.parametrize("nan_policy", ["raise", "reference"])
def test_w8a8_matvec_passes_non_finite_scales_through(nan_policy: str) -> None:
    """As the reference does (the cross-check's special-weight-scales case)."""
    scales = np.array([math.nan, math.inf, -math.inf, 0.5], F32)
    y = dq.w8a8_matvec(WQ3, scales, X[0], nan_policy=nan_policy)
    assert np.isnan(y[0]) and not np.isfinite(y[1:3]).any() and np.isfinite(y[3])


def test_mode_errors_name_the_argument() -> None:
    """A bad scale mode is reported under the name the caller used."""
    x = np.ones((2, 4), F32)
    w, s = dq.quantize_weights_int8(np.ones((3, 4), F32))
    with pytest.raises(dq.ArgumentTypeError, match=r"^act_mode must be dq\.MaxAbs\(\)"):
        dq.w8a8_matmul(x, w, s, act_mode="max")  # type: ignore[arg-type]
    p4, s4 = dq.quantize_weights_int4(np.ones((3, 4), F32))
    with pytest.raises(dq.ArgumentTypeError, match=r"^act_mode must be"):
        dq.w4a8_matmul(x, p4, s4, act_mode="max")  # type: ignore[arg-type]
    with pytest.raises(dq.ArgumentTypeError, match=r"^mode must be"):
        dq.quantize_int8(x, "max")  # type: ignore[arg-type]


def test_pack_int4_names_the_dimensions_it_takes() -> None:
    with pytest.raises(dq.ShapeMismatchError, match=r"^values must be 1-D or 2-D, got 0-D"):
        dq.pack_int4(np.int8(3))
    with pytest.raises(dq.ShapeMismatchError, match=r"got 3-D with shape \(2, 2, 2\)"):
        dq.pack_int4(np.zeros((2, 2, 2), np.int8))


def test_masked_arrays_with_a_mask_are_refused() -> None:
    """np.asarray drops a mask: the masked-out values would silently count."""
    x = np.ma.masked_greater(np.array([1.0, 50.0, -2.0], F32), 10.0)
    with pytest.raises(dq.ArgumentTypeError, match=r"1 masked value\(s\).*filled"):
        dq.quantize_int8(x)
    # Without masked values, or once filled, it is an ordinary array.
    plain = np.ma.masked_array(np.array([1.0, 50.0, -2.0], F32))
    assert dq.quantize_int8(plain) == dq.quantize_int8(plain.data)
    assert dq.quantize_int8(x.filled(0.0)).scales[0] == np.float32(2.0 / 127.0)
