"""Distributed calibration on a local Dask cluster of two worker processes.

Skipped when dask[distributed] is not installed (requirements-dask.txt)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dynquant as dq
import numpy as np
import numpy.typing as npt
import pytest

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
delayed_module = pytest.importorskip("dask.delayed")
dqd = pytest.importorskip("dynquant.dask")

F32 = npt.NDArray[np.float32]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    # Worker processes inherit the environment: one Rust thread each, as
    # there is one Dask thread per worker.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    with (
        distributed.LocalCluster(
            n_workers=2,
            processes=True,
            threads_per_worker=1,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


@pytest.fixture(scope="module")
def values() -> F32:
    rng = np.random.default_rng(42)
    x = rng.standard_normal((3000, 384)).astype(np.float32)
    x[:, 7] *= 30.0  # an outlier channel
    x[::17, 3] = 0.0
    return x


def test_two_worker_processes(client: Any) -> None:
    pids = set(client.run(os.getpid).values())
    assert len(pids) == 2 and os.getpid() not in pids


def test_array_equals_single_process(client: Any, values: F32) -> None:
    x = da.from_array(values, chunks=(250, 128))
    obs = dqd.observe(x, client=client, split_every=3)
    local = dq.CalibObserver().update(values)
    # Exact parts (count, min, max, bucket counts) and the mean/std from
    # exact sums: the whole state, byte for byte.
    assert obs.to_bytes() == local.to_bytes()
    assert obs.count == values.size
    a = np.abs(values.reshape(-1))
    k = int(np.ceil(np.float32(0.99) * np.float32(a.size))) - 1
    exact_p99 = float(np.partition(a, k)[k])
    assert abs(obs.stats().p99 - exact_p99) <= 0.005 * exact_p99
    assert obs.stats().p99 == local.stats().p99


def test_default_scheduler_is_the_client(client: Any, values: F32) -> None:
    x = da.from_array(values.astype(np.float64), chunks=(1000, 384))
    obs = dqd.observe(x, relative_accuracy=0.01)  # the last Client created
    assert obs.to_bytes() == dq.CalibObserver(relative_accuracy=0.01).update(values).to_bytes()


def test_exact_mode_equals_collect(client: Any, values: F32) -> None:
    x = da.from_array(values[:600], chunks=(100, 384))
    stats = dqd.observe(x, exact=True, client=client).stats()
    want = dq.CalibStats.collect([values[:600]])
    assert (stats.min, stats.max, stats.p99, stats.suggested_scale) == (
        want.min,
        want.max,
        want.p99,
        want.suggested_scale,
    )


def test_bag_of_arrays(client: Any, values: F32) -> None:
    batches = np.array_split(values, 12)
    bag = db.from_sequence(batches, npartitions=5)
    obs = dqd.observe(bag, client=client)
    assert obs.to_bytes() == dq.CalibObserver().update_many(batches).to_bytes()


def test_channels_equal_compute_smooth_factors(client: Any, values: F32) -> None:
    w = np.random.default_rng(1).standard_normal((64, 384)).astype(np.float32)
    x = da.from_array(values, chunks=(400, 100))  # rechunked to whole rows
    obs = dqd.observe_channels(x, client=client)
    assert obs.tokens == values.shape[0]
    want = dq.compute_smooth_factors(values, w)
    assert obs.smooth_factors(w).tobytes() == want.tobytes()
    bag = db.from_sequence(np.array_split(values, 9), npartitions=3)
    assert dqd.observe_channels(bag, client=client).smooth_factors(w).tobytes() == want.tobytes()


def test_errors_reach_the_caller(client: Any, values: F32) -> None:
    bad = values[:200].copy()
    bad[150, 5] = np.nan
    with pytest.raises(dq.NonFiniteError):
        dqd.observe(da.from_array(bad, chunks=(50, 384)), client=client)
    with pytest.raises(dq.InvalidArgumentError):
        dqd.observe(da.from_array(bad, chunks=50), relative_accuracy=2.0)
    with pytest.raises(dq.InvalidArgumentError):
        dqd.observe(da.from_array(bad, chunks=50), split_every=1)
    with pytest.raises(dq.ArgumentTypeError):
        dqd.observe(bad)
    # compute="no" used to mean True (truthiness); exact too.
    for kwargs in ({"compute": "no"}, {"exact": "no"}):
        with pytest.raises(dq.ArgumentTypeError, match="must be a bool"):
            dqd.observe(da.from_array(values, chunks=50), **kwargs)
    with pytest.raises(dq.ArgumentTypeError, match="compute must be a bool"):
        dqd.observe_channels(da.from_array(values, chunks=50), compute=0)


def test_threaded_scheduler_and_delayed(values: F32) -> None:
    x = da.from_array(values[:500], chunks=(100, 384))
    with dask.config.set(scheduler="threads"):
        lazy = dqd.observe(x, compute=False)
        assert isinstance(lazy, delayed_module.Delayed)
        assert lazy.compute().to_bytes() == dq.CalibObserver().update(values[:500]).to_bytes()
        empty = dqd.observe(da.zeros((0, 4), chunks=2))
        assert empty.count == 0


def test_docs_dask_example_runs(tmp_path: Path) -> None:
    """The LocalCluster example of docs/calibration.md, as a script (the
    multi-machine snippet differs only in the Client's address)."""
    docs = Path(__file__).resolve().parents[1] / "docs" / "calibration.md"
    blocks = [b.split("```", 1)[0] for b in docs.read_text().split("```python\n")[1:]]
    example = [b for b in blocks if "LocalCluster" in b]
    assert len(example) == 1
    script = tmp_path / "dask_example.py"
    script.write_text(blocks[0] + "\n" + example[0])
    done = subprocess.run(
        [sys.executable, script.name], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    assert "CalibStats(" in done.stdout


def test_observer_bench_with_dask() -> None:
    from dynquant import observer_bench

    rows = observer_bench.run(sizes=(100_000,), batch=25_000, dask_workers=(2,))
    assert [r["name"] for r in rows] == ["collect", "observer", "dask-2"]
    assert rows[2]["state"] == rows[1]["state"]  # the same result, bit for bit
    assert rows[2]["worker_peak_rss_mib"] > 0
