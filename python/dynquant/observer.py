"""Streaming, mergeable calibration in constant memory.

``CalibObserver`` sees batches one at a time (``update``), combines with the
observers of other batches, threads, processes or machines (``merge``, or
pickling), and gives the ``CalibStats`` of everything seen (``stats``).
``ChannelMaxObserver`` keeps the running per-channel max |A_j| for
SmoothQuant. ``calibrate`` runs an observer over an iterable of batches, with
an optional progress bar.
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterable, Sized
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from . import _core
from ._arrays import (
    NAN_IN_CALIBRATION,
    as_float32,
    check_bool,
    check_finite,
    check_nan_policy,
    reword_non_finite,
)
from .calib import CalibStats
from .errors import (
    ArgumentTypeError,
    FeatureDimMismatchError,
    InvalidArgumentError,
    NonFiniteError,
    ShapeMismatchError,
)
from .smooth import SmoothQuantConfig

__all__ = ["CalibObserver", "ChannelMaxObserver", "calibrate"]

#: Default relative accuracy of the quantile sketch.
DEFAULT_RELATIVE_ACCURACY = 0.005
#: Largest ``max_buckets``; the default (None) is 64 octaves' worth.
MAX_MAX_BUCKETS = 1 << 24

T = TypeVar("T")


def _real(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError(f"{name} must be a real number, got {type(value).__name__}")
    return float(value)


def _count(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ArgumentTypeError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= int(value) <= high:
        raise InvalidArgumentError(f"{name} must be in [{low}, {high}], got {value}", value=value)
    return int(value)


def _progress(
    items: Iterable[T], enabled: bool, total: int | None, desc: str
) -> tuple[Iterable[T], Any]:
    """``items`` wrapped in a tqdm bar when asked for and tqdm is installed
    (quietly unwrapped otherwise), and the bar (or None)."""
    try:
        items = iter(items)
    except TypeError:
        raise ArgumentTypeError(
            f"batches must be an iterable of arrays, got {type(items).__name__}"
        ) from None
    if not enabled:
        return items, None
    try:
        tqdm = importlib.import_module("tqdm.auto").tqdm
    except ImportError:
        return items, None
    bar = tqdm(items, total=total, desc=desc, unit="batch")
    return bar, bar


def _bytes(data: Any, what: str) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise ArgumentTypeError(f"{what}.from_bytes needs bytes, got {type(data).__name__}")


class CalibObserver:
    """Calibration statistics over streamed batches, in constant memory.

    ``count``, ``min`` and ``max`` are exact; ``mean`` and ``std_dev`` come
    from exact integer sums of x and x² (rounded once: every merge order gives
    the same bits). Quantiles of |x| (``quantile(q)``, and the ``p99`` of
    ``stats()``) come from a mergeable relative-error sketch: the answer is
    within ``relative_accuracy`` (alpha, default 0.005) of the exact value at the
    same rank as ``CalibStats.collect`` uses (``ceil(q * n) - 1`` in float32).

    The sketch has M = ``buckets_per_octave`` logarithmic buckets per
    power of two (70 for alpha = 0.005) and keeps at most ``max_buckets`` of
    them (default: 64 octaves' worth, 64 * M = 4480 buckets, 35 KiB, at the
    default accuracy). When |x| spans more than ``max_buckets / M`` octaves,
    the lowest buckets are folded into the lowest kept one: only the
    quantiles of the smallest |x| lose accuracy (``collapsed_count`` says how
    many values were folded). Zeros are counted apart.

    ``exact=True`` also keeps every value (memory grows with the data) so
    that ``stats()`` equals ``CalibStats.collect`` on the concatenated
    batches bit for bit in min, max, p99 and suggested_scale.

    ``nan_policy="raise"`` (default) rejects NaN and infinities with
    ``NonFiniteError`` (the batch's flat index) and leaves the observer
    unchanged; ``"reference"`` accepts infinities as ``CalibStats.collect``
    does (NaN is still an error).

    Observers pickle to compact bytes (``to_bytes``), so they travel between
    processes; ``merge`` takes observers with the same settings. One observer
    may be updated from several threads at once: each batch is observed
    without the GIL or a lock, then merged exactly, so the result is the
    same as updating in sequence.
    """

    __slots__ = ("_impl",)
    _impl: _core.CalibObserver

    def __init__(
        self,
        *,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        exact: bool = False,
        nan_policy: str = "raise",
        max_buckets: int | None = None,
    ) -> None:
        self._impl = _core.CalibObserver(
            _real(relative_accuracy, "relative_accuracy"),
            check_bool(exact, "exact"),
            check_nan_policy(nan_policy),
            None if max_buckets is None else _count(max_buckets, "max_buckets", 1, MAX_MAX_BUCKETS),
        )

    @classmethod
    def _wrap(cls, impl: _core.CalibObserver) -> CalibObserver:
        obs = cls.__new__(cls)
        obs._impl = impl
        return obs

    def update(self, batch: Any) -> CalibObserver:
        """Add the values of ``batch`` (an array of any shape); returns self."""
        a = as_float32(batch, "batch").reshape(-1)
        try:
            self._impl.update(a)
        except NonFiniteError as e:
            raise reword_non_finite(e, "batch", self.nan_policy, NAN_IN_CALIBRATION, (a,)) from None
        return self

    def update_many(
        self, batches: Iterable[Any], *, progress: bool = False, total: int | None = None
    ) -> CalibObserver:
        """Add every batch of ``batches``; with ``progress=True`` show a tqdm
        bar if tqdm is installed (nothing otherwise). Returns self."""
        progress = check_bool(progress, "progress")
        if total is not None:
            total = _count(total, "total", 0, 2**62)
        elif isinstance(batches, Sized):
            total = len(batches)
        items, bar = _progress(batches, progress, total, "calibrating")
        for batch in items:
            self.update(batch)
            if bar is not None:
                bar.set_postfix(values=self.count, refresh=False)
        return self

    def merge(self, other: CalibObserver) -> CalibObserver:
        """Add everything ``other`` has seen (same settings); returns self."""
        if not isinstance(other, CalibObserver):
            raise ArgumentTypeError(f"can only merge a CalibObserver, got {type(other).__name__}")
        source = other.copy() if other is self else other
        self._impl.merge(source._impl)
        return self

    def copy(self) -> CalibObserver:
        """An independent observer with the same state."""
        return CalibObserver._wrap(self._impl.copy())

    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> CalibObserver:
        return self.copy()

    def stats(self) -> CalibStats:
        """The ``CalibStats`` of every value seen (all 0.0 when none)."""
        return CalibStats(*self._impl.stats())

    def quantile(self, q: float) -> float:
        """The q-quantile of |x| (q in [0, 1]), at ``CalibStats.collect``'s
        rank: exact with ``exact=True``, else within ``relative_accuracy``."""
        return self._impl.quantile(_real(q, "q"))

    def histogram(
        self,
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.uint64]]:
        """``(lower, upper, counts)`` of the non-empty sketch buckets:
        ``counts[i]`` values of |x| in ``(lower[i], upper[i]]`` (zeros and
        infinities are not in any bucket)."""
        return self._impl.histogram()

    def plot_histogram(
        self, path: str | os.PathLike[str], clip: float | None = None, *, title: str | None = None
    ) -> str:
        """Draw the histogram of |x| (from the sketch's buckets, log-spaced)
        to ``path`` (any format matplotlib writes: .png, .svg, .pdf), with
        the clip value marked: ``clip`` or, when None, the p99 that
        ``stats()`` would calibrate to. Needs matplotlib
        (``pip install 'dynquant[plot]'``). Returns the path."""
        try:
            figure_module = importlib.import_module("matplotlib.figure")
        except ImportError:
            raise ImportError(
                "CalibObserver.plot_histogram needs matplotlib, which is not installed: "
                "pip install 'dynquant[plot]' (or pip install matplotlib)"
            ) from None
        clip_value = self.stats().p99 if clip is None else _real(clip, "clip")
        lower, upper, counts = self.histogram()
        fig = figure_module.Figure(figsize=(8, 4.5))
        ax = fig.add_subplot()
        if counts.size:
            ax.bar(lower, counts, width=upper - lower, align="edge", color="#4477aa", linewidth=0)
            ax.set_xscale("log")
            ax.set_yscale("log")
        above = int(counts[lower >= clip_value].sum()) if counts.size else 0
        share = above / self.count if self.count else 0.0
        if clip_value > 0 and math.isfinite(clip_value):
            ax.axvline(
                clip_value,
                color="#cc3311",
                linestyle="--",
                label=f"clip {clip_value:.4g} (≈{100 * share:.2g}% of values above)",
            )
            ax.legend(loc="upper left")
        ax.set_xlabel("|x|")
        ax.set_ylabel("values per bucket")
        zeros = f", {self.zero_count:,} zeros not shown" if self.zero_count else ""
        accuracy = f"buckets ±{100 * self.effective_accuracy:.2g}%"
        ax.set_title(title or f"|x| of {self.count:,} values ({accuracy}{zeros})")
        fig.tight_layout()
        fig.savefig(os.fspath(path), dpi=110)
        return os.fspath(path)

    def to_bytes(self) -> bytes:
        """Compact little-endian bytes (versioned); ``from_bytes`` reads them."""
        return self._impl.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> CalibObserver:
        """The observer ``to_bytes`` wrote; malformed bytes raise
        ``InvalidArgumentError``."""
        return cls._wrap(_core.CalibObserver.from_bytes(_bytes(data, "CalibObserver")))

    def __getstate__(self) -> bytes:
        return self.to_bytes()

    def __setstate__(self, state: bytes) -> None:
        self._impl = _core.CalibObserver.from_bytes(_bytes(state, "CalibObserver"))

    def __repr__(self) -> str:
        if self.count == 0:
            return f"CalibObserver(count=0, relative_accuracy={self.relative_accuracy})"
        return (
            f"CalibObserver(count={self.count}, min={self.min:.6g}, max={self.max:.6g}, "
            f"p99={self.quantile(0.99):.6g}, relative_accuracy={self.relative_accuracy}"
            f"{', exact=True' if self.exact else ''})"
        )

    @property
    def count(self) -> int:
        """Values seen."""
        return self._impl.count

    @property
    def zero_count(self) -> int:
        """Values equal to ±0."""
        return self._impl.zero_count

    @property
    def collapsed_count(self) -> int:
        """Values whose sketch bucket was folded by the ``max_buckets`` bound."""
        return self._impl.collapsed_count

    @property
    def bucket_count(self) -> int:
        """Non-empty sketch buckets."""
        return self._impl.bucket_count

    @property
    def buckets_per_octave(self) -> int:
        """Sketch buckets per power of two (M; bucket edges are 2^(i/M))."""
        return self._impl.buckets_per_octave

    @property
    def relative_accuracy(self) -> float:
        """The relative accuracy asked for."""
        return self._impl.relative_accuracy

    @property
    def effective_accuracy(self) -> float:
        """The relative accuracy the buckets give (at most the one asked for)."""
        return self._impl.effective_accuracy

    @property
    def max_buckets(self) -> int:
        """The bound on the sketch's buckets."""
        return self._impl.max_buckets

    @property
    def exact(self) -> bool:
        """Whether the values are kept for exact quantiles."""
        return self._impl.exact

    @property
    def nan_policy(self) -> str:
        """``"raise"`` or ``"reference"``."""
        return "reference" if self._impl.reference else "raise"

    @property
    def min(self) -> float:
        """Least value (0.0 when empty)."""
        return self._impl.min

    @property
    def max(self) -> float:
        """Greatest value (0.0 when empty)."""
        return self._impl.max

    @property
    def mean(self) -> float:
        """Mean, from the exact sum, in float64."""
        return self._impl.mean

    @property
    def std_dev(self) -> float:
        """Population standard deviation, from exact sums, in float64."""
        return self._impl.std_dev


def calibrate(
    batches: Iterable[Any],
    *,
    progress: bool = False,
    total: int | None = None,
    relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
    exact: bool = False,
    nan_policy: str = "raise",
    max_buckets: int | None = None,
) -> CalibObserver:
    """A ``CalibObserver`` over every batch of ``batches`` (any iterable, e.g.
    a generator that captures activations), with a tqdm progress bar when
    ``progress=True`` and tqdm is installed. ``.stats()`` gives the
    ``CalibStats``."""
    obs = CalibObserver(
        relative_accuracy=relative_accuracy,
        exact=exact,
        nan_policy=nan_policy,
        max_buckets=max_buckets,
    )
    return obs.update_many(batches, progress=progress, total=total)


class ChannelMaxObserver:
    """Running per-channel max |A_j| over streamed activations ``[..., in]``,
    for SmoothQuant.

    ``smooth_factors(weights, config)`` applies the formula of
    ``dq.compute_smooth_factors`` (same float32 ``powf``) and equals it, bit
    for bit, on the concatenation of every batch seen. ``in_features`` may be
    given or taken from the first batch. NaN and infinities raise
    ``NonFiniteError`` (``nan_policy="raise"``); with ``"reference"`` NaN is
    skipped and infinities count, as in ``compute_smooth_factors``.
    Mergeable and picklable like ``CalibObserver``.
    """

    __slots__ = ("_impl",)
    _impl: _core.ChannelMaxObserver

    def __init__(self, in_features: int | None = None, *, nan_policy: str = "raise") -> None:
        features = None if in_features is None else _count(in_features, "in_features", 0, 2**62)
        self._impl = _core.ChannelMaxObserver(features, check_nan_policy(nan_policy))

    @classmethod
    def _wrap(cls, impl: _core.ChannelMaxObserver) -> ChannelMaxObserver:
        obs = cls.__new__(cls)
        obs._impl = impl
        return obs

    def update(self, activations: Any) -> ChannelMaxObserver:
        """Add activations ``[tokens, in]`` (or ``[..., in]``; 1-D is one
        token); returns self."""
        a = as_float32(activations, "activations")
        if a.ndim == 0:
            raise ShapeMismatchError(
                "activations must have a feature axis, got a scalar",
                expected="[..., in]",
                actual=(),
            )
        features = a.shape[-1]
        have = self.in_features
        if have is not None and features != have:
            raise FeatureDimMismatchError(
                f"activations have {features} input features but the observer has {have} "
                f"(activations {a.shape})",
                in_features=have,
                sf_len=features,
                argument="activations",
            )
        try:
            self._impl.update(a.reshape(math.prod(a.shape[:-1]), features))
        except NonFiniteError as e:  # NaN is skipped under "reference": only "raise" gets here
            raise reword_non_finite(e, "activations", self.nan_policy) from None
        return self

    def update_many(
        self, batches: Iterable[Any], *, progress: bool = False, total: int | None = None
    ) -> ChannelMaxObserver:
        """Add every batch; ``progress=True`` shows a tqdm bar if installed."""
        progress = check_bool(progress, "progress")
        if total is not None:
            total = _count(total, "total", 0, 2**62)
        elif isinstance(batches, Sized):
            total = len(batches)
        items, _ = _progress(batches, progress, total, "channel maxima")
        for batch in items:
            self.update(batch)
        return self

    def merge(self, other: ChannelMaxObserver) -> ChannelMaxObserver:
        """Add everything ``other`` has seen; returns self."""
        if not isinstance(other, ChannelMaxObserver):
            raise ArgumentTypeError(
                f"can only merge a ChannelMaxObserver, got {type(other).__name__}"
            )
        have, theirs = self.in_features, other.in_features
        if have is not None and theirs is not None and have != theirs:
            raise FeatureDimMismatchError(
                f"cannot merge observers of {have} and {theirs} input features",
                in_features=have,
                sf_len=theirs,
                argument="other",
            )
        source = other.copy() if other is self else other
        self._impl.merge(source._impl)
        return self

    def copy(self) -> ChannelMaxObserver:
        """An independent observer with the same state."""
        return ChannelMaxObserver._wrap(self._impl.copy())

    __copy__ = copy

    def __deepcopy__(self, memo: dict[int, Any]) -> ChannelMaxObserver:
        return self.copy()

    @property
    def act_max(self) -> npt.NDArray[np.float32]:
        """max |A_j| per input channel (a new array)."""
        return self._impl.act_max()

    @property
    def tokens(self) -> int:
        """Rows (tokens) seen."""
        return self._impl.tokens

    @property
    def in_features(self) -> int | None:
        """Input channels (None until given or seen)."""
        return self._impl.in_features

    @property
    def nan_policy(self) -> str:
        """``"raise"`` or ``"reference"``."""
        return "reference" if self._impl.reference else "raise"

    def smooth_factors(
        self, weights: Any, config: SmoothQuantConfig | None = None
    ) -> npt.NDArray[np.float32]:
        """One SmoothQuant factor per input channel for ``weights [out, in]``,
        as ``dq.compute_smooth_factors`` on all activations seen."""
        config = SmoothQuantConfig() if config is None else config
        if not isinstance(config, SmoothQuantConfig):
            raise ArgumentTypeError(f"config must be a SmoothQuantConfig, got {config!r}")
        w = as_float32(weights, "weights", ndim=2)
        have = self.in_features
        if have is not None and w.shape[1] != have:
            raise FeatureDimMismatchError(
                f"weights have {w.shape[1]} input features but the activations had {have} "
                f"(weights {w.shape})",
                in_features=have,
                sf_len=w.shape[1],
                argument="weights",
            )
        if not self._impl.reference:
            check_finite(w, "weights")
        return self._impl.smooth_factors(w, config.alpha, config.epsilon)

    def to_bytes(self) -> bytes:
        """Compact little-endian bytes (versioned); ``from_bytes`` reads them."""
        return self._impl.to_bytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> ChannelMaxObserver:
        """The observer ``to_bytes`` wrote; malformed bytes raise
        ``InvalidArgumentError``."""
        return cls._wrap(_core.ChannelMaxObserver.from_bytes(_bytes(data, "ChannelMaxObserver")))

    def __getstate__(self) -> bytes:
        return self.to_bytes()

    def __setstate__(self, state: bytes) -> None:
        self._impl = _core.ChannelMaxObserver.from_bytes(_bytes(state, "ChannelMaxObserver"))

    def __repr__(self) -> str:
        return (
            f"ChannelMaxObserver(in_features={self.in_features}, tokens={self.tokens}, "
            f"nan_policy={self.nan_policy!r})"
        )
