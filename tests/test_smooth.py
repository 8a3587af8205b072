"""SmoothQuant: SmoothQuantConfig, compute_smooth_factors, smooth_activations
and smooth_weights (new array, ``out=``, in place)."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import math
import sys

import dynquant as dq
import numpy as np
import pytest
import reference_np as ref
from hypothesis import given
from hypothesis import strategies as st
from strategies import assert_same_f32, scaled_f32, ulp_distance

F32 = np.float32
# How far (in ulps) factors from NumPy's float32 power may be from those of
# glibc's powf (see test_factors_match_reference_within_one_ulp).
NP_POWER_ULPS = 3


def _libm_powf() -> object | None:
    """The platform's C ``powf`` — what Rust's ``f32::powf`` calls."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("m")
    if name is None:
        return None
    fn = ctypes.CDLL(name).powf
    fn.argtypes = [ctypes.c_float, ctypes.c_float]
    fn.restype = ctypes.c_float
    return fn


LIBM_POWF = _libm_powf()


def libm_pow(base: np.ndarray, exponent: np.float32) -> np.ndarray:
    assert LIBM_POWF is not None
    e = float(exponent)
    return np.array([LIBM_POWF(float(b), e) for b in base], F32)  # type: ignore[operator]


needs_libm = pytest.mark.skipif(LIBM_POWF is None, reason="no C libm powf found")

# [tokens, in] activations and [out, in] weights with the same `in`.
pairs = st.tuples(st.integers(0, 6), st.integers(0, 6), st.integers(1, 40)).flatmap(
    lambda s: st.tuples(scaled_f32((s[0], s[2])), scaled_f32((s[1], s[2])))
)
alphas = st.one_of(st.sampled_from([0.0, 0.5, 1.0, 0.25, 0.8]), st.floats(0.0, 1.0))
epsilons = st.sampled_from([1e-5, 0.0, 1e-12, 1e-3, 1.0])


def _finite_pairs(a: np.ndarray, w: np.ndarray) -> bool:
    return bool(np.isfinite(a).all() and np.isfinite(w).all())


# ─── config ─────────────────────────────────────────────────────────────────


def test_config_defaults_and_default_alpha() -> None:
    c = dq.SmoothQuantConfig()
    assert (c.alpha, c.epsilon) == (0.5, 1e-5)
    d = dq.SmoothQuantConfig.default_alpha()
    assert (d.alpha, d.epsilon) == (0.5, 1e-5)
    assert c == d and hash(c) == hash(d)
    assert dq.SmoothQuantConfig(0.8) == dq.SmoothQuantConfig(alpha=0.8, epsilon=1e-5)
    assert dq.SmoothQuantConfig(0.8) != dq.SmoothQuantConfig(0.7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.alpha = 0.3  # type: ignore[misc]
    assert "alpha=0.5" in repr(c)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 0.5, 1, 0, np.float32(0.3), np.float64(0.9)])
def test_config_accepts_alpha_in_range(alpha: float) -> None:
    assert dq.SmoothQuantConfig(alpha).alpha == float(alpha)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, -1e-30, 1.0000001, math.nan, math.inf, -math.inf])
def test_config_rejects_alpha_out_of_range(alpha: float) -> None:
    with pytest.raises(dq.InvalidAlphaError) as info:
        dq.SmoothQuantConfig(alpha)
    e = info.value
    assert isinstance(e, ValueError) and isinstance(e, dq.DynQuantError)
    assert e.alpha == alpha or (math.isnan(alpha) and math.isnan(e.alpha))
    assert "alpha" in str(e)


@pytest.mark.parametrize("epsilon", [-1e-5, math.nan, math.inf])
def test_config_rejects_bad_epsilon(epsilon: float) -> None:
    with pytest.raises(dq.InvalidEpsilonError) as info:
        dq.SmoothQuantConfig(0.5, epsilon)
    assert isinstance(info.value, ValueError)
    assert info.value.epsilon == epsilon or math.isnan(epsilon)


@pytest.mark.parametrize("alpha", ["0.5", None, True, [0.5]])
def test_config_rejects_non_numbers(alpha: object) -> None:
    with pytest.raises(dq.ArgumentTypeError):
        dq.SmoothQuantConfig(alpha)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        dq.SmoothQuantConfig(0.5, alpha)  # type: ignore[arg-type]


# ─── factors ──────────────────────────────────────────────────────────────


@given(aw=pairs, alpha=alphas, eps=epsilons)
def test_factors_match_reference_within_a_few_ulps(
    aw: tuple[np.ndarray, np.ndarray], alpha: float, eps: float
) -> None:
    a, w = aw
    if not _finite_pairs(a, w):
        return
    got = dq.compute_smooth_factors(a, w, dq.SmoothQuantConfig(alpha, eps))
    assert got.dtype == np.float32 and got.shape == (a.shape[1],)
    want = ref.smooth_factors(a, w, alpha, eps)
    # The SPEC requires Rust's f32::powf (the C library's powf). np.power on
    # float32 is not always the same function (at exponent 0.5 NumPy uses a
    # correctly rounded sqrt, glibc's powf is not correctly rounded; on
    # AVX-512 CPUs NumPy has its own SIMD power, one ulp from glibc's in ~21%
    # of values at exponents 0.25-0.85, checked on Zen 4), so the numerator
    # and the denominator may each be one ulp off; their ratio then lands up
    # to 3 ulps away. The exact comparison is the next test.
    both_inf = np.isinf(got) & np.isinf(want)
    dist = ulp_distance(got[~both_inf], want[~both_inf])
    assert dist.max(initial=0) <= NP_POWER_ULPS, (got, want)


@needs_libm
@given(aw=pairs, alpha=alphas, eps=epsilons)
def test_factors_are_bit_exact_with_libm_powf(
    aw: tuple[np.ndarray, np.ndarray], alpha: float, eps: float
) -> None:
    a, w = aw
    if not _finite_pairs(a, w):
        return
    got = dq.compute_smooth_factors(a, w, dq.SmoothQuantConfig(alpha, eps))
    assert_same_f32(got, ref.smooth_factors(a, w, alpha, eps, powf=libm_pow))


@needs_libm
def test_factors_use_powf_not_sqrt_at_alpha_half() -> None:
    # Activation maxima where glibc's powf(b, 0.5) != sqrtf(b): the model with
    # np.power (NumPy uses sqrt at 0.5) and the model with libm powf disagree
    # there, and dynquant must give powf's bits.
    eps = F32(1e-5)
    b = np.linspace(1e-3, 40, 40001, dtype=F32)
    b = b[libm_pow(b, F32(0.5)) != np.sqrt(b)]
    amax = (b - eps).astype(F32)
    amax = amax[(amax + eps).astype(F32) == b]  # so that a_j + eps is exactly b
    if amax.size == 0:
        pytest.skip("this libm's powf agrees with sqrtf everywhere sampled")
    a = np.stack([amax, -amax])
    w = np.zeros((1, amax.size), F32)  # w_j + eps = eps: the same for both models
    with_powf = ref.smooth_factors(a, w, 0.5, 1e-5, powf=libm_pow)
    with_np = ref.smooth_factors(a, w, 0.5, 1e-5)
    assert (with_powf != with_np).any()  # the inputs discriminate
    got = dq.compute_smooth_factors(a, w, dq.SmoothQuantConfig(0.5))
    assert_same_f32(got, with_powf)


def test_factors_hand_values() -> None:
    # One channel: a_max 4, w_max 1, eps 0 → floored to 1e-10 (negligible):
    # alpha 0.5 → sqrt(4) / sqrt(1) = 2; alpha 1 → 4; alpha 0 → 1 / 1 = 1.
    a = np.array([[1.0], [-4.0]], F32)
    w = np.array([[0.5], [-1.0]], F32)
    for alpha, want in [(0.5, 2.0), (1.0, 4.0), (0.0, 1.0)]:
        got = dq.compute_smooth_factors(a, w, dq.SmoothQuantConfig(alpha, 0.0))
        assert got[0] == pytest.approx(want, rel=1e-6)
    # All-zero channels: (0 + eps)^a / (0 + eps)^(1-a) = eps^(2a - 1); the floor is eps.
    z = np.zeros((2, 3), F32)
    f = dq.compute_smooth_factors(z, z, dq.SmoothQuantConfig(0.5, 1e-5))
    assert f.tolist() == pytest.approx([1.0] * 3)
    f = dq.compute_smooth_factors(z, z, dq.SmoothQuantConfig(0.0, 1e-5))
    assert f == pytest.approx(np.full(3, 1e5), rel=1e-5)  # eps^-1
    f = dq.compute_smooth_factors(z, z, dq.SmoothQuantConfig(1.0, 1e-5))
    assert f.tolist() == [np.float32(1e-5)] * 3  # eps^1, and the floor is eps


@pytest.mark.parametrize("epsilon", [1e-5, 1e-3, 0.0])
def test_factors_at_the_alpha_endpoints_are_exact(epsilon: float) -> None:
    # A model with no pow at all: x^1 = x and y^0 = 1 exactly, so alpha 1
    # gives max(a + eps, eps) and alpha 0 gives max(1 / (w + eps), eps), bit
    # for bit, with eps = max(epsilon, 1e-10). Channels: dead on both sides,
    # ordinary, tiny, huge, a dead activation next to a 1e6 weight (1 / w is
    # under eps: the floor), equal maxima. Both entry points: the tokens
    # and the observer's maxima.
    a_max = np.array([0.0, 3.0, 1e-30, 3e38, 16.0, 0.0, 7.5], F32)
    w_max = np.array([0.0, 0.5, 2.0, 1e-30, 1.0, 1e6, 7.5], F32)
    a = np.stack([-a_max, a_max * F32(0.5)])
    w = np.stack([w_max * F32(0.25), -w_max, np.zeros_like(w_max)])
    eps = np.maximum(F32(epsilon), F32(1e-10))
    want = {
        1.0: np.maximum((a_max + eps).astype(F32), eps),
        0.0: np.maximum((F32(1.0) / (w_max + eps)).astype(F32), eps),
    }
    observer = dq.ChannelMaxObserver().update(a)
    for alpha, expected in want.items():
        cfg = dq.SmoothQuantConfig(alpha, epsilon)
        assert_same_f32(dq.compute_smooth_factors(a, w, cfg), expected, f"alpha {alpha}")
        assert_same_f32(observer.smooth_factors(w, cfg), expected, f"observer, alpha {alpha}")
    # Between the endpoints alpha and 1 - alpha are not interchangeable:
    # a 16, w 1 gives 16^0.25 / 1^0.75 = 2 and 16^0.75 / 1^0.25 = 8;
    # a 1, w 16 gives 1 / 16^0.75 = 1/8 and 1 / 16^0.25 = 1/2.
    a2, w2 = np.array([[16.0, 1.0]], F32), np.array([[1.0, 16.0]], F32)
    for alpha, expected2 in [(0.25, [2.0, 0.125]), (0.75, [8.0, 0.5])]:
        got = dq.compute_smooth_factors(a2, w2, dq.SmoothQuantConfig(alpha, 0.0))
        assert got.tolist() == pytest.approx(expected2, rel=1e-6), alpha


def test_factors_default_config_is_alpha_half() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((5, 7)).astype(F32)
    w = rng.standard_normal((3, 7)).astype(F32)
    assert_same_f32(
        dq.compute_smooth_factors(a, w),
        dq.compute_smooth_factors(a, w, dq.SmoothQuantConfig(0.5, 1e-5)),
    )
    assert_same_f32(
        dq.compute_smooth_factors(a, w, dq.SmoothQuantConfig.default_alpha()),
        dq.compute_smooth_factors(a, w, dq.SmoothQuantConfig(0.5)),
    )


def test_factors_with_no_tokens_or_no_rows() -> None:
    # Empty token / weight-row axes count as max 0 (the reference loops zero times).
    for a_rows, w_rows in [(0, 3), (2, 0), (0, 0)]:
        a = np.ones((a_rows, 4), F32)
        w = np.ones((w_rows, 4), F32)
        got = dq.compute_smooth_factors(a, w)
        assert got.shape == (4,)
        assert ulp_distance(got, ref.smooth_factors(a, w, 0.5, 1e-5)).max() <= NP_POWER_ULPS
    assert dq.compute_smooth_factors(np.ones((2, 0), F32), np.ones((3, 0), F32)).shape == (0,)


def test_factors_large_input_parallel_path(rng: np.random.Generator, two_threads: None) -> None:
    a = (rng.standard_normal((700, 384)) * rng.uniform(0.1, 30, 384)).astype(F32)
    w = rng.standard_normal((400, 384)).astype(F32)
    got = dq.compute_smooth_factors(a, w, dq.SmoothQuantConfig(0.6))
    if LIBM_POWF is not None:
        assert_same_f32(got, ref.smooth_factors(a, w, 0.6, 1e-5, powf=libm_pow))
    assert ulp_distance(got, ref.smooth_factors(a, w, 0.6, 1e-5)).max() <= NP_POWER_ULPS


def test_factor_errors() -> None:
    a = np.ones((2, 3), F32)
    with pytest.raises(dq.FeatureDimMismatchError) as info:
        dq.compute_smooth_factors(a, np.ones((4, 5), F32))
    assert (info.value.in_features, info.value.sf_len) == (3, 5)
    assert "3" in str(info.value) and "5" in str(info.value)
    with pytest.raises(dq.ShapeMismatchError):
        dq.compute_smooth_factors(np.ones(3, F32), np.ones((4, 3), F32))
    with pytest.raises(dq.ShapeMismatchError):
        dq.compute_smooth_factors(a, np.ones(3, F32))
    with pytest.raises(dq.ArgumentTypeError):
        dq.compute_smooth_factors(a, a, 0.5)  # type: ignore[arg-type]
    with pytest.raises(dq.NonFiniteError) as nf:
        dq.compute_smooth_factors(np.array([[1, 2, 3], [4, np.inf, 6]], F32), a)
    assert nf.value.index == 4
    with pytest.raises(dq.InvalidArgumentError):
        dq.compute_smooth_factors(a, a, nan_policy="ignore")


def test_factors_reference_nan_policy() -> None:
    # The reference's `v > slot` skips NaN; an infinity makes the factor inf.
    a = np.array([[np.nan, 2.0, np.inf], [1.0, np.nan, 1.0]], F32)
    w = np.ones((2, 3), F32)
    got = dq.compute_smooth_factors(a, w, nan_policy="reference")
    clean = dq.compute_smooth_factors(np.array([[1.0, 2.0, 0.0]], F32), w)
    assert_same_f32(got[:2], clean[:2])
    assert got[2] == np.inf
    # NaN in the weights is skipped the same way under "reference" (the
    # default policy refuses it: test_non_finite_weights_raise_unless_reference).
    wn = np.array([[np.nan, 1, 1], [1, 1, 1]], F32)
    one = np.ones((1, 3), F32)
    assert_same_f32(
        dq.compute_smooth_factors(one, wn, nan_policy="reference"),
        dq.compute_smooth_factors(one, one),
    )


# ─── applying factors ─────────────────────────────────────────────────────


@given(
    a=st.tuples(st.integers(0, 6), st.integers(1, 40)).flatmap(scaled_f32),
    data=st.data(),
)
def test_smooth_apply_matches_reference_exactly(a: np.ndarray, data: st.DataObject) -> None:
    f = data.draw(scaled_f32((a.shape[1],)))
    f = np.where(f == 0, F32(1), np.abs(f)).astype(F32)
    with np.errstate(all="ignore"):
        want_a = ref.smooth_activations(a, f)
        want_w = ref.smooth_weights(a, f)
    assert_same_f32(dq.smooth_activations(a, f), want_a)
    assert_same_f32(dq.smooth_weights(a, f), want_w)
    # out= and in place give the same bits
    out = np.empty_like(a)
    assert dq.smooth_activations(a, f, out=out) is out
    assert_same_f32(out, want_a)
    b = a.copy()
    assert dq.smooth_weights(b, f, out=b) is b
    assert_same_f32(b, want_w)


def test_smooth_hand_values_and_no_mutation() -> None:
    a = np.array([[2.0, -3.0, 8.0], [1.0, 0.0, -4.0]], F32)
    w = np.array([[1.0, 1.0, 1.0]], F32)
    f = np.array([2.0, 0.5, 4.0], F32)
    a0, w0, f0 = a.copy(), w.copy(), f.copy()
    assert dq.smooth_activations(a, f).tolist() == [[1.0, -6.0, 2.0], [0.5, 0.0, -1.0]]
    assert dq.smooth_weights(w, f).tolist() == [[2.0, 0.5, 4.0]]
    assert_same_f32(a, a0)
    assert_same_f32(w, w0)
    assert_same_f32(f, f0)
    # 1-D: a single token / weight row
    assert dq.smooth_activations(a[0], f).tolist() == [1.0, -6.0, 2.0]
    assert dq.smooth_weights([1.0, 1.0, 1.0], f).tolist() == [2.0, 0.5, 4.0]


def test_smooth_in_place_and_out() -> None:
    a = np.array([[2.0, -3.0], [1.0, 4.0]], F32)
    f = np.array([2.0, 0.5], F32)
    assert dq.smooth_activations(a, f, out=a) is a
    assert a.tolist() == [[1.0, -6.0], [0.5, 8.0]]
    dq.smooth_weights(a, f, out=a)  # undo
    assert a.tolist() == [[2.0, -3.0], [1.0, 4.0]]
    out = np.full((2, 2), np.nan, F32)
    src = a.copy()
    assert dq.smooth_weights(src, f, out=out) is out
    assert out.tolist() == [[4.0, -1.5], [2.0, 2.0]]
    assert_same_f32(src, a)
    # out as a view of a bigger C-contiguous array
    big = np.zeros((4, 2), F32)
    dq.smooth_weights(src, f, out=big[1:3])
    assert big.tolist() == [[0, 0], [4.0, -1.5], [2.0, 2.0], [0, 0]]
    # in place on a view of a bigger array only touches the view
    big2 = np.ones((3, 2), F32)
    view = big2[1:2]
    dq.smooth_activations(view, f, out=view)
    assert big2.tolist() == [[1, 1], [0.5, 2.0], [1, 1]]


def test_smooth_large_in_place_parallel(rng: np.random.Generator, two_threads: None) -> None:
    a = rng.standard_normal((1000, 384)).astype(F32)
    f = rng.uniform(0.1, 10, 384).astype(F32)
    want = ref.smooth_activations(a, f)
    assert_same_f32(dq.smooth_activations(a, f), want)
    dq.smooth_activations(a, f, out=a)
    assert_same_f32(a, want)


def test_smooth_errors() -> None:
    a = np.ones((2, 3), F32)
    for fn in (dq.smooth_activations, dq.smooth_weights):
        with pytest.raises(dq.FeatureDimMismatchError) as info:
            fn(a, np.ones(4, F32))
        assert (info.value.in_features, info.value.sf_len) == (3, 4)
        with pytest.raises(dq.ShapeMismatchError) as s:
            fn(a, np.ones(3, F32), out=np.empty((3, 2), F32))
        assert s.value.expected == (2, 3) and s.value.actual == (3, 2)
        with pytest.raises(dq.DTypeError, match=r"got float64$"):
            fn(a, np.ones(3, F32), out=np.empty((2, 3), np.float64))
        # The layout, not the (right) dtype, is what the message names.
        with pytest.raises(dq.DTypeError, match="got a Fortran-ordered float32 array"):
            fn(a, np.ones(3, F32), out=np.empty((3, 2), F32).T)
        with pytest.raises(dq.DTypeError, match="got a non-contiguous float32 array"):
            fn(a, np.ones(3, F32), out=np.empty((2, 6), F32)[:, ::2])
        with pytest.raises(dq.DTypeError, match="got a Fortran-ordered float32 array"):
            f_order = np.asfortranarray(a)
            fn(f_order, np.ones(3, F32), out=f_order)  # in place
        with pytest.raises(dq.ShapeMismatchError):
            fn(np.ones((2, 2, 3), F32), np.ones(3, F32))
        with pytest.raises(dq.ShapeMismatchError):
            fn(a, np.ones((1, 3), F32))
        ro = a.copy()
        ro.flags.writeable = False
        with pytest.raises(dq.DynQuantError):
            fn(ro, np.ones(3, F32), out=ro)
        ro_out = np.empty((2, 3), F32)
        ro_out.flags.writeable = False
        with pytest.raises(dq.DynQuantError):
            fn(a, np.ones(3, F32), out=ro_out)
        # in place needs a float32 C-contiguous array
        a64 = np.ones((2, 3))
        with pytest.raises(dq.DTypeError):
            fn(a64, np.ones(3, F32), out=a64)  # type: ignore[arg-type]
        with pytest.raises(dq.DTypeError):
            fn(np.ones((2, 3), bool), np.ones(3, F32))


def test_feature_dim_checked_before_shape() -> None:
    # SPEC: smoothing checks FeatureDimMismatch before ShapeMismatch.
    with pytest.raises(dq.FeatureDimMismatchError):
        dq.smooth_activations(np.ones((2, 3), F32), np.ones(4, F32), out=np.empty((9, 9), F32))


def test_smooth_activations_rejects_non_finite_by_default() -> None:
    with pytest.raises(dq.NonFiniteError):
        dq.smooth_activations(np.array([[1.0, np.nan]], F32), np.ones(2, F32))


@pytest.mark.parametrize("fn", [dq.smooth_activations, dq.smooth_weights])
def test_out_aliasing_the_input_through_another_view(fn: object) -> None:
    f = np.array([2.0, 4.0, 0.5], F32)
    a = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], F32)
    want = fn(a, f)  # type: ignore[operator]
    try:
        fn(a, f, out=a[:])  # type: ignore[operator]
    except dq.DynQuantError:
        return  # a clear dynquant error is acceptable too
    assert_same_f32(a, want)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_raise_unless_reference(bad: float) -> None:
    """NaN/Inf in the weights would give NaN, 1e-5 or huge factors: the
    default policy refuses them naming ``weights``; "reference" passes them
    through as the reference does."""
    a = np.ones((4, 3), np.float32)
    w = np.array([[2.0, bad, 3.0]], np.float32)
    with pytest.raises(dq.NonFiniteError, match="index 1 of weights") as info:
        dq.compute_smooth_factors(a, w)
    assert info.value.argument == "weights"
    got = dq.compute_smooth_factors(a, w, nan_policy="reference")
    if LIBM_POWF is not None:  # the reference's f32 powf, bit for bit
        assert_same_f32(got, ref.smooth_factors(a, w, 0.5, 1e-5, powf=libm_pow))
    else:
        assert got.shape == (3,) and np.isfinite(got[[0, 2]]).all()
