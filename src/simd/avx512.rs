//! AVX-512 kernels on 512-bit registers: the broadcast panel kernel of the
//! packed W8A8 GEMM ([`crate::packed`]).

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
            // Within each 128-bit lane L: t pairs rows' words of steps 4L..4L+3,
            // then u[4g + c] holds rows 4g..4g+3 of step 4L + c.
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
            for c in 0..4 {
                // A 4 x 4 transpose of 128-bit lanes: step 4L + c gets lane
                // L of u[c], u[4 + c], u[8 + c], u[12 + c] (rows 0..16).
                let (a, b, cc, d) = (u[c], u[4 + c], u[8 + c], u[12 + c]);
                let x0 = _mm512_shuffle_i32x4::<0x44>(a, b);
                let x1 = _mm512_shuffle_i32x4::<0xEE>(a, b);
                let y0 = _mm512_shuffle_i32x4::<0x44>(cc, d);
                let y1 = _mm512_shuffle_i32x4::<0xEE>(cc, d);
                let out = [
                    _mm512_shuffle_i32x4::<0x88>(x0, y0),
                    _mm512_shuffle_i32x4::<0xDD>(x0, y0),
                    _mm512_shuffle_i32x4::<0x88>(x1, y1),
                    _mm512_shuffle_i32x4::<0xDD>(x1, y1),
                ];
                for (lane, o) in out.into_iter().enumerate() {
                    acc = _mm512_dpbusd_epi32(acc, ones, o);
                    let step = sb + 4 * lane + c;
                    // SAFETY: step < k4, so bytes step*256 + rb*64 .. + 64
                    // are inside the 256 * k4 = 64 * k of the panel.
                    unsafe {
                        _mm512_storeu_si512(
                            panel.as_mut_ptr().add(step * 256 + rb * 64) as *mut _,
                            o,
                        )
                    };
                }
            }
        }
        // SAFETY: 16 i32 at 16 * rb of a 64-element array.
        unsafe { _mm512_storeu_si512(sums.as_mut_ptr().add(16 * rb) as *mut _, acc) };
    }
    sums
}
