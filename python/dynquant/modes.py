"""Scale modes (how a scale is chosen) and quantized formats."""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from .errors import ArgumentTypeError, InvalidPercentileError

__all__ = ["DynQuantFormat", "MaxAbs", "Percentile", "ScaleMode"]


@dataclass(frozen=True, slots=True)
class MaxAbs:
    """Scale from the largest magnitude: ``scale = max|x| / clip``."""


@dataclass(frozen=True, slots=True)
class Percentile:
    """Scale from a percentile of ``|x|`` (robust to outliers).

    ``p`` is rounded to float32 (as the Rust core sees it) and must then lie
    in (0, 1]; the reference clamps silently, dynquant raises
    ``InvalidPercentileError``.
    """

    p: float

    def __post_init__(self) -> None:
        p = self.p
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
            raise InvalidPercentileError(
                f"Percentile(p) needs a real number in (0, 1], got {type(p).__name__} {p!r}",
                p=p,
            )
        p32 = float(np.float32(p))
        if math.isnan(p32) or not 0.0 < p32 <= 1.0:
            raise InvalidPercentileError(
                f"Percentile(p) needs p in (0, 1] (after rounding to float32), got {p!r}",
                p=float(p),
            )
        object.__setattr__(self, "p", float(p))

    @property
    def p_f32(self) -> float:
        """``p`` as the float32 the kernels use."""
        return float(np.float32(self.p))


ScaleMode = MaxAbs | Percentile


class DynQuantFormat(enum.Enum):
    """Layout of a ``DynQuantTensor`` (the reference's three formats)."""

    Int8PerTensor = 0
    """One scale for the whole tensor; values in [-127, 127]."""
    Int8PerRow = 1
    """One scale per row of a 2-D tensor; values in [-127, 127]."""
    Int4PerTensor = 2
    """One scale; values in [-7, 7], one per int8 (as the reference)."""

    def __repr__(self) -> str:
        return f"DynQuantFormat.{self.name}"


def percentile_arg(mode: ScaleMode, name: str = "mode") -> float | None:
    """The core's encoding of a mode: None for MaxAbs, else p as float32
    (``name`` is the argument's name in the error)."""
    if type(mode) is MaxAbs:
        return None
    if type(mode) is Percentile:
        p = getattr(mode, "p", None)  # None when built without __init__
        if not isinstance(p, float):
            raise InvalidPercentileError(f"Percentile without a valid p: {p!r}", p=p)
        return mode.p_f32
    raise ArgumentTypeError(f"{name} must be dq.MaxAbs() or dq.Percentile(p), got {mode!r}")
