"""Uses the whole public API with precise types; ``mypy --strict`` must pass on it:

    mypy python/dynquant tests/typing_check.py

It is a script, not a test module (pytest does not collect it: the name does
not match ``test_*.py``). ``test_pythonic.py`` runs it once, so it cannot go
stale: ``python tests/typing_check.py`` exercises every name it mentions.
"""

from __future__ import annotations

import dynquant as dq
import numpy as np
import numpy.typing as npt


def quantizers(x: npt.NDArray[np.float32], rows: npt.NDArray[np.float32]) -> float:
    modes: list[dq.ScaleMode] = [dq.MaxAbs(), dq.Percentile(0.99)]
    total = 0.0
    for mode in modes:
        s: float = dq.compute_scale(x, 127.0, mode)
        s4: float = dq.compute_scale([1.0, 2.0], 7, mode, nan_policy="reference")
        t8: dq.DynQuantTensor = dq.quantize_int8(x, mode)
        t4: dq.DynQuantTensor = dq.quantize_int4(x, mode=mode, nan_policy="raise")
        tr: dq.DynQuantTensor = dq.quantize_int8_per_row(rows, mode)
        for t in (t8, t4, tr):
            data: npt.NDArray[np.int8] = t.data
            scales: npt.NDArray[np.float32] = t.scales
            shape: tuple[int, ...] = t.shape
            fmt: dq.DynQuantFormat = t.format
            deq: npt.NDArray[np.float32] = t.dequantize()
            mem: int = t.memory_bytes()
            ratio: float = t.compression_ratio()
            count: int = t.element_count()
            mae: float = dq.quantization_mae(x if t is not tr else rows, t)
            total += s + s4 + mem + ratio + count + mae + float(deq.sum())
            total += float(data.size + scales.size + len(shape)) + fmt.value
    p: float = dq.Percentile(0.5).p
    built = dq.DynQuantTensor(
        np.zeros(3, np.int8), np.ones(1, np.float32), (3,), dq.DynQuantFormat.Int8PerTensor
    )
    return total + p + built.element_count()


def smoothing(a: npt.NDArray[np.float32], w: npt.NDArray[np.float32]) -> float:
    config = dq.SmoothQuantConfig(alpha=0.5, epsilon=1e-5)
    default: dq.SmoothQuantConfig = dq.SmoothQuantConfig.default_alpha()
    alpha: float = config.alpha + default.epsilon
    f: npt.NDArray[np.float32] = dq.compute_smooth_factors(a, w, config)
    f2: npt.NDArray[np.float32] = dq.compute_smooth_factors(a, w, nan_policy="reference")
    a2: npt.NDArray[np.float32] = dq.smooth_activations(a, f)
    w2: npt.NDArray[np.float32] = dq.smooth_weights(w, f, out=np.empty_like(w))
    dq.smooth_activations(a2, f, out=a2)
    dq.smooth_weights(w2, f2)
    return alpha + float(a2.sum() + w2.sum())


def products(x: npt.NDArray[np.float32], w: npt.NDArray[np.float32]) -> float:
    q8, s8 = dq.quantize_weights_int8(w)
    qi8: npt.NDArray[np.int8] = q8
    sc8: npt.NDArray[np.float32] = s8
    y: npt.NDArray[np.float32] = dq.w8a8_matvec(qi8, sc8, x[0])
    y2: npt.NDArray[np.float32] = dq.w8a8_matvec(q8, s8, x[0], nan_policy="reference")
    ym: npt.NDArray[np.float32] = dq.w8a8_matmul(x, q8, s8, per_token=True, bias=None)
    packed, s4 = dq.quantize_weights_int4(w, group_size=None)
    p4: npt.NDArray[np.uint8] = packed
    y4: npt.NDArray[np.float32] = dq.w4a8_matmul(x, p4, s4)
    y4v: npt.NDArray[np.float32] = dq.w4a8_matvec(p4, s4, x[0])
    values: npt.NDArray[np.int8] = dq.unpack_int4(p4, w.shape[1])
    repacked: npt.NDArray[np.uint8] = dq.pack_int4(values)
    layer: dq.QuantizedLinear = dq.QuantizedLinear.from_float(w, bits=8)
    yl: npt.NDArray[np.float32] = layer(x)
    return float(y.sum() + y2.sum() + ym.sum() + y4.sum() + y4v.sum() + yl.sum()) + float(
        repacked.size
    )


def calibration(batches: list[npt.NDArray[np.float32]]) -> float:
    stats: dq.CalibStats = dq.CalibStats.collect(batches)
    stats2: dq.CalibStats = dq.CalibStats.collect(iter(batches), nan_policy="reference")
    fields: tuple[float, ...] = (
        stats.min,
        stats.max,
        stats.mean,
        stats.std_dev,
        stats.p99,
        stats.suggested_scale,
    )
    return sum(fields) + stats2.p99


def kernels() -> str:
    info: dq.KernelInfo = dq.kernel_info()
    isa: str = info.isa
    threads: int = info.threads
    supported: tuple[str, ...] = info.supported
    dq.set_kernel("auto")
    dq.set_num_threads(0)
    return f"{isa} {threads} {supported} {info.arch} {dq.__version__}"


def errors() -> list[str]:
    caught: list[str] = []
    try:
        dq.w8a8_matvec(np.ones((2, 3), np.int8), np.ones(2, np.float32), np.ones(4, np.float32))
    except dq.ShapeMismatchError as e:
        caught.append(f"{e.expected} {e.actual}")
    try:
        dq.smooth_activations(np.ones((2, 3), np.float32), np.ones(4, np.float32))
    except dq.FeatureDimMismatchError as e:
        caught.append(f"{e.in_features} {e.sf_len}")
    try:
        dq.quantize_int8([1.0, float("nan")])
    except dq.NonFiniteError as e:
        caught.append(f"{e.index} {e.value}")
    try:
        dq.SmoothQuantConfig(2.0)
    except dq.InvalidAlphaError as e:
        caught.append(str(e.alpha))
    try:
        dq.SmoothQuantConfig(0.5, -1.0)
    except dq.InvalidEpsilonError as e:
        caught.append(str(e.epsilon))
    try:
        dq.Percentile(0.0)
    except dq.InvalidPercentileError as e:
        caught.append(str(e.p))
    try:
        dq.w8a8_matvec(np.ones((1, 1), np.int8), np.ones(1, np.float32), [])
    except dq.EmptyInputError as e:
        caught.append(str(e))
    try:
        dq.quantize_int8([True])
    except dq.DTypeError as e:
        caught.append(str(e))
    try:
        dq.quantize_int8([1.0], nan_policy="?")
    except dq.InvalidArgumentError as e:
        caught.append(str(e))
    except (dq.ArgumentTypeError, dq.InternalError) as e:
        caught.append(str(e))
    except dq.DynQuantError as e:
        caught.append(str(e))
    return caught


def main() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 32)).astype(np.float32)
    w = rng.standard_normal((8, 32)).astype(np.float32)
    total = quantizers(x.reshape(-1), x) + smoothing(x, w) + products(x, w)
    total += calibration([x, w])
    assert np.isfinite(total)
    assert kernels()
    assert len(errors()) == 9


if __name__ == "__main__":
    main()
