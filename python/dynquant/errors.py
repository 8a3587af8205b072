"""The exception hierarchy: one base class, one subclass per failure.

Each subclass also derives from the builtin a generic caller would catch
(``ValueError`` for bad values and shapes, ``TypeError`` for bad dtypes,
``RuntimeError`` for ``InternalError``), and
carries the fields of the Rust error it mirrors as attributes.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ArgumentTypeError",
    "DTypeError",
    "DynQuantError",
    "EmptyInputError",
    "FeatureDimMismatchError",
    "InternalError",
    "InvalidAlphaError",
    "InvalidArgumentError",
    "InvalidEpsilonError",
    "InvalidPercentileError",
    "NonFiniteError",
    "ShapeMismatchError",
]


class DynQuantError(Exception):
    """Base class of every error dynquant raises."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        for name, value in fields.items():
            setattr(self, name, value)

    def __reduce__(self) -> tuple[Any, ...]:
        fields = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        return (_rebuild, (type(self), str(self), fields))


def _rebuild(cls: type[DynQuantError], message: str, fields: dict[str, Any]) -> DynQuantError:
    return cls(message, **fields)


class ShapeMismatchError(DynQuantError, ValueError):
    """A length or shape differs from what the operation needs.

    ``expected`` and ``actual`` are element counts (as in the reference) or
    shapes / ndim descriptions for dynquant's own checks.
    """

    expected: Any
    actual: Any


class EmptyInputError(DynQuantError, ValueError):
    """An operation that needs values got none."""


class InvalidAlphaError(DynQuantError, ValueError):
    """SmoothQuant alpha outside [0, 1] (``alpha``)."""

    alpha: float


class InvalidEpsilonError(DynQuantError, ValueError):
    """SmoothQuant epsilon negative, NaN or infinite (``epsilon``)."""

    epsilon: float


class FeatureDimMismatchError(DynQuantError, ValueError):
    """An input whose feature width is not the feature dimension: smoothing
    factors of the wrong length, or activations, weights or an observer of
    another width. ``in_features`` is the expected width, ``sf_len`` the
    width that came in, and ``argument`` names the input (None only for the
    reference's own smoothing functions, whose input is the factors)."""

    in_features: int
    sf_len: int
    argument: str | None = None


class NonFiniteError(DynQuantError, ValueError):
    """A NaN or infinity in activations or weights: ``index`` is the flat
    index of the first one, ``value`` its value and ``argument`` the name of
    the argument holding it (None when not known, e.g. from the Rust core)."""

    index: int
    value: float
    argument: str | None = None


class InvalidPercentileError(DynQuantError, ValueError):
    """``Percentile(p)`` with p outside (0, 1] or NaN."""

    p: float


class InvalidArgumentError(DynQuantError, ValueError):
    """Any other argument outside its domain."""


class ArgumentTypeError(DynQuantError, TypeError):
    """An argument of the wrong Python type (not an array dtype problem)."""


class DTypeError(DynQuantError, TypeError):
    """An array of a dtype the operation cannot take."""


class InternalError(DynQuantError, RuntimeError):
    """A bug in dynquant's Rust core (a caught panic). Please report it."""
