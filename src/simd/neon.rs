//! aarch64 NEON bodies of the kernels in `simd`, mirroring `avx2.rs`. It
//! passes the same bit-identity tests as the other paths on an aarch64 host,
//! and on x86-64 under qemu-aarch64 (`make check-neon`, when the cross tools
//! are installed).
//!
//! The int8 dot kernels are one generic body over [`Dot16`], compiled for
//! plain NEON (`widening`) and for the ARMv8.2 dot product (`sdot`).
//!
//! Each `pub unsafe fn` requires NEON (the dispatcher checks) and the slice
//! lengths its `# Safety` names (the dispatcher asserts them).

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

    /// As `dot16`, with lane `l` adding exactly the products of bytes
    /// `4l .. 4l + 4` (the W4A8 layout keeps one column span per 4 bytes).
    ///
    /// # Safety
    /// As `dot16`.
    unsafe fn lanes16(self, acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t;
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

    #[inline(always)]
    unsafe fn lanes16(self, acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
        // Pair sums of bytes 0..8 and of bytes 8..16, then pairs of those:
        // lane l is bytes 4l .. 4l + 4 (each product within 2^14).
        let lo = vpaddlq_s16(vmull_s8(vget_low_s8(w), vget_low_s8(a)));
        let hi = vpaddlq_s16(vmull_high_s8(w, a));
        vaddq_s32(acc, vpaddq_s32(lo, hi))
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

    #[inline(always)]
    unsafe fn lanes16(self, acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
        // `sdot` lane l is bytes 4l .. 4l + 4 already.
        self.dot16(acc, w, a)
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

/// Packed int4 weights as signed values: the low and the high nibbles of
/// 16 bytes (each stores `w + 8`), minus 8.
#[inline(always)]
unsafe fn int4_nibbles(p: uint8x16_t) -> (int8x16_t, int8x16_t) {
    let eight = vdupq_n_s8(8);
    let low = vreinterpretq_s8_u8(vandq_u8(p, vdupq_n_u8(0x0f)));
    let high = vreinterpretq_s8_u8(vshrq_n_u8::<4>(p));
    (vsubq_s8(low, eight), vsubq_s8(high, eight))
}

/// Adds the f32 step of the W4A8 definition (see `simd::w4a8_tile`) for
/// groups `g0 .. g0 + n` (`1 <= n <= 8`) to the eight lanes `y` of one
/// token: lane `l` adds `(sums[l] as f32) * ws[g0 + l]`, the product
/// rounded, then the sum (`fmul`, `fadd`: never fused). Lanes from `n` on
/// are left as they are, so a row's last, partial chunk changes no lane
/// the definition does not touch (not even the sign of a zero).
///
/// # Safety
/// NEON available. (`ws[g0..g0 + n]` is checked slicing.)
#[inline(always)]
unsafe fn w4a8_chunk_step(
    y: &mut [float32x4_t; 2],
    sums: &[i32; 8],
    ws: &[f32],
    g0: usize,
    n: usize,
) {
    let mut scales = [0.0f32; 8];
    scales[..n].copy_from_slice(&ws[g0..g0 + n]);
    for (half, y) in y.iter_mut().enumerate() {
        // The exact group sums (they fit in i32).
        let exact = vld1q_s32(sums.as_ptr().add(4 * half));
        // i32 -> f32 rounds to nearest even, as `i64 as f32` does for a
        // value within i32.
        let p = vmulq_f32(
            vcvtq_f32_s32(exact),
            vld1q_f32(scales.as_ptr().add(4 * half)),
        );
        let added = vaddq_f32(*y, p);
        *y = if n >= 4 * (half + 1) {
            added
        } else {
            let lane: [u32; 4] = core::array::from_fn(|l| (4 * half + l) as u32);
            let keep_new = vcltq_u32(vld1q_u32(lane.as_ptr()), vdupq_n_u32(n as u32));
            vbslq_f32(keep_new, added, *y)
        };
    }
}

/// Body of the `w4a8_tile` kernels: W4A8 of `R` packed int4 rows with `T`
/// token rows given in the weights' packed order (`ap`), bit for bit the
/// definition in `simd::w4a8_tile` (`crate::weights` has the layout). Each
/// 32-byte chunk of a packed block is unpacked once for all `T` tokens (its
/// low nibbles pair with the 32 activations at `64i`, its high nibbles with
/// those at `64i + 32`); [`Dot16::lanes16`] keeps each 4-byte lane's sum
/// (weights within [-8, 7], so any int8 activation is exact on either
/// implementation), the block's eight lane sums go to their groups
/// (`simd::fold_block_lanes`), and [`w4a8_chunk_step`] applies each chunk
/// of eight groups' f32 step.
///
/// # Safety
/// The CPU supports NEON and `D`'s instructions; `T > 0`; every token row
/// has `k` values with `0 < k < 2^20`, `k % 64 == 0`, `k % group == 0` and
/// `group` 32 or a multiple of 64; `w[r].len() >= k / 2` and
/// `ws[r].len() >= k / group` (the dispatcher asserts all of these).
#[allow(clippy::needless_range_loop)] // r, t index several parallel arrays
#[inline(always)]
unsafe fn w4a8_tile_with<D: Dot16, const R: usize, const T: usize>(
    dot: D,
    w: &[&[u8]; R],
    ws: &[&[f32]; R],
    ap: &[&[i8]; T],
    group: usize,
) -> [[f32; T]; R] {
    let k = ap[0].len();
    let groups = k / group;
    let zero = vdupq_n_s32(0);
    let mut out = [[0.0f32; T]; R];
    for r in 0..R {
        // -0.0 + p == p: the same as starting a lane with its first product.
        let mut y = [[vdupq_n_f32(-0.0); 2]; T];
        // The chunk's group sums (slot g - g0), per token.
        let mut sums = [[0i32; 8]; T];
        let mut g0 = 0;
        for (c0, width) in crate::weights::int4_blocks(k) {
            let mut lanes = [[zero; 2]; T];
            for i in 0..width / 64 {
                // c0 / 2 + 32i + 32 <= k / 2 <= w[r].len() and
                // c0 + 64i + 64 <= k: in bounds.
                let p = w[r].as_ptr().add(c0 / 2 + 32 * i);
                let (e0, o0) = int4_nibbles(vld1q_u8(p));
                let (e1, o1) = int4_nibbles(vld1q_u8(p.add(16)));
                for t in 0..T {
                    let at = ap[t].as_ptr().add(c0 + 64 * i);
                    let l = &mut lanes[t];
                    l[0] = dot.lanes16(l[0], e0, vld1q_s8(at));
                    l[0] = dot.lanes16(l[0], o0, vld1q_s8(at.add(32)));
                    l[1] = dot.lanes16(l[1], e1, vld1q_s8(at.add(16)));
                    l[1] = dot.lanes16(l[1], o1, vld1q_s8(at.add(48)));
                }
            }
            for t in 0..T {
                let mut l = [0i32; 8];
                vst1q_s32(l.as_mut_ptr(), lanes[t][0]);
                vst1q_s32(l.as_mut_ptr().add(4), lanes[t][1]);
                super::fold_block_lanes(&mut sums[t], &l, c0, width, group, g0);
            }
            let end = c0 + width;
            if end.is_multiple_of(8 * group) || end == k {
                let n = (groups - g0).min(8);
                for t in 0..T {
                    w4a8_chunk_step(&mut y[t], &sums[t], ws[r], g0, n);
                    sums[t] = [0; 8];
                }
                g0 += 8;
            }
        }
        for t in 0..T {
            let mut lanes = [0.0f32; 8];
            vst1q_f32(lanes.as_mut_ptr(), y[t][0]);
            vst1q_f32(lanes.as_mut_ptr().add(4), y[t][1]);
            out[r][t] = scalar::lane_sum(&lanes);
        }
    }
    out
}

/// The int8 dot kernels of one instruction set: `dot_i8`, `dot_tile` and
/// `w4a8_tile` (see the dispatchers in `simd`), the generic body compiled with the
/// set's target features and its [`Dot16`].
///
/// Each `pub unsafe fn` requires that the CPU supports `$features` (the
/// dispatcher checks) and the row lengths its `# Safety` names (the
/// dispatcher asserts them).
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

            /// # Safety
            /// See [`int8_dot_paths`] and [`w4a8_tile_with`].
            #[target_feature(enable = $features)]
            pub unsafe fn w4a8_tile<const R: usize, const T: usize>(
                w: &[&[u8]; R],
                ws: &[&[f32]; R],
                ap: &[&[i8]; T],
                group: usize,
            ) -> [[f32; T]; R] {
                w4a8_tile_with($dot, w, ws, ap, group)
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

    /// Both paths' `w4a8_tile` against the scalar definition, bit for bit,
    /// on the shared cases (`super::w4a8_cases`).
    #[test]
    fn w4a8_tiles_equal_the_scalar_definition() {
        use crate::simd::w4a8_cases::{bits, for_each};
        let dotprod = std::arch::is_aarch64_feature_detected!("dotprod");
        for_each(|case| {
            let (w, ws, a, ap) = case.views();
            let (group, ctx) = (case.group, &case.what);
            let want41 = scalar::w4a8_tile(&w, &ws, &[a[0]], group);
            let want24 = scalar::w4a8_tile(&[w[1], w[3]], &[ws[1], ws[3]], &a, group);
            let want33 = scalar::w4a8_tile(
                &[w[2], w[0], w[1]],
                &[ws[2], ws[0], ws[1]],
                &[a[3], a[1], a[2]],
                group,
            );
            // SAFETY: every aarch64 CPU has NEON; `sdot` runs only where
            // detected; the cases meet `w4a8_tile_with`'s contract.
            unsafe {
                let y = widening::w4a8_tile(&w, &ws, &[ap[0]], group);
                assert_eq!(bits(&y), bits(&want41), "neon 4x1 {ctx}");
                let y = widening::w4a8_tile(&[w[1], w[3]], &[ws[1], ws[3]], &ap, group);
                assert_eq!(bits(&y), bits(&want24), "neon 2x4 {ctx}");
                let y = widening::w4a8_tile(
                    &[w[2], w[0], w[1]],
                    &[ws[2], ws[0], ws[1]],
                    &[ap[3], ap[1], ap[2]],
                    group,
                );
                assert_eq!(bits(&y), bits(&want33), "neon 3x3 {ctx}");
                if dotprod {
                    let y = sdot::w4a8_tile(&w, &ws, &[ap[0]], group);
                    assert_eq!(bits(&y), bits(&want41), "sdot 4x1 {ctx}");
                    let y = sdot::w4a8_tile(&[w[1], w[3]], &[ws[1], ws[3]], &ap, group);
                    assert_eq!(bits(&y), bits(&want24), "sdot 2x4 {ctx}");
                }
            }
        });
    }

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
