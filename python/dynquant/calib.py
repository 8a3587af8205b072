"""Calibration statistics over batches of activations."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import _core
from ._arrays import NAN_IN_CALIBRATION, as_float32, check_nan_policy, reword_non_finite
from .errors import ArgumentTypeError, NonFiniteError

__all__ = ["CalibStats"]


@dataclass(frozen=True, slots=True)
class CalibStats:
    """Statistics of every value of every batch, for choosing static scales.

    ``p99`` is the 99th percentile of ``|x|`` (the reference's f32 index);
    ``suggested_scale`` is ``p99 / 127`` (or ``max|x| / 127`` when p99 is 0,
    or ``1 / 127`` when all values are 0). min, max, p99 and the scale are
    exact; mean and std_dev (population) are accumulated in float64.
    """

    min: float
    max: float
    mean: float
    std_dev: float
    p99: float
    suggested_scale: float

    @classmethod
    def collect(cls, batches: Iterable[Any], *, nan_policy: str = "raise") -> CalibStats:
        """Statistics over all values of ``batches`` (arrays of any shape).

        No values at all gives every field 0.0. With ``nan_policy="reference"``
        infinities are accepted as the reference does; a NaN is always an
        error (the reference's sort has no result for it).
        """
        try:
            items = iter(batches)
        except TypeError:
            raise ArgumentTypeError(
                f"batches must be an iterable of arrays, got {type(batches).__name__}"
            ) from None
        arrays = [as_float32(b, f"batches[{i}]").reshape(-1) for i, b in enumerate(items)]
        try:
            return cls(*_core.calib_collect(arrays, check_nan_policy(nan_policy)))
        except NonFiniteError as e:
            raise reword_non_finite(e, "batches", nan_policy, NAN_IN_CALIBRATION, arrays) from None
