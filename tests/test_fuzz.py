"""Fuzzing the Python API with hypothesis.

Random shapes (0-d to 3-d, zero-size axes), layouts (strided, transposed,
negatively strided, unaligned, big-endian), dtypes (every NumPy kind) and
values (raw float32 bit patterns: NaN payloads, ±Inf, -0.0, subnormals), fed
to every public function with random modes, nan_policy and companion
operands that sometimes fit and sometimes do not. Each call must return or
raise a ``dq.DynQuantError`` that is not ``InternalError`` (a caught Rust
panic is a bug too); nothing else may escape. Each input runs under the
scalar and the AVX2 kernel paths, which must agree bit for bit (or raise the
same error).

Examples: ``DYNQUANT_FUZZ_CASES`` (default 1000 small inputs and 1/50 as many
large ones, about 15 s); run longer by hand with e.g.
``DYNQUANT_FUZZ_CASES=50000 pytest tests/test_fuzz.py -s``.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import dynquant as dq
import numpy as np
import numpy.typing as npt
import pytest
from dynquant import _core
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

F32 = np.float32
PATHS = list(dq.kernel_info().supported)
CASES = int(os.environ.get("DYNQUANT_FUZZ_CASES", "1000"))
TRIED = {"inputs": 0, "calls": 0, "errors": 0}

FUZZ = settings(
    max_examples=CASES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
    print_blob=True,
)


@pytest.fixture(autouse=True)
def _restore_kernel() -> Any:
    yield
    dq.set_kernel("auto")


# ─── inputs ─────────────────────────────────────────────────────────────────

SPECIAL_BITS = [
    0x0000_0000,  # +0
    0x8000_0000,  # -0
    0x7F80_0000,  # +inf
    0xFF80_0000,  # -inf
    0x7FC0_0000,  # NaN
    0xFFC0_0001,  # -NaN with payload
    0x7F80_0001,  # signalling NaN
    0x0000_0001,  # smallest subnormal
    0x8000_003F,  # -63 * 2^-149
    0x0000_0040,  # 64 * 2^-149
    0x007F_FFFF,  # largest subnormal
    0x7F7F_FFFF,  # f32::MAX
    0xFF7F_FFFF,  # f32::MIN
    0x3F00_0000,  # 0.5
    0xBFC0_0000,  # -1.5
]

DTYPES = [
    "float32",
    "float32",
    "float32",
    "float64",
    "float16",
    ">f4",
    "int8",
    "int32",
    "uint8",
    "int64",
    "bool",
    "complex64",
    "object",
    "U3",
    "datetime64[s]",
]


@st.composite
def f32_values(draw: st.DrawFn, n: int) -> npt.NDArray[np.float32]:
    """``n`` float32 values: mostly ordinary, some raw bit patterns, some special."""
    kind = draw(st.sampled_from(["normal", "normal", "bits", "special-sprinkled", "tiny"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if kind == "normal":
        x = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3)).astype(F32)
    elif kind == "bits":
        x = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32).view(F32)
    elif kind == "tiny":
        x = rng.integers(0, 0x0080_0000, n, dtype=np.uint32).view(F32) * F32(rng.choice([-1, 1]))
    else:
        x = rng.standard_normal(n).astype(F32)
        if n:
            k = draw(st.integers(1, min(n, 4)))
            idx = rng.integers(0, n, k)
            x[idx] = np.array(rng.choice(SPECIAL_BITS, k), np.uint32).view(F32)
    return x


@st.composite
def arrays(
    draw: st.DrawFn,
    shape: tuple[int, ...] | None = None,
    dtype: str | None = None,
    lists: bool = True,
) -> Any:
    """An array of ``shape`` (or a random one) in a random dtype and layout,
    or now and then a nested Python list (ragged or not)."""
    if shape is None:
        ndim = draw(st.integers(0, 3))
        shape = tuple(draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim)))
    n = math.prod(shape)
    base = draw(f32_values(n)).reshape(shape)
    dtype = dtype or draw(st.sampled_from(DTYPES))
    with np.errstate(all="ignore"):
        if dtype == "datetime64[s]":
            a: Any = np.zeros(shape, dtype)
        elif dtype in ("object", "U3"):
            a = base.astype(np.float64).astype(dtype)
        else:
            a = base.astype(dtype)
    layout = draw(
        st.sampled_from(["c", "c", "strided", "reversed", "transposed", "unaligned", "list"])
    )
    if layout == "strided" and a.ndim:
        big = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
        big[..., ::2] = a
        a = big[..., ::2]
    elif layout == "reversed" and a.ndim:
        flip = (slice(None, None, -1),) * a.ndim
        a = np.ascontiguousarray(a[flip])[flip]
    elif layout == "transposed" and a.ndim >= 2:
        a = np.ascontiguousarray(a.T).T
    elif layout == "unaligned" and a.dtype.kind in "fiuc" and a.dtype.itemsize > 1:
        buf = np.zeros(a.nbytes + 1, np.uint8)
        u = np.frombuffer(buf.data, a.dtype, a.size, 1).reshape(a.shape)
        u[...] = a
        a = u
    elif layout == "list" and a.dtype.kind == "f" and lists:
        a = a.tolist()
        if draw(st.booleans()) and isinstance(a, list) and a and isinstance(a[0], list) and a[0]:
            a[0] = a[0][:-1]  # ragged
    if isinstance(a, np.ndarray) and draw(st.integers(0, 9)) == 0:
        a.flags.writeable = False
    return a


def modes() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just(dq.MaxAbs()),
        st.floats(0.0, 1.0).filter(lambda p: 0 < F32(p) <= 1).map(dq.Percentile),
    )


def int8s(shape: tuple[int, ...]) -> st.SearchStrategy[npt.NDArray[np.int8]]:
    return st.integers(0, 2**32 - 1).map(
        lambda s: np.random.default_rng(s).integers(-128, 128, shape).astype(np.int8)
    )


def near(k: int) -> st.SearchStrategy[int]:
    """``k`` usually, sometimes a little off."""
    return st.one_of(st.just(k), st.just(k), st.just(k), st.integers(max(0, k - 2), k + 2))


def dims(a: Any) -> tuple[int, ...]:
    try:
        return np.shape(a)
    except ValueError:  # ragged
        return (3, 3)


# ─── the calls ──────────────────────────────────────────────────────────────


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, Callable[[], Any]]:
    """A public function with random but plausible (or not) arguments."""
    x = draw(arrays())
    shape = dims(x)
    k = shape[-1] if shape else 1
    policy = draw(st.sampled_from(["raise", "reference"]))
    mode = draw(modes())
    name = draw(
        st.sampled_from(
            [
                "quantize_int8",
                "quantize_int4",
                "quantize_int8_per_row",
                "compute_scale",
                "dequantize",
                "quantization_mae",
                "compute_smooth_factors",
                "smooth_activations",
                "smooth_weights",
                "w8a8_matvec",
                "w8a8_matmul",
                "w4a8_matmul",
                "w4a8_matvec",
                "quantize_weights_int8",
                "quantize_weights_int4",
                "pack_int4",
                "unpack_int4",
                "CalibStats.collect",
                "QuantizedLinear",
            ]
        )
    )
    if name == "quantize_int8":
        return name, lambda: dq.quantize_int8(x, mode, nan_policy=policy)
    if name == "quantize_int4":
        return name, lambda: dq.quantize_int4(x, mode, nan_policy=policy)
    if name == "quantize_int8_per_row":
        return name, lambda: dq.quantize_int8_per_row(x, mode, nan_policy=policy)
    if name == "compute_scale":
        clip = draw(st.one_of(st.sampled_from([127.0, 7.0]), st.floats(allow_nan=True)))
        return name, lambda: dq.compute_scale(x, clip, mode, nan_policy=policy)
    if name in ("dequantize", "quantization_mae"):
        fmt = draw(st.sampled_from(list(dq.DynQuantFormat)))

        def build() -> Any:
            if fmt is dq.DynQuantFormat.Int8PerRow:
                t = dq.quantize_int8_per_row(x, mode, nan_policy=policy)
            elif fmt is dq.DynQuantFormat.Int4PerTensor:
                t = dq.quantize_int4(x, mode, nan_policy=policy)
            else:
                t = dq.quantize_int8(x, mode, nan_policy=policy)
            if name == "dequantize":
                return t, t.dequantize(), t.memory_bytes(), t.compression_ratio()
            return dq.quantization_mae(x, t)

        return name, build
    if name == "compute_smooth_factors":
        w = draw(arrays(shape=(draw(st.integers(0, 5)), draw(near(k))), dtype="float32"))
        alpha = draw(st.floats(0, 1))
        return name, lambda: dq.compute_smooth_factors(
            x, w, dq.SmoothQuantConfig(alpha), nan_policy=policy
        )
    if name in ("smooth_activations", "smooth_weights"):
        f = draw(arrays(shape=(draw(near(k)),), dtype="float32"))
        in_place = draw(st.booleans())
        fn = dq.smooth_activations if name == "smooth_activations" else dq.smooth_weights

        def smooth() -> Any:
            if not in_place:
                return fn(x, f)
            if not (isinstance(x, np.ndarray) and x.flags.writeable):
                return fn(x, f, out=x)
            saved = x.copy()  # the next path must see the same input
            try:
                return fn(x, f, out=x).copy()
            finally:
                x[...] = saved

        return name, smooth
    if name in ("w8a8_matvec", "w8a8_matmul", "QuantizedLinear"):
        n = draw(st.integers(0, 6))
        wq = draw(int8s((n, draw(near(k)))))
        ws = draw(arrays(shape=(draw(near(n)),), dtype="float32"))
        if name == "w8a8_matvec":
            return name, lambda: dq.w8a8_matvec(wq, ws, x, nan_policy=policy)
        if name == "QuantizedLinear":
            wf = draw(arrays(shape=(n, draw(near(k))), dtype="float32"))
            bits = draw(st.sampled_from([8, 4]))
            group = draw(st.sampled_from([None, 2, 32])) if bits == 4 else None
            per_token = draw(st.booleans())
            return name, lambda: dq.QuantizedLinear.from_float(
                wf, bits=bits, group_size=group, act_mode=mode, per_token=per_token
            )(x, nan_policy=policy)
        bias = draw(st.one_of(st.none(), arrays(shape=(draw(near(n)),), dtype="float32")))
        per_token = draw(st.booleans())
        return name, lambda: dq.w8a8_matmul(
            x, wq, ws, per_token=per_token, bias=bias, act_mode=mode, nan_policy=policy
        )
    if name in ("w4a8_matmul", "w4a8_matvec"):
        n = draw(st.integers(0, 6))
        kk = draw(st.one_of(near(k), st.sampled_from([64, 128])))
        group = draw(st.sampled_from([None, 2, 32, 64, 7, 2**70]))
        wf = draw(arrays(shape=(n, kk), dtype="float32", lists=False))

        def w4() -> Any:
            with np.errstate(all="ignore"):
                wclean = np.nan_to_num(wf, nan=0.0, posinf=1.0, neginf=-1.0)
            packed, scales = dq.quantize_weights_int4(
                wclean, group if group in (2, 32, 64) else None
            )
            if name == "w4a8_matvec":
                return dq.w4a8_matvec(packed, scales, x, group_size=group, nan_policy=policy)
            return dq.w4a8_matmul(x, packed, scales, group_size=group, nan_policy=policy)

        return name, w4
    if name == "quantize_weights_int8":
        return name, lambda: dq.quantize_weights_int8(x)
    if name == "quantize_weights_int4":
        group = draw(st.sampled_from([None, 2, 32, 3, 0, 2**70]))
        return name, lambda: dq.quantize_weights_int4(x, group)
    if name == "pack_int4":
        v = draw(st.one_of(int8s(shape), st.just(x)))

        def pack() -> Any:
            in_range = draw_clip and isinstance(v, np.ndarray) and v.dtype == np.int8
            return dq.pack_int4(np.clip(v, -8, 7) if in_range else v)

        draw_clip = draw(st.booleans())
        return name, pack
    if name == "unpack_int4":
        cols = draw(st.integers(-1, 20))
        raw = draw(st.one_of(st.just(x), int8s(shape).map(lambda a: a.view(np.uint8))))
        return name, lambda: dq.unpack_int4(raw, cols)
    assert name == "CalibStats.collect"
    y = draw(arrays())
    return name, lambda: dq.CalibStats.collect([x, y], nan_policy=policy)


# ─── outcomes ───────────────────────────────────────────────────────────────


def digest(r: Any) -> Any:
    """A comparable form of a result: arrays as (shape, dtype, bytes)."""
    if isinstance(r, np.ndarray):
        if r.dtype.kind == "f":
            r = np.where(np.isnan(r), np.nan, r).astype(r.dtype)  # one NaN
        return ("array", r.shape, str(r.dtype), np.ascontiguousarray(r).tobytes())
    if isinstance(r, dq.DynQuantTensor):
        return ("tensor", r.format, r.shape, digest(r.data), digest(r.scales))
    if isinstance(r, (tuple, list)):
        return tuple(digest(v) for v in r)
    if isinstance(r, dq.CalibStats):
        return digest((r.min, r.max, r.mean, r.std_dev, r.p99, r.suggested_scale))
    if isinstance(r, float):
        return "nan" if math.isnan(r) else r
    return r


def outcome(call: Callable[[], Any]) -> Any:
    TRIED["calls"] += 1
    try:
        return ("ok", digest(call()))
    except dq.InternalError as e:
        pytest.fail(f"a Rust panic reached Python: {e}")
    except dq.DynQuantError as e:
        TRIED["errors"] += 1
        assert isinstance(e, (ValueError, TypeError)), type(e).__mro__
        return ("error", type(e).__name__, str(e))
    except BaseException as e:  # exactly what must not happen
        pytest.fail(
            f"a non-dynquant exception escaped: {type(e).__module__}.{type(e).__name__}: {e}"
        )


@FUZZ
@given(calls())
def test_nothing_escapes_and_paths_agree(call: tuple[str, Callable[[], Any]]) -> None:
    name, fn = call
    TRIED["inputs"] += 1
    results = []
    for path in PATHS:
        dq.set_kernel(path)
        results.append(outcome(fn))
    for path, r in zip(PATHS[1:], results[1:], strict=True):
        assert r == results[0], f"{name}: {path} differs from {PATHS[0]}"


@settings(FUZZ, max_examples=max(CASES // 50, 10))
@given(
    st.integers(2 * 65536, 2 * 65536 + 3000),
    st.integers(0, 3),
    modes(),
    st.integers(0, 2**32 - 1),
)
def test_large_inputs_paths_and_threads_agree(n: int, off: int, mode: Any, seed: int) -> None:
    """Inputs past the parallel threshold: every path and thread count agree."""
    TRIED["inputs"] += 1
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n + off).astype(F32)[off:]
    cols = int(rng.integers(1, 400))
    x2 = x[: n // cols * cols].reshape(-1, cols)
    wq = rng.integers(-128, 128, (16, cols)).astype(np.int8)
    ws = rng.uniform(0.001, 0.1, 16).astype(F32)
    want = None
    for path in PATHS:
        for threads in (1, 2):
            dq.set_kernel(path)
            dq.set_num_threads(threads)
            got = (
                outcome(lambda: dq.quantize_int8(x, mode)),
                outcome(lambda: dq.quantize_int8_per_row(x2, mode)),
                outcome(lambda: dq.w8a8_matmul(x2[:9], wq, ws, act_mode=mode)),
                outcome(lambda: dq.CalibStats.collect([x, x2])),
            )
            if want is None:
                want = got
            assert got == want, (path, threads)
    dq.set_num_threads(0)


def test_report_inputs_tried() -> None:
    """Prints how many inputs the harness tried (run with -s to see it)."""
    print(
        f"\ntest_fuzz: {TRIED['inputs']} inputs, {TRIED['calls']} calls over {len(PATHS)} "
        f"paths, {TRIED['errors']} dq errors"
    )


# ─── a Rust panic is a Python exception, never an abort ─────────────────────


def test_rust_panic_becomes_internal_error() -> None:
    """The glue catches panics: a kernel assertion (clip outside [0, 127],
    which the Python layer never passes) raises dq.InternalError — also when
    the panic happens on a rayon worker thread — and the process goes on."""
    for n in (8, 3 * 65536):  # one thread, then the parallel path
        x = np.ones(n, F32)
        with pytest.raises(dq.InternalError) as info:
            _core.quantize_per_tensor(x, 200.0, None, False)
        assert "clip" in str(info.value) and "please report" in str(info.value)
        assert isinstance(info.value, RuntimeError)
    with pytest.raises(dq.InternalError):
        _core.quantize_per_tensor(np.ones(4, F32), math.nan, None, False)
    # The pool and the process are fine afterwards.
    dq.set_num_threads(2)
    assert dq.quantize_int8(np.ones(3 * 65536, F32)).data[0] == 127
    dq.set_num_threads(0)


def test_rust_panic_in_a_subprocess_is_not_an_abort() -> None:
    code = (
        "import numpy as np, dynquant as dq\n"
        "from dynquant import _core\n"
        "for n in (8, 3 * 65536):\n"
        "    try:\n"
        "        _core.quantize_per_tensor(np.ones(n, np.float32), -1.0, None, False)\n"
        "    except dq.InternalError as e:\n"
        "        print('caught', type(e).__name__)\n"
        "print('alive', dq.quantize_int8([1.0]).data[0])\n"
    )
    env = dict(os.environ, RUST_BACKTRACE="0")
    start = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[:3] == ["caught InternalError"] * 2 + ["alive 127"], r.stdout
    assert time.monotonic() - start < 60
