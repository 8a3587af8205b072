//! W8A8 products: int8 weights times dynamically quantized activations.

use rayon::prelude::*;

use crate::parallel;
use crate::quantize::{quantize_per_tensor_into, INT8_CLIP};
use crate::scale::{DynamicScaleMode, NanPolicy};
use crate::simd;
use crate::DynQuantError;

/// The reference's checks, in its order.
fn check_matvec(
    weight_len: usize,
    scales_len: usize,
    activation_len: usize,
    out_size: usize,
    in_size: usize,
) -> Result<(), DynQuantError> {
    if activation_len == 0 {
        return Err(DynQuantError::EmptyInput);
    }
    if activation_len != in_size {
        return Err(DynQuantError::ShapeMismatch {
            expected: in_size,
            actual: activation_len,
        });
    }
    let expected_w = out_size.checked_mul(in_size).ok_or_else(|| {
        DynQuantError::InvalidArgument(format!("{out_size} x {in_size} weights overflow usize"))
    })?;
    if weight_len != expected_w {
        return Err(DynQuantError::ShapeMismatch {
            expected: expected_w,
            actual: weight_len,
        });
    }
    if scales_len != out_size {
        return Err(DynQuantError::ShapeMismatch {
            expected: out_size,
            actual: scales_len,
        });
    }
    Ok(())
}

/// `out[o] = (dot(w[o], q) as f32 * w_scales[o]) * q_scale` — the
/// reference's dequantization, in its order. `q` is int8 within ±127.
pub(crate) fn int8_rows_times_vector(
    weight_i8: &[i8],
    weight_scales: &[f32],
    q: &[i8],
    q_scale: f32,
    out: &mut [f32],
) {
    let in_size = q.len().max(1);
    let row = |w: &[i8], s: &[f32], o: &mut [f32]| {
        for ((w, &ws), o) in w.chunks_exact(in_size).zip(s).zip(o.iter_mut()) {
            *o = (simd::dot_i8(w, q) as f32 * ws) * q_scale;
        }
    };
    let rows_per_task = (parallel::GRAIN / in_size).max(1);
    parallel::run(weight_i8.len(), |split| {
        if split {
            weight_i8
                .par_chunks(in_size * rows_per_task)
                .zip(weight_scales.par_chunks(rows_per_task))
                .zip(out.par_chunks_mut(rows_per_task))
                .for_each(|((w, s), o)| row(w, s, o));
        } else {
            row(weight_i8, weight_scales, out);
        }
    });
}

/// W8A8 matrix-vector product into `out` (`out_size` long): quantize the
/// activation per tensor (MaxAbs), accumulate exactly in integers, and scale.
pub fn w8a8_matvec_into(
    weight_i8: &[i8],
    weight_scales: &[f32],
    activation: &[f32],
    in_size: usize,
    policy: NanPolicy,
    out: &mut [f32],
) -> Result<(), DynQuantError> {
    let out_size = out.len();
    check_matvec(
        weight_i8.len(),
        weight_scales.len(),
        activation.len(),
        out_size,
        in_size,
    )?;
    let mut q = vec![0i8; in_size];
    let scale = quantize_per_tensor_into(
        activation,
        INT8_CLIP,
        DynamicScaleMode::MaxAbs,
        policy,
        &mut q,
    )?;
    int8_rows_times_vector(weight_i8, weight_scales, &q, scale, out);
    Ok(())
}

/// W8A8 matrix-vector multiply: quantize activation on-the-fly, then INT8 GEMV.
///
/// - `weight_i8`: shape `[out_size, in_size]` pre-quantized INT8 (row-major)
/// - `weight_scales`: shape `[out_size]` per-row dequant scales
/// - `activation`: shape `[in_size]` — dynamically quantized per-tensor
///
/// Non-finite activations are handled as the reference does (NaN → 0); the
/// integer sum is exact at any size (the reference's i32 overflows past
/// ~133k columns).
pub fn w8a8_matvec(
    weight_i8: &[i8],
    weight_scales: &[f32],
    activation: &[f32],
    out_size: usize,
    in_size: usize,
) -> Result<Vec<f32>, DynQuantError> {
    try_w8a8_matvec(
        weight_i8,
        weight_scales,
        activation,
        out_size,
        in_size,
        NanPolicy::Reference,
    )
}

/// [`w8a8_matvec`] with a NaN policy.
pub fn try_w8a8_matvec(
    weight_i8: &[i8],
    weight_scales: &[f32],
    activation: &[f32],
    out_size: usize,
    in_size: usize,
    policy: NanPolicy,
) -> Result<Vec<f32>, DynQuantError> {
    check_matvec(
        weight_i8.len(),
        weight_scales.len(),
        activation.len(),
        out_size,
        in_size,
    )?;
    let mut out = vec![0.0; out_size];
    w8a8_matvec_into(
        weight_i8,
        weight_scales,
        activation,
        in_size,
        policy,
        &mut out,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_in_the_reference_order() {
        let w = [1i8; 6];
        let s = [1.0f32; 2];
        assert_eq!(
            w8a8_matvec(&w, &s, &[], 2, 3),
            Err(DynQuantError::EmptyInput)
        );
        assert_eq!(
            w8a8_matvec(&w, &s, &[1.0; 2], 2, 3),
            Err(DynQuantError::ShapeMismatch {
                expected: 3,
                actual: 2
            })
        );
        assert_eq!(
            w8a8_matvec(&w[..5], &s, &[1.0; 3], 2, 3),
            Err(DynQuantError::ShapeMismatch {
                expected: 6,
                actual: 5
            })
        );
        assert_eq!(
            w8a8_matvec(&w, &s[..1], &[1.0; 3], 2, 3),
            Err(DynQuantError::ShapeMismatch {
                expected: 2,
                actual: 1
            })
        );
        assert_eq!(w8a8_matvec(&[], &[], &[1.0; 3], 0, 3), Ok(vec![]));
    }

    #[test]
    fn minus_128_weights_and_exact_sums() {
        // amax 127 → scale 1, q = activation.
        let a = [127.0f32, -127.0, 1.0];
        let w = [-128i8, -128, -128, 127, -128, 0];
        let y = w8a8_matvec(&w, &[1.0, 0.5], &a, 2, 3).unwrap();
        assert_eq!(y, vec![-128.0, (127.0 * 127.0 + 128.0 * 127.0) * 0.5]);
    }

    #[test]
    fn no_overflow_past_i32() {
        let n = 140_000;
        let w = vec![-128i8; n];
        let a = vec![-1.0f32; n];
        let y = w8a8_matvec(&w, &[1.0], &a, 1, n).unwrap();
        let acc = 128i64 * 127 * n as i64;
        assert_eq!(y[0], (acc as f32 * 1.0) * (1.0 / 127.0));
    }
}
