"""Real activations and weights of all-MiniLM-L6-v2 (tests/data/minilm_extract.npz,
cut by tests/data/make_extract.py): per-row vs per-tensor error, and what
SmoothQuant does to the W8A8 error of the FFN projections."""

from __future__ import annotations

from pathlib import Path

import dynquant as dq
import numpy as np
import pytest
import reference_np as ref
from strategies import assert_same_f32, assert_same_i8

F32 = np.float32
EXTRACT = Path(__file__).resolve().parent / "data" / "minilm_extract.npz"


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    with np.load(EXTRACT) as z:
        # float16-stored weights become the layer's exact float32 weights here.
        return {k: z[k].astype(F32) for k in z.files}


def test_extract_is_small_and_complete(data: dict[str, np.ndarray]) -> None:
    assert EXTRACT.stat().st_size <= 2 * 1024 * 1024
    assert data["l0.ffn_in.x"].shape == (64, 384)
    assert data["l5.ffn_in.x"].shape == (64, 384)
    assert data["l0.ffn_in.w"].shape[1] == 384
    assert data["l0.ffn_out.x"].shape == (64, 1536)
    assert data["l0.ffn_out.w"].shape == (384, 1536)
    # The FFN inputs have outlier channels: that is what the tests below need.
    cmax = np.abs(data["l0.ffn_in.x"]).max(axis=0)
    assert cmax.max() > 8 * np.median(cmax)


@pytest.mark.parametrize("key", ["l0.ffn_in.x", "l5.ffn_in.x", "l0.ffn_out.x"])
def test_real_activations_match_the_model(data: dict[str, np.ndarray], key: str) -> None:
    x = data[key]
    t = dq.quantize_int8_per_row(x)
    q, s = ref.quantize_int8_per_row(x)
    assert_same_i8(t.data, q)
    assert_same_f32(t.scales, s)
    t = dq.quantize_int8(x, dq.Percentile(0.999))
    q1, s1 = ref.quantize_int8(x, 0.999)
    assert_same_i8(t.data, q1)
    assert t.scales[0] == s1


@pytest.mark.parametrize("key", ["l0.ffn_in.x", "l5.ffn_in.x", "l0.ffn_out.x"])
def test_per_row_error_is_below_per_tensor(data: dict[str, np.ndarray], key: str) -> None:
    x = data[key]
    per_tensor = dq.quantization_mae(x, dq.quantize_int8(x))
    per_row = dq.quantization_mae(x, dq.quantize_int8_per_row(x))
    # Independent check of the metric itself.
    q, s = ref.quantize_int8_per_row(x)
    assert per_row == pytest.approx(ref.mae(x, ref.dequantize_per_row(q, s)), rel=1e-5)
    # Measured: 0.26, 0.45 and 0.22 of the per-tensor error.
    assert per_row < 0.6 * per_tensor, (per_row, per_tensor)


def _w8a8_relative_error(x: np.ndarray, w: np.ndarray, alpha: float | None) -> float:
    """Relative RMS error of a W8A8 Linear (no bias) against its float output.

    Weights: symmetric int8 per output row (the model's rounding, independent
    of dynquant's weight quantizer). Activations: per token — one
    ``w8a8_matvec`` per token row, each with its own MaxAbs scale.
    """
    y_float = x.astype(np.float64) @ w.astype(np.float64).T
    if alpha is not None:
        f = dq.compute_smooth_factors(x, w, dq.SmoothQuantConfig(alpha))
        x = dq.smooth_activations(x, f)
        w = dq.smooth_weights(w, f)
    wq, ws = ref.quantize_weights_rows(w)
    y = np.stack([dq.w8a8_matvec(wq, ws, row) for row in x]).astype(np.float64)
    return float(np.sqrt(np.mean((y - y_float) ** 2) / np.mean(y_float**2)))


@pytest.mark.parametrize("layer", ["l0", "l5"])
def test_smoothquant_lowers_ffn_up_projection_error(
    data: dict[str, np.ndarray], layer: str, record_property: object
) -> None:
    x, w = data[f"{layer}.ffn_in.x"], data[f"{layer}.ffn_in.w"]
    plain = _w8a8_relative_error(x, w, None)
    smooth = _w8a8_relative_error(x, w, 0.5)
    record_property("relative_rms_error", {"plain": plain, "smoothquant_0.5": smooth})  # type: ignore[operator]
    # Measured on this extract: l0 0.0210 → 0.0103, l5 0.0203 → 0.0090
    # (on the full data set: 0.022 → 0.011 and 0.021 → 0.009).
    assert 0.01 < plain < 0.04
    assert smooth < 0.7 * plain, (plain, smooth)


def test_smoothquant_does_not_help_ffn_down_projection_much(
    data: dict[str, np.ndarray], record_property: object
) -> None:
    x, w = data["l0.ffn_out.x"], data["l0.ffn_out.w"]
    plain = _w8a8_relative_error(x, w, None)
    smooth = _w8a8_relative_error(x, w, 0.5)
    record_property("relative_rms_error", {"plain": plain, "smoothquant_0.5": smooth})  # type: ignore[operator]
    # Measured: 0.0097 → 0.0122 (worse: one output channel dominates and the
    # post-GELU input has no strong outlier channels to move into the weights).
    # Asserted only loosely: SmoothQuant gains less than 20% here, against
    # more than 30% on the up-projections.
    assert plain < 0.03
    assert smooth > 0.8 * plain, (plain, smooth)


def test_weight_quantizer_and_batched_product_on_real_data(data: dict[str, np.ndarray]) -> None:
    # The public weight quantizer follows the same per-row rule as the model,
    # and the per-token batched product equals the loop of matvecs, bit for bit.
    x, w = data["l5.ffn_in.x"], data["l5.ffn_in.w"]
    wq, ws = dq.quantize_weights_int8(w)
    rq, rs = ref.quantize_weights_rows(w)
    assert_same_i8(wq, rq)
    assert_same_f32(ws, rs)
    loop = np.stack([dq.w8a8_matvec(wq, ws, row) for row in x])
    assert_same_f32(dq.w8a8_matmul(x, wq, ws, per_token=True), loop)
