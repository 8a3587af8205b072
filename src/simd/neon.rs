//! aarch64 NEON bodies of the kernels in `simd`, mirroring `avx2.rs`. It
//! passes the same bit-identity tests as the other paths on an aarch64 host,
//! and on x86-64 under qemu-aarch64 (`make check-neon`, when the cross tools
//! are installed).
//!
//! The int8 dot kernels are one generic body over [`Dot16`], compiled for
//! plain NEON (`widening`) and for the ARMv8.2 dot product (`sdot`).
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

/// How the int8 dot kernels multiply and accumulate: `acc` plus, in its
/// four i32 lanes, the products of 16 byte pairs `w[i] * a[i]` (lane `l`
/// gets bytes `4l .. 4l + 4`, or pairs of them: only the lanes' total
/// matters), exactly, for any int8 `w` and `a` within ±127. A step adds at
/// most 4 * 128 * 127 = 65024 to a lane, so [`STEPS_PER_BLOCK`] holds.
pub(super) trait Dot16: Copy {
    /// # Safety
    /// The CPU supports the implementation's instructions.
    unsafe fn dot16(self, acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t;
}

/// Plain NEON: `smull` of the low halves and `smlal2` of the high halves
/// into i16 lanes (two products each, at most 2 * 128 * 127 = 32512, so
/// exact while `a` has no -128), then `sadalp` pairs into the i32 lanes.
#[derive(Clone, Copy)]
pub(super) struct Widening;

impl Dot16 for Widening {
    #[inline(always)]
    unsafe fn dot16(self, acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
        let p = vmlal_high_s8(vmull_s8(vget_low_s8(w), vget_low_s8(a)), w, a);
        vpadalq_s16(acc, p)
    }
}

/// The ARMv8.2 dot product (`FEAT_DotProd`): `sdot` sums four signed
/// products into each i32 lane, exact for every int8 pair. Its intrinsic
/// (`vdotq_s32`) is not stable Rust yet, so it is one instruction of inline
/// assembly.
#[derive(Clone, Copy)]
pub(super) struct Sdot;

impl Dot16 for Sdot {
    #[inline(always)]
    unsafe fn dot16(self, acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
        let mut acc = acc;
        // SAFETY: registers only (no memory, no stack); the caller's
        // contract is that the CPU has FEAT_DotProd, which `sdot` needs.
        core::arch::asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.16b",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            options(pure, nomem, nostack, preserves_flags),
        );
        acc
    }
}

/// Blocks of at most this many 16-byte steps keep each i32 lane below
/// 2^14 * 65024 < 2^31 before it is widened.
const STEPS_PER_BLOCK: usize = 1 << 14;

/// Body of the `dot_tile` kernels: exact dot products of `R` weight rows
/// with `T` activation rows, `out[r][t] = sum_i w[r][i] * a[t][i]`; each
/// vector is loaded once per step for the whole tile. `a` must not hold
/// -128.
///
/// # Safety
/// The CPU supports NEON and `D`'s instructions; every row has the same
/// length (the dispatcher asserts).
#[allow(clippy::needless_range_loop)] // r, t index several parallel arrays
#[inline(always)]
unsafe fn dot_tile_with<D: Dot16, const R: usize, const T: usize>(
    dot: D,
    w: &[&[i8]; R],
    a: &[&[i8]; T],
) -> [[i64; T]; R] {
    let k = if T > 0 { a[0].len() } else { 0 };
    let body = k / 16 * 16;
    let mut out = [[0i64; T]; R];
    let mut start = 0;
    while start < body {
        let end = (start + STEPS_PER_BLOCK * 16).min(body);
        let mut acc = [[vdupq_n_s32(0); T]; R];
        let mut i = start;
        // i + 16 <= end <= body <= k == every row's length: loads in bounds.
        while i < end {
            let mut av = [vdupq_n_s8(0); T];
            for t in 0..T {
                av[t] = vld1q_s8(a[t].as_ptr().add(i));
            }
            for r in 0..R {
                let wv = vld1q_s8(w[r].as_ptr().add(i));
                for t in 0..T {
                    acc[r][t] = dot.dot16(acc[r][t], wv, av[t]);
                }
            }
            i += 16;
        }
        for r in 0..R {
            for t in 0..T {
                out[r][t] += vaddlvq_s32(acc[r][t]);
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

/// The int8 dot kernels of one instruction set: `dot_i8` and `dot_tile`
/// (see the dispatchers in `simd`), the generic body compiled with the
/// set's target features and its [`Dot16`].
///
/// Each `pub unsafe fn` requires that the CPU supports `$features` (the
/// dispatcher checks) and equal row lengths (the dispatcher asserts).
macro_rules! int8_dot_paths {
    ($(#[$doc:meta])* $name:ident, $features:literal, $dot:expr) => {
        $(#[$doc])*
        pub mod $name {
            use super::*;

            /// # Safety
            /// See [`int8_dot_paths`]; `w.len() == a.len()`.
            #[target_feature(enable = $features)]
            pub unsafe fn dot_i8(w: &[i8], a: &[i8]) -> i64 {
                dot_tile_with($dot, &[w], &[a])[0][0]
            }

            /// # Safety
            /// See [`int8_dot_paths`]; every row has the same length.
            #[target_feature(enable = $features)]
            pub unsafe fn dot_tile<const R: usize, const T: usize>(
                w: &[&[i8]; R],
                a: &[&[i8]; T],
            ) -> [[i64; T]; R] {
                dot_tile_with($dot, w, a)
            }
        }
    };
}

int8_dot_paths!(
    /// Plain NEON (`smull`, `smlal2`, `sadalp`).
    widening,
    "neon",
    Widening
);
int8_dot_paths!(
    /// NEON with the ARMv8.2 dot product (`sdot`).
    sdot,
    "neon,dotprod",
    Sdot
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Past one block of [`STEPS_PER_BLOCK`] steps, with the operands that
    /// fill the lanes fastest (-128 weights by ±127 activations, and for
    /// `sdot`, which allows it, -128 by -128): each path's tile widens its
    /// blocks to i64 exactly, for a tall and a wide tile.
    #[test]
    fn dot_tiles_are_exact_across_blocks() {
        let k = STEPS_PER_BLOCK * 16 + 48 + 5;
        let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        let mut pairs = vec![(-128i8, 127i8), (-128, -127), (127, 127)];
        if dotprod {
            pairs.push((-128, -128));
        }
        for (wv, av) in pairs {
            let w = vec![wv; k];
            let a = vec![av; k];
            let want = k as i64 * wv as i64 * av as i64;
            let (tall, wide): (&[&[i8]; 2], &[&[i8]; 1]) = (&[&w, &w], &[&a]);
            // SAFETY: every aarch64 CPU has NEON; `sdot` runs only where
            // detected; equal lengths.
            unsafe {
                if av != -128 {
                    assert_eq!(widening::dot_tile(tall, wide), [[want]; 2], "{wv} {av}");
                    assert_eq!(
                        widening::dot_tile(&[&w[..]], &[&a[..], &a[..]]),
                        [[want; 2]]
                    );
                }
                if dotprod {
                    assert_eq!(sdot::dot_tile(tall, wide), [[want]; 2], "{wv} {av}");
                    assert_eq!(sdot::dot_tile(&[&w[..]], &[&a[..], &a[..]]), [[want; 2]]);
                }
            }
        }
    }
}
