//! The scalar kernels: plain Rust, the definition every SIMD path must match.

/// Bit pattern of `+inf`; abs-bits above it are NaN.
pub const INF_BITS: u32 = 0x7f80_0000;

/// See [`super::abs_max_bits`].
pub fn abs_max_bits(x: &[f32]) -> u32 {
    x.iter()
        .map(|v| v.to_bits() & 0x7fff_ffff)
        .max()
        .unwrap_or(0)
}

/// `f32::round` (half away from zero) without a libm call: baseline x86-64
/// has no rounding instruction, and `roundf` dominated the scalar paths.
/// Equal to `x.round()` for every input, up to the sign of a zero result.
#[inline]
#[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(a < b)` is true for NaN, on purpose
pub fn round_half_away(x: f32) -> f32 {
    // |x| >= 2^23 is already an integer; NaN and ±inf pass through.
    if x.is_nan() || x.abs() >= 8_388_608.0 {
        return x;
    }
    let t = x as i32 as f32; // truncation, exact below 2^23
    let frac = x - t; // exact: x and t share sign and exponent range
    if frac >= 0.5 {
        t + 1.0
    } else if frac <= -0.5 {
        t - 1.0
    } else {
        t
    }
}

/// One value exactly as the reference quantizes it:
/// `(x / scale).round().clamp(-clip, clip) as i8`.
#[inline]
pub fn quantize_one(x: f32, scale: f32, clip: f32) -> i8 {
    // `as i8` maps NaN to 0, as the reference does.
    round_half_away(x / scale).clamp(-clip, clip) as i8
}

/// See [`super::quantize`].
pub fn quantize(x: &[f32], scale: f32, clip: f32, out: &mut [i8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = quantize_one(v, scale, clip);
    }
}

/// See [`super::dot_i8`].
pub fn dot_i8(w: &[i8], a: &[i8]) -> i64 {
    w.iter().zip(a).map(|(&w, &a)| w as i64 * a as i64).sum()
}

/// See [`super::dot_tile`].
pub fn dot_tile<const R: usize, const T: usize>(w: &[&[i8]; R], a: &[&[i8]; T]) -> [[i64; T]; R] {
    core::array::from_fn(|r| core::array::from_fn(|t| dot_i8(w[r], a[t])))
}

/// The dequantization of [`super::w8a8_tile`] from exact sums `acc[r][t]`.
pub fn w8a8_tile<const T: usize>(
    acc: &[[i64; T]; 2],
    ws: [f32; 2],
    ts: [f32; T],
    bias: Option<[f32; 2]>,
) -> [[f32; 2]; T] {
    core::array::from_fn(|t| {
        core::array::from_fn(|r| {
            let v = (acc[r][t] as f32 * ws[r]) * ts[t];
            match bias {
                Some(b) => v + b[r],
                None => v,
            }
        })
    })
}

/// Whether `maddubs` of any two unsigned bytes by the weight pair `(a, b)`
/// stays within i16: its positive values sum to at most 128, its negative
/// ones to at least -128 (see [`super::split_pair_safe`]).
#[inline]
pub fn is_pair_safe(a: i8, b: i8) -> bool {
    let (a, b) = (a as i32, b as i32);
    a.max(0) + b.max(0) <= 128 && a.min(0) + b.min(0) >= -128
}

/// See [`super::split_pair_safe`].
pub fn split_pair_safe(
    w: &[i8],
    clip: &mut [i8],
    cols: &mut [u32],
    vals: &mut [i8],
) -> (i32, usize) {
    let mut sum = 0i32;
    let mut count = 0;
    for (i, (pair, safe)) in w.chunks_exact(2).zip(clip.chunks_exact_mut(2)).enumerate() {
        let (a, b) = (pair[0] as i32, pair[1] as i32);
        let b_safe = if is_pair_safe(pair[0], pair[1]) {
            b
        } else if a > 0 {
            128 - a // both positive
        } else {
            -128 - a // both negative
        };
        if b_safe != b {
            // b - b_safe is a + b - 128 in 1..=126 or a + b + 128 in -128..=-1.
            cols[count] = (2 * i + 1) as u32;
            vals[count] = (b - b_safe) as i8;
            count += 1;
        }
        safe[0] = pair[0];
        safe[1] = b_safe as i8;
        sum += a + b_safe;
    }
    (sum, count)
}

/// See [`super::sum_i8`].
pub fn sum_i8(w: &[i8]) -> i64 {
    w.iter().map(|&v| v as i64).sum()
}

/// See [`super::add_residual_products`].
pub fn add_residual_products(
    acc: &mut [i32],
    cols: &[u32],
    vals: &[i8],
    qt: &[i8],
    m: usize,
    first: usize,
) {
    for (&col, &val) in cols.iter().zip(vals) {
        let column = &qt[col as usize * m + first..][..acc.len()];
        for (a, &q) in acc.iter_mut().zip(column) {
            *a = a.wrapping_add(val as i32 * q as i32);
        }
    }
}

/// See [`super::w8a8_row_pairs_offset`]: one pair of rows, exactly as the
/// AVX2 body computes it, but in i64 and then wrapped to i32.
pub fn w8a8_pair_offset<const T: usize>(
    clip: &[&[i8]; 2],
    u: &[&[i8]; T],
    extra: &[[i32; 2]; T],
    ws: [f32; 2],
    ts: [f32; T],
    bias: Option<[f32; 2]>,
) -> [[f32; 2]; T] {
    let body = u.first().map_or(0, |row| row.len()) / 32 * 32;
    let acc: [[i64; T]; 2] = core::array::from_fn(|r| {
        core::array::from_fn(|t| {
            let sum: i64 = clip[r][..body]
                .iter()
                .zip(&u[t][..body])
                .map(|(&s, &u)| s as i64 * (u as u8) as i64)
                .sum();
            // The true total fits in i32; the parts are only known mod 2^32.
            (sum + extra[t][r] as i64) as i32 as i64
        })
    });
    w8a8_tile(&acc, ws, ts, bias)
}

/// Signed value of int4 column `col` of a packed row of `cols` columns
/// (layout in [`crate::weights`]).
#[inline]
pub fn int4_at(packed: &[u8], cols: usize, col: usize) -> i8 {
    let (byte, shift) = crate::weights::int4_position(cols, col);
    ((packed[byte] >> shift) & 0x0f) as i8 - 8
}

/// The fixed-order sum of the eight W4A8 lanes:
/// `((y0 + y4) + (y2 + y6)) + ((y1 + y5) + (y3 + y7))`.
#[inline]
pub fn lane_sum(y: &[f32; 8]) -> f32 {
    ((y[0] + y[4]) + (y[2] + y[6])) + ((y[1] + y[5]) + (y[3] + y[7]))
}

/// See [`super::w4a8_tile`].
#[allow(clippy::needless_range_loop)] // group g indexes scales and columns
pub fn w4a8_tile<const R: usize, const T: usize>(
    w: &[&[u8]; R],
    ws: &[&[f32]; R],
    a: &[&[i8]; T],
    group: usize,
) -> [[f32; T]; R] {
    let k = a.first().map_or(0, |row| row.len());
    let groups = k.div_ceil(group);
    core::array::from_fn(|r| {
        core::array::from_fn(|t| {
            // -0.0 + p == p: the same as starting a lane with its first product.
            let mut y = [-0.0f32; 8];
            for g in 0..groups {
                let exact: i64 = (g * group..((g + 1) * group).min(k))
                    .map(|c| int4_at(w[r], k, c) as i64 * a[t][c] as i64)
                    .sum();
                y[g % 8] += exact as f32 * ws[r][g];
            }
            lane_sum(&y)
        })
    })
}

/// The broadcast panel kernel's definition ([`super::panel_w8a8`]): for
/// each token `t` and each of the panel's 64 rows `r`, the wrapping i32 sum
/// over `k4` steps of `u[t][4s + j] * panel[(s * 64 + r) * 4 + j]` (`u`
/// unsigned, the panel signed), less `finish.offsets[r]`, then
/// `(acc as f32 * weight_scales[r]) * token_scales[t] (+ bias[r])` — the
/// W8A8 formula ([`crate::matmul`]'s dequantization) on the exact sum,
/// into `out[t][r]` for the rows `r < out[t].len()`.
pub fn panel_w8a8<const MR: usize>(
    panel: &[i8],
    k4: usize,
    u: &[&[u8]; MR],
    finish: &super::PanelFinish<'_>,
    token_scales: &[f32; MR],
    out: &mut [&mut [f32]; MR],
) {
    for (t, row) in out.iter_mut().enumerate() {
        for (r, y) in row.iter_mut().enumerate() {
            let mut acc = 0i32;
            for s in 0..k4 {
                for j in 0..4 {
                    let p = i32::from(u[t][4 * s + j]) * i32::from(panel[(s * 64 + r) * 4 + j]);
                    acc = acc.wrapping_add(p);
                }
            }
            let exact = acc.wrapping_sub(finish.offsets[r]);
            let v = (exact as f32 * finish.weight_scales[r]) * token_scales[t];
            *y = match finish.bias {
                Some(b) => v + b[r],
                None => v,
            };
        }
    }
}

/// See [`super::panel_w4a8`]: the W4A8 definition ([`super::w4a8_tile`]) on
/// a 16-row int4 panel, in plain loops.
#[allow(clippy::needless_range_loop)] // r, t index several arrays
pub fn panel_w4a8<const T: usize>(
    w: &[u32],
    ws: &[f32],
    a: &[&[i8]; T],
    a_sums: &[&[i32]; T],
    octets_per_group: usize,
) -> [[f32; 16]; T] {
    let groups = ws.len() / 16;
    let mut out = [[0.0f32; 16]; T];
    for t in 0..T {
        for r in 0..16 {
            let mut y = [-0.0f32; 8];
            for g in 0..groups {
                let mut p = 0i32;
                for o in g * octets_per_group..(g + 1) * octets_per_group {
                    let word = w[16 * o + r];
                    for j in 0..4 {
                        let lo = ((word >> (8 * j)) & 0x0F) as i32;
                        let hi = ((word >> (8 * j + 4)) & 0x0F) as i32;
                        p = p.wrapping_add(lo * a[t][8 * o + j] as i32);
                        p = p.wrapping_add(hi * a[t][8 * o + 4 + j] as i32);
                    }
                }
                let exact = p.wrapping_sub(a_sums[t][g]);
                y[g % 8] += exact as f32 * ws[16 * g + r];
            }
            out[t][r] = lane_sum(&y);
        }
    }
    out
}

/// See [`super::transpose_rows_of_words`]: words `from ..` of each row.
pub fn transpose_rows_of_words(rows: &[&[u8]; 16], from: usize, dest: &[u32], out: &mut [u32]) {
    for (i, row) in rows.iter().enumerate() {
        for (w, &d) in dest.iter().enumerate().skip(from) {
            let b = &row[4 * w..4 * w + 4];
            out[16 * d as usize + i] = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_half_away_equals_f32_round() {
        let special = [
            0.5f32, -0.5, 1.5, -2.5, 0.49999997, 8388607.5, 8388608.0, -0.0, 1e30,
        ];
        let strided = (0..(1u32 << 20)).map(|i| f32::from_bits(i.wrapping_mul(4093)));
        for x in special.into_iter().chain(strided) {
            let (a, b) = (round_half_away(x), x.round());
            assert!(a == b || (a.is_nan() && b.is_nan()), "{x}: {a} vs {b}");
        }
    }
}
