"""CalibObserver and ChannelMaxObserver: against CalibStats.collect and
compute_smooth_factors, the merge laws, the sketch's bound, pickling, the NaN
policy, progress and plotting."""

from __future__ import annotations

import copy
import importlib
import importlib.util
import itertools
import math
import pickle
import random
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from fractions import Fraction
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import dynquant as dq
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

F32 = npt.NDArray[np.float32]
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "minilm_layers.npz"


def ref_rank(q: float, n: int) -> int:
    """The reference's percentile index: ceil(q * n) - 1 in float32."""
    k = math.ceil(float(np.float32(q) * np.float32(n))) - 1
    return min(max(k, 0), n - 1)


def exact_quantile(values: F32, q: float) -> float:
    a = np.abs(values.reshape(-1))
    k = ref_rank(q, a.size)
    return float(np.partition(a, k)[k])


def assert_matches_collect(batches: list[F32], nan_policy: str = "raise") -> None:
    obs = dq.CalibObserver(exact=True, nan_policy=nan_policy)
    for b in batches:
        obs.update(b)
    got = obs.stats()
    want = dq.CalibStats.collect(batches, nan_policy=nan_policy)
    assert (got.min, got.max) == (want.min, want.max)  # ±0 compare equal
    assert np.float32(got.p99).tobytes() == np.float32(want.p99).tobytes()
    assert np.float32(got.suggested_scale).tobytes() == np.float32(want.suggested_scale).tobytes()
    values = [np.asarray(b, np.float32).reshape(-1) for b in batches]
    if not all(np.isfinite(v).all() for v in values):
        for g, w in ((got.mean, want.mean), (got.std_dev, want.std_dev)):
            assert (math.isnan(g) and math.isnan(w)) or g == pytest.approx(w, rel=1e-6, abs=1e-30)
        return
    # The observer sums exactly: its mean and std_dev are the exact values,
    # rounded (to float32, like every CalibStats field). collect sums in
    # float64, which cancellation can ruin (3.4e38 + 1 - 3.4e38 gives a mean
    # of 0, not 1/3): it must agree with the observer, or be the farther of
    # the two from the exact value.
    exact = exact_mean_std(values)
    for g, w, e in zip((got.mean, got.std_dev), (want.mean, want.std_dev), exact, strict=True):
        assert g == pytest.approx(e, rel=2.5e-7, abs=1e-44)  # within ~2 float32 ulps
        assert g == pytest.approx(w, rel=1e-6, abs=1e-30) or abs(w - e) > abs(g - e)


def exact_mean_std(values: list[F32]) -> tuple[float, float]:
    """Mean and population standard deviation from exact rational sums."""
    xs = [Fraction(float(v)) for a in values for v in a]
    if not xs:
        return 0.0, 0.0
    n = len(xs)
    s = sum(xs, Fraction(0))
    s2 = sum((x * x for x in xs), Fraction(0))
    return float(s / n), math.sqrt(float((n * s2 - s * s) / (n * n)))


def rng_batches(seed: int, count: int = 5, size: int = 1000) -> list[F32]:
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal(size) * rng.choice([1e-3, 1.0, 40.0])).astype(np.float32)
        for _ in range(count)
    ]


# Batches of finite float32 over a range the default bound keeps whole
# (53 of the 64 octaves), with zeros.
finite_f32 = st.floats(
    min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False, width=32
).map(lambda v: 0.0 if 0 < abs(v) < 1e-12 else v)
batch_st = hnp.arrays(np.float32, st.integers(0, 200), elements=finite_f32)
any_f32 = hnp.arrays(
    np.float32,
    st.integers(0, 200),
    elements=st.floats(allow_nan=False, allow_infinity=False, width=32),
)


def test_small_example() -> None:
    batches = [np.array([1.0, 2.0, 3.0], np.float32), np.array([-1.0, 0.0, 4.0], np.float32)]
    obs = dq.calibrate(batches)
    s = obs.stats()
    assert (s.min, s.max, s.p99, s.mean) == (-1.0, 4.0, 4.0, 1.5)
    assert s.suggested_scale == pytest.approx(4 / 127)
    assert obs.count == 6 and obs.zero_count == 1
    assert_matches_collect(batches)
    assert "count=6" in repr(obs)


def test_empty_observer() -> None:
    obs = dq.CalibObserver()
    assert obs.stats() == dq.CalibStats(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    assert obs.quantile(0.5) == 0.0 and obs.count == 0
    obs.update(np.zeros((0, 4), np.float32))
    assert obs.count == 0
    assert dq.CalibObserver(exact=True).stats() == dq.CalibStats.collect([])


def test_any_shape_and_dtype() -> None:
    x = np.arange(-12, 12, dtype=np.float64).reshape(2, 3, 4)
    a = dq.CalibObserver().update(x)
    b = dq.CalibObserver().update(x.astype(np.float32).ravel().tolist())
    c = dq.CalibObserver().update(np.asfortranarray(x.reshape(6, 4)))
    assert a.to_bytes() == b.to_bytes() == c.to_bytes()
    with pytest.raises(dq.DTypeError):
        dq.CalibObserver().update(np.array(["a"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(any_f32, max_size=6))
def test_exact_mode_equals_collect(batches: list[F32]) -> None:
    assert_matches_collect(batches)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(batch_st, min_size=1, max_size=6),
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=5),
    st.sampled_from([0.005, 0.001, 0.02, 0.1]),
)
def test_sketch_within_relative_accuracy(batches: list[F32], qs: list[float], alpha: float) -> None:
    obs = dq.CalibObserver(relative_accuracy=alpha).update_many(batches)
    values = np.concatenate(batches)
    if values.size == 0:
        return
    assert obs.collapsed_count == 0
    for q in [*qs, 0.99, 1.0, 0.0]:
        want = exact_quantile(values, q)
        assert abs(obs.quantile(q) - want) <= alpha * want
    want = exact_quantile(values, 0.99)
    assert abs(obs.stats().p99 - want) <= alpha * want


def tree_merge(observers: list[dq.CalibObserver], rnd: random.Random) -> dq.CalibObserver:
    """Merge copies of ``observers`` in a random tree, in random orders."""
    nodes = [o.copy() for o in observers]
    while len(nodes) > 1:
        i, j = rnd.sample(range(len(nodes)), 2)
        merged = nodes[i].merge(nodes[j])
        nodes = [n for k, n in enumerate(nodes) if k not in (i, j)] + [merged]
    return nodes[0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(batch_st, min_size=1, max_size=8),
    st.randoms(use_true_random=False),
    st.sampled_from([None, 50, 200]),
)
def test_merge_laws(batches: list[F32], rnd: random.Random, max_buckets: int | None) -> None:
    def fresh() -> dq.CalibObserver:
        return dq.CalibObserver(max_buckets=max_buckets)

    sequential = fresh().update_many(batches)
    each = [fresh().update(b) for b in batches]
    # Any tree and order gives the same state, byte for byte (exact parts,
    # bucket counts, and mean/std computed from exact sums).
    assert tree_merge(each, rnd).to_bytes() == sequential.to_bytes()
    assert tree_merge(each[::-1], rnd).to_bytes() == sequential.to_bytes()
    # Identity, and one batch of everything.
    assert fresh().merge(sequential).to_bytes() == sequential.to_bytes()
    assert fresh().update(np.concatenate(batches)).to_bytes() == sequential.to_bytes()
    a, b = sequential.stats(), tree_merge(each, rnd).stats()
    assert a == b


def test_merge_with_itself_and_settings() -> None:
    x = rng_batches(1, 1)[0]
    a = dq.CalibObserver().update(x)
    a.merge(a)
    assert a.to_bytes() == dq.CalibObserver().update(np.concatenate([x, x])).to_bytes()
    with pytest.raises(dq.InvalidArgumentError, match="different settings") as info:
        a.merge(dq.CalibObserver(relative_accuracy=0.01))
    # Only what differs, in the Python spelling (no Rust struct dump).
    message = str(info.value)
    assert f"relative_accuracy {a.relative_accuracy} vs 0.01" in message, message
    assert "ObserverConfig" not in message
    with pytest.raises(dq.InvalidArgumentError, match=r"exact False vs True$"):
        a.merge(dq.CalibObserver(exact=True))
    with pytest.raises(dq.ArgumentTypeError):
        a.merge(x)  # type: ignore[arg-type]


def test_exact_mode_merges() -> None:
    batches = rng_batches(2)
    parts = [dq.CalibObserver(exact=True).update(b) for b in batches]
    merged = parts[3].copy().merge(parts[0]).merge(parts[4]).merge(parts[1].merge(parts[2]))
    assert merged.stats() == dq.CalibObserver(exact=True).update_many(batches).stats()
    assert_matches_collect(batches)


def test_mean_and_std_are_accurate() -> None:
    obs = dq.CalibObserver().update(np.array([1e20, 1.0, -1e20], np.float32))
    assert obs.mean == 1 / 3  # the naive float64 sum would give 0
    x = np.concatenate(rng_batches(3))
    obs = dq.CalibObserver().update(x)
    assert obs.mean == pytest.approx(x.astype(np.float64).mean(), rel=1e-12, abs=1e-15)
    assert obs.std_dev == pytest.approx(x.astype(np.float64).std(), rel=1e-12)


def test_pickle_copy_and_bytes() -> None:
    for exact in (False, True):
        obs = dq.CalibObserver(exact=exact, relative_accuracy=0.01, max_buckets=1000)
        obs.update_many(rng_batches(4))
        for clone in (
            pickle.loads(pickle.dumps(obs)),
            copy.copy(obs),
            copy.deepcopy(obs),
            dq.CalibObserver.from_bytes(obs.to_bytes()),
        ):
            assert clone.to_bytes() == obs.to_bytes()
            assert clone.stats() == obs.stats()
            assert (clone.exact, clone.relative_accuracy, clone.max_buckets) == (
                exact,
                0.01,
                1000,
            )
        clone.update(np.ones(3, np.float32))
        assert clone.count == obs.count + 3
    # Compact: the sketch, not the data.
    big = dq.CalibObserver().update(np.random.default_rng(0).standard_normal(10**6))
    assert len(big.to_bytes()) < 16_000
    with pytest.raises(dq.InvalidArgumentError, match="malformed"):
        dq.CalibObserver.from_bytes(big.to_bytes()[:-1])
    with pytest.raises(dq.InvalidArgumentError, match="malformed"):
        dq.CalibObserver.from_bytes(b"garbage")
    with pytest.raises(dq.ArgumentTypeError):
        dq.CalibObserver.from_bytes("text")  # type: ignore[arg-type]


def _observe_in_subprocess(batch: F32) -> dq.CalibObserver:
    return dq.CalibObserver().update(batch)


def test_observers_travel_between_processes() -> None:
    batches = rng_batches(5, count=4, size=50_000)
    with ProcessPoolExecutor(2, mp_context=get_context("spawn")) as pool:
        parts = list(pool.map(_observe_in_subprocess, batches))
    merged = dq.CalibObserver()
    for p in parts:
        merged.merge(p)
    assert merged.to_bytes() == dq.CalibObserver().update_many(batches).to_bytes()


def test_threads_with_their_own_observers() -> None:
    batches = rng_batches(6, count=8, size=100_000)
    with ThreadPoolExecutor(4) as pool:
        parts = list(pool.map(lambda b: dq.CalibObserver().update(b), batches))
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    assert merged.to_bytes() == dq.CalibObserver().update_many(batches).to_bytes()


def test_threads_sharing_one_observer() -> None:
    # Batches are observed outside the lock and merged exactly: concurrent
    # updates give the state of sequential ones, byte for byte.
    batches = rng_batches(10, count=16, size=50_000)
    shared = dq.CalibObserver()
    channels = dq.ChannelMaxObserver()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(shared.update, batches))
        list(pool.map(lambda b: channels.update(b.reshape(-1, 100)), batches))
        list(pool.map(lambda _: shared.stats(), range(8)))
    assert shared.to_bytes() == dq.CalibObserver().update_many(batches).to_bytes()
    want = dq.ChannelMaxObserver().update(np.concatenate(batches).reshape(-1, 100))
    assert channels.to_bytes() == want.to_bytes()


def test_nan_policy() -> None:
    obs = dq.CalibObserver().update(np.ones(4, np.float32))
    before = obs.to_bytes()
    bad = np.array([[1.0, 2.0], [np.inf, np.nan]], np.float32)
    with pytest.raises(dq.NonFiniteError) as e:
        obs.update(bad)
    assert e.value.index == 2
    assert obs.to_bytes() == before, "a rejected batch leaves the observer unchanged"
    ref = dq.CalibObserver(nan_policy="reference", exact=True)
    with pytest.raises(dq.NonFiniteError) as e:
        ref.update(bad)
    assert e.value.index == 3
    with pytest.raises(dq.InvalidArgumentError):
        dq.CalibObserver(nan_policy="ignore")
    batches = [np.array([1.0, np.inf, -3.0], np.float32), np.full(300, 0.5, np.float32)]
    assert_matches_collect(batches, nan_policy="reference")
    sketch = dq.CalibObserver(nan_policy="reference").update_many(batches)
    assert sketch.stats().max == math.inf and sketch.quantile(1.0) == math.inf
    assert math.isnan(sketch.std_dev) and sketch.mean == math.inf
    assert sketch.nan_policy == "reference"


def test_arguments_are_checked() -> None:
    for bad in (0.0, -0.1, 0.9, math.nan, 1e-7):
        with pytest.raises(dq.InvalidArgumentError):
            dq.CalibObserver(relative_accuracy=bad)
    with pytest.raises(dq.ArgumentTypeError):
        dq.CalibObserver(relative_accuracy="0.01")  # type: ignore[arg-type]
    for bad_int in (0, -5, 2**24 + 1):
        with pytest.raises(dq.InvalidArgumentError):
            dq.CalibObserver(max_buckets=bad_int)
    with pytest.raises(dq.ArgumentTypeError):
        dq.CalibObserver(max_buckets=True)
    obs = dq.CalibObserver().update(np.ones(3, np.float32))
    for q in (-0.1, 1.1, math.nan):
        with pytest.raises(dq.InvalidArgumentError):
            obs.quantile(q)


def test_bound_folds_only_the_lowest_values() -> None:
    values = np.arange(1, 10_001, dtype=np.float32) * np.float32(1e-3)
    obs = dq.CalibObserver(max_buckets=140).update(values)
    assert obs.collapsed_count > 0 and obs.bucket_count <= 140
    for q in (0.9, 0.99, 0.999):
        want = exact_quantile(values, q)
        assert abs(obs.quantile(q) - want) <= 0.005 * want
    assert obs.quantile(0.01) > exact_quantile(values, 0.01) * 1.01


def test_histogram_and_accuracy_settings() -> None:
    x = np.concatenate(rng_batches(7))
    obs = dq.CalibObserver().update(x)
    lower, upper, counts = obs.histogram()
    assert counts.sum() + obs.zero_count == x.size
    assert np.all(upper > lower) and np.all(lower[1:] >= upper[:-1])
    assert obs.buckets_per_octave == 70
    assert 0.0049 < obs.effective_accuracy <= obs.relative_accuracy == 0.005
    assert np.allclose(upper / lower, 2 ** (1 / 70))


def test_calibrate_with_and_without_tqdm(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    batches = rng_batches(8)
    want = dq.CalibObserver().update_many(batches).to_bytes()
    assert dq.calibrate(iter(batches), progress=True).to_bytes() == want
    real_import = importlib.import_module

    def no_tqdm(name: str, *args: Any) -> Any:
        if name.startswith("tqdm"):
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_tqdm)
    capsys.readouterr()
    assert dq.calibrate(batches, progress=True).to_bytes() == want
    assert capsys.readouterr().err == ""  # the quiet fallback


def test_plot_histogram(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    obs = dq.CalibObserver().update(np.concatenate(rng_batches(9)))
    out = obs.plot_histogram(tmp_path / "hist.png")
    assert Path(out).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    obs.plot_histogram(tmp_path / "clip.svg", clip=0.5, title="layer 0")
    assert "layer 0" in (tmp_path / "clip.svg").read_text()
    dq.CalibObserver().plot_histogram(tmp_path / "empty.png")


def test_plot_histogram_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_import = importlib.import_module

    def no_matplotlib(name: str, *args: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args)

    monkeypatch.setattr(importlib, "import_module", no_matplotlib)
    with pytest.raises(ImportError, match=r"pip install 'dynquant\[plot\]'"):
        dq.CalibObserver().plot_histogram(tmp_path / "x.png")


# --- ChannelMaxObserver -------------------------------------------------------


def bits(a: F32) -> bytes:
    return np.ascontiguousarray(a, np.float32).tobytes()


@settings(max_examples=60, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=24),
        elements=finite_f32,
    ),
    st.lists(st.integers(0, 24), max_size=4),
    st.floats(0.0, 1.0),
    st.sampled_from([1e-5, 0.0, 1e-3, 0.5]),
)
def test_channel_max_equals_compute_smooth_factors(
    acts: F32, cuts: list[int], alpha: float, epsilon: float
) -> None:
    weights = np.random.default_rng(0).standard_normal((5, acts.shape[1])).astype(np.float32)
    config = dq.SmoothQuantConfig(alpha, epsilon)
    want = dq.compute_smooth_factors(acts, weights, config)
    edges = sorted({0, acts.shape[0], *(c % (acts.shape[0] + 1) for c in cuts)})
    parts = [dq.ChannelMaxObserver().update(acts[a:b]) for a, b in itertools.pairwise(edges)]
    obs = parts[-1]
    for p in parts[:-1]:
        obs.merge(pickle.loads(pickle.dumps(p)))
    assert obs.tokens == acts.shape[0]
    assert bits(obs.smooth_factors(weights, config)) == bits(want)
    assert bits(obs.act_max) == bits(np.abs(acts).max(axis=0))


EXTRACT = Path(__file__).resolve().parent / "data" / "minilm_extract.npz"


@pytest.mark.parametrize(
    ("source", "layers"),
    [
        (EXTRACT, ("l0.ffn_in", "l5.ffn_in", "l0.ffn_out")),  # committed: always runs
        (SHARED_DATA, ("l0.ffn_in", "l5.ffn_out", "l0.q")),  # full layers, in the workspace
    ],
    ids=["extract", "shared"],
)
def test_channel_max_on_real_activations(source: Path, layers: tuple[str, ...]) -> None:
    if not source.exists():
        pytest.skip(f"{source.name} not available (the committed extract always is)")
    data = np.load(source)
    for layer in layers:
        x, w = data[f"{layer}.x"], data[f"{layer}.w"]
        want = dq.compute_smooth_factors(x, w)
        obs = dq.ChannelMaxObserver(x.shape[1]).update_many(np.array_split(x, 7), progress=True)
        assert bits(obs.smooth_factors(w)) == bits(want)


def test_channel_max_shapes_and_errors() -> None:
    obs = dq.ChannelMaxObserver(nan_policy="raise")
    assert obs.in_features is None and obs.tokens == 0
    obs.update(np.ones((2, 3, 4), np.float32))  # [batch, seq, in]
    obs.update(np.full(4, -2.0, np.float32))  # one token
    assert obs.tokens == 7 and obs.in_features == 4
    assert obs.act_max.tolist() == [2.0] * 4
    with pytest.raises(dq.FeatureDimMismatchError) as info:
        obs.update(np.ones((2, 5), np.float32))
    assert (info.value.in_features, info.value.sf_len, info.value.argument) == (4, 5, "activations")
    with pytest.raises(dq.FeatureDimMismatchError) as info:
        obs.smooth_factors(np.ones((3, 5), np.float32))
    assert (info.value.sf_len, info.value.argument) == (5, "weights")
    # The core's own check (behind the Python one) names the input too.
    with pytest.raises(dq.FeatureDimMismatchError) as info:
        obs._impl.smooth_factors(np.ones((3, 5), np.float32), 0.5, 1e-5)
    assert (info.value.in_features, info.value.sf_len, info.value.argument) == (4, 5, "weights")
    with pytest.raises(dq.FeatureDimMismatchError) as info:
        obs.merge(dq.ChannelMaxObserver(6))
    assert (info.value.sf_len, info.value.argument) == (6, "other")
    with pytest.raises(dq.ShapeMismatchError):
        obs.update(np.float32(1.0))
    with pytest.raises(dq.NonFiniteError) as e:
        obs.update(np.array([[1, 2, 3, 4], [5, np.nan, 7, 8]], np.float32))
    assert e.value.index == 5 and obs.tokens == 7
    for inf in (np.inf, -np.inf):  # an infinity alone is refused too
        with pytest.raises(dq.NonFiniteError) as e:
            obs.update(np.array([[1, 2, 3, 4], [5, 6, inf, 8]], np.float32))
        assert e.value.index == 6 and e.value.value == inf and obs.tokens == 7
    with pytest.raises(dq.InvalidArgumentError, match="no activations"):
        dq.ChannelMaxObserver().smooth_factors(np.ones((2, 2), np.float32))
    assert dq.ChannelMaxObserver(3).smooth_factors(np.ones((2, 3), np.float32)).shape == (3,)
    ref = dq.ChannelMaxObserver(nan_policy="reference")
    ref.update(np.array([[np.nan, 1.0, 0.0, 3.0], [-np.inf, 2.0, 0.0, 0.0]], np.float32))
    assert ref.act_max.tolist() == [math.inf, 2.0, 0.0, 3.0]
    with pytest.raises(dq.InvalidArgumentError):
        obs.merge(ref)
    obs.merge(obs)
    assert obs.tokens == 14
    assert "tokens=14" in repr(obs)
    with pytest.raises(dq.InvalidArgumentError, match="malformed"):
        dq.ChannelMaxObserver.from_bytes(obs.to_bytes()[:-2])
    empty = dq.ChannelMaxObserver(0).update(np.zeros((5, 0), np.float32))
    assert empty.tokens == 5 and empty.smooth_factors(np.zeros((2, 0), np.float32)).size == 0


def test_unaligned_buffers_are_accepted() -> None:
    # Dask and pickle-5 can hand over arrays whose data is not 4-byte aligned.
    raw = bytearray(4 * 64 + 1)
    x = np.frombuffer(memoryview(raw)[1:], dtype=np.float32)
    assert not x.flags.aligned
    assert dq.CalibObserver().update(x).count == 64
    assert dq.ChannelMaxObserver().update(x.reshape(8, 8)).tokens == 8


def test_dask_module_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("dask", "dask.array", "dask.bag", "dask.delayed"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "dynquant.dask", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'dynquant\[dask\]'"):
        importlib.import_module("dynquant.dask")


DOCS = Path(__file__).resolve().parents[1] / "docs" / "calibration.md"


def doc_blocks() -> list[str]:
    """The ```python blocks of docs/calibration.md."""
    text = DOCS.read_text()
    return [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]


def run_script(path: Path, code: str) -> str:
    path.write_text(code)
    done = subprocess.run(
        [sys.executable, path.name], cwd=path.parent, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_docs_calibration_examples_run(tmp_path: Path) -> None:
    """Every example of docs/calibration.md but Dask's, as one script."""
    has_plot = importlib.util.find_spec("matplotlib") is not None
    blocks = [
        b for b in doc_blocks() if "dask" not in b and (has_plot or "plot_histogram" not in b)
    ]
    assert len(blocks) >= 4
    out = run_script(tmp_path / "calibration_example.py", "\n".join(blocks))
    assert "bytes for 400000 values" in out
    if has_plot:
        assert (tmp_path / "activations-hist.png").stat().st_size > 1000


def test_observer_bench_runs() -> None:
    from dynquant import observer_bench

    rows = observer_bench.run(sizes=(200_000,), batch=30_000, dask_workers=())
    assert [r["name"] for r in rows] == ["collect", "observer"]
    collect, obs = rows
    assert obs["p99_rel_error"] <= 0.005
    assert obs["state"] == observer_bench._state(
        dq.CalibObserver().update_many(
            observer_bench.make_batch(0, i, s)
            for i, s in enumerate(observer_bench._batch_sizes(200_000, 30_000))
        )
    )
    assert collect["peak_rss_mib"] > 0 and obs["peak_growth_mib"] >= 0
    assert "observer" in observer_bench.format_table(rows)


def test_channel_max_smooth_factors_refuse_non_finite_weights() -> None:
    obs = dq.ChannelMaxObserver().update(np.ones((4, 3), np.float32))
    w = np.array([[1.0, 2.0, np.inf]], np.float32)
    with pytest.raises(dq.NonFiniteError, match="index 2 of weights"):
        obs.smooth_factors(w)
    ref_obs = dq.ChannelMaxObserver(nan_policy="reference").update(np.ones((4, 3), np.float32))
    got = ref_obs.smooth_factors(w)
    want = dq.compute_smooth_factors(np.ones((4, 3), np.float32), w, nan_policy="reference")
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ([[1.0, 2.0], [3.0]], dq.ShapeMismatchError, "rectangular"),
        ("abc", dq.DTypeError, "dtype <U3"),
        (None, dq.DTypeError, "dtype object"),
        (3.0, dq.ShapeMismatchError, "feature axis"),
    ],
)
def test_channel_max_update_refuses_non_arrays(value: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        dq.ChannelMaxObserver().update(value)
