"""Batched W8A8, W4A8 and ``QuantizedLinear`` against NumPy implementations
of their definitions (written here from the docstrings, not from the
kernels), bit for bit, on random shapes and the nasty values: ties, -128
weights, one column, odd widths, partial groups, empty batches."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import dynquant as dq
import numpy as np
import numpy.typing as npt
import pytest
import reference_np as ref
from dynquant import _core
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import assert_same_f32

F32 = np.float32
PATHS = list(dq.kernel_info().supported)
I64 = np.int64


def ref_act_quant(
    x2: npt.NDArray[F32], per_token: bool, percentile: float | None = None
) -> tuple[Any, Any]:
    """Quantized tokens [m, k] and their scales [m] (MaxAbs, or the percentile)."""
    if per_token:
        return ref.quantize_int8_per_row(x2, percentile)
    q, s = ref.quantize_int8(x2, percentile)
    return q, np.full(x2.shape[0], s, dtype=F32)


def ref_w8a8(
    x2: npt.NDArray[F32],
    w: npt.NDArray[np.int8],
    ws: npt.NDArray[F32],
    per_token: bool = True,
    bias: npt.NDArray[F32] | None = None,
    percentile: float | None = None,
) -> npt.NDArray[F32]:
    """``(acc as f32 * ws[j]) * s[i] (+ bias[j])`` with acc an exact sum."""
    q, s = ref_act_quant(x2, per_token, percentile)
    acc = q.astype(I64) @ w.astype(I64).T
    y = ((ref.acc_to_f32(acc) * ws[None, :]).astype(F32) * s[:, None]).astype(F32)
    return y if bias is None else (y + bias[None, :]).astype(F32)


def ref_w4a8(
    x2: npt.NDArray[F32],
    values: npt.NDArray[np.int8],
    scales: npt.NDArray[F32],
    group: int,
    per_token: bool = True,
    bias: npt.NDArray[F32] | None = None,
    percentile: float | None = None,
) -> npt.NDArray[F32]:
    """Per token and row: group g's exact sum times its scale, added in f32 in
    group order into lane g % 8 (lanes start at -0.0), lanes summed as
    ((y0 + y4) + (y2 + y6)) + ((y1 + y5) + (y3 + y7)), times the token scale,
    plus the bias."""
    q, s = ref_act_quant(x2, per_token, percentile)
    m, k = q.shape
    n = values.shape[0]
    groups = scales.shape[1]
    lanes = np.full((m, n, 8), -0.0, dtype=F32)
    for g in range(groups):
        cols = slice(g * group, min((g + 1) * group, k))
        sums = q[:, cols].astype(I64) @ values[:, cols].astype(I64).T
        products = (ref.acc_to_f32(sums) * scales[None, :, g]).astype(F32)
        lanes[:, :, g % 8] = (lanes[:, :, g % 8] + products).astype(F32)
    y0, y1, y2, y3, y4, y5, y6, y7 = (lanes[:, :, i] for i in range(8))
    total = ((y0 + y4) + (y2 + y6)) + ((y1 + y5) + (y3 + y7))
    y = (total.astype(F32) * s[:, None]).astype(F32)
    return y if bias is None else (y + bias[None, :]).astype(F32)


def activations(draw: Any, m: int, k: int) -> npt.NDArray[F32]:
    """Random tokens; some are half-integers scaled so their max is 127
    (exact .5 ties in the quantizer), some span huge or tiny magnitudes."""
    kind = draw(st.sampled_from(["normal", "ties", "wide"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "ties":
        x = rng.integers(-254, 255, size=(m, k)).astype(F32) / 2
        x[:, 0] = 127.0  # max |x| = 127: scale 1, so every .5 is a tie
        return x
    x = rng.standard_normal((m, k)).astype(F32)
    if kind == "wide":
        x *= (10.0 ** rng.integers(-30, 30, size=(m, 1))).astype(F32)
    return x


@st.composite
def w8a8_case(draw: Any) -> tuple[Any, ...]:
    m, n, k = draw(st.integers(0, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 130))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.integers(-128, 128, size=(n, k)).astype(np.int8)
    w[0, : k // 2] = -128  # the value the sign trick must get right
    ws = rng.uniform(1e-4, 1.0, size=n).astype(F32)
    bias = rng.standard_normal(n).astype(F32) if draw(st.booleans()) else None
    return activations(draw, m, k), w, ws, bias, draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(w8a8_case())
def test_w8a8_matmul_is_its_definition(case: tuple[Any, ...]) -> None:
    x, w, ws, bias, per_token = case
    got = dq.w8a8_matmul(x, w, ws, per_token=per_token, bias=bias)
    assert_same_f32(got, ref_w8a8(x, w, ws, per_token, bias), "w8a8_matmul")
    if per_token and bias is None:
        for i in range(x.shape[0]):
            assert_same_f32(got[i], dq.w8a8_matvec(w, ws, x[i]), f"token {i} vs w8a8_matvec")


@settings(max_examples=150, deadline=None)
@given(w8a8_case(), st.sampled_from(PATHS))
def test_w8a8_matmul_on_packed_weights_is_bit_identical(case: tuple[Any, ...], path: str) -> None:
    """``pack_weights_int8`` changes the layout, never the bits, on every
    kernel path (the AVX-512 panel kernel where there is one, the row-major
    GEMM on the unpacked weights elsewhere)."""
    x, w, ws, bias, per_token = case
    dq.set_kernel(path)
    packed = dq.pack_weights_int8(w)
    got = dq.w8a8_matmul(x, packed, ws, per_token=per_token, bias=bias)
    assert_same_f32(got, dq.w8a8_matmul(x, w, ws, per_token=per_token, bias=bias), path)
    assert_same_f32(got, ref_w8a8(x, w, ws, per_token, bias), "definition")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("m", "n", "k"), [(1, 64, 4), (5, 65, 5), (9, 130, 384), (4, 200, 1027)])
def test_packed_panels_rows_and_columns_past_the_edges(path: str, m: int, n: int, k: int) -> None:
    """Panels of 64 rows and steps of 4 columns: shapes that leave partial
    panels, partial steps and partial token groups, with -128 weights and
    .5 ties in the activations."""
    dq.set_kernel(path)
    rng = np.random.default_rng(m * n * k)
    w = rng.integers(-128, 128, size=(n, k)).astype(np.int8)
    w[:, ::3] = -128
    x = rng.standard_normal((m, k)).astype(F32)
    x[:, 1] = 63.5 / 127.0 * np.abs(x).max(axis=1)  # ties at the int8 step
    ws = rng.uniform(1e-3, 1.0, size=n).astype(F32)
    packed = dq.pack_weights_int8(w)
    assert packed.shape == (n, k)
    assert packed.nbytes == -(-n // 64) * 64 * 4 * -(-k // 4) + 4 * n
    np.testing.assert_array_equal(packed.unpack(), w)
    for per_token in (True, False):
        got = dq.w8a8_matmul(x, packed, ws, per_token=per_token)
        assert_same_f32(got, dq.w8a8_matmul(x, w, ws, per_token=per_token), f"{path}")


def test_packed_weights_pickle_repr_and_errors() -> None:
    w = np.arange(-6, 6, dtype=np.int8).reshape(3, 4)
    packed = dq.pack_weights_int8(w)
    again = pickle.loads(pickle.dumps(packed))
    np.testing.assert_array_equal(again.unpack(), w)
    assert repr(packed) == f"PackedInt8Weights(shape=(3, 4), nbytes={packed.nbytes})"
    ws = np.ones(3, F32)
    with pytest.raises(dq.ShapeMismatchError, match="x must be"):
        dq.w8a8_matmul(np.ones((2, 5), F32), packed, ws)
    with pytest.raises(dq.ShapeMismatchError, match="weight_scales has 2 values for 3"):
        dq.w8a8_matmul(np.ones((2, 4), F32), packed, ws[:2])
    with pytest.raises(dq.NonFiniteError):
        dq.w8a8_matmul(np.full((2, 4), np.nan, F32), packed, ws)
    with pytest.raises(dq.DTypeError):
        dq.pack_weights_int8(w.astype(np.float32))
    with pytest.raises(dq.ShapeMismatchError):
        dq.pack_weights_int8(w.reshape(-1))
    assert dq.w8a8_matmul(np.ones((0, 4), F32), packed, ws).shape == (0, 3)


@st.composite
def w4a8_case(draw: Any) -> tuple[Any, ...]:
    m, n = draw(st.integers(0, 9)), draw(st.integers(1, 9))
    group = draw(st.sampled_from([None, 32, 64, 128]))
    # Multiples of 64 as often as odd widths: only those (with k % group == 0)
    # take the AVX2 W4A8 kernel, which 1..300 alone reaches in ~1% of cases.
    k = draw(st.one_of(st.integers(1, 300), st.sampled_from([64, 128, 192, 256, 320, 384, 512])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.integers(-8, 8, size=(n, k)).astype(np.int8)
    values[0, :: max(k // 7, 1)] = -8
    g = k if group is None else group
    scales = rng.uniform(1e-3, 1.0, size=(n, -(-k // g))).astype(F32)
    bias = rng.standard_normal(n).astype(F32) if draw(st.booleans()) else None
    return activations(draw, m, k), values, scales, group, bias, draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(w4a8_case(), st.sampled_from(["auto", "sign", "panel"]))
def test_w4a8_matmul_is_its_definition(case: tuple[Any, ...], form: str) -> None:
    # form: the tile form ("sign"), the 16-row panel form (where the
    # kernel path has it), or the automatic choice; the autouse fixture
    # restores "auto".
    _core.set_gemm_form(form)
    x, values, scales, group, bias, per_token = case
    packed = dq.pack_int4(values)
    got = dq.w4a8_matmul(x, packed, scales, group_size=group, per_token=per_token, bias=bias)
    k = x.shape[1]
    want = ref_w4a8(x, values, scales, k if group is None else group, per_token, bias)
    assert_same_f32(got, want, f"w4a8_matmul group {group}")
    if group is None:
        # One scale per row: W8A8 on the unpacked values, bit for bit.
        w8 = dq.w8a8_matmul(x, values, scales[:, 0], per_token=per_token, bias=bias)
        assert_same_f32(got, w8, "w4a8 (one group) vs w8a8 on unpacked values")


@pytest.mark.parametrize("path", dq.kernel_info().supported)
def test_w4a8_every_group_form_and_partial_chunk_on_every_path(path: str) -> None:
    # The AVX2 kernel takes k % 64 == 0 with groups of 32 or multiples of 64,
    # in chunks of eight groups and segments of 256 columns: these widths end
    # in a partial chunk or a half segment for every group form (hypothesis
    # draws them too rarely to be sure of one). Others go to the scalar path.
    # Both forms: the tile form, and the panel form (16-row panels regrouped
    # on the fly; 5 rows are one partial panel, 37 two full and a partial;
    # one token and an odd count take its one-token call).
    dq.set_kernel(path)
    rng = np.random.default_rng(11)
    for form in ("sign", "panel"):
        _core.set_gemm_form(form)  # the autouse fixture restores "auto"
        for k in (64, 192, 320, 384, 576, 640, 1088):
            for group in (None, 32, 64, 128, 192, 320):
                g = k if group is None else group
                for m, n in ((1, 5), (6, 5), (3, 37)):
                    x = rng.standard_normal((m, k)).astype(F32)
                    x[0, :] = np.where(np.arange(k) % 2, 1.0, -1.0)  # +-127 tokens
                    values = rng.integers(-8, 8, size=(n, k)).astype(np.int8)
                    values[0] = -8
                    values[-1, ::3] = 7
                    scales = rng.uniform(1e-3, 1.0, size=(n, -(-k // g))).astype(F32)
                    bias = rng.standard_normal(n).astype(F32)
                    got = dq.w4a8_matmul(
                        x, dq.pack_int4(values), scales, group_size=group, bias=bias
                    )
                    want = ref_w4a8(x, values, scales, g, True, bias)
                    assert_same_f32(got, want, f"{path} {form} k={k} group={group} m={m} n={n}")


@pytest.mark.parametrize("product", ["w8a8", "w4a8"])
def test_per_token_rows_ignore_the_batch_per_tensor_rows_share_the_loudest_scale(
    product: str,
) -> None:
    # Properties, not a re-implementation. Per token, each token's outputs
    # are those of the token alone, whatever else is in the batch. Per
    # tensor, the loudest token's scale serves all: that token's outputs are
    # its outputs alone, and tokens 1000x quieter quantize to zeros
    # (|x| / scale < 0.5), so their outputs are exactly the bias. With one
    # token the two modes agree.
    rng = np.random.default_rng(21)
    m, n, k = 5, 6, 96
    x = rng.uniform(-1.0, 1.0, (m, k)).astype(F32)
    x[2] *= F32(1000.0)
    wf = rng.standard_normal((n, k)).astype(F32)
    bias = rng.standard_normal(n).astype(F32)
    wq, ws = dq.quantize_weights_int8(wf)
    packed, scales = dq.quantize_weights_int4(wf, 32)

    def run(x: npt.NDArray[F32], per_token: bool) -> npt.NDArray[F32]:
        if product == "w8a8":
            return dq.w8a8_matmul(x, wq, ws, per_token=per_token, bias=bias)
        return dq.w4a8_matmul(x, packed, scales, group_size=32, per_token=per_token, bias=bias)

    alone = [run(x[i : i + 1], True)[0] for i in range(m)]
    for i in range(m):
        assert_same_f32(run(x[i : i + 1], False)[0], alone[i], f"token {i} alone, per tensor")
    per_token = run(x, True)
    for i in range(m):
        assert_same_f32(per_token[i], alone[i], f"per token, token {i}")
    per_tensor = run(x, False)
    assert_same_f32(per_tensor[2], alone[2], "per tensor, the loud token")
    for i in (0, 1, 3, 4):
        assert_same_f32(per_tensor[i], bias, f"per tensor, quiet token {i}")
        assert not np.array_equal(alone[i], bias)


# The int4 weight search's clip candidates (src/weights.rs, CLIP_RATIOS).
CLIP_RATIOS = (1.0, 0.96, 0.92, 0.88, 0.84, 0.8, 0.76, 0.72, 0.68, 0.64)


def _int4_values(w: npt.NDArray[F32], s0: np.float32) -> npt.NDArray[np.int8]:
    """clamp(round(w / s0), -8, 8), then at most 7."""
    return np.minimum(ref.quantize_with_scale(w, s0, 8.0), 7).astype(np.int8)


def _sq_err(w: npt.NDArray[F32], q: npt.NDArray[np.int8], s: np.float32) -> float:
    d = w.astype(np.float64) - q.astype(np.float64) * np.float64(s)
    return float(d @ d)


def _refit(w: npt.NDArray[F32], q: npt.NDArray[np.int8]) -> np.float32:
    qf = q.astype(np.float64)
    return F32(float(w.astype(np.float64) @ qf) / float(qf @ qf))


def test_int4_weight_scales_minimise_each_groups_squared_error() -> None:
    # Judged by the direct squared error sum((w - q s)^2) in f64: each
    # group's values and scale are no worse than any clip candidate (values
    # rounded with amax * ratio / 7, scale refitted by least squares) nor
    # than plain round-to-nearest with amax / 7, and the scale is the
    # least-squares fit of the values chosen (to its last bit but for the
    # f64 summation order). Groups: one element, a lone outlier, ties, equal
    # values, tiny and huge magnitudes, heavy tails, a partial last group.
    rng = np.random.default_rng(5)
    cases: list[tuple[npt.NDArray[F32], int | None]] = [
        (np.array([[3.0]], F32), None),
        (np.array([[-5.0]], F32), None),
        (np.array([[9.0] + [1.0] * 15 + [-0.6] * 16], F32), None),
        (np.array([[(i % 15) * 0.5 - 3.5 for i in range(32)]], F32), None),
        (np.full((1, 8), 2.0, F32), None),
        (np.array([[-7.0, 7.0, -8.0, 0.5, 3.5, -3.5]], F32), None),
        ((rng.uniform(-1, 1, (2, 40)) * 1e-30).astype(F32), None),
        ((rng.uniform(-1, 1, (2, 40)) * 2e37).astype(F32), None),
        (rng.standard_t(2, (6, 80)).astype(F32), 32),
        (rng.standard_normal((6, 80)).astype(F32), 64),
        (rng.uniform(-1, 1, (6, 100)).astype(F32), None),
    ]
    groups = beaten = 0
    for w, group in cases:
        n, k = w.shape
        packed, scales = dq.quantize_weights_int4(w, group)
        values = dq.unpack_int4(packed, k)
        g = k if group is None else group
        for r in range(n):
            for gi in range(scales.shape[1]):
                cols = slice(gi * g, min((gi + 1) * g, k))
                wg, q, s = w[r, cols], values[r, cols], scales[r, gi]
                what = f"{w.shape} group {group}, row {r}, group {gi}"
                assert s == _refit(wg, q), what
                chosen = _sq_err(wg, q, s)
                # slack for rounding each refitted scale to f32: sum(q^2) (s 2^-24)^2
                ww = float(wg.astype(np.float64) @ wg.astype(np.float64))

                def bound(e: float, ww: float = ww) -> float:
                    return e * (1 + 1e-9) + ww * 1e-12

                amax = np.abs(wg).max()
                for ratio in CLIP_RATIOS:
                    s0 = F32(F32(amax * F32(ratio)) / F32(7.0))
                    cq = _int4_values(wg, s0)
                    e = _sq_err(wg, cq, _refit(wg, cq))
                    assert chosen <= bound(e), (what, ratio, chosen, e)
                rtn_scale = F32(amax / F32(7.0))
                rtn = _sq_err(wg, ref.quantize_with_scale(wg, rtn_scale, 7.0), rtn_scale)
                assert chosen <= bound(rtn), (what, chosen, rtn)
                groups += 1
                beaten += chosen < 0.999 * rtn
    # The groups discriminate: the search usually beats plain rounding.
    assert 2 * beaten > groups, (beaten, groups)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200), st.integers(0, 5), st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(cols: int, rows: int, seed: int) -> None:
    v = np.random.default_rng(seed).integers(-8, 8, size=(rows, cols)).astype(np.int8)
    packed = dq.pack_int4(v)
    assert packed.dtype == np.uint8 and packed.shape == (rows, (cols + 1) // 2)
    np.testing.assert_array_equal(dq.unpack_int4(packed, cols), v)


W = np.random.default_rng(7).standard_normal((24, 80)).astype(F32)
B = np.random.default_rng(8).standard_normal(24).astype(F32)
X = np.random.default_rng(9).standard_normal((2, 3, 80)).astype(F32)


@pytest.mark.parametrize("per_token", [True, False])
@pytest.mark.parametrize("bias", [None, B])
def test_quantized_linear_int8_is_w8a8_on_its_weights(per_token: bool, bias: Any) -> None:
    layer = dq.QuantizedLinear.from_float(W, bias, per_token=per_token)
    wq, ws = ref.quantize_weights_rows(W)
    want = ref_w8a8(X.reshape(6, 80), wq, ws, per_token, bias).reshape(2, 3, 24)
    assert_same_f32(layer(X), want, "QuantizedLinear bits=8")
    # Close to the float layer it replaces.
    exact = X @ W.T + (0 if bias is None else bias)
    assert np.abs(layer(X) - exact).max() < 0.05 * np.abs(exact).max()


@pytest.mark.parametrize("group", [None, 32, 64])
def test_quantized_linear_int4_is_w4a8_on_its_weights(group: int | None) -> None:
    layer = dq.QuantizedLinear.from_float(W, B, bits=4, group_size=group)
    values = dq.unpack_int4(layer.weight, 80)
    want = ref_w4a8(X.reshape(6, 80), values, layer.weight_scales, group or 80, True, B)
    assert_same_f32(layer(X), want.reshape(2, 3, 24), f"QuantizedLinear bits=4 g{group}")
    exact = X @ W.T + B
    assert np.abs(layer(X) - exact).max() < 0.25 * np.abs(exact).max()


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("per_token", [True, False])
def test_quantized_linear_uses_its_act_mode_and_per_token(bits: int, per_token: bool) -> None:
    # A Percentile(0.9) act_mode and per_token=False change every token's
    # scale (X's tokens have different maxima): a layer that forgot either
    # would give MaxAbs / per-token results.
    group = 32 if bits == 4 else None
    layer = dq.QuantizedLinear.from_float(
        W, B, bits=bits, group_size=group, act_mode=dq.Percentile(0.9), per_token=per_token
    )
    x2 = X.reshape(6, 80)
    if bits == 8:
        want = ref_w8a8(x2, layer.weight, layer.weight_scales, per_token, B, percentile=0.9)
    else:
        values = dq.unpack_int4(layer.weight, 80)
        want = ref_w4a8(x2, values, layer.weight_scales, 32, per_token, B, percentile=0.9)
    assert_same_f32(layer(X), want.reshape(2, 3, 24), f"bits={bits} per_token={per_token}")


@pytest.mark.parametrize("per_token", [True, False])
def test_products_follow_the_reference_nan_policy(per_token: bool) -> None:
    # With nan_policy="reference" a NaN quantizes to 0 (MaxAbs skips it) and
    # an infinity makes its token's scale (per tensor: every token's) infinite,
    # as the definitions compute them; the default refuses the same input.
    x = X.reshape(6, 80).copy()
    x[1, 5], x[3, 0], x[4, 70] = np.nan, np.inf, -np.inf
    wq, ws = ref.quantize_weights_rows(W)
    packed, scales = dq.quantize_weights_int4(W, 32)
    values = dq.unpack_int4(packed, 80)
    layer = dq.QuantizedLinear.from_float(W, B, bits=4, group_size=32, per_token=per_token)
    with np.errstate(all="ignore"):
        want8 = ref_w8a8(x, wq, ws, per_token, B)
        want4 = ref_w4a8(x, values, scales, 32, per_token, B)
        want_layer = ref_w4a8(x, values, layer.weight_scales, 32, per_token, B)
    got8 = dq.w8a8_matmul(x, wq, ws, per_token=per_token, bias=B, nan_policy="reference")
    got4 = dq.w4a8_matmul(
        x, packed, scales, group_size=32, per_token=per_token, bias=B, nan_policy="reference"
    )
    assert_same_f32(got8, want8, "w8a8_matmul")
    assert_same_f32(got4, want4, "w4a8_matmul")
    assert_same_f32(layer(x, nan_policy="reference"), want_layer, "QuantizedLinear")
    assert np.isfinite(got8[[0, 2, 5] if per_token else []]).all()
    for call in (
        lambda: dq.w8a8_matmul(x, wq, ws, per_token=per_token),
        lambda: dq.w4a8_matmul(x, packed, scales, group_size=32, per_token=per_token),
        lambda: layer(x),
    ):
        with pytest.raises(dq.NonFiniteError) as e:
            call()
        assert e.value.index == 85  # x[1, 5]


@pytest.mark.parametrize(("bits", "group"), [(8, None), (4, None), (4, 32), (4, 64), (4, 2**34)])
def test_dequantized_weight_is_each_value_times_its_scale(bits: int, group: int | None) -> None:
    # in_features 80: groups of 32 and 64 leave a partial last group; a
    # group of 2^34 is one group per row (and must not allocate 2^34 floats
    # per row on the way).
    layer = dq.QuantizedLinear.from_float(W, bits=bits, group_size=group)
    if bits == 8:
        values, scales = layer.weight, np.repeat(layer.weight_scales[:, None], 80, axis=1)
    else:
        values = dq.unpack_int4(layer.weight, 80)
        scales = layer.weight_scales[:, np.arange(80) // min(group or 80, 80)]
    want = (values.astype(F32) * scales).astype(F32)
    assert_same_f32(layer.dequantized_weight(), want, f"bits={bits} group={group}")
    # and it is the weight the layer multiplies by: x @ W_deq^T within rounding
    y = layer(X[0, :1])
    exact = X[0, :1].astype(np.float64) @ want.T.astype(np.float64)
    assert np.abs(y - exact).max() < 0.02 * np.abs(exact).max()


def test_quantized_linear_with_smoothquant_divides_x_and_folds_w() -> None:
    calib = np.random.default_rng(10).standard_normal((50, 80)).astype(F32)
    calib[:, 5] *= 40  # an outlier channel
    layer = dq.QuantizedLinear.from_float(W, B, smooth=(dq.SmoothQuantConfig(0.5), calib))
    f = layer.smooth_factors
    assert f is not None and layer.smooth_alpha == 0.5
    # NumPy's float32 power may differ from libm's powf in the last bit.
    np.testing.assert_allclose(f, ref.smooth_factors(calib, W, 0.5, 1e-5), rtol=1e-6)
    wq, ws = ref.quantize_weights_rows(ref.smooth_weights(W, f))
    x2 = ref.smooth_activations(X.reshape(6, 80), f)
    assert_same_f32(layer(X), ref_w8a8(x2, wq, ws, True, B).reshape(2, 3, 24), "smoothed")


@pytest.mark.parametrize("bits", [8, 4])
def test_x_finite_but_not_after_smoothing_is_named_so(bits: int) -> None:
    # x is finite, but x / factor overflows float32 where a factor is < 1:
    # the error used to say "non-finite value inf ... of x".
    calib = np.random.default_rng(10).standard_normal((50, 80)).astype(F32)
    layer = dq.QuantizedLinear.from_float(W, bits=bits, smooth=(dq.SmoothQuantConfig(0.5), calib))
    f = layer.smooth_factors
    assert f is not None
    j = int(np.argmin(f))
    assert f[j] < 1
    x = X.reshape(6, 80).copy()
    x[2, j] = np.finfo(F32).max
    with pytest.raises(dq.NonFiniteError) as info:
        layer(x)
    e = info.value
    assert (e.index, e.value, e.argument) == (2 * 80 + j, np.inf, "x after smoothing")
    msg = str(e)
    assert f"of x after smoothing (x there is {x[2, j]!s}" in msg, msg
    assert f"smoothing factor {f[j]!s} of channel {j}" in msg, msg
    assert "x must be finite" not in msg, msg
    # x's own non-finite values are still x's.
    x[2, j] = np.inf
    with pytest.raises(dq.NonFiniteError, match="of x: x must be finite") as info:
        layer(x)
    assert (info.value.index, info.value.argument) == (2 * 80 + j, "x")


def test_a_4bit_layer_pickled_with_the_old_int4_layout_is_refused() -> None:
    """Layers pickled before the lane layout hold bytes in Q4_0 order, which
    this build would read as other columns: refused, not silently wrong."""
    layer = dq.QuantizedLinear.from_float(W, bits=4, group_size=32)
    state = layer.__getstate__()
    for old in (
        {k: v for k, v in state.items() if k != "int4_layout"},
        {**state, "int4_layout": 1},
    ):
        back = object.__new__(dq.QuantizedLinear)
        with pytest.raises(dq.InvalidArgumentError, match="another int4 layout"):
            back.__setstate__(old)
    # 8-bit layers have no int4 bytes: no layout to check.
    eight = dq.QuantizedLinear.from_float(W).__getstate__()
    del eight["int4_layout"]
    back = object.__new__(dq.QuantizedLinear)
    back.__setstate__(eight)
    assert_same_f32(back(X), dq.QuantizedLinear.from_float(W)(X), "8-bit state")


W_WIDE = np.random.default_rng(10).standard_normal((130, 76)).astype(F32)  # 3 panels, 2 partial


@pytest.mark.parametrize("path", PATHS)
def test_quantized_linear_packs_where_the_kernel_multiplies_packed_weights(path: str) -> None:
    """Auto layout follows kernel_info().packed_gemm; every layout gives
    the definition's bits on every path, and the layout survives neither
    way through a pickle except when it was forced."""
    dq.set_kernel(path)
    assert dq.kernel_info().packed_gemm == (path == "avx512vnni")
    wq, ws = ref.quantize_weights_rows(W_WIDE)
    x = np.random.default_rng(11).standard_normal((9, 76)).astype(F32)
    x[2, :4] = [127.0, 0.5, -2.5, 1.5]  # token 2's scale is 1: .5 ties in the int8 step
    for per_token in (True, False):
        want = ref_w8a8(x, wq, ws, per_token, B[:1].repeat(130))
        for pack in (None, True, False):
            layer = dq.QuantizedLinear.from_float(
                W_WIDE, B[:1].repeat(130), pack=pack, per_token=per_token
            )
            assert layer.packed == (dq.kernel_info().packed_gemm if pack is None else pack)
            assert f"packed={layer.packed}" in repr(layer)
            assert_same_f32(layer(x), want, f"pack={pack} per_token={per_token}")
            np.testing.assert_array_equal(layer.weight, wq)
            assert not layer.weight.flags.writeable
            back = pickle.loads(pickle.dumps(layer))
            assert back.packed == layer.packed
            assert_same_f32(back(x), want, f"pickled, pack={pack}")
    # Bytes as held: 3 panels of 64 rows x 76 columns and 130 row sums.
    packed = dq.QuantizedLinear.from_float(W_WIDE, pack=True)
    assert packed.memory_bytes() == 3 * 64 * 76 + 4 * 130 + 4 * 130
    assert dq.QuantizedLinear.from_float(W_WIDE, pack=False).memory_bytes() == 130 * 76 + 4 * 130


W4_WIDE = np.random.default_rng(12).standard_normal((37, 128)).astype(F32)  # 3 panels of 16


@pytest.mark.parametrize("path", PATHS)
def test_int4_layers_hold_panels_where_the_kernel_has_them(path: str) -> None:
    """4-bit layers whose shape allows it hold their int4 rows regrouped
    into 16-row panels (auto where kernel_info().packed_gemm); every layout
    gives the definition's bits on every path (the panel kernel's scalar
    twin where it is forced without AVX-512), ``weight`` and
    ``weight_scales`` read back row-major and read-only, and pickles hold
    the row-major form."""
    dq.set_kernel(path)
    x = np.random.default_rng(13).standard_normal((7, 128)).astype(F32)
    x[0] = np.where(np.arange(128) % 2, 1.0, -1.0)  # a +-127 token
    bias = np.linspace(-1, 1, 37, dtype=F32)
    for group in (None, 32, 64, 128):
        packed, scales = dq.quantize_weights_int4(W4_WIDE, group)
        values = dq.unpack_int4(packed, 128)
        for per_token in (True, False):
            want = ref_w4a8(x, values, scales, group or 128, per_token, bias)
            for pack in (None, True, False):
                layer = dq.QuantizedLinear.from_float(
                    W4_WIDE, bias, bits=4, group_size=group, per_token=per_token, pack=pack
                )
                assert layer.packed == (dq.kernel_info().packed_gemm if pack is None else pack)
                assert f"packed={layer.packed}" in repr(layer)
                assert_same_f32(layer(x), want, f"{path} group={group} pack={pack}")
                one = ref_w4a8(x[:1], values, scales, group or 128, per_token, bias)
                assert_same_f32(layer(x[:1]), one, f"{path} one token, pack={pack}")
                np.testing.assert_array_equal(layer.weight, packed)
                assert_same_f32(layer.weight_scales, scales, "weight_scales")
                assert not layer.weight.flags.writeable
                assert not layer.weight_scales.flags.writeable
                back = pickle.loads(pickle.dumps(layer))
                assert back.packed == layer.packed
                assert_same_f32(back(x), want, f"pickled, pack={pack}")
                assert_same_f32(layer.dequantized_weight(), back.dequantized_weight(), "deq")
    # Bytes as held: 3 panels of 16 rows x (16 words + 4 scales) for g32.
    held = dq.QuantizedLinear.from_float(W4_WIDE, bits=4, group_size=32, pack=True)
    assert held.memory_bytes() == 3 * 16 * (16 + 4) * 4
    row_major = dq.QuantizedLinear.from_float(W4_WIDE, bits=4, group_size=32, pack=False)
    assert row_major.memory_bytes() == 37 * 64 + 37 * 4 * 4
    # Reassigned scales: same shape only; the layout is chosen again.
    with pytest.raises(dq.ShapeMismatchError, match=r"keep their shape \(37, 4\)"):
        held.weight_scales = np.ones(37, F32)
    rescaled = copy.copy(held)
    rescaled.weight_scales = held.weight_scales * F32(2)
    assert rescaled.packed and rescaled._weight is not held._weight
    assert_same_f32(rescaled.weight_scales, held.weight_scales * F32(2), "reassigned")
    twin = copy.copy(held)
    assert twin._weight is held._weight and twin.packed
    assert_same_f32(twin(x), held(x), "copy")
    # Unpickled on a machine without the kernel: auto loads row-major, a
    # forced layout stays.
    auto = dq.QuantizedLinear.from_float(W4_WIDE, bits=4)
    dq.set_kernel("scalar")
    assert not pickle.loads(pickle.dumps(auto)).packed
    assert pickle.loads(pickle.dumps(held)).packed


def test_a_shallow_copy_shares_the_held_weights() -> None:
    for pack in (True, False):
        layer = dq.QuantizedLinear.from_float(W, B, pack=pack)
        twin = copy.copy(layer)
        assert twin._weight is layer._weight and twin.packed == pack
        assert_same_f32(twin(X), layer(X), f"copy, pack={pack}")
        assert repr(twin) == repr(layer)


def test_an_auto_layout_is_chosen_again_by_the_machine_that_unpickles() -> None:
    auto = dq.QuantizedLinear.from_float(W)
    forced = dq.QuantizedLinear.from_float(W, pack=True)
    dq.set_kernel("scalar")  # a machine without the packed kernel
    assert not pickle.loads(pickle.dumps(auto)).packed
    assert pickle.loads(pickle.dumps(forced)).packed
    # Pickles from before the layouts (no "pack" in the state) are auto.
    state = forced.__getstate__()
    del state["pack"]
    back = object.__new__(dq.QuantizedLinear)
    back.__setstate__(state)
    assert not back.packed
    assert_same_f32(back(X), forced(X), "old state")


def test_pack_is_a_bool_for_8_bit_layers_and_empty_weights_stay_row_major() -> None:
    with pytest.raises(dq.ArgumentTypeError, match="pack must be a bool"):
        dq.QuantizedLinear.from_float(W, pack="yes")  # type: ignore[arg-type]
    # 4 bits: panels need in_features a multiple of 64 (W has 80 columns)
    # and a group a multiple of 8 dividing it.
    with pytest.raises(dq.InvalidArgumentError, match="in_features a positive multiple of 64"):
        dq.QuantizedLinear.from_float(W, bits=4, pack=True)
    with pytest.raises(dq.InvalidArgumentError, match="got in_features 128, group_size 48"):
        dq.QuantizedLinear.from_float(W4_WIDE, bits=4, group_size=48, pack=True)
    assert not dq.QuantizedLinear.from_float(W, bits=4).packed  # auto: no panels here
    assert not dq.QuantizedLinear.from_float(W, bits=4, pack=False).packed
    assert not dq.QuantizedLinear.from_float(np.zeros((3, 0), F32)).packed
    assert not dq.QuantizedLinear.from_float(np.zeros((0, 5), F32)).packed
    for pack in (True, False):  # no features: refused alike in either layout
        empty = dq.QuantizedLinear.from_float(np.zeros((3, 0), F32), pack=pack)
        with pytest.raises(dq.EmptyInputError):
            empty(np.zeros((2, 0), F32))
        no_rows = dq.QuantizedLinear.from_float(np.zeros((0, 5), F32), pack=pack)
        assert no_rows(np.ones((2, 5), F32)).shape == (2, 0)


def test_quantized_linear_pickles_reprs_and_counts_its_bytes() -> None:
    for layer in (
        dq.QuantizedLinear.from_float(W, B),
        dq.QuantizedLinear.from_float(W, bits=4, group_size=32),
    ):
        back = pickle.loads(pickle.dumps(layer))
        assert_same_f32(back(X), layer(X), "after pickling")
        assert repr(back) == repr(layer)
        assert f"bits={layer.bits}" in repr(layer) and "in_features=80" in repr(layer)
        held = dq.pack_weights_int8(layer.weight) if layer.packed else layer.weight
        parts = [held, layer.weight_scales, layer.bias, layer.smooth_factors]
        assert layer.memory_bytes() == sum(p.nbytes for p in parts if p is not None)
        for one in (layer, back):
            with pytest.raises(ValueError, match="read-only"):
                one.weight[0, 0] = 1
            with pytest.raises(ValueError, match="read-only"):
                one.weight_scales[0] = 1
    assert dq.QuantizedLinear.from_float(W, bits=4).memory_bytes() < W.nbytes / 7


@pytest.mark.parametrize(
    "make",
    [
        lambda w: dq.quantize_weights_int8(w),
        lambda w: dq.quantize_weights_int4(w, 32),
        lambda w: dq.QuantizedLinear.from_float(w),
    ],
)
def test_non_finite_weights_are_named_as_weights(make: Any) -> None:
    w = W.copy()
    w[3, 7] = np.inf
    with pytest.raises(dq.NonFiniteError, match="weight has a non-finite value inf") as e:
        make(w)
    assert e.value.index == 3 * 80 + 7


def test_x_one_feature_short_of_odd_packed_rows_is_refused() -> None:
    packed, scales = dq.quantize_weights_int4(W[:, :64], 32)
    with pytest.raises(dq.InvalidArgumentError, match="packed for 64 columns"):
        dq.w4a8_matmul(X[..., :63], packed, scales, group_size=32)
    with pytest.raises(
        dq.ShapeMismatchError, match=r"x has 79 features .* x must be \[\.\.\., 80\]"
    ):
        dq.w8a8_matmul(X[..., :79], *dq.quantize_weights_int8(W))


@pytest.mark.parametrize(
    "cfg",
    # alpha 0.5 alone cannot tell alpha from 1 - alpha; a large epsilon shows
    # whether it reaches the formula.
    [dq.SmoothQuantConfig(0.5), dq.SmoothQuantConfig(0.3, 1e-2), dq.SmoothQuantConfig(0.8, 0.5)],
    ids=repr,
)
def test_smoothquant_calibration_forms_agree(cfg: dq.SmoothQuantConfig) -> None:
    calib = np.random.default_rng(11).standard_normal((40, 80)).astype(F32)
    calib[:, 7] = 0.0  # a channel that never fired: max 0 is valid, not a bad maximum
    calib[:, 9] = -0.0
    from_tokens = dq.QuantizedLinear.from_float(W, smooth=(cfg, calib))
    observer = dq.ChannelMaxObserver().update(calib[:25]).update(calib[25:])
    from_observer = dq.QuantizedLinear.from_float(W, smooth=(cfg, observer))
    from_maxima = dq.QuantizedLinear.from_float(W, smooth=(cfg, np.abs(calib).max(axis=0)))
    for layer in (from_observer, from_maxima):
        assert_same_f32(layer.smooth_factors, from_tokens.smooth_factors, "factors")
        assert_same_f32(layer(X), from_tokens(X), "outputs")


@pytest.mark.parametrize("bad", [np.nan, -5.0, -np.inf])
def test_bad_per_channel_maxima_are_refused(bad: float) -> None:
    maxima = np.abs(np.random.default_rng(12).standard_normal(80)).astype(F32)
    maxima[3] = bad
    with pytest.raises(dq.InvalidArgumentError, match="channel 3"):
        dq.QuantizedLinear.from_float(W, smooth=(dq.SmoothQuantConfig(0.5), maxima))


def test_numpy_integers_work_where_ints_do() -> None:
    a = dq.QuantizedLinear.from_float(W, bits=np.int64(4), group_size=np.int32(32))
    b = dq.QuantizedLinear.from_float(W, bits=4, group_size=32)
    assert repr(a) == repr(b)
    assert_same_f32(a(X), b(X), "np.int64 bits / group_size")
    p, s = dq.quantize_weights_int4(W, np.int64(32))
    assert_same_f32(dq.w4a8_matmul(X, p, s, group_size=np.int64(32)), b(X), "w4a8 np.int64")
    np.testing.assert_array_equal(dq.unpack_int4(p, np.int64(80)), dq.unpack_int4(p, 80))
    with pytest.raises(dq.InvalidArgumentError, match="bits must be 8 or 4"):
        dq.QuantizedLinear.from_float(W, bits=8.0)


def test_smoothing_into_the_factors_own_buffer() -> None:
    a = np.random.default_rng(13).standard_normal((1, 80)).astype(F32)
    f = np.random.default_rng(14).uniform(0.5, 2.0, size=80).astype(F32)
    want = dq.smooth_activations(a, f)
    out = f.reshape(1, 80)  # the output is the factors' memory
    got = dq.smooth_activations(a, f, out=out)
    assert_same_f32(got, want, "out aliasing the factors")


def test_calling_the_class_points_to_from_float() -> None:
    w = np.ones((2, 4), np.float32)
    with pytest.raises(dq.ArgumentTypeError, match=r"QuantizedLinear.from_float\(weight"):
        dq.QuantizedLinear(w)
    with pytest.raises(TypeError, match="from_float"):
        dq.QuantizedLinear()
    layer = dq.QuantizedLinear.from_float(w)
    again = pickle.loads(pickle.dumps(layer))
    assert repr(again) == repr(layer)
    assert repr(copy.deepcopy(layer)) == repr(layer)
