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

/// One value exactly as the reference quantizes it.
#[inline]
pub fn quantize_one(x: f32, scale: f32, clip: f32) -> i8 {
    // `as i8` maps NaN to 0, as the reference does.
    (x / scale).round().clamp(-clip, clip) as i8
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

/// Signed value of int4 column `col` of a packed row (low nibble = even
/// column, high nibble = odd column, two's complement).
#[inline]
pub fn int4_at(packed: &[u8], col: usize) -> i8 {
    let byte = packed[col / 2];
    let nibble = if col % 2 == 0 { byte & 0x0f } else { byte >> 4 };
    ((nibble ^ 8) as i8) - 8
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
    core::array::from_fn(|r| {
        core::array::from_fn(|t| {
            let mut y = 0.0f32;
            for g in 0..k.div_ceil(group) {
                let cols = g * group..((g + 1) * group).min(k);
                let acc: i64 = cols.map(|c| int4_at(w[r], c) as i64 * a[t][c] as i64).sum();
                let p = acc as f32 * ws[r][g];
                y = if g == 0 { p } else { y + p };
            }
            y
        })
    })
}
