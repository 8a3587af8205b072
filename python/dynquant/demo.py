"""``python -m dynquant demo``: a real sentence-embedding model, quantized.

Encodes built-in English sentences with all-MiniLM-L6-v2 in float32 and with
each quantized configuration (every one of its 36 Linear layers replaced by a
:class:`dynquant.QuantizedLinear`), then prints how close the quantized
embeddings stay to float32, the encode time and the weight memory.

``--synthetic`` needs no model: LLM-like activations with outlier channels,
quantized per tensor, per token and with SmoothQuant.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

import dynquant as dq

from .kernels import MAX_THREADS
from .models import DEMO_SENTENCES, MiniLM, MiniLMConfig, ModelNotInstalledError
from .models.minilm import LINEAR_KINDS
from .models.minilm_torch import (
    TORCH_INSTALL_HINT,
    TorchMiniLM,
    TorchNotInstalledError,
    import_torch,
    torch_threads,
)
from .models.sentences import PARAPHRASE_PAIRS, UNRELATED_PAIRS

__all__ = [
    "CONFIGS",
    "QuantConfig",
    "Row",
    "SyntheticData",
    "build_parser",
    "compare_configs",
    "compare_torch",
    "format_table",
    "quantized_factory",
    "run_demo",
    "run_synthetic",
    "spearman",
    "synthetic_data",
    "torch_note",
]

F32 = npt.NDArray[np.float32]
T = TypeVar("T")


@dataclass(frozen=True)
class QuantConfig:
    """One way to quantize every Linear of the model."""

    name: str
    bits: int = 8
    per_token: bool = True
    group_size: int | None = None
    smooth_alpha: float | None = None


CONFIGS: tuple[QuantConfig, ...] = (
    QuantConfig("W8A8 per-tensor", per_token=False),
    QuantConfig("W8A8 per-token"),
    QuantConfig("W8A8 per-token + SmoothQuant 0.5", smooth_alpha=0.5),
    QuantConfig("W4A8 g32 per-token", bits=4, group_size=32),
)


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    name: str
    mean_cos: float
    min_cos: float
    spearman: float
    seconds: float
    weight_bytes: int
    quantize_seconds: float | None = None  # None: nothing to quantize (float rows)


def _optional(module: str) -> Any:
    """An optional dependency (tqdm, matplotlib, threadpoolctl), or None."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


# --- metrics -------------------------------------------------------------------


def _ranks(x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Ranks 0..n-1 of ``x``, ties given their average rank."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.concatenate(([0], np.flatnonzero(sorted_x[1:] != sorted_x[:-1]) + 1))
    ends = np.concatenate((starts[1:], [len(x)]))
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    return ranks


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Spearman rank correlation of two 1-D samples (Pearson of the ranks)."""
    ra, rb = _ranks(np.asarray(a).ravel()), _ranks(np.asarray(b).ravel())
    if ra.shape != rb.shape or len(ra) < 2:
        raise ValueError(
            f"spearman needs two samples of equal size >= 2, got {ra.shape}, {rb.shape}"
        )
    ra -= ra.mean()
    rb -= rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum()) / denom if denom > 0 else float("nan")


def pairwise_similarities(embeddings: F32) -> npt.NDArray[np.float64]:
    """Cosine similarities of all sentence pairs (upper triangle), for unit vectors."""
    e = embeddings.astype(np.float64)
    upper: npt.NDArray[np.float64] = (e @ e.T)[np.triu_indices(len(e), k=1)]
    return upper


# --- running the model -----------------------------------------------------------


def quantized_factory(
    config: QuantConfig,
    calibration: Mapping[str, F32] | None = None,
    built: list[dq.QuantizedLinear] | None = None,
) -> Callable[[str, F32, F32], dq.QuantizedLinear]:
    """A Linear factory for :class:`MiniLM` that builds ``QuantizedLinear``
    layers per ``config`` (appending each to ``built`` when given).
    SmoothQuant needs ``calibration``: each Linear's float inputs ``[tokens, in]``."""

    def make(name: str, weight: F32, bias: F32) -> dq.QuantizedLinear:
        smooth = None
        if config.smooth_alpha is not None:
            if calibration is None:
                raise ValueError(f"{config.name} needs calibration activations")
            smooth = (dq.SmoothQuantConfig(config.smooth_alpha), calibration[name])
        layer = dq.QuantizedLinear.from_float(
            weight,
            bias,
            bits=config.bits,
            group_size=config.group_size,
            per_token=config.per_token,
            smooth=smooth,
        )
        if built is not None:
            built.append(layer)
        return layer

    return make


def _text_progress(desc: str) -> Callable[[Iterable[T], int], Iterable[T]]:
    """A progress bar on stderr: tqdm when installed, else a plain counter."""
    tqdm = _optional("tqdm")

    def wrap(items: Iterable[T], total: int) -> Iterable[T]:
        if tqdm is not None:
            yield from tqdm.tqdm(items, total=total, desc=f"{desc:<34}", unit="batch", leave=False)
            return
        for i, item in enumerate(items, 1):
            print(f"\r{desc}: batch {i}/{total}", end="", file=sys.stderr, flush=True)
            yield item
        print("\r" + " " * (len(desc) + 30) + "\r", end="", file=sys.stderr, flush=True)

    return wrap


def compare_configs(
    model: MiniLM,
    sentences: Sequence[str],
    configs: Sequence[QuantConfig] = CONFIGS,
    *,
    batch_size: int = 16,
    calibration: Mapping[str, F32] | None = None,
    progress: bool = False,
    repeat: int = 1,
) -> tuple[list[Row], dict[str, F32]]:
    """Encode ``sentences`` with ``model`` (a float32 :class:`MiniLM`) and each
    config; return the table rows (fp32 first) and the embeddings by name.
    ``progress`` shows a bar per config when stderr is a terminal. Each
    config's encode time is the median of ``repeat`` runs, taken in turn.

    SmoothQuant configs calibrate on ``calibration``, by default the Linear
    inputs collected from ``sentences`` themselves.
    """
    if any(c.smooth_alpha is not None for c in configs) and calibration is None:
        calibration = model.collect_linear_inputs(sentences, batch_size)
    show_progress = progress and sys.stderr.isatty()
    fp32_bytes = sum(w.nbytes + b.nbytes for w, b in map(model.linear_weight, model.linear_names()))
    variants: list[tuple[str, MiniLM, int, float | None]] = [("fp32", model, fp32_bytes, None)]
    for config in configs:
        built: list[dq.QuantizedLinear] = []
        if show_progress:
            print(f"\rquantizing: {config.name:<34}", end="", file=sys.stderr, flush=True)
        start = time.perf_counter()
        quantized = model.with_linears(quantized_factory(config, calibration, built))
        seconds = time.perf_counter() - start
        weight_bytes = sum(layer.memory_bytes() for layer in built)
        variants.append((config.name, quantized, weight_bytes, seconds))

    if show_progress:
        print("\r" + " " * 50 + "\r", end="", file=sys.stderr, flush=True)
    timed = _timed_encodes(
        [(name, variant.encode) for name, variant, _, _ in variants],
        sentences,
        batch_size,
        repeat,
        show_progress,
    )
    embeddings = {name: emb for name, (emb, _) in timed.items()}
    rows = [
        _row(name, emb, embeddings["fp32"], seconds, weight_bytes, build_seconds)
        for (name, _, weight_bytes, build_seconds), (emb, seconds) in zip(
            variants, timed.values(), strict=True
        )
    ]
    return rows, embeddings


_QUIESCE_SECONDS = 0.15


class _Encode(Protocol):
    def __call__(
        self,
        sentences: Sequence[str],
        batch_size: int = ...,
        progress: Callable[[Iterable[Any], int], Iterable[Any]] | None = ...,
    ) -> F32: ...


def _timed_encodes(
    encodes: Sequence[tuple[str, _Encode]],
    sentences: Sequence[str],
    batch_size: int,
    repeat: int,
    show_progress: bool,
) -> dict[str, tuple[F32, float]]:
    """Each encode's embeddings (its first, untimed run, which also warms it
    up) and the median time of ``repeat`` more runs. The timed runs go in
    turn — one of each config per round — so that the machine's drift over
    the seconds of a demo hits every config alike."""
    embeddings: dict[str, F32] = {}
    for name, encode in encodes:
        _quiesce()
        embeddings[name] = encode(
            sentences, batch_size, progress=_text_progress(name) if show_progress else None
        )
    samples: dict[str, list[float]] = {name: [] for name, _ in encodes}
    for run in range(repeat):
        for name, encode in encodes:
            if show_progress:
                print(f"\rtiming round {run + 1}/{repeat}: {name:<40}", end="", file=sys.stderr)
            _quiesce()
            start = time.perf_counter()
            encode(sentences, batch_size)
            samples[name].append(time.perf_counter() - start)
    if show_progress:
        print("\r" + " " * 70 + "\r", end="", file=sys.stderr, flush=True)
    return {name: (embeddings[name], statistics.median(samples[name])) for name, _ in encodes}


def _quiesce() -> None:
    """Lets other libraries' worker threads stop spinning before a timing: the
    previous config's BLAS threads spin for ~0.1 s after their last call
    (OpenBLAS does) and would slow the next config's threads on a 2-core
    machine (measured: W8A8 right after fp32 ~20% slower)."""
    time.sleep(_QUIESCE_SECONDS)


def _row(
    name: str,
    emb: F32,
    ref: F32,
    seconds: float,
    weight_bytes: int,
    quantize_seconds: float | None,
) -> Row:
    """A table row: ``emb`` against the float32 embeddings ``ref``."""
    cos = np.sum(emb.astype(np.float64) * ref, axis=1)
    rho = spearman(pairwise_similarities(emb), pairwise_similarities(ref))
    return Row(
        name, float(cos.mean()), float(cos.min()), rho, seconds, weight_bytes, quantize_seconds
    )


TORCH_FP32 = "PyTorch fp32"
TORCH_DYNAMIC = "PyTorch quantize_dynamic (fbgemm int8)"


def compare_torch(
    model: MiniLM,
    sentences: Sequence[str],
    reference: F32,
    *,
    batch_size: int = 16,
    threads: int | None = None,
    progress: bool = False,
    repeat: int = 1,
) -> tuple[list[Row], dict[str, F32]]:
    """The same model in PyTorch, float32 and after ``quantize_dynamic``
    (:mod:`dynquant.models.minilm_torch`), as table rows against ``reference``
    (the NumPy float32 embeddings of ``sentences``). PyTorch runs with
    ``threads`` threads (default: dynquant's count). Raises
    :class:`TorchNotInstalledError` when PyTorch is missing."""
    torch = import_torch()
    show_progress = progress and sys.stderr.isatty()
    n_threads = dq.kernel_info().threads if threads is None else threads
    rows: list[Row] = []
    embeddings: dict[str, F32] = {}
    with torch_threads(torch, n_threads):
        fp32 = TorchMiniLM.from_numpy(model)
        start = time.perf_counter()
        dynamic = fp32.quantize_dynamic()
        quantize_seconds = time.perf_counter() - start
        variants = ((TORCH_FP32, fp32, None), (TORCH_DYNAMIC, dynamic, quantize_seconds))
        timed = _timed_encodes(
            [(name, variant.encode) for name, variant, _ in variants],
            sentences,
            batch_size,
            repeat,
            show_progress,
        )
        for name, variant, q_seconds in variants:
            emb, seconds = timed[name]
            embeddings[name] = emb
            rows.append(_row(name, emb, reference, seconds, variant.weight_bytes(), q_seconds))
    return rows, embeddings


def torch_note(rows: Sequence[Row]) -> str:
    """One line comparing PyTorch's dynamic int8 with dynquant's W8A8 per-token,
    from the measured rows."""
    by_name = {r.name: r for r in rows}
    ours = by_name.get("W8A8 per-token")
    torch_fp32, dynamic = by_name.get(TORCH_FP32), by_name.get(TORCH_DYNAMIC)
    if dynamic is None or torch_fp32 is None:
        return ""
    line = (
        f"PyTorch (same weights in torch.nn, padded batches): fp32 vs NumPy fp32 min cos "
        f"{torch_fp32.min_cos:.7f}; quantize_dynamic (fbgemm: per-tensor uint8 activations, "
        f"reduced range, per-tensor int8 weights) mean cos {dynamic.mean_cos:.4f} / min "
        f"{dynamic.min_cos:.4f}"
    )
    if ours is not None:
        line += f", dynquant W8A8 per-token {ours.mean_cos:.4f} / {ours.min_cos:.4f}"
    return line + "."


@dataclass(frozen=True)
class Outlier:
    """The token row with the widest per-token int8 step relative to its
    values, among one sentence's Linear inputs."""

    layer: str
    token: int
    channel: int
    ratio: float  # max |x| / median |x| of the row
    zeroed: float  # share of the row's values that round to 0 at max|x| / 127


def worst_outlier(model: MiniLM, sentence: str) -> Outlier:
    """Where per-token quantization hurts ``sentence`` most: the Linear input
    row (over every layer and token) whose largest value dwarfs the rest."""
    best: Outlier | None = None
    for name, x in model.collect_linear_inputs([sentence]).items():
        a = np.abs(x.astype(np.float64))
        peak = a.max(axis=1)
        ratio = peak / np.maximum(np.median(a, axis=1), np.finfo(np.float64).tiny)
        t = int(np.argmax(ratio))
        if best is None or ratio[t] > best.ratio:
            zeroed = float(np.mean(a[t] < peak[t] / 127 / 2))
            best = Outlier(name, t, int(np.argmax(a[t])), float(ratio[t]), zeroed)
    assert best is not None, "a sentence has at least one Linear input"
    return best


def worst_sentence_note(
    model: MiniLM, sentences: Sequence[str], embeddings: Mapping[str, F32]
) -> str:
    """Names the sentence W8A8 per-token encodes worst and measures why."""
    name, smooth = "W8A8 per-token", "W8A8 per-token + SmoothQuant 0.5"
    if name not in embeddings:
        return ""
    ref = embeddings["fp32"].astype(np.float64)
    cos = np.sum(embeddings[name] * ref, axis=1)
    i = int(np.argmin(cos))
    tokens = int(model.tokenize([sentences[i]]).lengths.sum())
    o = worst_outlier(model, sentences[i])
    line = f"Worst sentence for {name}: {sentences[i]!r} ({tokens} tokens), cos {cos[i]:.4f}"
    if smooth in embeddings:
        line += f" ({float(np.sum(embeddings[smooth][i] * ref[i])):.4f} with SmoothQuant)"
    return (
        line + f".\n  Token {o.token} of its {o.layer} input has max|x| = {o.ratio:.0f} x "
        f"median|x| (channel {o.channel}): per-token int8 rounds {o.zeroed:.0%} of that row "
        "to 0.\n  Short sentences weigh such rows most in the mean pooling; SmoothQuant "
        "moves the outlier channel into the weights."
    )


def format_table(rows: Sequence[Row], n_sentences: int) -> str:
    """The results as an aligned text table."""
    width = max([34, *(len(r.name) for r in rows)])
    head = (
        f"{'config':<{width}} {'mean cos':>9} {'min cos':>9} {'Spearman':>9} "
        f"{'encode s':>9} {'sent/s':>7} {'weights MB':>11} {'quantize s':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.name:<{width}} {r.mean_cos:>9.5f} {r.min_cos:>9.5f} {r.spearman:>9.5f} "
            f"{r.seconds:>9.3f} {n_sentences / r.seconds:>7.0f} {r.weight_bytes / 1e6:>11.2f} "
            + (f"{'-':>11}" if r.quantize_seconds is None else f"{r.quantize_seconds:>11.2f}")
        )
    return "\n".join(lines)


def _pair_similarity(
    embeddings: F32, sentences: Sequence[str], pairs: Sequence[tuple[str, str]]
) -> float | None:
    index = {s: i for i, s in enumerate(sentences)}
    sims = [
        float(embeddings[index[a]] @ embeddings[index[b]])
        for a, b in pairs
        if a in index and b in index
    ]
    return float(np.mean(sims)) if sims else None


def plot_smoothing(path: str, layer: str, weight: F32, activations: F32, alpha: float) -> None:
    """Per-input-channel max |x| of ``layer``'s activations (and max |W|) before
    and after SmoothQuant, saved to ``path``."""
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    factors = dq.compute_smooth_factors(activations, weight, dq.SmoothQuantConfig(alpha))
    act_before = np.abs(activations).max(axis=0)
    act_after = np.abs(dq.smooth_activations(activations, factors)).max(axis=0)
    w_before = np.abs(weight).max(axis=0)
    w_after = np.abs(dq.smooth_weights(weight, factors)).max(axis=0)
    channels = np.arange(len(act_before))
    fig, (ax_a, ax_w) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    ax_a.plot(channels, act_before, lw=0.8, label="before SmoothQuant")
    ax_a.plot(channels, act_after, lw=0.8, label=f"after SmoothQuant (alpha {alpha})")
    ax_a.set_ylabel("activation max |x|")
    ax_a.set_title(
        f"{layer}: per-channel ranges over {len(activations)} tokens "
        f"(max/median activation range {act_before.max() / np.median(act_before):.1f} before, "
        f"{act_after.max() / np.median(act_after):.1f} after)"
    )
    ax_a.legend()
    ax_w.plot(channels, w_before, lw=0.8, label="before")
    ax_w.plot(channels, w_after, lw=0.8, label="after")
    ax_w.set_ylabel("weight max |W[:, j]|")
    ax_w.set_xlabel("input channel j")
    ax_w.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- synthetic mode --------------------------------------------------------------


SYNTHETIC_ALPHA = 0.5


@dataclass(frozen=True)
class SyntheticData:
    """LLM-like activations ``[tokens, in]`` whose ``outliers`` channels are
    scaled by ``boost`` (x20-50), and a weight ``[out, in]``."""

    activations: F32
    weight: F32
    outliers: npt.NDArray[np.int64]
    boost: npt.NDArray[np.float64]


def synthetic_data(
    tokens: int = 128, in_features: int = 512, out_features: int = 256, seed: int = 0
) -> SyntheticData:
    """The activations and weight that ``--synthetic`` quantizes."""
    rng = np.random.default_rng(seed)
    channel_scale = rng.lognormal(0.0, 0.3, in_features)
    outliers = rng.choice(in_features, size=6, replace=False)
    boost = rng.uniform(20.0, 50.0, size=len(outliers))
    channel_scale[outliers] *= boost
    acts = (rng.standard_normal((tokens, in_features)) * channel_scale).astype(np.float32)
    weight = (rng.standard_normal((out_features, in_features)) / np.sqrt(in_features)).astype(
        np.float32
    )
    return SyntheticData(acts, weight, outliers, boost)


def run_synthetic(
    tokens: int = 128, in_features: int = 512, out_features: int = 256, seed: int = 0
) -> str:
    """Quantization error on synthetic LLM-like activations with a few outlier
    channels (x20-50), as a text table."""
    data = synthetic_data(tokens, in_features, out_features, seed)
    acts, weight, outliers, boost = data.activations, data.weight, data.outliers, data.boost
    reference = acts.astype(np.float64) @ weight.T.astype(np.float64)
    factors = dq.compute_smooth_factors(acts, weight, dq.SmoothQuantConfig(SYNTHETIC_ALPHA))

    def rel(err: npt.NDArray[Any], ref: npt.NDArray[Any]) -> float:
        return float(np.linalg.norm(err) / np.linalg.norm(ref))

    lines = [
        f"synthetic activations: {tokens} tokens x {in_features} channels, weight "
        f"[{out_features}, {in_features}]; outlier channels {sorted(outliers.tolist())} "
        f"scaled x{boost.min():.0f}-{boost.max():.0f}",
    ]
    head = f"{'method':<32} {'act MAE':>9} {'act rel err':>12} {'W8A8 out rel err':>17}"
    lines += [head, "-" * len(head)]
    for name, smooth, per_token in (
        ("int8 per-tensor", False, False),
        ("int8 per-row (per-token)", False, True),
        ("SmoothQuant 0.5 + per-tensor", True, False),
        ("SmoothQuant 0.5 + per-token", True, True),
    ):
        a = dq.smooth_activations(acts, factors) if smooth else acts
        w = dq.smooth_weights(weight, factors) if smooth else weight
        qa = dq.quantize_int8_per_row(a) if per_token else dq.quantize_int8(a)
        a_hat = qa.dequantize().reshape(a.shape)
        if smooth:  # back to the original units, to compare with the same input
            a_hat = a_hat * factors
        mae = float(np.mean(np.abs(a_hat - acts)))
        qw = dq.quantize_int8_per_row(w)
        w_i8 = qw.data.reshape(w.shape)
        if per_token:  # one activation vector at a time: the reference W8A8 matvec
            out = np.stack([dq.w8a8_matvec(w_i8, qw.scales, row) for row in a])
        else:
            out = dq.w8a8_matmul(a, w_i8, qw.scales, per_token=False)
        lines.append(
            f"{name:<32} {mae:>9.5f} {rel(a_hat - acts, acts):>12.5f} "
            f"{rel(out - reference, reference):>17.5f}"
        )
    lines.append(
        "act errors in the original units (smoothed activations times the factors); "
        "rel err = ||error|| / ||float||; weights int8 per row."
    )
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _thread_count(text: str) -> int:
    """argparse type: a thread count, 1..MAX_THREADS (what set_num_threads takes)."""
    value = _positive_int(text)
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_THREADS}, got {value}")
    return value


def _sentence_count(text: str) -> int:
    """argparse type: how many built-in sentences, 2..len(DEMO_SENTENCES)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 2 <= value <= len(DEMO_SENTENCES):
        raise argparse.ArgumentTypeError(
            f"must be between 2 and {len(DEMO_SENTENCES)}, got {value}"
        )
    return value


DEFAULT_BATCH_SIZE = 16
DEFAULT_REPEAT = 5
DEFAULT_PLOT_LAYER = "l0.ffn_in"


def _linear_name(text: str) -> str:
    """argparse type: a MiniLM Linear name, ``l0.q`` .. ``l5.ffn_out``."""
    names = [f"l{i}.{kind}" for i in range(MiniLMConfig().layers) for kind in LINEAR_KINDS]
    if text not in names:
        raise argparse.ArgumentTypeError(
            f"must be a Linear of the model, l0..l{MiniLMConfig().layers - 1} followed by "
            f".{'|.'.join(LINEAR_KINDS)} (e.g. {DEFAULT_PLOT_LAYER}), got {text!r}"
        )
    return text


# Options of the model run only (their parser default is None, so that a given
# value can be told apart); --synthetic refuses them rather than ignore them.
MODEL_ONLY_OPTIONS = ("--sentences", "--batch-size", "--repeat", "--plot-layer")
MODEL_ONLY_FLAGS = ("--no-progress", "--no-torch")


def build_parser(prog: str = "python -m dynquant demo") -> argparse.ArgumentParser:
    """The demo's command line; every option's help gives its default."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Quantize every Linear of the all-MiniLM-L6-v2 sentence encoder (W8A8 per tensor, "
            "per token, with SmoothQuant; W4A8) and compare its embeddings with float32. "
            "--synthetic runs without the model."
        ),
    )
    parser.add_argument(
        "--sentences",
        type=_sentence_count,
        default=None,
        metavar="N",
        help=f"use the first N built-in sentences, 2..{len(DEMO_SENTENCES)} "
        f"(default: all {len(DEMO_SENTENCES)})",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"sentences per batch (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--threads",
        type=_thread_count,
        default=None,
        metavar="N",
        help="threads for dynquant's kernels and, with threadpoolctl, NumPy's BLAS "
        "(default: dynquant's count, from RAYON_NUM_THREADS or the CPU count; BLAS unchanged)",
    )
    parser.add_argument(
        "--plot",
        metavar="OUT.png",
        default=None,
        help="save the per-channel activation ranges (and weight ranges) of one Linear's input "
        "before and after SmoothQuant 0.5 to OUT.png; with --synthetic, of the synthetic "
        "activations; needs matplotlib (default: no plot)",
    )
    parser.add_argument(
        "--plot-layer",
        type=_linear_name,
        default=None,
        metavar="LAYER",
        help=f"the Linear whose input --plot shows, l0.q .. l5.ffn_out "
        f"(default: {DEFAULT_PLOT_LAYER})",
    )
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="no model: LLM-like synthetic activations with outlier channels, quantized per "
        "tensor, per token and with SmoothQuant (default: off, the real model runs)",
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"each encode time is the median of N timed runs (default: {DEFAULT_REPEAT})",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars on stderr (default: shown when stderr is a terminal)",
    )
    parser.add_argument(
        "--no-torch",
        action="store_true",
        help="skip the PyTorch rows (float32, quantize_dynamic) (default: they run when torch "
        "is installed)",
    )
    return parser


def _limit_blas_threads(n: int) -> str:
    threadpoolctl = _optional("threadpoolctl")
    if threadpoolctl is None:
        return "NumPy BLAS threads unchanged (install threadpoolctl, or set OPENBLAS_NUM_THREADS)"
    threadpoolctl.threadpool_limits(n)
    return f"NumPy BLAS threads {n}"


def _matplotlib_missing() -> bool:
    if _optional("matplotlib") is not None:
        return False
    print(
        "--plot needs matplotlib, which is not installed: pip install matplotlib "
        "(or pip install 'dynquant[plot]')",
        file=sys.stderr,
    )
    return True


def run_demo(argv: Sequence[str] | None = None, *, prog: str = "python -m dynquant demo") -> int:
    """Entry point of ``python -m dynquant demo``; returns the exit code (1
    without the model or, for ``--plot``, matplotlib). Bad arguments exit
    through argparse (``SystemExit(2)`` after its usage and error message)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.synthetic:
        given = [
            o for o in MODEL_ONLY_OPTIONS if getattr(args, o[2:].replace("-", "_")) is not None
        ] + [o for o in MODEL_ONLY_FLAGS if getattr(args, o[2:].replace("-", "_"))]
        if given:
            parser.error(f"--synthetic runs no model: {', '.join(given)} would have no effect")
    if args.plot_layer is not None and not args.plot:
        parser.error("--plot-layer chooses the layer of --plot, which is not given")
    if args.batch_size is None:
        args.batch_size = DEFAULT_BATCH_SIZE
    if args.repeat is None:
        args.repeat = DEFAULT_REPEAT
    if args.plot and _matplotlib_missing():
        return 1
    if args.threads is not None:
        dq.set_num_threads(args.threads)
    if args.synthetic:
        print(run_synthetic())
        if args.plot:
            data = synthetic_data()
            plot_smoothing(
                args.plot, "synthetic activations", data.weight, data.activations, SYNTHETIC_ALPHA
            )
            print(
                f"\nsaved per-channel activation ranges of the synthetic activations before and "
                f"after SmoothQuant {SYNTHETIC_ALPHA} to {args.plot}"
            )
        return 0

    try:
        model = MiniLM.load()
    except ModelNotInstalledError as exc:
        print(f"dynquant demo: {exc}", file=sys.stderr)
        print("(`python -m dynquant demo --synthetic` runs without the model)", file=sys.stderr)
        return 1

    n = len(DEMO_SENTENCES) if args.sentences is None else args.sentences
    plot_layer = DEFAULT_PLOT_LAYER if args.plot_layer is None else args.plot_layer
    if args.plot and plot_layer not in model.linear_names():  # a model with other layers
        parser.error(f"--plot-layer must be one of {', '.join(model.linear_names())}")
    sentences = list(DEMO_SENTENCES[:n])
    tokens = int(model.tokenize(sentences).lengths.sum())
    info = dq.kernel_info()
    plural = "" if info.threads == 1 else "s"
    threads = f"dynquant kernel {info.isa}, {info.threads} thread{plural}"
    if args.threads is not None:
        threads += "; " + _limit_blas_threads(args.threads)
    print(
        f"all-MiniLM-L6-v2 (NumPy, {len(model.linears)} Linear layers quantized): "
        f"{n} sentences, {tokens} tokens, batch size {args.batch_size}\n{threads}\n"
        "SmoothQuant calibrates on the same sentences; cos = cosine similarity of each "
        "sentence's embedding to fp32's;\nSpearman = rank correlation of all pairwise "
        "similarities with fp32's; weights = the Linear layers' weights, scales and biases;\n"
        f"encode s = the median of {args.repeat} runs (configs in turn); "
        "quantize s = time to build the quantized layers (not part of encode).\n"
    )
    calibration = model.collect_linear_inputs(sentences, args.batch_size)
    rows, embeddings = compare_configs(
        model,
        sentences,
        batch_size=args.batch_size,
        calibration=calibration,
        progress=not args.no_progress,
        repeat=args.repeat,
    )
    torch_line = ""
    if args.no_torch:
        torch_line = "PyTorch comparison skipped (--no-torch)."
    else:
        try:
            torch_rows, _ = compare_torch(
                model,
                sentences,
                embeddings["fp32"],
                batch_size=args.batch_size,
                threads=info.threads,
                progress=not args.no_progress,
                repeat=args.repeat,
            )
        except TorchNotInstalledError as exc:
            what = "is not installed" if "not installed" in str(exc) else "cannot be imported"
            torch_line = (
                f"PyTorch comparison skipped: torch {what}; to enable it, " + TORCH_INSTALL_HINT
            )
        except Exception as exc:  # an optional peer must not sink the demo
            torch_line = f"PyTorch comparison failed: {type(exc).__name__}: {exc}"
        else:
            rows += torch_rows
            torch_line = torch_note(rows)
    print(format_table(rows, n))
    print(f"\n{torch_line}")
    note = worst_sentence_note(model, sentences, embeddings)
    if note:
        print(f"\n{note}")
    para = _pair_similarity(embeddings["fp32"], sentences, PARAPHRASE_PAIRS)
    unrelated = _pair_similarity(embeddings["fp32"], sentences, UNRELATED_PAIRS)
    if para is not None and unrelated is not None:
        print(
            f"\nfp32 model check: paraphrase pairs similarity {para:.3f} on average, "
            f"unrelated pairs {unrelated:.3f}"
        )
    if args.plot:
        weight, _ = model.linear_weight(plot_layer)
        plot_smoothing(args.plot, plot_layer, weight, calibration[plot_layer], 0.5)
        print(f"\nsaved per-channel activation ranges of {plot_layer} to {args.plot}")
    return 0
