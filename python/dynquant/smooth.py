"""SmoothQuant: move quantization difficulty from activations to weights."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core
from ._arrays import F32, as_float32, check_finite, check_nan_policy
from .errors import (
    ArgumentTypeError,
    DTypeError,
    FeatureDimMismatchError,
    InvalidAlphaError,
    InvalidArgumentError,
    InvalidEpsilonError,
    ShapeMismatchError,
)

__all__ = [
    "SmoothQuantConfig",
    "compute_smooth_factors",
    "smooth_activations",
    "smooth_weights",
]


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float range: as big as the float inf
        return math.inf if value > 0 else -math.inf


@dataclass(frozen=True, slots=True)
class SmoothQuantConfig:
    """``s_j = (max|A_j| + eps)^alpha / (max|W_j| + eps)^(1 - alpha)``, floored at eps.

    ``alpha`` must be in [0, 1] (``InvalidAlphaError``; the reference clamps
    silently) and ``epsilon`` finite and >= 0 (``InvalidEpsilonError``).
    """

    alpha: float = 0.5
    epsilon: float = 1e-5

    def __post_init__(self) -> None:
        alpha = _real(self.alpha, "alpha")
        if not 0.0 <= alpha <= 1.0 or not 0.0 <= float(np.float32(alpha)) <= 1.0:
            raise InvalidAlphaError(f"invalid alpha {alpha}: must be in [0, 1]", alpha=alpha)
        epsilon = _real(self.epsilon, "epsilon")
        with np.errstate(over="ignore"):
            epsilon32 = float(np.float32(epsilon))  # what the kernels get
        if not (math.isfinite(epsilon32) and epsilon >= 0.0):
            raise InvalidEpsilonError(
                f"invalid epsilon {epsilon}: must be finite and >= 0", epsilon=epsilon
            )
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "epsilon", epsilon)

    @classmethod
    def default_alpha(cls) -> SmoothQuantConfig:
        """The reference's default: alpha 0.5, epsilon 1e-5."""
        return cls(0.5)


def compute_smooth_factors(
    activations: Any,
    weights: Any,
    config: SmoothQuantConfig | None = None,
    *,
    nan_policy: str = "raise",
) -> npt.NDArray[np.float32]:
    """One smoothing factor per input channel, from ``activations [tokens, in]``
    and ``weights [out, in]`` (float32, computed with the reference's f32 ``powf``)."""
    config = SmoothQuantConfig() if config is None else config
    if not isinstance(config, SmoothQuantConfig):
        raise ArgumentTypeError(f"config must be a SmoothQuantConfig, got {config!r}")
    a = as_float32(activations, "activations", ndim=2)
    w = as_float32(weights, "weights", ndim=2)
    if not check_nan_policy(nan_policy):
        check_finite(a, "activations")
        check_finite(w, "weights")
    if a.shape[1] != w.shape[1]:
        raise FeatureDimMismatchError(
            f"activations have {a.shape[1]} input features but weights have {w.shape[1]} "
            f"(activations {a.shape}, weights {w.shape})",
            in_features=a.shape[1],
            sf_len=w.shape[1],
            argument="weights",
        )
    factors: npt.NDArray[np.float32] = _core.smooth_factors(a, w, config.alpha, config.epsilon)
    return factors


def _usable_out(out: Any) -> bool:
    return (
        isinstance(out, np.ndarray)
        and out.dtype == F32
        and out.flags.c_contiguous
        and out.flags.aligned
    )


def _describe_out(out: Any) -> str:
    """What an unusable ``out`` is: its type, dtype or layout, whichever is
    wrong (for the error message)."""
    if not isinstance(out, np.ndarray):
        return type(out).__name__
    if out.dtype != F32:
        return str(out.dtype)
    if not out.flags.c_contiguous:
        order = "Fortran-ordered" if out.flags.f_contiguous else "non-contiguous"
        return f"a {order} float32 array (strides {out.strides})"
    return "a misaligned float32 array"


def _same_view(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> bool:
    """Whether two arrays are the same elements in the same layout."""
    return (
        a.shape == b.shape
        and a.strides == b.strides
        and a.dtype == b.dtype
        and a.ctypes.data == b.ctypes.data
    )


def _apply(
    x: Any,
    factors: Any,
    out: npt.NDArray[np.float32] | None,
    multiply: bool,
    name: str,
    nan_policy: str = "reference",
) -> npt.NDArray[np.float32]:
    f = as_float32(factors, "factors", ndim=1)
    reference = check_nan_policy(nan_policy)
    if out is not None and (
        out is x
        or (isinstance(x, np.ndarray) and isinstance(out, np.ndarray) and _same_view(out, x))
    ):
        if not _usable_out(out):
            raise DTypeError(
                f"in-place smoothing needs a C-contiguous, aligned float32 {name}, got "
                f"{_describe_out(out)}",
                expected="C-contiguous float32",
                actual=_describe_out(out),
            )
        if not out.flags.writeable:
            raise InvalidArgumentError(f"{name} is read-only; it cannot be smoothed in place")
        src, in_place = out, True
    else:
        in_place = False
        src = as_float32(x, name)
        if isinstance(out, np.ndarray) and np.may_share_memory(out, src):
            src = src.copy()  # out overlaps the input in another layout
    if src.ndim not in (1, 2):
        raise ShapeMismatchError(
            f"{name} must be 1-D or 2-D, got shape {src.shape}",
            expected="1-D or 2-D",
            actual=src.shape,
        )
    if isinstance(out, np.ndarray) and np.may_share_memory(out, f):
        f = f.copy()  # out overlaps the factors: read them before writing
    in_features = src.shape[-1]
    if f.shape[0] != in_features:
        raise FeatureDimMismatchError(
            f"{f.shape[0]} smoothing factors for {in_features} input features ({name} {src.shape})",
            in_features=in_features,
            sf_len=f.shape[0],
            argument="factors",
        )
    if not reference:
        check_finite(src, name)
    if in_place:
        _core.smooth_apply_inplace(src, f, multiply)
        return src
    if out is None:
        out = np.empty_like(src)
    elif not _usable_out(out):
        raise DTypeError(
            f"out must be a C-contiguous, aligned float32 array, got {_describe_out(out)}",
            expected="C-contiguous float32",
            actual=_describe_out(out),
        )
    elif out.shape != src.shape:
        raise ShapeMismatchError(
            f"out has shape {out.shape}, {name} has {src.shape}",
            expected=src.shape,
            actual=out.shape,
        )
    elif not out.flags.writeable:
        raise InvalidArgumentError("out is read-only")
    _core.smooth_apply(src, f, multiply, out)
    return out


def smooth_activations(
    activations: Any,
    factors: Any,
    *,
    out: npt.NDArray[np.float32] | None = None,
    nan_policy: str = "raise",
) -> npt.NDArray[np.float32]:
    """``activations / factors`` per input channel (the last axis).

    Returns a new array, or writes into ``out`` (pass the activations
    themselves as ``out`` to smooth in place). ``nan_policy="raise"`` (the
    default) rejects NaN/Inf activations with ``NonFiniteError`` before
    anything is written; ``"reference"`` divides them as IEEE does.
    """
    return _apply(activations, factors, out, False, "activations", nan_policy)


def smooth_weights(
    weights: Any, factors: Any, *, out: npt.NDArray[np.float32] | None = None
) -> npt.NDArray[np.float32]:
    """``weights * factors`` per input channel (the last axis), new array or ``out``."""
    return _apply(weights, factors, out, True, "weights")
