"""dynquant — dynamic activation quantization (W8A8 / W4A8) for CPU inference.

Bit-exact with the ``dynamic_quant`` module of the Rust crate
``oxibonsai-model`` 0.1.1, with SIMD and multi-threaded kernels.
"""

from __future__ import annotations

from ._core import __version__
from .calib import CalibStats
from .errors import (
    ArgumentTypeError,
    DTypeError,
    DynQuantError,
    EmptyInputError,
    FeatureDimMismatchError,
    InternalError,
    InvalidAlphaError,
    InvalidArgumentError,
    InvalidEpsilonError,
    InvalidPercentileError,
    NonFiniteError,
    ShapeMismatchError,
)
from .kernels import KernelInfo, kernel_info, set_kernel, set_num_threads
from .layers import QuantizedLinear
from .matmul import w4a8_matmul, w4a8_matvec, w8a8_matmul, w8a8_matvec
from .modes import DynQuantFormat, MaxAbs, Percentile, ScaleMode
from .observer import CalibObserver, ChannelMaxObserver, calibrate
from .quantize import compute_scale, quantize_int4, quantize_int8, quantize_int8_per_row
from .smooth import (
    SmoothQuantConfig,
    compute_smooth_factors,
    smooth_activations,
    smooth_weights,
)
from .tensor import DynQuantTensor, quantization_mae
from .weights import (
    PackedInt8Weights,
    pack_int4,
    pack_weights_int8,
    quantize_weights_int4,
    quantize_weights_int8,
    unpack_int4,
)

__all__ = [
    "ArgumentTypeError",
    "CalibObserver",
    "CalibStats",
    "ChannelMaxObserver",
    "DTypeError",
    "DynQuantError",
    "DynQuantFormat",
    "DynQuantTensor",
    "EmptyInputError",
    "FeatureDimMismatchError",
    "InternalError",
    "InvalidAlphaError",
    "InvalidArgumentError",
    "InvalidEpsilonError",
    "InvalidPercentileError",
    "KernelInfo",
    "MaxAbs",
    "NonFiniteError",
    "PackedInt8Weights",
    "Percentile",
    "QuantizedLinear",
    "ScaleMode",
    "ShapeMismatchError",
    "SmoothQuantConfig",
    "__version__",
    "calibrate",
    "compute_scale",
    "compute_smooth_factors",
    "kernel_info",
    "pack_int4",
    "pack_weights_int8",
    "quantization_mae",
    "quantize_int4",
    "quantize_int8",
    "quantize_int8_per_row",
    "quantize_weights_int4",
    "quantize_weights_int8",
    "set_kernel",
    "set_num_threads",
    "smooth_activations",
    "smooth_weights",
    "unpack_int4",
    "w4a8_matmul",
    "w4a8_matvec",
    "w8a8_matmul",
    "w8a8_matvec",
]
