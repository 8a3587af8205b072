//! The float layers of a transformer encoder around its quantized Linears:
//! BERT's exact (erf) GELU, `x/2 * (1 + erf(x/sqrt 2))`, and LayerNorm
//! (with the residual add before it).
//!
//! In a W8A8 encoder these are float work as large as the quantization
//! passes: in NumPy (about 30 passes over the array for GELU, 8 for
//! LayerNorm) they took a third of a MiniLM encode. Here each is one pass,
//! vectorised and split across the pool.
//!
//! Both give the bits of the float32 NumPy forward pass they replace
//! ([`gelu`], [`layer_norm_into`] say how), so a model's float reference
//! does not move. Each value (GELU) or row (LayerNorm) is independent, so
//! the SIMD builds differ from the scalar one only in how many values a
//! loop iteration takes.

use crate::error::DynQuantError;
use crate::parallel;
use crate::simd::{self, Isa};

/// The decimal constant rounded to f64, then to f32: as `np.float32(c)`
/// does in the NumPy forward pass this replaces, so both give the same bits.
const fn f32_of(c: f64) -> f32 {
    c as f32
}

// erf(z) = z * P(z^2) / Q(z^2) on [-4, 4] (beyond, erf is +-1 in float32):
// the float32 rational approximation of Eigen / XLA; absolute error < 5e-7.
const ERF_P: [f32; 7] = [
    f32_of(-2.72614225801306e-10),
    f32_of(2.77068142495902e-08),
    f32_of(-2.10102402082508e-06),
    f32_of(-5.69250639462346e-05),
    f32_of(-7.34990630326855e-04),
    f32_of(-2.95459980854025e-03),
    f32_of(-1.60960333262415e-02),
];
const ERF_Q: [f32; 5] = [
    f32_of(-1.45660718464996e-05),
    f32_of(-2.13374055278905e-04),
    f32_of(-1.68282697438203e-03),
    f32_of(-7.37332916720468e-03),
    f32_of(-1.42647390514189e-02),
];
/// `1 / sqrt(2)` computed in f64 then rounded, as `np.float32(1.0 / math.sqrt(2.0))`.
const INV_SQRT_2: f32 = f32_of(1.0 / std::f64::consts::SQRT_2);

/// Values a task takes: 64 KiB in and out, so a thread's share stays in L2.
const TASK_VALUES: usize = 1 << 14;

/// GELU of one value, the definition: with `z = clamp(x * INV_SQRT_2, -4, 4)`
/// (NaN stays NaN), `p` and `q` by Horner's rule in `z * z` (a multiply,
/// then an add, each rounded: no fused multiply-add), `erf = p * z / q`,
/// and the result `(erf + 1) * x * 0.5`, left to right.
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    let z = (x * INV_SQRT_2).clamp(-4.0, 4.0);
    let z2 = z * z;
    let p = ERF_P[1..].iter().fold(ERF_P[0], |p, &c| p * z2 + c);
    let q = ERF_Q[1..].iter().fold(ERF_Q[0], |q, &c| q * z2 + c);
    let erf = p * z / q;
    (erf + 1.0) * x * 0.5
}

/// [`gelu`] of every value of `x` into `out` (same length), on the active
/// kernel path ([`simd::active`]) and the pool's threads.
pub fn gelu_into(x: &[f32], out: &mut [f32]) -> Result<(), DynQuantError> {
    if x.len() != out.len() {
        return Err(DynQuantError::ShapeMismatch {
            expected: x.len(),
            actual: out.len(),
        });
    }
    let isa = simd::try_active()?;
    parallel::zip_chunks(x, 1, out, 1, TASK_VALUES, |x, out| {
        gelu_slice_on(isa, x, out)
    });
    Ok(())
}

/// [`gelu`] of every value of `x`, in place.
pub fn gelu_in_place(x: &mut [f32]) -> Result<(), DynQuantError> {
    let isa = simd::try_active()?;
    parallel::chunks_mut(x, 1, TASK_VALUES, |x| {
        // Each task works through its chunk a block at a time, reading the
        // block into a stack copy (the slice kernels take input and output
        // apart).
        let mut block = [0.0f32; 256];
        for part in x.chunks_mut(block.len()) {
            let copy = &mut block[..part.len()];
            copy.copy_from_slice(part);
            gelu_slice_on(isa, copy, part);
        }
    });
    Ok(())
}

/// The slice loop built for `isa`'s vector width (the same source each
/// time; see the module notes).
fn gelu_slice_on(isa: Isa, x: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match isa {
        Isa::Avx512Vnni if std::arch::is_x86_feature_detected!("avx512f") => {
            // SAFETY: AVX-512F detected on this CPU just now.
            return unsafe { gelu_slice_avx512(x, out) };
        }
        _ if isa.runs_avx2() => {
            // SAFETY: these paths are only active where AVX2 was detected
            // (`simd::set_isa` / `simd::try_active` check it).
            return unsafe { gelu_slice_avx2(x, out) };
        }
        _ => {}
    }
    let _ = isa; // aarch64: the baseline build already has NEON.
    gelu_slice(x, out)
}

#[inline(always)]
fn gelu_slice(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = gelu(v);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn gelu_slice_avx2(x: &[f32], out: &mut [f32]) {
    gelu_slice(x, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gelu_slice_avx512(x: &[f32], out: &mut [f32]) {
    gelu_slice(x, out)
}

/// NumPy's float32 sum of a contiguous run (`np.add.reduce`, hence
/// `np.mean`): pairwise, with runs of at most 128 values summed in eight
/// interleaved f32 accumulators, as `pairwise_sum` in NumPy's
/// `loops_utils.h.src` (the same since NumPy 1.9), then added to the
/// reduction's initial 0.
#[inline(always)]
fn numpy_sum(a: &[f32]) -> f32 {
    0.0 + pairwise_sum(a)
}

#[inline(always)]
fn pairwise_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, &v| s + v)
    } else if n <= 128 {
        let mut r: [f32; 8] = a[..8].try_into().expect("8 values");
        let whole = n - n % 8;
        for chunk in a[8..whole].chunks_exact(8) {
            for (r, &v) in r.iter_mut().zip(chunk) {
                *r += v;
            }
        }
        let res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        a[whole..].iter().fold(res, |s, &v| s + v)
    } else {
        let half = n / 2;
        let n2 = half - half % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// One row of [`layer_norm_into`]: `out = x (+ residual)`, then normalised
/// in place.
#[inline(always)]
fn layer_norm_row(
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    match residual {
        Some(r) => {
            for ((o, &a), &b) in out.iter_mut().zip(x).zip(r) {
                *o = a + b;
            }
        }
        None => out.copy_from_slice(x),
    }
    let width = out.len() as f32;
    let mean = numpy_sum(out) / width;
    for v in out.iter_mut() {
        *v -= mean;
    }
    // The squares of the centred row, summed as NumPy sums them; a stack
    // block per 128 values keeps the pairwise order without a heap buffer.
    let var = squares_sum(out) / width;
    let denom = (var + eps).sqrt();
    for ((v, &g), &b) in out.iter_mut().zip(gamma).zip(beta) {
        *v = *v / denom * g + b;
    }
}

/// [`numpy_sum`] of the squares of `a` (`np.mean(np.square(a))`'s sum),
/// squaring each value as the pairwise order reaches it.
#[inline(always)]
fn squares_sum(a: &[f32]) -> f32 {
    fn pairwise(a: &[f32]) -> f32 {
        if a.len() <= 128 {
            let mut block = [0.0f32; 128];
            let block = &mut block[..a.len()];
            for (b, &v) in block.iter_mut().zip(a) {
                *b = v * v;
            }
            return pairwise_sum(block);
        }
        let half = a.len() / 2;
        let n2 = half - half % 8;
        pairwise(&a[..n2]) + pairwise(&a[n2..])
    }
    0.0 + pairwise(a)
}

/// LayerNorm over rows of `width` values, with the residual added first:
/// `out = (v - mean) / sqrt(var + eps) * gamma + beta` where `v = x +
/// residual` (or `x`), `mean` and the population `var` being NumPy's
/// float32 means (`np.mean(v)`, `np.mean(np.square(v - mean))`: NumPy's
/// pairwise f32 sum — runs of at most 128 values in eight interleaved
/// accumulators, longer ones split at `n / 2` rounded down to a multiple
/// of 8 — divided by `width`), each step rounded to f32 in this
/// order: the bits of BERT's LayerNorm written in NumPy (`x.mean(-1)`,
/// `x - mean`, `np.square`, `np.mean`, `np.sqrt(var + eps)`, `/=`,
/// `*= gamma`, `+= beta`).
pub fn layer_norm_into(
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) -> Result<(), DynQuantError> {
    let width = gamma.len();
    for (len, what) in [
        (beta.len(), "beta"),
        (out.len(), "out"),
        (residual.map_or(x.len(), <[f32]>::len), "residual"),
    ] {
        let expected = if what == "beta" { width } else { x.len() };
        if len != expected {
            return Err(DynQuantError::ShapeMismatch {
                expected,
                actual: len,
            });
        }
    }
    check_rows(x.len(), width, "layer_norm (rows of gamma's length)")?;
    if width == 0 {
        return Ok(());
    }
    let isa = simd::try_active()?;
    let rows_per_task = (TASK_VALUES / width).max(1);
    parallel::chunks_mut_at(out, width, rows_per_task, |start, out| {
        let x = &x[start..start + out.len()];
        let residual = residual.map(|r| &r[start..start + out.len()]);
        layer_norm_rows_on(isa, x, residual, gamma, beta, eps, out)
    });
    Ok(())
}

/// [`layer_norm_row`] over whole rows, built for `isa`'s vector width.
fn layer_norm_rows_on(
    isa: Isa,
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if isa.runs_avx2() {
        // SAFETY: the x86 SIMD paths are only active where AVX2 was
        // detected (`simd::set_isa` / `simd::try_active` check it).
        return unsafe { layer_norm_rows_avx2(x, residual, gamma, beta, eps, out) };
    }
    let _ = isa; // aarch64: the baseline build already has NEON.
    layer_norm_rows(x, residual, gamma, beta, eps, out)
}

#[inline(always)]
fn layer_norm_rows(
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    let width = gamma.len();
    for (i, (x, out)) in x
        .chunks_exact(width)
        .zip(out.chunks_exact_mut(width))
        .enumerate()
    {
        let residual = residual.map(|r| &r[i * width..(i + 1) * width]);
        layer_norm_row(x, residual, gamma, beta, eps, out);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn layer_norm_rows_avx2(
    x: &[f32],
    residual: Option<&[f32]>,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
) {
    layer_norm_rows(x, residual, gamma, beta, eps, out)
}

/// The first half of a row softmax, in place over rows of `width` values:
/// each row minus its maximum (`x -= x.max(-1)`; a NaN anywhere makes the
/// row's maximum NaN, as NumPy's). The exponential stays NumPy's `np.exp`
/// (its bits are NumPy's own SIMD code); [`softmax_normalize_rows`] ends it.
pub fn softmax_shift_rows(x: &mut [f32], width: usize) -> Result<(), DynQuantError> {
    for_each_row(x, width, |row| {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| {
            if m.is_nan() || v.is_nan() {
                f32::NAN
            } else {
                m.max(v)
            }
        });
        for v in row.iter_mut() {
            *v -= max;
        }
    })
}

/// The second half of a row softmax, in place: each row divided by its
/// NumPy float32 sum (the pairwise order of [`layer_norm_into`]), as
/// `x /= x.sum(-1)`.
pub fn softmax_normalize_rows(x: &mut [f32], width: usize) -> Result<(), DynQuantError> {
    for_each_row(x, width, |row| {
        let sum = numpy_sum(row);
        for v in row.iter_mut() {
            *v /= sum;
        }
    })
}

/// `f` on every row of `width` values of `x`, rows split across the pool.
fn for_each_row(
    x: &mut [f32],
    width: usize,
    f: impl Fn(&mut [f32]) + Sync + Send,
) -> Result<(), DynQuantError> {
    check_rows(x.len(), width, "softmax")?;
    if width == 0 {
        return Ok(());
    }
    parallel::chunks_mut(x, width, (TASK_VALUES / width).max(1), |x| {
        x.chunks_exact_mut(width).for_each(&f)
    });
    Ok(())
}

/// `len` values must be whole rows of `width` (rows of 0 only when empty).
fn check_rows(len: usize, width: usize, what: &str) -> Result<(), DynQuantError> {
    if (width == 0 && len != 0) || (width != 0 && !len.is_multiple_of(width)) {
        return Err(DynQuantError::InvalidArgument(format!(
            "{what}: {len} values are not whole rows of {width}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rng::xorshift;

    /// Values that reach every branch of the definition: both sides of the
    /// clamp and its edges, zeros of both signs, subnormals, the extremes,
    /// infinities and NaN.
    fn nasty_values() -> Vec<f32> {
        let edge = 4.0 / INV_SQRT_2;
        let mut v = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            -0.5,
            edge,
            -edge,
            f32::from_bits(edge.to_bits() + 1),
            f32::from_bits(edge.to_bits() - 1),
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x8000_0001),
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        let mut next = xorshift(7);
        v.extend((0..5000).map(|_| uniform(next(), 10.0)));
        v.extend((0..500).map(|_| f32::from_bits(next() as u32)));
        v
    }

    /// A value in `[-half, half)` from 24 random bits.
    fn uniform(bits: u64, half: f32) -> f32 {
        ((bits >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * half
    }

    fn same_bits(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()))
    }

    #[test]
    fn matches_the_erf_gelu_to_float32_accuracy() {
        // An independent reference: erf by its Taylor series in f64 (for
        // |z| <= 4.3 the largest term is ~1e7, so ~1e-9 is left of 16 digits).
        fn erf64(z: f64) -> f64 {
            let (mut sum, mut term) = (0.0f64, z);
            for n in 0..200 {
                sum += term / (2 * n + 1) as f64;
                term *= -z * z / (n + 1) as f64;
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        }
        for i in -600..=600 {
            let x = i as f32 / 100.0;
            let want = 0.5 * x as f64 * (1.0 + erf64(x as f64 / std::f64::consts::SQRT_2));
            let got = gelu(x) as f64;
            assert!(
                (got - want).abs() <= 2e-6 + 2e-6 * want.abs(),
                "gelu({x}) = {got}, erf GELU {want}"
            );
        }
        assert_eq!(gelu(0.0).to_bits(), 0.0f32.to_bits());
        assert_eq!(gelu(-0.0).to_bits(), (-0.0f32).to_bits());
        assert!(gelu(f32::NAN).is_nan());
        assert_eq!(gelu(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn every_path_and_split_gives_the_definitions_bits() {
        let x = nasty_values();
        let want: Vec<f32> = x.iter().map(|&v| gelu(v)).collect();
        for isa in simd::supported() {
            for len in [0, 1, 7, 16, 17, 255, 256, 257, x.len()] {
                let mut out = vec![f32::NAN; len];
                gelu_slice_on(isa, &x[..len], &mut out);
                assert!(same_bits(&out, &want[..len]), "{isa:?}, {len} values");
            }
        }
    }

    #[test]
    fn into_and_in_place_agree_past_the_split_threshold() {
        let mut next = xorshift(11);
        let x: Vec<f32> = (0..3 * parallel::GRAIN + 5)
            .map(|_| uniform(next(), 8.0))
            .collect();
        let want: Vec<f32> = x.iter().map(|&v| gelu(v)).collect();
        let mut out = vec![0.0; x.len()];
        gelu_into(&x, &mut out).unwrap();
        assert!(same_bits(&out, &want));
        let mut y = x.clone();
        gelu_in_place(&mut y).unwrap();
        assert!(same_bits(&y, &want));
    }

    #[test]
    fn numpy_sum_is_pairwise_in_blocks_of_eight() {
        // 1e8 then 1.0s: a left-to-right f32 sum loses every 1.0, NumPy's
        // eight accumulators keep the ones that do not meet the 1e8 lane.
        let mut a = vec![1.0f32; 16];
        a[0] = 1e8;
        let r = [1e8f32 + 1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0];
        let lanes = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        assert_eq!(numpy_sum(&a), lanes);
        assert_eq!(a.iter().fold(0.0f32, |s, &v| s + v), 1e8);
        assert_ne!(lanes, 1e8);
        // Past 128 values the halves are summed apart: 130 values split 64 + 66.
        let mut b = vec![0.5f32; 130];
        b[64] = 3e7;
        let halves = pairwise_sum(&b[..64]) + pairwise_sum(&b[64..]);
        assert_eq!(numpy_sum(&b).to_bits(), halves.to_bits());
        assert_eq!(numpy_sum(&[-0.0]).to_bits(), 0.0f32.to_bits());
    }

    #[test]
    fn layer_norm_matches_f64_and_every_path_gives_the_same_bits() {
        let mut next = xorshift(19);
        for width in [1usize, 7, 8, 9, 128, 129, 384, 1000] {
            let rows = 5;
            let x: Vec<f32> = (0..rows * width)
                .map(|_| uniform(next(), 30.0) + 7.0)
                .collect();
            let r: Vec<f32> = (0..rows * width).map(|_| uniform(next(), 1.0)).collect();
            let g: Vec<f32> = (0..width).map(|_| uniform(next(), 2.0)).collect();
            let b: Vec<f32> = (0..width).map(|_| uniform(next(), 2.0)).collect();
            let mut want = vec![0.0; x.len()];
            layer_norm_into(&x, Some(&r), &g, &b, 1e-5, &mut want).unwrap();
            for (row, got) in want.chunks(width).enumerate() {
                let v: Vec<f64> = (0..width)
                    .map(|j| (x[row * width + j] + r[row * width + j]) as f64)
                    .collect();
                let mean = v.iter().sum::<f64>() / width as f64;
                let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / width as f64;
                for j in 0..width {
                    let exact = (v[j] - mean) / (var + 1e-5).sqrt() * g[j] as f64 + b[j] as f64;
                    assert!((got[j] as f64 - exact).abs() < 1e-4, "width {width}");
                }
            }
            for isa in simd::supported() {
                let mut out = vec![f32::NAN; x.len()];
                layer_norm_rows_on(isa, &x, Some(&r), &g, &b, 1e-5, &mut out);
                assert!(same_bits(&out, &want), "{isa:?}, width {width}");
            }
        }
    }

    #[test]
    fn layer_norm_split_across_threads_gives_the_same_bits() {
        let width = 384;
        let mut next = xorshift(23);
        let x: Vec<f32> = (0..(3 * parallel::GRAIN / width + 7) * width)
            .map(|_| uniform(next(), 5.0))
            .collect();
        let g = vec![1.5f32; width];
        let b = vec![-0.25f32; width];
        let mut whole = vec![0.0; x.len()];
        layer_norm_rows(&x, Some(&x), &g, &b, 1e-12, &mut whole);
        let mut split = vec![0.0; x.len()];
        layer_norm_into(&x, Some(&x), &g, &b, 1e-12, &mut split).unwrap();
        assert!(same_bits(&split, &whole));
    }

    #[test]
    fn layer_norm_refuses_mismatched_lengths() {
        let (g, b) = ([1.0f32; 4], [0.0f32; 4]);
        let mut out = [0.0f32; 8];
        let shape = |expected, actual| DynQuantError::ShapeMismatch { expected, actual };
        let ln = |x: &[f32], r: Option<&[f32]>, beta: &[f32], out: &mut [f32]| {
            layer_norm_into(x, r, &g, beta, 1e-5, out).unwrap_err()
        };
        assert_eq!(ln(&[0.0; 8], None, &b[..3], &mut out), shape(4, 3));
        assert_eq!(ln(&[0.0; 8], None, &b, &mut out[..7]), shape(8, 7));
        assert_eq!(ln(&[0.0; 8], Some(&[0.0; 4]), &b, &mut out), shape(8, 4));
        assert!(matches!(
            ln(&[0.0; 6], None, &b, &mut out[..6]),
            DynQuantError::InvalidArgument(m) if m.contains("not whole rows of 4")
        ));
        let err = layer_norm_into(&[1.0], None, &[], &[], 1e-5, &mut [0.0]).unwrap_err();
        assert!(matches!(err, DynQuantError::InvalidArgument(_)));
        layer_norm_into(&[], None, &[], &[], 1e-5, &mut []).unwrap();
    }

    #[test]
    fn softmax_halves_make_a_softmax() {
        let mut next = xorshift(29);
        for width in [1usize, 2, 7, 8, 17, 128, 129, 300] {
            let x: Vec<f32> = (0..6 * width).map(|_| uniform(next(), 20.0)).collect();
            let mut y = x.clone();
            softmax_shift_rows(&mut y, width).unwrap();
            for row in y.chunks(width) {
                assert_eq!(row.iter().cloned().fold(f32::NEG_INFINITY, f32::max), 0.0);
            }
            for v in y.iter_mut() {
                *v = v.exp();
            }
            softmax_normalize_rows(&mut y, width).unwrap();
            for (xr, yr) in x.chunks(width).zip(y.chunks(width)) {
                let m = xr
                    .iter()
                    .map(|&v| v as f64)
                    .fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = xr.iter().map(|&v| (v as f64 - m).exp()).sum();
                for (&a, &b) in xr.iter().zip(yr) {
                    let exact = (a as f64 - m).exp() / z;
                    assert!(
                        (b as f64 - exact).abs() < 1e-6,
                        "width {width}: {b} vs {exact}"
                    );
                }
            }
        }
    }

    #[test]
    fn softmax_rows_with_nan_or_inf_and_bad_lengths() {
        let mut x = [1.0, f32::NAN, 3.0, 1.0, 2.0, 3.0];
        softmax_shift_rows(&mut x, 3).unwrap();
        assert!(x[..3].iter().all(|v| v.is_nan()));
        assert_eq!(x[3..], [-2.0, -1.0, 0.0]);
        let mut x = [f32::INFINITY, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY];
        softmax_shift_rows(&mut x, 2).unwrap();
        assert!(x[0].is_nan() && x[1] == f32::NEG_INFINITY); // inf - inf, as NumPy
        assert!(x[2].is_nan() && x[3].is_nan()); // -inf - -inf
        let mut x = [1.0f32; 5];
        assert!(softmax_shift_rows(&mut x, 2).is_err());
        assert!(softmax_normalize_rows(&mut x, 0).is_err());
        softmax_normalize_rows(&mut [], 0).unwrap();
        let mut x = vec![0.5f32; (3 * parallel::GRAIN / 10 + 1) * 10];
        softmax_normalize_rows(&mut x, 10).unwrap();
        assert!(x.iter().all(|&v| v == 0.1));
    }

    #[test]
    fn lengths_must_match() {
        let err = gelu_into(&[1.0; 3], &mut [0.0; 2]).unwrap_err();
        assert_eq!(
            err,
            DynQuantError::ShapeMismatch {
                expected: 3,
                actual: 2
            }
        );
    }
}
