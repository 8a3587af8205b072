//! SIMD dispatch: the one place that decides which instruction set runs.
//!
//! Every kernel has a plain scalar twin in [`scalar`] that defines its result;
//! the AVX2 (x86-64) and NEON (aarch64) bodies must give the same bits, and
//! the tests force each available path to prove it. The path is chosen once,
//! at first use, from the `DYNQUANT_KERNEL` environment variable
//! (`auto` | `scalar` | `avx2` | `avx512vnni` | `avxvnni` | `neon` |
//! `neondot`, default `auto` = best detected), and can be changed at run
//! time with [`set_isa`].
//!
//! The two VNNI paths are the AVX2 path with `vpdpbusd` as the int8
//! multiply-add of the W8A8 dot kernels (one instruction where AVX2 needs
//! three); every other kernel runs its AVX2 body on them. Likewise
//! `neondot` is the NEON path with the ARMv8.2 `sdot` in the int8 dot
//! kernels.

use crate::DynQuantError;
use core::sync::atomic::{AtomicU8, Ordering};

pub mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

#[cfg(target_arch = "aarch64")]
mod neon;

/// An instruction-set path for the kernels (more may come: match with a
/// wildcard arm).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Isa {
    /// Portable Rust, the reference for every other path.
    Scalar,
    /// x86-64 AVX2 intrinsics.
    Avx2,
    /// aarch64 NEON intrinsics.
    Neon,
    /// AVX2 with AVX-VNNI's `vpdpbusd` in the int8 dot products.
    AvxVnni,
    /// AVX2 with AVX512-VNNI's `vpdpbusd` (256-bit, AVX512VL) in the int8
    /// dot products.
    Avx512Vnni,
    /// NEON with the ARMv8.2 dot product (`sdot`) in the int8 dot products.
    NeonDot,
}

impl Isa {
    /// Lower-case name, as accepted by `DYNQUANT_KERNEL`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Neon => "neon",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::NeonDot => "neondot",
        }
    }

    fn code(self) -> u8 {
        match self {
            Isa::Scalar => 1,
            Isa::Avx2 => 2,
            Isa::Neon => 3,
            Isa::AvxVnni => 4,
            Isa::Avx512Vnni => 5,
            Isa::NeonDot => 6,
        }
    }

    fn from_code(code: u8) -> Option<Isa> {
        match code {
            1 => Some(Isa::Scalar),
            2 => Some(Isa::Avx2),
            3 => Some(Isa::Neon),
            4 => Some(Isa::AvxVnni),
            5 => Some(Isa::Avx512Vnni),
            6 => Some(Isa::NeonDot),
            _ => None,
        }
    }

    /// Parses `auto` (the best supported path) or a path name.
    pub fn parse(name: &str) -> Result<Isa, DynQuantError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(best_supported()),
            "scalar" => Ok(Isa::Scalar),
            "avx2" => Ok(Isa::Avx2),
            "neon" => Ok(Isa::Neon),
            "avxvnni" => Ok(Isa::AvxVnni),
            "avx512vnni" => Ok(Isa::Avx512Vnni),
            "neondot" => Ok(Isa::NeonDot),
            other => Err(DynQuantError::InvalidArgument(format!(
                "unknown kernel path {other:?}: expected one of auto, scalar, avx2, \
                 avx512vnni, avxvnni, neon, neondot"
            ))),
        }
    }

    /// Whether this CPU can run the path.
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Isa::AvxVnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avxvnni")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("avx512vnni")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Whether the path runs the AVX2 bodies (AVX2 and the VNNI paths).
    #[cfg(target_arch = "x86_64")]
    pub(crate) fn runs_avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni)
    }
}

/// The fastest path this CPU supports (the last of [`supported`]).
pub fn best_supported() -> Isa {
    supported().pop().unwrap_or(Isa::Scalar)
}

/// Every path this CPU supports, from the slowest (scalar) to the fastest.
/// The VEX form of `vpdpbusd` ranks above the EVEX one: same work, and no
/// AVX-512 register state.
pub fn supported() -> Vec<Isa> {
    [
        Isa::Scalar,
        Isa::Avx2,
        Isa::Avx512Vnni,
        Isa::AvxVnni,
        Isa::Neon,
        Isa::NeonDot,
    ]
    .into_iter()
    .filter(|isa| isa.is_supported())
    .collect()
}

static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The path the kernels use now.
///
/// First call reads `DYNQUANT_KERNEL`; an unknown or unsupported value there
/// panics with a message naming it, rather than silently running another path
/// (see [`try_active`] for the error instead).
pub fn active() -> Isa {
    try_active().unwrap_or_else(|e| panic!("{e}"))
}

/// [`active`], with a bad `DYNQUANT_KERNEL` as an `InvalidArgument` error
/// naming the variable (until [`set_isa`] picks a path).
pub fn try_active() -> Result<Isa, DynQuantError> {
    if let Some(isa) = Isa::from_code(ACTIVE.load(Ordering::Relaxed)) {
        return Ok(isa);
    }
    let isa = match std::env::var("DYNQUANT_KERNEL") {
        Ok(value) => match Isa::parse(&value) {
            Ok(isa) if isa.is_supported() => isa,
            Ok(isa) => {
                return Err(DynQuantError::InvalidArgument(format!(
                    "DYNQUANT_KERNEL={value}: the {} path is not supported by this CPU",
                    isa.name()
                )))
            }
            Err(e) => {
                return Err(DynQuantError::InvalidArgument(format!(
                    "DYNQUANT_KERNEL: {e}"
                )))
            }
        },
        Err(_) => best_supported(),
    };
    ACTIVE.store(isa.code(), Ordering::Relaxed);
    Ok(isa)
}

/// Forces a path for every later kernel call (tests and debugging).
pub fn set_isa(isa: Isa) -> Result<(), DynQuantError> {
    if !isa.is_supported() {
        return Err(DynQuantError::InvalidArgument(format!(
            "the {} kernel path is not supported by this CPU (supported: {})",
            isa.name(),
            supported()
                .iter()
                .map(|i| i.name())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    ACTIVE.store(isa.code(), Ordering::Relaxed);
    Ok(())
}

/// Below this many columns every exact int8 dot product fits in i32
/// (|sum| <= k * 128 * 127 < 2^31), so lanes may be summed in i32.
pub const EXACT_I32_TOTAL: usize = (i32::MAX as usize) / (128 * 127);

// ─── Dispatched kernels ─────────────────────────────────────────────────────
//
// Each `match` arm for a SIMD path is sound because `active()` only returns a
// path that `Isa::is_supported` confirmed on this CPU.

/// Maximum of the absolute-value bit patterns of `x` (0 for empty input).
///
/// For non-negative floats the bit pattern orders like the value, so the
/// result is `max |x_i|`'s bits when all values are finite; a result above
/// `0x7f80_0000` means a NaN is present, equal to it means an infinity is.
/// One pass gives both the scale and the finiteness check.
#[inline]
pub fn abs_max_bits(x: &[f32]) -> u32 {
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: active() returned an AVX2 path, so the CPU supports AVX2.
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => unsafe { avx2::abs_max_bits(x) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: active() returned a NEON path, so the CPU supports NEON.
        Isa::Neon | Isa::NeonDot => unsafe { neon::abs_max_bits(x) },
        _ => scalar::abs_max_bits(x),
    }
}

/// `out[i] = clamp(round_half_away(x[i] / scale), -clip, clip)`, NaN to 0.
///
/// `scale` must be non-zero (callers write zeros themselves for scale 0), and
/// `clip` in [0, 127] (asserted: `f32::clamp` in the scalar path panics on a
/// negative or NaN clip, so every path rejects one).
#[inline]
pub fn quantize(x: &[f32], scale: f32, clip: f32, out: &mut [i8]) {
    quantize_to(x, scale, clip, out, false)
}

/// [`quantize`]; with `stream`, SIMD paths may bypass the cache for `out`
/// (for outputs too large to stay in it). The result is the same.
#[inline]
pub fn quantize_to(x: &[f32], scale: f32, clip: f32, out: &mut [i8], stream: bool) {
    assert_eq!(x.len(), out.len(), "quantize: input and output lengths");
    assert!(
        (0.0..=127.0).contains(&clip),
        "quantize: clip {clip} not in [0, 127]"
    );
    // Only the AVX2 path has streaming stores.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = stream;
    match active() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 confirmed by active(); lengths checked above.
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => unsafe {
            avx2::quantize(x, scale, clip, out, stream)
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: NEON confirmed by active(); lengths checked above.
        Isa::Neon | Isa::NeonDot => unsafe { neon::quantize(x, scale, clip, out) },
        _ => scalar::quantize(x, scale, clip, out),
    }
}

/// `Some(f(args))` with `f` the int8 dot kernel of the active path's
/// `int8_dot_paths!` module when the path is AVX2 or a VNNI one, else
/// `None`: the one place that maps a path to its module. The expansion
/// calls an `unsafe fn`: sound because `active()` only returns a path whose
/// features the CPU has, given the kernel's own slice preconditions.
#[cfg(target_arch = "x86_64")]
macro_rules! avx2_int8_dot {
    ($f:ident($($arg:expr),*)) => {
        match active() {
            Isa::Avx2 => Some(avx2::madd::$f($($arg),*)),
            Isa::AvxVnni => Some(avx2::avx_vnni::$f($($arg),*)),
            Isa::Avx512Vnni => Some(avx2::avx512_vnni::$f($($arg),*)),
            _ => None,
        }
    };
}

/// `Some(f(args))` with `f` the int8 dot kernel of the active path's
/// `int8_dot_paths!` module in `neon` when the path is a NEON one, else
/// `None` (as `avx2_int8_dot!` for x86-64).
#[cfg(target_arch = "aarch64")]
macro_rules! neon_int8_dot {
    ($f:ident($($arg:expr),*)) => {
        match active() {
            Isa::Neon => Some(neon::widening::$f($($arg),*)),
            Isa::NeonDot => Some(neon::sdot::$f($($arg),*)),
            _ => None,
        }
    };
}

/// Exact `sum w[i] * a[i]`; `a` must not hold -128 (quantized activations
/// are within ±127), `w` may hold any int8.
#[inline]
pub fn dot_i8(w: &[i8], a: &[i8]) -> i64 {
    assert_eq!(w.len(), a.len(), "dot_i8: operand lengths");
    // SAFETY: the path's features confirmed by active(); lengths checked
    // above.
    #[cfg(target_arch = "x86_64")]
    if let Some(dot) = unsafe { avx2_int8_dot!(dot_i8(w, a)) } {
        return dot;
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    if let Some(dot) = unsafe { neon_int8_dot!(dot_i8(w, a)) } {
        return dot;
    }
    scalar::dot_i8(w, a)
}

/// Exact dot products of `R` weight rows with `T` activation rows (all of one
/// length): `out[r][t] = sum_i w[r][i] * a[t][i]`. Activations must not hold
/// -128; weights may hold any int8.
#[inline]
pub fn dot_tile<const R: usize, const T: usize>(w: &[&[i8]; R], a: &[&[i8]; T]) -> [[i64; T]; R] {
    let k = a.first().map_or(0, |row| row.len());
    assert!(
        w.iter().all(|row| row.len() == k) && a.iter().all(|row| row.len() == k),
        "dot_tile: rows of unequal length"
    );
    if T == 0 {
        return [[0; T]; R];
    }
    // SAFETY: the path's features confirmed by active(); row lengths
    // checked above.
    #[cfg(target_arch = "x86_64")]
    if let Some(sums) = unsafe { avx2_int8_dot!(dot_tile(w, a)) } {
        return sums;
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    if let Some(sums) = unsafe { neon_int8_dot!(dot_tile(w, a)) } {
        return sums;
    }
    scalar::dot_tile(w, a)
}

/// Whether [`panel_w8a8`] runs its AVX-512 kernel: the active path is
/// `avx512vnni` and the CPU has AVX512F (every AVX512-VNNI CPU does).
pub fn panel_kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        active() == Isa::Avx512Vnni && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How [`panel_w8a8`] turns a panel's sums into outputs, per row (entries
/// past the panel's last row are computed and ignored).
#[derive(Clone, Copy, Debug)]
pub struct PanelFinish<'a> {
    /// What the tokens' `+128` added to each row's sum: `128 * row sum`, wrapping.
    pub offsets: &'a [i32; 64],
    pub weight_scales: &'a [f32; 64],
    pub bias: Option<&'a [f32; 64]>,
}

/// For `MR` tokens `u` (unsigned bytes, at least `4 * k4` each) and a panel
/// of 64 weight rows packed `[k4][64][4]` (at least `256 * k4` bytes): the
/// W8A8 outputs of each token `t` with the panel's first `out[t].len()`
/// rows (the same for every token, at most 64) into `out[t]`
/// ([`scalar::panel_w8a8`]), by the AVX-512 kernel where
/// [`panel_kernel_available`], else the scalar definition.
pub fn panel_w8a8<const MR: usize>(
    panel: &[i8],
    k4: usize,
    u: &[&[u8]; MR],
    finish: &PanelFinish<'_>,
    token_scales: &[f32; MR],
    out: &mut [&mut [f32]; MR],
) {
    let rows = out.first().map_or(0, |o| o.len());
    assert!(
        panel.len() >= 256 * k4
            && u.iter().all(|t| t.len() >= 4 * k4)
            && rows <= 64
            && out.iter().all(|o| o.len() == rows),
        "panel_w8a8: lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if panel_kernel_available() && MR > 0 {
        // SAFETY: features checked just above; lengths asserted.
        return unsafe { avx512::panel_w8a8(panel, k4, u, finish, token_scales, out) };
    }
    scalar::panel_w8a8(panel, k4, u, finish, token_scales, out)
}

/// W4A8 of one 16-row int4 panel with `T` tokens, bit for bit the
/// definition in [`w4a8_tile`]: `w` holds, per column octet `o` (columns
/// `8o .. 8o + 8`), 16 little-endian words, row `r`'s word with columns
/// `8o + j` in the low nibble of byte `j` and `8o + 4 + j` in the high one
/// (each stored `value + 8`); `ws` per group its 16 rows' scales; `a[t]`
/// the token's int8 row; `a_sums[t]` per group `8 * sum(a)` over it
/// ([`int4_group_sums`]); groups of `8 * octets_per_group` columns.
/// Returns each token's 16 lane sums (rows past a partial panel are
/// whatever its padding gives).
pub fn panel_w4a8<const T: usize>(
    w: &[u32],
    ws: &[f32],
    a: &[&[i8]; T],
    a_sums: &[&[i32]; T],
    octets_per_group: usize,
) -> [[f32; 16]; T] {
    let groups = ws.len() / 16;
    let octets = groups * octets_per_group;
    assert!(
        ws.len().is_multiple_of(16)
            && octets_per_group > 0
            && w.len() >= 16 * octets
            && a.iter().all(|t| t.len() >= 8 * octets)
            && a_sums.iter().all(|t| t.len() >= groups),
        "panel_w4a8: lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if panel_kernel_available() {
        // SAFETY: features checked just above; lengths asserted.
        return unsafe { avx512::panel_w4a8(w, ws, a, a_sums, octets_per_group) };
    }
    scalar::panel_w4a8(w, ws, a, a_sums, octets_per_group)
}

/// The first `dest.len()` 4-byte words of 16 rows, transposed: word `w`
/// of row `i` (little-endian) to `out[16 * dest[w] + i]` — how a 16-row
/// int4 panel is made ([`crate::w4a8`]). AVX-512 transposes of 16 x 16
/// words where [`panel_kernel_available`], the scalar twin for the rest.
pub fn transpose_rows_of_words(rows: &[&[u8]; 16], dest: &[u32], out: &mut [u32]) {
    let words = dest.len();
    assert!(
        rows.iter().all(|r| r.len() >= 4 * words)
            && dest.iter().all(|&d| 16 * (d as usize + 1) <= out.len()),
        "transpose_rows_of_words: lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if panel_kernel_available() {
        // SAFETY: AVX512F checked by panel_kernel_available; every row holds
        // 64 * (words / 16) bytes and every destination fits (asserted).
        unsafe { avx512::transpose_rows_of_words(rows, words / 16, dest, out) };
        return scalar::transpose_rows_of_words(rows, words / 16 * 16, dest, out);
    }
    scalar::transpose_rows_of_words(rows, 0, dest, out)
}

/// Packs 64 row-major rows `w` of `k` columns into a panel (`[k/4][64][4]`
/// bytes, see [`crate::packed`]) by the AVX-512 transpose where
/// [`panel_kernel_available`] and `k` is a multiple of 64, returning the
/// rows' wrapping i32 sums; `None`, writing nothing, elsewhere (the caller
/// packs in scalar code).
pub fn pack_panel(w: &[i8], k: usize, panel: &mut [i8]) -> Option<[i32; 64]> {
    #[cfg(target_arch = "x86_64")]
    if panel_kernel_available()
        && k.is_multiple_of(64)
        && w.len() == 64 * k
        && panel.len() == 64 * k
    {
        // SAFETY: AVX512F and VNNI checked by panel_kernel_available;
        // lengths just checked.
        return Some(unsafe { avx512::pack_panel(w, k, panel) });
    }
    let _ = (w, k, panel);
    None
}

/// Dequantized W8A8 outputs of two int8 weight rows by `T` token rows (all
/// of one length `k`): `out[t][r] = (acc as f32 * ws[r]) * ts[t] (+ bias[r])`
/// with `acc = sum_i w[r][i] * a[t][i]` exact — the W8A8 formula, so every
/// value equals `w8a8_matvec`'s for that row and token. Activations must not
/// hold -128; weights may hold any int8.
#[inline]
pub fn w8a8_tile<const T: usize>(
    w: &[&[i8]; 2],
    a: &[&[i8]; T],
    ws: [f32; 2],
    ts: [f32; T],
    bias: Option<[f32; 2]>,
) -> [[f32; 2]; T] {
    let k = a.first().map_or(0, |row| row.len());
    assert!(
        w.iter().all(|row| row.len() == k) && a.iter().all(|row| row.len() == k),
        "w8a8_tile: rows of unequal length"
    );
    #[cfg(target_arch = "x86_64")]
    if T > 0 && k < EXACT_I32_TOTAL {
        // SAFETY: the path's features confirmed by active(); equal row
        // lengths checked above, and k is small enough for i32 sums.
        if let Some(y) = unsafe { avx2_int8_dot!(w8a8_tile(w, a, ws, ts, bias)) } {
            return y;
        }
    }
    scalar::w8a8_tile(&dot_tile(w, a), ws, ts, bias)
}

/// [`w8a8_tile`] for `out.len()` consecutive pairs of weight rows: `w` holds
/// `2 * out.len()` rows of `k` values (row-major), `ws` and `bias` one value
/// per row; `out[p]` gets rows `2p` and `2p + 1`. Every value equals
/// [`w8a8_tile`]'s, on every path.
///
/// `a_sums`, when given, must hold each token's sum over its first
/// `k / 32 * 32` columns ([`token_sum`]): with them the VNNI paths take
/// the weights as the unsigned side (`w + 128`) and subtract `128 * a_sums`,
/// one `vpdpbusd` per product; the other paths do not need them. With
/// `prefetch_rows != 0` (for rows that are probably not in cache yet)
/// those kernels also fetch into L2, as they go, each row's counterpart
/// `prefetch_rows` rows on (before, when negative) in the matrix `w` is
/// part of (or nowhere, harmlessly).
#[inline]
#[allow(clippy::too_many_arguments)]
pub fn w8a8_row_pairs<const T: usize>(
    w: &[i8],
    a: &[&[i8]; T],
    a_sums: Option<[i32; T]>,
    prefetch_rows: isize,
    ws: &[f32],
    ts: [f32; T],
    bias: Option<&[f32]>,
    out: &mut [[[f32; 2]; T]],
) {
    let k = a.first().map_or(0, |row| row.len());
    let rows = 2 * out.len();
    assert!(
        a.iter().all(|row| row.len() == k)
            && w.len() == rows * k
            && ws.len() == rows
            && bias.is_none_or(|b| b.len() == rows),
        "w8a8_row_pairs: shapes"
    );
    debug_assert!(a_sums.is_none_or(|sums| sums == a.map(token_sum)));
    // Only the x86-64 VNNI kernels use the hint.
    #[cfg(not(target_arch = "x86_64"))]
    let _ = prefetch_rows;
    #[cfg(target_arch = "x86_64")]
    if T > 0 && k < EXACT_I32_TOTAL {
        // SAFETY: the path's features confirmed by active(); shapes checked
        // above, and k is small enough for i32 sums.
        if let Some(()) = unsafe {
            avx2_int8_dot!(w8a8_row_pairs(
                w,
                a,
                a_sums,
                prefetch_rows,
                ws,
                ts,
                bias,
                out
            ))
        } {
            return;
        }
    }
    for (p, y) in out.iter_mut().enumerate() {
        let j = 2 * p;
        let pair = [&w[j * k..(j + 1) * k], &w[(j + 1) * k..(j + 2) * k]];
        *y = w8a8_tile(
            &pair,
            a,
            [ws[j], ws[j + 1]],
            ts,
            bias.map(|b| [b[j], b[j + 1]]),
        );
    }
}

/// Whether the active path runs the AVX2 int8 kernels (AVX2 or a VNNI
/// path on top of it), so [`split_pair_safe`], [`add_residual_products`]
/// and [`sum_i8`] have a SIMD body.
#[cfg(target_arch = "x86_64")]
fn runs_avx2_int8() -> bool {
    active().runs_avx2()
}

/// Splits int8 weights `w` (a multiple of 32 columns, e.g. a row's body)
/// into pair-safe values `clip` and a sparse residual, so that
/// `w = clip + residual` exactly; returns `sum(clip)` and the residual's
/// length `n`, whose columns (within `w`) and values are `cols[..n]` and
/// `vals[..n]` (each at least `w.len() / 2` long: one residual per pair at
/// most).
///
/// `maddubs` multiplies unsigned by signed bytes and saturates the sum of
/// each column pair `(2i, 2i + 1)` to i16. With tokens offset to unsigned
/// bytes (`q + 128`, 0..=255), a weight pair `(s0, s1)` never saturates for
/// any tokens if and only if its positive values sum to at most 128 and its
/// negative values to at least -128: "pair-safe". `clip` keeps every
/// pair-safe pair; in any other pair the second value's magnitude is
/// lowered to `128 - |s0|`, and the difference (within -128..=126) is the
/// residual. Real weights have few such pairs (about 0.3–1.2% of values in
/// MiniLM's and Gaussian rows); uniform random bytes have ~12%.
pub fn split_pair_safe(
    w: &[i8],
    clip: &mut [i8],
    cols: &mut [u32],
    vals: &mut [i8],
) -> (i32, usize) {
    let half = w.len() / 2;
    assert!(
        w.len() == clip.len()
            && w.len().is_multiple_of(32)
            && cols.len() >= half
            && vals.len() >= half,
        "split_pair_safe: lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if runs_avx2_int8() {
        // SAFETY: AVX2 confirmed by active(); lengths checked above.
        return unsafe { avx2::split_pair_safe(w, clip, cols, vals) };
    }
    scalar::split_pair_safe(w, clip, cols, vals)
}

/// `acc[t] += sum over e of vals[e] * qt[cols[e] * m + first + t]` for
/// every `t`, wrapping in i32: the products of one weight row's residual
/// (`cols`, `vals`) with the tokens `first..first + acc.len()` of `qt`, the
/// `m` tokens transposed (`[k, m]`: each column's tokens side by side).
pub fn add_residual_products(
    acc: &mut [i32],
    cols: &[u32],
    vals: &[i8],
    qt: &[i8],
    m: usize,
    first: usize,
) {
    let columns = qt.len().checked_div(m).unwrap_or(0);
    assert!(
        cols.len() == vals.len()
            && first + acc.len() <= m
            && columns * m == qt.len()
            && cols.iter().all(|&c| (c as usize) < columns),
        "add_residual_products: lengths"
    );
    #[cfg(target_arch = "x86_64")]
    if runs_avx2_int8() {
        // SAFETY: AVX2 confirmed by active(); every column's tokens
        // first..first + acc.len() are within qt (checked above).
        return unsafe { avx2::add_residual_products(acc, cols, vals, qt, m, first) };
    }
    scalar::add_residual_products(acc, cols, vals, qt, m, first)
}

/// Whether the active path's int8 multiply-add takes every unsigned by
/// signed byte product without saturating (the VNNI paths' `vpdpbusd`),
/// so that [`w8a8_row_pairs`] can use the weights, offset by 128, as the
/// unsigned side (given [`token_sum`]s).
pub fn full_range_int8_madd() -> bool {
    matches!(active(), Isa::AvxVnni | Isa::Avx512Vnni)
}

/// A token's sum over its first `k / 32 * 32` columns, as
/// [`w8a8_row_pairs`] takes it (wrapping in i32, as its sums do).
pub fn token_sum(a: &[i8]) -> i32 {
    sum_i8(&a[..a.len() / 32 * 32]) as i32
}

/// Exact `sum w[i]`.
pub fn sum_i8(w: &[i8]) -> i64 {
    #[cfg(target_arch = "x86_64")]
    if runs_avx2_int8() {
        // SAFETY: AVX2 confirmed by active().
        return unsafe { avx2::sum_i8(w) };
    }
    scalar::sum_i8(w)
}

/// The offset form of [`w8a8_row_pairs`]: `clip` holds `2 * out.len()`
/// pair-safe rows of `k` values (from [`split_pair_safe`] over the first
/// `k / 32 * 32` columns), `u` the tokens with their top bit flipped
/// (`q + 128` as unsigned bytes), and `out[p][t][r]` gets
/// `(acc as f32 * ws[r]) * ts[t] (+ bias[r])` for row `r = 2p + i` with
///
/// `acc = (sum over the first k / 32 * 32 columns of u * clip) + extras[p][t][i]`
///
/// in wrapping i32 arithmetic. With `extras` holding `-128 * sum(clip)`, the
/// residual's and the last `k % 32` columns' exact products, `acc` is the
/// exact `sum q * w` whenever that fits in i32, so every value equals
/// [`w8a8_row_pairs`]'s. The sums of pair-safe rows never saturate, so
/// AVX2 needs no `sign` per product.
#[allow(clippy::too_many_arguments)]
pub fn w8a8_row_pairs_offset<const T: usize>(
    clip: &[i8],
    u: &[&[i8]; T],
    extras: &[[[i32; 2]; T]],
    ws: &[f32],
    ts: [f32; T],
    bias: Option<&[f32]>,
    out: &mut [[[f32; 2]; T]],
) {
    let k = u.first().map_or(0, |row| row.len());
    let rows = 2 * out.len();
    assert!(
        u.iter().all(|row| row.len() == k)
            && clip.len() == rows * k
            && extras.len() == out.len()
            && ws.len() == rows
            && bias.is_none_or(|b| b.len() == rows),
        "w8a8_row_pairs_offset: shapes"
    );
    // Only each row's first k / 32 * 32 columns go through `maddubs`.
    debug_assert!(clip.chunks_exact(k.max(1)).all(|row| {
        row[..k / 32 * 32]
            .chunks_exact(2)
            .all(|p| scalar::is_pair_safe(p[0], p[1]))
    }));
    assert!(
        k < EXACT_I32_TOTAL,
        "w8a8_row_pairs_offset: k = {k} too long for i32 sums"
    );
    #[cfg(target_arch = "x86_64")]
    if T > 0 {
        // SAFETY: the path's features confirmed by active(); shapes checked
        // above; pair-safe rows, as every multiply-add needs.
        if let Some(()) =
            unsafe { avx2_int8_dot!(w8a8_row_pairs_offset(clip, u, extras, ws, ts, bias, out)) }
        {
            return;
        }
    }
    for (p, y) in out.iter_mut().enumerate() {
        let j = 2 * p;
        let pair = [&clip[j * k..(j + 1) * k], &clip[(j + 1) * k..(j + 2) * k]];
        *y = scalar::w8a8_pair_offset(
            &pair,
            u,
            &extras[p],
            [ws[j], ws[j + 1]],
            ts,
            bias.map(|b| [b[j], b[j + 1]]),
        );
    }
}

/// W4A8 of `R` packed int4 weight rows (layout in [`crate::weights`]) with
/// `T` int8 token rows, with `ws[r]` holding one scale per `group` columns.
///
/// The definition, which every path computes bit for bit: for each group
/// `g`, `P_g` is the exact integer dot product over the group's columns;
/// eight f32 lanes start at -0.0, and for `g = 0, 1, ...` in order, lane
/// `g % 8` adds `(P_g as f32) * ws[r][g]` (the product rounded, then the
/// sum); the result is the lane sum
/// `((y0 + y4) + (y2 + y6)) + ((y1 + y5) + (y3 + y7))`.
///
/// With one group (per-row scales) only lane 0 is used and the other lanes
/// stay -0.0, which the lane sum leaves unchanged: the result is
/// `P as f32 * ws[r][0]`, the W8A8 formula, so W4A8 then equals W8A8 on the
/// unpacked weights bit for bit.
///
/// No columns (`k == 0`): every result is +0.0, with no scale read.
///
/// NaN results are NaN on every path, but which NaN (sign, payload) is not
/// fixed when a NaN scale meets another NaN (Rust does not specify which
/// operand's NaN an add passes on); with finite scales, every NaN is the
/// CPU's default NaN and all bits agree.
///
/// `a_sums[t]` must hold, per group, `8 * sum(a)` over the group's columns
/// (see [`int4_group_sums`]): the AVX2 body multiplies the stored nibbles
/// `w + 8` and subtracts it; the NEON and scalar bodies do not need it.
///
/// This entry reorders the tokens for the SIMD bodies on every call;
/// [`w4a8_tile_packed`] takes them reordered once, for many tiles.
#[inline]
pub fn w4a8_tile<const R: usize, const T: usize>(
    w: &[&[u8]; R],
    ws: &[&[f32]; R],
    a: &[&[i8]; T],
    a_sums: &[&[i32]; T],
    group: usize,
) -> [[f32; T]; R] {
    let k = a.first().map_or(0, |row| row.len());
    if !k.is_multiple_of(64) || a.iter().any(|row| row.len() != k) {
        // No SIMD body takes these (and the lengths are checked below).
        return w4a8_tile_packed(w, ws, a, a, a_sums, group);
    }
    let packed: Vec<Vec<i8>> = a
        .iter()
        .map(|row| {
            let mut out = vec![0i8; k];
            crate::weights::int4_packed_order(row, &mut out);
            out
        })
        .collect();
    let ap: [&[i8]; T] = core::array::from_fn(|t| &packed[t][..]);
    w4a8_tile_packed(w, ws, a, &ap, a_sums, group)
}

/// [`w4a8_tile`] with the tokens also given in the weights' packed order
/// (`ap[t]`: [`crate::weights::int4_packed_order`] of `a[t]`, which the SIMD
/// bodies read; `a` itself only the scalar one). When `k % 64 != 0` no SIMD
/// body runs and `ap` may be `a`.
#[inline]
pub fn w4a8_tile_packed<const R: usize, const T: usize>(
    w: &[&[u8]; R],
    ws: &[&[f32]; R],
    a: &[&[i8]; T],
    ap: &[&[i8]; T],
    a_sums: &[&[i32]; T],
    group: usize,
) -> [[f32; T]; R] {
    let k = a.first().map_or(0, |row| row.len());
    let groups = k.div_ceil(group.max(1));
    assert!(
        group > 0 && k < (1 << 20),
        "w4a8_tile: group {group}, k {k}"
    );
    assert!(
        w.iter().all(|row| row.len() >= k.div_ceil(2))
            && ws.iter().all(|row| row.len() >= groups)
            && a.iter().all(|row| row.len() == k)
            && ap.iter().all(|row| row.len() == k)
            && a_sums.iter().all(|row| row.len() >= groups),
        "w4a8_tile: operand lengths"
    );
    if k == 0 {
        // No columns, no groups: an empty sum on every path (the scalar
        // loop would give -0.0).
        return [[0.0; T]; R];
    }
    // The SIMD bodies take whole 64-column blocks (see `crate::weights`)
    // and groups of whole 4-byte lanes in every block (lanes span 8, 16 or
    // 32 columns): 32 or multiples of 64. Anything else goes to the scalar
    // path.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    let simd_shape = T > 0
        && k.is_multiple_of(64)
        && k.is_multiple_of(group)
        && (group == 32 || group.is_multiple_of(64));
    #[cfg(target_arch = "x86_64")]
    if simd_shape {
        // SAFETY: the path's features confirmed by active(); shapes checked
        // above.
        if let Some(y) = unsafe { avx2_int8_dot!(w4a8_tile(w, ws, ap, a_sums, group)) } {
            return y;
        }
    }
    #[cfg(target_arch = "aarch64")]
    if simd_shape {
        // SAFETY: the path's features confirmed by active(); shapes checked
        // above, k > 0.
        if let Some(y) = unsafe { neon_int8_dot!(w4a8_tile(w, ws, ap, group)) } {
            return y;
        }
    }
    scalar::w4a8_tile(w, ws, a, group)
}

/// Adds the eight lane sums of one packed block (see [`crate::weights`]:
/// lane `l` holds the block's columns `c0 + span * l ..`, `span = width /
/// 8`) into the sums of their groups, `acc[g - g0]` for group `g`. The
/// block lies in the 8-group chunk starting at group `g0` and `group` is a
/// multiple of `span` (the SIMD bodies' shapes: every block starts at a
/// multiple of its width, every chunk at a multiple of 256). Sums wrap in i32: the true
/// group sums fit.
#[cfg(any(target_arch = "aarch64", test))]
#[inline(always)]
pub(crate) fn fold_block_lanes(
    acc: &mut [i32; 8],
    lanes: &[i32; 8],
    c0: usize,
    width: usize,
    group: usize,
    g0: usize,
) {
    let span = width / 8;
    let per_group = group / span;
    let mut g = c0 / group - g0;
    let mut left = (group - c0 % group) / span;
    for &s in lanes {
        acc[g] = acc[g].wrapping_add(s);
        left -= 1;
        if left == 0 {
            g += 1;
            left = per_group;
        }
    }
}

/// Per group of `group` columns of `a`, `8 * sum(a)` over the group (the
/// W4A8 kernels' offset correction: the weights are stored as `w + 8`).
pub fn int4_group_sums(a: &[i8], group: usize) -> Vec<i32> {
    a.chunks(group.max(1))
        .map(|g| 8 * g.iter().map(|&v| v as i32).sum::<i32>())
        .collect()
}

/// The W4A8 tile cases each SIMD body is held to, bit for bit, against
/// [`scalar::w4a8_tile`] (the AVX2 and NEON tests call this): every group
/// form the bodies take (32, 64, 128, multiples of 64, one group per row)
/// on rows of one to several packed blocks, full and partial chunks of
/// eight groups, the extreme operands (-8 weights by -128 and by ±127), and
/// scales that make the f32 step delicate (negative, ±0, subnormal, huge,
/// ∞, NaN).
#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) mod w4a8_cases {
    /// Four packed weight rows, their group scales, four token rows and the
    /// same tokens in the packed order (what the SIMD bodies read).
    pub(crate) struct Case {
        rows: Vec<Vec<u8>>,
        scales: Vec<Vec<f32>>,
        acts: Vec<Vec<i8>>,
        ordered: Vec<Vec<i8>>,
        pub(crate) group: usize,
        pub(crate) what: String,
    }

    /// Borrowed views of a [`Case`]: rows, scales, tokens, ordered tokens.
    pub(crate) type Views<'a> = ([&'a [u8]; 4], [&'a [f32]; 4], [&'a [i8]; 4], [&'a [i8]; 4]);

    impl Case {
        pub(crate) fn views(&self) -> Views<'_> {
            (
                core::array::from_fn(|r| &self.rows[r][..]),
                core::array::from_fn(|r| &self.scales[r][..]),
                core::array::from_fn(|t| &self.acts[t][..]),
                core::array::from_fn(|t| &self.ordered[t][..]),
            )
        }
    }

    /// The bits of a tile, row-major (so -0.0 is not 0.0), with every NaN
    /// as one value: when two different NaNs meet in an add, which one comes
    /// out is not fixed (Rust leaves it open, and x86 and LLVM's operand
    /// order decide it), and the cases' NaN scale meets the CPU's default
    /// NaN of `inf - inf`. Finite scales, all that the library's products
    /// take, give only the default NaN, so there all bits agree.
    pub(crate) fn bits<const R: usize, const T: usize>(y: &[[f32; T]; R]) -> Vec<u32> {
        y.iter()
            .flatten()
            .map(|v| {
                if v.is_nan() {
                    f32::NAN.to_bits()
                } else {
                    v.to_bits()
                }
            })
            .collect()
    }

    /// Calls `check` on every case (the same cases on every run).
    pub(crate) fn for_each(mut check: impl FnMut(&Case)) {
        let mut next = crate::test_rng::xorshift(0x9e37_79b9_7f4a_7c15);
        let special = [
            -1.5e-3f32,
            0.0,
            -0.0,
            1e-40,
            3e38,
            f32::INFINITY,
            f32::NAN,
            2.5e-2,
        ];
        for k in [64usize, 128, 192, 320, 384, 448, 512, 576, 1024, 1088] {
            for group in [32usize, 64, 128, 192, 256, k] {
                if !k.is_multiple_of(group) || !(group == 32 || group.is_multiple_of(64)) {
                    continue;
                }
                for extreme in [false, true] {
                    let rows = (0..4)
                        .map(|_| {
                            (0..k / 2)
                                .map(|_| if extreme { 0 } else { next() as u8 })
                                .collect()
                        })
                        .collect();
                    let scales = (0..4)
                        .map(|_| {
                            (0..k / group)
                                .map(|_| match next() % 4 {
                                    0 => special[(next() % 8) as usize],
                                    _ => (next() % 1000) as f32 * 1e-4 - 0.03,
                                })
                                .collect()
                        })
                        .collect();
                    let acts: Vec<Vec<i8>> = (0..4)
                        .map(|t| {
                            (0..k)
                                .map(|i| match (extreme, t) {
                                    (true, 0) => -128,
                                    (true, _) => {
                                        if i % 3 == 0 {
                                            -127
                                        } else {
                                            127
                                        }
                                    }
                                    _ => next() as i8,
                                })
                                .collect()
                        })
                        .collect();
                    let ordered = acts
                        .iter()
                        .map(|t| {
                            let mut o = vec![0i8; k];
                            crate::weights::int4_packed_order(t, &mut o);
                            o
                        })
                        .collect();
                    check(&Case {
                        rows,
                        scales,
                        acts,
                        ordered,
                        group,
                        what: format!("k {k} group {group} extreme {extreme}"),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each lane's sum lands in the slot of the group its columns belong
    /// to, for every block width and kernel group size.
    #[test]
    fn block_lanes_fold_into_their_groups() {
        for (width, group) in [
            (256, 32),
            (128, 32),
            (64, 32),
            (256, 64),
            (128, 64),
            (64, 64),
            (256, 128),
            (128, 128),
            (256, 256),
            (256, 768),
            (128, 384),
        ] {
            let span = width / 8;
            // Every start a block of this width can have inside one chunk.
            for c0 in (0..8 * group).step_by(width) {
                let lanes: [i32; 8] = core::array::from_fn(|l| 1 << (3 * l));
                let mut acc = [7i32; 8];
                fold_block_lanes(&mut acc, &lanes, 16 * group + c0, width, group, 16);
                let mut want = [7i32; 8];
                for (l, &v) in lanes.iter().enumerate() {
                    want[(c0 + span * l) / group] += v;
                }
                assert_eq!(acc, want, "width {width} group {group} c0 {c0}");
            }
        }
    }

    /// Every aarch64 CPU has NEON (the tests that force each path would
    /// otherwise pass without ever running it, e.g. under an emulator that
    /// hides the feature), and `neondot` is there exactly when the CPU has
    /// the dot product.
    #[cfg(target_arch = "aarch64")]
    #[test]
    fn neon_is_among_the_paths_the_tests_force() {
        let mut want = vec![Isa::Scalar, Isa::Neon];
        if std::arch::is_aarch64_feature_detected!("dotprod") {
            want.push(Isa::NeonDot);
        }
        assert_eq!(supported(), want);
        assert_eq!(Some(&best_supported()), want.last());
    }

    /// Names parse back to their paths; the paths are listed slowest first
    /// with `auto` the last; a VNNI path never without AVX2; forcing a path
    /// the CPU lacks is an error that names it.
    #[test]
    fn paths_parse_rank_and_refuse_what_the_cpu_lacks() {
        let all = [
            Isa::Scalar,
            Isa::Avx2,
            Isa::Neon,
            Isa::AvxVnni,
            Isa::Avx512Vnni,
            Isa::NeonDot,
        ];
        for isa in all {
            assert_eq!(Isa::parse(isa.name()).unwrap(), isa);
            assert_eq!(Isa::from_code(isa.code()), Some(isa));
            if !isa.is_supported() {
                let e = set_isa(isa).unwrap_err().to_string();
                assert!(e.contains(isa.name()), "{e}");
            }
        }
        let e = Isa::parse("avx512").unwrap_err().to_string();
        assert!(e.contains("avx512vnni, avxvnni"), "{e}");
        let paths = supported();
        assert_eq!(paths[0], Isa::Scalar);
        assert_eq!(Some(&best_supported()), paths.last());
        assert_eq!(Isa::parse("auto").unwrap(), best_supported());
        if paths.contains(&Isa::AvxVnni) || paths.contains(&Isa::Avx512Vnni) {
            assert!(paths.contains(&Isa::Avx2), "{paths:?}");
        }
        if paths.contains(&Isa::NeonDot) {
            assert!(paths.contains(&Isa::Neon), "{paths:?}");
        }
        set_isa(best_supported()).unwrap();
    }

    /// Values at, and a few ulps around, every half-integer quotient for
    /// many scales: where multiplying by the reciprocal could round the
    /// other way. Every path must match the scalar division.
    #[test]
    fn quantize_is_exact_near_half_integers() {
        let mut scales = vec![1.0f32, 0.1, 1.0 / 127.0, 3.0e-3, 7.7e-8, 1.0e30 / 127.0];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            scales.push(f32::from_bits(
                0x3000_0000 + (state >> 40) as u32 % 0x1800_0000,
            ));
        }
        let mut x = Vec::new();
        for &s in &scales {
            x.clear();
            for n in -130i32..=130 {
                let center = (n as f32 + 0.5) * s;
                for d in -3i32..=3 {
                    x.push(f32::from_bits((center.to_bits() as i32 + d) as u32));
                }
            }
            let mut want = vec![0i8; x.len()];
            scalar::quantize(&x, s, 127.0, &mut want);
            for isa in supported() {
                set_isa(isa).unwrap();
                let mut got = vec![0i8; x.len()];
                quantize(&x, s, 127.0, &mut got);
                assert_eq!(got, want, "scale {s} on {}", isa.name());
            }
        }
        set_isa(best_supported()).unwrap();
    }

    /// Outputs long enough for streaming stores, at every alignment of the
    /// output: the aligned body, the scalar head and tail all match.
    #[test]
    fn quantize_streaming_stores_match_scalar() {
        let n = (1 << 22) + 37;
        let x: Vec<f32> = (0..n + 64)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 0.37)
            .collect();
        let mut want = vec![0i8; n];
        scalar::quantize(&x[5..5 + n], 3.1, 127.0, &mut want);
        let mut buf = vec![0i8; n + 64];
        for offset in [0, 1, 7, 31] {
            quantize_to(&x[5..5 + n], 3.1, 127.0, &mut buf[offset..offset + n], true);
            assert!(buf[offset..offset + n] == want[..], "offset {offset}");
        }
    }
}
