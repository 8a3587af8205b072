"""W8A8 and W4A8 products of quantized weights and dynamically quantized
activations."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core
from ._arrays import (
    NAN_UNDER_PERCENTILE,
    as_float32,
    as_int8,
    check_bool,
    check_nan_policy,
    non_finite_error,
    reword_non_finite,
)
from .errors import (
    DTypeError,
    EmptyInputError,
    InvalidArgumentError,
    NonFiniteError,
    ShapeMismatchError,
)
from .modes import MaxAbs, ScaleMode, percentile_arg

__all__ = ["w4a8_matmul", "w4a8_matvec", "w8a8_matmul", "w8a8_matvec"]

_MAX_ABS = MaxAbs()


def _check_row_scales(s: npt.NDArray[np.float32], w: npt.NDArray[np.int8]) -> None:
    """One weight scale per row of ``w``, or a ShapeMismatchError naming both."""
    if s.shape[0] != w.shape[0]:
        raise ShapeMismatchError(
            f"weight_scales has {s.shape[0]} values for {w.shape[0]} weight rows",
            expected=w.shape[0],
            actual=s.shape[0],
        )


def w8a8_matvec(
    weight_i8: Any, weight_scales: Any, activation: Any, *, nan_policy: str = "raise"
) -> npt.NDArray[np.float32]:
    """``y[o] = (sum_j w[o, j] * q[j]) * weight_scales[o] * act_scale``.

    ``weight_i8`` is ``[out, in]`` int8 (any value, -128 included),
    ``weight_scales`` ``[out]``, ``activation`` ``[in]``, quantized per tensor
    with MaxAbs. The integer sum is exact at any size.
    """
    w = as_int8(weight_i8, "weight_i8", ndim=2)
    s = as_float32(weight_scales, "weight_scales", ndim=1)
    a = as_float32(activation, "activation", ndim=1)
    # The reference's checks, in its order, with messages that name the
    # argument (the core's say only "expected N, got M").
    if a.shape[0] == 0:
        raise EmptyInputError("activation is empty: w8a8_matvec needs at least one value")
    if a.shape[0] != w.shape[1]:
        raise ShapeMismatchError(
            f"activation has {a.shape[0]} values, but weight_i8 is {w.shape}: "
            f"activation must be [{w.shape[1]}]",
            expected=w.shape[1],
            actual=a.shape[0],
        )
    _check_row_scales(s, w)
    try:
        y: npt.NDArray[np.float32] = _core.w8a8_matvec(w, s, a, check_nan_policy(nan_policy))
    except NonFiniteError as e:
        raise reword_non_finite(e, "activation", nan_policy) from None
    return y


def _tokens(x: Any) -> tuple[npt.NDArray[np.float32], tuple[int, ...]]:
    a = as_float32(x, "x")
    if a.ndim == 0:
        raise ShapeMismatchError(
            "x must have at least one axis [..., in]", expected="[..., in]", actual=a.shape
        )
    # Not reshape(-1, k): -1 is ambiguous when k == 0.
    return a.reshape(math.prod(a.shape[:-1]), a.shape[-1]), a.shape[:-1]


def _reworded(
    e: NonFiniteError, nan_policy: str, p: float | None, x2: npt.NDArray[np.float32]
) -> NonFiniteError:
    """The core's error for the tokens ``x``, with the hint that fits (NaN
    has no result under a Percentile scale with either policy)."""
    reason = None if p is None else NAN_UNDER_PERCENTILE
    return reword_non_finite(e, "x", nan_policy, reason, (x2,))


def _bias(bias: Any, out_features: int) -> npt.NDArray[np.float32] | None:
    if bias is None:
        return None
    b = as_float32(bias, "bias", ndim=1)
    if b.shape[0] != out_features:
        raise ShapeMismatchError(
            f"bias has {b.shape[0]} values for {out_features} outputs",
            expected=out_features,
            actual=b.shape[0],
        )
    return b


def w8a8_matmul(
    x: Any,
    weight_i8: Any,
    weight_scales: Any,
    *,
    per_token: bool = True,
    bias: Any = None,
    act_mode: ScaleMode = _MAX_ABS,
    nan_policy: str = "raise",
) -> npt.NDArray[np.float32]:
    """Batched W8A8: ``x [..., in]`` times int8 ``weight_i8 [out, in]`` → ``[..., out]``.

    ``weight_i8`` may also be ``dq.pack_weights_int8(weight_i8)``: the same
    bits, faster from a few tokens on AVX-512 VNNI CPUs.

    Activations are quantized per token (one scale per row of ``x``, the
    default — each token's result equals ``w8a8_matvec`` on it, bit for bit)
    or per tensor (``per_token=False``, the reference's rule); the integer
    accumulation is exact; ``y = (acc * weight_scales[o]) * act_scale (+ bias)``.
    NaN/Inf in ``weight_scales`` or ``bias`` raise ``NonFiniteError`` naming
    the argument (``w8a8_matvec`` passes such scales through, as the reference).
    """
    per_token = check_bool(per_token, "per_token")
    x2, lead = _tokens(x)
    packed = isinstance(weight_i8, _core.PackedInt8Weights)
    w: Any = weight_i8 if packed else as_int8(weight_i8, "weight_i8", ndim=2)
    shape: tuple[int, int] = tuple(w.shape)
    s = as_float32(weight_scales, "weight_scales", ndim=1)
    if x2.shape[1] != shape[1]:
        raise ShapeMismatchError(
            f"x has {x2.shape[1]} features (last axis of shape {tuple(lead) + x2.shape[1:]}), "
            f"but weight_i8 is {shape}: x must be [..., {shape[1]}]",
            expected=shape[1],
            actual=x2.shape[1],
        )
    _check_row_scales(s, w)
    p = percentile_arg(act_mode, "act_mode")
    matmul = _core.w8a8_matmul_packed if packed else _core.w8a8_matmul
    try:
        y = matmul(x2, w, s, _bias(bias, shape[0]), per_token, p, check_nan_policy(nan_policy))
    except NonFiniteError as e:
        raise _reworded(e, nan_policy, p, x2) from None
    out: npt.NDArray[np.float32] = y.reshape(*lead, shape[0])
    return out


def w4a8_matmul(
    x: Any,
    packed: Any,
    scales: Any,
    *,
    group_size: int | None = None,
    per_token: bool = True,
    bias: Any = None,
    act_mode: ScaleMode = _MAX_ABS,
    nan_policy: str = "raise",
) -> npt.NDArray[np.float32]:
    """Batched W4A8 on packed int4 weights (see ``dynquant.weights`` for the
    layout) with scales ``[out, groups]``: ``x [..., in]`` → ``[..., out]``.

    Per weight row and token, each group's exact integer dot product times its
    group scale is added in float32, in group order, into one of eight lanes
    (lane ``g % 8`` for group ``g``); the lanes are summed in a fixed order
    (``((y0 + y4) + (y2 + y6)) + ((y1 + y5) + (y3 + y7))``) and the token
    scale multiplies last. With ``group_size=None`` (one scale per row) this
    equals ``w8a8_matmul`` on the unpacked weights, bit for bit. NaN/Inf in
    ``scales`` or ``bias`` raise ``NonFiniteError`` naming the argument.
    """
    per_token = check_bool(per_token, "per_token")
    x2, lead = _tokens(x)
    k = x2.shape[1]
    p = np.asarray(packed)
    if p.dtype != np.uint8 or p.ndim != 2:
        raise DTypeError(
            f"packed must be 2-D uint8 (from dq.quantize_weights_int4), got {p.ndim}-D {p.dtype}",
            expected="2-D uint8",
            actual=f"{p.ndim}-D {p.dtype}",
        )
    if p.shape[1] != (k + 1) // 2:
        raise ShapeMismatchError(
            f"packed weights have {p.shape[1]} bytes per row; x has {k} features, "
            f"which pack into {(k + 1) // 2}",
            expected=(k + 1) // 2,
            actual=p.shape[1],
        )
    group = max(k, 1) if group_size is None else group_size
    if isinstance(group, bool) or not isinstance(group, (int, np.integer)) or group <= 0:
        raise InvalidArgumentError(f"group_size must be None or a positive int, got {group_size!r}")
    group = int(group)
    s = as_float32(scales, "scales", ndim=2)
    groups = -(-k // group) if k else 0
    if s.shape != (p.shape[0], groups):
        raise ShapeMismatchError(
            f"scales must have shape {(p.shape[0], groups)} for {p.shape[0]} rows in groups of "
            f"{group}, got {s.shape}",
            expected=(p.shape[0], groups),
            actual=s.shape,
        )
    pct = percentile_arg(act_mode, "act_mode")
    try:
        y = _core.w4a8_matmul(
            x2,
            np.ascontiguousarray(p),
            s,
            k,
            min(group, 2**62),  # any group >= in is one group; fits usize
            _bias(bias, p.shape[0]),
            per_token,
            pct,
            check_nan_policy(nan_policy),
        )
    except NonFiniteError as e:
        raise _reworded(e, nan_policy, pct, x2) from None
    out: npt.NDArray[np.float32] = y.reshape(*lead, p.shape[0])
    return out


def _w4a8_matmul_held(
    x: npt.NDArray[np.float32],
    held: _core.PackedInt4Weights,
    *,
    per_token: bool,
    bias: npt.NDArray[np.float32] | None,
    act_mode: ScaleMode,
    nan_policy: str,
) -> npt.NDArray[np.float32]:
    """``w4a8_matmul`` on int4 weights regrouped into 16-row panels (what
    ``QuantizedLinear(bits=4)`` holds on AVX-512 VNNI CPUs): the same bits.
    ``x`` is float32 ``[..., in]`` with ``in`` checked by the caller."""
    x2, lead = _tokens(x)
    pct = percentile_arg(act_mode, "act_mode")
    try:
        y = _core.w4a8_matmul_packed(x2, held, bias, per_token, pct, check_nan_policy(nan_policy))
    except NonFiniteError as e:
        raise _reworded(e, nan_policy, pct, x2) from None
    out: npt.NDArray[np.float32] = y.reshape(*lead, held.shape[0])
    return out


def w4a8_matvec(
    packed: Any,
    scales: Any,
    activation: Any,
    *,
    group_size: int | None = None,
    nan_policy: str = "raise",
) -> npt.NDArray[np.float32]:
    """W4A8 matrix-vector product of one ``activation [in]`` (per-tensor scale)."""
    a = as_float32(activation, "activation", ndim=1)
    try:
        return w4a8_matmul(
            a, packed, scales, group_size=group_size, per_token=True, nan_policy=nan_policy
        )
    except NonFiniteError as e:
        if e.argument != "x":
            raise
        raise non_finite_error(e.index, e.value, "activation", nan_policy) from None
