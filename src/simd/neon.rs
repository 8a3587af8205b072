//! aarch64 NEON bodies of the kernels in `simd`, mirroring `avx2.rs`. It
//! passes the same bit-identity tests as the other paths on an aarch64 host,
//! and on x86-64 under qemu-aarch64 (`make check-neon`, when the cross tools
//! are installed).
//!
//! Each `pub unsafe fn` requires NEON (the dispatcher checks) and equal
//! lengths for paired slices (the dispatcher asserts).

use core::arch::aarch64::*;

use super::scalar;

#[target_feature(enable = "neon")]
pub unsafe fn abs_max_bits(x: &[f32]) -> u32 {
    let mask = vdupq_n_u32(0x7fff_ffff);
    let mut acc = vdupq_n_u32(0);
    let body = x.len() / 4 * 4;
    let mut i = 0;
    // i + 4 <= body <= len: the load is in bounds.
    while i < body {
        let v = vreinterpretq_u32_f32(vld1q_f32(x.as_ptr().add(i)));
        acc = vmaxq_u32(acc, vandq_u32(v, mask));
        i += 4;
    }
    vmaxvq_u32(acc).max(scalar::abs_max_bits(&x[body..]))
}

#[target_feature(enable = "neon")]
pub unsafe fn quantize(x: &[f32], scale: f32, clip: f32, out: &mut [i8]) {
    let s = vdupq_n_f32(scale);
    let c = vdupq_n_f32(clip);
    let nc = vdupq_n_f32(-clip);
    let body = x.len() / 8 * 8;
    let mut i = 0;
    // i + 8 <= body <= len == out.len(): loads and the store are in bounds.
    while i < body {
        let mut halves = [vdupq_n_s32(0); 2];
        for (h, half) in halves.iter_mut().enumerate() {
            let q = vdivq_f32(vld1q_f32(x.as_ptr().add(i + 4 * h)), s);
            // FRINTA rounds half away from zero, like f32::round.
            let r = vrndaq_f32(q);
            let r = vreinterpretq_f32_u32(vandq_u32(
                vreinterpretq_u32_f32(r),
                vceqq_f32(r, r), // all-ones unless NaN
            ));
            *half = vcvtq_s32_f32(vminq_f32(vmaxq_f32(r, nc), c));
        }
        let w = vcombine_s16(vmovn_s32(halves[0]), vmovn_s32(halves[1]));
        vst1_s8(out.as_mut_ptr().add(i), vmovn_s16(w));
        i += 8;
    }
    scalar::quantize(&x[body..], scale, clip, &mut out[body..]);
}

#[target_feature(enable = "neon")]
pub unsafe fn dot_i8(w: &[i8], a: &[i8]) -> i64 {
    // vmull_s8 is exact for every int8 pair (|product| <= 16384); pairwise
    // adds into i32 lanes stay below 2^31 within a block of 2^14 steps.
    const STEPS_PER_BLOCK: usize = 1 << 14;
    let body = w.len() / 16 * 16;
    let mut total = 0i64;
    let mut start = 0;
    while start < body {
        let end = (start + STEPS_PER_BLOCK * 16).min(body);
        let mut acc = vdupq_n_s32(0);
        let mut i = start;
        // i + 16 <= end <= body <= len: both loads are in bounds.
        while i < end {
            let wv = vld1q_s8(w.as_ptr().add(i));
            let av = vld1q_s8(a.as_ptr().add(i));
            acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(wv), vget_low_s8(av)));
            acc = vpadalq_s16(acc, vmull_high_s8(wv, av));
            i += 16;
        }
        total += vaddlvq_s32(acc);
        start = end;
    }
    total + scalar::dot_i8(&w[body..], &a[body..])
}
