//! Weight quantizers (int8 per output row; int4 per row or per group, packed
//! two to a byte) and the int4 packing itself.
//!
//! Packed int4 layout: each row of `in` columns takes `ceil(in / 2)` bytes.
//! Columns go in blocks: of 256 while they last, then at most one of 128,
//! at most one of 64, and a last block of fewer than 64 ([`int4_blocks`]).
//! A block of `B` columns (256, 128 or 64) takes `B / 2` bytes at byte
//! `c0 / 2` (`c0` its first column), in `B / 64` chunks of 32 bytes; it is
//! eight *lanes* of `B / 8` consecutive columns each, lane `l` holding
//! columns `c0 + (B / 8) * l ..`. Byte `32i + 4l + j` (chunk `i`, lane `l`,
//! `j` in 0..4) holds column `c0 + (B / 8) * l + 8i + j` in its low nibble
//! and column `c0 + (B / 8) * l + 8i + 4 + j` in its high nibble. So a
//! 32-byte load yields 64 weights with two instructions, and every 4-byte
//! lane of it belongs to one span of `B / 8` columns: in a block of 256,
//! lane `l` is group `l` of 32, and the kernels sum a group in its own i32
//! lane, without horizontal adds. The last block of `r < 64` columns uses
//! `h = ceil(r / 2)` bytes: byte `j` holds columns `j` (low) and `j + h`
//! (high) of the block. Each nibble stores `value + 8` (offset binary, 0..15
//! for -8..7); an unused high nibble stores 8 (the value 0).

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

/// The blocks of a packed row of `cols` columns (see the module doc), as
/// `(first column, width)`: widths 256, then [`int4_tail_blocks`].
pub fn int4_blocks(cols: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..cols / 256)
        .map(|b| (256 * b, 256))
        .chain(int4_tail_blocks(cols).into_iter().flatten())
}

/// The blocks after a row's last whole block of 256 columns: at most one of
/// 128, at most one of 64, and a last one of fewer than 64, in that order.
#[inline]
pub fn int4_tail_blocks(cols: usize) -> [Option<(usize, usize)>; 3] {
    let mut start = cols / 256 * 256;
    let mut tail = [None; 3];
    for (slot, width) in tail.iter_mut().zip([128, 64]) {
        if start + width <= cols {
            *slot = Some((start, width));
            start += width;
        }
    }
    if start < cols {
        tail[2] = Some((start, cols - start));
    }
    tail
}

/// The block (first column, width) holding column `col < cols`; for
/// `col == cols` (the unused nibble of an odd row) the last block.
fn int4_block_of(cols: usize, col: usize) -> (usize, usize) {
    let start = col / 256 * 256;
    if start + 256 <= cols {
        return (start, 256);
    }
    let mut tail = int4_tail_blocks(cols).into_iter().flatten();
    let mut block = tail.next().expect("a column past the whole blocks");
    while col >= block.0 + block.1 {
        match tail.next() {
            Some(next) => block = next,
            None => break,
        }
    }
    block
}

/// Byte index and nibble shift of column `col` in a packed row of `cols`
/// columns (see the module doc).
#[inline]
pub fn int4_position(cols: usize, col: usize) -> (usize, u32) {
    let (c0, width) = int4_block_of(cols, col);
    let off = col - c0;
    if width >= 64 {
        let span = width / 8;
        let (lane, at) = (off / span, off % span);
        (
            c0 / 2 + 32 * (at / 8) + 4 * lane + at % 4,
            4 * ((at / 4) % 2) as u32,
        )
    } else {
        let half = width.div_ceil(2);
        if off < half {
            (c0 / 2 + off, 0)
        } else {
            (c0 / 2 + off - half, 4)
        }
    }
}

/// Activations in the packed order of the weights (`a.len() % 64 == 0`):
/// `out[64 * (byte / 32) + 32 * high + byte % 32]` is the activation of the
/// column whose weight is at that byte (and nibble, `high` 0 or 1) of a
/// packed row. So the SIMD kernels multiply the 32 low (high) nibbles of
/// packed bytes `32i ..` with the 32 activations at `64i` (`64i + 32`).
/// Lanes of four columns move together (one 4-byte copy each).
pub fn int4_packed_order(a: &[i8], out: &mut [i8]) {
    assert!(
        a.len().is_multiple_of(64) && out.len() == a.len(),
        "int4_packed_order: {} activations into {}",
        a.len(),
        out.len()
    );
    for (c0, width) in int4_blocks(a.len()) {
        let span = width / 8;
        for i in 0..width / 64 {
            for high in 0..2 {
                for lane in 0..8 {
                    let from = c0 + span * lane + 8 * i + 4 * high;
                    let to = c0 + 64 * i + 32 * high + 4 * lane;
                    out[to..to + 4].copy_from_slice(&a[from..from + 4]);
                }
            }
        }
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
    // One position per column (no table for rows that do not exist).
    let positions = if rows > 0 {
        int4_positions(cols)
    } else {
        Vec::new()
    };
    // With no columns there are no values (whole_rows): max(1) only keeps
    // chunks() from panicking.
    for (row, out) in values
        .chunks(cols.max(1))
        .zip(packed.chunks_mut(row_bytes.max(1)))
    {
        // An unused last high nibble keeps 8 (the value 0).
        out.fill(0x88);
        for ((byte, shift), &v) in positions.iter().zip(row) {
            let b = &mut out[*byte as usize];
            *b = (*b & !(0x0f << shift)) | (nibble(v) << shift);
        }
    }
    Ok(packed)
}

/// [`int4_position`] of every column of a row (byte as u32: rows hold
/// fewer than 2^32 bytes wherever a table of them fits in memory).
fn int4_positions(cols: usize) -> Vec<(u32, u32)> {
    (0..cols)
        .map(|c| {
            let (byte, shift) = int4_position(cols, c);
            (byte as u32, shift)
        })
        .collect()
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
    let positions = if rows > 0 {
        int4_positions(cols)
    } else {
        Vec::new()
    };
    for (row, out) in packed
        .chunks(row_bytes.max(1))
        .zip(values.chunks_mut(cols.max(1)))
    {
        for ((byte, shift), v) in positions.iter().zip(out.iter_mut()) {
            *v = value(row[*byte as usize] >> shift);
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
        // A block of 64: lanes of 8 columns; byte 4l + j holds columns
        // 8l + j and 8l + 4 + j. Column 0 is -8 (nibble 0), column 4 is -4
        // (nibble 4), columns 1 and 5 are nibbles 1 and 5; byte 4 (lane 1)
        // holds columns 8 and 12.
        assert_eq!(&p[..2], &[0x40, 0x51]);
        assert_eq!(p[4], 0xc8);

        assert!(pack_int4(&[8], 1).is_err());
    }

    #[test]
    fn blocks_cover_each_row_in_the_documented_order() {
        for cols in 0..=1100usize {
            let blocks: Vec<_> = int4_blocks(cols).collect();
            let mut next = 0;
            for (i, &(c0, width)) in blocks.iter().enumerate() {
                assert_eq!(c0, next, "cols {cols}");
                let rest = blocks.len() - i;
                match width {
                    256 => assert!(c0 + 256 <= cols / 256 * 256),
                    128 => assert!(c0 == cols / 256 * 256 && rest <= 3),
                    64 => assert!(cols - c0 < 128 && rest <= 2),
                    _ => assert!(width < 64 && width > 0 && rest == 1, "cols {cols}"),
                }
                for col in c0..c0 + width {
                    assert_eq!(
                        int4_block_of(cols, col),
                        (c0, width),
                        "cols {cols} col {col}"
                    );
                }
                next += width;
            }
            assert_eq!(next, cols);
        }
    }

    #[test]
    fn a_block_of_256_keeps_each_group_of_32_in_its_own_lane() {
        for cols in [512usize, 700, 1024] {
            for col in 0..256 {
                let (lane, at) = (col / 32, col % 32);
                let byte = 32 * (at / 8) + 4 * lane + at % 4;
                let shift = 4 * ((at / 4) % 2) as u32;
                assert_eq!(
                    int4_position(cols, 256 + col),
                    (128 + byte, shift),
                    "col {col}"
                );
            }
        }
    }

    #[test]
    fn packed_order_puts_each_activation_at_its_weight() {
        for cols in (64..=1600usize).step_by(64) {
            let a: Vec<i8> = (0..cols).map(|c| (c * 37 % 251) as i8).collect();
            let mut out = vec![0i8; cols];
            int4_packed_order(&a, &mut out);
            for (col, &v) in a.iter().enumerate() {
                let (byte, shift) = int4_position(cols, col);
                let at = 64 * (byte / 32) + 8 * shift as usize + byte % 32;
                assert_eq!(out[at], v, "cols {cols} col {col}");
            }
        }
    }

    #[test]
    fn packing_puts_every_column_where_int4_position_says() {
        let wide = [
            255usize, 256, 257, 319, 320, 383, 384, 385, 448, 449, 511, 512, 640, 700,
        ];
        for cols in (1..=200usize).chain(wide) {
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
