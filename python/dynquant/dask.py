"""Distributed calibration on Dask (optional: ``pip install 'dynquant[dask]'``).

``observe`` computes one ``CalibObserver`` per chunk of a ``dask.array``
(or per partition of a ``dask.bag`` of arrays) on the workers and merges
them in a tree, ``split_every`` at a time, so only small observers travel
(a few KiB each, pickled as the Rust core's bytes). ``observe_channels`` does
the same with ``ChannelMaxObserver`` for SmoothQuant.

It runs wherever Dask's current scheduler points: with a
``distributed.Client`` created (``Client()`` for a local cluster, or
``Client("tcp://scheduler-host:8786")`` for a cluster of machines started
with ``dask scheduler`` / ``dask worker tcp://scheduler-host:8786``, each
with dynquant installed), the work goes to its workers; pass ``client=`` to
choose one explicitly. Without a client, Dask's local threaded scheduler
runs it in this process.

Every merge is exact, so the result does not depend on the chunking, the
tree or which worker ran what: count, min, max, the sketch's buckets and
mean/std are identical, bit for bit, to a single-process observer fed the
same values.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

# Imported by name so that type checking needs no dask (its API is untyped).
try:
    da: Any = importlib.import_module("dask.array")
    db: Any = importlib.import_module("dask.bag")
    delayed: Any = importlib.import_module("dask.delayed").delayed
except ImportError as e:
    raise ImportError(
        "dynquant.dask needs dask: pip install 'dynquant[dask]' (dask[distributed])"
    ) from e

from ._arrays import check_bool
from .errors import ArgumentTypeError, InvalidArgumentError
from .observer import DEFAULT_RELATIVE_ACCURACY, CalibObserver, ChannelMaxObserver

__all__ = ["observe", "observe_channels"]


def _calib_block(block: Any, settings: dict[str, Any]) -> CalibObserver:
    return CalibObserver(**settings).update(block)


def _calib_partition(arrays: Iterable[Any], settings: dict[str, Any]) -> CalibObserver:
    obs = CalibObserver(**settings)
    for a in arrays:
        obs.update(a)
    return obs


def _channel_block(block: Any, nan_policy: str) -> ChannelMaxObserver:
    return ChannelMaxObserver(nan_policy=nan_policy).update(block)


def _channel_partition(arrays: Iterable[Any], nan_policy: str) -> ChannelMaxObserver:
    obs = ChannelMaxObserver(nan_policy=nan_policy)
    for a in arrays:
        obs.update(a)
    return obs


def _merge(observers: list[Any]) -> Any:
    """Merge into a copy: Dask may hand the same input object to others."""
    out = observers[0].copy()
    for o in observers[1:]:
        out.merge(o)
    return out


def _tree(parts: list[Any], split_every: int) -> Any:
    """A tree of delayed merges over delayed observers."""
    merge = delayed(_merge, pure=True)
    while len(parts) > 1:
        parts = [merge(parts[i : i + split_every]) for i in range(0, len(parts), split_every)]
    return parts[0]


def _parts(data: Any, on_block: Any, on_partition: Any, arg: Any) -> list[Any]:
    if isinstance(data, da.Array):
        blocks = data.to_delayed().ravel().tolist()
        return [delayed(on_block, pure=True)(b, arg) for b in blocks]
    if isinstance(data, db.Bag):
        return [delayed(on_partition, pure=True)(p, arg) for p in data.to_delayed()]
    raise ArgumentTypeError(
        f"data must be a dask.array.Array or a dask.bag.Bag of arrays, got {type(data).__name__}"
    )


def _run(tree: Any, client: Any, compute: bool) -> Any:
    if not compute:
        return tree
    if client is not None:
        return client.compute(tree).result()
    return tree.compute()


def _check_split(split_every: Any) -> int:
    if isinstance(split_every, bool) or not isinstance(split_every, int) or split_every < 2:
        raise InvalidArgumentError(
            f"split_every must be an int >= 2, got {split_every!r}", value=split_every
        )
    return split_every


def observe(
    data: Any,
    *,
    relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
    exact: bool = False,
    nan_policy: str = "raise",
    max_buckets: int | None = None,
    split_every: int = 8,
    client: Any = None,
    compute: bool = True,
) -> Any:
    """A ``CalibObserver`` over every value of ``data``: a ``dask.array``
    (one observer per chunk, any shape and float dtype) or a ``dask.bag``
    whose items are arrays (one observer per partition).

    The observers are merged in a tree of fan-in ``split_every``. The
    result equals, byte for byte, ``CalibObserver(...).update`` over the same
    values in one process. ``client``: a ``distributed.Client`` to run on
    (default: Dask's current scheduler, which is the last ``Client`` created,
    if any). ``compute=False`` returns the ``dask.delayed`` result instead.
    ``exact=True`` ships every value to the client: use it for checks only.
    """
    settings: dict[str, Any] = {
        "relative_accuracy": relative_accuracy,
        "exact": exact,
        "nan_policy": nan_policy,
        "max_buckets": max_buckets,
    }
    CalibObserver(**settings)  # check the settings here, not on a worker
    split = _check_split(split_every)
    compute = check_bool(compute, "compute")
    parts = _parts(data, _calib_block, _calib_partition, settings)
    if not parts:
        return CalibObserver(**settings)
    return _run(_tree(parts, split), client, compute)


def observe_channels(
    data: Any,
    *,
    nan_policy: str = "raise",
    split_every: int = 8,
    client: Any = None,
    compute: bool = True,
) -> Any:
    """A ``ChannelMaxObserver`` over activations ``[..., in]``: a
    ``dask.array`` (rechunked to whole rows first) or a ``dask.bag`` of
    arrays. ``.smooth_factors(weights, config)`` of the result equals
    ``dq.compute_smooth_factors`` on all the activations, bit for bit."""
    ChannelMaxObserver(nan_policy=nan_policy)
    split = _check_split(split_every)
    compute = check_bool(compute, "compute")
    if isinstance(data, da.Array) and data.ndim >= 1:
        data = data.rechunk({data.ndim - 1: -1})
    parts = _parts(data, _channel_block, _channel_partition, nan_policy)
    if not parts:
        return ChannelMaxObserver(nan_policy=nan_policy)
    return _run(_tree(parts, split), client, compute)
