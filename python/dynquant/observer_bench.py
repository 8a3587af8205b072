"""Time and peak memory of streaming calibration.

Compares, on the same float32 values (standard normal, made batch by batch
from a seed):

- ``collect``: ``CalibStats.collect`` over all batches held in memory;
- ``observer``: a ``CalibObserver`` fed one batch at a time, each batch
  dropped after its update (the streaming use);
- ``dask-N``: ``dynquant.dask.observe`` on a ``LocalCluster`` of N worker
  processes (one thread each, ``RAYON_NUM_THREADS=1``), the batches made on
  the workers.

Every measurement runs in a fresh Python process, which reports its peak
resident set size (``VmHWM`` of ``/proc/self/status``, which sees the Rust
heap where ``tracemalloc`` would not; ``ru_maxrss`` elsewhere) and the
growth over its size after imports. Dask rows also give the largest worker's
peak. ``state`` is a hash of the observer's bytes: equal hashes mean equal
results, bit for bit.

Run ``python -m dynquant.observer_bench`` (``--help`` for options), or call
``run()`` from other code (``dynquant.bench`` can).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["format_table", "main", "run"]

MIB = 1 << 20


def make_batch(seed: int, index: int, size: int) -> npt.NDArray[np.float32]:
    """Batch ``index`` of the benchmark's data (the same in every process)."""
    return np.random.default_rng([seed, index]).standard_normal(size, dtype=np.float32)


def _batch_sizes(values: int, batch: int) -> list[int]:
    full, rest = divmod(values, batch)
    return [batch] * full + ([rest] if rest else [])


def _memory() -> dict[str, int]:
    """Current and peak RSS of this process, in bytes."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {
            "rss": int(fields["VmRSS"].split()[0]) * 1024,
            "peak": int(fields["VmHWM"].split()[0]) * 1024,
        }
    except (OSError, KeyError, ValueError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak *= 1 if sys.platform == "darwin" else 1024
        return {"rss": peak, "peak": peak}


def _state(obs: Any) -> str:
    return hashlib.sha256(obs.to_bytes()).hexdigest()[:16]


def _measure(kind: str, values: int, batch: int, seed: int, workers: int) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    if kind == "dask":
        os.environ["RAYON_NUM_THREADS"] = "1"  # inherited by the workers
    import dynquant as dq

    sizes = _batch_sizes(values, batch)
    base = _memory()["rss"]
    row: dict[str, Any] = {"name": kind, "values": values, "batch": batch}
    start = time.perf_counter()
    if kind == "collect":
        batches = [make_batch(seed, i, s) for i, s in enumerate(sizes)]
        t = time.perf_counter()
        stats = dq.CalibStats.collect(batches)
        row["calib_seconds"] = time.perf_counter() - t
        row["p99"] = stats.p99
    elif kind == "observer":
        obs = dq.CalibObserver()
        row["calib_seconds"] = 0.0
        for i, s in enumerate(sizes):
            b = make_batch(seed, i, s)
            t = time.perf_counter()
            obs.update(b)
            row["calib_seconds"] += time.perf_counter() - t
            del b
        row["p99"] = obs.stats().p99
        row["state"] = _state(obs)
    elif kind == "dask":
        row["name"] = f"dask-{workers}"
        row.update(_measure_dask(values, batch, seed, workers))
    else:
        raise ValueError(f"unknown measurement {kind!r}")
    # On Dask the batches are made inside the distributed computation.
    row.setdefault("seconds", time.perf_counter() - start)
    mem = _memory()
    row["peak_rss_mib"] = mem["peak"] / MIB
    row["peak_growth_mib"] = (mem["peak"] - base) / MIB
    return row


def _measure_dask(values: int, batch: int, seed: int, workers: int) -> dict[str, Any]:
    import importlib

    da = importlib.import_module("dask.array")
    delayed = importlib.import_module("dask.delayed").delayed
    distributed = importlib.import_module("distributed")
    dqd = importlib.import_module("dynquant.dask")

    t = time.perf_counter()
    with (
        distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        startup = time.perf_counter() - t
        chunks = [
            da.from_delayed(delayed(make_batch)(seed, i, s), shape=(s,), dtype=np.float32)
            for i, s in enumerate(_batch_sizes(values, batch))
        ]
        x = da.concatenate(chunks)
        t = time.perf_counter()
        obs = dqd.observe(x, client=client)
        seconds = time.perf_counter() - t
        peaks = client.run(lambda: _memory()["peak"])
    return {
        "startup_seconds": startup,
        "seconds": seconds,
        "calib_seconds": seconds,
        "p99": obs.stats().p99,
        "state": _state(obs),
        "worker_peak_rss_mib": max(peaks.values()) / MIB,
    }


def _spawn(kind: str, values: int, batch: int, seed: int, workers: int = 0) -> dict[str, Any]:
    args = json.dumps([kind, values, batch, seed, workers])
    done = subprocess.run(
        [sys.executable, "-m", "dynquant.observer_bench", "--child", args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark {kind} on {values} values failed:\n{done.stderr}")
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return row


def _has_dask() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("dask", "distributed"))


def run(
    sizes: Sequence[int] = (10**7, 10**8),
    *,
    batch: int = 10**6,
    dask_workers: Sequence[int] = (1, 2),
    seed: int = 0,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Measure ``collect``, ``observer`` and (if dask is installed)
    ``dask-N`` for each N of ``dask_workers``, on each size; one dict per
    measurement: ``name``, ``values``, ``seconds`` (wall, data making
    included; Dask's cluster start-up excluded), ``calib_seconds`` (the
    calibration calls alone; for Dask, the whole distributed computation),
    ``peak_rss_mib``, ``peak_growth_mib`` (over the process after imports),
    ``worker_peak_rss_mib`` (Dask), ``p99``, ``p99_rel_error`` (against
    collect's exact p99) and ``state`` (a hash of the observer's bytes)."""
    rows: list[dict[str, Any]] = []
    workers = list(dask_workers) if _has_dask() else []
    for values in sizes:
        plan: list[tuple[str, int]] = [("collect", 0), ("observer", 0)]
        plan += [("dask", w) for w in workers]
        exact: float | None = None
        for kind, w in plan:
            if progress:
                print(f"  {kind}{'-' + str(w) if w else ''} on {values:.0e} values...", flush=True)
            row = _spawn(kind, values, batch, seed, w)
            if kind == "collect":
                exact = row["p99"]
            elif exact:
                row["p99_rel_error"] = abs(row["p99"] - exact) / exact
            rows.append(row)
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a plain-text table."""
    head = (
        f"{'name':<10} {'values':>8} {'seconds':>8} {'calib s':>8} {'peak MiB':>9} "
        f"{'growth MiB':>10} {'worker MiB':>10} {'p99 rel err':>11} {'state':>16}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        worker = f"{r['worker_peak_rss_mib']:.0f}" if "worker_peak_rss_mib" in r else "-"
        err = f"{r['p99_rel_error']:.2e}" if "p99_rel_error" in r else "exact"
        lines.append(
            f"{r['name']:<10} {r['values']:>8.0e} {r['seconds']:>8.2f} {r['calib_seconds']:>8.2f} "
            f"{r['peak_rss_mib']:>9.0f} {r['peak_growth_mib']:>10.0f} {worker:>10} {err:>11} "
            f"{r.get('state', '-'):>16}"
        )
    return "\n".join(lines)


def _count(text: str) -> int:
    """argparse type: a whole number >= 1, also written as ``1e7``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not (value >= 1 and value.is_integer()):
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return int(value)


def main(
    argv: Sequence[str] | None = None, *, prog: str = "python -m dynquant.observer_bench"
) -> int:
    """Run the benchmark and print its table; returns the exit code. Bad
    arguments exit through argparse (``SystemExit(2)``)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=_count,
        nargs="+",
        default=[10**7, 10**8],
        metavar="N",
        help="values per measurement, one run of every method per size (default: 1e7 1e8)",
    )
    parser.add_argument(
        "--batch",
        type=_count,
        default=10**6,
        metavar="N",
        help="values per batch fed to the observer (default: 1e6)",
    )
    parser.add_argument(
        "--workers",
        type=_count,
        nargs="*",
        default=[1, 2],
        metavar="N",
        help="a dask-N row for each N, on a LocalCluster of N worker processes; none: no "
        "Dask rows; skipped without dask (default: 1 2)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random values (default: 0)"
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write the rows to PATH as JSON (default: no)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        # Through the imported module, so that functions sent to Dask workers
        # are found by name there (not as __main__'s).
        from dynquant import observer_bench

        kind, values, batch, seed, workers = json.loads(args.child)
        print(json.dumps(observer_bench._measure(kind, values, batch, seed, workers)))
        return 0
    rows = run(
        args.sizes,
        batch=args.batch,
        dask_workers=args.workers,
        seed=args.seed,
        progress=True,
    )
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
