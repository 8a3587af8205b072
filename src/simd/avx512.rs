//! AVX-512 kernels on 512-bit registers: the broadcast panel kernel of the
//! packed W8A8 GEMM ([`crate::packed`]).

use core::arch::x86_64::*;

/// [`super::scalar::panel_sums`] by `vpdpbusd` on 512-bit registers: per
/// 4-column step, the panel's 64 rows in four loads (16 rows x 4 columns
/// each), each token's 4 bytes broadcast against them; 4 x `MR`
/// accumulators hold 16 rows' sums each, so nothing is reduced across lanes.
///
/// # Safety
/// The CPU supports AVX512F and AVX512-VNNI; `panel.len() >= k4 * 256` and
/// every `u[t].len() >= 4 * k4` (every load is in bounds).
#[target_feature(enable = "avx512f,avx512vnni")]
#[allow(clippy::needless_range_loop)] // t, v index several arrays
pub unsafe fn panel_sums<const MR: usize>(
    panel: &[i8],
    k4: usize,
    u: &[&[u8]; MR],
) -> [[i32; 64]; MR] {
    debug_assert!(panel.len() >= k4 * 256 && u.iter().all(|t| t.len() >= 4 * k4));
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
    let mut out = [[0i32; 64]; MR];
    for t in 0..MR {
        for v in 0..4 {
            // SAFETY: 16 i32 at v*16 of a 64-element array.
            unsafe { _mm512_storeu_si512(out[t].as_mut_ptr().add(16 * v) as *mut _, acc[t][v]) };
        }
    }
    out
}
