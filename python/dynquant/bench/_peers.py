"""The optional peers (PyTorch, ONNX Runtime, threadpoolctl for NumPy's BLAS):
loading them when installed, setting their thread counts, and building the
models the cases run.

Every peer is imported through ``importlib`` and handled as ``Any``, so the
package type-checks whether or not they are installed.
"""

from __future__ import annotations

import contextlib
import importlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

import dynquant as dq

__all__ = ["PEER_NAMES", "Peers"]

PEER_NAMES = ("numpy", "torch", "onnxruntime")


def _try_import(name: str) -> tuple[Any | None, str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(name), ""
    except ModuleNotFoundError as e:
        if e.name == name:
            return None, f"{name} not installed"
        return None, f"{name} not usable ({type(e).__name__}: {str(e)[:80]})"
    except Exception as e:  # a broken install can raise anything
        return None, f"{name} not usable ({type(e).__name__}: {str(e)[:80]})"


@dataclass
class Peers:
    """The peers that could be loaded, and why the others could not."""

    torch: Any | None = None
    ort: Any | None = None
    onnx: Any | None = None
    threadpoolctl: Any | None = None
    why_not: dict[str, str] = field(default_factory=dict)
    torch_engine: str | None = None

    @classmethod
    def load(cls, wanted: set[str]) -> Peers:
        p = cls()
        p.threadpoolctl, why = _try_import("threadpoolctl")
        if why:
            p.why_not["threadpoolctl"] = why
        if "torch" in wanted:
            p.torch, why = _try_import("torch")
            if p.torch is None:
                p.why_not["torch"] = why
            else:
                engines = list(p.torch.backends.quantized.supported_engines)
                if "fbgemm" in engines:
                    p.torch.backends.quantized.engine = "fbgemm"
                p.torch_engine = str(p.torch.backends.quantized.engine)
        else:
            p.why_not["torch"] = "torch not selected (--peers)"
        if "onnxruntime" in wanted:
            p.ort, why = _try_import("onnxruntime")
            if p.ort is None:
                p.why_not["onnxruntime"] = why
            else:
                p.onnx, why = _try_import("onnx")
                if p.onnx is None:
                    p.why_not["onnx"] = why + " (needed to build the ONNX Runtime graphs)"
        else:
            p.why_not["onnxruntime"] = "onnxruntime not selected (--peers)"
        return p

    def versions(self) -> dict[str, str | None]:
        def v(mod: Any | None) -> str | None:
            return None if mod is None else str(getattr(mod, "__version__", "?"))

        return {
            "dynquant": dq.__version__,
            "numpy": np.__version__,
            "torch": v(self.torch),
            "onnxruntime": v(self.ort),
            "onnx": v(self.onnx),
            "threadpoolctl": v(self.threadpoolctl),
        }

    def blas_info(self) -> list[dict[str, Any]]:
        if self.threadpoolctl is None:
            return []
        keys = ("user_api", "internal_api", "version", "num_threads", "architecture", "prefix")
        return [{k: d.get(k) for k in keys} for d in self.threadpoolctl.threadpool_info()]

    # ---- threads -----------------------------------------------------------

    @contextlib.contextmanager
    def threads(self, n: int) -> Iterator[None]:
        """Run dynquant, PyTorch and NumPy's BLAS with ``n`` threads (ONNX
        Runtime takes its count per session: ``ort_session(..., threads=n)``)."""
        dq.set_num_threads(n)
        old_torch = None if self.torch is None else int(self.torch.get_num_threads())
        if self.torch is not None:
            self.torch.set_num_threads(n)
        limits: Any = contextlib.nullcontext()
        if self.threadpoolctl is not None:
            limits = self.threadpoolctl.threadpool_limits(limits=n, user_api="blas")
        try:
            with limits:
                yield
        finally:
            dq.set_num_threads(0)
            if self.torch is not None and old_torch is not None:
                self.torch.set_num_threads(old_torch)

    def numpy_note(self) -> str:
        return "" if self.threadpoolctl is not None else "BLAS threads not set (no threadpoolctl)"

    # ---- PyTorch ------------------------------------------------------------

    def torch_tensor(self, a: npt.NDArray[Any]) -> Any:
        assert self.torch is not None
        return self.torch.from_numpy(np.ascontiguousarray(a))

    def torch_dynamic_linear(
        self, w_i8: npt.NDArray[np.int8], w_scales: npt.NDArray[np.float32]
    ) -> Any:
        """fbgemm's dynamic int8 Linear (``torch.ao.nn.quantized.dynamic.Linear``,
        what ``torch.ao.quantization.quantize_dynamic`` puts in place of an
        ``nn.Linear``) holding exactly dynquant's int8 weights and per-row
        scales. It quantizes activations per tensor (uint8, asymmetric)."""
        torch = self.torch
        assert torch is not None
        out_f, in_f = w_i8.shape
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nnqd = importlib.import_module("torch.ao.nn.quantized.dynamic")
            qw = torch._make_per_channel_quantized_tensor(
                torch.from_numpy(np.ascontiguousarray(w_i8)),
                torch.from_numpy(w_scales.astype(np.float64)),
                torch.zeros(out_f, dtype=torch.int64),
                0,
            )
            lin = nnqd.Linear(in_f, out_f, bias_=False, dtype=torch.qint8)
            lin.set_weight_bias(qw, None)
        lin.eval()
        return lin

    # ---- ONNX Runtime -----------------------------------------------------------

    def ort_session(self, model: Any, threads: int) -> Any:
        ort = self.ort
        assert ort is not None
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        return ort.InferenceSession(
            model.SerializeToString(), so, providers=["CPUExecutionProvider"]
        )

    def _model(
        self, nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]
    ) -> Any:
        onnx = self.onnx
        assert onnx is not None
        h = onnx.helper
        graph = h.make_graph(nodes, "dynquant_bench", inputs, outputs, inits)
        return h.make_model(
            graph,
            opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.microsoft", 1)],
        )

    def ort_dynamic_quantize_linear(self) -> Any:
        """``DynamicQuantizeLinear`` (ONNX opset 11+): x → uint8 y, scale, zero point."""
        onnx = self.onnx
        assert onnx is not None
        h, tp = onnx.helper, onnx.TensorProto
        return self._model(
            [h.make_node("DynamicQuantizeLinear", ["x"], ["y", "y_scale", "y_zp"])],
            [h.make_tensor_value_info("x", tp.FLOAT, ["n"])],
            [
                h.make_tensor_value_info("y", tp.UINT8, ["n"]),
                h.make_tensor_value_info("y_scale", tp.FLOAT, []),
                h.make_tensor_value_info("y_zp", tp.UINT8, []),
            ],
            [],
        )

    def ort_dynamic_quantize_matmul(
        self, w_i8: npt.NDArray[np.int8], w_scales: npt.NDArray[np.float32]
    ) -> Any:
        """``com.microsoft.DynamicQuantizeMatMul`` with int8 weights and
        per-output-column scales: the node that
        ``onnxruntime.quantization.quantize_dynamic(per_channel=True)`` on a float
        MatMul becomes after ORT's graph fusion (checked: same node, same speed)."""
        onnx = self.onnx
        assert onnx is not None
        h, tp, nh = onnx.helper, onnx.TensorProto, onnx.numpy_helper
        out_f, in_f = w_i8.shape
        inits = [
            nh.from_array(np.ascontiguousarray(w_i8.T), "B"),
            nh.from_array(np.ascontiguousarray(w_scales, dtype=np.float32), "b_scale"),
            nh.from_array(np.zeros(out_f, dtype=np.int8), "b_zp"),
        ]
        node = h.make_node(
            "DynamicQuantizeMatMul", ["A", "B", "b_scale", "b_zp"], ["Y"], domain="com.microsoft"
        )
        return self._model(
            [node],
            [h.make_tensor_value_info("A", tp.FLOAT, ["M", in_f])],
            [h.make_tensor_value_info("Y", tp.FLOAT, ["M", out_f])],
            inits,
        )

    def ort_chain(self, models: list[Any]) -> Any:
        """One model applying ``models`` (each one node from ``A`` to ``Y``,
        as the builders here make them) one after the other, as a network's
        layers: one session, so one thread pool, not one per layer."""
        onnx = self.onnx
        assert onnx is not None
        nodes, inits = [], []
        for i, model in enumerate(models):
            g = model.graph
            rename = {t.name: f"l{i}_{t.name}" for t in g.initializer}
            rename["A"] = "A" if i == 0 else f"Y{i - 1}"
            rename["Y"] = "Y" if i == len(models) - 1 else f"Y{i}"
            for t in g.initializer:
                t2 = onnx.TensorProto()
                t2.CopyFrom(t)
                t2.name = rename[t.name]
                inits.append(t2)
            for node in g.node:
                n2 = onnx.NodeProto()
                n2.CopyFrom(node)
                n2.ClearField("input")
                n2.ClearField("output")
                n2.input.extend(rename.get(x, x) for x in node.input)
                n2.output.extend(rename.get(x, x) for x in node.output)
                nodes.append(n2)
        first, last = models[0].graph, models[-1].graph
        return self._model(nodes, list(first.input), list(last.output), inits)

    def ort_matmul_nbits(
        self, packed: npt.NDArray[np.uint8], scales: npt.NDArray[np.float32], in_f: int, group: int
    ) -> Any:
        """``com.microsoft.MatMulNBits`` (bits=4, block_size=group,
        accuracy_level=4: activations quantized to int8 per block, int8 dot
        products — ORT's W4A8) holding exactly dynquant's int4 weights and
        group scales, repacked into ORT's order (per block, consecutive
        columns in the low then the high nibble; unsigned nibbles ``value +
        8`` with its default zero point 8)."""
        onnx = self.onnx
        assert onnx is not None
        h, tp, nh = onnx.helper, onnx.TensorProto, onnx.numpy_helper
        out_f = packed.shape[0]
        blocks = -(-in_f // group)
        blob = group // 2
        nibbles = np.full((out_f, blocks * group), 8, dtype=np.uint8)
        nibbles[:, :in_f] = (dq.unpack_int4(packed, in_f).astype(np.int16) + 8).astype(np.uint8)
        b = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
        inits = [
            nh.from_array(b.reshape(out_f, blocks, blob), "B"),
            nh.from_array(
                np.ascontiguousarray(scales, dtype=np.float32).reshape(out_f, blocks), "S"
            ),
        ]
        node = h.make_node(
            "MatMulNBits",
            ["A", "B", "S"],
            ["Y"],
            domain="com.microsoft",
            K=in_f,
            N=out_f,
            bits=4,
            block_size=group,
            accuracy_level=4,
        )
        return self._model(
            [node],
            [h.make_tensor_value_info("A", tp.FLOAT, ["M", in_f])],
            [h.make_tensor_value_info("Y", tp.FLOAT, ["M", out_f])],
            inits,
        )
