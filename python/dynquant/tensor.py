"""``DynQuantTensor``: quantized values, their scales, shape and format."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core
from ._arrays import F32, I8, as_array, as_float32
from .errors import ArgumentTypeError, DTypeError, InvalidArgumentError, ShapeMismatchError
from .modes import DynQuantFormat

__all__ = ["DynQuantTensor", "quantization_mae"]

_new = object.__new__


@dataclass(eq=False, repr=False, slots=True)
class DynQuantTensor:
    """A dynamically quantized tensor.

    ``data`` holds int8 values in the caller's ``shape``; ``scales`` one
    float32 per tensor (``Int8PerTensor``, ``Int4PerTensor``) or per row
    (``Int8PerRow``; none when the array is empty). Unlike the reference,
    which keeps per-tensor data flat, the caller's shape is kept.
    Building one by hand checks that the fields agree.
    """

    data: npt.NDArray[np.int8]
    scales: npt.NDArray[np.float32]
    shape: tuple[int, ...]
    format: DynQuantFormat

    def __post_init__(self) -> None:
        data, scales, shape = self._checked()
        limit = 7 if self.format is DynQuantFormat.Int4PerTensor else 127
        if data.size and int(np.abs(data.astype(np.int16)).max()) > limit:
            raise InvalidArgumentError(f"{self.format.name} values must lie in [-{limit}, {limit}]")
        self.data, self.scales, self.shape = data, scales, shape

    def _checked(
        self,
    ) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.float32], tuple[int, ...]]:
        """The fields, checked to agree (O(1) but for a contiguous copy of
        ``scales``): at construction, and again before each use, since the
        fields can be reassigned."""
        if not isinstance(self.format, DynQuantFormat):
            raise ArgumentTypeError(f"format must be a DynQuantFormat, got {self.format!r}")
        data = as_array(self.data, "data")
        if data.dtype != I8:
            raise DTypeError(
                f"data must be int8, got dtype {data.dtype}",
                expected="int8",
                actual=str(data.dtype),
            )
        scales = as_array(self.scales, "scales")
        if scales.dtype != F32 or scales.ndim != 1:
            raise DTypeError(
                f"scales must be a 1-D float32 array, got {scales.ndim}-D {scales.dtype}",
                expected="1-D float32",
                actual=f"{scales.ndim}-D {scales.dtype}",
            )
        try:
            shape = tuple(operator.index(d) for d in self.shape)
        except TypeError:
            raise ArgumentTypeError(
                f"shape must be a sequence of ints, got {self.shape!r}"
            ) from None
        if data.shape != shape:
            raise ShapeMismatchError(
                f"data has shape {data.shape} but shape says {shape}",
                expected=shape,
                actual=data.shape,
            )
        if self.format is DynQuantFormat.Int8PerRow:
            if len(shape) != 2:
                raise ShapeMismatchError(
                    f"an Int8PerRow tensor is 2-D, got shape {shape}", expected="2-D", actual=shape
                )
            want = shape[0] if data.size else 0
        else:
            want = 1
        if scales.shape[0] != want:
            raise ShapeMismatchError(
                f"{self.format.name} with shape {shape} needs {want} scale(s), "
                f"got {scales.shape[0]}",
                expected=want,
                actual=scales.shape[0],
            )
        # Aligned and C-contiguous, as the kernels take them.
        return np.asarray(data, order="C"), as_float32(scales, "scales"), shape

    @classmethod
    def _trusted(
        cls,
        data: npt.NDArray[np.int8],
        scales: npt.NDArray[np.float32],
        shape: tuple[int, ...],
        format: DynQuantFormat,
    ) -> DynQuantTensor:
        """Construction from kernel output, skipping the checks."""
        t = _new(cls)
        t.data = data
        t.scales = scales
        t.shape = shape
        t.format = format
        return t

    def dequantize(self) -> npt.NDArray[np.float32]:
        """``q * scale`` (per row: that row's scale), in the tensor's shape."""
        data, scales, shape = self._checked()
        flat: npt.NDArray[np.float32] = _core.dequantize(
            data.reshape(-1), scales, self.format.value
        )
        return flat.reshape(shape)

    def memory_bytes(self) -> int:
        """Bytes of data plus 4 per scale."""
        return int(self.data.size) + 4 * int(self.scales.size)

    def compression_ratio(self) -> float:
        """``4 * len(data) / memory_bytes()`` in float32; 1.0 when there are no bytes."""
        mem = self.memory_bytes()
        if mem == 0:
            return 1.0
        return float(np.float32(4 * self.data.size) / np.float32(mem))

    def element_count(self) -> int:
        """Number of quantized values."""
        return int(self.data.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DynQuantTensor):
            return NotImplemented
        return (
            self.format is other.format
            and self.shape == other.shape
            and np.array_equal(self.data, other.data)
            and np.array_equal(self.scales.view(np.uint32), other.scales.view(np.uint32))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        scales = np.array2string(self.scales, threshold=4, edgeitems=2, precision=6)
        data = np.array2string(self.data.reshape(-1), threshold=8, edgeitems=3)
        return (
            f"DynQuantTensor(format={self.format.name}, shape={self.shape}, "
            f"scales={scales}, data={data})"
        )

    def __getstate__(self) -> dict[str, Any]:
        return {
            "data": self.data,
            "scales": self.scales,
            "shape": self.shape,
            "format": self.format,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            object.__setattr__(self, k, v)


def quantization_mae(original: Any, qt: DynQuantTensor) -> float:
    """Mean |original - qt.dequantize()| over the common (flat) length.

    Differences are taken in float32 as the reference does, then summed in
    float64 (more accurate than the reference's float32 sum). Flat inputs
    and lengths that differ follow the reference (the common length); but
    when both ``original`` and ``qt`` are 2-D or more, their shapes must
    match — a transposed or reshaped array would otherwise be compared
    element by element with the wrong values (``ShapeMismatchError``).
    """
    if not isinstance(qt, DynQuantTensor):
        raise ArgumentTypeError(f"qt must be a DynQuantTensor, got {type(qt).__name__}")
    x = as_float32(original, "original")
    data, scales, shape = qt._checked()
    if x.ndim >= 2 and len(shape) >= 2 and x.shape != shape:
        raise ShapeMismatchError(
            f"original has shape {x.shape} but the tensor has shape {shape} "
            "(pass the array that was quantized, or flatten both on purpose)",
            expected=shape,
            actual=x.shape,
        )
    flat = x.reshape(-1)
    return float(_core.quantization_mae(flat, data.reshape(-1), scales, qt.format.value))
