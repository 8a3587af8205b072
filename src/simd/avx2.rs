//! x86-64 AVX2 bodies of the kernels in `simd`. Each `pub unsafe fn` here
//! requires only that the CPU supports AVX2 (the dispatcher checks) and that
//! paired slices have equal lengths (the dispatcher asserts); every load and
//! store below stays inside the slices by the loop bounds noted beside it.

use core::arch::x86_64::*;

use super::{scalar, EXACT_I32_TOTAL};

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
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(q);
    let frac = _mm256_andnot_ps(_mm256_set1_ps(-0.0), _mm256_sub_ps(q, t));
    finish_round(q, t, frac, clip, neg_clip)
}

/// Round half away from zero given `t = trunc(q)` and `frac = |q - t|`,
/// then NaN to 0 and clamp to ±clip, as i32 lanes.
#[inline(always)]
unsafe fn finish_round(
    q: __m256,
    t: __m256,
    frac: __m256,
    clip: __m256,
    neg_clip: __m256,
) -> __m256i {
    let sign_mask = _mm256_set1_ps(-0.0);
    let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, _mm256_set1_ps(0.5));
    let one_signed = _mm256_or_ps(_mm256_and_ps(q, sign_mask), _mm256_set1_ps(1.0));
    let r = _mm256_add_ps(t, _mm256_and_ps(up, one_signed));
    let r = _mm256_and_ps(r, _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
    _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(r, neg_clip), clip))
}

/// `clamp(round(x / scale))` on 4 × 8 lanes, bit-exact, usually without
/// dividing — except that the lower clamp is left to the caller: a lane
/// below `-clip` may come out as any value from `i32::MIN` to `-clip` (the
/// caller's saturating packs and `max` by `-clip` finish it).
///
/// `q = x * (1 / scale)` is within `|x / scale| * 2^-23` of the true
/// quotient, so less than 2^-15 from it while |quotient| < 256 (larger ones
/// clamp to ±clip either way). When `q` is within `0.5 - 2^-15` of its
/// nearest integer `n`, the true quotient is within 0.5 of `n`, so it rounds
/// to `n` under any tie rule: `n` is the answer. Otherwise (a tie or near
/// one, or a NaN, in any of the 32 lanes) all lanes are divided for real,
/// rounded half away from zero, NaN to 0. Needs `recip = 1 / scale` with
/// both normal (the caller checks).
#[inline(always)]
unsafe fn quantize32(
    x: [__m256; 4],
    s: __m256,
    recip: __m256,
    clip: __m256,
    neg_clip: __m256,
) -> [__m256i; 4] {
    let abs = _mm256_set1_ps(-0.0);
    let limit = _mm256_set1_ps(0.5 - 1.0 / 32768.0);
    // Plain loops, not `array::map`: a generic std function might not be
    // inlined into this AVX2 code (it is not, in cargo's default release
    // profile), and calling it per vector made quantizing ~18 times slower.
    let mut q = [_mm256_setzero_ps(); 4];
    let mut n = [_mm256_setzero_ps(); 4];
    let mut near = _mm256_setzero_ps();
    for i in 0..4 {
        q[i] = _mm256_mul_ps(x[i], recip);
        n[i] = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(q[i]);
        let distance = _mm256_andnot_ps(abs, _mm256_sub_ps(q[i], n[i]));
        // Not less than the limit, or unordered: NaN lanes take the
        // dividing path too, so the fast one needs no NaN mask.
        near = _mm256_or_ps(near, _mm256_cmp_ps::<_CMP_NLT_UQ>(distance, limit));
    }
    let mut out = [_mm256_setzero_si256(); 4];
    if _mm256_movemask_ps(near) != 0 {
        for i in 0..4 {
            out[i] = round_clamp(_mm256_div_ps(x[i], s), clip, neg_clip);
        }
        return out;
    }
    for i in 0..4 {
        // n is an integer; below -2^31 the conversion gives i32::MIN.
        out[i] = _mm256_cvttps_epi32(_mm256_min_ps(n[i], clip));
    }
    out
}

/// With `stream`, the output is written with streaming stores (for outputs
/// too large to stay in cache: skipping the read-for-ownership of the
/// destination saves a sixth of the memory traffic).
#[target_feature(enable = "avx2")]
pub unsafe fn quantize(x: &[f32], scale: f32, clip: f32, out: &mut [i8], stream: bool) {
    let recip = 1.0 / scale;
    if !(scale.is_normal() && recip.is_normal()) {
        return quantize_dividing(x, scale, clip, out);
    }
    let s = _mm256_set1_ps(scale);
    let r = _mm256_set1_ps(recip);
    let c = _mm256_set1_ps(clip);
    let nc = _mm256_set1_ps(-clip);
    // packs_epi32/packs_epi16 interleave the 128-bit lanes; this restores order.
    let unshuffle = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    // The lower clamp, after the saturating packs (clip is within 0..=127,
    // and an integer's clamp by -clip is its clamp by -floor(clip)).
    let lowest = _mm256_set1_epi8(-(clip as i8));
    // Streaming stores need 32-byte alignment: the head up to it goes scalar.
    let head = if stream {
        out.as_ptr().align_offset(32).min(out.len())
    } else {
        0
    };
    scalar::quantize(&x[..head], scale, clip, &mut out[..head]);
    let body = head + (x.len() - head) / 32 * 32;
    let mut i = head;
    // i + 32 <= body <= len == out.len(): loads and the store are in bounds;
    // with `stream`, out + i is 32-byte aligned (head aligned it, steps of 32).
    while i < body {
        let v = [
            load8(x, i),
            load8(x, i + 8),
            load8(x, i + 16),
            load8(x, i + 24),
        ];
        let [q0, q1, q2, q3] = quantize32(v, s, r, c, nc);
        let w01 = _mm256_packs_epi32(q0, q1);
        let w23 = _mm256_packs_epi32(q2, q3);
        let b = _mm256_max_epi8(_mm256_packs_epi16(w01, w23), lowest);
        let b = _mm256_permutevar8x32_epi32(b, unshuffle);
        let dst = out.as_mut_ptr().add(i) as *mut __m256i;
        if stream {
            _mm256_stream_si256(dst, b);
        } else {
            _mm256_storeu_si256(dst, b);
        }
        i += 32;
    }
    if stream {
        // Streaming stores are weakly ordered: make them visible before the
        // caller (or another thread, after rayon's join) reads `out`.
        _mm_sfence();
    }
    scalar::quantize(&x[body..], scale, clip, &mut out[body..]);
}

/// [`quantize`] with a true division per lane (subnormal scales, whose
/// reciprocal overflows or loses precision).
#[target_feature(enable = "avx2")]
unsafe fn quantize_dividing(x: &[f32], scale: f32, clip: f32, out: &mut [i8]) {
    let s = _mm256_set1_ps(scale);
    let c = _mm256_set1_ps(clip);
    let nc = _mm256_set1_ps(-clip);
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
        let b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), unshuffle);
        _mm256_storeu_si256(out.as_mut_ptr().add(i) as *mut __m256i, b);
        i += 32;
    }
    scalar::quantize(&x[body..], scale, clip, &mut out[body..]);
}

/// How the int8 dot kernels multiply and accumulate: `acc` plus, in each
/// i32 lane, the sum of its four products `u[i] * s[i]` (bytes, `u`
/// unsigned, `s` signed), exactly, wrapping in i32. Every implementation is
/// exact for `u` at most 128 and `s` within ±127 (the sign form of
/// [`dot32`]); those with [`MulAdd::FULL_U8`] for every `u8` and `i8`.
///
/// The kernels are generic over it and compiled once per instruction set
/// (the `int8_dot_paths!` macro below); the implementations differ only here.
pub(super) trait MulAdd: Copy {
    /// Exact for every `u` in 0..=255 and `s` in -128..=127, so the tile
    /// kernels may use the offset form ([`offset_sums`]) instead of the
    /// sign form, which costs two more instructions per weight vector.
    const FULL_U8: bool;

    /// # Safety
    /// The CPU supports the implementation's instructions.
    unsafe fn mul_add(self, acc: __m256i, u: __m256i, s: __m256i) -> __m256i;
}

/// AVX2: `maddubs` (u8 x s8 pairs into i16; each pair sum is at most
/// 2 * 128 * 127 = 32512, so it never saturates), `madd` by ones (pairs of
/// i16 into i32), then `add`.
#[derive(Clone, Copy)]
pub(super) struct Maddubs {
    ones: __m256i,
}

impl Maddubs {
    /// # Safety
    /// AVX2 available.
    #[inline(always)]
    pub(super) unsafe fn new() -> Self {
        Maddubs {
            ones: _mm256_set1_epi16(1),
        }
    }
}

impl MulAdd for Maddubs {
    // maddubs saturates its i16 pair sums beyond 2 * 128 * 127.
    const FULL_U8: bool = false;

    #[inline(always)]
    unsafe fn mul_add(self, acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_add_epi32(
            acc,
            _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), self.ones),
        )
    }
}

/// AVX-VNNI (VEX `vpdpbusd`): the four products summed into the i32 lane in
/// one instruction, without intermediate saturation (the non-saturating
/// form wraps in i32, as the trait's contract says).
#[derive(Clone, Copy)]
pub(super) struct AvxVnni;

impl MulAdd for AvxVnni {
    const FULL_U8: bool = true;

    #[inline(always)]
    unsafe fn mul_add(self, acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_avx_epi32(acc, u, s)
    }
}

/// AVX512-VNNI with AVX512VL (the EVEX form of `vpdpbusd` on 256-bit
/// registers): the same operation as [`AvxVnni`].
#[derive(Clone, Copy)]
pub(super) struct Avx512Vnni;

impl MulAdd for Avx512Vnni {
    const FULL_U8: bool = true;

    #[inline(always)]
    unsafe fn mul_add(self, acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(acc, u, s)
    }
}

/// `acc` plus `sum w*a` over 32 byte pairs, as eight i32 lane sums.
///
/// The multiply takes unsigned by signed bytes, so the weight's magnitude
/// goes in the unsigned operand (|-128| = 128 fits in u8) and its sign moves
/// onto the activation (|a| <= 127, so negating cannot wrap).
#[inline(always)]
unsafe fn dot32<M: MulAdd>(mul: M, acc: __m256i, w: __m256i, a: __m256i) -> __m256i {
    mul.mul_add(acc, _mm256_abs_epi8(w), _mm256_sign_epi8(a, w))
}

/// Blocks of at most this many 32-byte steps keep each i32 lane below
/// 2^31 before it is widened: a step adds at most 4 * 128 * 127 = 65024 to a
/// lane in the sign form, and 4 * 255 * 128 = 130560 in the offset form
/// (2^14 * 130560 < 2^31; its corrected sums are bounded as the sign form's).
const STEPS_PER_BLOCK: usize = 1 << 14;

/// Body of the `dot_i8` kernels: exact `sum w[i] * a[i]` (`a` without -128).
///
/// # Safety
/// The CPU supports AVX2 and `M`'s instructions; `w.len() == a.len()`.
#[inline(always)]
unsafe fn dot_i8_with<M: MulAdd>(mul: M, w: &[i8], a: &[i8]) -> i64 {
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
            acc0 = dot32(mul, acc0, load32_i8(w, i), load32_i8(a, i));
            acc1 = dot32(mul, acc1, load32_i8(w, i + 32), load32_i8(a, i + 32));
            i += 64;
        }
        if i < end {
            // One 32-byte step left (end - i == 32).
            acc0 = dot32(mul, acc0, load32_i8(w, i), load32_i8(a, i));
        }
        total += hsum_i32_to_i64(_mm256_add_epi32(acc0, acc1));
        start = end;
    }
    total + scalar::dot_i8(&w[body..], &a[body..])
}

/// i32 lane sums of `w[r][i] * a[t][i]` over `i` in `start..end` (32-byte
/// steps) for every row `r` and token `t`: each weight vector is loaded
/// once for all `T` tokens, each token vector once for all `R` rows. The
/// sign form ([`dot32`]) makes each weight vector absolute once; a `FULL_U8`
/// multiply-add takes the offset form ([`offset_sums`]) instead.
///
/// # Safety
/// The CPU supports AVX2 and `M`'s instructions; `start` and `end` multiples of 32 with `end` at most
/// every row's length (so every load is in bounds); `a` holds no -128; at
/// most [`STEPS_PER_BLOCK`] steps, so no lane overflows.
#[allow(clippy::needless_range_loop)] // r, t index several parallel arrays
#[inline(always)]
unsafe fn tile_sums<M: MulAdd, const R: usize, const T: usize>(
    mul: M,
    w: &[&[i8]; R],
    a: &[&[i8]; T],
    start: usize,
    end: usize,
) -> [[__m256i; T]; R] {
    if M::FULL_U8 {
        // Offset whichever side has more vectors per step: one `xor` each,
        // and one extra multiply-add per vector of the other side.
        if T >= R {
            return offset_sums(mul, w, a, start, end, false);
        }
        let by_token = offset_sums(mul, a, w, start, end, T == 1);
        let mut acc = [[_mm256_setzero_si256(); T]; R];
        for r in 0..R {
            for t in 0..T {
                acc[r][t] = by_token[t][r];
            }
        }
        return acc;
    }
    let mut acc = [[_mm256_setzero_si256(); T]; R];
    let mut i = start;
    while i < end {
        // A loop, not `array::from_fn` (see `quantize32`).
        let mut av = [_mm256_setzero_si256(); T];
        for t in 0..T {
            av[t] = load32_i8(a[t], i);
        }
        if T >= 2 && i.is_multiple_of(64) {
            // The next tile's rows (`R` rows on, as the GEMM lays them
            // out), one line ahead per row: for a few tokens the weights
            // stream from L3 or memory faster than the hardware prefetcher
            // alone brings them (0.82 of the time at 8 tokens x 11008 x
            // 4096, 0.97 at 4096 x 4096). A prefetch never faults, so an
            // address past the matrix is harmless (`wrapping_add`: no
            // out-of-bounds pointer arithmetic).
            for r in 0..R {
                let ahead = w[r].as_ptr().wrapping_add(i + R * w[r].len());
                _mm_prefetch::<_MM_HINT_T0>(ahead);
            }
        } else if T == 1 && i.is_multiple_of(64) {
            prefetch_next_rows_into_l2(w, i);
        }
        for r in 0..R {
            let wv = load32_i8(w[r], i);
            let w_abs = _mm256_abs_epi8(wv);
            for t in 0..T {
                acc[r][t] = mul.mul_add(acc[r][t], w_abs, _mm256_sign_epi8(av[t], wv));
            }
        }
        i += 32;
    }
    acc
}

/// Prefetches column `i` of the `R` rows after `rows` (as the GEMM lays
/// them out, `R` rows on) into L2, for one token, whose weights stream from
/// memory: into L1 (`_MM_HINT_T0`) the next rows would share the L1 sets of
/// this tile's rows (rows 4096 bytes apart alias) and evict them.
#[inline(always)]
unsafe fn prefetch_next_rows_into_l2<const R: usize>(rows: &[&[i8]; R], i: usize) {
    for row in rows {
        // A prefetch never faults, so an address past the matrix is
        // harmless (`wrapping_add`: no out-of-bounds pointer arithmetic).
        let ahead = row.as_ptr().wrapping_add(i + R * row.len());
        _mm_prefetch::<_MM_HINT_T1>(ahead);
    }
}

/// i32 lane sums of `x[r][i] * y[j][i]` over `i` in `start..end` (32-byte
/// steps) for every `r` and `j`, in the offset form: any int8 on either
/// side, for a [`MulAdd`] with [`MulAdd::FULL_U8`].
///
/// `y + 128` (its bits with the top one flipped) is an unsigned byte in
/// 0..=255, so `sum x * y = sum x * (y + 128) - 128 * sum x`, lane by lane;
/// the `x` sums come from one more multiply-add by ones per `x` vector. The
/// sign form needs an `abs` per `x` vector and a `sign` per product instead.
/// Every lane and its correction stay within i32 for a block of at most
/// [`STEPS_PER_BLOCK`] steps, and the instructions wrap anyway.
///
/// With `prefetch_y` (one token against weight rows `y`), the `Y` rows after
/// `y` are prefetched into L2 as it goes ([`prefetch_next_rows_into_l2`]).
///
/// # Safety
/// The CPU supports AVX2 and `M`'s instructions; `M::FULL_U8`; `start` and
/// `end` multiples of 32 with `end` at most every row's length; at most
/// [`STEPS_PER_BLOCK`] steps.
#[allow(clippy::needless_range_loop)] // r, j index several parallel arrays
#[inline(always)]
unsafe fn offset_sums<M: MulAdd, const X: usize, const Y: usize>(
    mul: M,
    x: &[&[i8]; X],
    y: &[&[i8]; Y],
    start: usize,
    end: usize,
    prefetch_y: bool,
) -> [[__m256i; Y]; X] {
    debug_assert!(M::FULL_U8);
    let flip = _mm256_set1_epi8(i8::MIN);
    let ones = _mm256_set1_epi8(1);
    let mut acc = [[_mm256_setzero_si256(); Y]; X];
    let mut x_sums = [_mm256_setzero_si256(); X];
    let mut i = start;
    while i < end {
        if prefetch_y && i.is_multiple_of(64) {
            prefetch_next_rows_into_l2(y, i);
        }
        let mut yv = [_mm256_setzero_si256(); Y];
        for j in 0..Y {
            yv[j] = _mm256_xor_si256(load32_i8(y[j], i), flip);
        }
        for r in 0..X {
            let xv = load32_i8(x[r], i);
            x_sums[r] = mul.mul_add(x_sums[r], ones, xv);
            for j in 0..Y {
                acc[r][j] = mul.mul_add(acc[r][j], yv[j], xv);
            }
        }
        i += 32;
    }
    for r in 0..X {
        let correction = _mm256_slli_epi32::<7>(x_sums[r]);
        for j in 0..Y {
            acc[r][j] = _mm256_sub_epi32(acc[r][j], correction);
        }
    }
    acc
}

/// Body of the `dot_tile` kernels: exact dot products of `R` weight rows
/// with `T` activation rows, `out[r][t] = sum_i w[r][i] * a[t][i]`. Each
/// weight vector is loaded and made absolute once and used for all `T`
/// activations, each activation vector once for all `R` rows. `a` must not
/// hold -128.
///
/// # Safety
/// The CPU supports AVX2 and `M`'s instructions; every row has the same
/// length (the dispatcher asserts).
#[inline(always)]
unsafe fn dot_tile_with<M: MulAdd, const R: usize, const T: usize>(
    mul: M,
    w: &[&[i8]; R],
    a: &[&[i8]; T],
) -> [[i64; T]; R] {
    let k = a[0].len();
    let body = k / 32 * 32;
    let mut out = [[0i64; T]; R];
    let mut start = 0;
    while start < body {
        let end = (start + STEPS_PER_BLOCK * 32).min(body);
        // end <= body <= k == every row's length.
        let acc = tile_sums(mul, w, a, start, end);
        if k < EXACT_I32_TOTAL {
            // Every total fits in i32: reduce four accumulators at a time.
            let mut first = 0;
            while first < R * T {
                let mut four = [_mm256_setzero_si256(); 4];
                for (i, v) in four.iter_mut().enumerate() {
                    let j = first + i;
                    if j < R * T {
                        *v = acc[j / T][j % T];
                    }
                }
                let mut lanes = [0i32; 4];
                _mm_storeu_si128(lanes.as_mut_ptr() as *mut __m128i, hsum4_i32(four));
                for (i, &lane) in lanes.iter().enumerate() {
                    let j = first + i;
                    if j < R * T {
                        out[j / T][j % T] += lane as i64;
                    }
                }
                first += 4;
            }
        } else {
            for r in 0..R {
                for t in 0..T {
                    out[r][t] += hsum_i32_to_i64(acc[r][t]);
                }
            }
        }
        start = end;
    }
    for r in 0..R {
        for t in 0..T {
            out[r][t] += scalar::dot_i8(&w[r][body..], &a[t][body..]);
        }
    }
    out
}

/// Body of the `w8a8_row_pairs` kernels ([`super::w8a8_row_pairs`]): the
/// tile of two weight rows by `T` tokens for consecutive pairs of rows in
/// one call, so the per-tile call and checks are paid once.
///
/// # Safety
/// The CPU supports AVX2 and `M`'s instructions; `w` holds `2 * out.len()`
/// rows of `k` values, `ws` (and `bias`) `2 * out.len()` values, every
/// token row is `k` long, and `k < EXACT_I32_TOTAL` (the dispatcher checks
/// all of it).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn w8a8_row_pairs_with<M: MulAdd, const R: usize, const T: usize>(
    mul: M,
    w: &[i8],
    a: &[&[i8]; T],
    a_sums: Option<[i32; T]>,
    prefetch_rows: isize,
    ws: &[f32],
    ts: [f32; T],
    bias: Option<&[f32]>,
    out: &mut [[[f32; 2]; T]],
) {
    if let (true, Some(a_sums)) = (M::FULL_U8, a_sums) {
        // SAFETY: as this function's contract.
        return unsafe {
            w8a8_row_pairs_flipped::<M, R, T>(mul, w, a, a_sums, prefetch_rows, ws, ts, bias, out)
        };
    }
    let k = a[0].len();
    for (p, y) in out.iter_mut().enumerate() {
        let j = 2 * p;
        let rows = [&w[j * k..(j + 1) * k], &w[(j + 1) * k..(j + 2) * k]];
        let b = bias.map(|b| [b[j], b[j + 1]]);
        // SAFETY: as this function's contract (features; equal lengths; small k).
        *y = unsafe { w8a8_tile_with(mul, &rows, a, [ws[j], ws[j + 1]], ts, b) };
    }
}

/// [`w8a8_row_pairs_with`] for a [`MulAdd::FULL_U8`] multiply-add given
/// each token's sum `a_sums[t]` over its first `k / 32 * 32` columns: the
/// weights are the unsigned side, `w + 128` (one `xor` per weight vector,
/// shared by all `T` tokens), so `sum w * a = sum (w + 128) * a - 128 *
/// sum a` with the tokens as they are — no copy of either side, no pass
/// over the weights for their sums, and one multiply-add per product. `R`
/// weight rows (a multiple of 2) per tile where there are that many, then
/// pairs.
///
/// # Safety
/// As [`w8a8_row_pairs_with`]; `M::FULL_U8`.
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
#[inline(always)]
unsafe fn w8a8_row_pairs_flipped<M: MulAdd, const R: usize, const T: usize>(
    mul: M,
    w: &[i8],
    a: &[&[i8]; T],
    a_sums: [i32; T],
    prefetch_rows: isize,
    ws: &[f32],
    ts: [f32; T],
    bias: Option<&[f32]>,
    out: &mut [[[f32; 2]; T]],
) {
    debug_assert!(M::FULL_U8 && R >= 2 && R.is_multiple_of(2));
    let k = a[0].len();
    let body = k / 32 * 32;
    let row = |j: usize| &w[j * k..(j + 1) * k];
    // Per token, the offset's correction; per row and token, the last
    // k % 32 columns in scalar (all wrapping: the true total fits in i32).
    // (Loops, not `array::from_fn`, which is not always inlined here.)
    let mut offsets = [[0i32; 2]; T];
    for t in 0..T {
        offsets[t] = [a_sums[t].wrapping_mul(-128); 2];
    }
    let pairs = out.len();
    let mut p = 0;
    // body <= k == every row's length.
    while p + R / 2 <= pairs {
        let rows: [&[i8]; R] = core::array::from_fn(|r| row(2 * p + r));
        let acc = flipped_tile_sums(mul, &rows, a, body, prefetch_rows);
        for i in 0..R / 2 {
            let pair = [acc[2 * i], acc[2 * i + 1]];
            let j = 2 * (p + i);
            let e = flipped_extras(offsets, [row(j), row(j + 1)], a, body);
            out[p + i] = finish_offset_pair(&pair, &e, ws, ts, bias, j);
        }
        p += R / 2;
    }
    while p < pairs {
        let acc = flipped_tile_sums(mul, &[row(2 * p), row(2 * p + 1)], a, body, prefetch_rows);
        let e = flipped_extras(offsets, [row(2 * p), row(2 * p + 1)], a, body);
        out[p] = finish_offset_pair(&acc, &e, ws, ts, bias, 2 * p);
        p += 1;
    }
}

/// What [`w8a8_row_pairs_flipped`] adds to the sums of rows `w` by tokens
/// `a`: each token's `offsets` plus the products of the columns past
/// `body`, wrapping.
#[allow(clippy::needless_range_loop)] // t, i index several parallel arrays
#[inline(always)]
fn flipped_extras<const T: usize>(
    offsets: [[i32; 2]; T],
    w: [&[i8]; 2],
    a: &[&[i8]; T],
    body: usize,
) -> [[i32; 2]; T] {
    let mut e = offsets;
    if body < w[0].len() {
        for t in 0..T {
            for i in 0..2 {
                let tail = scalar::dot_i8(&w[i][body..], &a[t][body..]) as i32;
                e[t][i] = e[t][i].wrapping_add(tail);
            }
        }
    }
    e
}

/// i32 lane sums of `(w[r][i] + 128) * a[t][i]` over the first `body`
/// columns (a multiple of 32, at most every row's length), by a
/// [`MulAdd::FULL_U8`] multiply-add. Each vector is loaded once for the
/// whole tile, each weight vector flipped once.
///
/// # Safety
/// The CPU supports AVX2 and `M`'s instructions; `M::FULL_U8`; `body` as
/// above.
#[allow(clippy::needless_range_loop)] // r, t index several parallel arrays
#[inline(always)]
unsafe fn flipped_tile_sums<M: MulAdd, const R: usize, const T: usize>(
    mul: M,
    w: &[&[i8]; R],
    a: &[&[i8]; T],
    body: usize,
    prefetch_rows: isize,
) -> [[__m256i; T]; R] {
    let mut acc = [[_mm256_setzero_si256(); T]; R];
    let mut i = 0;
    if prefetch_rows != 0 {
        // Each row's counterpart `prefetch_rows` rows on, one line per row
        // per two steps, into L2 only: in L1 they would evict this tile's
        // tokens and rows (measured: 1.45 of the time at 128 x 4096 x 4096).
        // i + 64 <= body <= every row's length; a prefetch never faults,
        // so an address outside the matrix is harmless (`wrapping_offset`:
        // no out-of-bounds pointer arithmetic).
        let ahead = prefetch_rows.wrapping_mul(w[0].len() as isize);
        while i + 64 <= body {
            for row in w {
                let line = row.as_ptr().wrapping_offset(ahead.wrapping_add(i as isize));
                _mm_prefetch::<_MM_HINT_T1>(line);
            }
            flipped_step(mul, &mut acc, w, a, i);
            flipped_step(mul, &mut acc, w, a, i + 32);
            i += 64;
        }
    }
    // i + 32 <= body <= every row's length.
    while i < body {
        flipped_step(mul, &mut acc, w, a, i);
        i += 32;
    }
    acc
}

/// One 32-column step of [`flipped_tile_sums`] at column `i` (a function,
/// not a closure: a closure would not inherit the caller's target features).
///
/// # Safety
/// As [`flipped_tile_sums`]; `i + 32` at most every row's length.
#[allow(clippy::needless_range_loop)] // r, t index several parallel arrays
#[inline(always)]
unsafe fn flipped_step<M: MulAdd, const R: usize, const T: usize>(
    mul: M,
    acc: &mut [[__m256i; T]; R],
    w: &[&[i8]; R],
    a: &[&[i8]; T],
    i: usize,
) {
    let flip = _mm256_set1_epi8(i8::MIN);
    let mut av = [_mm256_setzero_si256(); T];
    for t in 0..T {
        av[t] = load32_i8(a[t], i);
    }
    for r in 0..R {
        let wv = _mm256_xor_si256(load32_i8(w[r], i), flip);
        for t in 0..T {
            acc[r][t] = mul.mul_add(acc[r][t], wv, av[t]);
        }
    }
}

/// Body of the `w8a8_tile` kernels ([`super::w8a8_tile`]): two weight rows
/// by `T` tokens, exact integer dot products, dequantized in vectors. Four
/// sums at a time — rows 0 and 1 of tokens `t` and `t + 1` — are reduced
/// into one vector, which is also the layout of `out[t]`, `out[t + 1]`.
///
/// # Safety
/// The CPU supports AVX2 and `M`'s instructions; every row `k` long with
/// `k < EXACT_I32_TOTAL`, so each sum fits in i32 (the dispatcher checks
/// both).
#[allow(clippy::needless_range_loop)] // t indexes several parallel arrays
#[inline(always)]
unsafe fn w8a8_tile_with<M: MulAdd, const T: usize>(
    mul: M,
    w: &[&[i8]; 2],
    a: &[&[i8]; T],
    ws: [f32; 2],
    ts: [f32; T],
    bias: Option<[f32; 2]>,
) -> [[f32; 2]; T] {
    debug_assert!(a[0].len() < EXACT_I32_TOTAL);
    let k = a[0].len();
    let body = k / 32 * 32;
    // body <= k == every row's length.
    let acc = tile_sums(mul, w, a, 0, body);
    // The last k % 32 columns, exactly, in scalar.
    let tail = |r: usize, t: usize| scalar::dot_i8(&w[r][body..], &a[t][body..]) as i32;
    finish_pair_tile(
        &acc,
        |t, u| (body < k).then(|| _mm_setr_epi32(tail(0, t), tail(1, t), tail(0, u), tail(1, u))),
        ws,
        ts,
        bias,
    )
}

/// Dequantizes a tile of two rows by `T` tokens from its i32 lane sums:
/// four sums at a time — rows 0 and 1 of tokens `t` and `u = t + 1` — are
/// reduced into one vector, `extra(t, u)` (the same four, in that order)
/// added when it is `Some`, and the result is the layout of `out[t]`,
/// `out[u]`. Sums wrap in i32, so any parts whose true total fits in i32
/// give that total exactly.
///
/// # Safety
/// AVX2 available.
#[inline(always)]
unsafe fn finish_pair_tile<const T: usize>(
    acc: &[[__m256i; T]; 2],
    extra: impl Fn(usize, usize) -> Option<__m128i>,
    ws: [f32; 2],
    ts: [f32; T],
    bias: Option<[f32; 2]>,
) -> [[f32; 2]; T] {
    let w_scale = _mm_setr_ps(ws[0], ws[1], ws[0], ws[1]);
    let b = bias.map(|b| _mm_setr_ps(b[0], b[1], b[0], b[1]));
    let mut out = [[0.0f32; 2]; T];
    let mut t = 0;
    while t < T {
        let u = (t + 1).min(T - 1); // the second token (or t again, unused)
        let mut sums = hsum4_i32([acc[0][t], acc[1][t], acc[0][u], acc[1][u]]);
        if let Some(extra) = extra(t, u) {
            sums = _mm_add_epi32(sums, extra);
        }
        let token_scale = _mm_setr_ps(ts[t], ts[t], ts[u], ts[u]);
        let mut y = _mm_mul_ps(_mm_mul_ps(_mm_cvtepi32_ps(sums), w_scale), token_scale);
        if let Some(b) = b {
            y = _mm_add_ps(y, b);
        }
        let mut lanes = [0.0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), y);
        out[t] = [lanes[0], lanes[1]];
        if t + 1 < T {
            out[t + 1] = [lanes[2], lanes[3]];
        }
        t += 2;
    }
    out
}

/// See [`super::split_pair_safe`]: 32 columns (16 pairs) at a time.
///
/// A pair `(a, b)` is pair-safe exactly when `|a + b| <= 128`: values of
/// opposite signs (or a zero) always are and have `|a + b| <= 128`, and
/// for values of one sign `a + b` is the sum the definition bounds. So one
/// `maddubs` by ones gives every pair sum `s`, a clamp to ±128 gives the
/// pair sums of `clip` (an unsafe pair's second value is lowered to make
/// its sum exactly ±128: `128 - a` or `-128 - a`, the same byte wrapping),
/// and `s != clamp(s)` finds the unsafe pairs. A step without one (most of
/// them, for real weights) is stored as it is.
///
/// # Safety
/// AVX2 available; `w.len() == clip.len()`, a multiple of 32 (every load
/// and store below is within `i..i + 32` for `i + 32 <= w.len()`).
/// The residuals go into slices, not vectors: a call in the loop would
/// make the compiler keep the running sum in memory.
#[target_feature(enable = "avx2")]
pub unsafe fn split_pair_safe(
    w: &[i8],
    clip: &mut [i8],
    cols: &mut [u32],
    vals: &mut [i8],
) -> (i32, usize) {
    debug_assert!(w.len() == clip.len() && w.len().is_multiple_of(32));
    debug_assert!(cols.len() >= w.len() / 2 && vals.len() >= w.len() / 2);
    // Clamped pair sums are within ±128, so 255 steps fit an i16 lane.
    const STEPS_PER_WIDENING: usize = 255;
    let mut count = 0;
    let ones8 = _mm256_set1_epi8(1);
    let ones16 = _mm256_set1_epi16(1);
    let plus_128 = _mm256_set1_epi16(128);
    let minus_128_16 = _mm256_set1_epi16(-128);
    let minus_128 = _mm256_set1_epi8(i8::MIN);
    let second_bytes = _mm256_set1_epi16(0xff00u16 as i16);
    let mut sums = _mm256_setzero_si256();
    let mut start = 0;
    while start < w.len() {
        let end = (start + STEPS_PER_WIDENING * 32).min(w.len());
        let mut sums16 = _mm256_setzero_si256();
        let mut i = start;
        while i < end {
            let v = load32_i8(w, i);
            let pair_sums = _mm256_maddubs_epi16(ones8, v);
            let clamped = _mm256_min_epi16(_mm256_max_epi16(pair_sums, minus_128_16), plus_128);
            sums16 = _mm256_add_epi16(sums16, clamped);
            let changed = _mm256_xor_si256(pair_sums, clamped);
            let safe = if _mm256_testz_si256(changed, changed) == 1 {
                v
            } else {
                // Each pair's first value moved up into its second byte.
                let first = _mm256_slli_epi16::<8>(v);
                let lowered = _mm256_sub_epi8(minus_128, first);
                // The second byte of every pair whose sum was clamped.
                let fix = _mm256_andnot_si256(_mm256_cmpeq_epi16(pair_sums, clamped), second_bytes);
                let safe = _mm256_blendv_epi8(v, lowered, fix);
                // v - safe: the residual, exact in i8 (see the scalar twin).
                let mut residual = [0i8; 32];
                _mm256_storeu_si256(
                    residual.as_mut_ptr() as *mut __m256i,
                    _mm256_sub_epi8(v, safe),
                );
                let mut bits = _mm256_movemask_epi8(fix) as u32;
                // At most one residual per pair: count < w.len() / 2 here.
                while bits != 0 {
                    let b = bits.trailing_zeros() as usize;
                    cols[count] = (i + b) as u32;
                    vals[count] = residual[b];
                    count += 1;
                    bits &= bits - 1;
                }
                safe
            };
            _mm256_storeu_si256(clip.as_mut_ptr().add(i) as *mut __m256i, safe);
            i += 32;
        }
        sums = _mm256_add_epi32(sums, _mm256_madd_epi16(sums16, ones16));
        start = end;
    }
    // |sum| <= 128 * len / 2, within i32 for the rows the GEMM splits.
    (hsum_i32_to_i64(sums) as i32, count)
}

/// See [`super::add_residual_products`]: eight tokens at a time, their
/// sums kept in a register over all of the row's residuals (one load and
/// store of `acc` per eight tokens, not per residual).
///
/// # Safety
/// AVX2 available; for every column `c` in `cols`, `qt[c * m + first..]`
/// holds at least `acc.len()` values (the dispatcher checks), so each
/// 8-byte load at `c * m + first + t` with `t + 8 <= acc.len()` is in bounds.
#[target_feature(enable = "avx2")]
pub unsafe fn add_residual_products(
    acc: &mut [i32],
    cols: &[u32],
    vals: &[i8],
    qt: &[i8],
    m: usize,
    first: usize,
) {
    let body = acc.len() / 8 * 8;
    let mut t = 0;
    while t < body {
        let out = acc.as_mut_ptr().add(t) as *mut __m256i;
        let mut sums = _mm256_loadu_si256(out);
        for (&col, &val) in cols.iter().zip(vals) {
            let at = qt.as_ptr().add(col as usize * m + first + t);
            let tokens = _mm256_cvtepi8_epi32(_mm_loadl_epi64(at as *const __m128i));
            // |val * q| <= 128 * 127: exact in i32; the sums wrap.
            sums = _mm256_add_epi32(
                sums,
                _mm256_mullo_epi32(tokens, _mm256_set1_epi32(val as i32)),
            );
        }
        _mm256_storeu_si256(out, sums);
        t += 8;
    }
    scalar::add_residual_products(&mut acc[body..], cols, vals, qt, m, first + body);
}

/// Body of the `w8a8_row_pairs_offset` kernels
/// ([`super::w8a8_row_pairs_offset`]): per pair of rows, the offset tokens
/// (unsigned) times the weights (signed) by `M`, so each product costs one
/// multiply-add — the sign form's `sign` per product is gone. With
/// `maddubs` the weights must be pair-safe (it never saturates on them);
/// a [`MulAdd::FULL_U8`] multiply-add takes any weights.
///
/// # Safety
/// The CPU supports AVX2 and `M`'s instructions; `w` holds `2 * out.len()`
/// rows of `k` values (pair-safe unless `M::FULL_U8`), every `u` row is `k`
/// long with `k < EXACT_I32_TOTAL`, `extras` and `ws` (and `bias`) match
/// `out` (the dispatcher checks all of it).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn w8a8_row_pairs_offset_with<M: MulAdd, const R: usize, const T: usize>(
    mul: M,
    w: &[i8],
    u: &[&[i8]; T],
    extras: &[[[i32; 2]; T]],
    ws: &[f32],
    ts: [f32; T],
    bias: Option<&[f32]>,
    out: &mut [[[f32; 2]; T]],
) {
    debug_assert!(R >= 2 && R.is_multiple_of(2));
    let k = u[0].len();
    let body = k / 32 * 32;
    let row = |j: usize| &w[j * k..(j + 1) * k];
    let pairs = out.len();
    let mut p = 0;
    // R / 2 pairs at a time where the registers hold them, then single
    // pairs; body <= k == every row's length.
    while p + R / 2 <= pairs {
        let rows: [&[i8]; R] = core::array::from_fn(|r| row(2 * p + r));
        let acc = offset_tile_sums(mul, &rows, u, body);
        for i in 0..R / 2 {
            let pair = [acc[2 * i], acc[2 * i + 1]];
            out[p + i] = finish_offset_pair(&pair, &extras[p + i], ws, ts, bias, 2 * (p + i));
        }
        p += R / 2;
    }
    while p < pairs {
        let acc = offset_tile_sums(mul, &[row(2 * p), row(2 * p + 1)], u, body);
        out[p] = finish_offset_pair(&acc, &extras[p], ws, ts, bias, 2 * p);
        p += 1;
    }
}

/// [`finish_pair_tile`] of weight rows `j` and `j + 1` with their extras
/// `e` (a function, not a closure: a closure would not inherit the
/// caller's target features, and its intrinsics would become calls).
///
/// # Safety
/// AVX2 available.
#[inline(always)]
unsafe fn finish_offset_pair<const T: usize>(
    acc: &[[__m256i; T]; 2],
    e: &[[i32; 2]; T],
    ws: &[f32],
    ts: [f32; T],
    bias: Option<&[f32]>,
    j: usize,
) -> [[f32; 2]; T] {
    finish_pair_tile(
        acc,
        |t, u| Some(_mm_setr_epi32(e[t][0], e[t][1], e[u][0], e[u][1])),
        [ws[j], ws[j + 1]],
        ts,
        bias.map(|b| [b[j], b[j + 1]]),
    )
}

/// i32 lane sums of `u[t][i] * w[r][i]` over the first `body` columns (a
/// multiple of 32, at most every row's length): `u` unsigned, `w` signed,
/// multiplied by `M` (see [`w8a8_row_pairs_offset_with`] for when that is
/// exact). Each vector is loaded once for the whole tile.
///
/// # Safety
/// The CPU supports AVX2 and `M`'s instructions; `body` as above.
#[allow(clippy::needless_range_loop)] // r, t index several parallel arrays
#[inline(always)]
unsafe fn offset_tile_sums<M: MulAdd, const R: usize, const T: usize>(
    mul: M,
    w: &[&[i8]; R],
    u: &[&[i8]; T],
    body: usize,
) -> [[__m256i; T]; R] {
    let mut acc = [[_mm256_setzero_si256(); T]; R];
    let mut i = 0;
    // i + 32 <= body <= every row's length.
    while i < body {
        let mut uv = [_mm256_setzero_si256(); T];
        for t in 0..T {
            uv[t] = load32_i8(u[t], i);
        }
        for r in 0..R {
            let wv = load32_i8(w[r], i);
            for t in 0..T {
                acc[r][t] = mul.mul_add(acc[r][t], uv[t], wv);
            }
        }
        i += 32;
    }
    acc
}

/// See [`super::sum_i8`]: `w ^ 0x80` is `w + 128` as unsigned bytes, which
/// `sad` against zero sums eight at a time into u64 lanes.
///
/// # Safety
/// AVX2 available.
#[target_feature(enable = "avx2")]
pub unsafe fn sum_i8(w: &[i8]) -> i64 {
    let body = w.len() / 32 * 32;
    let flip = _mm256_set1_epi8(i8::MIN);
    let zero = _mm256_setzero_si256();
    let mut sums = _mm256_setzero_si256();
    let mut i = 0;
    // i + 32 <= body <= len: every load is in bounds.
    while i < body {
        let unsigned = _mm256_xor_si256(load32_i8(w, i), flip);
        sums = _mm256_add_epi64(sums, _mm256_sad_epu8(unsigned, zero));
        i += 32;
    }
    let mut lanes = [0i64; 4];
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, sums);
    // Each u64 lane is at most 255 * len / 4: no overflow for any slice.
    let offset_sum: i64 = lanes.iter().sum::<i64>() - 128 * body as i64;
    offset_sum + scalar::sum_i8(&w[body..])
}

/// The int8 dot kernels of one instruction set: `dot_i8`, `dot_tile`,
/// `w8a8_tile`, `w8a8_row_pairs` and `w8a8_row_pairs_offset` (see the dispatchers in `simd` for
/// what each computes), each the generic body above compiled with the
/// set's target features and its [`MulAdd`]; `$offset_rows` weight rows
/// per tile of `w8a8_row_pairs_offset` (4 rows by 4 tokens is 16
/// accumulators: only AVX-512's 32 vector registers hold that tile).
///
/// Each `pub unsafe fn` requires that the CPU supports `$features` (the
/// dispatcher checks) and the body's preconditions (the dispatcher asserts
/// them).
macro_rules! int8_dot_paths {
    ($(#[$doc:meta])* $name:ident, $features:literal, $mul:expr, $offset_rows:literal) => {
        $(#[$doc])*
        pub mod $name {
            use super::*;

            /// # Safety
            /// See [`int8_dot_paths`]; `w.len() == a.len()`.
            #[target_feature(enable = $features)]
            pub unsafe fn dot_i8(w: &[i8], a: &[i8]) -> i64 {
                dot_i8_with($mul, w, a)
            }

            /// # Safety
            /// See [`int8_dot_paths`]; every row has the same length.
            #[target_feature(enable = $features)]
            pub unsafe fn dot_tile<const R: usize, const T: usize>(
                w: &[&[i8]; R],
                a: &[&[i8]; T],
            ) -> [[i64; T]; R] {
                dot_tile_with($mul, w, a)
            }

            /// # Safety
            /// See [`int8_dot_paths`]; every row `k` long, `k < EXACT_I32_TOTAL`.
            #[target_feature(enable = $features)]
            pub unsafe fn w8a8_tile<const T: usize>(
                w: &[&[i8]; 2],
                a: &[&[i8]; T],
                ws: [f32; 2],
                ts: [f32; T],
                bias: Option<[f32; 2]>,
            ) -> [[f32; 2]; T] {
                w8a8_tile_with($mul, w, a, ws, ts, bias)
            }

            /// # Safety
            /// See [`int8_dot_paths`] and `w8a8_row_pairs_with`.
            #[allow(clippy::too_many_arguments)]
            #[target_feature(enable = $features)]
            pub unsafe fn w8a8_row_pairs<const T: usize>(
                w: &[i8],
                a: &[&[i8]; T],
                a_sums: Option<[i32; T]>,
                prefetch_rows: isize,
                ws: &[f32],
                ts: [f32; T],
                bias: Option<&[f32]>,
                out: &mut [[[f32; 2]; T]],
            ) {
                w8a8_row_pairs_with::<_, $offset_rows, T>(
                    $mul, w, a, a_sums, prefetch_rows, ws, ts, bias, out,
                )
            }

            /// # Safety
            /// See [`int8_dot_paths`] and `w4a8_tile_with`.
            #[target_feature(enable = $features)]
            pub unsafe fn w4a8_tile<const R: usize, const T: usize>(
                w: &[&[u8]; R],
                ws: &[&[f32]; R],
                ap: &[&[i8]; T],
                a_sums: &[&[i32]; T],
                group: usize,
            ) -> [[f32; T]; R] {
                w4a8_tile_with($mul, w, ws, ap, a_sums, group)
            }

            /// # Safety
            /// See [`int8_dot_paths`] and `w8a8_row_pairs_offset_with`.
            #[target_feature(enable = $features)]
            pub unsafe fn w8a8_row_pairs_offset<const T: usize>(
                w: &[i8],
                u: &[&[i8]; T],
                extras: &[[[i32; 2]; T]],
                ws: &[f32],
                ts: [f32; T],
                bias: Option<&[f32]>,
                out: &mut [[[f32; 2]; T]],
            ) {
                w8a8_row_pairs_offset_with::<_, $offset_rows, T>($mul, w, u, extras, ws, ts, bias, out)
            }
        }
    };
}

int8_dot_paths!(
    /// AVX2 (`maddubs` + `madd`).
    madd,
    "avx2",
    Maddubs::new(),
    2
);
int8_dot_paths!(
    /// AVX-VNNI (`vpdpbusd`, VEX).
    avx_vnni,
    "avx2,avxvnni",
    AvxVnni,
    2
);
int8_dot_paths!(
    /// AVX512-VNNI on 256-bit registers (`vpdpbusd`, EVEX; needs AVX512VL).
    avx512_vnni,
    "avx2,avx512vnni,avx512vl",
    Avx512Vnni,
    4
);

/// Sums of the eight i32 lanes of four vectors, exact, as one 4-lane vector.
#[inline(always)]
unsafe fn hsum4_i32(a: [__m256i; 4]) -> __m128i {
    let h01 = _mm256_hadd_epi32(a[0], a[1]);
    let h23 = _mm256_hadd_epi32(a[2], a[3]);
    let h = _mm256_hadd_epi32(h01, h23);
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

// W4A8 works per packed block of 256, 128 or 64 columns: 8, 4 or 2
// half-blocks of 32 values, from 4, 2 or 1 packed 32-byte loads per row.
// Within a block the i16 sums of `maddubs` cannot saturate: each pair is at
// most 2 * 15 * 128 = 3840 in magnitude, eight of them 30720 < 2^15.

/// The unsigned nibbles of half-blocks `h0 .. h0 + nh` (packed bytes
/// `16 * h0 ..`, low then high nibbles of each 32) of a packed row, as
/// bytes; halves from `nh` on are zero.
/// `h0` and `nh` are even (whole 64-column blocks) and `nh <= 8`.
///
/// # Safety
/// AVX2 available; `16 * (h0 + nh) <= w.len()`.
#[inline(always)]
unsafe fn nibbles(w: &[u8], h0: usize, nh: usize) -> [__m256i; 8] {
    let low = _mm256_set1_epi8(0x0f);
    let mut nib = [_mm256_setzero_si256(); 8];
    for b in 0..4 {
        if 2 * b < nh {
            // (h0 / 2 + b) * 32 + 32 <= 16 * (h0 + nh) <= w.len().
            let bytes = _mm256_loadu_si256(w.as_ptr().add((h0 / 2 + b) * 32) as *const __m256i);
            nib[2 * b] = _mm256_and_si256(bytes, low);
            nib[2 * b + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low);
        }
    }
    nib
}

/// `maddubs(nibble, a)` for the half-blocks of a block whose packed-order
/// activations start at `col`: i16 pair sums `u * a`; halves from `nh` on
/// are zero.
///
/// # Safety
/// AVX2 available; `col + 32 * nh <= a.len()`.
#[inline(always)]
unsafe fn segment_products(nib: &[__m256i; 8], a: &[i8], col: usize, nh: usize) -> [__m256i; 8] {
    let mut p = [_mm256_setzero_si256(); 8];
    for i in 0..8 {
        if i < nh {
            p[i] = _mm256_maddubs_epi16(nib[i], load32_i8(a, col + 32 * i));
        }
    }
    p
}

/// The wrapping sum of the eight i32 lanes of `v`.
#[inline(always)]
unsafe fn hsum8_i32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<1>(s)))
}

/// Lanes `0..n` set (all ones), the rest clear.
#[inline(always)]
unsafe fn first_lanes(n: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// One chunk of eight groups of the W4A8 definition: lane `l` of `y` adds
/// `(exact_l as f32) * scale_l` with `exact = u_sums - offsets` (lanes
/// `0..n`; the others keep their value).
///
/// # Safety
/// AVX2 available; `g0 + n <= offsets.len()` and `g0 + n <= scales.len()`
/// (masked loads read only lanes `0..n`).
#[inline(always)]
unsafe fn scale_chunk(
    y: __m256,
    u_sums: __m256i,
    offsets: &[i32],
    scales: __m256,
    g0: usize,
    n: usize,
    mask: __m256i,
) -> __m256 {
    let off = if n == 8 {
        _mm256_loadu_si256(offsets.as_ptr().add(g0) as *const __m256i)
    } else {
        _mm256_maskload_epi32(offsets.as_ptr().add(g0), mask)
    };
    let exact = _mm256_sub_epi32(u_sums, off);
    let sum = _mm256_add_ps(y, _mm256_mul_ps(_mm256_cvtepi32_ps(exact), scales));
    if n == 8 {
        sum
    } else {
        _mm256_blendv_ps(y, sum, _mm256_castsi256_ps(mask))
    }
}

/// The eight scales of groups `g0 .. g0 + n` (masked beyond `n`).
///
/// # Safety
/// AVX2 available; `g0 + n <= ws.len()`.
#[inline(always)]
unsafe fn chunk_scales(ws: &[f32], g0: usize, n: usize, mask: __m256i) -> __m256 {
    if n == 8 {
        load8(ws, g0)
    } else {
        _mm256_maskload_ps(ws.as_ptr().add(g0), mask)
    }
}

/// Calls `each(t, lanes)` for every token with the eight i32 lane sums of
/// one packed block (half-blocks `h0 .. h0 + nh`, i.e. columns from
/// `32 * h0`, `nh` = 8, 4 or 2 for blocks of 256, 128 or 64): the block's
/// nibbles are unpacked once, `maddubs` with the token's packed-order
/// activations, the i16 sums of all half-blocks added (at most 8 * 3840 <
/// 2^15 in magnitude) and widened by `madd`. Lane `l` is the sum of the
/// block's lane-`l` columns (see `crate::weights`).
///
/// # Safety
/// AVX2 available; `16 * (h0 + nh) <= w.len()`, `32 * (h0 + nh) <= ap[t].len()`.
#[inline(always)]
unsafe fn block_lanes<M: MulAdd, const T: usize>(
    mul: M,
    w: &[u8],
    ap: &[&[i8]; T],
    h0: usize,
    nh: usize,
    mut each: impl FnMut(usize, __m256i),
) {
    // `nh` as a literal: `block_lanes_n` is inlined, so its loops unroll
    // and the products of missing half-blocks (zero) drop out.
    match nh {
        8 => block_lanes_n(mul, w, ap, h0, 8, &mut each),
        4 => block_lanes_n(mul, w, ap, h0, 4, &mut each),
        _ => block_lanes_n(mul, w, ap, h0, 2, &mut each),
    }
}

/// The body of [`block_lanes`] (same contract, `nh` in {2, 4, 8}).
#[inline(always)]
#[allow(clippy::needless_range_loop)] // t is also passed to `each`
unsafe fn block_lanes_n<M: MulAdd, const T: usize>(
    mul: M,
    w: &[u8],
    ap: &[&[i8]; T],
    h0: usize,
    nh: usize,
    each: &mut impl FnMut(usize, __m256i),
) {
    let ones = _mm256_set1_epi16(1);
    let nib = nibbles(w, h0, nh);
    if M::FULL_U8 {
        // `vpdpbusd` sums each lane's four products into it directly (the
        // same lanes as `maddubs` then `madd`), on two chains so that the
        // additions do not wait on each other; |sum| <= 8 * 4 * 15 * 128.
        for t in 0..T {
            let mut even = _mm256_setzero_si256();
            let mut odd = _mm256_setzero_si256();
            for i in 0..nh {
                let a = load32_i8(ap[t], 32 * (h0 + i));
                if i % 2 == 0 {
                    even = mul.mul_add(even, nib[i], a);
                } else {
                    odd = mul.mul_add(odd, nib[i], a);
                }
            }
            each(t, _mm256_add_epi32(even, odd));
        }
        return;
    }
    for t in 0..T {
        let p = segment_products(&nib, ap[t], 32 * h0, nh);
        let s = _mm256_add_epi16(
            _mm256_add_epi16(_mm256_add_epi16(p[0], p[1]), _mm256_add_epi16(p[2], p[3])),
            _mm256_add_epi16(_mm256_add_epi16(p[4], p[5]), _mm256_add_epi16(p[6], p[7])),
        );
        each(t, _mm256_madd_epi16(s, ones));
    }
}

/// W4A8 of `R` packed weight rows with `T` token rows, bit for bit the
/// definition in [`super::w4a8_tile`]; `crate::weights` has the layout and
/// `ap` holds the tokens in its packed order.
///
/// The stored nibbles `u = w + 8` are unsigned, so `maddubs(u, a)` (with a
/// [`MulAdd::FULL_U8`] multiply-add, `vpdpbusd`) needs no sign fix-up;
/// the exact group sum is `sum u a - 8 * sum a`, with
/// `8 * sum a` per group in `a_sums`. Each packed block gives eight i32
/// lane sums ([`block_lanes`]). In a block of 256 columns with groups of
/// 32, lane `l` is group `g0 + l` of the chunk of eight groups that the
/// block is, so the f32 step of the definition takes the vector as it is —
/// no horizontal adds. Other blocks and groups add their lanes into their
/// groups' sums and the f32 step runs when a
/// chunk of eight groups is complete (lane `l` = group `g0 + l`, as the
/// definition has it): two or four lanes a group are gathered by one or two
/// `hadd`s and moved into place by a lane permutation; a group of eight or
/// more lanes is added up across its blocks and summed once at its end. Group sums are exact integers (i32 lanes wrap, but
/// the true sum, at most 2^20 * 8 * 128 in magnitude, fits), so how they
/// are added up is free.
///
/// Requires `k % 64 == 0`, `k % group == 0` and `group` 32 or a multiple
/// of 64 (so no lane straddles two groups).
///
/// # Safety
/// The CPU supports AVX2 and `M`'s instructions; `w[r].len() >= k / 2`,
/// `ws[r].len() >= k / group`, `a_sums[t].len() >= k / group`, every token
/// row `k` long (the dispatcher asserts all of these).
#[inline(always)]
unsafe fn w4a8_tile_with<M: MulAdd, const R: usize, const T: usize>(
    mul: M,
    w: &[&[u8]; R],
    ws: &[&[f32]; R],
    ap: &[&[i8]; T],
    a_sums: &[&[i32]; T],
    group: usize,
) -> [[f32; T]; R] {
    let mut out = [[0.0f32; T]; R];
    for r in 0..R {
        let y = w4a8_row::<M, T>(mul, w[r], ws[r], ap, a_sums, group);
        for t in 0..T {
            out[r][t] = lane_sum_ps(y[t]);
        }
    }
    out
}

/// One weight row of [`w4a8_tile`] against `T` tokens: the eight f32 lanes
/// of the definition per token.
///
/// # Safety
/// As [`w4a8_tile`], for this row.
#[inline(always)]
unsafe fn w4a8_row<M: MulAdd, const T: usize>(
    mul: M,
    w: &[u8],
    ws: &[f32],
    ap: &[&[i8]; T],
    a_sums: &[&[i32]; T],
    group: usize,
) -> [__m256; T] {
    let k = ap[0].len();
    let mut row = RowSums::<T>::new(k / group);
    // The blocks of 256 columns first, one loop per group form (each keeps
    // only its own state in registers), then the at most two shorter
    // blocks that end a row. Blocks read packed bytes c0 / 2 .. (c0 +
    // width) / 2 <= k / 2 <= the row and activations c0 .. c0 + width <= k;
    // offsets and scales are read at groups g0 .. g0 + n <= groups.
    let whole = k / 256;
    match group {
        32 => {
            // Each block is the chunk g0 .. g0 + 8, lane l group g0 + l.
            for b in 0..whole {
                prefetch_next_row::<T>(w, ws, 256 * b, row.g0);
                let all = _mm256_set1_epi32(-1);
                let scales = chunk_scales(ws, row.g0, 8, all);
                let g0 = row.g0;
                let y = &mut row.y;
                block_lanes(mul, w, ap, 8 * b, 8, |t, lanes| {
                    y[t] = scale_chunk(y[t], lanes, a_sums[t], scales, g0, 8, all);
                });
                row.g0 += 8;
            }
        }
        64 | 128 => {
            // Four (two) groups a block: the blocks of a chunk are kept and
            // gathered together at its end, by one (two) rounds of `hadd`
            // and a lane permutation.
            let per_block = 256 / group;
            let mut kept = [[_mm256_setzero_si256(); 4]; T];
            for b in 0..whole {
                prefetch_next_row::<T>(w, ws, 256 * b, row.g0);
                let j = row.g_rel / per_block;
                block_lanes(mul, w, ap, 8 * b, 8, |t, lanes| kept[t][j] = lanes);
                row.g_rel += per_block;
                if row.g_rel == 8 || 256 * (b + 1) == k {
                    for (acc, kept) in row.acc.iter_mut().zip(kept.iter_mut()) {
                        *acc = _mm256_add_epi32(*acc, gather_kept(kept, per_block));
                        *kept = [_mm256_setzero_si256(); 4];
                    }
                    row.finish_chunk(ws, a_sums);
                }
            }
            // A chunk that the shorter blocks complete: its kept blocks now.
            if row.g_rel > 0 {
                for (acc, kept) in row.acc.iter_mut().zip(kept.iter()) {
                    *acc = _mm256_add_epi32(*acc, gather_kept(kept, per_block));
                }
            }
        }
        _ => {
            // Each block is part of one group (a multiple of 256 columns or
            // the whole row).
            for b in 0..whole {
                prefetch_next_row::<T>(w, ws, 256 * b, row.g0);
                if group.is_multiple_of(256) {
                    // No group ends inside a block: the lanes of the group
                    // in progress stay in registers.
                    let mut part = row.part;
                    block_lanes(mul, w, ap, 8 * b, 8, |t, lanes| {
                        part[t] = _mm256_add_epi32(part[t], lanes);
                    });
                    row.in_group += 256;
                    if row.in_group == group {
                        row.add_group_total(&mut part);
                        row.in_group = 0;
                    }
                    row.part = part;
                } else {
                    row.add_part(mul, w, ap, 256 * b, 256, group);
                }
                if row.g_rel == 8 || 256 * (b + 1) == k {
                    row.finish_chunk(ws, a_sums);
                }
            }
        }
    }
    // The shorter blocks (128 and 64 columns; k % 64 == 0 leaves none of
    // fewer than 64).
    for (c0, width) in crate::weights::int4_tail_blocks(k).into_iter().flatten() {
        prefetch_next_row::<T>(w, ws, c0, row.g0);
        if 2 * group <= width {
            row.add_whole_groups(mul, w, ap, c0, width, group);
        } else {
            row.add_part(mul, w, ap, c0, width, group);
        }
        if row.g_rel == 8 || c0 + width == k {
            row.finish_chunk(ws, a_sums);
        }
    }
    row.y
}

/// One token: the row streams from L3 or memory, and the hardware
/// prefetcher alone leaves the kernel waiting (on the scales most). The
/// same place in the next row (the GEMM's rows are contiguous) is fetched
/// ahead: 0.90–0.93 of the time at 4096 and 11008 rows of 4096 columns
/// (interleaved A/B). Tiles of more tokens fetch nothing. A prefetch never
/// faults, and `wrapping_add` keeps an address past the matrix harmless.
#[inline(always)]
unsafe fn prefetch_next_row<const T: usize>(w: &[u8], ws: &[f32], c0: usize, g0: usize) {
    if T == 1 {
        let next_row = w.as_ptr().wrapping_add(c0 / 2 + w.len());
        _mm_prefetch::<_MM_HINT_T0>(next_row as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(next_row.wrapping_add(64) as *const i8);
        _mm_prefetch::<_MM_HINT_T0>(ws.as_ptr().wrapping_add(g0 + ws.len()) as *const i8);
    }
}

/// The eight group sums of kept blocks of 256 columns with `per_block` (4
/// or 2) groups each, blocks `kept[0 ..]` in order (missing ones zero), as
/// one vector `[t0 .. t7]`.
#[inline(always)]
unsafe fn gather_kept(kept: &[__m256i; 4], per_block: usize) -> __m256i {
    if per_block == 4 {
        // hadd: [a01 a23 b01 b23 | a45 a67 b45 b67] = groups [0 1 4 5 | 2 3 6 7].
        let h = _mm256_hadd_epi32(kept[0], kept[1]);
        _mm256_permute4x64_epi64::<0b11_01_10_00>(h)
    } else {
        // Two rounds: [a0123 b0123 c0123 d0123 | a4567 ..] = groups
        // [0 2 4 6 | 1 3 5 7].
        let h = _mm256_hadd_epi32(
            _mm256_hadd_epi32(kept[0], kept[1]),
            _mm256_hadd_epi32(kept[2], kept[3]),
        );
        _mm256_permutevar8x32_epi32(h, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
    }
}

/// The running state of one weight row of W4A8 against `T` tokens.
struct RowSums<const T: usize> {
    /// The eight f32 lanes of the definition, per token.
    y: [__m256; T],
    /// The group sums of the chunk being gathered (lane l: group g0 + l).
    acc: [__m256i; T],
    /// The lanes of the group in progress, until it is complete.
    part: [__m256i; T],
    /// The chunk's first group, the chunk lane of the next group to
    /// complete, the columns of that group already in `part`.
    g0: usize,
    g_rel: usize,
    in_group: usize,
    groups: usize,
}

impl<const T: usize> RowSums<T> {
    #[inline(always)]
    unsafe fn new(groups: usize) -> Self {
        Self {
            // -0.0 + p == p for every p, so starting at -0.0 is the same as
            // starting with the first group's product (the definition).
            y: [_mm256_set1_ps(-0.0); T],
            acc: [_mm256_setzero_si256(); T],
            part: [_mm256_setzero_si256(); T],
            g0: 0,
            g_rel: 0,
            in_group: 0,
            groups,
        }
    }

    /// The f32 step of the definition for the chunk's groups (lane l:
    /// group g0 + l), then the next chunk.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // t indexes y, acc and a_sums
    unsafe fn finish_chunk(&mut self, ws: &[f32], a_sums: &[&[i32]; T]) {
        let n = (self.groups - self.g0).min(8);
        let mask = first_lanes(n);
        let scales = chunk_scales(ws, self.g0, n, mask);
        for t in 0..T {
            self.y[t] = scale_chunk(self.y[t], self.acc[t], a_sums[t], scales, self.g0, n, mask);
            self.acc[t] = _mm256_setzero_si256();
        }
        self.g0 += 8;
        self.g_rel = 0;
    }

    /// A block of two or four whole groups (of four or two lanes): after
    /// one `hadd` of the lanes with themselves, lanes 0, 1, 4, 5 hold the
    /// pair sums; after two, lanes 0 and 4 the quad sums. They move to
    /// chunk lanes `g_rel ..`.
    #[inline(always)]
    unsafe fn add_whole_groups<M: MulAdd>(
        &mut self,
        mul: M,
        w: &[u8],
        ap: &[&[i8]; T],
        c0: usize,
        width: usize,
        group: usize,
    ) {
        let count = if 4 * group == width { 4 } else { 2 };
        let rel = _mm256_sub_epi32(
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
            _mm256_set1_epi32(self.g_rel as i32),
        );
        let keep = _mm256_and_si256(
            _mm256_cmpgt_epi32(rel, _mm256_set1_epi32(-1)),
            _mm256_cmpgt_epi32(_mm256_set1_epi32(count as i32), rel),
        );
        let to = if count == 4 {
            // 0, 1, 2, 3 -> 0, 1, 4, 5
            _mm256_add_epi32(rel, _mm256_and_si256(rel, _mm256_set1_epi32(2)))
        } else {
            // 0, 1 -> 0, 4
            _mm256_slli_epi32::<2>(rel)
        };
        let acc = &mut self.acc;
        block_lanes(mul, w, ap, c0 / 32, width / 32, |t, lanes| {
            let mut h = _mm256_hadd_epi32(lanes, lanes);
            if count == 2 {
                h = _mm256_hadd_epi32(h, h);
            }
            let sums = _mm256_and_si256(_mm256_permutevar8x32_epi32(h, to), keep);
            acc[t] = _mm256_add_epi32(acc[t], sums);
        });
        self.g_rel += count;
    }

    /// A block within one group, or holding the end of one group and the
    /// start of the next (groups of 192, 320, ... columns): its lanes add
    /// up until the group is complete, then their sum goes to chunk lane
    /// `g_rel`. The group never ends inside a lane (groups are multiples of
    /// 64, lanes span 32 columns or fewer), and a block of at most 256
    /// columns holds at most one group's end (groups here are 192 or more,
    /// or the block's own width).
    #[inline(always)]
    unsafe fn add_part<M: MulAdd>(
        &mut self,
        mul: M,
        w: &[u8],
        ap: &[&[i8]; T],
        c0: usize,
        width: usize,
        group: usize,
    ) {
        let room = group - self.in_group;
        if width <= room {
            let part = &mut self.part;
            block_lanes(mul, w, ap, c0 / 32, width / 32, |t, lanes| {
                part[t] = _mm256_add_epi32(part[t], lanes);
            });
            self.in_group += width;
            if self.in_group == group {
                let mut part = self.part;
                self.add_group_total(&mut part);
                self.part = part;
                self.in_group = 0;
            }
        } else {
            // Lanes 0 .. room / span end the group in progress, the rest
            // start the next one.
            let ending = first_lanes(room / (width / 8));
            let mut part = self.part;
            let mut next = [_mm256_setzero_si256(); T];
            block_lanes(mul, w, ap, c0 / 32, width / 32, |t, lanes| {
                part[t] = _mm256_add_epi32(part[t], _mm256_and_si256(lanes, ending));
                next[t] = _mm256_andnot_si256(ending, lanes);
            });
            self.add_group_total(&mut part);
            self.in_group = width - room;
            if self.in_group == group {
                // The next group lies wholly in this block's other lanes.
                self.add_group_total(&mut next);
                self.in_group = 0;
            }
            self.part = next;
        }
    }

    /// The sums of `part` (a complete group, per token) into chunk lane
    /// `g_rel`; `part` is cleared.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // t indexes part and acc
    unsafe fn add_group_total(&mut self, part: &mut [__m256i; T]) {
        let lane = _mm256_cmpeq_epi32(
            _mm256_set1_epi32(self.g_rel as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        for t in 0..T {
            let total = _mm256_set1_epi32(hsum8_i32(part[t]));
            self.acc[t] = _mm256_add_epi32(self.acc[t], _mm256_and_si256(total, lane));
            part[t] = _mm256_setzero_si256();
        }
        self.g_rel += 1;
    }
}

/// The fixed-order sum of eight f32 lanes that [`super::scalar::lane_sum`]
/// defines: `((y0 + y4) + (y2 + y6)) + ((y1 + y5) + (y3 + y7))`.
#[inline(always)]
unsafe fn lane_sum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps::<1>(t, t)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::xorshift;

    #[target_feature(enable = "avx2")]
    unsafe fn emulated_w4a8<const R: usize, const T: usize>(
        w: &[&[u8]; R],
        ws: &[&[f32]; R],
        ap: &[&[i8]; T],
        a_sums: &[&[i32]; T],
        group: usize,
    ) -> [[f32; T]; R] {
        w4a8_tile_with(EmulatedDpbusd, w, ws, ap, a_sums, group)
    }

    /// Every x86 `w4a8_tile` body against the scalar definition, bit for
    /// bit, on the shared cases (`super::super::w4a8_cases`), in the
    /// library's tile shapes (sixteen rows by four tokens, four by four)
    /// and a few others: AVX2's `maddubs`, the `vpdpbusd` form on an
    /// emulated `vpdpbusd` (any AVX2 CPU), and the VNNI instances where
    /// the CPU has them.
    #[test]
    fn w4a8_tiles_equal_the_scalar_definition() {
        use crate::simd::w4a8_cases::{bits, for_each};
        if !is_x86_feature_detected!("avx2") {
            return;
        }
        let avx_vnni = super::super::Isa::AvxVnni.is_supported();
        let avx512_vnni = super::super::Isa::Avx512Vnni.is_supported();
        for_each(|case| {
            let (w, ws, a, ap) = case.views();
            let (group, ctx) = (case.group, &case.what);
            // What the AVX2 body subtracts from its unsigned nibbles' sums.
            let sums: Vec<Vec<i32>> = a
                .iter()
                .map(|t| super::super::int4_group_sums(t, group))
                .collect();
            let sums: [&[i32]; 4] = core::array::from_fn(|t| &sums[t][..]);
            let w16: [&[u8]; 16] = core::array::from_fn(|r| w[(5 * r + 1) % 4]);
            let ws16: [&[f32]; 16] = core::array::from_fn(|r| ws[(5 * r + 1) % 4]);
            let want164 = scalar::w4a8_tile(&w16, &ws16, &a, group);
            let want41 = scalar::w4a8_tile(&w, &ws, &[a[0]], group);
            let want33 = scalar::w4a8_tile(
                &[w[2], w[0], w[1]],
                &[ws[2], ws[0], ws[1]],
                &[a[3], a[1], a[2]],
                group,
            );
            let want44 = scalar::w4a8_tile(&w, &ws, &a, group);
            let (w33, ws33) = ([w[2], w[0], w[1]], [ws[2], ws[0], ws[1]]);
            let (ap33, sums33) = ([ap[3], ap[1], ap[2]], [sums[3], sums[1], sums[2]]);
            // The four shapes through one body: each must match.
            macro_rules! check {
                ($tile:path, $name:literal) => {
                    // SAFETY: the body's features were detected; the cases
                    // meet `w4a8_tile`'s contract (k % 64 == 0, group 32 or
                    // a multiple of 64).
                    unsafe {
                        let y = $tile(&w16, &ws16, &ap, &sums, group);
                        assert_eq!(bits(&y), bits(&want164), "{} 16x4 {ctx}", $name);
                        let y = $tile(&w, &ws, &ap, &sums, group);
                        assert_eq!(bits(&y), bits(&want44), "{} 4x4 {ctx}", $name);
                        let y = $tile(&w, &ws, &[ap[0]], &[sums[0]], group);
                        assert_eq!(bits(&y), bits(&want41), "{} 4x1 {ctx}", $name);
                        let y = $tile(&w33, &ws33, &ap33, &sums33, group);
                        assert_eq!(bits(&y), bits(&want33), "{} 3x3 {ctx}", $name);
                    }
                };
            }
            check!(madd::w4a8_tile, "avx2");
            check!(emulated_w4a8, "emulated vpdpbusd");
            if avx_vnni {
                check!(avx_vnni::w4a8_tile, "avxvnni");
            }
            if avx512_vnni {
                check!(avx512_vnni::w4a8_tile, "avx512vnni");
            }
        });
    }

    /// `acc + sum of each lane's four products`, in plain integers, wrapping
    /// in i32: what every [`MulAdd`] must compute.
    fn mul_add_reference(acc: [i32; 8], u: &[u8; 32], s: &[i8; 32]) -> [i32; 8] {
        core::array::from_fn(|l| {
            let sum: i64 = (0..4)
                .map(|j| u[4 * l + j] as i64 * s[4 * l + j] as i64)
                .sum();
            acc[l].wrapping_add(sum as i32)
        })
    }

    /// Runs `mul.mul_add` on byte arrays.
    ///
    /// # Safety
    /// The CPU supports AVX2 and `M`'s instructions.
    #[inline(always)]
    unsafe fn run<M: MulAdd>(mul: M, acc: [i32; 8], u: &[u8; 32], s: &[i8; 32]) -> [i32; 8] {
        let acc = _mm256_loadu_si256(acc.as_ptr() as *const __m256i);
        let u = _mm256_loadu_si256(u.as_ptr() as *const __m256i);
        let s = _mm256_loadu_si256(s.as_ptr() as *const __m256i);
        let mut out = [0i32; 8];
        _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, mul.mul_add(acc, u, s));
        out
    }

    #[target_feature(enable = "avx2")]
    unsafe fn run_maddubs(acc: [i32; 8], u: &[u8; 32], s: &[i8; 32]) -> [i32; 8] {
        run(Maddubs::new(), acc, u, s)
    }

    /// `vpdpbusd` built from AVX2, for running the offset form on CPUs
    /// without VNNI: `u = lo + 128 * hi` with `lo < 128` and `hi` 0 or 1,
    /// so neither `maddubs` saturates (pairs within 2 * 127 * 128) and the
    /// `hi` pairs are scaled by 128 in i32.
    #[derive(Clone, Copy)]
    struct EmulatedDpbusd;

    impl MulAdd for EmulatedDpbusd {
        const FULL_U8: bool = true;

        #[inline(always)]
        unsafe fn mul_add(self, acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
            let lo = _mm256_and_si256(u, _mm256_set1_epi8(0x7f));
            let hi = _mm256_and_si256(_mm256_srli_epi16::<7>(u), _mm256_set1_epi8(1));
            let lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, s), _mm256_set1_epi16(1));
            let hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, s), _mm256_set1_epi16(128));
            _mm256_add_epi32(acc, _mm256_add_epi32(lo, hi))
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn run_emulated(acc: [i32; 8], u: &[u8; 32], s: &[i8; 32]) -> [i32; 8] {
        run(EmulatedDpbusd, acc, u, s)
    }

    #[target_feature(enable = "avx2,avxvnni")]
    unsafe fn run_avx_vnni(acc: [i32; 8], u: &[u8; 32], s: &[i8; 32]) -> [i32; 8] {
        run(AvxVnni, acc, u, s)
    }

    #[target_feature(enable = "avx2,avx512vnni,avx512vl")]
    unsafe fn run_avx512_vnni(acc: [i32; 8], u: &[u8; 32], s: &[i8; 32]) -> [i32; 8] {
        run(Avx512Vnni, acc, u, s)
    }

    /// Every multiply-add this CPU can run equals the definition on the
    /// extremes of its operand ranges (u in 0..=128, s in ±127 — where a
    /// saturating i16 step would go wrong — and, for the `FULL_U8` forms,
    /// every u8 by every i8) and on pseudo-random operands, with
    /// accumulators near the i32 limits (and, for the full forms, past
    /// them: they wrap). The VNNI forms run only where the CPU has them.
    #[test]
    fn every_mul_add_matches_the_definition() {
        let avx2 = std::arch::is_x86_feature_detected!("avx2");
        let avx_vnni = avx2 && std::arch::is_x86_feature_detected!("avxvnni");
        let avx512_vnni = avx2
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512vl");
        if !avx2 {
            return;
        }
        let mut cases: Vec<([i32; 8], [u8; 32], [i8; 32])> = vec![
            ([0; 8], [128; 32], [127; 32]),
            ([0; 8], [128; 32], [-127; 32]),
            ([i32::MAX - 65024; 8], [128; 32], [127; 32]),
            ([i32::MIN + 65024; 8], [128; 32], [-127; 32]),
            ([7; 8], [0; 32], [-127; 32]),
        ];
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..2000 {
            let acc = core::array::from_fn(|_| (next() as i32) / 2);
            let u = core::array::from_fn(|_| (next() % 129) as u8);
            let s = core::array::from_fn(|_| ((next() % 255) as i32 - 127) as i8);
            cases.push((acc, u, s));
        }
        // The full range, for the forms that claim it, wrapping in i32.
        let mut full: Vec<([i32; 8], [u8; 32], [i8; 32])> = vec![
            ([0; 8], [255; 32], [-128; 32]),
            ([0; 8], [255; 32], [127; 32]),
            ([i32::MAX; 8], [255; 32], [127; 32]),
            ([i32::MIN; 8], [255; 32], [-128; 32]),
        ];
        for _ in 0..2000 {
            let acc = core::array::from_fn(|_| next() as i32);
            let u = core::array::from_fn(|_| next() as u8);
            let s = core::array::from_fn(|_| next() as i8);
            full.push((acc, u, s));
        }
        for (full_range, cases) in [(false, &cases), (true, &full)] {
            for (acc, u, s) in cases {
                let want = mul_add_reference(*acc, u, s);
                // SAFETY: each form runs only where its features were detected.
                unsafe {
                    if full_range {
                        assert_eq!(run_emulated(*acc, u, s), want, "emulated {u:?} {s:?}");
                    } else {
                        assert_eq!(run_maddubs(*acc, u, s), want, "maddubs {u:?} {s:?}");
                    }
                    if avx_vnni {
                        assert_eq!(run_avx_vnni(*acc, u, s), want, "avxvnni {u:?} {s:?}");
                    }
                    if avx512_vnni {
                        assert_eq!(run_avx512_vnni(*acc, u, s), want, "avx512vnni {u:?} {s:?}");
                    }
                }
            }
        }
    }

    /// Random int8 rows of length `k`, with the extremes -128 and 127 often.
    fn rows<const N: usize>(next: &mut impl FnMut() -> u64, k: usize) -> [Vec<i8>; N] {
        core::array::from_fn(|_| {
            (0..k)
                .map(|_| match next() % 8 {
                    0 => -128,
                    1 => 127,
                    _ => next() as i8,
                })
                .collect()
        })
    }

    #[target_feature(enable = "avx2")]
    unsafe fn offset_tile<const R: usize, const T: usize>(
        w: &[&[i8]; R],
        a: &[&[i8]; T],
    ) -> [[i64; T]; R] {
        dot_tile_with(EmulatedDpbusd, w, a)
    }

    /// Checks the offset-form tile of `R` rows by `T` tokens (either side
    /// offset, by the shape) against scalar on random rows of every length
    /// in `ks`, -128 included on both sides.
    fn check_offset_tile<const R: usize, const T: usize>(ks: &[usize]) {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15 ^ (R * 8 + T) as u64);
        for &k in ks {
            let w = rows::<R>(&mut next, k);
            let a = rows::<T>(&mut next, k);
            let w: [&[i8]; R] = core::array::from_fn(|r| &w[r][..]);
            let a: [&[i8]; T] = core::array::from_fn(|t| &a[t][..]);
            // SAFETY: the caller checked AVX2; every row is k long.
            let got = unsafe { offset_tile(&w, &a) };
            assert_eq!(got, scalar::dot_tile(&w, &a), "R={R} T={T} k={k}");
        }
    }

    /// The offset form (what the VNNI paths run), on an emulated `vpdpbusd`,
    /// equals the scalar sums for every tile shape the GEMM uses, for
    /// lengths around the 32-byte step, and with -128 on either side.
    #[test]
    fn offset_form_equals_scalar() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let ks = [0, 1, 31, 32, 33, 63, 64, 65, 96, 127, 384, 1000, 1536];
        check_offset_tile::<1, 1>(&ks);
        check_offset_tile::<4, 1>(&ks);
        check_offset_tile::<2, 1>(&ks);
        check_offset_tile::<2, 2>(&ks);
        check_offset_tile::<2, 3>(&ks);
        check_offset_tile::<2, 4>(&ks);
        check_offset_tile::<1, 4>(&ks);
        check_offset_tile::<3, 2>(&ks);
    }

    /// Past one block of [`STEPS_PER_BLOCK`] steps, with the operands that
    /// drive the uncorrected lanes furthest (255 by -128) and the corrected
    /// sums past i32: the blocks are widened to i64 exactly.
    #[test]
    fn offset_form_is_exact_across_blocks() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let k = STEPS_PER_BLOCK * 32 + 96 + 5;
        for (wv, av) in [(-128i8, 127i8), (-128, -128), (127, 127), (127, -128)] {
            let w = vec![wv; k];
            let a = vec![av; k];
            let want = k as i64 * wv as i64 * av as i64;
            // SAFETY: AVX2 checked; equal lengths.
            let tall = unsafe { offset_tile(&[&w[..], &w[..]], &[&a[..]]) };
            let wide = unsafe { offset_tile(&[&w[..]], &[&a[..], &a[..]]) };
            assert_eq!(tall, [[want]; 2], "w={wv} a={av}");
            assert_eq!(wide, [[want; 2]], "w={wv} a={av}");
        }
    }

    #[target_feature(enable = "avx2")]
    unsafe fn offset_w8a8<const T: usize>(
        w: &[&[i8]; 2],
        a: &[&[i8]; T],
        ws: [f32; 2],
        ts: [f32; T],
        bias: Option<[f32; 2]>,
    ) -> [[f32; 2]; T] {
        w8a8_tile_with(EmulatedDpbusd, w, a, ws, ts, bias)
    }

    #[target_feature(enable = "avx2")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn flipped_row_pairs<const R: usize, const T: usize>(
        w: &[i8],
        a: &[&[i8]; T],
        a_sums: [i32; T],
        prefetch_rows: isize,
        ws: &[f32],
        ts: [f32; T],
        bias: Option<&[f32]>,
        out: &mut [[[f32; 2]; T]],
    ) {
        w8a8_row_pairs_flipped::<_, R, T>(
            EmulatedDpbusd,
            w,
            a,
            a_sums,
            prefetch_rows,
            ws,
            ts,
            bias,
            out,
        )
    }

    /// The VNNI row pairs with the weights as the unsigned side (`w + 128`,
    /// on a `vpdpbusd` emulated so that this runs on any AVX2 CPU) give the
    /// scalar definition's bits for any int8 weights (-128 and 127 often),
    /// in tiles of 2 and of 4 rows (with a last single pair), with and
    /// without a `k % 32` tail.
    #[test]
    fn flipped_row_pairs_equal_the_definition() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        const T: usize = 3;
        let mut next = xorshift(0x2b99_2ddf_a232_49d6);
        for (k, pairs) in [(32, 1), (64, 3), (45, 5), (1056, 4), (4096, 2), (4099, 3)] {
            let w: Vec<i8> = rows::<1>(&mut next, 2 * pairs * k).concat();
            let q: [Vec<i8>; T] =
                rows::<T>(&mut next, k).map(|r| r.into_iter().map(|v| v.max(-127)).collect());
            let q: [&[i8]; T] = core::array::from_fn(|t| &q[t][..]);
            let sums = q.map(|r| scalar::sum_i8(&r[..k / 32 * 32]) as i32);
            let row = |j: usize| &w[j * k..(j + 1) * k];
            let ws: Vec<f32> = (0..2 * pairs).map(|j| 1e-3 * (j + 1) as f32).collect();
            let ts = [0.02, 3.0e-3, 0.7];
            let bias: Vec<f32> = (0..2 * pairs).map(|j| j as f32 - 1.25).collect();
            for b in [None, Some(&bias[..])] {
                let want: Vec<[[f32; 2]; T]> = (0..pairs)
                    .map(|p| {
                        let pair = [row(2 * p), row(2 * p + 1)];
                        let bp = b.map(|b| [b[2 * p], b[2 * p + 1]]);
                        let (wsp, tile) = ([ws[2 * p], ws[2 * p + 1]], scalar::dot_tile(&pair, &q));
                        scalar::w8a8_tile(&tile, wsp, ts, bp)
                    })
                    .collect();
                let bits = |y: &[[[f32; 2]; T]]| -> Vec<u32> {
                    y.iter().flatten().flatten().map(|v| v.to_bits()).collect()
                };
                for pf in [0, 4, -6] {
                    let mut two = vec![[[0.0; 2]; T]; pairs];
                    let mut four = two.clone();
                    // SAFETY: AVX2 checked; shapes as the kernel needs, k small.
                    unsafe {
                        flipped_row_pairs::<2, T>(&w, &q, sums, pf, &ws, ts, b, &mut two);
                        flipped_row_pairs::<4, T>(&w, &q, sums, pf, &ws, ts, b, &mut four);
                    }
                    assert_eq!(bits(&two), bits(&want), "2 rows, k={k} pairs={pairs} {pf}");
                    assert_eq!(bits(&four), bits(&want), "4 rows, k={k} pairs={pairs} {pf}");
                }
            }
        }
    }

    /// `sum_i8` equals the plain sum, at every length around the 32-byte
    /// body, on all -128 (the largest magnitudes) and random bytes.
    #[test]
    fn sum_i8_equals_the_plain_sum() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        for len in [0, 1, 31, 32, 33, 95, 4096, 70_001] {
            for v in [
                vec![i8::MIN; len],
                vec![i8::MAX; len],
                rows::<1>(&mut next, len).concat(),
            ] {
                // SAFETY: AVX2 checked.
                assert_eq!(unsafe { sum_i8(&v) }, scalar::sum_i8(&v), "len={len}");
            }
        }
    }

    /// The dequantized tile in the offset form equals the scalar definition
    /// bit for bit (activations within ±127, as the GEMM gives them).
    #[test]
    fn offset_form_w8a8_tile_equals_scalar() {
        if !std::arch::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut next = xorshift(0x51_7cc1_b727_220a);
        for k in [1, 32, 45, 384, 1536] {
            let w = rows::<2>(&mut next, k);
            let a: [Vec<i8>; 4] =
                rows::<4>(&mut next, k).map(|r| r.into_iter().map(|v| v.max(-127)).collect());
            let w = [&w[0][..], &w[1][..]];
            let a: [&[i8]; 4] = core::array::from_fn(|t| &a[t][..]);
            let ws = [0.013, 7.5e-4];
            let ts = [0.02, 1.0e-3, 3.3, 0.5];
            for bias in [None, Some([0.25, -1.5])] {
                let want = scalar::w8a8_tile(&scalar::dot_tile(&w, &a), ws, ts, bias);
                // SAFETY: AVX2 checked; equal lengths, k small.
                let got = unsafe { offset_w8a8(&w, &a, ws, ts, bias) };
                let bits = |y: [[f32; 2]; 4]| y.map(|p| p.map(f32::to_bits));
                assert_eq!(bits(got), bits(want), "k={k} bias={bias:?}");
            }
        }
    }
}
