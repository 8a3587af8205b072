"""The PyTorch MiniLM (``dynquant.models.minilm_torch``) and the demo's PyTorch rows.

PyTorch is optional: the tests that run it skip when it is not installed (CI
has none); the tests of what happens without it make ``import torch`` fail
(``sys.modules["torch"] = None``) and so always run. Everything that needs
the model skips when the model package is missing, as in test_minilm.py.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import numpy as np
import pytest
from dynquant import demo
from dynquant.demo import CONFIGS, TORCH_DYNAMIC, TORCH_FP32, compare_torch, run_demo
from dynquant.models import DEMO_SENTENCES, MiniLM, ModelNotInstalledError, minilm_torch
from dynquant.models.minilm_torch import (
    TORCH_INSTALL_HINT,
    TorchMiniLM,
    TorchNotInstalledError,
    import_torch,
)

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(
    not HAS_TORCH,
    reason="PyTorch is not installed (optional: pip install torch "
    "--index-url https://download.pytorch.org/whl/cpu)",
)


@pytest.fixture(scope="module")
def model() -> MiniLM:
    try:
        return MiniLM.load()
    except ModelNotInstalledError as exc:
        pytest.skip(f"the model is not installed: {exc}")


@pytest.fixture(scope="module")
def torch_model(model: MiniLM) -> TorchMiniLM:
    if not HAS_TORCH:
        pytest.skip("PyTorch is not installed")
    return TorchMiniLM.from_numpy(model)


@pytest.fixture
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import torch`` fails, as when it is not installed."""
    monkeypatch.setitem(sys.modules, "torch", None)


def _cos(a: Any, b: Any) -> Any:
    return np.sum(a.astype(np.float64) * b.astype(np.float64), axis=1)


# --- with PyTorch ----------------------------------------------------------------------


@needs_torch
def test_torch_fp32_matches_numpy_fp32(model: MiniLM, torch_model: TorchMiniLM) -> None:
    sentences = list(DEMO_SENTENCES)
    # batches of 16 mix short and long sentences: the padded torch batches and
    # the packed NumPy ones must agree, padding masked out of attention and pooling
    ours = model.encode(sentences, batch_size=16)
    theirs = torch_model.encode(sentences, batch_size=16)
    assert theirs.shape == ours.shape == (len(sentences), 384)
    assert theirs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(theirs, axis=1), 1.0, rtol=1e-6)
    assert _cos(ours, theirs).min() >= 0.99999
    assert np.abs(ours - theirs).max() < 2e-5
    # one sentence at a time (no padding at all) gives the same embeddings
    np.testing.assert_allclose(torch_model.encode(sentences[:5], batch_size=1), ours[:5], atol=2e-5)


@needs_torch
def test_torch_model_is_made_of_nn_linear(model: MiniLM, torch_model: TorchMiniLM) -> None:
    import torch

    linears = torch_model.linear_modules()
    assert len(linears) == 36
    assert all(type(m) is torch.nn.Linear for m in linears)
    assert sum(isinstance(m, torch.nn.Linear) for m in torch_model.modules.modules()) == 36
    w, b = model.linear_weight("l3.ffn_out")
    np.testing.assert_array_equal(linears[3 * 6 + 5].weight.detach().numpy(), w)
    np.testing.assert_array_equal(linears[3 * 6 + 5].bias.detach().numpy(), b)
    fp32_bytes = sum(w.nbytes + b.nbytes for w, b in map(model.linear_weight, model.linears))
    assert torch_model.weight_bytes() == fp32_bytes


@needs_torch
def test_quantize_dynamic_replaces_every_linear(model: MiniLM, torch_model: TorchMiniLM) -> None:
    import torch

    dynamic = torch_model.quantize_dynamic()
    assert all(type(m) is torch.nn.Linear for m in torch_model.linear_modules())  # unchanged
    linears = dynamic.linear_modules()
    assert len(linears) == 36
    assert all(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in linears)
    # int8 weights: about a quarter of float32's bytes
    assert 0.24 < dynamic.weight_bytes() / torch_model.weight_bytes() < 0.27
    sentences = list(DEMO_SENTENCES[:32])
    cos = _cos(dynamic.encode(sentences, batch_size=16), model.encode(sentences, batch_size=16))
    # lossy (per-tensor activations), yet clearly the same model
    assert 0.85 < cos.mean() < 0.995
    assert cos.min() > 0.5


@needs_torch
def test_compare_torch_rows(model: MiniLM) -> None:
    import torch

    sentences = list(DEMO_SENTENCES[:12])
    reference = model.encode(sentences, batch_size=4)
    threads_before = torch.get_num_threads()
    rows, embeddings = compare_torch(model, sentences, reference, batch_size=4, threads=1)
    assert torch.get_num_threads() == threads_before  # restored
    assert [r.name for r in rows] == [TORCH_FP32, TORCH_DYNAMIC]
    fp32, dynamic = rows
    assert fp32.min_cos >= 0.99999 and fp32.spearman > 0.9999
    assert fp32.quantize_seconds is None and dynamic.quantize_seconds is not None
    assert dynamic.mean_cos < fp32.mean_cos
    assert dynamic.weight_bytes < 0.27 * fp32.weight_bytes
    assert all(r.seconds > 0 for r in rows)
    assert embeddings[TORCH_FP32].shape == (12, 384)


@needs_torch
def test_demo_prints_torch_rows(model: MiniLM, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--sentences", "8", "--batch-size", "4", "--repeat", "1", "--no-progress"]
    assert run_demo(argv) == 0
    out = capsys.readouterr().out
    for name in ["fp32", *(c.name for c in CONFIGS), TORCH_FP32, TORCH_DYNAMIC]:
        assert f"\n{name} " in out, name
    note = next(line for line in out.splitlines() if line.startswith("PyTorch (same weights"))
    assert "quantize_dynamic" in note and "dynquant W8A8 per-token" in note
    assert "skipped" not in out
    assert run_demo([*argv, "--no-torch"]) == 0
    out = capsys.readouterr().out
    assert TORCH_FP32 not in out and "PyTorch comparison skipped (--no-torch)" in out


# --- without PyTorch (always run) ------------------------------------------------------


@pytest.mark.usefixtures("no_torch")
def test_import_torch_says_how_to_install() -> None:
    with pytest.raises(TorchNotInstalledError, match=r"download\.pytorch\.org/whl/cpu"):
        import_torch()
    assert issubclass(TorchNotInstalledError, ImportError)
    assert "pip install torch" in TORCH_INSTALL_HINT


@pytest.mark.usefixtures("no_torch")
def test_torch_model_needs_torch(model: MiniLM) -> None:
    with pytest.raises(TorchNotInstalledError):
        TorchMiniLM.from_numpy(model)
    with pytest.raises(TorchNotInstalledError):
        compare_torch(model, ["a", "b"], np.zeros((2, 384), dtype=np.float32))


@pytest.mark.usefixtures("no_torch")
def test_demo_without_torch_skips_the_comparison(
    model: MiniLM, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--sentences", "4", "--batch-size", "4", "--repeat", "1", "--no-progress"]
    assert run_demo(argv) == 0
    out = capsys.readouterr().out
    assert TORCH_FP32 not in out and "quantize_dynamic (fbgemm" not in out
    skipped = [line for line in out.splitlines() if "PyTorch comparison skipped" in line]
    assert len(skipped) == 1
    assert "torch is not installed" in skipped[0] and "pip install torch" in skipped[0]
    for name in ["fp32", *(c.name for c in CONFIGS)]:
        assert f"\n{name} " in out, name


def test_broken_torch_install_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = importlib.import_module

    def broken(name: str, package: str | None = None) -> Any:
        if name == "torch":
            raise OSError("libtorch_cpu.so: cannot open shared object file")
        return real_import(name, package)

    monkeypatch.setattr(minilm_torch.importlib, "import_module", broken)
    with pytest.raises(TorchNotInstalledError, match=r"cannot be imported \(OSError"):
        import_torch()


def test_demo_survives_a_failing_torch_comparison(
    model: MiniLM, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no quantized engine")

    monkeypatch.setattr(demo, "compare_torch", failing)
    argv = ["--sentences", "3", "--batch-size", "4", "--repeat", "1", "--no-progress"]
    assert run_demo(argv) == 0
    out = capsys.readouterr().out
    assert "PyTorch comparison failed: RuntimeError: no quantized engine" in out
    assert "\nW8A8 per-token " in out
