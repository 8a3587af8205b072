"""W8A8 products of int8 weights and dynamically quantized activations."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core
from ._arrays import as_float32, as_int8, check_nan_policy

__all__ = ["w8a8_matvec"]


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
    y: npt.NDArray[np.float32] = _core.w8a8_matvec(w, s, a, check_nan_policy(nan_policy))
    return y
