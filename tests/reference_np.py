"""An independent NumPy model of SPEC §1 (the reference semantics).

Written from the SPEC, not from dynquant's Rust code, so that the tests
compare dynquant with something that could disagree with it. Everything is
float32 arithmetic unless a comment says otherwise; integer sums are int64.

Functions take already-converted float32 / int8 NumPy arrays; they mirror the
reference's behaviour, including its handling of NaN and infinities (the
"reference" NaN policy), except where the reference panics (a NaN under
``Percentile``), where they raise ``ReferencePanic``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F32 = np.float32
F32Array = npt.NDArray[np.float32]
I8Array = npt.NDArray[np.int8]


class ReferencePanic(Exception):
    """Where the reference has no result (its sort panics on NaN)."""


def f32(x: float) -> np.float32:
    return np.float32(x)


def round_half_away(q: F32Array) -> F32Array:
    """Rust's ``f32::round`` (half away from zero) on a float32 array.

    ``q - trunc(q)`` is exact in float32 (both share the exponent range), so
    the comparison with 0.5 sees the true fraction. ``trunc(q + 0.5)`` would
    be wrong for 0.49999997 (q + 0.5 rounds up to 1.0).
    """
    q = np.asarray(q, dtype=F32)
    t = np.trunc(q)
    with np.errstate(invalid="ignore"):
        frac = np.abs(q - t)
        up = frac >= F32(0.5)
    r = t + np.where(up, np.sign(q), F32(0)).astype(F32)
    return r.astype(F32)


def _to_int(r: F32Array, clip: float) -> I8Array:
    """``clamp(r, -clip, clip) as i8`` with Rust's saturating cast (NaN → 0)."""
    r = np.where(np.isnan(r), F32(0), r)
    return np.clip(r, -clip, clip).astype(np.int8)


def percentile_index(p: float, n: int) -> int:
    """``ceil(p * (n as f32)) - 1`` in float32, saturating at 0, capped at n - 1."""
    p32 = F32(p)
    if math.isnan(float(p32)):
        p32 = F32(0)  # f32::clamp keeps NaN; `NaN as usize` is 0 — same index
    p32 = min(max(p32, F32(0)), F32(1))
    prod = F32(p32 * F32(n))  # n rounds to float32 first, as `n as f32`
    k = math.ceil(float(prod))
    return min(max(k - 1, 0), max(n - 1, 0))


def amax_of(x: F32Array, clip: float, percentile: float | None) -> np.float32:
    """``max |x|`` (NaN skipped, as ``f32::max``) or the percentile element."""
    a = np.abs(np.asarray(x, dtype=F32).reshape(-1))
    if percentile is None:
        finite_or_inf = a[~np.isnan(a)]
        return F32(finite_or_inf.max()) if finite_or_inf.size else F32(0)
    if np.isnan(a).any():
        raise ReferencePanic("partial_cmp on NaN in the reference's sort")
    s = np.sort(a, kind="stable")
    return F32(s[percentile_index(percentile, s.size)])


def compute_scale(x: F32Array, clip: float, percentile: float | None = None) -> np.float32:
    """SPEC: 0 for empty input, 0 when amax == 0, else ``amax / clip`` (one f32 division)."""
    x = np.asarray(x, dtype=F32)
    if x.size == 0:
        return F32(0)
    amax = amax_of(x, clip, percentile)
    if amax == 0:
        return F32(0)
    with np.errstate(over="ignore", under="ignore"):
        return F32(amax / F32(clip))


def quantize_with_scale(x: F32Array, scale: np.float32, clip: float) -> I8Array:
    """``clamp(round(x / s), -clip, clip)`` with a true f32 division; scale 0 → zeros."""
    x = np.asarray(x, dtype=F32)
    if scale == 0:
        return np.zeros(x.shape, dtype=np.int8)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        q = (x / F32(scale)).astype(F32)
    return _to_int(round_half_away(q), clip)


def quantize_per_tensor(
    x: F32Array, clip: float, percentile: float | None = None
) -> tuple[I8Array, np.float32]:
    """(q with x's shape, scale). Empty input: empty q and scale 0."""
    x = np.asarray(x, dtype=F32)
    s = compute_scale(x, clip, percentile)
    return quantize_with_scale(x, s, clip), s


def quantize_int8(x: F32Array, percentile: float | None = None) -> tuple[I8Array, np.float32]:
    return quantize_per_tensor(x, 127.0, percentile)


def quantize_int4(x: F32Array, percentile: float | None = None) -> tuple[I8Array, np.float32]:
    return quantize_per_tensor(x, 7.0, percentile)


def quantize_int8_per_row(x: F32Array, percentile: float | None = None) -> tuple[I8Array, F32Array]:
    """(q [rows, cols], scales [rows]); a zero-size input gives no scales."""
    x = np.asarray(x, dtype=F32)
    assert x.ndim == 2
    rows = x.shape[0]
    if x.size == 0:
        return np.zeros(x.shape, dtype=np.int8), np.zeros(0, dtype=F32)
    q = np.zeros(x.shape, dtype=np.int8)
    scales = np.zeros(rows, dtype=F32)
    for r in range(rows):
        q[r], scales[r] = quantize_per_tensor(x[r], 127.0, percentile)
    return q, scales


def dequantize_per_tensor(q: I8Array, scale: np.float32) -> F32Array:
    with np.errstate(over="ignore"):  # 7 * (3.4e38 / 7) may round past f32 max
        return (q.astype(F32) * F32(scale)).astype(F32)


def dequantize_per_row(q: I8Array, scales: F32Array) -> F32Array:
    if q.size == 0:
        return np.zeros(q.shape, dtype=F32)
    with np.errstate(over="ignore"):
        return (q.astype(F32) * scales.astype(F32)[:, None]).astype(F32)


def memory_bytes(n_data: int, n_scales: int) -> int:
    return n_data + 4 * n_scales


def compression_ratio(n_data: int, n_scales: int) -> float:
    mem = memory_bytes(n_data, n_scales)
    if mem == 0:
        return 1.0
    return float(F32(F32(4 * n_data) / F32(mem)))


def mae(original: F32Array, dequantized: F32Array) -> float:
    """Mean |original - dequantized| over the common flat length (differences
    in f32, the sum in float64); 0.0 when that length is 0."""
    o = np.asarray(original, dtype=F32).reshape(-1)
    d = np.asarray(dequantized, dtype=F32).reshape(-1)
    n = min(o.size, d.size)
    if n == 0:
        return 0.0
    diff = np.abs((o[:n] - d[:n]).astype(F32)).astype(np.float64)
    return float(diff.sum() / n)


def column_abs_max(m: F32Array) -> F32Array:
    """Per-column max |x| over rows, NaN skipped (the reference's ``v > slot``)."""
    a = np.abs(np.asarray(m, dtype=F32))
    a = np.where(np.isnan(a), F32(0), a)
    if a.shape[0] == 0:
        return np.zeros(a.shape[1], dtype=F32)
    return a.max(axis=0).astype(F32)


def smooth_factors(
    activations: F32Array, weights: F32Array, alpha: float, epsilon: float, powf=None
) -> F32Array:
    """``s_j = max((a_j + eps)^alpha / (w_j + eps)^(1 - alpha), eps)`` in f32.

    ``powf(base_array, exponent_f32)`` defaults to ``np.power`` on float32,
    which may differ from glibc's ``powf`` in the last bit (see the tests);
    pass a libm ``powf`` to get the reference's bits.
    """
    alpha32 = min(max(F32(alpha), F32(0)), F32(1))
    eps = max(F32(epsilon), F32(1e-10))
    a = column_abs_max(activations)
    w = column_abs_max(weights)
    if powf is None:

        def powf(b: F32Array, e: np.float32) -> F32Array:
            return np.power(b, e).astype(F32)

    num = powf((a + eps).astype(F32), alpha32)
    den = powf((w + eps).astype(F32), F32(F32(1) - alpha32))
    return np.maximum((num / den).astype(F32), eps).astype(F32)


def smooth_activations(a: F32Array, factors: F32Array) -> F32Array:
    return (np.asarray(a, dtype=F32) / factors.astype(F32)).astype(F32)


def smooth_weights(w: F32Array, factors: F32Array) -> F32Array:
    return (np.asarray(w, dtype=F32) * factors.astype(F32)).astype(F32)


def acc_to_f32(acc: npt.NDArray[np.int64]) -> F32Array:
    """``acc as f32`` (round to nearest even, once). Through float64 this is
    exact for |acc| < 2^53, so the only rounding is float64 → float32."""
    acc = np.asarray(acc, dtype=np.int64)
    assert np.all(np.abs(acc) < 2**53)
    return acc.astype(np.float64).astype(F32)


def w8a8_matvec(w: I8Array, ws: F32Array, activation: F32Array) -> F32Array:
    """``(acc as f32 * ws[o]) * act_scale`` with acc an exact int64 sum."""
    q, act_scale = quantize_int8(activation)
    acc = w.astype(np.int64) @ q.astype(np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        return ((acc_to_f32(acc) * ws.astype(F32)).astype(F32) * F32(act_scale)).astype(F32)


@dataclass(frozen=True)
class Calib:
    min: float
    max: float
    mean: float
    std_dev: float
    p99: float
    suggested_scale: float


def calib_collect(batches: list[F32Array]) -> Calib:
    flat = [np.asarray(b, dtype=F32).reshape(-1) for b in batches]
    x = np.concatenate(flat) if flat else np.zeros(0, dtype=F32)
    if x.size == 0:
        return Calib(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    a = np.abs(x)
    if np.isnan(x).any():
        raise ReferencePanic("NaN in the p99 sort")
    p99 = F32(np.sort(a)[percentile_index(0.99, x.size)])
    amax = F32(a.max())
    if p99 > 0:
        scale = F32(p99 / F32(127))
    elif amax > 0:
        scale = F32(amax / F32(127))
    else:
        scale = F32(F32(1) / F32(127))
    x64 = x.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        mean = x64.mean()
        std = np.sqrt(((x64 - mean) ** 2).mean())
    return Calib(
        float(x.min()),
        float(x.max()),
        float(F32(mean)),
        float(F32(std)),
        float(p99),
        float(scale),
    )


def quantize_weights_rows(w: F32Array) -> tuple[I8Array, F32Array]:
    """Symmetric int8 weights per output row: ``scale = max|row| / 127``,
    ``q = clamp(round_half_away(w / scale), -127, 127)`` (zeros for scale 0)."""
    w = np.asarray(w, dtype=F32)
    q = np.zeros(w.shape, dtype=np.int8)
    s = np.zeros(w.shape[0], dtype=F32)
    for o in range(w.shape[0]):
        q[o], s[o] = quantize_per_tensor(w[o], 127.0)
    return q, s


# erf(z) = z * P(z^2) / Q(z^2) on [-4, 4]: the float32 rational approximation
# of Eigen / XLA, as the decimal constants are written there.
_ERF_P = (
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
)
_ERF_Q = (
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
)


def gelu_erf(x: F32Array) -> F32Array:
    """BERT's erf GELU in float32 NumPy passes, each rounded as the definition
    says: z = clip(x / sqrt 2, -4, 4), Horner in z^2 (multiply, then add),
    erf = p * z / q, result ((erf + 1) * x) * 0.5."""
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(all="ignore"):
        z = np.clip(x * np.float32(1.0 / math.sqrt(2.0)), np.float32(-4.0), np.float32(4.0))
        z2 = z * z
        p = np.full_like(z2, np.float32(_ERF_P[0]))
        for c in _ERF_P[1:]:
            p = p * z2 + np.float32(c)
        q = np.full_like(z2, np.float32(_ERF_Q[0]))
        for c in _ERF_Q[1:]:
            q = q * z2 + np.float32(c)
        erf = p * z / q
        return ((erf + np.float32(1.0)) * x) * np.float32(0.5)


def layer_norm(
    x: F32Array, gamma: F32Array, beta: F32Array, eps: float, residual: F32Array | None = None
) -> F32Array:
    """BERT's LayerNorm in float32 NumPy passes (population variance), after
    ``x + residual`` when given."""
    with np.errstate(all="ignore"):  # inf + -inf, inf - inf: NaN, as the core's
        v = np.array(x, dtype=np.float32) if residual is None else x + residual
        centred = v - v.mean(axis=-1, keepdims=True)
        var = np.mean(np.square(centred), axis=-1, keepdims=True)
        centred /= np.sqrt(var + np.float32(eps))
        centred *= gamma
        centred += beta
    return centred
