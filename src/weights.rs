//! Weight quantizers (int8 per output row; int4 per row or per group, packed
//! two to a byte) and the int4 packing itself.
//!
//! Packed int4 layout (the same as llama.cpp's Q4_0 blocks, so a 32-byte
//! load yields 64 weights with two instructions): each row of `in` columns
//! takes `ceil(in / 2)` bytes. Columns go in blocks of 64; in block `b`, byte
//! `j` (0..32) holds column `64b + j` in its low nibble and column
//! `64b + 32 + j` in its high nibble. A last, partial block of `r` columns
//! uses `h = ceil(r / 2)` bytes the same way (byte `j`: columns `j` and
//! `j + h` of the block). Each nibble stores `value + 8` (offset binary,
//! 0..15 for -8..7); an unused high nibble stores 8 (the value 0).

use rayon::prelude::*;

use crate::error::{checked_size, try_vec};
use crate::parallel;
use crate::quantize::quantize_per_row_into;
use crate::scale::{DynamicScaleMode, NanPolicy};
use crate::simd::scalar::{int4_at, quantize_one};
use crate::DynQuantError;

/// Symmetric int8 weights, one scale per output row: `scale = max|row| / 127`
/// and values in [-127, 127] — the per-row activation quantizer applied to
/// `[out, in]` weights. Returns `(weights, scales)`.
pub fn quantize_weights_int8(
    weights: &[f32],
    out_features: usize,
    in_features: usize,
) -> Result<(Vec<i8>, Vec<f32>), DynQuantError> {
    // Checked before allocating: `out_features` sizes the scales.
    let expected = checked_size(out_features, in_features, "weights")?;
    if weights.len() != expected {
        return Err(DynQuantError::ShapeMismatch {
            expected,
            actual: weights.len(),
        });
    }
    let mut q = try_vec(weights.len(), 0i8)?;
    let mut scales = try_vec(out_features, 0.0f32)?;
    quantize_per_row_into(
        weights,
        in_features,
        DynamicScaleMode::MaxAbs,
        NanPolicy::Raise,
        &mut q,
        &mut scales,
    )?;
    Ok((q, scales))
}

/// Byte index and nibble shift of column `col` in a packed row (see the
/// module doc).
#[inline]
pub fn int4_position(cols: usize, col: usize) -> (usize, u32) {
    let block = col / 64;
    let in_block = col % 64;
    let block_len = (cols - block * 64).min(64);
    let half = block_len.div_ceil(2);
    if in_block < half {
        (block * 32 + in_block, 0)
    } else {
        (block * 32 + in_block - half, 4)
    }
}

/// Packs int4 values (each in [-8, 7]) of rows of `cols` columns.
pub fn pack_int4(values: &[i8], cols: usize) -> Result<Vec<u8>, DynQuantError> {
    if let Some(i) = values.iter().position(|v| !(-8..=7).contains(v)) {
        return Err(DynQuantError::InvalidArgument(format!(
            "int4 values must lie in [-8, 7]; value {} at flat index {i}",
            values[i]
        )));
    }
    if cols == 0 {
        return Ok(Vec::new());
    }
    if values.len() % cols != 0 {
        return Err(DynQuantError::ShapeMismatch {
            expected: values.len() / cols * cols,
            actual: values.len(),
        });
    }
    let row_bytes = cols.div_ceil(2);
    // 0x88: both nibbles hold the value 0, so padding needs no special case.
    let mut packed = vec![0x88u8; values.len() / cols * row_bytes];
    for (row, out) in values.chunks(cols).zip(packed.chunks_mut(row_bytes)) {
        for (col, &v) in row.iter().enumerate() {
            let (byte, shift) = int4_position(cols, col);
            let nibble = (v + 8) as u8;
            out[byte] = (out[byte] & !(0x0f << shift)) | (nibble << shift);
        }
    }
    Ok(packed)
}

/// Unpacks rows of `cols` int4 columns (see the module doc for the layout).
pub fn unpack_int4(packed: &[u8], cols: usize) -> Result<Vec<i8>, DynQuantError> {
    let row_bytes = cols.div_ceil(2);
    if row_bytes == 0 {
        return Ok(Vec::new());
    }
    if packed.len() % row_bytes != 0 {
        return Err(DynQuantError::ShapeMismatch {
            expected: packed.len() / row_bytes * row_bytes,
            actual: packed.len(),
        });
    }
    Ok(packed
        .chunks(row_bytes)
        .flat_map(|row| (0..cols).map(move |c| int4_at(row, cols, c)))
        .collect())
}

/// Candidate clip ratios of the int4 scale search: values are rounded with
/// `amax / 7 * ratio`, then the scale is refitted by least squares.
const CLIP_RATIOS: [f32; 10] = [1.0, 0.96, 0.92, 0.88, 0.84, 0.8, 0.76, 0.72, 0.68, 0.64];

/// The int4 scale of one group minimising the squared error, and its values.
///
/// For each clip ratio: round with `s0 = amax * ratio / 7` (values in
/// [-8, 7]), then refit the scale for those values by least squares,
/// `s = sum(w q) / sum(q q)`, whose error is `sum(w w) - sum(w q)^2 / sum(q q)`;
/// keep the values and scale with the least error. Plain round-to-nearest
/// (`amax / 7`) is the first candidate's values, so the search never does
/// worse than it.
pub fn int4_group_scale(group: &[f32], out: &mut [i8]) -> f32 {
    let amax = group.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || (amax / 7.0) == 0.0 {
        out.fill(0);
        return 0.0;
    }
    let ww: f64 = group.iter().map(|&w| w as f64 * w as f64).sum();
    let mut best = (f64::INFINITY, 0.0f32, 0.0f32); // (error, s0, refitted scale)
    for ratio in CLIP_RATIOS {
        let s0 = amax * ratio / 7.0;
        let (mut wq, mut qq) = (0.0f64, 0.0f64);
        for &w in group {
            let q = quantize_one(w, s0, 8.0).min(7) as f64;
            wq += w as f64 * q;
            qq += q * q;
        }
        if qq == 0.0 {
            continue;
        }
        let scale = (wq / qq) as f32;
        let error = ww - wq * wq / qq;
        if error < best.0 && scale > 0.0 && scale.is_finite() {
            best = (error, s0, scale);
        }
    }
    for (q, &w) in out.iter_mut().zip(group) {
        *q = quantize_one(w, best.1, 8.0).min(7);
    }
    best.2
}

/// Int4 weights for `[out, in]` float weights: per group of `group_size`
/// input columns (or the whole row for `None`), the scale of
/// [`int4_group_scale`]. Returns `(packed, scales)` with `scales` laid out
/// `[out, ceil(in / group)]`.
pub fn quantize_weights_int4(
    weights: &[f32],
    out_features: usize,
    in_features: usize,
    group_size: Option<usize>,
) -> Result<(Vec<u8>, Vec<f32>), DynQuantError> {
    let expected = checked_size(out_features, in_features, "weights")?;
    if weights.len() != expected {
        return Err(DynQuantError::ShapeMismatch {
            expected,
            actual: weights.len(),
        });
    }
    if let Some(i) = weights.iter().position(|v| !v.is_finite()) {
        return Err(DynQuantError::NonFinite {
            index: i,
            value: weights[i],
        });
    }
    let group = match group_size {
        Some(0) => {
            return Err(DynQuantError::InvalidArgument(
                "group_size must be positive".into(),
            ))
        }
        Some(g) if g % 2 != 0 => {
            return Err(DynQuantError::InvalidArgument(format!(
                "group_size must be even (groups start on whole bytes), got {g}"
            )))
        }
        Some(g) => g,
        None => in_features.max(1),
    };
    let groups = in_features.div_ceil(group);
    let mut values = try_vec(weights.len(), 0i8)?;
    let mut scales = try_vec(out_features * groups, 0.0f32)?;
    if in_features > 0 {
        let rows = |w: &[f32], q: &mut [i8], s: &mut [f32]| {
            for ((w, q), s) in w.chunks(group).zip(q.chunks_mut(group)).zip(s) {
                *s = int4_group_scale(w, q);
            }
        };
        parallel::run(weights.len() * 8, |split| {
            if split {
                weights
                    .par_chunks(in_features)
                    .zip(values.par_chunks_mut(in_features))
                    .zip(scales.par_chunks_mut(groups))
                    .for_each(|((w, q), s)| rows(w, q, s));
            } else {
                for ((w, q), s) in weights
                    .chunks(in_features)
                    .zip(values.chunks_mut(in_features))
                    .zip(scales.chunks_mut(groups))
                {
                    rows(w, q, s);
                }
            }
        });
    }
    Ok((pack_int4(&values, in_features)?, scales))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip_and_layout() {
        let v: Vec<i8> = vec![-8, 7, 1, -1, 3];
        // 5 columns: h = 3, byte j holds columns j and j + 3.
        let p = pack_int4(&v, 5).unwrap();
        assert_eq!(p, vec![0x70, 0xbf, 0x89]);
        assert_eq!(unpack_int4(&p, 5).unwrap(), v);
        let v: Vec<i8> = (0..2 * 130).map(|i| (i % 16) as i8 - 8).collect();
        assert_eq!(unpack_int4(&pack_int4(&v, 130).unwrap(), 130).unwrap(), v);
        let p = pack_int4(&v[..64], 64).unwrap();
        // Columns 0 and 32 are -8 (nibble 0), columns 1 and 33 are -7 (nibble 1).
        assert_eq!(&p[..2], &[0x00, 0x11]);

        assert!(pack_int4(&[8], 1).is_err());
    }

    #[test]
    fn search_is_never_worse_than_round_to_nearest() {
        let w: Vec<f32> = (0..32)
            .map(|i| ((i * 7919 % 61) as f32 - 30.0) / 7.0)
            .collect();
        let mut q = vec![0i8; 32];
        let s = int4_group_scale(&w, &mut q);
        assert!(s > 0.0);
        let err = |s: f32, q: &[i8]| -> f32 {
            q.iter()
                .zip(&w)
                .map(|(&q, &w)| (w - q as f32 * s).powi(2))
                .sum()
        };
        let amax = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let rtn: Vec<i8> = w
            .iter()
            .map(|&x| quantize_one(x, amax / 7.0, 7.0))
            .collect();
        assert!(err(s, &q) <= err(amax / 7.0, &rtn) * 1.0001);
        assert!(q.iter().all(|v| (-8..=7).contains(v)));
    }

    #[test]
    fn int8_weights_are_per_row() {
        let (q, s) = quantize_weights_int8(&[1.0, -2.0, 0.0, 0.0], 2, 2).unwrap();
        assert_eq!(q, vec![64, -127, 0, 0]);
        assert_eq!(s, vec![2.0 / 127.0, 0.0]);
    }
}
