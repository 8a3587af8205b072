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
use crate::huge_pages;
use crate::parallel;
use crate::quantize::quantize_per_row_into;
use crate::scale::{DynamicScaleMode, NanPolicy};
use crate::simd;
use crate::simd::scalar::quantize_one;
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
    let mut q = huge_pages::try_vec(weights.len(), 0i8)?;
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
    let rows = whole_rows(values.len(), cols)?;
    let row_bytes = cols.div_ceil(2);
    let mut packed = huge_pages::try_vec(rows * row_bytes, 0u8)?;
    let nibble = |v: i8| (v + 8) as u8;
    // With no columns there are no values (whole_rows): max(1) only keeps
    // chunks() from panicking.
    for (row, out) in values
        .chunks(cols.max(1))
        .zip(packed.chunks_mut(row_bytes.max(1)))
    {
        // Block by block (see the module doc): byte j holds columns j and
        // j + h of the block; a missing last high column stores 8 (zero).
        for (block, out) in row.chunks(64).zip(out.chunks_mut(32)) {
            let (low, high) = block.split_at(block.len().div_ceil(2));
            for (j, byte) in out.iter_mut().enumerate() {
                let hi = high.get(j).map_or(8, |&v| nibble(v));
                *byte = nibble(low[j]) | (hi << 4);
            }
        }
    }
    Ok(packed)
}

/// How many rows of `width` items `len` items make: a whole number, and
/// none when `width` is 0 (rows of no items hold nothing, so anything given
/// for them is misplaced), else `ShapeMismatch`.
fn whole_rows(len: usize, width: usize) -> Result<usize, DynQuantError> {
    let rows = len.checked_div(width).unwrap_or(0);
    if rows * width == len {
        Ok(rows)
    } else {
        Err(DynQuantError::ShapeMismatch {
            expected: rows * width,
            actual: len,
        })
    }
}

/// With an odd `cols`, each packed row has one unused nibble, which
/// [`pack_int4`] sets to 8 (the value 0). Anything else there means the rows
/// were packed for one more column — the same number of bytes — and reading
/// them as `cols` columns would silently drop that column.
pub(crate) fn check_int4_padding(packed: &[u8], cols: usize) -> Result<(), DynQuantError> {
    if cols.is_multiple_of(2) {
        return Ok(());
    }
    let (byte, shift) = int4_position(cols, cols);
    let rb = cols.div_ceil(2);
    match packed
        .chunks(rb)
        .position(|row| (row[byte] >> shift) & 0x0f != 8)
    {
        None => Ok(()),
        Some(row) => Err(DynQuantError::InvalidArgument(format!(
            "{cols} columns (in_features), but packed row {row} holds a weight in its unused last \
             nibble: these rows were packed for {} columns",
            cols + 1
        ))),
    }
}

/// Unpacks rows of `cols` int4 columns (see the module doc for the layout).
/// An odd `cols` with a non-zero unused last nibble is an error (see
/// `check_int4_padding`).
pub fn unpack_int4(packed: &[u8], cols: usize) -> Result<Vec<i8>, DynQuantError> {
    let row_bytes = cols.div_ceil(2);
    let rows = whole_rows(packed.len(), row_bytes)?;
    check_int4_padding(packed, cols)?;
    let mut values = try_vec(rows * cols, 0i8)?;
    // As in pack_int4: max(1) only keeps chunks() from panicking.
    let value = |nibble: u8| (nibble & 0x0f) as i8 - 8;
    for (row, out) in packed
        .chunks(row_bytes.max(1))
        .zip(values.chunks_mut(cols.max(1)))
    {
        // Block by block, as `pack_int4` writes them.
        for (bytes, out) in row.chunks(32).zip(out.chunks_mut(64)) {
            let (low, high) = out.split_at_mut(out.len().div_ceil(2));
            for (j, &byte) in bytes.iter().enumerate() {
                low[j] = value(byte);
                if let Some(v) = high.get_mut(j) {
                    *v = value(byte >> 4);
                }
            }
        }
    }
    Ok(values)
}

/// Candidate clip ratios of the int4 scale search: values are rounded with
/// `amax / 7 * ratio`, then the scale is refitted by least squares.
const CLIP_RATIOS: [f32; 10] = [1.0, 0.96, 0.92, 0.88, 0.84, 0.8, 0.76, 0.72, 0.68, 0.64];

/// Columns per block of [`int4_group_scale`]'s search (stack buffers).
const SEARCH_BLOCK: usize = 64;

/// The int4 scale of one group minimising the squared error, and its values.
///
/// For each clip ratio: round with `s0 = amax * ratio / 7` (values in
/// [-8, 7]), then refit the scale for those values by least squares,
/// `s = sum(w q) / sum(q q)`, whose error is `sum(w w) - sum(w q)^2 / sum(q q)`;
/// keep the values and scale with the least error. Plain round-to-nearest
/// (`amax / 7`) is the first candidate's values, so the search never does
/// worse than it.
///
/// The sums run in f64 in column order, one per candidate; the candidates
/// go side by side (all of them per column), so their sums are independent
/// chains instead of one long one, and the rounding uses the SIMD
/// quantizer (the same values as [`quantize_one`]). `out` receives the
/// values of the first `min(out.len(), group.len())` columns.
pub fn int4_group_scale(group: &[f32], out: &mut [i8]) -> f32 {
    let amax = group.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 || (amax / 7.0) == 0.0 {
        out.fill(0);
        return 0.0;
    }
    let ww: f64 = group.iter().map(|&w| w as f64 * w as f64).sum();
    let s0 = CLIP_RATIOS.map(|ratio| amax * ratio / 7.0);
    let mut wq = [0.0f64; CLIP_RATIOS.len()];
    let mut qq = [0i64; CLIP_RATIOS.len()];
    let mut q = [[0i8; SEARCH_BLOCK]; CLIP_RATIOS.len()];
    let mut qf = [[0.0f64; SEARCH_BLOCK]; CLIP_RATIOS.len()];
    for w in group.chunks(SEARCH_BLOCK) {
        for (q, &s0) in q.iter_mut().zip(&s0) {
            quantize_int4(w, s0, &mut q[..w.len()]);
        }
        for (qf, q) in qf.iter_mut().zip(&q) {
            for (f, &v) in qf.iter_mut().zip(&q[..w.len()]) {
                *f = v as f64;
            }
        }
        for (i, &w) in w.iter().enumerate() {
            let w = w as f64;
            for (wq, qf) in wq.iter_mut().zip(&qf) {
                *wq += w * qf[i];
            }
        }
        for (qq, q) in qq.iter_mut().zip(&q) {
            *qq += q[..w.len()]
                .iter()
                .map(|&v| v as i32 * v as i32)
                .sum::<i32>() as i64;
        }
    }
    let mut best = (f64::INFINITY, 0.0f32, 0.0f32); // (error, s0, refitted scale)
    for c in 0..CLIP_RATIOS.len() {
        // Exact: at most 64 * len, far below 2^53.
        let qq = qq[c] as f64;
        if qq == 0.0 {
            continue;
        }
        let scale = (wq[c] / qq) as f32;
        let error = ww - wq[c] * wq[c] / qq;
        if error < best.0 && scale > 0.0 && scale.is_finite() {
            best = (error, s0[c], scale);
        }
    }
    // As a zip: values for the first min(out, group) columns.
    let n = out.len().min(group.len());
    quantize_int4(&group[..n], best.1, &mut out[..n]);
    best.2
}

/// `quantize_one(w, s0, 8).min(7)` for every value: int4 rounding.
fn quantize_int4(w: &[f32], s0: f32, out: &mut [i8]) {
    if s0 == 0.0 {
        // The SIMD quantizer needs a non-zero scale; a zero one divides
        // every value to ±inf or NaN, which clamp to ±8 or 0.
        out.iter_mut()
            .zip(w)
            .for_each(|(o, &w)| *o = quantize_one(w, s0, 8.0));
    } else {
        simd::quantize(w, s0, 8.0, out);
    }
    for v in out.iter_mut() {
        *v = (*v).min(7);
    }
}

/// Scales per row of [`quantize_weights_int4`]'s output: one per
/// `group_size` columns (the last group may be short), one per row for
/// `None`, none for a row without columns.
pub fn int4_groups(in_features: usize, group_size: Option<usize>) -> usize {
    in_features.div_ceil(group_size.unwrap_or(in_features).max(1))
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
    let groups = int4_groups(in_features, group_size);
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
    use crate::simd::scalar::int4_at;

    /// Rows of no columns hold nothing: data given for them is an error,
    /// not silently dropped.
    #[test]
    fn zero_columns_refuse_data() {
        assert_eq!(pack_int4(&[], 0), Ok(Vec::new()));
        assert_eq!(unpack_int4(&[], 0), Ok(Vec::new()));
        let e = DynQuantError::ShapeMismatch {
            expected: 0,
            actual: 3,
        };
        assert_eq!(pack_int4(&[1, 2, 3], 0), Err(e.clone()));
        assert_eq!(unpack_int4(&[0x12, 0x34, 0x56], 0), Err(e));
    }

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
    fn packing_puts_every_column_where_int4_position_says() {
        for cols in 1..=200usize {
            let rows = 3;
            let v: Vec<i8> = (0..rows * cols)
                .map(|i| ((i * 7 + cols) % 16) as i8 - 8)
                .collect();
            let p = pack_int4(&v, cols).unwrap();
            let row_bytes = cols.div_ceil(2);
            assert_eq!(p.len(), rows * row_bytes);
            let mut expected = vec![0x88u8; p.len()];
            for r in 0..rows {
                for c in 0..cols {
                    let (byte, shift) = int4_position(cols, c);
                    let b = &mut expected[r * row_bytes + byte];
                    *b = (*b & !(0x0f << shift)) | (((v[r * cols + c] + 8) as u8) << shift);
                }
            }
            assert_eq!(p, expected, "cols {cols}");
            assert_eq!(unpack_int4(&p, cols).unwrap(), v, "cols {cols}");
            for r in 0..rows {
                let row = &p[r * row_bytes..(r + 1) * row_bytes];
                for c in 0..cols {
                    assert_eq!(int4_at(row, cols, c), v[r * cols + c], "cols {cols}");
                }
            }
        }
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

    /// The search's result judged by the direct squared error
    /// `sum((w - q s)^2)` (in f64, not the closed form the search uses):
    /// for every group, through `quantize_weights_int4`, the chosen values
    /// and scale are no worse than any clip candidate (values rounded with
    /// `amax * ratio / 7`, scale refitted by least squares) nor than plain
    /// round-to-nearest with `amax / 7`; and the scale is the least-squares
    /// fit of the chosen values. Groups: one element, a lone outlier,
    /// exact ties, equal values, tiny and huge magnitudes, and random ones.
    #[test]
    fn chosen_scale_has_the_least_direct_squared_error() {
        let sq_err = |w: &[f32], q: &[i8], s: f32| -> f64 {
            w.iter()
                .zip(q)
                .map(|(&w, &q)| (w as f64 - q as f64 * s as f64).powi(2))
                .sum()
        };
        let refit = |w: &[f32], q: &[i8]| -> f32 {
            let wq: f64 = w.iter().zip(q).map(|(&w, &q)| w as f64 * q as f64).sum();
            let qq: f64 = q.iter().map(|&q| q as f64 * q as f64).sum();
            (wq / qq) as f32
        };
        let mut groups: Vec<Vec<f32>> = vec![
            vec![3.0],
            vec![-5.0],
            [vec![9.0], vec![1.0; 15], vec![-0.6; 16]].concat(),
            (0..32).map(|i| (i % 15) as f32 * 0.5 - 3.5).collect(),
            vec![2.0; 8],
            vec![-7.0, 7.0, -8.0, 0.5, 3.5, -3.5],
            (0..40)
                .map(|i| ((i * 37 % 23) as f32 - 11.0) * 1e-30)
                .collect(),
            (0..40)
                .map(|i| ((i * 29 % 31) as f32 - 15.0) * 2e37)
                .collect(),
        ];
        let mut bits = crate::test_rng::xorshift(0x2545_f491_4f6c_dd1d);
        let mut uniform = move || (bits() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        for len in [2usize, 5, 16, 32, 33, 64, 100] {
            for kind in 0..6 {
                let g: Vec<f32> = (0..len)
                    .map(|i| match kind {
                        // uniform; bell-shaped; a few outliers among them
                        0 | 1 => uniform(),
                        2 | 3 => uniform() + uniform() + uniform(),
                        _ => uniform() * if i % 13 == 0 { 6.0 } else { 1.0 },
                    })
                    .collect();
                groups.push(g);
            }
        }
        let mut rtn_beaten = 0;
        for group in &groups {
            let len = group.len();
            let (packed, scales) = quantize_weights_int4(group, 1, len, None).unwrap();
            let q = unpack_int4(&packed, len).unwrap();
            let s = scales[0];
            assert_eq!(s.to_bits(), refit(group, &q).to_bits(), "{group:?}");
            let chosen = sq_err(group, &q, s);
            // Slack for the f32 rounding of each refitted scale s: it adds
            // up to sum(q^2) (s 2^-24)^2, about sum(w^2) 4e-15.
            let ww: f64 = group.iter().map(|&w| w as f64 * w as f64).sum();
            let bound = |e: f64| e * (1.0 + 1e-9) + ww * 1e-12;
            let amax = group.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            for ratio in CLIP_RATIOS {
                let s0 = amax * ratio / 7.0;
                let cq: Vec<i8> = group
                    .iter()
                    .map(|&w| quantize_one(w, s0, 8.0).min(7))
                    .collect();
                let e = sq_err(group, &cq, refit(group, &cq));
                assert!(
                    chosen <= bound(e),
                    "ratio {ratio}: {chosen} > {e}, {group:?}"
                );
            }
            let rq: Vec<i8> = group
                .iter()
                .map(|&w| quantize_one(w, amax / 7.0, 7.0))
                .collect();
            let rtn = sq_err(group, &rq, amax / 7.0);
            assert!(chosen <= bound(rtn), "{chosen} > round-to-nearest {rtn}");
            rtn_beaten += usize::from(chosen < rtn * 0.999);
        }
        // The groups discriminate: the search usually beats plain rounding.
        assert!(
            rtn_beaten * 2 > groups.len(),
            "{rtn_beaten} of {}",
            groups.len()
        );
    }

    /// The search as first written: one candidate at a time, scalar rounding.
    fn reference_group_scale(group: &[f32], out: &mut [i8]) -> f32 {
        let amax = group.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        if amax == 0.0 || (amax / 7.0) == 0.0 {
            out.fill(0);
            return 0.0;
        }
        let ww: f64 = group.iter().map(|&w| w as f64 * w as f64).sum();
        let mut best = (f64::INFINITY, 0.0f32, 0.0f32);
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

    #[test]
    fn group_search_equals_the_one_candidate_at_a_time_reference() {
        let mut next = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
        for &len in &[1usize, 2, 31, 32, 33, 63, 64, 65, 128, 200, 4096] {
            for &magnitude in &[1.0f32, 1e-3, 3e4, 1e-38, 1e-44, 3e38] {
                for round in 0..8 {
                    let group: Vec<f32> = (0..len)
                        .map(|i| {
                            let r = next();
                            // Some exact ties (k / 2 times a power of two) among random values.
                            let v = if round % 2 == 0 && i % 5 == 0 {
                                ((r % 17) as f32 - 8.0) * 0.5
                            } else {
                                (r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
                            };
                            v * magnitude
                        })
                        .collect();
                    // Output buffers shorter or longer than the group, too.
                    let out_len = [len, len / 2, len + 3][round % 3];
                    let (mut a, mut b) = (vec![0i8; out_len], vec![0i8; out_len]);
                    let sa = int4_group_scale(&group, &mut a);
                    let sb = reference_group_scale(&group, &mut b);
                    assert_eq!(
                        sa.to_bits(),
                        sb.to_bits(),
                        "len {len} magnitude {magnitude}"
                    );
                    assert_eq!(a, b, "len {len} magnitude {magnitude}");
                }
            }
        }
        // Subnormal maxima: with max|w| four units in the last place, the
        // smaller clip ratios give s0 = 0 (the scalar fallback).
        let ulps = |v: &[i32]| -> Vec<f32> {
            v.iter()
                .map(|&u| f32::from_bits(u.unsigned_abs()).copysign(u as f32))
                .collect()
        };
        for group in [
            vec![0.0f32; 5],
            vec![f32::MIN_POSITIVE / 4.0; 3],
            ulps(&[1, -5, 0]),
            ulps(&[4, -1, 3, 2, -4]),
            ulps(&[4]),
        ] {
            let (mut a, mut b) = (vec![0i8; group.len()], vec![0i8; group.len()]);
            assert_eq!(
                int4_group_scale(&group, &mut a).to_bits(),
                reference_group_scale(&group, &mut b).to_bits()
            );
            assert_eq!(a, b);
        }
    }

    #[test]
    fn int8_weights_are_per_row() {
        let (q, s) = quantize_weights_int8(&[1.0, -2.0, 0.0, 0.0], 2, 2).unwrap();
        assert_eq!(q, vec![64, -127, 0, 0]);
        assert_eq!(s, vec![2.0 / 127.0, 0.0]);
    }
}
