"""Timing, machine description, memory bandwidth and the result table."""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = [
    "Impl",
    "Row",
    "Timing",
    "format_table",
    "machine_info",
    "measure",
    "memory_bandwidth",
    "write_json",
]


@dataclass(frozen=True, slots=True)
class Timing:
    """Seconds per call: the median and the best of ``samples`` samples, each
    the mean over ``inner`` back-to-back calls."""

    median: float
    best: float
    inner: int
    samples: int


def measure(
    fn: Callable[[], object], *, repeat: int, quick: bool, min_sample: float = 0.02
) -> Timing:
    """Median time of one call of ``fn`` after warm-up.

    Fast calls are repeated inside each sample until it lasts about
    ``min_sample`` seconds, so the timer's resolution does not matter; the
    per-call figure then includes the Python loop (~30 ns a call, see the
    "Python: empty function" row of the overhead case). ``quick``: one
    warm-up call and one timed call, nothing else.
    """
    fn()  # first call: lazy initialisation, page faults, thread pool start-up
    if quick:
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        return Timing(t, t, 1, 1)
    # Warm up for at least 3 calls or 50 ms, and estimate one call's time.
    calls, t0 = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - t0 < 0.05:
        fn()
        calls += 1
    one = (time.perf_counter() - t0) / calls
    inner = max(1, min(1_000_000, round(min_sample / max(one, 1e-9))))
    samples: list[float] = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - t0) / inner)
    return Timing(statistics.median(samples), min(samples), inner, len(samples))


@dataclass(slots=True)
class Impl:
    """One implementation of a case: ``fn`` runs it once on prepared inputs.

    ``nbytes`` overrides the case's compulsory memory traffic when this
    implementation must move more (a float32 weight matrix instead of int8).
    ``fn=None`` with a ``note`` is a skipped column (peer not installed, ...).
    """

    name: str
    fn: Callable[[], object] | None
    note: str = ""
    nbytes: int | None = None
    dynquant: bool = False  # one of dynquant's own functions (its errors fail the run)


def measure_interleaved(
    fns: dict[int, Callable[[], object]], *, repeat: int, idle: float = 0.1
) -> dict[int, Timing | Exception]:
    """Median time of one call of each of ``fns``, taking the samples in turn
    (one call of each, ``repeat`` rounds) instead of one function after the
    other: for long calls (a model's encode) on a shared machine, whose speed
    drifts over seconds, every function then sees the same drift. Before
    each call the machine idles ``idle`` seconds, so the previous library's
    spinning threads (OpenBLAS, OpenMP, dynquant's) do not run beside it.
    A function that raises gets its exception instead of a timing."""
    samples: dict[int, list[float]] = {k: [] for k in fns}
    failed: dict[int, Exception] = {}
    for k, fn in fns.items():
        try:
            fn()  # warm-up
        except Exception as e:
            failed[k] = e
    for _ in range(max(1, repeat)):
        for k, fn in fns.items():
            if k in failed:
                continue
            time.sleep(idle)
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as e:
                failed[k] = e
                continue
            samples[k].append(time.perf_counter() - t0)
    out: dict[int, Timing | Exception] = dict(failed)
    for k, ts in samples.items():
        if k not in failed:
            out[k] = Timing(statistics.median(ts), min(ts), 1, len(ts))
    return out


@dataclass(slots=True)
class Row:
    """One line of the table (and of ``--json``)."""

    case: str
    group: str
    threads: int
    impl: str
    seconds: float | None
    best_seconds: float | None = None
    inner: int | None = None
    samples: int | None = None
    ratio: float | None = None  # dynquant seconds / this row's seconds
    gbps: float | None = None
    bw_fraction: float | None = None
    gops: float | None = None
    note: str = ""
    reference: bool = False  # the case's first row, the one the ratios divide
    dynquant: bool = False
    error: bool = False


def _read_cpuinfo() -> tuple[str, int | None]:
    model, cores = platform.processor() or platform.machine(), None
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return model, cores
    physical: set[tuple[str, str]] = set()
    phys_id, core_id = "0", None
    for line in [*text.splitlines(), ""]:
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "model name" and model in {"", platform.machine(), platform.processor()}:
            model = value
        elif key == "physical id":
            phys_id = value
        elif key == "core id":
            core_id = value
        elif not line.strip() and core_id is not None:
            physical.add((phys_id, core_id))
            core_id = None
    return model, len(physical) or None


def _l3_cache() -> str | None:
    """The size of the largest cache level, from sysfs (e.g. "32768K")."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    best: tuple[int, str] | None = None
    try:
        for entry in os.listdir(base):
            if not entry.startswith("index"):
                continue
            with open(f"{base}/{entry}/level", encoding="utf-8") as f:
                level = int(f.read())
            with open(f"{base}/{entry}/size", encoding="utf-8") as f:
                size = f.read().strip()
            if best is None or level > best[0]:
                best = (level, f"L{level} {size}")
    except (OSError, ValueError):
        return None
    return None if best is None else best[1]


def machine_info(versions: dict[str, str | None], extra: dict[str, Any]) -> dict[str, Any]:
    """CPU, cores, date, library versions and whatever the caller adds."""
    model, physical = _read_cpuinfo()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical,
        "usable_cpus": affinity,
        "last_level_cache": _l3_cache(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }
    info.update(extra)
    return info


def memory_bandwidth(threads: int, nbytes: int, repeat: int) -> float:
    """GB/s of a NumPy copy of ``nbytes`` (bytes read + bytes written, per
    second), split over ``threads`` Python threads (NumPy releases the GIL
    while copying); the best of ``repeat`` copies after one warm-up."""
    n = nbytes // 4
    src = np.ones(n, dtype=np.float32)
    dst = np.zeros(n, dtype=np.float32)  # zeros + the warm-up copy fault the pages in
    bounds = [n * i // threads for i in range(threads + 1)]
    parts = [(dst[a:b], src[a:b]) for a, b in itertools.pairwise(bounds)]

    def copy_part(p: tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]) -> None:
        np.copyto(p[0], p[1])

    best = float("inf")
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in range(max(1, repeat) + 1):
            t0 = time.perf_counter()
            list(pool.map(copy_part, parts))
            best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best / 1e9


def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(rows: Sequence[Row]) -> str:
    """The rows as aligned text; a case's label and thread count are printed
    on its first line only."""
    head = (
        "case",
        "thr",
        "implementation",
        "median",
        "best",
        "ratio",
        "GB/s",
        "%bw",
        "GOP/s",
        "note",
    )
    lines: list[tuple[str, ...]] = []
    last: tuple[str, int] | None = None
    for r in rows:
        key = (r.case, r.threads)
        lines.append(
            (
                r.case if key != last else "",
                str(r.threads) if key != last else "",
                r.impl,
                _fmt_time(r.seconds),
                _fmt_time(r.best_seconds),
                "-" if r.reference else _fmt(r.ratio, ".2f"),
                _fmt(r.gbps, ".1f"),
                "-" if r.bw_fraction is None else f"{100 * r.bw_fraction:.0f}%",
                _fmt(r.gops, ".1f"),
                r.note,
            )
        )
        last = key
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head) - 1)]
    right = {1, 3, 4, 5, 6, 7, 8}

    def fmt_line(cols: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=False))
        ]
        return ("  ".join(cells) + "  " + cols[-1]).rstrip()

    out = [fmt_line(head), "-" * (sum(widths) + 2 * len(widths) + 4)]
    prev_case = None
    for cols, r in zip(lines, rows, strict=True):
        if prev_case is not None and r.case != prev_case:
            out.append("")
        out.append(fmt_line(cols))
        prev_case = r.case
    return "\n".join(out)


def write_json(path: str, header: dict[str, Any], rows: Sequence[Row], legend: str) -> None:
    """The header, the bandwidth, the rows and the legend as one JSON document."""
    doc = {"header": header, "legend": legend, "rows": [asdict(r) for r in rows]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")
