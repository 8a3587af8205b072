"""``QuantizedLinear``: a Linear layer with int8 or packed int4 weights and
dynamically quantized activations."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from . import _core
from ._arrays import (
    NAN_UNDER_PERCENTILE,
    as_float32,
    check_bool,
    check_finite,
    check_nan_policy,
    non_finite_error,
    renamed_non_finite,
    require_finite,
)
from .errors import (
    ArgumentTypeError,
    FeatureDimMismatchError,
    InvalidArgumentError,
    NonFiniteError,
    ShapeMismatchError,
)
from .matmul import _w4a8_matmul_held, w4a8_matmul, w8a8_matmul
from .modes import MaxAbs, Percentile, ScaleMode
from .observer import ChannelMaxObserver
from .smooth import SmoothQuantConfig, compute_smooth_factors, smooth_activations, smooth_weights
from .weights import (
    INT4_LAYOUT,
    pack_weights_int8,
    quantize_weights_int4,
    quantize_weights_int8,
    unpack_int4,
)

__all__ = ["QuantizedLinear"]


def _smooth_factors(smooth: Any, weight: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Factors from ``(SmoothQuantConfig, calibration)``, where calibration is
    activations ``[tokens, in]`` or per-channel ``max|A_j|`` ``[in]``."""
    if not (isinstance(smooth, tuple) and len(smooth) == 2):
        raise ArgumentTypeError(
            "smooth must be (SmoothQuantConfig, activations [tokens, in] or per-channel "
            f"max |A| [in]), got {type(smooth).__name__}"
        )
    config, calibration = smooth
    if not isinstance(config, SmoothQuantConfig):
        raise ArgumentTypeError(f"smooth[0] must be a SmoothQuantConfig, got {config!r}")
    if isinstance(calibration, ChannelMaxObserver):  # streamed per-channel maxima
        calibration = calibration.act_max
    a = as_float32(calibration, "smooth calibration")
    if a.ndim == 2:
        return compute_smooth_factors(a, weight, config)
    if a.ndim == 1:
        # One bad maximum would put that channel's factor at the floor and
        # scale it by 1/epsilon at run time: every output would be noise.
        bad = np.flatnonzero(~(a >= 0))  # NaN fails the comparison too
        if bad.size:
            i = int(bad[0])
            raise InvalidArgumentError(
                f"per-channel max |A| must be finite and >= 0; channel {i} is {a[i]}"
            )
        if a.shape[0] != weight.shape[1]:
            raise FeatureDimMismatchError(
                f"{a.shape[0]} channel maxima for {weight.shape[1]} input features",
                in_features=weight.shape[1],
                sf_len=a.shape[0],
                argument="smooth calibration",
            )
        factors: npt.NDArray[np.float32] = _core.smooth_factors_from_act_max(
            a, weight, config.alpha, config.epsilon
        )
        return factors
    raise ArgumentTypeError(f"smooth calibration must be 1-D or 2-D, got shape {a.shape}")


class QuantizedLinear:
    """``y = x @ W.T + b`` with quantized ``W`` and activations quantized at run time.

    Build with :meth:`from_float`. ``bits=8``: int8 weights, one scale per
    output row. ``bits=4``: int4 weights packed two per byte, one scale per
    row or per ``group_size`` input columns. Activations are quantized per
    token (default) or per tensor, with ``act_mode`` choosing each scale.
    With ``smooth``, SmoothQuant factors are folded into the weights and the
    activations are divided by them at run time.

    Weights are held packed for the AVX-512 VNNI kernels where the active
    kernel path has them (``kernel_info().packed_gemm``), row-major
    elsewhere; ``pack=`` forces either. 8-bit: ``pack_weights_int8``'s
    64-row panels. 4-bit: the int4 rows (and their scales) regrouped into
    16-row panels, where ``in_features`` is a multiple of 64 and the group
    a multiple of 8 dividing it. The layout changes the speed, never the
    bits. It is chosen when the layer is built or unpickled: a layer
    pickled on one machine is packed or not for the one that loads it.
    """

    __slots__ = (
        "_pack",
        "_scales",
        "_weight",
        "act_mode",
        "bias",
        "bits",
        "group_size",
        "in_features",
        "out_features",
        "per_token",
        "smooth_alpha",
        "smooth_factors",
    )

    # What a pickle holds: the weights and scales row-major (portable),
    # never packed.
    _STATE = tuple(
        sorted({*__slots__} - {"_pack", "_scales", "_weight"} | {"weight", "weight_scales"})
    )

    in_features: int
    out_features: int
    bits: int
    group_size: int | None
    per_token: bool
    act_mode: ScaleMode
    _weight: npt.NDArray[Any] | _core.PackedInt8Weights | _core.PackedInt4Weights
    _pack: bool | None
    # Row-major scales, or None when the int4 panels hold them.
    _scales: npt.NDArray[np.float32] | None
    bias: npt.NDArray[np.float32] | None
    smooth_factors: npt.NDArray[np.float32] | None
    smooth_alpha: float | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Built only by from_float (and by unpickling, which skips __init__).
        raise ArgumentTypeError(
            "QuantizedLinear is built with QuantizedLinear.from_float(weight, bias=None, *, "
            "bits=8, ...), not by calling the class"
        )

    @classmethod
    def from_float(
        cls,
        weight: Any,
        bias: Any = None,
        *,
        bits: int = 8,
        group_size: int | None = None,
        act_mode: ScaleMode = MaxAbs(),  # noqa: B008 - frozen, immutable
        per_token: bool = True,
        smooth: tuple[SmoothQuantConfig, Any] | None = None,
        pack: bool | None = None,
    ) -> QuantizedLinear:
        """Quantize a float Linear: ``weight [out, in]``, ``bias [out]``.

        ``smooth=(SmoothQuantConfig(alpha), calibration)`` where calibration
        is activations ``[tokens, in]`` seen by this layer, or their
        per-channel ``max|A_j|`` ``[in]``. ``pack``: ``None`` packs the
        weights where this machine's kernel path multiplies packed weights
        (for 4 bits: where the shape allows panels), ``True``/``False``
        force it (4 bits with ``True``: an error when it does not).
        """
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits not in (4, 8):
            raise InvalidArgumentError(f"bits must be 8 or 4, got {bits!r}")
        bits = int(bits)
        if bits == 8 and group_size is not None:
            raise InvalidArgumentError("group_size applies to bits=4 only")
        if pack is not None:
            pack = check_bool(pack, "pack")
        if not isinstance(act_mode, (MaxAbs, Percentile)):
            raise ArgumentTypeError(
                f"act_mode must be dq.MaxAbs() or dq.Percentile(p), got {act_mode!r}"
            )
        w = as_float32(weight, "weight", ndim=2)
        layer = object.__new__(cls)
        layer.out_features, layer.in_features = (int(d) for d in w.shape)
        layer.bits = bits
        layer.group_size = int(group_size) if isinstance(group_size, np.integer) else group_size
        layer.per_token, layer.act_mode = check_bool(per_token, "per_token"), act_mode
        layer.bias = None if bias is None else as_float32(bias, "bias", ndim=1).copy()
        if layer.bias is not None and layer.bias.shape[0] != layer.out_features:
            # The same error as w8a8_matmul's for a bias of the wrong length.
            raise ShapeMismatchError(
                f"bias has {layer.bias.shape[0]} values for {layer.out_features} outputs",
                expected=layer.out_features,
                actual=layer.bias.shape[0],
            )
        if layer.bias is not None:
            require_finite(layer.bias, "bias")
        layer.smooth_factors, layer.smooth_alpha = None, None
        if smooth is not None:
            factors = _smooth_factors(smooth, w)
            w = smooth_weights(w, factors)
            layer.smooth_factors, layer.smooth_alpha = factors, smooth[0].alpha
        if bits == 8:
            weight, scales = quantize_weights_int8(w)
        else:
            weight, scales = quantize_weights_int4(w, group_size)
        layer._pack = pack
        layer._set_weight(weight, scales)
        return layer

    def _int4_group(self) -> int | None:
        """The group the int4 panels take for this layer, or None when its
        shape has none (``in_features`` a positive multiple of 64, the group
        a multiple of 8 that divides it)."""
        k = self.in_features
        group = k if self.group_size is None else self.group_size
        if k == 0 or k % 64 or group % 8 or k % group:
            return None
        return group

    def _set_weight(self, weight: npt.NDArray[Any], scales: npt.NDArray[np.float32]) -> None:
        """Hold ``weight`` and ``scales`` (row-major) in the layout ``_pack``
        asks for, and make the arrays read-only: the layer owns them, and an
        in-place edit through an attribute would change every later result
        silently."""
        pack = self._pack
        group = self._int4_group() if self.bits == 4 else None
        if self.bits == 4 and not np.isfinite(scales).all():
            pack = False  # the panels refuse them; the product names them
        elif pack is None:  # packed where it is faster, and never for nothing
            shape_ok = self.bits == 8 or group is not None
            pack = shape_ok and weight.size > 0 and bool(_core.kernel_info()["packed_gemm"])
        elif pack and self.bits == 4 and group is None:
            raise InvalidArgumentError(
                "pack=True for bits=4 needs in_features a positive multiple of 64 and a group "
                f"size that is a multiple of 8 dividing it; got in_features {self.in_features}, "
                f"group_size {self.group_size}"
            )
        for a in (weight, scales, self.bias, self.smooth_factors):
            if a is not None:
                a.flags.writeable = False
        self._scales = scales
        if not pack:
            self._weight = weight
        elif self.bits == 8:
            self._weight = pack_weights_int8(weight)
        else:
            assert group is not None
            self._weight = _core.pack_weights_int4(weight, scales, self.in_features, group)
            self._scales = None  # the panels hold them

    @property
    def weight(self) -> npt.NDArray[Any]:
        """The weights row-major and read-only: int8 ``[out, in]``, or int4
        packed two per byte ``[out, ceil(in / 2)]`` uint8. A copy, unpacked
        on each access, when the layer holds them packed (``packed``)."""
        if isinstance(self._weight, _core.PackedInt8Weights):
            w: npt.NDArray[Any] = self._weight.unpack()
            w.flags.writeable = False
            return w
        if isinstance(self._weight, _core.PackedInt4Weights):
            w = self._weight.unpack()[0]
            w.flags.writeable = False
            return w
        return self._weight

    @property
    def weight_scales(self) -> npt.NDArray[np.float32]:
        """The weight scales, read-only: ``[out]`` (8 bits) or ``[out, groups]``
        (4 bits). A copy, unpacked on each access, when int4 panels hold them."""
        if self._scales is not None:
            return self._scales
        assert isinstance(self._weight, _core.PackedInt4Weights)
        s = self._weight.unpack()[1]
        s.flags.writeable = False
        return s

    @weight_scales.setter
    def weight_scales(self, scales: Any) -> None:
        """Reassigned scales (to study their effect, say) are held as given
        (a float32 copy) and the layout is chosen again; non-finite ones
        keep int4 weights row-major, so that the product reports them."""
        s = as_float32(scales, "weight_scales").copy()
        want = self.weight_scales.shape
        if s.shape != want:
            raise ShapeMismatchError(
                f"weight_scales must keep their shape {want} (one per output row"
                f"{' and group' if self.bits == 4 else ''}), got {s.shape}",
                expected=want,
                actual=s.shape,
            )
        self._set_weight(self.weight, s)

    @property
    def packed(self) -> bool:
        """Whether the weights are held packed for the AVX-512 VNNI kernels."""
        return isinstance(self._weight, (_core.PackedInt8Weights, _core.PackedInt4Weights))

    def __call__(self, x: Any, *, nan_policy: str = "raise") -> npt.NDArray[np.float32]:
        """``x [..., in]`` → ``[..., out]``."""
        a = as_float32(x, "x")
        if a.ndim == 0 or a.shape[-1] != self.in_features:
            raise FeatureDimMismatchError(
                f"x has shape {a.shape}; this layer takes [..., {self.in_features}]",
                in_features=self.in_features,
                sf_len=a.shape[-1] if a.ndim else 0,
                argument="x",
            )
        if self.smooth_factors is None:
            return self._product(a, nan_policy)
        # Checked here rather than by smooth_activations, so that the
        # error names x and knows the product's scale mode.
        nan_reason = NAN_UNDER_PERCENTILE if isinstance(self.act_mode, Percentile) else None
        if not check_nan_policy(nan_policy):
            check_finite(a, "x", nan_reason)
        a2 = a.reshape(math.prod(a.shape[:-1]), self.in_features)
        smoothed = smooth_activations(a2, self.smooth_factors, nan_policy="reference")
        try:
            return self._product(smoothed.reshape(a.shape), nan_policy)
        except NonFiniteError as e:
            x0 = a2.reshape(-1)[e.index] if e.argument == "x" else np.float32(np.nan)
            if np.isfinite(x0):
                # x is finite there: its division by the smoothing factor
                # overflowed (or was 0/0); name what the product saw, and why.
                channel = e.index % self.in_features
                # !s: float32's shortest repr (a plain f-string widens to float).
                origin = (
                    f"x there is {x0!s}, divided by smoothing factor "
                    f"{self.smooth_factors[channel]!s} of channel {channel}"
                )
                raise non_finite_error(
                    e.index,
                    e.value,
                    "x after smoothing",
                    nan_policy,
                    nan_reason,
                    (smoothed,),
                    origin=origin,
                ) from None
            raise  # about another argument, or x's own NaN/Inf

    def _product(self, a: npt.NDArray[np.float32], nan_policy: str) -> npt.NDArray[np.float32]:
        """The W8A8 or W4A8 product of ``a`` (smoothed already) and the weights."""
        if self.bits == 8:
            return w8a8_matmul(
                a,
                self._weight,
                self.weight_scales,
                per_token=self.per_token,
                bias=self.bias,
                act_mode=self.act_mode,
                nan_policy=nan_policy,
            )
        try:
            if isinstance(self._weight, _core.PackedInt4Weights):
                return _w4a8_matmul_held(
                    a,
                    self._weight,
                    per_token=self.per_token,
                    bias=self.bias,
                    act_mode=self.act_mode,
                    nan_policy=nan_policy,
                )
            return w4a8_matmul(
                a,
                self.weight,
                self.weight_scales,
                group_size=self.group_size,
                per_token=self.per_token,
                bias=self.bias,
                act_mode=self.act_mode,
                nan_policy=nan_policy,
            )
        except NonFiniteError as e:
            # w4a8_matmul calls them `scales`; the caller knows the attribute.
            if e.argument == "scales":
                raise renamed_non_finite(e, "weight_scales") from None
            raise

    def dequantized_weight(self) -> npt.NDArray[np.float32]:
        """The float ``[out, in]`` weight this layer multiplies by (after smoothing)."""
        if self.bits == 8:
            values = self.weight.astype(np.float32)
            return values * self.weight_scales[:, None]
        values = unpack_int4(self.weight, self.in_features).astype(np.float32)
        # A group wider than the row is one group of in_features columns;
        # repeating by the nominal width would allocate out x group floats.
        group = min(self.group_size or self.in_features, self.in_features) or 1
        scales = np.repeat(self.weight_scales, group, axis=1)[:, : self.in_features]
        out: npt.NDArray[np.float32] = values * scales
        return out

    def memory_bytes(self) -> int:
        """Bytes of weights (as held: packed panels and row sums when
        ``packed``), scales, bias and smoothing factors."""
        parts = [self._weight, self._scales, self.bias, self.smooth_factors]
        return sum(int(p.nbytes) for p in parts if p is not None)

    def __repr__(self) -> str:
        group = f", group_size={self.group_size}" if self.bits == 4 else ""
        smooth = (
            f", smooth=SmoothQuant(alpha={self.smooth_alpha})"
            if self.smooth_alpha is not None
            else ""
        )
        return (
            f"QuantizedLinear(in_features={self.in_features}, out_features={self.out_features}, "
            f"bits={self.bits}{group}, packed={self.packed}, per_token={self.per_token}, "
            f"act_mode={self.act_mode!r}, "
            f"bias={self.bias is not None}{smooth}, memory_bytes={self.memory_bytes()})"
        )

    def __copy__(self) -> QuantizedLinear:
        # Everything the layer holds is read-only (arrays) or immutable
        # (packed weights): a shallow copy shares it rather than repacking.
        new = object.__new__(type(self))
        for name in self.__slots__:
            setattr(new, name, getattr(self, name))
        return new

    def __getstate__(self) -> dict[str, Any]:
        state = {name: getattr(self, name) for name in self._STATE}
        state["int4_layout"] = INT4_LAYOUT
        state["pack"] = self._pack
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state.get("bits") == 4 and state.get("int4_layout") != INT4_LAYOUT:
            # Older builds packed int4 in llama.cpp's Q4_0 order: the same
            # bytes would now be read as other columns, silently.
            raise InvalidArgumentError(
                "this 4-bit QuantizedLinear was pickled by a dynquant build with another "
                f"int4 layout (version {state.get('int4_layout', 1)}, this build reads "
                f"{INT4_LAYOUT}); quantize it again from its float weights"
            )
        for name in self._STATE:
            if name not in ("weight", "weight_scales"):
                setattr(self, name, state[name])
        self._pack = state.get("pack")  # absent from older pickles: auto
        self._set_weight(state["weight"], state["weight_scales"])
