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
