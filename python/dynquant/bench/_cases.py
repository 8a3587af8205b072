"""The benchmark cases: for each dynquant operation, its inputs and the peers
that compute the same thing.

A case is built lazily (its inputs are made only when it is selected), then
asked for its implementations once per thread count. The first
implementation is dynquant's; every ratio is that one's time over the row's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

import dynquant as dq
from dynquant import _core
from dynquant.matmul import _w4a8_matmul_held

from ..demo import CONFIGS, quantized_factory
from ..models import minilm as _minilm
from ..models.minilm_torch import TorchMiniLM
from ._harness import Impl
from ._peers import Peers

__all__ = ["Case", "Config", "iter_cases"]

F32 = npt.NDArray[np.float32]
Builder = Callable[[int], list[Impl]]


@dataclass(frozen=True, slots=True)
class Config:
    quick: bool
    peers: Peers


@dataclass(frozen=True, slots=True)
class Case:
    """``build()`` makes the inputs and returns ``threads -> implementations``.

    ``nbytes`` is the compulsory memory traffic of one call (inputs read once,
    outputs written once) for the GB/s column, set for the memory-bound cases
    only; ``ops`` the arithmetic operations (2·M·N·K) for GOP/s.
    """

    label: str
    tags: tuple[str, ...]
    build: Callable[[], Builder]
    nbytes: int | None = None
    ops: int | None = None
    # Sample the implementations in turn (see ``measure_interleaved``),
    # idling ``idle`` seconds before each sample.
    interleaved: bool = False
    idle: float = 0.1

    def matches(self, patterns: list[str]) -> bool:
        names = (self.label.lower(), *self.tags)
        return not patterns or any(p.lower() in n for p in patterns for n in names)


def _n(n: int) -> str:
    if n >= 1 << 16 and n & (n - 1) == 0:
        return f"2^{n.bit_length() - 1}"
    if n >= 10**6 and 10 ** round(math.log10(n)) == n:
        return f"10^{round(math.log10(n))}"
    return str(n)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _normal(rng: np.random.Generator, shape: tuple[int, ...], scale: float = 1.0) -> F32:
    a = rng.standard_normal(shape, dtype=np.float32)
    if scale != 1.0:
        a *= np.float32(scale)
    return a


def _skip(name: str, why: str) -> Impl:
    return Impl(name, None, note=why)


def _k_of(p: float, n: int) -> int:
    """The reference's f32 percentile index ``ceil(p * n) - 1`` (saturating)."""
    k = int(np.ceil(np.float32(p) * np.float32(n))) - 1
    return min(max(k, 0), n - 1)


# ---- NumPy peers ----------------------------------------------------------------
# Same math as dynquant, written for speed with preallocated buffers. The rounding
# is np.rint (half to even), NOT dynquant's round half away from zero: an exact
# NumPy version needs extra passes (copysign/trunc) and would make the peer slow
# for no reason — the point is a fair, fast NumPy peer, not bit-exactness.


def _numpy_quantize(x: F32) -> Callable[[], object]:
    tmp = np.empty_like(x)
    out = np.empty(x.shape, dtype=np.int8)

    def run() -> object:
        amax = max(x.max(), -x.min())
        s = np.float32(amax) / np.float32(127.0)
        if s == 0:
            out.fill(0)
            return out, s
        np.divide(x, s, out=tmp)
        np.rint(tmp, out=tmp)
        np.clip(tmp, -127, 127, out=tmp)
        np.copyto(out, tmp, casting="unsafe")
        return out, s

    return run


def _numpy_quantize_rows(x: F32) -> Callable[[], object]:
    tmp = np.empty_like(x)
    out = np.empty(x.shape, dtype=np.int8)

    def run() -> object:
        amax = np.maximum(x.max(axis=1), -x.min(axis=1))
        s = amax / np.float32(127.0)
        np.divide(x, np.where(s == 0, np.float32(1.0), s)[:, None], out=tmp)
        np.rint(tmp, out=tmp)
        np.clip(tmp, -127, 127, out=tmp)
        np.copyto(out, tmp, casting="unsafe")
        return out, s

    return run


def _numpy_calib(batches: list[F32], n: int) -> Callable[[], object]:
    buf = np.empty(n, dtype=np.float32)
    k = _k_of(0.99, n)

    def run() -> object:
        a = np.concatenate(batches, out=buf)
        stats = (a.min(), a.max(), a.mean(dtype=np.float64), a.std(dtype=np.float64))
        np.abs(a, out=a)
        a.partition(k)
        p99 = a[k]
        return (*stats, p99, p99 / np.float32(127.0))

    return run


# ---- the cases ---------------------------------------------------------------------


def _overhead_cases(cfg: Config) -> Iterator[Case]:
    def build() -> Builder:
        def noop_py() -> None:
            return None

        return lambda _threads: [
            Impl("dynquant: _core.noop() (empty PyO3 call)", _core.noop, dynquant=True),
            Impl("Python: empty function", noop_py),
        ]

    yield Case("empty call", ("overhead",), build)


def _quantize_cases(cfg: Config) -> Iterator[Case]:
    sizes = [16, 4096] if cfg.quick else [16, 4096, 1 << 20, 1 << 24]
    peers = cfg.peers
    for n in sizes:

        def build(n: int = n) -> Builder:
            x = _normal(_rng(n), (n,))
            t = peers.torch_tensor(x) if peers.torch is not None else None
            ort_model = peers.ort_dynamic_quantize_linear() if peers.onnx is not None else None
            sessions: dict[int, Any] = {}

            def impls(threads: int) -> list[Impl]:
                out = [Impl("dynquant: quantize_int8", lambda: dq.quantize_int8(x), dynquant=True)]
                if n <= 4096:
                    out.append(
                        Impl(
                            "dynquant: _core.quantize_per_tensor (no Python wrapper)",
                            lambda: _core.quantize_per_tensor(x, 127.0, None, False),
                            dynquant=True,
                        )
                    )
                out.append(Impl("numpy: amax, divide, rint, clip, cast", _numpy_quantize(x)))
                if t is not None:
                    torch: Any = peers.torch
                    out.append(
                        Impl(
                            "torch: quantize_per_tensor_dynamic(qint8)",
                            lambda: torch.quantize_per_tensor_dynamic(t, torch.qint8, False),
                        )
                    )
                else:
                    out.append(_skip("torch", peers.why_not.get("torch", "")))
                if ort_model is not None:

                    def ort_impl() -> Impl:
                        if threads not in sessions:
                            sessions[threads] = peers.ort_session(ort_model, threads)
                        sess = sessions[threads]
                        return Impl(
                            "onnxruntime: DynamicQuantizeLinear (uint8)",
                            lambda: sess.run(None, {"x": x}),
                        )

                    out.append(_guard("onnxruntime", ort_impl))
                else:
                    out.append(_skip("onnxruntime", _ort_why(peers)))
                return out

            return impls

        tags = (
            ("quantize_int8", "quantize", "overhead")
            if n <= 4096
            else ("quantize_int8", "quantize")
        )
        yield Case(f"quantize_int8 N={_n(n)}", tags, build, nbytes=5 * n + 4)


def _ort_why(peers: Peers) -> str:
    return peers.why_not.get("onnxruntime") or peers.why_not.get("onnx", "")


def _per_row_cases(cfg: Config) -> Iterator[Case]:
    rows, cols = (8, 256) if cfg.quick else (512, 4096)
    peers = cfg.peers

    def build() -> Builder:
        x = _normal(_rng(7), (rows, cols))
        torch: Any = peers.torch
        t: Any = peers.torch_tensor(x) if torch is not None else None

        def torch_ops() -> object:
            s = t.abs().amax(dim=1, keepdim=True) / 127.0
            return (t / s).round_().clamp_(-127, 127).to(torch.int8), s

        zeros = torch.zeros(rows, dtype=torch.int64) if torch is not None else None

        def torch_per_channel() -> object:
            s = t.abs().amax(dim=1) / 127.0
            return torch.quantize_per_channel(t, s, zeros, 0, torch.qint8)

        def impls(_threads: int) -> list[Impl]:
            out = [
                Impl(
                    "dynquant: quantize_int8_per_row",
                    lambda: dq.quantize_int8_per_row(x),
                    dynquant=True,
                ),
                Impl("numpy: row amax, divide, rint, clip, cast", _numpy_quantize_rows(x)),
            ]
            if t is not None:
                out.append(Impl("torch: abs, amax, div, round, clamp, to(int8)", torch_ops))
                out.append(Impl("torch: amax + quantize_per_channel(qint8)", torch_per_channel))
            else:
                out.append(_skip("torch", peers.why_not.get("torch", "")))
            out.append(_skip("onnxruntime", "no per-row dynamic quantize op in ONNX Runtime"))
            return out

        return impls

    yield Case(
        f"quantize_int8_per_row [{rows}, {cols}]",
        ("quantize_int8_per_row", "per_row", "quantize"),
        build,
        nbytes=5 * rows * cols + 4 * rows,
    )


def _percentile_cases(cfg: Config) -> Iterator[Case]:
    n = 4096 if cfg.quick else 1 << 20
    peers = cfg.peers

    def build() -> Builder:
        x = _normal(_rng(11), (n,))
        k = _k_of(0.99, n)
        buf = np.empty_like(x)
        mode = dq.Percentile(0.99)
        torch: Any = peers.torch
        t: Any = peers.torch_tensor(x) if torch is not None else None

        def np_partition() -> object:
            np.abs(x, out=buf)
            buf.partition(k)
            return buf[k] / np.float32(127.0)

        def np_sort() -> object:
            np.abs(x, out=buf)
            buf.sort()
            return buf[k] / np.float32(127.0)

        def impls(_threads: int) -> list[Impl]:
            out = [
                Impl(
                    "dynquant: compute_scale(Percentile(0.99))",
                    lambda: dq.compute_scale(x, 127.0, mode),
                    dynquant=True,
                ),
                Impl("numpy: abs + np.partition (in place)", np_partition),
                Impl("numpy: abs + np.sort (in place)", np_sort),
            ]
            if t is not None:
                out.append(
                    Impl(
                        "torch: kthvalue(abs)", lambda: torch.kthvalue(t.abs(), k + 1).values / 127
                    )
                )
            else:
                out.append(_skip("torch", peers.why_not.get("torch", "")))
            return out

        return impls

    yield Case(f"percentile(0.99) N={_n(n)}", ("percentile",), build)


class _Shape:
    """One weight matrix ``[out_f, in_f]`` in every form the peers take, and the
    peers' models holding it; each made on first use and shared by the cases
    (M values, thread counts) of that shape."""

    def __init__(
        self, peers: Peers, out_f: int, in_f: int, group: int | None = None, seed: int = 1
    ) -> None:
        self.peers, self.out_f, self.in_f, self.group = peers, out_f, in_f, group
        self.seed = seed
        self._w: F32 | None = None
        self._q: tuple[npt.NDArray[np.int8], F32] | None = None
        self._q4: tuple[npt.NDArray[np.uint8], F32] | None = None
        self._packed: Any = None
        self._torch: Any = None
        self._ort_model: Any = None
        self._sessions: dict[int, Any] = {}

    @property
    def w(self) -> F32:
        if self._w is None:
            self._w = _normal(_rng(self.seed), (self.out_f, self.in_f), 0.02)
        return self._w

    @property
    def int8(self) -> tuple[npt.NDArray[np.int8], F32]:
        """``(q [out, in] int8, scales [out])`` from ``dq.quantize_weights_int8``."""
        if self._q is None:
            self._q = dq.quantize_weights_int8(self.w)
        return self._q

    @property
    def int4(self) -> tuple[npt.NDArray[np.uint8], F32]:
        """``(packed, scales [out, groups])`` from ``dq.quantize_weights_int4``."""
        if self._q4 is None:
            self._q4 = dq.quantize_weights_int4(self.w, group_size=self.group)
        return self._q4

    def packed_int8(self) -> Any:
        """``dq.pack_weights_int8`` of the int8 weights, made once."""
        if self._packed is None:
            self._packed = dq.pack_weights_int8(self.int8[0])
        return self._packed

    def torch_linear(self) -> Any:
        if self._torch is None:
            self._torch = self.peers.torch_dynamic_linear(*self.int8)
        return self._torch

    def ort_session(self, threads: int) -> Any:
        """DynamicQuantizeMatMul on the int8 weights, or MatMulNBits on the int4
        ones when the shape has a group size."""
        if self._ort_model is None:
            if self.group is None:
                self._ort_model = self.peers.ort_dynamic_quantize_matmul(*self.int8)
            else:
                packed, scales = self.int4
                self._ort_model = self.peers.ort_matmul_nbits(packed, scales, self.in_f, self.group)
        if threads not in self._sessions:
            self._sessions[threads] = self.peers.ort_session(self._ort_model, threads)
        return self._sessions[threads]

    # ---- the peers' rows ----------------------------------------------------------

    def torch_impl(self, x: F32, note: str) -> Impl:
        torch: Any = self.peers.torch
        if torch is None:
            return _skip("torch", self.peers.why_not.get("torch", ""))

        def make() -> Impl:
            t = self.peers.torch_tensor(x)
            m = self.torch_linear()

            def run() -> object:
                with torch.inference_mode():
                    return m(t)

            return Impl("torch: fbgemm dynamic int8 Linear (per-channel W)", run, note=note)

        return _guard("torch", make)

    def ort_impl(self, name: str, threads: int, x: F32) -> Impl:
        if self.peers.onnx is None:
            return _skip("onnxruntime", _ort_why(self.peers))

        def make() -> Impl:
            sess = self.ort_session(threads)
            return Impl(name, lambda: sess.run(None, {"A": x}))

        return _guard("onnxruntime", make)

    def numpy_gemm_impl(self, x: F32) -> Impl:
        wt = self.w.T
        return Impl(
            "numpy: float32 x @ W.T (BLAS)",
            lambda: x @ wt,
            nbytes=4 * self.out_f * self.in_f,
            note="float32, not quantized",
        )


def _guard(name: str, make: Callable[[], Impl]) -> Impl:
    """``make()``, or a skipped row saying why a peer could not be set up."""
    try:
        return make()
    except Exception as e:
        return _skip(name, f"setup failed: {type(e).__name__}: {str(e)[:100]}")


def _matvec_cases(cfg: Config) -> Iterator[Case]:
    shapes = [(64, 256)] if cfg.quick else [(4096, 4096), (11008, 4096)]
    for out_f, in_f in shapes:
        shape = _Shape(cfg.peers, out_f, in_f)

        def build(shape: _Shape = shape) -> Builder:
            q, scales = shape.int8
            x = _normal(_rng(3), (shape.in_f,))
            x1 = x.reshape(1, -1)
            wf = q.astype(np.float32)
            qx = np.empty_like(x)

            def np_matvec() -> object:
                s = np.float32(max(x.max(), -x.min())) / np.float32(127.0)
                np.divide(x, s, out=qx)
                np.rint(qx, out=qx)
                np.clip(qx, -127, 127, out=qx)
                y = wf @ qx
                y *= scales
                y *= s
                return y

            def impls(threads: int) -> list[Impl]:
                return [
                    Impl(
                        "dynquant: w8a8_matvec",
                        lambda: dq.w8a8_matvec(q, scales, x),
                        dynquant=True,
                    ),
                    Impl(
                        "numpy: quantize x + float32 BLAS gemv on int8-valued W",
                        np_matvec,
                        nbytes=4 * wf.size,
                    ),
                    shape.torch_impl(x1, note="activation per tensor, uint8"),
                    shape.ort_impl("onnxruntime: DynamicQuantizeMatMul", threads, x1),
                ]

            return impls

        yield Case(
            f"w8a8_matvec {out_f}x{in_f}",
            ("w8a8_matvec", "matvec"),
            build,
            nbytes=out_f * in_f + 4 * in_f + 4 * out_f + 4 * out_f,
            ops=2 * out_f * in_f,
        )


def _missing(name: str, tags: tuple[str, ...]) -> Case:
    def build() -> Builder:
        return lambda _t: [Impl(f"dynquant: {name}", None, note=f"dq.{name} not available yet")]

    return Case(name, tags, build)


def _matmul_cases(cfg: Config) -> Iterator[Case]:
    shapes = [(64, 256)] if cfg.quick else [(4096, 4096), (11008, 4096)]
    ms = [1, 8] if cfg.quick else [1, 8, 128]
    tags = ("w8a8_matmul", "matmul")
    if not hasattr(dq, "w8a8_matmul"):
        yield _missing("w8a8_matmul", tags)
        return
    for out_f, in_f in shapes:
        shape = _Shape(cfg.peers, out_f, in_f)
        for m in ms:

            def build(m: int = m, shape: _Shape = shape) -> Builder:
                q, scales = shape.int8
                x = _normal(_rng(5 + m), (m, shape.in_f))

                packed = shape.packed_int8()

                def impls(threads: int) -> list[Impl]:
                    return [
                        Impl(
                            "dynquant: w8a8_matmul(per_token=True)",
                            lambda: dq.w8a8_matmul(x, q, scales, per_token=True),
                            dynquant=True,
                        ),
                        Impl(
                            "dynquant: w8a8_matmul on pack_weights_int8",
                            lambda: dq.w8a8_matmul(x, packed, scales, per_token=True),
                            dynquant=True,
                            note="weights packed once, as the peers'",
                        ),
                        shape.torch_impl(x, note="activation per tensor, uint8"),
                        shape.ort_impl("onnxruntime: DynamicQuantizeMatMul", threads, x),
                        shape.numpy_gemm_impl(x),
                    ]

                return impls

            yield Case(
                f"w8a8_matmul M={m} {out_f}x{in_f}",
                tags,
                build,
                nbytes=out_f * in_f + 4 * m * (in_f + out_f) + 4 * out_f if m == 1 else None,
                ops=2 * m * out_f * in_f,
            )


def _in_form(form: str, call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with the W8A8 GEMM forced into ``form``, then back to auto."""

    def run() -> object:
        _core.set_gemm_form(form)
        try:
            return call()
        finally:
            _core.set_gemm_form("auto")

    return run


def _gemm_form_cases(cfg: Config) -> Iterator[Case]:
    """The W8A8 GEMM's offset form against its sign form on the same call:
    the ratio of the sign row is offset time / sign time (README, Kernels
    and threads). Samples taken in turn, so both see the same drift. On the
    VNNI paths "sign" is the row pairs' w + 128 form (what auto runs there)
    and "offset" the AVX2 split form run with vpdpbusd."""
    if cfg.quick:
        runs = [(2, 64, 256)]
    else:
        runs = [(16, 4096, 4096), (64, 4096, 4096), (128, 4096, 4096), (128, 11008, 4096)]
    for m, out_f, in_f in runs:

        def build(m: int = m, out_f: int = out_f, in_f: int = in_f) -> Builder:
            q, scales = dq.quantize_weights_int8(_normal(_rng(11), (out_f, in_f)))
            x = _normal(_rng(13 + m), (m, in_f))

            def impls(_threads: int) -> list[Impl]:
                return [
                    Impl(
                        "dynquant: w8a8_matmul, offset form",
                        _in_form("offset", lambda: dq.w8a8_matmul(x, q, scales)),
                        dynquant=True,
                    ),
                    Impl(
                        "dynquant: w8a8_matmul, sign form",
                        _in_form("sign", lambda: dq.w8a8_matmul(x, q, scales)),
                        dynquant=True,
                    ),
                ]

            return impls

        yield Case(
            f"w8a8_matmul form M={m} {out_f}x{in_f}",
            ("gemm_form",),
            build,
            ops=2 * m * out_f * in_f,
            interleaved=True,
            idle=0.0,  # one library on both sides: no other runtime's threads to let settle
        )


def _w4a8_cases(cfg: Config) -> Iterator[Case]:
    shapes = [(64, 256)] if cfg.quick else [(4096, 4096), (11008, 4096)]
    ms = [1, 8] if cfg.quick else [1, 8, 128]
    group = 32
    tags = ("w4a8_matmul", "w4a8", "matmul")
    if not (hasattr(dq, "quantize_weights_int4") and hasattr(dq, "w4a8_matmul")):
        yield _missing("w4a8_matmul", tags)
        return
    for out_f, in_f in shapes:
        shape = _Shape(cfg.peers, out_f, in_f, group)
        for m in ms:

            def build(m: int = m, shape: _Shape = shape) -> Builder:
                packed, scales = shape.int4
                x = _normal(_rng(5 + m), (m, shape.in_f))
                # What QuantizedLinear(bits=4) holds on AVX-512 VNNI CPUs.
                held = (
                    _core.pack_weights_int4(packed, scales, shape.in_f, group)
                    if _core.kernel_info()["packed_gemm"]
                    else None
                )

                def impls(threads: int) -> list[Impl]:
                    ours = [
                        Impl(
                            f"dynquant: w4a8_matmul(group_size={group})",
                            lambda: dq.w4a8_matmul(x, packed, scales, group_size=group),
                            dynquant=True,
                        )
                    ]
                    if held is not None:
                        ours.append(
                            Impl(
                                "dynquant: W4A8 on 16-row int4 panels (QuantizedLinear's)",
                                lambda: _w4a8_matmul_held(
                                    x,
                                    held,
                                    per_token=True,
                                    bias=None,
                                    act_mode=dq.MaxAbs(),
                                    nan_policy="raise",
                                ),
                                dynquant=True,
                                note="weights regrouped once, as the peers'",
                            )
                        )
                    return [
                        *ours,
                        shape.ort_impl(
                            f"onnxruntime: MatMulNBits(bits=4, block={group}, accuracy_level=4)",
                            threads,
                            x,
                        ),
                        shape.torch_impl(x, note="int8 weights (torch has no CPU W4A8)"),
                        shape.numpy_gemm_impl(x),
                    ]

                return impls

            groups = -(-in_f // group)
            w_bytes = out_f * ((in_f + 1) // 2) + 4 * out_f * groups
            yield Case(
                f"w4a8_matmul M={m} {out_f}x{in_f}",
                tags,
                build,
                nbytes=w_bytes + 4 * m * (in_f + out_f) if m == 1 else None,
                ops=2 * m * out_f * in_f,
            )


def _layer_stack_cases(cfg: Config) -> Iterator[Case]:
    """A stack of distinct square weight matrices applied one after the other,
    as a model's layers are (each layer's output the next one's input):
    together several times the last-level cache, so every layer's weights
    come from memory, as in LLM decoding. (The other matmul cases repeat one
    matrix, which can stay in a large L3.)"""
    n_layers, width = (2, 256) if cfg.quick else (8, 4096)
    group = 32
    for kind in ("w8a8", "w4a8"):
        fn = f"{kind}_matmul"
        tags = ("layers", fn, "matmul")
        if not hasattr(dq, fn):
            yield _missing(fn, tags)
            continue
        for m in (1, 8):

            def build(m: int = m, kind: str = kind) -> Builder:
                g = group if kind == "w4a8" else None
                peers = cfg.peers
                shapes = [_Shape(peers, width, width, g, seed=20 + i) for i in range(n_layers)]
                x = _normal(_rng(5 + m), (m, width))
                extra: list[Impl] = []
                if kind == "w8a8":
                    weights = [s.int8 for s in shapes]
                    packs = [(s.packed_int8(), s.int8[1]) for s in shapes]

                    def ours() -> object:
                        y = x
                        for q, sc in weights:
                            y = dq.w8a8_matmul(y, q, sc, per_token=True)
                        return y

                    def ours_packed() -> object:
                        y = x
                        for pk, sc in packs:
                            y = dq.w8a8_matmul(y, pk, sc, per_token=True)
                        return y

                    extra.append(
                        Impl(
                            f"dynquant: w8a8_matmul on pack_weights_int8 x {n_layers} layers",
                            ours_packed,
                            dynquant=True,
                            note="weights packed once, as the peers'",
                        )
                    )

                    name, ort_name = "w8a8_matmul(per_token=True)", "DynamicQuantizeMatMul"
                else:
                    packed = [s.int4 for s in shapes]

                    def ours() -> object:
                        y = x
                        for p4, sc in packed:
                            y = dq.w4a8_matmul(y, p4, sc, group_size=group)
                        return y

                    name = f"w4a8_matmul(group_size={group})"
                    ort_name = f"MatMulNBits(bits=4, block={group}, accuracy_level=4)"
                for s in shapes:
                    s._w = None  # the float weights are not needed again
                chained = f" x {n_layers} layers"

                def torch_rows() -> Impl:
                    torch: Any = peers.torch
                    if torch is None:
                        return _skip("torch", peers.why_not.get("torch", ""))

                    def make() -> Impl:
                        layers = torch.nn.Sequential(*(s.torch_linear() for s in shapes))
                        t = peers.torch_tensor(x)

                        def run() -> object:
                            with torch.inference_mode():
                                return layers(t)

                        note = "activation per tensor, uint8"
                        return Impl(
                            "torch: fbgemm dynamic int8 Linear" + chained,
                            run,
                            note=note + (", int8 weights" if kind == "w4a8" else ""),
                        )

                    return _guard("torch", make)

                def ort_rows(threads: int) -> Impl:
                    if peers.onnx is None:
                        return _skip("onnxruntime", _ort_why(peers))

                    def make() -> Impl:
                        if kind == "w8a8":
                            models = [peers.ort_dynamic_quantize_matmul(*s.int8) for s in shapes]
                        else:
                            models = [peers.ort_matmul_nbits(*s.int4, width, group) for s in shapes]
                        sess = peers.ort_session(peers.ort_chain(models), threads)
                        return Impl(
                            f"onnxruntime: {ort_name}" + chained,
                            lambda: sess.run(None, {"A": x}),
                        )

                    return _guard("onnxruntime", make)

                def impls(threads: int) -> list[Impl]:
                    return [
                        Impl(f"dynquant: {name}" + chained, ours, dynquant=True),
                        *extra,
                        torch_rows(),
                        ort_rows(threads),
                    ]

                return impls

            if kind == "w8a8":
                w_bytes = width * width + 4 * width
            else:
                w_bytes = width * ((width + 1) // 2) + 4 * width * (-(-width // group))
            yield Case(
                f"{fn} M={m} {n_layers} layers of {width}x{width} (weights from memory)",
                tags,
                build,
                nbytes=n_layers * (w_bytes + 8 * m * width),
                ops=2 * n_layers * m * width * width,
            )


def _calib_cases(cfg: Config) -> Iterator[Case]:
    nb, width = (4, 256) if cfg.quick else (64, 4096)
    peers = cfg.peers

    def build() -> Builder:
        rng = _rng(13)
        batches = [_normal(rng, (width,)) for _ in range(nb)]
        n = nb * width
        torch: Any = peers.torch
        tb = [peers.torch_tensor(b) for b in batches] if torch is not None else []
        k = _k_of(0.99, n)

        def torch_calib() -> object:
            t = torch.cat(tb)
            mn, mx = torch.aminmax(t)
            td = t.double()
            p99 = torch.kthvalue(t.abs(), k + 1).values
            return mn, mx, td.mean(), td.std(correction=0), p99, p99 / 127

        def impls(_threads: int) -> list[Impl]:
            out = [
                Impl(
                    "dynquant: CalibStats.collect",
                    lambda: dq.CalibStats.collect(batches),
                    dynquant=True,
                ),
                Impl("numpy: concat, min, max, mean, std, partition", _numpy_calib(batches, n)),
            ]
            if torch is not None:
                out.append(Impl("torch: cat, aminmax, mean, std, kthvalue", torch_calib))
            else:
                out.append(_skip("torch", peers.why_not.get("torch", "")))
            return out

        return impls

    yield Case(f"CalibStats {nb} x {width}", ("calib", "calib_stats"), build, nbytes=4 * nb * width)


def _observer_run(cls: Any, batches: list[F32], **kwargs: Any) -> Callable[[], object] | str:
    """``CalibObserver(**kwargs)`` fed every batch through ``update`` and read
    with ``stats`` (or the nearest names it has), or why it cannot be."""
    try:
        probe = cls(**kwargs)
    except TypeError as e:
        return f"CalibObserver({', '.join(kwargs)}) not accepted: {e}"
    add = next((m for m in ("update", "observe", "add", "push") if hasattr(probe, m)), None)
    fin = next(
        (m for m in ("stats", "finalize", "result", "compute", "to_stats") if hasattr(probe, m)),
        None,
    )
    if add is None or fin is None:
        return f"unknown CalibObserver API (methods: {[m for m in dir(probe) if m[0] != '_']})"

    def run() -> object:
        obs = cls(**kwargs)
        feed = getattr(obs, add)
        for b in batches:
            feed(b)
        return getattr(obs, fin)()

    return run


def _observer_cases(cfg: Config) -> Iterator[Case]:
    n = 10**4 if cfg.quick else 10**7
    chunk = 1 << 10 if cfg.quick else 1 << 17
    tags = ("calib_observer", "calib", "observer")
    if not hasattr(dq, "CalibObserver"):
        yield _missing("CalibObserver", tags)
        return

    def build() -> Builder:
        x = _normal(_rng(17), (n,))
        batches = [x[i : i + chunk] for i in range(0, n, chunk)]
        cls = vars(dq)["CalibObserver"]
        variants = [
            (f"dynquant: CalibObserver().update x{len(batches)}, .stats()", {}),
            ("dynquant: CalibObserver(exact=True), same", {"exact": True}),
        ]
        runs = [(name, _observer_run(cls, batches, **kw)) for name, kw in variants]

        def impls(_threads: int) -> list[Impl]:
            out = [
                Impl(name, run, dynquant=True)
                if not isinstance(run, str)
                else Impl(name, None, note=run)
                for name, run in runs
            ]
            out.append(
                Impl(
                    "dynquant: CalibStats.collect (same batches)",
                    lambda: dq.CalibStats.collect(batches),
                    dynquant=True,
                )
            )
            out.append(
                Impl("numpy: concat, min, max, mean, std, partition", _numpy_calib(batches, n))
            )
            return out

        return impls

    yield Case(f"CalibObserver N={_n(n)}", tags, build, nbytes=4 * n)


def _minilm_cases(cfg: Config) -> Iterator[Case]:
    """all-MiniLM-L6-v2 ``encode`` end to end (tokenizer, NumPy forward pass,
    pooling) over the demo's sentences: dynquant's QuantizedLinear layers
    beside the same forward in float32 and PyTorch's float32 and
    ``quantize_dynamic`` versions of the model. Skipped when the model
    package is not installed."""
    n_sent, batch = (4, 4) if cfg.quick else (len(_minilm.DEMO_SENTENCES), 16)
    peers = cfg.peers
    by_name = {c.name: c for c in CONFIGS}

    def build() -> Builder:
        try:
            model = _minilm.MiniLM.load()
        except _minilm.ModelNotInstalledError as e:
            why = f"skipped: {str(e).split(';')[0]} (make .venv/.demo-installed)"
            return lambda _t: [Impl("dynquant: MiniLM encode", None, note=why)]
        sentences = list(_minilm.DEMO_SENTENCES[:n_sent])
        ref = model.encode(sentences, batch)

        def variant(encode: Callable[..., F32], weight_bytes: int) -> tuple[Callable[[], F32], str]:
            emb = encode(sentences, batch)  # also the first warm-up call
            cos = np.sum(emb.astype(np.float64) * ref, axis=1)
            note = (
                f"cos to fp32 mean {cos.mean():.4f} min {cos.min():.4f}; "
                f"weights {weight_bytes / 1e6:.1f} MB"
            )
            return (lambda: encode(sentences, batch)), note

        runs: list[tuple[str, Callable[[], F32] | None, str, bool]] = []
        for label, config in (
            ("dynquant: W8A8 per-token (QuantizedLinear)", by_name["W8A8 per-token"]),
            ("dynquant: W4A8 g32 per-token (QuantizedLinear)", by_name["W4A8 g32 per-token"]),
        ):
            built: list[dq.QuantizedLinear] = []
            quantized = model.with_linears(quantized_factory(config, None, built))
            fn, note = variant(quantized.encode, sum(q.memory_bytes() for q in built))
            runs.append((label, fn, note, True))
        fp32_bytes = sum(w.nbytes + b.nbytes for w, b in map(model.linear_weight, model.linears))
        fn, note = variant(model.encode, fp32_bytes)
        runs.append(("numpy: the same forward pass, float32 Linear (BLAS)", fn, note, True))
        if peers.torch is None:
            runs.append(("torch", None, peers.why_not.get("torch", ""), False))
        else:
            try:
                fp32 = TorchMiniLM.from_numpy(model)
                for label, tm in (
                    ("torch: float32 torch.nn (padded batches)", fp32),
                    ("torch: quantize_dynamic qint8 (fbgemm)", fp32.quantize_dynamic()),
                ):
                    fn, note = variant(tm.encode, tm.weight_bytes())
                    runs.append((label, fn, note, False))
            except Exception as e:
                runs.append(("torch", None, f"setup failed: {type(e).__name__}: {e}"[:120], False))
        tokens = int(model.tokenize(sentences).lengths.sum())
        first_note = f"{tokens} tokens; "

        def impls(_threads: int) -> list[Impl]:
            return [
                Impl(label, fn, note=(first_note + note) if i == 0 else note, dynquant=ours)
                for i, (label, fn, note, ours) in enumerate(runs)
            ]

        return impls

    yield Case(
        f"MiniLM encode {n_sent} sentences (batch {batch})",
        ("minilm", "model", "e2e"),
        build,
        interleaved=True,
    )


def iter_cases(cfg: Config) -> Iterator[Case]:
    """Every case, in table order; nothing is computed until a case is built."""
    for gen in (
        _overhead_cases,
        _quantize_cases,
        _per_row_cases,
        _percentile_cases,
        _matvec_cases,
        _calib_cases,
        _matmul_cases,
        _gemm_form_cases,
        _w4a8_cases,
        _layer_stack_cases,
        _observer_cases,
        _minilm_cases,
    ):
        yield from gen(cfg)
