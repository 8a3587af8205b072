"""The dynamic quantizers and the scale they use."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core
from ._arrays import NAN_UNDER_PERCENTILE, as_float32, check_nan_policy, reword_non_finite
from .errors import ArgumentTypeError, NonFiniteError
from .modes import DynQuantFormat, MaxAbs, ScaleMode, percentile_arg
from .tensor import DynQuantTensor

__all__ = [
    "compute_scale",
    "quantize_int4",
    "quantize_int8",
    "quantize_int8_per_row",
]

_MAX_ABS = MaxAbs()


def compute_scale(
    x: Any, clip_val: float, mode: ScaleMode = _MAX_ABS, *, nan_policy: str = "raise"
) -> float:
    """``amax / clip_val`` (float32), where ``amax`` is ``max|x|`` or a
    percentile of ``|x|``; 0.0 for empty input or ``amax == 0``."""
    if isinstance(clip_val, bool) or not isinstance(
        clip_val, (int, float, np.integer, np.floating)
    ):
        raise ArgumentTypeError(f"clip_val must be a number, got {type(clip_val).__name__}")
    try:
        clip = float(clip_val)
    except OverflowError:  # an int beyond float range rounds to inf, as a float would
        clip = math.inf if clip_val > 0 else -math.inf
    a = as_float32(x, "x")
    p = percentile_arg(mode)
    try:
        return float(_core.compute_scale(a, clip, p, check_nan_policy(nan_policy)))
    except NonFiniteError as e:
        raise _reworded(e, nan_policy, p, a) from None


def _reworded(
    e: NonFiniteError, nan_policy: str, p: float | None, a: npt.NDArray[np.float32]
) -> NonFiniteError:
    """The core's error for ``x``, with the hint that fits (NaN has no
    result under a Percentile scale with either policy)."""
    reason = None if p is None else NAN_UNDER_PERCENTILE
    return reword_non_finite(e, "x", nan_policy, reason, (a,))


def _per_tensor(
    x: Any, mode: ScaleMode, nan_policy: str, clip: float, fmt: DynQuantFormat
) -> DynQuantTensor:
    a = as_float32(x, "x")
    # The common case (MaxAbs, raise) skips two helper calls: this path is
    # a large share of the per-call cost on small inputs.
    p = None if mode is _MAX_ABS else percentile_arg(mode)
    reference = False if nan_policy == "raise" else check_nan_policy(nan_policy)
    try:
        q, scales = _core.quantize_per_tensor(a, clip, p, reference)
    except NonFiniteError as e:
        raise _reworded(e, nan_policy, p, a) from None
    return DynQuantTensor._trusted(q, scales, a.shape, fmt)


def quantize_int8(
    x: Any, mode: ScaleMode = _MAX_ABS, *, nan_policy: str = "raise"
) -> DynQuantTensor:
    """Per-tensor int8: one scale ``amax / 127``; ``q = clamp(round(x / s), -127, 127)``
    with round half away from zero. Keeps ``x``'s shape.

    ``nan_policy="raise"`` (default) rejects NaN/Inf with ``NonFiniteError``;
    ``"reference"`` reproduces the reference (NaN → 0, an Inf zeroes all).
    """
    return _per_tensor(x, mode, nan_policy, 127.0, DynQuantFormat.Int8PerTensor)


def quantize_int4(
    x: Any, mode: ScaleMode = _MAX_ABS, *, nan_policy: str = "raise"
) -> DynQuantTensor:
    """Per-tensor int4: one scale ``amax / 7``; values in [-7, 7], one per int8."""
    return _per_tensor(x, mode, nan_policy, 7.0, DynQuantFormat.Int4PerTensor)


def quantize_int8_per_row(
    x: Any, mode: ScaleMode = _MAX_ABS, *, nan_policy: str = "raise"
) -> DynQuantTensor:
    """Per-row int8 of a 2-D ``[rows, cols]`` array: one scale per row.

    A ``(rows, 0)`` array gives empty data and no scales, as the reference.
    """
    a = as_float32(x, "x", ndim=2)
    p = percentile_arg(mode)
    try:
        q, scales = _core.quantize_per_row(a, p, check_nan_policy(nan_policy))
    except NonFiniteError as e:
        raise _reworded(e, nan_policy, p, a) from None
    if a.size == 0:
        scales = scales[:0]
    return DynQuantTensor._trusted(q, scales, a.shape, DynQuantFormat.Int8PerRow)
