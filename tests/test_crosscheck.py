"""Cross-check of the Python API against the reference crate.

The inputs and the outputs of the reference (the ``dynamic_quant`` module of
the Rust crate ``oxibonsai-model`` 0.1.1) come from the ``crosscheck/``
program, which writes them to an ``.npz``. By default this reads the small
committed set ``tests/data/crosscheck_small.npz``; ``make crosscheck``
regenerates the full set and points ``DYNQUANT_CROSSCHECK_FILE`` at it.

Every result must have the reference's bits (int8/int4 data, scales,
dequantized values, compression ratios, compute_scale, smoothing factors,
smoothed arrays, W8A8 outputs, CalibStats min/max/p99/suggested_scale) or
raise the reference's error with the same fields; mean, std_dev and MAE,
which dynquant sums in float64, must be within a relative 1e-3 of the
reference or closer than it to the exact value.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dynquant as dq
import numpy as np
import numpy.typing as npt
import pytest

DEFAULT_FILE = Path(__file__).parent / "data" / "crosscheck_small.npz"
FILE = Path(os.environ.get("DYNQUANT_CROSSCHECK_FILE") or DEFAULT_FILE)

RTOL = 1e-3  # dynquant vs the reference (sequential float32 sums)
RTOL_EXACT = 1e-6  # dynquant vs the exact value, when farther from the reference
DEQ_MAX = 4097  # dequantized values are stored for inputs up to this size

ERR_SHAPE, ERR_EMPTY, ERR_FEATURE = 1, 2, 3

Data = dict[str, npt.NDArray[Any]]


@pytest.fixture(scope="module")
def data() -> Data:
    if not FILE.exists():
        pytest.fail(f"cross-check file {FILE} is missing (make crosscheck writes it)")
    with np.load(FILE) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(params=dq.kernel_info().supported)
def kernel(request: pytest.FixtureRequest) -> Iterator[str]:
    name: str = request.param
    dq.set_kernel(name)
    try:
        yield name
    finally:
        dq.set_kernel("auto")


# ─── helpers ──────────────────────────────────────────────────────────────


def names(d: Data, key: str) -> list[str]:
    raw = d[key]
    return bytes(raw).decode().split("\n") if raw.size else []


def ragged(d: Data, key: str) -> list[npt.NDArray[Any]]:
    values, off = d[key], d[key + "_off"]
    return [values[off[i] : off[i + 1]] for i in range(len(off) - 1)]


def mode_of(code: float) -> dq.ScaleMode:
    return dq.MaxAbs() if math.isnan(code) else dq.Percentile(float(code))


def policy(*arrays: npt.NDArray[Any]) -> str:
    """The reference's NaN/Inf handling where an input is not finite, else
    the default (which must give the same results on finite input)."""
    return "raise" if all(np.isfinite(a).all() for a in arrays) else "reference"


def f32(v: Any) -> npt.NDArray[np.float32]:
    return np.asarray(v, dtype=np.float32)


def fmt(v: Any) -> str:
    x = np.float32(v)
    return f"{float(x)!r} ({int(f32(x).view(np.uint32)):#010x})"


def diff_f32(what: str, ref: Any, got: Any) -> str | None:
    """None when ``got`` has the bits of ``ref``, else where they differ."""
    r, g = f32(ref).reshape(-1), np.asarray(got).reshape(-1)
    if g.dtype != np.float32:
        return f"{what}: dtype {g.dtype}, expected float32"
    if r.shape != g.shape:
        return f"{what}: {g.shape[0]} values, the reference has {r.shape[0]}"
    bad = np.flatnonzero(r.view(np.uint32) != g.view(np.uint32))
    if bad.size == 0:
        return None
    i = int(bad[0])
    return (
        f"{what}[{i}]: reference {fmt(r[i])}, dynquant {fmt(g[i])} ({bad.size} of {r.size} differ)"
    )


def diff_int(what: str, ref: Any, got: Any) -> str | None:
    r, g = np.asarray(ref).reshape(-1), np.asarray(got).reshape(-1)
    if r.shape != g.shape:
        return f"{what}: {g.shape[0]} values, the reference has {r.shape[0]}"
    bad = np.flatnonzero(r.astype(np.int64) != g.astype(np.int64))
    if bad.size == 0:
        return None
    i = int(bad[0])
    return f"{what}[{i}]: reference {r[i]}, dynquant {g[i]} ({bad.size} of {r.size} differ)"


def diff_scalar(what: str, ref: Any, got: float) -> str | None:
    return diff_f32(what, f32([ref]), f32([got]))


def exact_bound(exact: float, magnitude: float) -> float:
    """How far dynquant may be from the exact value: RTOL_EXACT, or one
    float32 spacing at it (for subnormal results)."""
    ulp = float(np.spacing(np.float32(min(abs(exact), 3.4028234663852886e38))))
    return max(RTOL_EXACT * max(abs(exact), magnitude), ulp)


def diff_tol(what: str, ref: float, got: float, exact: float, magnitude: float) -> str | None:
    """The toleranced comparison of mean, std_dev and MAE (as the Rust side)."""
    a, b = float(np.float32(ref)), float(np.float32(got))
    if f32([a]).view(np.uint32)[0] == f32([b]).view(np.uint32)[0]:
        return None
    if not (math.isfinite(a) and math.isfinite(b)):
        if (math.isnan(a) and math.isnan(b)) or a == b:
            return None
        if (
            math.isfinite(b)
            and math.isfinite(exact)
            and abs(b - exact) <= exact_bound(exact, magnitude)
        ):
            return None
        return f"{what}: reference {a!r}, dynquant {b!r} (exact {exact!r})"
    scale = max(abs(a), abs(b), magnitude)
    if abs(a - b) <= RTOL * scale:
        return None
    ea, eb = abs(a - exact), abs(b - exact)
    if eb <= exact_bound(exact, magnitude) and eb < ea:
        return None
    return f"{what}: reference {a!r}, dynquant {b!r}, exact {exact!r}"


def expect_error(code: int, f0: int, f1: int, fn: Any, *args: Any, **kwargs: Any) -> str | None:
    """The reference's error (code, fields) must be raised by ``fn(*args, **kwargs)``."""
    cls = {
        ERR_SHAPE: dq.ShapeMismatchError,
        ERR_EMPTY: dq.EmptyInputError,
        ERR_FEATURE: dq.FeatureDimMismatchError,
    }[code]
    try:
        fn(*args, **kwargs)
    except dq.DynQuantError as e:
        if type(e) is not cls:
            return f"raised {type(e).__name__}({e}), the reference {cls.__name__}"
        if isinstance(e, dq.ShapeMismatchError) and (e.expected, e.actual) != (f0, f1):
            return f"ShapeMismatchError {e.expected}, {e.actual}; the reference {f0}, {f1}"
        if isinstance(e, dq.FeatureDimMismatchError) and (e.in_features, e.sf_len) != (f0, f1):
            return f"FeatureDimMismatchError {e.in_features}, {e.sf_len}; the reference {f0}, {f1}"
        return None
    return f"no error; the reference raises {cls.__name__} ({f0}, {f1})"


class Mismatches:
    """Collects every mismatch of a test, then fails with the first ones."""

    def __init__(self, op: str, kernel: str) -> None:
        self.op, self.kernel = op, kernel
        self.items: list[str] = []
        self.cases = 0

    def add(self, case: str, diff: str | None) -> None:
        if diff is not None:
            self.items.append(f"[{case}] {diff}")

    def done(self) -> None:
        print(f"\ncrosscheck (python, kernel {self.kernel}): {self.op} {self.cases} cases", end="")
        if self.items:
            shown = "\n  ".join(self.items[:25])
            pytest.fail(
                f"{len(self.items)} mismatches with the reference in {self.op} "
                f"(kernel {self.kernel}, file {FILE}):\n  {shown}",
                pytrace=False,
            )


def check_tensor(
    m: Mismatches,
    case: str,
    t: dq.DynQuantTensor,
    q: npt.NDArray[np.int8],
    scales: npt.NDArray[np.float32],
    deq: npt.NDArray[np.float32] | None,
    ratio: float,
) -> None:
    m.add(case, diff_int("data", q, t.data))
    m.add(case, diff_f32("scales", scales, t.scales))
    if deq is not None:
        m.add(case, diff_f32("dequantize", deq, t.dequantize()))
    m.add(case, diff_scalar("compression_ratio", ratio, t.compression_ratio()))
    if t.memory_bytes() != q.size + 4 * scales.size or t.element_count() != q.size:
        m.add(case, f"memory_bytes {t.memory_bytes()} / element_count {t.element_count()}")


# ─── the operations ───────────────────────────────────────────────────────


def test_per_tensor(data: Data, kernel: str) -> None:
    m = Mismatches("quantize_int8/int4, compute_scale, tensor methods, MAE", kernel)
    d = data
    xs, q8s, q4s = ragged(d, "pt.x"), ragged(d, "pt.q8"), ragged(d, "pt.q4")
    deq8s, deq4s = ragged(d, "pt.deq8"), ragged(d, "pt.deq4")
    clips = d["pt.clips"]
    for i, case in enumerate(names(d, "pt.names")):
        x, mode = xs[i], mode_of(d["pt.mode"][i])
        pol = policy(x)
        small = x.size <= DEQ_MAX
        t8 = dq.quantize_int8(x, mode, nan_policy=pol)
        t4 = dq.quantize_int4(x, mode, nan_policy=pol)
        for t, q, s, deq, ratio, fmt_ in [
            (t8, q8s[i], d["pt.s8"][i : i + 1], deq8s[i], d["pt.ratio8"][i], "Int8PerTensor"),
            (t4, q4s[i], d["pt.s4"][i : i + 1], deq4s[i], d["pt.ratio4"][i], "Int4PerTensor"),
        ]:
            check_tensor(m, case, t, q, s, deq if small else None, ratio)
            if t.shape != x.shape or t.format.name != fmt_:
                m.add(case, f"shape {t.shape} / format {t.format}")
        for j, clip in enumerate(clips):
            if math.isnan(d["pt.scales"][i, j]):  # not computed for very large inputs
                continue
            got = dq.compute_scale(x, float(clip), mode, nan_policy=pol)
            m.add(case, diff_scalar(f"compute_scale(clip {clip})", d["pt.scales"][i, j], got))
        half = x[: x.size // 2]
        for j, (orig, t) in enumerate([(x, t8), (x, t4), (half, t8)]):
            got = dq.quantization_mae(orig, t)
            ex = float(d["pt.mae_exact"][i, j])
            m.add(case, diff_tol(f"mae[{j}]", d["pt.mae"][i, j], got, ex, abs(ex)))
        # The Python layer's conversions: another shape, a strided view and
        # float64 input give the same bits.
        if small and x.size >= 2 and x.size % 2 == 0:
            t = dq.quantize_int8(x.reshape(2, -1), mode, nan_policy=pol)
            m.add(case, diff_int("2-D data", q8s[i], t.data))
            m.add(case, diff_f32("2-D scales", d["pt.s8"][i : i + 1], t.scales))
        if small:
            strided = np.zeros(2 * x.size, np.float32)[::2]
            strided[:] = x
            t = dq.quantize_int8(strided, mode, nan_policy=pol)
            m.add(case, diff_int("strided data", q8s[i], t.data))
            if pol == "raise":  # NaN payloads need not survive float64
                t = dq.quantize_int4(x.astype(np.float64), mode)
                m.add(case, diff_int("float64 data", q4s[i], t.data))
        m.cases += 1
    m.done()


def test_per_row(data: Data, kernel: str) -> None:
    m = Mismatches("quantize_int8_per_row", kernel)
    d = data
    xs, qs, ss, deqs = (
        ragged(d, "pr.x"),
        ragged(d, "pr.q"),
        ragged(d, "pr.scales"),
        ragged(d, "pr.deq"),
    )
    for i, case in enumerate(names(d, "pr.names")):
        rows, cols = (int(v) for v in d["pr.shape"][i])
        x = xs[i].reshape(rows, cols)
        pol = policy(x)
        t = dq.quantize_int8_per_row(x, mode_of(d["pr.mode"][i]), nan_policy=pol)
        deq = deqs[i] if x.size <= DEQ_MAX else None
        check_tensor(m, case, t, qs[i], ss[i], deq, d["pr.ratio"][i])
        if t.shape != (rows, cols) or t.format is not dq.DynQuantFormat.Int8PerRow:
            m.add(case, f"shape {t.shape} / format {t.format}")
        ex = float(d["pr.mae_exact"][i])
        m.add(case, diff_tol("mae", d["pr.mae"][i], dq.quantization_mae(x, t), ex, abs(ex)))
        m.cases += 1
    m.done()


def this_platform() -> str:
    """``arch-os-libc`` as the crosscheck program writes it."""
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(
        platform.machine().lower(), platform.machine().lower()
    )
    os_name = {"darwin": "macos", "win32": "windows"}.get(sys.platform, sys.platform)
    libc = platform.libc_ver()[0]
    return f"{arch}-{os_name}-{libc if libc in ('glibc', 'musl') else 'other'}"


def test_smooth_factors(data: Data, kernel: str) -> None:
    written_on = bytes(data["meta.platform"]).decode()
    if written_on != this_platform():
        pytest.skip(
            f"smoothing factors use the platform's powf; {FILE.name} was written on "
            f"{written_on}, this is {this_platform()} (regenerate it with crosscheck/)"
        )
    m = Mismatches("compute_smooth_factors", kernel)
    d = data
    acts, ws, fs = ragged(d, "sf.act"), ragged(d, "sf.w"), ragged(d, "sf.factors")
    for i, case in enumerate(names(d, "sf.names")):
        tokens, out, inf = (int(v) for v in d["sf.shape"][i])
        alpha, eps = (float(v) for v in d["sf.config"][i])
        a, w = acts[i].reshape(tokens, inf), ws[i].reshape(out, inf)
        config = dq.SmoothQuantConfig(alpha=alpha, epsilon=eps)
        got = dq.compute_smooth_factors(a, w, config, nan_policy=policy(a))
        m.add(case, diff_f32("factors", fs[i], got))
        m.cases += 1
    m.done()


def test_smooth_default_config(data: Data) -> None:
    """``SmoothQuantConfig.default_alpha()`` is the reference's, as the
    float32 values the kernels see."""
    c = dq.SmoothQuantConfig.default_alpha()
    m = Mismatches("SmoothQuantConfig.default_alpha", "-")
    m.add(
        "default_alpha()",
        diff_f32("(alpha, epsilon)", data["sf.default_config"], f32([c.alpha, c.epsilon])),
    )
    m.cases += 1
    m.done()


def smooth_ref(x: Any, f: Any, **kwargs: Any) -> Any:
    """smooth_activations with the reference's IEEE division of NaN/Inf
    (dynquant's default raises on non-finite activations, SPEC 1)."""
    return dq.smooth_activations(x, f, nan_policy="reference", **kwargs)


def test_smooth_apply(data: Data, kernel: str) -> None:
    m = Mismatches("smooth_activations/smooth_weights", kernel)
    d = data
    datas, fs, divs, muls = (ragged(d, k) for k in ("ap.data", "ap.factors", "ap.div", "ap.mul"))
    for i, case in enumerate(names(d, "ap.names")):
        rows, inf = (int(v) for v in d["ap.shape"][i])
        x, f = datas[i].reshape(rows, inf), fs[i]
        code, f0, f1 = (int(v) for v in d["ap.err"][i])
        if code:
            m.add(case, expect_error(code, f0, f1, smooth_ref, x, f))
            m.add(case, expect_error(code, f0, f1, dq.smooth_weights, x, f))
        else:
            m.add(case, diff_f32("smooth_activations", divs[i], smooth_ref(x, f)))
            m.add(case, diff_f32("smooth_weights", muls[i], dq.smooth_weights(x, f)))
            out = np.empty_like(x)
            smooth_ref(x, f, out=out)
            m.add(case, diff_f32("smooth_activations(out=)", divs[i], out))
            inplace = x.copy()
            dq.smooth_weights(inplace, f, out=inplace)
            m.add(case, diff_f32("smooth_weights(in place)", muls[i], inplace))
        m.cases += 1
    m.done()


def test_w8a8_matvec(data: Data, kernel: str) -> None:
    m = Mismatches("w8a8_matvec", kernel)
    d = data
    ws, ss, acts, ys = (ragged(d, k) for k in ("mv.w", "mv.scales", "mv.act", "mv.y"))
    for i, case in enumerate(names(d, "mv.names")):
        out, inn = (int(v) for v in d["mv.shape"][i])
        w, s, a = ws[i].reshape(out, inn), ss[i], acts[i]
        code, f0, f1 = (int(v) for v in d["mv.err"][i])
        pol = policy(a)
        if code:
            m.add(case, expect_error(code, f0, f1, dq.w8a8_matvec, w, s, a, nan_policy=pol))
        else:
            m.add(case, diff_f32("y", ys[i], dq.w8a8_matvec(w, s, a, nan_policy=pol)))
        m.cases += 1
    m.done()


def test_calib_stats(data: Data, kernel: str) -> None:
    m = Mismatches("CalibStats.collect", kernel)
    d = data
    batches, off = ragged(d, "cs.batches"), d["cs.case_batches_off"]
    for i, case in enumerate(names(d, "cs.names")):
        bs = batches[off[i] : off[i + 1]]
        s = dq.CalibStats.collect(bs, nan_policy=policy(*bs) if bs else "raise")
        ref = d["cs.stats"][i]
        mean, std, mag = (float(v) for v in d["cs.exact"][i])
        for j, field in [(0, "min"), (1, "max"), (4, "p99"), (5, "suggested_scale")]:
            m.add(case, diff_scalar(field, ref[j], getattr(s, field)))
        m.add(case, diff_tol("mean", ref[2], s.mean, mean, mag))
        m.add(case, diff_tol("std_dev", ref[3], s.std_dev, std, mag))
        m.cases += 1
    m.done()


def test_file_has_every_operation(data: Data) -> None:
    """The file is not empty or truncated: every group has cases."""
    for group in ("pt", "pr", "sf", "ap", "mv", "cs"):
        assert len(names(data, f"{group}.names")) > 0, group
