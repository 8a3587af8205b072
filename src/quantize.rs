//! The dynamic quantizers: int8 per tensor, int8 per row, int4 per tensor.
//!
//! The reference's functions keep their names and signatures (and its
//! results, including NaN→0); the `try_` forms add a [`NanPolicy`], check the
//! percentile and the shape, and return errors instead. The `_into` forms
//! write into caller-owned buffers, which is what the Python layer uses.

use std::sync::Mutex;

use crate::error::{checked_size, try_vec};
use crate::parallel;
use crate::scale::{first_rejected, try_compute_scale, DynamicScaleMode, NanPolicy};
use crate::simd;
use crate::tensor::{DynQuantFormat, DynQuantTensor};
use crate::DynQuantError;

/// Clip value of int8 quantization.
pub const INT8_CLIP: f32 = 127.0;
/// Clip value of int4 quantization.
pub const INT4_CLIP: f32 = 7.0;

/// Outputs at least this long bypass the cache (streaming stores): they
/// cannot stay in it anyway.
const STREAM_MIN: usize = 1 << 22;

/// Quantizes `data` with the given scale into `out` (zeros for scale 0).
pub(crate) fn quantize_with_scale(data: &[f32], scale: f32, clip: f32, out: &mut [i8]) {
    if scale == 0.0 {
        out.fill(0);
        return;
    }
    let stream = out.len() >= STREAM_MIN;
    parallel::zip_chunks(data, 1, out, 1, parallel::GRAIN, |x, o| {
        simd::quantize_to(x, scale, clip, o, stream)
    });
}

/// Per-tensor quantization of `data` into `out`; returns the scale.
pub fn quantize_per_tensor_into(
    data: &[f32],
    clip: f32,
    mode: DynamicScaleMode,
    policy: NanPolicy,
    out: &mut [i8],
) -> Result<f32, DynQuantError> {
    if out.len() != data.len() {
        return Err(DynQuantError::ShapeMismatch {
            expected: data.len(),
            actual: out.len(),
        });
    }
    let scale = try_compute_scale(data, clip, mode, policy)?;
    quantize_with_scale(data, scale, clip, out);
    Ok(scale)
}

/// Quantizes whole rows of `cols` values, one scale per row.
fn quantize_rows(
    data: &[f32],
    cols: usize,
    clip: f32,
    mode: DynamicScaleMode,
    policy: NanPolicy,
    out: &mut [i8],
    scales: &mut [f32],
) -> Result<(), DynQuantError> {
    for ((row, q), s) in data.chunks(cols).zip(out.chunks_mut(cols)).zip(scales) {
        *s = try_compute_scale(row, clip, mode, policy)?;
        if *s == 0.0 {
            q.fill(0);
        } else {
            simd::quantize(row, *s, clip, q);
        }
    }
    Ok(())
}

/// [`quantize_per_row_into`] on the calling thread, row `i` written at
/// `out[i * stride..i * stride + cols]` (products pad token rows apart; the
/// bytes between rows are left as they are). Products call it while their
/// helper threads wake up: only a row longer than two grains uses the pool.
pub(crate) fn quantize_per_row_strided_into(
    data: &[f32],
    cols: usize,
    mode: DynamicScaleMode,
    policy: NanPolicy,
    out: &mut [i8],
    stride: usize,
    scales: &mut [f32],
) -> Result<(), DynQuantError> {
    let rows = scales.len();
    assert!(
        cols > 0
            && stride >= cols
            && data.len() == rows * cols
            && (rows == 0 || out.len() >= (rows - 1) * stride + cols),
        "quantize_per_row_strided_into: shapes"
    );
    for (i, (row, s)) in data.chunks_exact(cols).zip(scales.iter_mut()).enumerate() {
        let q = &mut out[i * stride..i * stride + cols];
        quantize_rows(
            row,
            cols,
            INT8_CLIP,
            mode,
            policy,
            q,
            core::slice::from_mut(s),
        )
        .map_err(|e| first_rejected_overall(e, data, policy))?;
    }
    Ok(())
}

/// Per-row int8 quantization of a row-major `[rows, cols]` array into `out`
/// (same length) and `scales` (`rows` long). Rows run in parallel.
pub fn quantize_per_row_into(
    data: &[f32],
    cols: usize,
    mode: DynamicScaleMode,
    policy: NanPolicy,
    out: &mut [i8],
    scales: &mut [f32],
) -> Result<(), DynQuantError> {
    let rows = scales.len();
    let total = rows.checked_mul(cols).ok_or_else(|| {
        DynQuantError::InvalidArgument(format!("{rows} x {cols} elements overflow usize"))
    })?;
    for actual in [data.len(), out.len()] {
        if actual != total {
            return Err(DynQuantError::ShapeMismatch {
                expected: total,
                actual,
            });
        }
    }
    if total == 0 {
        scales.fill(0.0);
        return Ok(());
    }
    let result = if parallel::worth_splitting(total) {
        quantize_row_blocks(data, cols, mode, policy, out, scales)
    } else {
        quantize_rows(data, cols, INT8_CLIP, mode, policy, out, scales)
    };
    result.map_err(|e| first_rejected_overall(e, data, policy))
}

/// A row's (or task's) non-finite error indexes its own values; this names
/// the first value of all of `data` that `policy` refuses instead (under
/// `Reference` an earlier row's Inf was accepted). Other errors pass through.
fn first_rejected_overall(e: DynQuantError, data: &[f32], policy: NanPolicy) -> DynQuantError {
    match e {
        DynQuantError::NonFinite { .. } => first_rejected(data, policy),
        other => other,
    }
}

/// [`quantize_rows`] over blocks of rows on every thread; the first error
/// any block met.
fn quantize_row_blocks(
    data: &[f32],
    cols: usize,
    mode: DynamicScaleMode,
    policy: NanPolicy,
    out: &mut [i8],
    scales: &mut [f32],
) -> Result<(), DynQuantError> {
    let rows_per_task = (parallel::GRAIN / cols).max(1);
    let inputs: Vec<&[f32]> = data.chunks(cols * rows_per_task).collect();
    // Each block's own (q, scales) part, behind a lock only its one task takes.
    let parts: Vec<Mutex<(&mut [i8], &mut [f32])>> = out
        .chunks_mut(cols * rows_per_task)
        .zip(scales.chunks_mut(rows_per_task))
        .map(Mutex::new)
        .collect();
    let error = Mutex::new(None);
    parallel::for_each_block(data.len(), inputs.len(), |b| {
        let mut part = parts[b].lock().unwrap_or_else(|e| e.into_inner());
        let (q, s) = &mut *part;
        if let Err(e) = quantize_rows(inputs[b], cols, INT8_CLIP, mode, policy, q, s) {
            error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(e);
        }
    });
    match error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn per_tensor(
    data: &[f32],
    clip: f32,
    mode: DynamicScaleMode,
    policy: NanPolicy,
    format: DynQuantFormat,
) -> Result<DynQuantTensor, DynQuantError> {
    let mut q = try_vec(data.len(), 0i8)?;
    let scale = quantize_per_tensor_into(data, clip, mode, policy, &mut q)?;
    Ok(DynQuantTensor {
        data: q,
        scales: vec![scale],
        shape: vec![data.len()],
        format,
    })
}

/// Dynamically quantize a 1D activation tensor to INT8 (per-tensor).
///
/// # Panics
/// With `Percentile` and a NaN in `data`, as the reference does.
pub fn dynamic_quantize_int8(data: &[f32], mode: DynamicScaleMode) -> DynQuantTensor {
    per_tensor(
        data,
        INT8_CLIP,
        mode,
        NanPolicy::Reference,
        DynQuantFormat::Int8PerTensor,
    )
    .unwrap_or_else(|e| panic!("dynamic_quantize_int8: {e}"))
}

/// INT4 quantization: clamp to [-7, 7], stored as i8; `scale = amax / 7`.
///
/// # Panics
/// With `Percentile` and a NaN in `data`, as the reference does.
pub fn dynamic_quantize_int4(data: &[f32], mode: DynamicScaleMode) -> DynQuantTensor {
    per_tensor(
        data,
        INT4_CLIP,
        mode,
        NanPolicy::Reference,
        DynQuantFormat::Int4PerTensor,
    )
    .unwrap_or_else(|e| panic!("dynamic_quantize_int4: {e}"))
}

/// [`dynamic_quantize_int8`] with a NaN policy and a checked percentile.
pub fn try_dynamic_quantize_int8(
    data: &[f32],
    mode: DynamicScaleMode,
    policy: NanPolicy,
) -> Result<DynQuantTensor, DynQuantError> {
    per_tensor(
        data,
        INT8_CLIP,
        mode.validate()?,
        policy,
        DynQuantFormat::Int8PerTensor,
    )
}

/// [`dynamic_quantize_int4`] with a NaN policy and a checked percentile.
pub fn try_dynamic_quantize_int4(
    data: &[f32],
    mode: DynamicScaleMode,
    policy: NanPolicy,
) -> Result<DynQuantTensor, DynQuantError> {
    per_tensor(
        data,
        INT4_CLIP,
        mode.validate()?,
        policy,
        DynQuantFormat::Int4PerTensor,
    )
}

/// Dynamically quantize a 2D activation tensor to INT8, one scale per row.
///
/// `data` is row-major with shape `[rows, cols]`. Like the reference, a
/// `data` longer than `rows * cols` is cut, and a shorter one gives a short
/// last row and all-zero rows after it (use [`try_dynamic_quantize_int8_per_row`]
/// to get an error instead).
///
/// # Panics
/// With `Percentile` and a NaN in `data`, as the reference does; when a short
/// `data` claims more `rows * cols` values than can be allocated.
pub fn dynamic_quantize_int8_per_row(
    data: &[f32],
    rows: usize,
    cols: usize,
    mode: DynamicScaleMode,
) -> DynQuantTensor {
    let shape = vec![rows, cols];
    let empty = || DynQuantTensor {
        data: Vec::new(),
        scales: Vec::new(),
        shape: shape.clone(),
        format: DynQuantFormat::Int8PerRow,
    };
    if data.is_empty() || rows == 0 || cols == 0 {
        return empty();
    }
    let total = rows.saturating_mul(cols);
    if data.len() >= total {
        return try_per_row(&data[..total], rows, cols, mode, NanPolicy::Reference)
            .unwrap_or_else(|e| panic!("dynamic_quantize_int8_per_row: {e}"));
    }
    // Short input: the reference's row loop, padded rows and all. Its result
    // holds `rows * cols` values, however short `data` is: refuse (panic, as
    // the reference would fail) rather than abort when that cannot exist.
    let mut q = Vec::new();
    let mut scales = Vec::new();
    if total == usize::MAX
        || q.try_reserve_exact(total).is_err()
        || scales.try_reserve_exact(rows).is_err()
    {
        panic!("dynamic_quantize_int8_per_row: {rows} x {cols} values cannot be allocated");
    }
    for r in 0..rows {
        let start = r * cols;
        if start >= data.len() {
            q.resize(q.len() + cols, 0);
            scales.push(0.0);
            continue;
        }
        let row = &data[start..(start + cols).min(data.len())];
        let scale = try_compute_scale(row, INT8_CLIP, mode, NanPolicy::Reference)
            .unwrap_or_else(|e| panic!("dynamic_quantize_int8_per_row: {e}"));
        let at = q.len();
        q.resize(at + row.len(), 0);
        quantize_with_scale(row, scale, INT8_CLIP, &mut q[at..]);
        scales.push(scale);
    }
    DynQuantTensor {
        data: q,
        scales,
        shape,
        format: DynQuantFormat::Int8PerRow,
    }
}

fn try_per_row(
    data: &[f32],
    rows: usize,
    cols: usize,
    mode: DynamicScaleMode,
    policy: NanPolicy,
) -> Result<DynQuantTensor, DynQuantError> {
    // Shape checked before allocating: `rows` sizes the scales, and a
    // zero-size input needs none (however many rows it claims).
    let total = checked_size(rows, cols, "elements")?;
    if data.len() != total {
        return Err(DynQuantError::ShapeMismatch {
            expected: total,
            actual: data.len(),
        });
    }
    let mut q = try_vec(total, 0i8)?;
    let mut scales = vec![0.0f32; if total == 0 { 0 } else { rows }];
    quantize_per_row_into(data, cols, mode, policy, &mut q, &mut scales)?;
    Ok(DynQuantTensor {
        data: q,
        scales,
        shape: vec![rows, cols],
        format: DynQuantFormat::Int8PerRow,
    })
}

/// [`dynamic_quantize_int8_per_row`] with a NaN policy, a checked percentile
/// and `data.len() == rows * cols` required. Zero-size input gives empty data
/// and no scales, as the reference does.
pub fn try_dynamic_quantize_int8_per_row(
    data: &[f32],
    rows: usize,
    cols: usize,
    mode: DynamicScaleMode,
    policy: NanPolicy,
) -> Result<DynQuantTensor, DynQuantError> {
    try_per_row(data, rows, cols, mode.validate()?, policy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use DynamicScaleMode::*;

    #[test]
    fn ties_round_away_from_zero() {
        // amax 127 gives scale exactly 1.0, so x / s == x.
        let x = [127.0, 0.5, -0.5, 1.5, -2.5, 0.49999997, -126.5];
        let t = dynamic_quantize_int8(&x, MaxAbs);
        assert_eq!(t.scales, vec![1.0]);
        assert_eq!(t.data, vec![127, 1, -1, 2, -3, 0, -127]);
    }

    #[test]
    fn int4_clamps_to_seven() {
        let x = [7.0, -7.0, 3.5, -100.0];
        let t = dynamic_quantize_int4(&x, Percentile(0.5));
        assert_eq!(t.scales, vec![1.0]);
        assert_eq!(t.data, vec![7, -7, 4, -7]);
    }

    #[test]
    fn empty_inputs() {
        let t = dynamic_quantize_int8(&[], MaxAbs);
        assert_eq!(
            (t.data.len(), t.scales.clone(), t.shape.clone()),
            (0, vec![0.0], vec![0])
        );
        let t = dynamic_quantize_int8_per_row(&[], 3, 0, MaxAbs);
        assert!(t.data.is_empty() && t.scales.is_empty());
        let t = try_dynamic_quantize_int8_per_row(&[], 3, 0, MaxAbs, NanPolicy::Raise).unwrap();
        assert!(t.data.is_empty() && t.scales.is_empty());
    }

    #[test]
    fn short_per_row_input_pads_like_the_reference() {
        let t = dynamic_quantize_int8_per_row(&[1.0, 2.0, 3.0], 3, 2, MaxAbs);
        assert_eq!(t.data, vec![64, 127, 127, 0, 0]);
        assert_eq!(t.scales, vec![2.0 / 127.0, 3.0 / 127.0, 0.0]);
    }

    #[test]
    fn non_finite_policies() {
        let x = [1.0, f32::NAN, 2.0];
        let t = dynamic_quantize_int8(&x, MaxAbs);
        assert_eq!(t.data, vec![64, 0, 127]);
        let e = try_dynamic_quantize_int8(&x, MaxAbs, NanPolicy::Raise).unwrap_err();
        assert!(matches!(e, DynQuantError::NonFinite { index: 1, .. }));
        let t = dynamic_quantize_int8(&[1.0, f32::INFINITY], MaxAbs);
        assert_eq!((t.data, t.scales), (vec![0, 0], vec![f32::INFINITY]));
        let rows = [1.0, 2.0, 3.0, f32::INFINITY];
        let e =
            try_dynamic_quantize_int8_per_row(&rows, 2, 2, MaxAbs, NanPolicy::Raise).unwrap_err();
        assert!(matches!(e, DynQuantError::NonFinite { index: 3, .. }));
        // Under Reference a Percentile row's Inf is accepted; a later row's
        // NaN is the error, and its index is the one named.
        let rows = [1.0, f32::INFINITY, f32::NAN, 2.0];
        let pct = DynamicScaleMode::Percentile(0.5);
        let e =
            try_dynamic_quantize_int8_per_row(&rows, 2, 2, pct, NanPolicy::Reference).unwrap_err();
        assert!(matches!(e, DynQuantError::NonFinite { index: 2, .. }));
    }

    #[test]
    fn per_row_shape_is_checked() {
        let e = try_dynamic_quantize_int8_per_row(&[1.0; 5], 2, 3, MaxAbs, NanPolicy::Raise);
        assert_eq!(
            e.unwrap_err(),
            DynQuantError::ShapeMismatch {
                expected: 6,
                actual: 5
            }
        );
    }

    #[test]
    fn subnormal_amax_scale_underflows_to_zero() {
        let tiny = f32::from_bits(63); // 63 * 2^-149: amax / 127 rounds to 0
        let t = dynamic_quantize_int8(&[tiny, -tiny], MaxAbs);
        assert_eq!((t.data, t.scales), (vec![0, 0], vec![0.0]));
        // 64 * 2^-149 / 127 rounds up to 2^-149, so q = 64, not 127.
        let t = dynamic_quantize_int8(&[f32::from_bits(64)], MaxAbs);
        assert_eq!((t.data, t.scales), (vec![64], vec![f32::from_bits(1)]));
    }
}
