//! dynquant — dynamic activation quantization (W8A8 / W4A8) for CPU inference.
//!
//! The public names are those of the `dynamic_quant` module of
//! `oxibonsai-model` 0.1.1, with the same signatures and bit-identical
//! results, so either crate can replace the other. dynquant adds checked
//! `try_` forms (a [`NanPolicy`], validated arguments), `_into` forms that
//! write into caller buffers, SIMD kernels (AVX2, NEON; [`simd`] chooses)
//! and rayon parallelism ([`parallel`]).
//!
//! One module per concept:
//! [`float_layers`] (an encoder's GELU and LayerNorm around its quantized Linears),
//! [`scale`] (scale modes, percentile), [`quantize`] (the quantizers),
//! [`tensor`] (the quantized tensor), [`smooth`] (SmoothQuant),
//! [`matmul`] (W8A8 products), [`weights`] (weight quantizers, int4
//! packing), [`w4a8`] (W4A8 products), [`calib`] (calibration statistics),
//! [`error`], [`simd`] (kernel dispatch), [`parallel`] (the thread pool).
//! The Python bindings live in `python.rs` behind the `python` feature.

pub mod calib;
pub mod error;
pub mod float_layers;
mod huge_pages;
pub mod matmul;
pub mod observer;
pub mod packed;
mod pair_split;
pub mod parallel;
pub mod quantize;
pub mod scale;
pub mod simd;
pub mod smooth;
pub mod tensor;
pub mod w4a8;
pub mod weights;

#[cfg(feature = "python")]
mod python;
#[cfg(test)]
mod test_rng;

pub use calib::CalibStats;
pub use error::DynQuantError;
pub use matmul::{try_w8a8_matvec, w8a8_matmul_into, w8a8_matvec, w8a8_matvec_into, ActQuant};
pub use observer::{CalibObserver, ChannelMaxObserver, ObserverConfig};
pub use quantize::{
    dynamic_quantize_int4, dynamic_quantize_int8, dynamic_quantize_int8_per_row,
    try_dynamic_quantize_int4, try_dynamic_quantize_int8, try_dynamic_quantize_int8_per_row,
};
pub use scale::{compute_scale, try_compute_scale, DynamicScaleMode, NanPolicy};
pub use smooth::{
    compute_smooth_factors, smooth_activations, smooth_activations_into, smooth_weights,
    smooth_weights_into, SmoothQuantConfig,
};
pub use tensor::{quantization_mae, DynQuantFormat, DynQuantTensor};
pub use w4a8::{w4a8_matmul_into, w4a8_matmul_packed_into, Int4Layout, PackedInt4Weights};
pub use weights::{pack_int4, quantize_weights_int4, quantize_weights_int8, unpack_int4};
