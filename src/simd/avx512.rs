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
