"""all-MiniLM-L6-v2 in PyTorch: the float reference and the ``quantize_dynamic`` peer.

The same forward pass as :class:`dynquant.models.MiniLM` (word + position +
token-type embeddings and LayerNorm, 6 BERT layers, mean pooling over the
attention mask, L2 normalisation), built from the same float32 tensors and
tokenized by the same tokenizer (:meth:`MiniLM.batches`). Every Linear is a
``torch.nn.Linear``, so ``torch.ao.quantization.quantize_dynamic(model,
{torch.nn.Linear}, dtype=torch.qint8)`` applies as it does to the
sentence-transformers model; no ``transformers`` needed.

PyTorch is optional: nothing here imports it until a model is built, and
:func:`import_torch` raises :class:`TorchNotInstalledError` (an ImportError)
with an install hint when it is missing. Batches are padded as PyTorch users
run them (``[batch, max_len]`` with an attention mask), so under
``quantize_dynamic`` the per-tensor activation scales see the padding rows too,
as they do in sentence-transformers.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .minilm import LINEAR_KINDS, Batch, MiniLM

__all__ = [
    "TORCH_INSTALL_HINT",
    "TorchMiniLM",
    "TorchNotInstalledError",
    "import_torch",
    "torch_threads",
]

F32 = npt.NDArray[np.float32]

TORCH_INSTALL_HINT = (
    "pip install torch --index-url https://download.pytorch.org/whl/cpu "
    "(the CPU wheel; the `dynquant[torch]` extra resolves to PyPI's multi-GB CUDA build on Linux)"
)


class TorchNotInstalledError(ImportError):
    """PyTorch is not installed (or cannot be imported)."""


def import_torch() -> Any:
    """The ``torch`` module, or :class:`TorchNotInstalledError` saying how to get it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module("torch")
    except ImportError as exc:
        raise TorchNotInstalledError(
            f"PyTorch is not installed ({exc}); {TORCH_INSTALL_HINT}"
        ) from exc
    except Exception as exc:  # a broken install can raise anything (OSError, ...)
        raise TorchNotInstalledError(
            f"PyTorch cannot be imported ({type(exc).__name__}: {exc}); {TORCH_INSTALL_HINT}"
        ) from exc


@contextlib.contextmanager
def torch_threads(torch: Any, n: int) -> Iterator[None]:
    """Run PyTorch's intra-op pool with ``n`` threads, restoring the old count."""
    old = int(torch.get_num_threads())
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class TorchMiniLM:
    """all-MiniLM-L6-v2 as ``torch.nn`` modules; ``encode`` as :meth:`MiniLM.encode`.

    Build with :meth:`from_numpy` (float32), then :meth:`quantize_dynamic` for
    PyTorch's dynamic int8 version (fbgemm: activations quantized per tensor,
    asymmetric uint8 with reduced range; weights int8 per tensor).
    """

    def __init__(self, torch: Any, modules: Any, source: MiniLM) -> None:
        self.torch = torch
        self.modules = modules  # torch.nn.ModuleDict
        self.source = source
        self.config = source.config

    @classmethod
    def from_numpy(cls, model: MiniLM) -> TorchMiniLM:
        """The float32 torch model holding copies of ``model``'s tensors."""
        torch = import_torch()
        nn = torch.nn
        cfg, t = model.config, model.tensors

        def param(a: F32) -> Any:
            return nn.Parameter(
                torch.from_numpy(np.array(a, dtype=np.float32)), requires_grad=False
            )

        def linear(name: str) -> Any:
            weight, bias = model.linear_weight(name)
            lin = nn.Linear(weight.shape[1], weight.shape[0])
            lin.weight, lin.bias = param(weight), param(bias)
            return lin

        def layer_norm(prefix: str) -> Any:
            ln = nn.LayerNorm(cfg.hidden, eps=cfg.layer_norm_eps)
            ln.weight = param(t[f"{prefix}.LayerNorm.weight"])
            ln.bias = param(t[f"{prefix}.LayerNorm.bias"])
            return ln

        def embedding(name: str) -> Any:
            return nn.Embedding.from_pretrained(
                torch.from_numpy(np.array(t[f"embeddings.{name}.weight"], dtype=np.float32))
            )

        layers = nn.ModuleList()
        for i in range(cfg.layers):
            block = nn.ModuleDict({kind: linear(f"l{i}.{kind}") for kind in LINEAR_KINDS})
            block["attn_ln"] = layer_norm(f"encoder.layer.{i}.attention.output")
            block["out_ln"] = layer_norm(f"encoder.layer.{i}.output")
            layers.append(block)
        modules = nn.ModuleDict(
            {
                "word": embedding("word_embeddings"),
                "position": embedding("position_embeddings"),
                "token_type": embedding("token_type_embeddings"),
                "emb_ln": layer_norm("embeddings"),
                "layers": layers,
            }
        )
        modules.eval()
        return cls(torch, modules, model)

    def quantize_dynamic(self) -> TorchMiniLM:
        """``torch.ao.quantization.quantize_dynamic(…, {nn.Linear}, dtype=qint8)`` of
        this model (a copy; this one is unchanged), on the fbgemm engine when
        available."""
        torch = self.torch
        if "fbgemm" in torch.backends.quantized.supported_engines:
            torch.backends.quantized.engine = "fbgemm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao deprecation notices
            quantized = torch.ao.quantization.quantize_dynamic(
                copy.deepcopy(self.modules), {torch.nn.Linear}, dtype=torch.qint8
            )
        return TorchMiniLM(torch, quantized, self.source)

    def linear_modules(self) -> list[Any]:
        """The 36 Linear modules (float or dynamically quantized), in forward order."""
        return [block[kind] for block in self.modules["layers"] for kind in LINEAR_KINDS]

    def weight_bytes(self) -> int:
        """Bytes of the Linear layers' weights, biases and quantization parameters
        (int8 weights plus a scale and a zero point once quantized)."""
        total = 0
        for lin in self.linear_modules():
            if hasattr(lin, "_packed_params"):  # torch.ao.nn.quantized.dynamic.Linear
                w, b = lin._packed_params._weight_bias()
                per_channel = w.qscheme() in (
                    self.torch.per_channel_affine,
                    self.torch.per_channel_symmetric,
                )
                params = 16 * (w.shape[0] if per_channel else 1)  # float64 scale + int64 zp
            else:
                w, b, params = lin.weight, lin.bias, 0
            total += w.numel() * w.element_size() + params
            if b is not None:
                total += b.numel() * b.element_size()
        return int(total)

    # --- forward --------------------------------------------------------------

    def _padded(self, batch: Batch) -> tuple[Any, Any]:
        """``ids [batch, max_len]`` (padding id 0) and the boolean attention mask."""
        torch = self.torch
        n, max_len = len(batch.lengths), int(batch.lengths.max())
        mask = np.arange(max_len)[None, :] < batch.lengths[:, None]
        ids = np.zeros((n, max_len), dtype=np.int64)
        ids[mask] = batch.ids  # packed tokens are sentence-major, as mask's True cells
        return torch.from_numpy(ids), torch.from_numpy(mask)

    def encode_batch(self, batch: Batch) -> F32:
        """Mean-pooled (over the attention mask), L2-normalised embeddings ``[batch, hidden]``."""
        torch = self.torch
        functional = torch.nn.functional
        m, cfg = self.modules, self.config
        heads, head_dim = cfg.heads, cfg.hidden // cfg.heads
        ids, mask = self._padded(batch)
        n, length = ids.shape
        with torch.inference_mode():
            positions = torch.arange(length)
            h = m["word"](ids) + m["position"](positions)[None] + m["token_type"].weight[0]
            h = m["emb_ln"](h)
            attn_mask = mask[:, None, None, :]  # True: the key takes part

            def split(x: Any) -> Any:  # [n, len, hidden] -> [n, heads, len, head_dim]
                return x.view(n, length, heads, head_dim).transpose(1, 2)

            for block in m["layers"]:
                q, k, v = (split(block[kind](h)) for kind in ("q", "k", "v"))
                context = functional.scaled_dot_product_attention(
                    q, k, v, attn_mask=attn_mask, scale=1.0 / math.sqrt(head_dim)
                )
                context = context.transpose(1, 2).reshape(n, length, cfg.hidden)
                h = block["attn_ln"](block["attn_out"](context) + h)
                h = block["out_ln"](block["ffn_out"](functional.gelu(block["ffn_in"](h))) + h)
            weights = mask.to(h.dtype)[:, :, None]
            pooled = (h * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
            pooled = functional.normalize(pooled, p=2.0, dim=1)
        out: F32 = pooled.numpy().astype(np.float32, copy=False)
        return out

    def encode(
        self,
        sentences: Sequence[str],
        batch_size: int = 32,
        progress: Callable[[Iterable[Batch], int], Iterable[Batch]] | None = None,
    ) -> F32:
        """Embeddings ``[len(sentences), hidden]`` (unit vectors), batched and
        tokenized as :meth:`MiniLM.encode`."""
        if not sentences:
            return np.zeros((0, self.config.hidden), dtype=np.float32)
        batches: Iterable[Batch] = self.source.batches(sentences, batch_size)
        if progress is not None:
            batches = progress(batches, -(-len(sentences) // batch_size))
        return np.concatenate([self.encode_batch(b) for b in batches])
