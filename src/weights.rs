//! Weight quantizers (int8 per output row; int4 per row or per group, packed
//! two to a byte) and the int4 packing itself.
//!
//! Packed int4 layout: row-major, `ceil(in / 2)` bytes per output row; byte
//! `j` holds column `2j` in its low nibble and column `2j + 1` in its high
//! nibble, each as a 4-bit two's-complement value in [-8, 7]. An odd last
//! column leaves the last high nibble 0.

use crate::error::{checked_size, try_vec};
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
    let mut packed = Vec::with_capacity(values.len() / cols * cols.div_ceil(2));
    for row in values.chunks(cols) {
        for pair in row.chunks(2) {
            let lo = pair[0] as u8 & 0x0f;
            let hi = pair.get(1).map_or(0, |&v| v as u8 & 0x0f);
            packed.push(lo | (hi << 4));
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
        .flat_map(|row| (0..cols).map(move |c| int4_at(row, c)))
        .collect())
}

/// Candidate clip ratios of the int4 scale search: the scale starts at
/// `amax / 7 * ratio`, then is refitted by least squares.
const CLIP_RATIOS: [f32; 12] = [
    1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.79, 0.76, 0.73, 0.7, 0.65,
];

/// The int4 scale of one group minimising the squared error, and its values.
///
/// For each clip ratio: quantize with `s = amax * ratio / 7` (values in
/// [-8, 7]), refit `s* = sum(w q) / sum(q q)`, requantize with `s*`, and keep
/// the pair with the least `sum (w - q s)^2`. Plain round-to-nearest with
/// `amax / 7` is the first candidate, so the search never does worse.
pub fn int4_group_scale(group: &[f32], out: &mut [i8]) -> f32 {
    let amax = group.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || (amax / 7.0) == 0.0 {
        out.fill(0);
        return 0.0;
    }
    let quantize = |s: f32, q: &mut [i8]| {
        for (q, &w) in q.iter_mut().zip(group) {
            *q = quantize_one(w, s, 8.0).min(7);
        }
    };
    let error = |s: f32, q: &[i8]| -> f64 {
        q.iter()
            .zip(group)
            .map(|(&q, &w)| {
                let d = w as f64 - q as f64 * s as f64;
                d * d
            })
            .sum()
    };
    let mut best = (f64::INFINITY, 0.0f32);
    let mut q = vec![0i8; group.len()];
    for ratio in CLIP_RATIOS {
        let s0 = amax * ratio / 7.0;
        quantize(s0, &mut q);
        let (wq, qq) = q
            .iter()
            .zip(group)
            .fold((0.0f64, 0.0f64), |(wq, qq), (&q, &w)| {
                (wq + w as f64 * q as f64, qq + q as f64 * q as f64)
            });
        for s in [s0, if qq > 0.0 { (wq / qq) as f32 } else { s0 }] {
            if !(s > 0.0 && s.is_finite()) {
                continue;
            }
            quantize(s, &mut q);
            let e = error(s, &q);
            if e < best.0 {
                best = (e, s);
            }
        }
    }
    quantize(best.1, out);
    best.1
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
        for ((row, q), s) in weights
            .chunks(in_features)
            .zip(values.chunks_mut(in_features))
            .zip(scales.chunks_mut(groups))
        {
            for ((w, q), s) in row.chunks(group).zip(q.chunks_mut(group)).zip(s) {
                *s = int4_group_scale(w, q);
            }
        }
    }
    Ok((pack_int4(&values, in_features)?, scales))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_round_trip_and_layout() {
        let v: Vec<i8> = vec![-8, 7, 1, -1, 3];
        let p = pack_int4(&v, 5).unwrap();
        assert_eq!(p, vec![0x78, 0xf1, 0x03]);
        assert_eq!(unpack_int4(&p, 5).unwrap(), v);
        assert!(pack_int4(&[8], 1).is_err());
    }

    #[test]
    fn search_is_never_worse_than_round_to_nearest() {
        let w: Vec<f32> = (0..32)
            .map(|i| ((i * 7919 % 61) as f32 - 30.0) / 7.0)
            .collect();
        let mut q = vec![0i8; 32];
        let s = int4_group_scale(&w, &mut q);
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
