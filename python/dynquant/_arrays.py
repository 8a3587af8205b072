"""Turning caller input into the arrays the Rust core takes, with errors
that say what was expected and what came in."""

from __future__ import annotations

import reprlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import (
    ArgumentTypeError,
    DTypeError,
    InvalidArgumentError,
    NonFiniteError,
    ShapeMismatchError,
)

F32 = np.dtype(np.float32)
I8 = np.dtype(np.int8)

NAN_POLICIES = ("raise", "reference")


def check_nan_policy(nan_policy: str) -> bool:
    """True for the reference's handling of NaN/Inf, False to raise."""
    if nan_policy == "raise":
        return False
    if nan_policy == "reference":
        return True
    raise InvalidArgumentError(
        f"nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}", value=nan_policy
    )


def check_bool(value: Any, name: str) -> bool:
    """``value`` if it is a Python bool or a ``numpy.bool_``; anything else
    (``"no"``, ``0``, ``None``, an array) is an ``ArgumentTypeError``, not
    its truthiness (``per_token="no"`` must not mean True)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ArgumentTypeError(
        f"{name} must be a bool (True or False), got {reprlib.repr(value)} "
        f"of type {type(value).__name__}",
        expected="bool",
        actual=type(value).__name__,
    )


def _describe(x: Any) -> str:
    dtype = getattr(x, "dtype", None)
    return f"dtype {dtype}" if dtype is not None else f"{type(x).__name__}"


def as_array(x: Any, name: str) -> npt.NDArray[Any]:
    """``np.asarray(x)``, with ragged nested sequences as a ``ShapeMismatchError``
    and masked arrays refused (``np.asarray`` would drop the mask, and the
    masked-out values would silently count)."""
    if isinstance(x, np.ma.MaskedArray) and np.ma.getmask(x) is not np.ma.nomask and x.mask.any():
        raise ArgumentTypeError(
            f"{name} is a masked array with {int(np.count_nonzero(x.mask))} masked value(s); "
            "dynquant would use the values under the mask: pass x.filled(v) or x.compressed()"
        )
    try:
        return np.asarray(x)
    except ValueError as e:  # ragged nested lists
        raise ShapeMismatchError(
            f"{name} must be a rectangular array of numbers: {e}",
            expected="rectangular array",
            actual=type(x).__name__,
        ) from None


def as_float32(x: Any, name: str, ndim: int | None = None) -> npt.NDArray[np.float32]:
    """A C-contiguous, aligned float32 view or copy of ``x`` (same shape, 0-d
    included).

    Floating and integer input is converted (as NumPy's ``astype`` would);
    bool, complex, object, string and datetime input is a ``DTypeError``.
    Unaligned buffers (as Dask's and pickle-5's deserialised frames can be)
    are copied: the Rust core reads aligned slices only. An input too big to
    copy raises NumPy's ``MemoryError``.
    """
    if type(x) is np.ndarray and x.dtype == F32 and x.flags.c_contiguous and x.flags.aligned:
        a = x
    else:
        a = as_array(x, name)
        if a.dtype.kind not in "fiu":
            raise DTypeError(
                f"{name} must be a real floating or integer array, got {_describe(a)}",
                expected="float32 (or another real numeric dtype)",
                actual=str(a.dtype),
            )
        # Not np.ascontiguousarray: it turns 0-d into 1-d. Values beyond
        # float32 become ±inf (then non-finite input), without a warning.
        with np.errstate(over="ignore", invalid="ignore"):
            a = np.asarray(a, dtype=F32, order="C")
        if not a.flags.aligned:  # e.g. np.frombuffer at an odd offset
            a = a.copy()
    if ndim is not None and a.ndim != ndim:
        raise ShapeMismatchError(
            f"{name} must be {ndim}-D, got {a.ndim}-D with shape {a.shape}",
            expected=f"{ndim}-D",
            actual=a.shape,
        )
    return a


def as_int8(x: Any, name: str, ndim: int) -> npt.NDArray[np.int8]:
    """A C-contiguous int8 array; any other dtype is a ``DTypeError`` (int8
    weights are never produced by silent casting)."""
    a = as_array(x, name)
    if a.dtype != I8:
        raise DTypeError(
            f"{name} must be int8 (quantized weights), got {_describe(a)}; "
            "use dq.quantize_weights_int8 to quantize float weights",
            expected="int8",
            actual=str(a.dtype),
        )
    if a.ndim != ndim:
        raise ShapeMismatchError(
            f"{name} must be {ndim}-D, got {a.ndim}-D with shape {a.shape}",
            expected=f"{ndim}-D",
            actual=a.shape,
        )
    return np.ascontiguousarray(a)


#: Where NaN has no result under ``nan_policy="reference"`` either (the
#: reference's sort panics on it): passed as ``nan_reason``.
NAN_UNDER_PERCENTILE = "under a Percentile scale"
NAN_IN_CALIBRATION = "in calibration statistics"


def non_finite_error(
    index: int,
    value: float,
    name: str,
    nan_policy: str = "raise",
    nan_reason: str | None = None,
    data: Iterable[npt.NDArray[Any]] = (),
    origin: str | None = None,
) -> NonFiniteError:
    """The ``NonFiniteError`` for a NaN/Inf at ``index`` of argument ``name``
    (``origin``: where that value came from, when ``name`` is derived).

    It suggests ``nan_policy="reference"`` only where that would give a
    result: not when the caller passed it already, and not when ``data``
    holds a NaN where the reference has no result for one (``nan_reason``:
    ``NAN_UNDER_PERCENTILE``, ``NAN_IN_CALIBRATION``). ``data`` is scanned
    only here, on the error path.
    """
    where = f"non-finite value {value} at flat index {index} of {name}"
    if origin is not None:
        where += f" ({origin})"
    if nan_policy == "reference":
        # Only a NaN with no result raises under the reference's policy.
        detail = f'NaN has no result {nan_reason}, with nan_policy="reference" too'
        message = f"{where}: {detail}" if nan_reason is not None else where
    elif nan_reason is not None and any(bool(np.isnan(a).any()) for a in data):
        message = (
            f"{where}: {name} must be finite (NaN has no result {nan_reason} "
            'with either nan_policy, so nan_policy="reference" would not help)'
        )
    else:
        message = (
            f"{where}: {name} must be finite "
            '(pass nan_policy="reference" to reproduce the reference\'s handling)'
        )
    return NonFiniteError(message, index=index, value=value, argument=name)


def reword_non_finite(
    e: NonFiniteError,
    name: str,
    nan_policy: str,
    nan_reason: str | None = None,
    data: Iterable[npt.NDArray[Any]] = (),
) -> NonFiniteError:
    """The core's error about the activations ``name`` (which carries no
    argument), as ``non_finite_error`` words it; an error that already
    names its argument (weight scales, bias) is returned as it is."""
    if e.argument is not None:
        return e
    return non_finite_error(e.index, e.value, name, nan_policy, nan_reason, data)


def _first_non_finite(a: npt.NDArray[np.float32]) -> tuple[int, float] | None:
    """Flat index and value of the first NaN/Inf of ``a``, or None."""
    finite = np.isfinite(a)
    if finite.all():
        return None
    index = int(np.argmin(finite.reshape(-1)))
    return index, float(a.reshape(-1)[index])


def _must_be_finite(index: int, value: float, name: str) -> NonFiniteError:
    return NonFiniteError(
        f"non-finite value {value} at flat index {index} of {name}: {name} must be finite",
        index=index,
        value=value,
        argument=name,
    )


def require_finite(a: npt.NDArray[np.float32], name: str) -> None:
    """Raise ``NonFiniteError`` naming the first NaN/Inf of ``a``, an
    argument that must be finite whatever the ``nan_policy`` (a bias), worded
    as the core words it for weight scales."""
    bad = _first_non_finite(a)
    if bad is not None:
        raise _must_be_finite(*bad, name)


def renamed_non_finite(e: NonFiniteError, name: str) -> NonFiniteError:
    """``e`` (about an argument that must be finite) for a caller who knows
    the array as ``name``: a layer's attribute passed on under another name."""
    return _must_be_finite(e.index, e.value, name)


def check_finite(a: npt.NDArray[np.float32], name: str, nan_reason: str | None = None) -> None:
    """Raise ``NonFiniteError`` naming the first NaN/Inf of ``a`` (for
    ``nan_policy="raise"``; ``nan_reason`` as in ``non_finite_error``)."""
    bad = _first_non_finite(a)
    if bad is not None:
        index, value = bad
        raise non_finite_error(index, value, name, "raise", nan_reason, (a,))
