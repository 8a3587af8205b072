//! x86-64 AVX2 bodies of the kernels in `simd`. Each `pub unsafe fn` here
//! requires only that the CPU supports AVX2 (the dispatcher checks) and that
//! paired slices have equal lengths (the dispatcher asserts); every load and
//! store below stays inside the slices by the loop bounds noted beside it.

use core::arch::x86_64::*;

use super::scalar;

const LANES: usize = 8;

/// Loads 8 floats from `x[i..i + 8]`.
///
/// # Safety
/// AVX2 available and `i + 8 <= x.len()`.
#[inline(always)]
unsafe fn load8(x: &[f32], i: usize) -> __m256 {
    debug_assert!(i + LANES <= x.len());
    _mm256_loadu_ps(x.as_ptr().add(i))
}

/// Loads 32 bytes from `x[i..i + 32]`.
///
/// # Safety
/// AVX2 available and `i + 32 <= x.len()`.
#[inline(always)]
unsafe fn load32_i8(x: &[i8], i: usize) -> __m256i {
    debug_assert!(i + 32 <= x.len());
    _mm256_loadu_si256(x.as_ptr().add(i) as *const __m256i)
}

/// Sum of the eight i32 lanes, widened so it cannot overflow.
#[inline(always)]
unsafe fn hsum_i32_to_i64(v: __m256i) -> i64 {
    let mut lanes = [0i32; 8];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, v);
    lanes.iter().map(|&l| l as i64).sum()
}

#[target_feature(enable = "avx2")]
pub unsafe fn abs_max_bits(x: &[f32]) -> u32 {
    let mask = _mm256_set1_epi32(0x7fff_ffff);
    let mut acc0 = _mm256_setzero_si256();
    let mut acc1 = _mm256_setzero_si256();
    let body = x.len() / 16 * 16;
    let mut i = 0;
    // i + 16 <= body <= len: both loads are in bounds.
    while i < body {
        let a = _mm256_castps_si256(load8(x, i));
        let b = _mm256_castps_si256(load8(x, i + 8));
        acc0 = _mm256_max_epu32(acc0, _mm256_and_si256(a, mask));
        acc1 = _mm256_max_epu32(acc1, _mm256_and_si256(b, mask));
        i += 16;
    }
    let acc = _mm256_max_epu32(acc0, acc1);
    let mut lanes = [0u32; 8];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, acc);
    let head = lanes.iter().copied().max().unwrap_or(0);
    head.max(scalar::abs_max_bits(&x[body..]))
}

/// Round half away from zero, clamp to ±clip, NaN to 0 — on 8 lanes.
///
/// `trunc` then a correction when the dropped fraction is at least 0.5 is
/// exact (the fraction `q - trunc(q)` is computed without rounding), unlike
/// `trunc(q + 0.5)`, which rounds up 0.49999997.
#[inline(always)]
unsafe fn round_clamp(q: __m256, clip: __m256, neg_clip: __m256) -> __m256i {
    let sign_mask = _mm256_set1_ps(-0.0);
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(q);
    let frac = _mm256_andnot_ps(sign_mask, _mm256_sub_ps(q, t));
    let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    let one_signed = _mm256_or_ps(_mm256_and_ps(q, sign_mask), _mm256_set1_ps(1.0));
    let r = _mm256_add_ps(t, _mm256_and_ps(up, one_signed));
    let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
    let r = _mm256_min_ps(_mm256_max_ps(r, neg_clip), clip);
    _mm256_cvttps_epi32(r)
}

#[target_feature(enable = "avx2")]
pub unsafe fn quantize(x: &[f32], scale: f32, clip: f32, out: &mut [i8]) {
    let s = _mm256_set1_ps(scale);
    let c = _mm256_set1_ps(clip);
    let nc = _mm256_set1_ps(-clip);
    // packs_epi32/packs_epi16 interleave the 128-bit lanes; this restores order.
    let unshuffle = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let body = x.len() / 32 * 32;
    let mut i = 0;
    // i + 32 <= body <= len == out.len(): loads and the store are in bounds.
    while i < body {
        let q0 = round_clamp(_mm256_div_ps(load8(x, i), s), c, nc);
        let q1 = round_clamp(_mm256_div_ps(load8(x, i + 8), s), c, nc);
        let q2 = round_clamp(_mm256_div_ps(load8(x, i + 16), s), c, nc);
        let q3 = round_clamp(_mm256_div_ps(load8(x, i + 24), s), c, nc);
        let w01 = _mm256_packs_epi32(q0, q1);
        let w23 = _mm256_packs_epi32(q2, q3);
        let b = _mm256_packs_epi16(w01, w23);
        let b = _mm256_permutevar8x32_epi32(b, unshuffle);
        _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, b);
        i += 32;
    }
    scalar::quantize(&x[body..], scale, clip, &mut out[body..]);
}

/// `sum w*a` over 32 byte pairs as eight i32 lane sums.
///
/// `maddubs` multiplies unsigned by signed bytes, so the weight's magnitude
/// goes in the unsigned operand (|-128| = 128 fits in u8) and its sign moves
/// onto the activation (|a| <= 127, so negating cannot wrap). Each i16 pair
/// sum is at most 2 * 128 * 127 = 32512: no saturation.
#[inline(always)]
unsafe fn dot32(w: __m256i, a: __m256i, ones: __m256i) -> __m256i {
    let w_abs = _mm256_abs_epi8(w);
    let a_signed = _mm256_sign_epi8(a, w);
    _mm256_madd_epi16(_mm256_maddubs_epi16(w_abs, a_signed), ones)
}

/// Blocks of at most this many 32-byte steps keep each i32 lane below
/// 2^14 * 65024 < 2^31 before it is widened.
const STEPS_PER_BLOCK: usize = 1 << 14;

#[target_feature(enable = "avx2")]
pub unsafe fn dot_i8(w: &[i8], a: &[i8]) -> i64 {
    let ones = _mm256_set1_epi16(1);
    let body = w.len() / 32 * 32;
    let mut total = 0i64;
    let mut start = 0;
    while start < body {
        let end = (start + STEPS_PER_BLOCK * 32).min(body);
        let mut acc0 = _mm256_setzero_si256();
        let mut acc1 = _mm256_setzero_si256();
        let mut i = start;
        // i + 64 <= end <= body <= len: both 32-byte loads are in bounds.
        while i + 64 <= end {
            acc0 = _mm256_add_epi32(acc0, dot32(load32_i8(w, i), load32_i8(a, i), ones));
            acc1 = _mm256_add_epi32(
                acc1,
                dot32(load32_i8(w, i + 32), load32_i8(a, i + 32), ones),
            );
            i += 64;
        }
        if i < end {
            // One 32-byte step left (end - i == 32).
            acc0 = _mm256_add_epi32(acc0, dot32(load32_i8(w, i), load32_i8(a, i), ones));
        }
        total += hsum_i32_to_i64(_mm256_add_epi32(acc0, acc1));
        start = end;
    }
    total + scalar::dot_i8(&w[body..], &a[body..])
}
