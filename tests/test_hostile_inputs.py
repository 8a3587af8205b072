"""The bad-input matrix: every public function against malformed arrays.

Each case names a function, an input and the outcome: an exception class
(a ``dq.DynQuantError`` subclass that is also ValueError/TypeError, or the
documented ``MemoryError`` for allocations that cannot exist) or a
documented result, which is checked. ``docs/bad-inputs.md`` holds the same
matrix as a table; ``test_docs_table_is_the_matrix`` regenerates it from
``CASES`` and fails when the two differ (``DYNQUANT_WRITE_DOCS=1`` rewrites
the file). Cases that aborted the process before they were fixed also run
in a subprocess, so a regression is a failed test, not a dead test run.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dynquant as dq
import dynquant.models as models
import numpy as np
import numpy.typing as npt
import pytest
import reference_np

F32 = np.float32
I8 = np.int8
U8 = np.uint8
TIB = 2**40
DOCS = Path(__file__).resolve().parent.parent / "docs" / "bad-inputs.md"
BEGIN, END = "<!-- BEGIN GENERATED TABLE -->", "<!-- END GENERATED TABLE -->"


@dataclass(frozen=True)
class Case:
    func: str
    input: str
    call: Callable[[], Any]
    raises: type[BaseException] | None = None
    result: str = ""
    check: Callable[[Any], None] | None = None
    isolate: bool = False  # aborted the process before the fix

    @property
    def id(self) -> str:
        return f"{self.func}: {self.input}"

    @property
    def outcome(self) -> str:
        if self.raises is not None:
            return f"`{self.raises.__name__}`"
        return self.result


# ─── inputs ─────────────────────────────────────────────────────────────────

X = (np.arange(24, dtype=F32).reshape(4, 6) - 11.5) / 3  # [tokens, in]
W = (np.arange(30, dtype=F32).reshape(5, 6) % 7 - 3) / 4  # [out, in]
WQ, WS = dq.quantize_weights_int8(W)
P32 = np.random.default_rng(1).standard_normal((3, 64)).astype(F32)
PK, PS = dq.quantize_weights_int4(P32)  # one group per row
PKG, PSG = dq.quantize_weights_int4(P32, 32)  # two groups per row
A64 = np.random.default_rng(2).standard_normal((2, 64)).astype(F32)


def zero_stride(shape: tuple[int, ...], dtype: Any = F32) -> npt.NDArray[Any]:
    """A view of one element with a huge shape: no memory until copied."""
    return np.lib.stride_tricks.as_strided(
        np.zeros(1, dtype), shape=shape, strides=(0,) * len(shape)
    )


def readonly(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    a = a.copy()
    a.flags.writeable = False
    return a


def unaligned(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A C-contiguous copy of ``a`` at an odd byte offset (not aligned)."""
    buf = np.zeros(a.nbytes + 1, U8)
    out = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=1).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


def big_endian(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return a.astype(a.dtype.newbyteorder(">"))


def neg_strided(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``a`` (same values) as a view with negative strides."""
    flip = (slice(None, None, -1),) * a.ndim
    return np.ascontiguousarray(a[flip])[flip]


def non_contig(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """``a`` (same values) as a view with gaps between elements."""
    big = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
    big[..., ::2] = a
    return big[..., ::2]


def same_as(want: Any) -> Callable[[Any], None]:
    """The result equals ``want`` bit for bit (arrays, tensors, tuples, floats)."""

    def check(got: Any) -> None:
        assert_same(got, want)

    return check


def assert_same(got: Any, want: Any) -> None:
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    elif isinstance(want, dq.DynQuantTensor):
        assert got == want, (got, want)
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), type(got)
        assert got.shape == want.shape and got.dtype == want.dtype, (got, want)
        if want.dtype.kind == "f":
            assert np.array_equal(got.view(f"u{want.itemsize}"), want.view(f"u{want.itemsize}"))
        else:
            assert np.array_equal(got, want)
    elif isinstance(want, float):
        assert got == want or (math.isnan(got) and math.isnan(want)), (got, want)
    else:
        assert got == want, (got, want)


def shape_is(shape: tuple[int, ...], scales: int | None = None) -> Callable[[Any], None]:
    def check(got: Any) -> None:
        arrays = got if isinstance(got, tuple) else (got,)
        first = arrays[0].data if isinstance(arrays[0], dq.DynQuantTensor) else arrays[0]
        assert first.shape == shape, first.shape
        if scales is not None:
            assert arrays[0].scales.shape == (scales,)

    return check


def tensor(data: Any, scales: Any, shape: Any, fmt: dq.DynQuantFormat) -> dq.DynQuantTensor:
    return dq.DynQuantTensor(np.asarray(data, I8), np.asarray(scales, F32), shape, fmt)


def mutated(field: str, value: Any) -> Callable[[], Any]:
    """A valid per-row tensor whose ``field`` is reassigned, then dequantized."""

    def call() -> Any:
        t = dq.quantize_int8_per_row(X)
        setattr(t, field, value)
        return t.dequantize()

    return call


PATHS = dq.kernel_info().supported


def _with_kernel_env(value: str) -> str:
    """Runs kernel_info and a kernel in a child with DYNQUANT_KERNEL=value."""
    code = (
        "import dynquant as dq\n"
        "for call in (dq.kernel_info, lambda: dq.quantize_int8([1.0])):\n"
        "    try:\n"
        "        call()\n"
        "    except dq.InvalidArgumentError as e:\n"
        "        assert 'DYNQUANT_KERNEL' in str(e), e\n"
        "    else:\n"
        "        raise SystemExit('no error')\n"
        "dq.set_kernel('scalar')\n"
        "assert dq.quantize_int8([1.0]).data[0] == 127\n"
        "print('ok')\n"
    )
    env = dict(os.environ, DYNQUANT_KERNEL=value, RUST_BACKTRACE="0")
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def fresh_x() -> npt.NDArray[np.float32]:
    return X.copy()


# ─── the matrix ─────────────────────────────────────────────────────────────

G = np.linspace(0.5, 1.5, 6, dtype=F32)  # LayerNorm gamma for X's 6 features
B6 = np.linspace(-0.25, 0.25, 6, dtype=F32)
X_NAN_INF = X.copy()
X_NAN_INF[1, 2], X_NAN_INF[2, 0] = np.nan, np.inf
SPECIALS = np.array(
    [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.0], dtype=F32
)


def assert_nan_same(got: Any, want: npt.NDArray[np.float32]) -> None:
    """Same bits, any NaN matching any NaN (which NaN the CPU makes is not fixed)."""
    assert isinstance(got, np.ndarray) and got.shape == want.shape and got.dtype == want.dtype
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got[~nan].view(np.uint32), want[~nan].view(np.uint32))


MAX = dq.MaxAbs()
PER_ROW = dq.DynQuantFormat.Int8PerRow
PER_T = dq.DynQuantFormat.Int8PerTensor
INT4 = dq.DynQuantFormat.Int4PerTensor
SE = dq.ShapeMismatchError
DT = dq.DTypeError
AT = dq.ArgumentTypeError
IA = dq.InvalidArgumentError
NF = dq.NonFiniteError
FD = dq.FeatureDimMismatchError
EI = dq.EmptyInputError
IP = dq.InvalidPercentileError

CASES: list[Case] = [
    # wrong ndim
    Case("quantize_int8_per_row", "1-D array", lambda: dq.quantize_int8_per_row(X[0]), SE),
    Case("quantize_int8_per_row", "3-D array", lambda: dq.quantize_int8_per_row(X[None]), SE),
    Case("quantize_int8_per_row", "0-D array", lambda: dq.quantize_int8_per_row(F32(1)), SE),
    Case(
        "quantize_int8",
        "0-D array, Python float or NumPy scalar",
        lambda: (dq.quantize_int8(3.0), dq.quantize_int8(np.float64(3.0))),
        result="shape `()` kept, one scale",
        check=lambda r: [shape_is((), 1)(t) for t in r] and None,
    ),
    Case(
        "quantize_int8",
        "3-D array",
        lambda: dq.quantize_int8(X.reshape(2, 2, 6)),
        result="shape kept: same values as flat",
        check=lambda t: assert_same(t.data.reshape(-1), dq.quantize_int8(X.reshape(-1)).data),
    ),
    Case("w8a8_matvec", "2-D activation", lambda: dq.w8a8_matvec(WQ, WS, X), SE),
    Case("w8a8_matvec", "1-D weights", lambda: dq.w8a8_matvec(WQ[0], WS, X[0]), SE),
    Case("w8a8_matvec", "2-D weight scales", lambda: dq.w8a8_matvec(WQ, WS[None], X[0]), SE),
    Case("w8a8_matmul", "0-D x", lambda: dq.w8a8_matmul(F32(1), WQ, WS), SE),
    Case("w8a8_matmul", "3-D weights", lambda: dq.w8a8_matmul(X, WQ[None], WS), SE),
    Case(
        "w8a8_matmul",
        "3-D x [2, 2, in]",
        lambda: dq.w8a8_matmul(X.reshape(2, 2, 6), WQ, WS),
        result="`[2, 2, out]`, rows as 2-D",
        check=lambda y: assert_same(y.reshape(4, 5), dq.w8a8_matmul(X, WQ, WS)),
    ),
    Case("w4a8_matmul", "1-D packed", lambda: dq.w4a8_matmul(A64, PK[0], PS), DT),
    Case("w4a8_matmul", "1-D scales", lambda: dq.w4a8_matmul(A64, PK, PS[:, 0]), SE),
    Case("w4a8_matvec", "2-D activation", lambda: dq.w4a8_matvec(PK, PS, A64), SE),
    Case(
        "compute_smooth_factors", "1-D activations", lambda: dq.compute_smooth_factors(X[0], W), SE
    ),
    Case(
        "compute_smooth_factors", "3-D weights", lambda: dq.compute_smooth_factors(X, W[None]), SE
    ),
    Case(
        "smooth_activations", "3-D activations", lambda: dq.smooth_activations(X[None], WS[:6]), SE
    ),
    Case("smooth_activations", "2-D factors", lambda: dq.smooth_activations(X, X[:1]), SE),
    Case("quantize_weights_int8", "1-D weights", lambda: dq.quantize_weights_int8(W[0]), SE),
    Case("quantize_weights_int4", "3-D weights", lambda: dq.quantize_weights_int4(W[None]), SE),
    Case("pack_weights_int8", "1-D weights", lambda: dq.pack_weights_int8(WQ[0]), SE),
    Case("pack_weights_int8", "float32 weights", lambda: dq.pack_weights_int8(W), DT),
    Case(
        "PackedInt8Weights",
        "in w8a8_matmul, x of another width",
        lambda: dq.w8a8_matmul(np.ones((2, WQ.shape[1] + 1), F32), dq.pack_weights_int8(WQ), WS),
        SE,
    ),
    Case(
        "PackedInt8Weights",
        "in w8a8_matmul, one scale short",
        lambda: dq.w8a8_matmul(np.ones((2, WQ.shape[1]), F32), dq.pack_weights_int8(WQ), WS[1:]),
        SE,
    ),
    Case("pack_int4", "3-D values", lambda: dq.pack_int4(np.zeros((2, 2, 2), I8)), SE),
    Case("pack_int4", "0-D values", lambda: dq.pack_int4(I8(3)), SE),
    Case("unpack_int4", "3-D packed", lambda: dq.unpack_int4(np.zeros((2, 2, 2), U8), 4), SE),
    Case("unpack_int4", "0-D packed", lambda: dq.unpack_int4(U8(3), 2), SE),
    Case(
        "QuantizedLinear",
        "1-D weight",
        lambda: dq.QuantizedLinear.from_float(W[0]),
        SE,
    ),
    Case(
        "QuantizedLinear.__call__",
        "0-D x",
        lambda: dq.QuantizedLinear.from_float(W)(F32(1)),
        FD,
    ),
    # zero-size axes
    Case(
        "quantize_int8",
        "shape (0,)",
        lambda: dq.quantize_int8(np.zeros(0, F32)),
        result="empty data, scales `[0.0]` (reference)",
        check=lambda t: assert_same(t.scales, np.zeros(1, F32)),
    ),
    Case(
        "quantize_int8_per_row",
        "shape (3, 0)",
        lambda: dq.quantize_int8_per_row(np.zeros((3, 0), F32)),
        result="data `(3, 0)`, no scales (reference)",
        check=shape_is((3, 0), 0),
    ),
    Case(
        "quantize_int8_per_row",
        "shape (0, 5)",
        lambda: dq.quantize_int8_per_row(np.zeros((0, 5), F32)),
        result="data `(0, 5)`, no scales",
        check=shape_is((0, 5), 0),
    ),
    Case(
        "compute_scale",
        "empty",
        lambda: dq.compute_scale([], 127.0),
        result="0.0 (reference)",
        check=same_as(0.0),
    ),
    Case("w8a8_matvec", "empty activation", lambda: dq.w8a8_matvec(WQ[:, :0], WS, []), EI),
    Case(
        "w8a8_matvec",
        "0 outputs",
        lambda: dq.w8a8_matvec(WQ[:0], WS[:0], X[0]),
        result="empty `[0]` (reference)",
        check=shape_is((0,)),
    ),
    Case(
        "w8a8_matmul",
        "x (3, 0), weights (5, 0)",
        lambda: dq.w8a8_matmul(np.zeros((3, 0), F32), WQ[:, :0], WS),
        EI,
    ),
    Case(
        "w8a8_matmul",
        "x (0, 0), weights (5, 0)",
        lambda: dq.w8a8_matmul(np.zeros((0, 0), F32), WQ[:, :0], WS),
        result="`(0, 5)` array",
        check=shape_is((0, 5)),
    ),
    Case(
        "w8a8_matmul",
        "0 tokens",
        lambda: dq.w8a8_matmul(X[:0], WQ, WS),
        result="`(0, out)` array",
        check=shape_is((0, 5)),
    ),
    Case(
        "w4a8_matmul",
        "x (2, 0)",
        lambda: dq.w4a8_matmul(np.zeros((2, 0), F32), PK[:, :0], PS[:, :0]),
        EI,
    ),
    Case(
        "compute_smooth_factors",
        "0 tokens",
        lambda: dq.compute_smooth_factors(X[:0], W),
        result="factors from weights alone (max|A| = 0)",
        check=shape_is((6,)),
    ),
    Case(
        "smooth_activations",
        "shape (0, 6)",
        lambda: dq.smooth_activations(X[:0], np.ones(6, F32)),
        result="empty `(0, 6)`",
        check=shape_is((0, 6)),
    ),
    Case(
        "CalibStats.collect",
        "no batches / empty batches",
        lambda: (dq.CalibStats.collect([]), dq.CalibStats.collect([np.zeros((0, 3))])),
        result="every field 0.0 (reference)",
        check=lambda r: (
            [assert_same((s.min, s.max, s.p99, s.suggested_scale), (0.0,) * 4) for s in r] and None
        ),
    ),
    Case(
        "pack_int4",
        "shape (4, 0)",
        lambda: dq.pack_int4(np.zeros((4, 0), I8)),
        result="`(4, 0)` bytes",
        check=shape_is((4, 0)),
    ),
    Case(
        "QuantizedLinear",
        "weight (5, 0), then x (2, 0)",
        lambda: dq.QuantizedLinear.from_float(np.zeros((5, 0), F32))(np.zeros((2, 0), F32)),
        EI,
    ),
    # lengths that do not multiply out / disagree
    Case("w8a8_matvec", "activation length != in", lambda: dq.w8a8_matvec(WQ, WS, X[0, :5]), SE),
    Case("w8a8_matvec", "scales length != out", lambda: dq.w8a8_matvec(WQ, WS[:4], X[0]), SE),
    Case("w8a8_matmul", "x in != weight in", lambda: dq.w8a8_matmul(X[:, :5], WQ, WS), SE),
    Case("w8a8_matmul", "scales length != out", lambda: dq.w8a8_matmul(X, WQ, WS[:2]), SE),
    Case("w8a8_matmul", "bias length != out", lambda: dq.w8a8_matmul(X, WQ, WS, bias=WS[:3]), SE),
    Case(
        "w4a8_matmul", "packed bytes != ceil(in/2)", lambda: dq.w4a8_matmul(A64[:, :60], PK, PS), SE
    ),
    Case("w4a8_matmul", "scales [out, groups] wrong", lambda: dq.w4a8_matmul(A64, PKG, PSG), SE),
    # 63 and 64 columns pack into the same 32 bytes: the unused nibble tells.
    Case(
        "w4a8_matmul",
        "x (2, 63), rows packed for 64 columns",
        lambda: dq.w4a8_matmul(A64[:, :63], PK, PS),
        IA,
    ),
    Case(
        "w4a8_matmul",
        "x (2, 63), g32 rows packed for 64 columns",
        lambda: dq.w4a8_matmul(A64[:, :63], PKG, PSG, group_size=32),
        IA,
    ),
    Case("w4a8_matmul", "group_size 0", lambda: dq.w4a8_matmul(A64, PK, PS, group_size=0), IA),
    Case(
        "w4a8_matmul",
        "in_features >= 2^20",
        lambda: dq.w4a8_matmul(
            np.ones((1, 2**20), F32), np.zeros((1, 2**19), U8), np.ones((1, 1), F32)
        ),
        IA,
    ),
    Case(
        "compute_smooth_factors",
        "in features differ",
        lambda: dq.compute_smooth_factors(X, W[:, :5]),
        FD,
    ),
    Case(
        "smooth_activations",
        "factors length != in",
        lambda: dq.smooth_activations(X, np.ones(5, F32)),
        FD,
    ),
    Case(
        "smooth_weights", "factors length != in", lambda: dq.smooth_weights(W, np.ones(7, F32)), FD
    ),
    Case(
        "smooth_activations",
        "out= of another shape",
        lambda: dq.smooth_activations(X, np.ones(6, F32), out=np.empty((6, 4), F32)),
        SE,
    ),
    Case("unpack_int4", "cols does not match the bytes", lambda: dq.unpack_int4(PK, 60), SE),
    Case("unpack_int4", "cols = 2**70", lambda: dq.unpack_int4(PK, 2**70), SE),
    Case("unpack_int4", "cols < 0", lambda: dq.unpack_int4(PK, -1), IA),
    # 63 and 64 columns pack into the same 32 bytes: the unused nibble tells.
    Case("unpack_int4", "rows packed for 64 columns, cols 63", lambda: dq.unpack_int4(PK, 63), IA),
    Case(
        "unpack_int4",
        "unused nibble 0xF, cols 1",
        lambda: dq.unpack_int4(np.array([[0xFF]], U8), 1),
        IA,
    ),
    Case(
        "QuantizedLinear.__call__",
        "x features != in_features",
        lambda: dq.QuantizedLinear.from_float(W)(X[:, :5]),
        FD,
    ),
    Case(
        "QuantizedLinear",
        "bias length != out",
        lambda: dq.QuantizedLinear.from_float(W, bias=np.ones(4, F32)),
        SE,
    ),
    # shapes too big to exist
    Case(
        "quantize_int8",
        "zero-stride view of 2^40 values (4 TiB)",
        lambda: dq.quantize_int8(zero_stride((2**20, 2**20))),
        MemoryError,
    ),
    Case(
        "w8a8_matmul",
        "zero-stride x view [2^40, 6]",
        lambda: dq.w8a8_matmul(zero_stride((TIB, 6)), WQ, WS),
        MemoryError,
    ),
    Case(
        "w8a8_matvec",
        "zero-stride int8 weights [2^40, 2^10]",
        lambda: dq.w8a8_matvec(zero_stride((TIB, 1024), I8), WS, X[0]),
        MemoryError,
    ),
    Case(
        "w8a8_matmul",
        "output [2^17, 2^17] (64 GiB) from small inputs",
        lambda: dq.w8a8_matmul(
            np.ones((2**17, 1), F32), np.ones((2**17, 1), I8), np.ones(2**17, F32)
        ),
        MemoryError,
        isolate=True,
    ),
    Case(
        "quantize_int8_per_row",
        "empty shape (2^40, 0)",
        lambda: dq.quantize_int8_per_row(np.empty((TIB, 0), F32)),
        result="data `(2^40, 0)`, no scales",
        check=shape_is((TIB, 0), 0),
        isolate=True,
    ),
    Case(
        "quantize_int8",
        "empty shape (2^40, 0)",
        lambda: dq.quantize_int8(np.empty((TIB, 0), F32)),
        result="data `(2^40, 0)`, scales `[0.0]`",
        check=shape_is((TIB, 0), 1),
    ),
    Case(
        "quantize_weights_int8",
        "empty weights (2^40, 0): 2^40 scales",
        lambda: dq.quantize_weights_int8(np.empty((TIB, 0), F32)),
        MemoryError,
        isolate=True,
    ),
    Case(
        "quantize_weights_int4",
        "empty weights (2^40, 0)",
        lambda: dq.quantize_weights_int4(np.empty((TIB, 0), F32)),
        result="packed `(2^40, 0)`, scales `(2^40, 0)`",
        check=lambda r: assert_same((r[0].shape, r[1].shape), ((TIB, 0), (TIB, 0))),
        isolate=True,
    ),
    Case(
        "quantize_weights_int4",
        "no rows (0, 64), group 32",
        lambda: (lambda p, s: (p.shape, s.shape, dq.w4a8_matmul(A64, p, s, group_size=32).shape))(
            *dq.quantize_weights_int4(np.empty((0, 64), F32), 32)
        ),
        result="packed `(0, 32)`, scales `(0, 2)`, which `w4a8_matmul` takes: `(2, 0)`",
        check=lambda r: assert_same(r, ((0, 32), (0, 2), (2, 0))),
    ),
    Case(
        "ChannelMaxObserver",
        "in_features 2^40 (4 TiB of maxima)",
        lambda: dq.ChannelMaxObserver(TIB),
        MemoryError,
    ),
    Case(
        "ChannelMaxObserver",
        "in_features 2^62 (past usize in bytes)",
        lambda: dq.ChannelMaxObserver(2**62),
        MemoryError,
    ),
    Case(
        "ChannelMaxObserver",
        "update with an empty (0, 2^36) batch",
        lambda: dq.ChannelMaxObserver().update(np.empty((0, 2**36), F32)),
        MemoryError,
    ),
    Case(
        "compute_smooth_factors",
        "empty (0, 2^40) inputs: 2^40 factors",
        lambda: dq.compute_smooth_factors(np.empty((0, TIB), F32), np.empty((0, TIB), F32)),
        MemoryError,
        isolate=True,
    ),
    Case(
        "QuantizedLinear",
        "empty weight (2^40, 0)",
        lambda: dq.QuantizedLinear.from_float(np.empty((TIB, 0), F32)),
        MemoryError,
        isolate=True,
    ),
    Case(
        "smooth_activations",
        "empty (2^40, 0)",
        lambda: dq.smooth_activations(np.empty((TIB, 0), F32), np.empty(0, F32)),
        result="empty `(2^40, 0)`",
        check=shape_is((TIB, 0)),
    ),
    Case(
        "pack_int4 / unpack_int4",
        "empty (2^40, 0)",
        lambda: (dq.pack_int4(np.empty((TIB, 0), I8)), dq.unpack_int4(np.empty((TIB, 0), U8), 0)),
        result="`(2^40, 0)` arrays",
        check=lambda r: assert_same((r[0].shape, r[1].shape), ((TIB, 0), (TIB, 0))),
    ),
    Case(
        "CalibStats.collect",
        "empty (2^40, 0) batch",
        lambda: dq.CalibStats.collect([np.empty((TIB, 0), F32)]),
        result="every field 0.0",
        check=lambda s: assert_same(s.max, 0.0),
    ),
    # layouts: non-contiguous, negative strides, unaligned, big-endian
    *[
        Case(
            fn_name,
            f"{layout_name} input",
            (lambda f=fn, m=make: f(m(X))),
            result="same bits as a C-contiguous copy",
            check=same_as(fn(X)),
        )
        for fn_name, fn in [
            ("quantize_int8", dq.quantize_int8),
            ("quantize_int8_per_row", dq.quantize_int8_per_row),
            ("quantize_int4", dq.quantize_int4),
            ("w8a8_matmul", lambda x: dq.w8a8_matmul(x, WQ, WS)),
            ("smooth_activations", lambda x: dq.smooth_activations(x, np.arange(1, 7, dtype=F32))),
            ("compute_smooth_factors", lambda x: dq.compute_smooth_factors(x, W)),
        ]
        for layout_name, make in [
            ("non-contiguous", non_contig),
            ("negatively strided", neg_strided),
            ("unaligned", unaligned),
            ("big-endian", big_endian),
        ]
    ],
    Case(
        "w8a8_matvec",
        "non-contiguous / negatively strided int8 weights",
        lambda: (
            dq.w8a8_matvec(non_contig(WQ), WS, X[0]),
            dq.w8a8_matvec(neg_strided(WQ), WS, X[0]),
        ),
        result="same bits as C-contiguous",
        check=same_as((dq.w8a8_matvec(WQ, WS, X[0]),) * 2),
    ),
    Case(
        "w4a8_matmul",
        "unaligned, non-contiguous x and packed",
        lambda: dq.w4a8_matmul(unaligned(A64), non_contig(PK), non_contig(PS)),
        result="same bits as C-contiguous",
        check=same_as(dq.w4a8_matmul(A64, PK, PS)),
    ),
    Case(
        "CalibStats.collect",
        "big-endian, unaligned, strided batches",
        lambda: dq.CalibStats.collect([big_endian(X), unaligned(X), non_contig(X)]),
        result="same as contiguous",
        check=same_as(dq.CalibStats.collect([X, X, X])),
    ),
    # in place / out=
    Case(
        "smooth_activations",
        "out=a with a read-only",
        lambda: dq.smooth_activations(readonly(X), np.ones(6, F32), out=readonly(X)),
        IA,
    ),
    Case(
        "smooth_activations",
        "out=a, a read-only (same object)",
        lambda: (lambda r: dq.smooth_activations(r, np.ones(6, F32), out=r))(readonly(X)),
        IA,
    ),
    Case(
        "smooth_weights",
        "out= read-only",
        lambda: dq.smooth_weights(W, np.ones(6, F32), out=readonly(W)),
        IA,
    ),
    Case(
        "smooth_activations",
        "out=a[:] (the input through another view)",
        lambda: (lambda a: (dq.smooth_activations(a, np.full(6, 2, F32), out=a[:]), a)[1])(
            fresh_x()
        ),
        result="smoothed in place",
        check=same_as(X / F32(2)),
    ),
    Case(
        "smooth_activations",
        "out= overlapping the input shifted",
        lambda: (
            lambda buf: (
                dq.smooth_activations(buf[:4], np.full(6, 2, F32), out=buf[1:5]),
                buf[1:5].copy(),
            )[1]
        )(np.concatenate([X, X[:1]])),
        result="as if the input were copied first",
        check=same_as(X / F32(2)),
    ),
    Case(
        "smooth_activations",
        "out=a, a non-contiguous",
        lambda: (lambda a: dq.smooth_activations(a, np.ones(6, F32), out=a))(non_contig(X)),
        DT,
    ),
    Case(
        "smooth_activations",
        "out=a, a unaligned",
        lambda: (lambda a: dq.smooth_activations(a, np.ones(6, F32), out=a))(unaligned(X)),
        DT,
    ),
    Case(
        "smooth_activations",
        "out= float64",
        lambda: dq.smooth_activations(X, np.ones(6, F32), out=np.empty((4, 6))),
        DT,
    ),
    Case(
        "smooth_activations",
        "out= a list",
        lambda: dq.smooth_activations(X, np.ones(6, F32), out=[[0.0] * 6] * 4),
        DT,
    ),
    # dtypes
    *[
        Case(fn_name, f"{dtype_name} array", (lambda f=fn, a=arr: f(a)), DT)
        for fn_name, fn in [
            ("quantize_int8", dq.quantize_int8),
            ("compute_scale", lambda a: dq.compute_scale(a, 127.0)),
            ("w8a8_matmul", lambda a: dq.w8a8_matmul(a, WQ, WS)),
            ("smooth_activations", lambda a: dq.smooth_activations(a, np.ones(6, F32))),
            ("CalibStats.collect", lambda a: dq.CalibStats.collect([a])),
        ]
        for dtype_name, arr in [
            ("object", np.array([[None] * 6] * 4, object)),
            ("str", np.full((4, 6), "1.0")),
            ("bool", np.ones((4, 6), bool)),
            ("complex", X.astype(np.complex64)),
            ("datetime64", np.zeros((4, 6), "datetime64[s]")),
        ]
    ],
    Case(
        "quantize_int8",
        "int32 / uint16 / float16 / float64",
        lambda: tuple(
            dq.quantize_int8(X.astype(t)) for t in (np.int32, np.uint16, np.float16, np.float64)
        ),
        result="converted to float32 first (as `astype`)",
        check=lambda r: (
            [
                assert_same(t, dq.quantize_int8(X.astype(d).astype(F32)))
                for t, d in zip(r, (np.int32, np.uint16, np.float16, np.float64), strict=True)
            ]
            and None
        ),
    ),
    Case(
        "quantize_int8",
        "float64 beyond float32 range (1e39)",
        lambda: dq.quantize_int8([1.0, 1e39]),
        NF,
    ),
    Case(
        "quantize_int8", "Python int beyond int64 (2**70)", lambda: dq.quantize_int8([1, 2**70]), DT
    ),
    Case("w8a8_matvec", "float32 weights", lambda: dq.w8a8_matvec(W, WS, X[0]), DT),
    Case("w8a8_matvec", "uint8 weights", lambda: dq.w8a8_matvec(WQ.view(U8), WS, X[0]), DT),
    Case("w8a8_matvec", "int16 weights", lambda: dq.w8a8_matvec(WQ.astype(np.int16), WS, X[0]), DT),
    Case(
        "w8a8_matmul", "weights as a list of ints", lambda: dq.w8a8_matmul(X, WQ.tolist(), WS), DT
    ),
    Case("w4a8_matmul", "int8 packed", lambda: dq.w4a8_matmul(A64, PK.view(I8), PS), DT),
    Case("pack_int4", "int32 values", lambda: dq.pack_int4(np.zeros((2, 4), np.int32)), DT),
    Case("pack_int4", "int4 value 8", lambda: dq.pack_int4(np.array([[1, 8]], I8)), IA),
    Case("pack_int4", "int4 value -9 / -128", lambda: dq.pack_int4(np.array([-9, -128], I8)), IA),
    Case(
        "pack_int4",
        "values -8 and 7",
        lambda: dq.unpack_int4(dq.pack_int4(np.array([[-8, 7, 0]], I8)), 3),
        result="round-trips",
        check=same_as(np.array([[-8, 7, 0]], I8)),
    ),
    Case("unpack_int4", "int8 bytes", lambda: dq.unpack_int4(PK.view(I8), 64), DT),
    Case(
        "w8a8_matvec",
        "weights -128",
        lambda: dq.w8a8_matvec(np.full((1, 3), -128, I8), np.ones(1, F32), [127.0, -127.0, 1.0]),
        result="exact: -128 * (127 - 127 + 1)",
        check=same_as(np.array([-128.0], F32)),
    ),
    # ragged lists and odd Python objects
    Case("quantize_int8", "ragged lists", lambda: dq.quantize_int8([[1.0, 2.0], [3.0]]), SE),
    Case(
        "w8a8_matvec",
        "ragged weight lists",
        lambda: dq.w8a8_matvec([[1, 2], [3]], [1.0], [1.0, 2.0]),
        SE,
    ),
    Case("pack_int4", "ragged lists", lambda: dq.pack_int4([[1, 2], [3]]), SE),
    Case("unpack_int4", "ragged lists", lambda: dq.unpack_int4([[1, 2], [3]], 4), SE),
    Case("CalibStats.collect", "an int, not batches", lambda: dq.CalibStats.collect(5), AT),
    Case("calibrate", "an int, not batches", lambda: dq.calibrate(5), AT),
    Case("calibrate", "Inf in a batch", lambda: dq.calibrate([[1.0, np.inf]]), NF),
    Case("CalibObserver", "NaN in a batch", lambda: dq.CalibObserver().update([1.0, np.nan]), NF),
    Case("CalibObserver", "batch of strings", lambda: dq.CalibObserver().update(["ab"]), DT),
    Case(
        "CalibObserver", "complex batch", lambda: dq.CalibObserver().update(np.ones(3, complex)), DT
    ),
    Case(
        "CalibObserver", "relative_accuracy 0", lambda: dq.CalibObserver(relative_accuracy=0.0), IA
    ),
    Case(
        "CalibObserver",
        "relative_accuracy NaN",
        lambda: dq.CalibObserver(relative_accuracy=np.nan),
        IA,
    ),
    Case("CalibObserver", "quantile 1.5", lambda: dq.CalibObserver().quantile(1.5), IA),
    Case("CalibObserver", "malformed bytes", lambda: dq.CalibObserver.from_bytes(b"garbage"), IA),
    Case(
        "CalibObserver",
        "merge with another kind",
        lambda: dq.CalibObserver().merge(dq.ChannelMaxObserver()),
        AT,
    ),
    Case(
        "ChannelMaxObserver",
        "batch of 3 features into 4",
        lambda: dq.ChannelMaxObserver(in_features=4).update(np.ones((2, 3), F32)),
        FD,
    ),
    Case(
        "ChannelMaxObserver",
        "Inf in a batch",
        lambda: dq.ChannelMaxObserver().update(np.array([[np.inf, 1.0]], F32)),
        NF,
    ),
    Case(
        "ChannelMaxObserver",
        "smooth_factors before any batch",
        lambda: dq.ChannelMaxObserver().smooth_factors(
            np.ones((2, 3), F32), dq.SmoothQuantConfig()
        ),
        IA,
    ),
    Case("CalibStats.collect", "batches of strings", lambda: dq.CalibStats.collect(["ab"]), DT),
    Case("quantize_int8", "mode a string", lambda: dq.quantize_int8(X, "maxabs"), AT),
    Case("w8a8_matmul", "per_token 'no'", lambda: dq.w8a8_matmul(X, WQ, WS, per_token="no"), AT),
    Case("w4a8_matmul", "per_token 0", lambda: dq.w4a8_matmul(A64, PK, PS, per_token=0), AT),
    Case(
        "QuantizedLinear",
        "per_token 'False'",
        lambda: dq.QuantizedLinear.from_float(W, per_token="False"),
        AT,
    ),
    Case("CalibObserver", "exact 'no'", lambda: dq.CalibObserver(exact="no"), AT),
    Case("calibrate", "progress None", lambda: dq.calibrate([X], progress=None), AT),
    Case("calibrate", "total 'x'", lambda: dq.calibrate([X], total="x"), AT),  # type: ignore[arg-type]
    Case("calibrate", "total -1", lambda: dq.calibrate([X], total=-1), IA),
    Case(
        "ChannelMaxObserver.update_many",
        "total 2.5",
        lambda: dq.ChannelMaxObserver().update_many([X], total=2.5),  # type: ignore[arg-type]
        AT,
    ),
    Case(
        "quantize_int8", "mode the Percentile class", lambda: dq.quantize_int8(X, dq.Percentile), AT
    ),
    Case(
        "quantize_int8", "nan_policy 'ignore'", lambda: dq.quantize_int8(X, nan_policy="ignore"), IA
    ),
    Case("quantization_mae", "qt not a tensor", lambda: dq.quantization_mae(X, "qt"), AT),
    Case(
        "quantize_int8",
        "masked array with masked values",
        lambda: dq.quantize_int8(np.ma.masked_greater(X, 1.0)),
        AT,
    ),
    Case(
        "w8a8_matvec",
        "masked int8 weights",
        lambda: dq.w8a8_matvec(np.ma.masked_equal(WQ, WQ[0, 0]), WS, X[0]),
        AT,
    ),
    Case(
        "quantization_mae",
        "original transposed (2-D, other shape)",
        lambda: dq.quantization_mae(X.T, dq.quantize_int8_per_row(X)),
        SE,
    ),
    # non-finite and tiny values
    Case("quantize_int8", "NaN", lambda: dq.quantize_int8([1.0, np.nan]), NF),
    Case("quantize_int8", "+Inf", lambda: dq.quantize_int8([1.0, np.inf]), NF),
    Case("quantize_int8_per_row", "-Inf", lambda: dq.quantize_int8_per_row([[1.0, -np.inf]]), NF),
    Case("w8a8_matvec", "NaN activation", lambda: dq.w8a8_matvec(WQ, WS, [np.nan] * 6), NF),
    Case(
        "w8a8_matmul", "Inf token", lambda: dq.w8a8_matmul(np.where(X > 3, np.inf, X), WQ, WS), NF
    ),
    Case(
        "w4a8_matmul",
        "NaN token",
        lambda: dq.w4a8_matmul(np.where(A64 > 1, np.nan, A64), PK, PS),
        NF,
    ),
    Case("compute_scale", "NaN", lambda: dq.compute_scale([np.nan], 127.0), NF),
    Case(
        "compute_smooth_factors",
        "NaN activation",
        lambda: dq.compute_smooth_factors(np.where(X > 3, np.nan, X), W),
        NF,
    ),
    Case(
        "compute_smooth_factors",
        "NaN weight",
        lambda: dq.compute_smooth_factors(X, np.where(np.eye(*W.shape, dtype=bool), np.nan, W)),
        NF,
    ),
    Case(
        "ChannelMaxObserver",
        "Inf weight in smooth_factors",
        lambda: (
            dq.ChannelMaxObserver()
            .update(X)
            .smooth_factors(np.where(np.eye(*W.shape, dtype=bool), np.inf, W))
        ),
        NF,
    ),
    Case(
        "smooth_activations",
        "NaN / Inf",
        lambda: dq.smooth_activations([[np.nan, np.inf]], [1.0, 1.0]),
        NF,
    ),
    Case("CalibStats.collect", "Inf", lambda: dq.CalibStats.collect([[1.0, np.inf]]), NF),
    Case(
        "CalibStats.collect",
        "NaN, nan_policy='reference'",
        lambda: dq.CalibStats.collect([[1.0, np.nan]], nan_policy="reference"),
        NF,
    ),
    Case(
        "QuantizedLinear.__call__",
        "NaN x",
        lambda: dq.QuantizedLinear.from_float(W)(np.full((1, 6), np.nan)),
        NF,
    ),
    Case(
        "quantize_weights_int8",
        "NaN weight",
        lambda: dq.quantize_weights_int8(np.where(W > 0.5, np.nan, W)),
        NF,
    ),
    Case(
        "quantize_weights_int4",
        "Inf weight",
        lambda: dq.quantize_weights_int4(np.where(W > 0.5, np.inf, W)),
        NF,
    ),
    Case(
        "quantize_int8",
        "NaN, nan_policy='reference'",
        lambda: dq.quantize_int8([2.0, np.nan, -1.0], nan_policy="reference"),
        result="NaN → 0 (reference)",
        check=lambda t: assert_same(t.data, np.array([127, 0, -64], I8)),
    ),
    Case(
        "quantize_int8",
        "Inf, nan_policy='reference'",
        lambda: dq.quantize_int8([2.0, -np.inf], nan_policy="reference"),
        result="scale inf, all q 0 (reference)",
        check=lambda t: assert_same((t.scales[0], t.data.tolist()), (np.inf, [0, 0])),
    ),
    Case(
        "quantize_int8",
        "NaN with Percentile, nan_policy='reference'",
        lambda: dq.quantize_int8([1.0, np.nan], dq.Percentile(0.5), nan_policy="reference"),
        NF,
    ),
    Case(
        "quantize_int8",
        "-0.0 and +0.0 only",
        lambda: dq.quantize_int8([-0.0, 0.0]),
        result="scale 0.0, q 0",
        check=lambda t: assert_same((float(t.scales[0]), t.data.tolist()), (0.0, [0, 0])),
    ),
    Case(
        "quantize_int8",
        "subnormal amax 63·2^-149",
        lambda: dq.quantize_int8(np.array([63, 1], np.uint32).view(F32)),
        result="scale underflows to 0.0, q 0 (reference)",
        check=lambda t: assert_same((float(t.scales[0]), t.data.tolist()), (0.0, [0, 0])),
    ),
    Case(
        "quantize_int8",
        "subnormal amax 64·2^-149",
        lambda: dq.quantize_int8(np.array([64], np.uint32).view(F32)),
        result="scale 2^-149, q 64 (reference)",
        check=lambda t: assert_same(t.data.tolist(), [64]),
    ),
    Case(
        "quantize_int8",
        "±f32::MAX",
        lambda: dq.quantize_int8(np.array([np.finfo(F32).max, -np.finfo(F32).max, 1.0], F32)),
        result="q ±127, 0",
        check=lambda t: assert_same(t.data.tolist(), [127, -127, 0]),
    ),
    Case(
        "w8a8_matvec",
        "NaN / Inf weight scales",
        lambda: dq.w8a8_matvec(WQ[:2], np.array([np.nan, np.inf], F32), X[0]),
        result="NaN / ±Inf / NaN outputs (IEEE, as the reference; scales are not checked)",
        check=lambda y: assert_same(bool(np.isnan(y[0])), True),
    ),
    Case(
        "w8a8_matmul",
        "NaN weight scale",
        lambda: dq.w8a8_matmul(X, WQ, [0.1, 0.1, np.nan, 0.1, 0.1]),
        NF,
    ),
    Case(
        "w8a8_matmul",
        "Inf bias",
        lambda: dq.w8a8_matmul(X, WQ, WS, bias=[0.0, np.inf, 0.0, 0.0, 0.0]),
        NF,
    ),
    Case("w4a8_matmul", "-Inf scale", lambda: dq.w4a8_matmul(A64, PK, -np.inf * PS), NF),
    Case("w4a8_matvec", "NaN scale", lambda: dq.w4a8_matvec(PK, np.nan * PS, A64[0]), NF),
    Case(
        "QuantizedLinear",
        "NaN bias",
        lambda: dq.QuantizedLinear.from_float(W, [0.0, 1.0, np.nan, 0.0, 0.0]),
        NF,
    ),
    Case(
        "smooth_activations",
        "zero factors",
        lambda: dq.smooth_activations([[1.0, 0.0]], [0.0, 0.0]),
        result="±Inf / NaN (IEEE division)",
        check=lambda y: assert_same((float(y[0, 0]), bool(np.isnan(y[0, 1]))), (np.inf, True)),
    ),
    # scale modes and SmoothQuant parameters
    *[
        Case("Percentile", f"p = {p!r}", (lambda p=p: dq.Percentile(p)), IP)
        for p in [math.nan, 0.0, -0.5, 1.0000001, math.inf, 1e-50, "0.5", None, True]
    ],
    Case(
        "Percentile",
        "p = 1 (and 1.00000001, which is 1.0 in float32)",
        lambda: (dq.compute_scale(X, 127.0, dq.Percentile(1)), dq.Percentile(1.00000001).p_f32),
        result="the maximum |x|; p accepted",
        check=same_as((float(np.abs(X).max() / F32(127)), 1.0)),
    ),
    Case(
        "quantize_int8",
        "a Percentile with no p (object.__new__)",
        lambda: dq.quantize_int8(X, object.__new__(dq.Percentile)),
        IP,
    ),
    *[
        Case(
            "SmoothQuantConfig",
            f"alpha = {a!r}",
            (lambda a=a: dq.SmoothQuantConfig(a)),
            dq.InvalidAlphaError,
        )
        for a in [math.nan, -0.1, 1.5, math.inf, 10**400]
    ],
    *[
        Case(
            "SmoothQuantConfig",
            f"epsilon = {e!r}",
            (lambda e=e: dq.SmoothQuantConfig(0.5, e)),
            dq.InvalidEpsilonError,
        )
        for e in [math.nan, -1e-5, math.inf, 1e39, 10**400]
    ],
    Case("SmoothQuantConfig", "alpha a string", lambda: dq.SmoothQuantConfig("0.5"), AT),
    Case(
        "compute_smooth_factors",
        "config not a SmoothQuantConfig",
        lambda: dq.compute_smooth_factors(X, W, 0.5),
        AT,
    ),
    Case("compute_scale", "clip_val a string", lambda: dq.compute_scale(X, "127"), AT),
    Case(
        "compute_scale",
        "clip_val 0 / -1 / 2**2000",
        lambda: tuple(dq.compute_scale([2.0], c) for c in (0, -1, 2**2000)),
        result="amax / clip as the reference: inf, -2.0, 0.0",
        check=same_as((math.inf, -2.0, 0.0)),
    ),
    # QuantizedLinear and weight quantizers
    Case("QuantizedLinear", "bits=3", lambda: dq.QuantizedLinear.from_float(W, bits=3), IA),
    Case("QuantizedLinear", "bits=True", lambda: dq.QuantizedLinear.from_float(W, bits=True), IA),
    Case("QuantizedLinear", "pack 'yes'", lambda: dq.QuantizedLinear.from_float(W, pack="yes"), AT),  # type: ignore[arg-type]
    Case(
        "QuantizedLinear",
        "pack=True with bits=4, 6 columns (int4 panels need a multiple of 64)",
        lambda: dq.QuantizedLinear.from_float(W, bits=4, pack=True),
        IA,
    ),
    Case(
        "QuantizedLinear",
        "pack=True with bits=4, group_size=12 (panels need a multiple of 8)",
        lambda: dq.QuantizedLinear.from_float(
            np.ones((2, 192), F32), bits=4, group_size=12, pack=True
        ),
        IA,
    ),
    Case(
        "QuantizedLinear",
        "group_size with bits=8",
        lambda: dq.QuantizedLinear.from_float(W, group_size=32),
        IA,
    ),
    Case(
        "QuantizedLinear",
        "act_mode a string",
        lambda: dq.QuantizedLinear.from_float(W, act_mode="max"),
        AT,
    ),
    Case(
        "QuantizedLinear",
        "smooth not a pair",
        lambda: dq.QuantizedLinear.from_float(W, smooth=0.5),
        AT,
    ),
    Case(
        "quantize_weights_int4 / w4a8_matmul",
        "group_size 2**70 (beyond usize)",
        lambda: (
            dq.quantize_weights_int4(P32, 2**70),
            dq.w4a8_matmul(A64, PK, PS, group_size=2**70),
        ),
        result="one group per row, as `None`",
        check=same_as((dq.quantize_weights_int4(P32), dq.w4a8_matmul(A64, PK, PS))),
    ),
    Case("quantize_weights_int4", "odd group_size", lambda: dq.quantize_weights_int4(W, 3), IA),
    Case("quantize_weights_int4", "group_size 0", lambda: dq.quantize_weights_int4(W, 0), IA),
    Case("quantize_weights_int4", "group_size 1.5", lambda: dq.quantize_weights_int4(W, 1.5), IA),
    # hand-built tensors with inconsistent fields
    Case(
        "DynQuantTensor",
        "data float32",
        lambda: dq.DynQuantTensor(X, np.ones(1, F32), X.shape, PER_T),
        DT,
    ),
    Case(
        "DynQuantTensor",
        "scales float64",
        lambda: dq.DynQuantTensor(WQ, np.ones(1), WQ.shape, PER_T),
        DT,
    ),
    Case("DynQuantTensor", "scales 2-D", lambda: tensor(WQ, [[1.0]], WQ.shape, PER_T), DT),
    Case("DynQuantTensor", "shape != data.shape", lambda: tensor(WQ, [1.0], (6, 5), PER_T), SE),
    Case("DynQuantTensor", "shape of floats", lambda: tensor(WQ, [1.0], (5.0, 6.0), PER_T), AT),
    Case("DynQuantTensor", "shape None", lambda: tensor(WQ, [1.0], None, PER_T), AT),
    Case(
        "DynQuantTensor",
        "format a string",
        lambda: tensor(WQ, [1.0], WQ.shape, "Int8PerTensor"),
        AT,
    ),
    Case(
        "DynQuantTensor",
        "per-tensor, 2 scales",
        lambda: tensor(WQ, [1.0, 2.0], WQ.shape, PER_T),
        SE,
    ),
    Case(
        "DynQuantTensor",
        "per-row, 4 scales for 5 rows",
        lambda: tensor(WQ, np.ones(4), WQ.shape, PER_ROW),
        SE,
    ),
    Case("DynQuantTensor", "per-row, 1-D data", lambda: tensor(WQ[0], [1.0], (6,), PER_ROW), SE),
    Case("DynQuantTensor", "int4 with value 8", lambda: tensor([8], [1.0], (1,), INT4), IA),
    Case("DynQuantTensor", "int8 with value -128", lambda: tensor([-128], [1.0], (1,), PER_T), IA),
    Case(
        "DynQuantTensor.dequantize", "scales reassigned float64", mutated("scales", np.ones(4)), DT
    ),
    Case(
        "DynQuantTensor.dequantize",
        "scales reassigned, wrong count",
        mutated("scales", np.ones(3, F32)),
        SE,
    ),
    Case("DynQuantTensor.dequantize", "shape reassigned", mutated("shape", (6, 4)), SE),
    Case("DynQuantTensor.dequantize", "data reassigned a list", mutated("data", [[1] * 6] * 4), DT),
    Case("DynQuantTensor.dequantize", "format reassigned", mutated("format", 1), AT),
    Case(
        "DynQuantTensor.dequantize",
        "scales reassigned non-contiguous",
        mutated("scales", np.arange(8, dtype=F32)[::2]),
        result="uses them (copied contiguous)",
        check=lambda y: assert_same(y[3], dq.quantize_int8_per_row(X).data[3].astype(F32) * F32(6)),
    ),
    Case(
        "quantization_mae",
        "tensor with reassigned scales",
        lambda: (lambda t: (setattr(t, "scales", np.ones(2, F32)), dq.quantization_mae(X, t))[1])(
            dq.quantize_int8(X)
        ),
        SE,
    ),
    # kernel control
    Case(
        "kernel_info / every kernel",
        "DYNQUANT_KERNEL=bogus or =neon on x86 (at import)",
        lambda: [_with_kernel_env(v) for v in ("bogus", "neon" if "avx2" in PATHS else "avx2")],
        result="import works; each call raises `InvalidArgumentError` naming the variable "
        "until `set_kernel` picks a path",
        check=lambda r: assert_same(r, ["ok", "ok"]),
    ),
    Case("set_kernel", "an int", lambda: dq.set_kernel(5), AT),
    Case("set_kernel", "'avx512'", lambda: dq.set_kernel("avx512"), IA),
    Case("set_num_threads", "-1", lambda: dq.set_num_threads(-1), IA),
    Case("set_num_threads", "5000", lambda: dq.set_num_threads(5000), IA),
    Case("set_num_threads", "2**70", lambda: dq.set_num_threads(2**70), IA),
    Case("set_num_threads", "1.5", lambda: dq.set_num_threads(1.5), IA),
    # the float layers of dynquant.models (GELU, LayerNorm: the demo model's)
    Case(
        "models.gelu",
        "NaN, ±inf, ±0, subnormal, ±3.4e38",
        lambda: models.gelu(SPECIALS),
        result="the NumPy formula's bits: NaN stays NaN, +inf → inf, -inf → NaN (0 * -inf)",
        check=lambda r: assert_nan_same(r, reference_np.gelu_erf(SPECIALS)),
    ),
    *(
        Case(
            "models.gelu",
            f"{name} float32",
            lambda make=make: models.gelu(make(X)),
            result="same bits as a C-contiguous copy",
            check=same_as(models.gelu(X.copy())),
        )
        for name, make in (
            ("big-endian", big_endian),
            ("unaligned", unaligned),
            ("non-contiguous", non_contig),
            ("negatively strided", neg_strided),
            ("read-only", readonly),
        )
    ),
    Case("models.gelu", "complex64", lambda: models.gelu(X.astype(np.complex64)), DT),
    Case("models.gelu", "ragged nested list", lambda: models.gelu([[1.0, 2.0], [3.0]]), SE),
    Case(
        "models.gelu",
        "zero-stride view of 2^40 x 4 (copy needs 16 TiB)",
        lambda: models.gelu(zero_stride((TIB, 4))),
        MemoryError,
    ),
    Case(
        "models.layer_norm",
        "gamma of 5 for 6 features",
        lambda: models.layer_norm(X, G[:5], B6, 1e-5),
        SE,
    ),
    Case("models.layer_norm", "2-D gamma", lambda: models.layer_norm(X, G[None], B6, 1e-5), SE),
    Case("models.layer_norm", "0-D x", lambda: models.layer_norm(F32(1), G[:1], B6[:1], 1e-5), SE),
    Case(
        "models.layer_norm",
        "residual of another shape",
        lambda: models.layer_norm(X, G, B6, 1e-5, residual=X[:2]),
        SE,
    ),
    Case(
        "models.layer_norm",
        "NaN in one row, inf in another",
        lambda: models.layer_norm(X_NAN_INF, G, B6, 1e-5),
        result="those rows NaN (as NumPy's), the others exact",
        check=lambda r: assert_nan_same(r, reference_np.layer_norm(X_NAN_INF, G, B6, 1e-5)),
    ),
    Case(
        "models.layer_norm",
        "big-endian, non-contiguous x and residual",
        lambda: models.layer_norm(big_endian(X), G, B6, 1e-5, residual=non_contig(X)),
        result="same bits as C-contiguous copies",
        check=same_as(models.layer_norm(X.copy(), G, B6, 1e-5, residual=X.copy())),
    ),
    Case(
        "models.layer_norm",
        "zero-stride view of 2^40 x 6 (copy needs 24 TiB)",
        lambda: models.layer_norm(zero_stride((TIB, 6)), G, B6, 1e-5),
        MemoryError,
    ),
]

BY_ID = {c.id: c for c in CASES}
assert len(BY_ID) == len(CASES), "case ids must be unique"


def run_case(case: Case) -> None:
    """Runs one case and checks its outcome."""
    if case.raises is not None:
        with pytest.raises(BaseException) as info:
            case.call()
        e = info.value
        assert type(e) is case.raises or (
            case.raises is MemoryError and isinstance(e, MemoryError)
        ), f"{type(e).__module__}.{type(e).__name__}: {e}"
        assert str(e), "an error needs a message"
        if isinstance(e, dq.DynQuantError):
            assert isinstance(e, (ValueError, TypeError)), type(e).__mro__
    else:
        assert case.check is not None, case.id
        case.check(case.call())


@pytest.fixture(autouse=True)
def _restore_kernel_state() -> Any:
    yield
    dq.set_kernel("auto")
    dq.set_num_threads(0)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case) -> None:
    run_case(case)


ISOLATED = [c for c in CASES if c.isolate]


@pytest.mark.parametrize("case", ISOLATED, ids=[c.id for c in ISOLATED])
def test_bad_input_in_a_subprocess(case: Case) -> None:
    """Cases that aborted the interpreter before the fix, in a child process."""
    code = (
        "import sys, pytest\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import test_hostile_inputs as t\n"
        f"t.run_case(t.BY_ID[{case.id!r}])\n"
        "print('survived')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-2000:])


# ─── the table in docs/bad-inputs.md ───────────────────────────────────────


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table() -> str:
    rows = ["| function | input | outcome |", "|---|---|---|"]
    for c in CASES:
        rows.append(f"| `{c.func}` | {_cell(c.input)} | {_cell(c.outcome)} |")
    return "\n".join(rows)


def test_docs_table_is_the_matrix() -> None:
    """Every row of the documented table is a case above, and back."""
    text = DOCS.read_text()
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    fresh = f"{head}{BEGIN}\n{table()}\n{END}{tail}"
    if os.environ.get("DYNQUANT_WRITE_DOCS") == "1":
        DOCS.write_text(fresh)
    assert text == fresh, "docs/bad-inputs.md is stale: run with DYNQUANT_WRITE_DOCS=1"


def test_every_public_function_is_in_the_matrix() -> None:
    covered = {c.func.split(".")[0].split(" ")[0] for c in CASES}  # "models" too
    covered |= {"pack_int4", "unpack_int4"}
    skip = {"KernelInfo", "ScaleMode", "DynQuantFormat", "MaxAbs", "__version__", "kernel_info"}
    public = {
        name
        for name in dq.__all__
        if not (
            isinstance(getattr(dq, name), type) and issubclass(getattr(dq, name), BaseException)
        )
    }
    missing = public - covered - skip
    assert not missing, f"public names without a bad-input case: {sorted(missing)}"
