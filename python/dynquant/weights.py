"""Weight quantizers and int4 packing.

Packed int4 layout: ``[out, ceil(in / 2)]`` uint8. A row's columns go in
blocks: of 256 while they last, then at most one of 128, at most one of 64,
and a last block of fewer than 64. A block of ``B`` (256, 128 or 64) columns
starting at column ``c0`` takes ``B / 2`` bytes at byte ``c0 / 2``, as eight
lanes of ``B / 8`` consecutive columns: byte ``32i + 4l + j`` (``l`` in 0..8,
``j`` in 0..4) holds column ``c0 + (B / 8) l + 8i + j`` in its low nibble and
column ``c0 + (B / 8) l + 8i + 4 + j`` in its high nibble — so in a block of
256 every 4-byte lane holds one group of 32, and the kernels add a group up
in its own lane. The last block of ``r < 64`` columns uses ``h = ceil(r /
2)`` bytes: byte ``j`` holds columns ``j`` and ``j + h`` of the block.
Each nibble stores ``value + 8`` (offset binary: 0..15 for -8..7); the unused
high nibble of an odd-length row stores 8 (the value 0), which the W4A8
products check, so rows packed for one more column are refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core
from ._arrays import as_array, as_float32, as_int8
from .errors import DTypeError, InvalidArgumentError, NonFiniteError, ShapeMismatchError

#: Version of the packed int4 layout above (1: llama.cpp's Q4_0 order, used
#: until 2026-12-05; 2: the lane layout). Pickled 4-bit layers carry it.
INT4_LAYOUT = 2

__all__ = [
    "PackedInt8Weights",
    "pack_int4",
    "pack_weights_int8",
    "quantize_weights_int4",
    "quantize_weights_int8",
    "unpack_int4",
]

PackedInt8Weights = _core.PackedInt8Weights

GROUP_SIZES = (None, 32, 64, 128)


@contextmanager
def _weights_must_be_finite() -> Iterator[None]:
    """The core's NaN/Inf error speaks of activations; say it is the weight."""
    try:
        yield
    except NonFiniteError as e:
        raise NonFiniteError(
            f"weight has a non-finite value {e.value} at flat index {e.index}: "
            "weights must be finite",
            index=e.index,
            value=e.value,
            argument="weight",
        ) from None


def quantize_weights_int8(
    weight: Any,
) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32]]:
    """Symmetric int8 weights ``[out, in]``, one scale per output row.

    ``scale = max|row| / 127`` and ``q = clamp(round(w / scale), -127, 127)``
    (round half away from zero). Returns ``(q, scales)``; NaN/Inf raise.
    """
    w = as_float32(weight, "weight", ndim=2)
    with _weights_must_be_finite():
        q, scales = _core.quantize_weights_int8(w)
    return q, scales


def pack_weights_int8(weight_i8: Any) -> _core.PackedInt8Weights:
    """Int8 weights ``[out, in]`` packed once for ``w8a8_matmul``.

    The packed form (panels of 64 rows, 4 columns per step, padded with
    zeros; see ``dynquant.packed`` in the Rust crate) lets the AVX-512 VNNI
    kernel broadcast each token's bytes against 64 rows at a time, as
    fbgemm and ONNX Runtime do with their prepacked weights. Results are
    bit-identical to ``w8a8_matmul`` on ``weight_i8``; on other kernels
    (AVX2, NEON, scalar) the weights are unpacked on every call — correct,
    not faster. ``.shape``, ``.nbytes``, ``.unpack()``; picklable.
    """
    w = as_int8(weight_i8, "weight_i8", ndim=2)
    return _core.pack_weights_int8(w)


def quantize_weights_int4(
    weight: Any, group_size: int | None = None
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Int4 weights ``[out, in]`` packed two per byte, one scale per row
    (``group_size=None``) or per group of ``group_size`` input columns.

    Each group's scale minimises its squared error: a search over clip ratios
    of ``max|w| / 7`` with a least-squares refit, as llama.cpp's k-quants do
    (plain round-to-nearest is the first candidate, so never worse).
    Returns ``(packed [out, ceil(in/2)] uint8, scales [out, groups] float32)``.
    """
    if group_size is not None and (
        isinstance(group_size, bool)
        or not isinstance(group_size, (int, np.integer))
        or group_size <= 0
        or group_size % 2
    ):
        raise InvalidArgumentError(
            f"group_size must be None or a positive even int (32, 64, 128), got {group_size!r}"
        )
    w = as_float32(weight, "weight", ndim=2)
    # Any group >= in is one group per row; capped so that it fits usize.
    group = None if group_size is None else min(int(group_size), 2**62)
    with _weights_must_be_finite():
        packed, scales = _core.quantize_weights_int4(w, group)
    return packed, scales


def pack_int4(values: Any) -> npt.NDArray[np.uint8]:
    """Pack int8 values in [-8, 7] of shape ``[rows, cols]`` (or ``[cols]``)
    two per byte: ``[rows, ceil(cols / 2)]``."""
    v0 = as_array(values, "values")
    if v0.ndim not in (1, 2):
        raise ShapeMismatchError(
            f"values must be 1-D or 2-D, got {v0.ndim}-D with shape {v0.shape}",
            expected="1-D or 2-D",
            actual=v0.shape,
        )
    v = as_int8(v0, "values", ndim=v0.ndim)
    packed = _core.pack_int4(v.reshape(1, -1) if v.ndim == 1 else v)
    out: npt.NDArray[np.uint8] = packed.reshape(-1) if v.ndim == 1 else packed
    return out


def unpack_int4(packed: Any, cols: int) -> npt.NDArray[np.int8]:
    """Inverse of ``pack_int4``: ``[rows, ceil(cols / 2)]`` bytes → ``[rows, cols]``."""
    p = as_array(packed, "packed")
    if p.dtype != np.uint8:
        raise DTypeError(
            f"packed must be uint8, got dtype {p.dtype}", expected="uint8", actual=str(p.dtype)
        )
    if isinstance(cols, bool) or not isinstance(cols, (int, np.integer)) or cols < 0:
        raise InvalidArgumentError(f"cols must be an int >= 0, got {cols!r}")
    cols = int(cols)
    if p.ndim not in (1, 2):
        raise ShapeMismatchError(
            f"packed must be 1-D or 2-D, got shape {p.shape}", expected="1-D or 2-D", actual=p.shape
        )
    if p.shape[-1] != (cols + 1) // 2:
        raise ShapeMismatchError(
            f"{cols} int4 columns pack into {(cols + 1) // 2} bytes per row, "
            f"packed has {p.shape[-1]}",
            expected=(cols + 1) // 2,
            actual=p.shape[-1],
        )
    one_d = p.ndim == 1
    p2 = np.ascontiguousarray(p.reshape(1, -1) if one_d else p)
    values = _core.unpack_int4(p2, cols)
    out: npt.NDArray[np.int8] = values.reshape(-1) if one_d else values
    return out
