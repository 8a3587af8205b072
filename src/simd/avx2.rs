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
/// dividing.
///
/// `q = x * (1 / scale)` is within `|x / scale| * 2^-23` of the true
/// quotient, so less than 2^-15 from it while |quotient| < 256 (larger ones
/// clamp to ±clip either way). When `q` is within `0.5 - 2^-15` of its
/// nearest integer `n`, the true quotient is within 0.5 of `n`, so it rounds
/// to `n` under any tie rule: `n` is the answer. Otherwise (a tie or near
/// one, in any of the 32 lanes) all lanes are divided for real and rounded
/// half away from zero. Needs `recip = 1 / scale` with both normal (the caller checks).
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
    let q = x.map(|v| _mm256_mul_ps(v, recip));
    let n = q.map(|v| _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v));
    let mut near = _mm256_setzero_ps();
    for i in 0..4 {
        let distance = _mm256_andnot_ps(abs, _mm256_sub_ps(q[i], n[i]));
        near = _mm256_or_ps(near, _mm256_cmp_ps::<_CMP_GE_OQ>(distance, limit));
    }
    if _mm256_movemask_ps(near) != 0 {
        return x.map(|v| round_clamp(_mm256_div_ps(v, s), clip, neg_clip));
    }
    n.map(|n| {
        let n = _mm256_and_ps(n, _mm256_cmp_ps::<_CMP_ORD_Q>(n, n)); // NaN -> 0
        _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(n, neg_clip), clip))
    })
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
        let b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), unshuffle);
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

/// Below this many columns a whole dot product fits in i32
/// (|sum| <= k * 128 * 127 < 2^31), so lanes may be summed in i32.
pub(super) const EXACT_I32_TOTAL: usize = (i32::MAX as usize) / (128 * 127);

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

/// Exact dot products of `R` weight rows with `T` activation rows:
/// `out[r][t] = sum_i w[r][i] * a[t][i]`. Each weight vector is loaded and
/// made absolute once and used for all `T` activations, each activation
/// vector once for all `R` rows. `a` must not hold -128.
///
/// # Safety
/// AVX2 available; every row has the same length (the dispatcher asserts).
#[target_feature(enable = "avx2")]
pub unsafe fn dot_tile<const R: usize, const T: usize>(
    w: &[&[i8]; R],
    a: &[&[i8]; T],
) -> [[i64; T]; R] {
    let k = a[0].len();
    let ones = _mm256_set1_epi16(1);
    let body = k / 32 * 32;
    let mut out = [[0i64; T]; R];
    let mut start = 0;
    while start < body {
        let end = (start + STEPS_PER_BLOCK * 32).min(body);
        let mut acc = [[_mm256_setzero_si256(); T]; R];
        let mut i = start;
        // i + 32 <= end <= body <= k == every row's length: loads in bounds.
        while i < end {
            let av: [__m256i; T] = core::array::from_fn(|t| load32_i8(a[t], i));
            for r in 0..R {
                let wv = load32_i8(w[r], i);
                let w_abs = _mm256_abs_epi8(wv);
                for t in 0..T {
                    let p = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(av[t], wv));
                    acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(p, ones));
                }
            }
            i += 32;
        }
        if k < EXACT_I32_TOTAL {
            // Every total fits in i32: reduce four accumulators at a time.
            let mut first = 0;
            while first < R * T {
                let four: [__m256i; 4] = core::array::from_fn(|i| {
                    let j = first + i;
                    if j < R * T {
                        acc[j / T][j % T]
                    } else {
                        _mm256_setzero_si256()
                    }
                });
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

/// [`super::w8a8_tile`] on AVX2: two weight rows by `T` tokens, exact
/// integer dot products, dequantized in vectors. Four sums at a time —
/// rows 0 and 1 of tokens `t` and `t + 1` — are reduced into one vector,
/// which is also the layout of `out[t]`, `out[t + 1]`.
///
/// # Safety
/// AVX2 available; every row `k` long with `k < EXACT_I32_TOTAL`, so each
/// sum fits in i32 (the dispatcher checks both).
#[allow(clippy::needless_range_loop)] // t indexes several parallel arrays
#[target_feature(enable = "avx2")]
pub unsafe fn w8a8_tile<const T: usize>(
    w: &[&[i8]; 2],
    a: &[&[i8]; T],
    ws: [f32; 2],
    ts: [f32; T],
    bias: Option<[f32; 2]>,
) -> [[f32; 2]; T] {
    debug_assert!(a[0].len() < EXACT_I32_TOTAL);
    let k = a[0].len();
    let ones = _mm256_set1_epi16(1);
    let body = k / 32 * 32;
    let mut acc = [[_mm256_setzero_si256(); T]; 2];
    let mut i = 0;
    // i + 32 <= body <= k == every row's length: loads in bounds.
    while i < body {
        let av: [__m256i; T] = core::array::from_fn(|t| load32_i8(a[t], i));
        for r in 0..2 {
            let wv = load32_i8(w[r], i);
            let w_abs = _mm256_abs_epi8(wv);
            for t in 0..T {
                let p = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(av[t], wv));
                acc[r][t] = _mm256_add_epi32(acc[r][t], _mm256_madd_epi16(p, ones));
            }
        }
        i += 32;
    }
    let w_scale = _mm_setr_ps(ws[0], ws[1], ws[0], ws[1]);
    let b = bias.map(|b| _mm_setr_ps(b[0], b[1], b[0], b[1]));
    let mut out = [[0.0f32; 2]; T];
    let mut t = 0;
    while t < T {
        let u = (t + 1).min(T - 1); // the second token (or t again, unused)
        let mut sums = hsum4_i32([acc[0][t], acc[1][t], acc[0][u], acc[1][u]]);
        if body < k {
            // The last k % 32 columns, exactly, in scalar.
            let tail = |r: usize, t: usize| scalar::dot_i8(&w[r][body..], &a[t][body..]) as i32;
            let extra = _mm_setr_epi32(tail(0, t), tail(1, t), tail(0, u), tail(1, u));
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

/// Sums of the eight i32 lanes of four vectors, exact, as one 4-lane vector.
#[inline(always)]
unsafe fn hsum4_i32(a: [__m256i; 4]) -> __m128i {
    let h01 = _mm256_hadd_epi32(a[0], a[1]);
    let h23 = _mm256_hadd_epi32(a[2], a[3]);
    let h = _mm256_hadd_epi32(h01, h23);
    _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256::<1>(h))
}

/// W4A8 of four packed weight rows with `T` token rows; see
/// [`super::w4a8_tile`] for the arithmetic and `crate::weights` for the
/// layout; this is the one-group (exact) form. The stored nibbles `u = w + 8`
/// are unsigned, so `maddubs(u, a)` needs no sign fix-up and cannot saturate
/// (|pair| <= 2 * 15 * 128); the exact `sum w a` is `sum u a - 8 * sum a`,
/// with `8 * sum a` per group given (in 8 lanes) in `a_sums`. i16 lanes absorb up to 8 half-blocks (8 * 3840 < 2^15) before
/// widening. Requires `k % 64 == 0`, `group % 32 == 0`, `k % group == 0`.
///
/// # Safety
/// AVX2 available; `w[r].len() >= k / 2`, `ws[r].len() >= k / group`,
/// `a_sums[t].len() >= k / group`, every token row `k` long (the dispatcher
/// asserts all of these).
#[allow(clippy::needless_range_loop)] // r, t index several parallel arrays
#[target_feature(enable = "avx2")]
pub unsafe fn w4a8_tile<const T: usize>(
    w: &[&[u8]; 4],
    ws: &[&[f32]; 4],
    a: &[&[i8]; T],
    a_sums: &[&[i32]; T],
    group: usize,
) -> [[f32; T]; 4] {
    let k = a[0].len();
    let ones = _mm256_set1_epi16(1);
    let low = _mm256_set1_epi8(0x0f);
    let mut y = [_mm_setzero_ps(); T];
    let mut acc16 = [[_mm256_setzero_si256(); 4]; T];
    let mut acc32 = [[_mm256_setzero_si256(); 4]; T];
    let mut pending = 0; // half-blocks in acc16
    let mut g = 0;
    let mut group_end = group;
    let mut block = 0;
    // block * 64 + 64 <= k: the 32 weight bytes at block * 32 and the
    // activations at block * 64 .. + 64 are in bounds.
    while block * 64 < k {
        let bytes: [__m256i; 4] = core::array::from_fn(|r| {
            _mm256_loadu_si256(w[r].as_ptr().add(block * 32) as *const __m256i)
        });
        for half in 0..2 {
            let col = block * 64 + half * 32;
            let nib: [__m256i; 4] = core::array::from_fn(|r| {
                if half == 0 {
                    _mm256_and_si256(bytes[r], low)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(bytes[r]), low)
                }
            });
            for t in 0..T {
                let av = load32_i8(a[t], col);
                for r in 0..4 {
                    acc16[t][r] = _mm256_add_epi16(acc16[t][r], _mm256_maddubs_epi16(nib[r], av));
                }
            }
            pending += 1;
            let group_done = col + 32 == group_end;
            if pending == 8 || group_done {
                for t in 0..T {
                    for r in 0..4 {
                        let wide = _mm256_madd_epi16(acc16[t][r], ones);
                        acc32[t][r] = _mm256_add_epi32(acc32[t][r], wide);
                        acc16[t][r] = _mm256_setzero_si256();
                    }
                }
                pending = 0;
            }
            if group_done {
                let scales = _mm_setr_ps(ws[0][g], ws[1][g], ws[2][g], ws[3][g]);
                for t in 0..T {
                    // a_sums holds 8 lanes of 8 * sum(a) per group; their total
                    // is the group's offset.
                    let lanes = &a_sums[t][8 * g..8 * g + 8];
                    let offset = _mm_set1_epi32(lanes.iter().sum::<i32>());
                    let exact = _mm_sub_epi32(hsum4_i32(acc32[t]), offset);
                    let p = _mm_mul_ps(_mm_cvtepi32_ps(exact), scales);
                    y[t] = if g == 0 { p } else { _mm_add_ps(y[t], p) };
                    acc32[t] = [_mm256_setzero_si256(); 4];
                }
                g += 1;
                group_end += group;
            }
        }
        block += 1;
    }
    let mut out = [[0.0f32; T]; 4];
    for t in 0..T {
        let mut lanes = [0.0f32; 4];
        _mm_storeu_ps(lanes.as_mut_ptr(), y[t]);
        for r in 0..4 {
            out[r][t] = lanes[r];
        }
    }
    out
}

/// The fixed-order sum of eight f32 lanes that [`super::scalar::lane_sum`]
/// defines: `((y0 + y4) + (y2 + y6)) + ((y1 + y5) + (y3 + y7))`.
#[inline(always)]
unsafe fn lane_sum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps::<1>(t, t)))
}

/// W4A8 with several scale groups per row, four rows by `T` tokens; see
/// [`super::w4a8_tile`] for the arithmetic (per-lane group partials). i32
/// lane `l` of `madd(maddubs(u, a), 1)` holds columns `4l..4l + 4` of a
/// 32-column half-block, which is the lane the definition names.
/// `a_lane_sums[t]` holds, per group, 8 lanes of `8 * sum a` over the same
/// columns, so `madd(..) - it` is the exact signed lane partial.
/// Requires `k % 64 == 0`, `group % 32 == 0`, `k % group == 0`.
///
/// # Safety
/// AVX2 available; `w[r].len() >= k / 2`, `ws[r].len() >= k / group`,
/// `a_lane_sums[t].len() >= 8 * k / group`, every token row `k` long (the
/// dispatcher asserts all of these).
#[allow(clippy::needless_range_loop)] // r, t index several parallel arrays
#[target_feature(enable = "avx2")]
pub unsafe fn w4a8_tile_lanes<const T: usize>(
    w: &[&[u8]; 4],
    ws: &[&[f32]; 4],
    a: &[&[i8]; T],
    a_lane_sums: &[&[i32]; T],
    group: usize,
) -> [[f32; T]; 4] {
    let k = a[0].len();
    let ones = _mm256_set1_epi16(1);
    let low = _mm256_set1_epi8(0x0f);
    // -0.0 + p == p for every p, so starting at -0.0 is the same as starting
    // with the first group's product (the definition), without a branch.
    let mut y = [[_mm256_set1_ps(-0.0); 4]; T];
    // Scale pointers; g < k / group <= ws[r].len() (asserted by the dispatcher).
    let scale_at: [*const f32; 4] = core::array::from_fn(|r| ws[r].as_ptr());
    if group == 32 {
        // One group per half-block: scale every partial as it is made.
        let mut block = 0;
        // As below: every load is in bounds while block * 64 < k.
        while block * 64 < k {
            let bytes: [__m256i; 4] = core::array::from_fn(|r| {
                _mm256_loadu_si256(w[r].as_ptr().add(block * 32) as *const __m256i)
            });
            for half in 0..2 {
                let g = 2 * block + half;
                let col = 32 * g;
                let av: [__m256i; T] = core::array::from_fn(|t| load32_i8(a[t], col));
                let offset: [__m256i; T] = core::array::from_fn(|t| {
                    _mm256_loadu_si256(a_lane_sums[t].as_ptr().add(8 * g) as *const __m256i)
                });
                for r in 0..4 {
                    let nib = if half == 0 {
                        _mm256_and_si256(bytes[r], low)
                    } else {
                        _mm256_and_si256(_mm256_srli_epi16::<4>(bytes[r]), low)
                    };
                    let scale = _mm256_set1_ps(*scale_at[r].add(g));
                    for t in 0..T {
                        let lanes = _mm256_madd_epi16(_mm256_maddubs_epi16(nib, av[t]), ones);
                        let exact = _mm256_sub_epi32(lanes, offset[t]);
                        let p = _mm256_mul_ps(_mm256_cvtepi32_ps(exact), scale);
                        y[t][r] = _mm256_add_ps(y[t][r], p);
                    }
                }
            }
            block += 1;
        }
        let mut out = [[0.0f32; T]; 4];
        for t in 0..T {
            for r in 0..4 {
                out[r][t] = lane_sum_ps(y[t][r]);
            }
        }
        return out;
    }
    let mut acc16 = [[_mm256_setzero_si256(); 4]; T];
    let mut acc32 = [[_mm256_setzero_si256(); 4]; T];
    let mut pending = 0; // half-blocks in acc16
    let mut g = 0;
    let mut group_end = group;
    let mut block = 0;
    // block * 64 + 64 <= k: the 32 weight bytes at block * 32 and the
    // activations at block * 64 .. + 64 are in bounds.
    while block * 64 < k {
        let bytes: [__m256i; 4] = core::array::from_fn(|r| {
            _mm256_loadu_si256(w[r].as_ptr().add(block * 32) as *const __m256i)
        });
        for half in 0..2 {
            let col = block * 64 + half * 32;
            let nib: [__m256i; 4] = core::array::from_fn(|r| {
                if half == 0 {
                    _mm256_and_si256(bytes[r], low)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(bytes[r]), low)
                }
            });
            for t in 0..T {
                let av = load32_i8(a[t], col);
                for r in 0..4 {
                    acc16[t][r] = _mm256_add_epi16(acc16[t][r], _mm256_maddubs_epi16(nib[r], av));
                }
            }
            pending += 1;
            let group_done = col + 32 == group_end;
            if pending == 8 || group_done {
                for t in 0..T {
                    for r in 0..4 {
                        let wide = _mm256_madd_epi16(acc16[t][r], ones);
                        acc32[t][r] = _mm256_add_epi32(acc32[t][r], wide);
                        acc16[t][r] = _mm256_setzero_si256();
                    }
                }
                pending = 0;
            }
            if group_done {
                for t in 0..T {
                    // 8 lanes of 8 * sum(a) for this group: in bounds as asserted.
                    let offset =
                        _mm256_loadu_si256(a_lane_sums[t].as_ptr().add(8 * g) as *const __m256i);
                    for r in 0..4 {
                        let exact = _mm256_sub_epi32(acc32[t][r], offset);
                        let scale = _mm256_set1_ps(*scale_at[r].add(g));
                        let p = _mm256_mul_ps(_mm256_cvtepi32_ps(exact), scale);
                        y[t][r] = _mm256_add_ps(y[t][r], p);
                        acc32[t][r] = _mm256_setzero_si256();
                    }
                }
                g += 1;
                group_end += group;
            }
        }
        block += 1;
    }
    let mut out = [[0.0f32; T]; 4];
    for t in 0..T {
        for r in 0..4 {
            out[r][t] = lane_sum_ps(y[t][r]);
        }
    }
    out
}
