//! The float activation between a transformer's quantized Linears: BERT's
//! exact (erf) GELU, `x/2 * (1 + erf(x/sqrt 2))`.
//!
//! In a W8A8 encoder the GELU on the FFN's `[tokens, 4 * hidden]` output is
//! float work as large as a quantization pass, and in NumPy (about 30
//! passes over the array) it took 28% of a MiniLM encode. Here it is one
//! pass, vectorised and split across the pool.
//!
//! The definition is the float32 formula every path computes bit for bit
//! ([`gelu`]); each value is independent, so the SIMD builds differ from
//! the scalar one only in how many values a loop iteration takes.

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
        Isa::Avx2 | Isa::AvxVnni | Isa::Avx512Vnni => {
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
