//! AVX-512 kernels on 512-bit registers: the broadcast panel kernels of the
//! packed W8A8 GEMM ([`crate::packed`]) and of W4A8 on 16-row int4 panels
//! ([`crate::w4a8`]).

use core::arch::x86_64::*;

use super::PanelFinish;

/// [`super::scalar::panel_w8a8`] by `vpdpbusd` on 512-bit registers: per
/// 4-column step, the panel's 64 rows in four loads (16 rows x 4 columns
/// each), each token's 4 bytes broadcast against them; 4 x `MR`
/// accumulators hold 16 rows' sums each, so nothing is reduced across lanes,
/// and each is finished in its register (offset, convert, the two scales,
/// bias: the scalar definition's operations in its order, no fused
/// multiply-add).
///
/// # Safety
/// The CPU supports AVX512F and AVX512-VNNI; `panel.len() >= k4 * 256`,
/// every `u[t].len() >= 4 * k4` (every load is in bounds) and every
/// `out[t].len() == rows <= 64` (every store is).
#[target_feature(enable = "avx512f,avx512vnni")]
#[allow(clippy::needless_range_loop)] // t, v index several arrays
pub unsafe fn panel_w8a8<const MR: usize>(
    panel: &[i8],
    k4: usize,
    u: &[&[u8]; MR],
    finish: &PanelFinish<'_>,
    token_scales: &[f32; MR],
    out: &mut [&mut [f32]; MR],
) {
    let rows = out[0].len();
    debug_assert!(panel.len() >= k4 * 256 && u.iter().all(|t| t.len() >= 4 * k4));
    debug_assert!(rows <= 64 && out.iter().all(|o| o.len() == rows));
    let mut acc = [[_mm512_setzero_si512(); 4]; MR];
    for s in 0..k4 {
        // SAFETY: s < k4, so bytes s*256 .. s*256 + 256 and token bytes
        // 4s .. 4s + 4 are in bounds (the contract); unaligned loads.
        unsafe {
            let p = panel.as_ptr().add(s * 256);
            let b: [__m512i; 4] =
                core::array::from_fn(|v| _mm512_loadu_si512(p.add(64 * v) as *const _));
            for t in 0..MR {
                let word = (u[t].as_ptr().add(4 * s) as *const i32).read_unaligned();
                let a = _mm512_set1_epi32(word);
                for v in 0..4 {
                    acc[t][v] = _mm512_dpbusd_epi32(acc[t][v], a, b[v]);
                }
            }
        }
    }
    for v in 0..4 {
        // Rows 16v .. 16v + lanes of out[t] exist; the rest are masked off.
        let lanes = rows.saturating_sub(16 * v).min(16);
        if lanes == 0 {
            break;
        }
        let mask: __mmask16 = if lanes == 16 { !0 } else { (1 << lanes) - 1 };
        // SAFETY: loads of 16 values at 16v of the 64-element arrays;
        // masked stores write only out[t][16v .. 16v + lanes], inside
        // `rows` (masked-off lanes are not accessed).
        unsafe {
            let offsets = _mm512_loadu_si512(finish.offsets.as_ptr().add(16 * v) as *const _);
            let ws = _mm512_loadu_ps(finish.weight_scales.as_ptr().add(16 * v));
            let bias = finish.bias.map(|b| _mm512_loadu_ps(b.as_ptr().add(16 * v)));
            for t in 0..MR {
                let exact = _mm512_sub_epi32(acc[t][v], offsets);
                // Round to nearest even whatever MXCSR says, as `as f32` does.
                let x = _mm512_cvt_roundepi32_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                    exact,
                );
                let y = _mm512_mul_ps(_mm512_mul_ps(x, ws), _mm512_set1_ps(token_scales[t]));
                let y = match bias {
                    Some(b) => _mm512_add_ps(y, b),
                    None => y,
                };
                _mm512_mask_storeu_ps(out[t].as_mut_ptr().add(16 * v), mask, y);
            }
        }
    }
}

/// The packing of 64 row-major weight rows (`k` columns, a multiple of 64)
/// into a panel ([`crate::packed`]: `[k/4][64][4]` bytes) by 16 x 16
/// transposes of 4-byte words: 16 rows x 16 column steps in, each step's
/// 16 rows out as one 64-byte store. Returns each row's wrapping i32 sum
/// (`vpdpbusd` of the stored words with bytes of 1).
///
/// # Safety
/// The CPU supports AVX512F and AVX512-VNNI; `k % 64 == 0`,
/// `w.len() >= 64 * k` and `panel.len() >= 64 * k` (every load and store
/// is in bounds).
#[target_feature(enable = "avx512f,avx512vnni")]
pub unsafe fn pack_panel(w: &[i8], k: usize, panel: &mut [i8]) -> [i32; 64] {
    debug_assert!(k.is_multiple_of(64) && w.len() >= 64 * k && panel.len() >= 64 * k);
    let k4 = k / 4;
    let ones = _mm512_set1_epi8(1);
    let mut sums = [0i32; 64];
    for rb in 0..4 {
        let mut acc = _mm512_setzero_si512();
        for sb in (0..k4).step_by(16) {
            // SAFETY: row rb*16 + i < 64, bytes 4sb .. 4sb + 64 <= k of it:
            // inside the 64 * k bytes of w (the contract).
            let r: [__m512i; 16] = core::array::from_fn(|i| unsafe {
                _mm512_loadu_si512(w.as_ptr().add((rb * 16 + i) * k + sb * 4) as *const _)
            });
            for (s, o) in transpose_words(r).into_iter().enumerate() {
                acc = _mm512_dpbusd_epi32(acc, ones, o);
                let step = sb + s;
                // SAFETY: step < k4, so bytes step*256 + rb*64 .. + 64
                // are inside the 256 * k4 = 64 * k of the panel.
                unsafe {
                    _mm512_storeu_si512(panel.as_mut_ptr().add(step * 256 + rb * 64) as *mut _, o)
                };
            }
        }
        // SAFETY: 16 i32 at 16 * rb of a 64-element array.
        unsafe { _mm512_storeu_si512(sums.as_mut_ptr().add(16 * rb) as *mut _, acc) };
    }
    sums
}

/// A 16 x 16 transpose of 4-byte words: `out[s]` holds word `s` of
/// `rows[0..16]`, row `i` in lane `i`. Unpacks pair the rows' words within
/// each 128-bit lane (`t`, then `u[4g + c]`: rows 4g..4g+3 of step 4L + c
/// in lane L), and a 4 x 4 transpose of 128-bit lanes puts step 4L + c
/// together.
#[inline(always)]
unsafe fn transpose_words(r: [__m512i; 16]) -> [__m512i; 16] {
    let t: [__m512i; 16] = core::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_epi32(a, b)
        } else {
            _mm512_unpackhi_epi32(a, b)
        }
    });
    let u: [__m512i; 16] = core::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + c / 2], t[4 * g + 2 + c / 2]);
        if c % 2 == 0 {
            _mm512_unpacklo_epi64(a, b)
        } else {
            _mm512_unpackhi_epi64(a, b)
        }
    });
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let (a, b, cc, d) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
        let x0 = _mm512_shuffle_i32x4::<0x44>(a, b);
        let x1 = _mm512_shuffle_i32x4::<0xEE>(a, b);
        let y0 = _mm512_shuffle_i32x4::<0x44>(cc, d);
        let y1 = _mm512_shuffle_i32x4::<0xEE>(cc, d);
        out[c] = _mm512_shuffle_i32x4::<0x88>(x0, y0);
        out[4 + c] = _mm512_shuffle_i32x4::<0xDD>(x0, y0);
        out[8 + c] = _mm512_shuffle_i32x4::<0x88>(x1, y1);
        out[12 + c] = _mm512_shuffle_i32x4::<0xDD>(x1, y1);
    }
    out
}

/// The 4-byte words `0 .. 16 * blocks` of 16 rows, transposed: word `w` of
/// row `i` to `out[16 * dest[w] + i]` — a 16-row int4 panel's words
/// (`dest` = each word's octet) or scales (`dest` = identity).
///
/// # Safety
/// The CPU supports AVX512F; every `rows[i].len() >= 64 * blocks` bytes,
/// `dest.len() >= 16 * blocks` and `16 * (dest[w] + 1) <= out.len()` for
/// every `w < 16 * blocks`.
#[target_feature(enable = "avx512f")]
pub unsafe fn transpose_rows_of_words(
    rows: &[&[u8]; 16],
    blocks: usize,
    dest: &[u32],
    out: &mut [u32],
) {
    for b in 0..blocks {
        // SAFETY: bytes 64b .. 64b + 64 <= 64 * blocks of each row.
        let r: [__m512i; 16] = core::array::from_fn(|i| unsafe {
            _mm512_loadu_si512(rows[i].as_ptr().add(64 * b) as *const _)
        });
        let words = transpose_words(r);
        for (s, word) in words.into_iter().enumerate() {
            let at = 16 * dest[16 * b + s] as usize;
            debug_assert!(at + 16 <= out.len());
            // SAFETY: 16 words at 16 * dest[w] fit in out (the contract).
            unsafe { _mm512_storeu_si512(out.as_mut_ptr().add(at) as *mut _, word) };
        }
    }
}

/// [`super::scalar::panel_w4a8`] by `vpdpbusd` on 512-bit registers: each
/// 64-byte load is 16 rows x one column octet; its low nibbles (columns
/// 0..4 of the octet, stored `w + 8`) and high nibbles (4..8) meet the
/// token's matching 4 bytes broadcast. Per group the exact sum is offset
/// and converted, then multiplied by the group's 16 row scales and added to
/// accumulator `g % 8` — the definition's eight lanes, each a register of
/// 16 rows — and the lane sum at the end is seven vertical adds.
///
/// # Safety
/// The CPU supports AVX512F and AVX512-VNNI; `w.len() >= 16 * groups *
/// octets_per_group`, `ws.len() == 16 * groups`, every `a[t].len() >= 8 *
/// groups * octets_per_group` and every `a_sums[t].len() >= groups`.
#[target_feature(enable = "avx512f,avx512vnni")]
pub unsafe fn panel_w4a8<const T: usize>(
    w: &[u32],
    ws: &[f32],
    a: &[&[i8]; T],
    a_sums: &[&[i32]; T],
    octets_per_group: usize,
) -> [[f32; 16]; T] {
    let groups = ws.len() / 16;
    debug_assert!(w.len() >= 16 * groups * octets_per_group);
    debug_assert!(a.iter().all(|t| t.len() >= 8 * groups * octets_per_group));
    debug_assert!(a_sums.iter().all(|t| t.len() >= groups));
    let mut y = [[_mm512_set1_ps(-0.0); 8]; T];
    let mut g = 0;
    while g < groups {
        // Eight groups a round so that lane g % 8 is a constant (the
        // accumulators stay in registers).
        w4_group::<0, T>(w, ws, a, a_sums, octets_per_group, g, &mut y);
        w4_group::<1, T>(w, ws, a, a_sums, octets_per_group, g + 1, &mut y);
        w4_group::<2, T>(w, ws, a, a_sums, octets_per_group, g + 2, &mut y);
        w4_group::<3, T>(w, ws, a, a_sums, octets_per_group, g + 3, &mut y);
        w4_group::<4, T>(w, ws, a, a_sums, octets_per_group, g + 4, &mut y);
        w4_group::<5, T>(w, ws, a, a_sums, octets_per_group, g + 5, &mut y);
        w4_group::<6, T>(w, ws, a, a_sums, octets_per_group, g + 6, &mut y);
        w4_group::<7, T>(w, ws, a, a_sums, octets_per_group, g + 7, &mut y);
        g += 8;
    }
    let mut out = [[0.0f32; 16]; T];
    for t in 0..T {
        let v = &y[t];
        // ((y0 + y4) + (y2 + y6)) + ((y1 + y5) + (y3 + y7)), per row.
        let sum = _mm512_add_ps(
            _mm512_add_ps(_mm512_add_ps(v[0], v[4]), _mm512_add_ps(v[2], v[6])),
            _mm512_add_ps(_mm512_add_ps(v[1], v[5]), _mm512_add_ps(v[3], v[7])),
        );
        // SAFETY: a store of 16 f32 into a [f32; 16].
        unsafe { _mm512_storeu_ps(out[t].as_mut_ptr(), sum) };
    }
    out
}

/// Group `g` of [`panel_w4a8`] into lane `L` (nothing when `g` is past the
/// last group).
///
/// # Safety
/// As [`panel_w4a8`].
#[inline(always)]
unsafe fn w4_group<const L: usize, const T: usize>(
    w: &[u32],
    ws: &[f32],
    a: &[&[i8]; T],
    a_sums: &[&[i32]; T],
    octets_per_group: usize,
    g: usize,
    y: &mut [[__m512; 8]; T],
) {
    if g >= ws.len() / 16 {
        return;
    }
    let nibble = _mm512_set1_epi32(0x0F0F_0F0F);
    // Low and high nibbles sum on separate chains (exact integers: the
    // order is free).
    let mut lo_sum = [_mm512_setzero_si512(); T];
    let mut hi_sum = [_mm512_setzero_si512(); T];
    for o in g * octets_per_group..(g + 1) * octets_per_group {
        // SAFETY: o < groups * octets_per_group, so the 16 words at 16 o
        // and the token bytes 8 o .. 8 o + 8 are in bounds (the contract);
        // unaligned loads.
        unsafe {
            let word = _mm512_loadu_si512(w.as_ptr().add(16 * o) as *const _);
            let lo = _mm512_and_si512(word, nibble);
            let hi = _mm512_and_si512(_mm512_srli_epi32::<4>(word), nibble);
            for t in 0..T {
                let p = a[t].as_ptr().add(8 * o) as *const i32;
                let a_lo = _mm512_set1_epi32(p.read_unaligned());
                let a_hi = _mm512_set1_epi32(p.add(1).read_unaligned());
                lo_sum[t] = _mm512_dpbusd_epi32(lo_sum[t], lo, a_lo);
                hi_sum[t] = _mm512_dpbusd_epi32(hi_sum[t], hi, a_hi);
            }
        }
    }
    // SAFETY: 16 scales at 16 g < ws.len() (g < groups).
    let scales = unsafe { _mm512_loadu_ps(ws.as_ptr().add(16 * g)) };
    for t in 0..T {
        let exact = _mm512_sub_epi32(
            _mm512_add_epi32(lo_sum[t], hi_sum[t]),
            _mm512_set1_epi32(a_sums[t][g]),
        );
        // Round to nearest even, as `as f32` (MXCSR's default, which Rust
        // code never changes), then the product, then the sum: no FMA.
        let product = _mm512_mul_ps(_mm512_cvtepi32_ps(exact), scales);
        y[t][L] = _mm512_add_ps(y[t][L], product);
    }
}
