//! SmoothQuant: move quantization difficulty from activations to weights.

use crate::parallel;
use crate::simd::scalar::INF_BITS;
use crate::DynQuantError;

/// SmoothQuant configuration.
///
/// Smoothing factor: `s_j = max(|A_j|)^α / max(|W_j|)^(1-α)`, then
/// `Ã = A / s`, `W̃ = W * s`.
#[derive(Debug, Clone, PartialEq)]
pub struct SmoothQuantConfig {
    /// Balance factor in [0, 1]. Typically 0.5.
    pub alpha: f32,
    /// Floor for scale values to avoid division by zero.
    pub epsilon: f32,
}

impl SmoothQuantConfig {
    /// Create a new config with the given alpha, clamped into [0, 1] as the
    /// reference does (see [`Self::try_new`] for a checked constructor).
    pub fn new(alpha: f32) -> Self {
        Self {
            alpha: alpha.clamp(0.0, 1.0),
            epsilon: 1e-5,
        }
    }

    /// Default config with alpha = 0.5.
    pub fn default_alpha() -> Self {
        Self::new(0.5)
    }

    /// Checked constructor: `InvalidAlpha` outside [0, 1] (or NaN),
    /// `InvalidEpsilon` for a negative, NaN or infinite epsilon.
    pub fn try_new(alpha: f32, epsilon: f32) -> Result<Self, DynQuantError> {
        if !(0.0..=1.0).contains(&alpha) {
            return Err(DynQuantError::InvalidAlpha(alpha));
        }
        if !(epsilon >= 0.0 && epsilon.is_finite()) {
            return Err(DynQuantError::InvalidEpsilon(epsilon));
        }
        Ok(Self { alpha, epsilon })
    }
}

/// Per-column max |x| of a row-major matrix with `cols` columns, over its
/// first `len` values (a short last row counts for the columns it has).
/// NaN is skipped, as the reference's `v > slot` comparison does.
pub fn column_abs_max(data: &[f32], cols: usize) -> Vec<f32> {
    let mut bits = vec![0u32; cols];
    if cols == 0 {
        return Vec::new();
    }
    let merge = |mut a: Vec<u32>, b: Vec<u32>| {
        for (x, y) in a.iter_mut().zip(&b) {
            *x = (*x).max(*y);
        }
        a
    };
    let rows_per_task = (parallel::GRAIN / cols).max(1) * cols;
    let whole = data.len() / rows_per_task * rows_per_task;
    let per_chunk = |chunk: &[f32]| {
        let mut acc = vec![0u32; cols];
        for row in chunk.chunks(cols) {
            for (slot, v) in acc.iter_mut().zip(row) {
                let b = v.to_bits() & 0x7fff_ffff;
                let b = if b > INF_BITS { 0 } else { b };
                *slot = (*slot).max(b);
            }
        }
        acc
    };
    // Chunks of whole rows keep columns aligned across tasks.
    bits = merge(
        bits,
        parallel::map_reduce(
            &data[..whole],
            rows_per_task,
            vec![0u32; cols],
            per_chunk,
            merge,
        ),
    );
    bits = merge(bits, per_chunk(&data[whole..]));
    bits.into_iter().map(f32::from_bits).collect()
}

/// The factor formula on per-channel maxima, with f32 `powf` as the
/// reference calls it (glibc's powf is not correctly rounded, so only this
/// exact call reproduces the reference's bits).
pub fn smooth_factors_from_maxima(
    act_max: &[f32],
    w_max: &[f32],
    config: &SmoothQuantConfig,
) -> Vec<f32> {
    // Opaque to the optimiser: with a constant alpha of 0.5 (say
    // `default_alpha()` inlined into the caller) LLVM rewrites
    // `powf(x, 0.5)` as `sqrt(x)`, which differs from glibc's powf in the
    // last bit for about 0.1% of inputs (see the SPEC).
    let alpha = std::hint::black_box(config.alpha.clamp(0.0, 1.0));
    let epsilon = config.epsilon.max(1e-10);
    act_max
        .iter()
        .zip(w_max)
        .map(|(&a, &w)| {
            let a = (a + epsilon).powf(alpha);
            let w = (w + epsilon).powf(1.0 - alpha);
            (a / w).max(epsilon)
        })
        .collect()
}

/// Compute SmoothQuant smoothing factors (one per input feature).
///
/// - `activations`: shape `[tokens, in_features]` (row-major)
/// - `weights`: shape `[out_features, in_features]` (row-major)
///
/// Like the reference, values beyond `tokens * in_features` (or
/// `out_features * in_features`) are ignored and missing ones do not count.
pub fn compute_smooth_factors(
    activations: &[f32],
    weights: &[f32],
    in_features: usize,
    tokens: usize,
    out_features: usize,
    config: &SmoothQuantConfig,
) -> Vec<f32> {
    if in_features == 0 {
        return Vec::new();
    }
    let a_len = activations.len().min(tokens.saturating_mul(in_features));
    let w_len = weights.len().min(out_features.saturating_mul(in_features));
    let act_max = column_abs_max(&activations[..a_len], in_features);
    let w_max = column_abs_max(&weights[..w_len], in_features);
    smooth_factors_from_maxima(&act_max, &w_max, config)
}

fn check_factors(
    len: usize,
    rows: usize,
    factors: &[f32],
    in_features: usize,
) -> Result<(), DynQuantError> {
    if factors.len() != in_features {
        return Err(DynQuantError::FeatureDimMismatch {
            in_features,
            sf_len: factors.len(),
        });
    }
    let expected = rows.checked_mul(in_features).ok_or_else(|| {
        DynQuantError::InvalidArgument(format!("{rows} x {in_features} elements overflow usize"))
    })?;
    if len != expected {
        return Err(DynQuantError::ShapeMismatch {
            expected,
            actual: len,
        });
    }
    Ok(())
}

/// `dst[r, j] = op(src[r, j], factors[j])`, rows in parallel.
fn apply_per_column(
    src: &[f32],
    dst: &mut [f32],
    factors: &[f32],
    op: impl Fn(f32, f32) -> f32 + Sync + Send,
) {
    let cols = factors.len().max(1);
    let rows_per_task = (parallel::GRAIN / cols).max(1);
    parallel::zip_chunks(src, cols, dst, cols, rows_per_task, |s, d| {
        for (s_row, d_row) in s.chunks(cols).zip(d.chunks_mut(cols)) {
            for ((d, &s), &f) in d_row.iter_mut().zip(s_row).zip(factors) {
                *d = op(s, f);
            }
        }
    });
}

/// `data[r, j] = op(data[r, j], factors[j])`, rows in parallel.
fn apply_per_column_in_place(
    data: &mut [f32],
    factors: &[f32],
    op: impl Fn(f32, f32) -> f32 + Sync + Send,
) {
    let cols = factors.len().max(1);
    parallel::chunks_mut(data, cols, (parallel::GRAIN / cols).max(1), |d| {
        for row in d.chunks_mut(cols) {
            for (v, &f) in row.iter_mut().zip(factors) {
                *v = op(*v, f);
            }
        }
    });
}

/// Apply smoothing factors to activations in-place: `A[i,j] /= s[j]`.
pub fn smooth_activations(
    activations: &mut [f32],
    smooth_factors: &[f32],
    tokens: usize,
    in_features: usize,
) -> Result<(), DynQuantError> {
    check_factors(activations.len(), tokens, smooth_factors, in_features)?;
    apply_per_column_in_place(activations, smooth_factors, |a, s| a / s);
    Ok(())
}

/// `dst = src / s` per column, without touching `src`.
pub fn smooth_activations_into(
    src: &[f32],
    smooth_factors: &[f32],
    tokens: usize,
    in_features: usize,
    dst: &mut [f32],
) -> Result<(), DynQuantError> {
    check_factors(src.len(), tokens, smooth_factors, in_features)?;
    check_factors(dst.len(), tokens, smooth_factors, in_features)?;
    apply_per_column(src, dst, smooth_factors, |a, s| a / s);
    Ok(())
}

/// Apply smoothing factors to weights in-place: `W[i,j] *= s[j]`.
pub fn smooth_weights(
    weights: &mut [f32],
    smooth_factors: &[f32],
    out_features: usize,
    in_features: usize,
) -> Result<(), DynQuantError> {
    check_factors(weights.len(), out_features, smooth_factors, in_features)?;
    apply_per_column_in_place(weights, smooth_factors, |w, s| w * s);
    Ok(())
}

/// `dst = src * s` per column, without touching `src`.
pub fn smooth_weights_into(
    src: &[f32],
    smooth_factors: &[f32],
    out_features: usize,
    in_features: usize,
    dst: &mut [f32],
) -> Result<(), DynQuantError> {
    check_factors(src.len(), out_features, smooth_factors, in_features)?;
    check_factors(dst.len(), out_features, smooth_factors, in_features)?;
    apply_per_column(src, dst, smooth_factors, |w, s| w * s);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_follow_the_formula() {
        let a = [1.0, -4.0, 2.0, 0.5]; // [2 tokens, 2 features]
        let w = [9.0, 1.0]; // [1 out, 2 features]
        let cfg = SmoothQuantConfig::default_alpha();
        let f = compute_smooth_factors(&a, &w, 2, 2, 1, &cfg);
        let eps = 1e-5f32;
        assert_eq!(
            f[0],
            ((2.0f32 + eps).powf(0.5) / (9.0f32 + eps).powf(0.5)).max(eps)
        );
        assert_eq!(
            f[1],
            ((4.0f32 + eps).powf(0.5) / (1.0f32 + eps).powf(0.5)).max(eps)
        );
    }

    /// The formula from its endpoints, through `compute_smooth_factors`
    /// (so the operands must be the activations' and the weights' column
    /// maxima): x^1 = x and y^0 = 1 exactly, so alpha 1 gives
    /// `max(a + eps, eps)` and alpha 0 gives `max(1 / (w + eps), eps)`, bit
    /// for bit, with eps = max(epsilon, 1e-10). Channels: dead on both
    /// sides, ordinary, tiny, huge, and a dead activation next to a 1e6
    /// weight (whose 1 / w is below eps: the floor). Then hand values at
    /// alpha 0.25 and 0.75, where swapped exponents give other numbers.
    #[test]
    fn factors_at_the_alpha_endpoints_and_by_hand() {
        let a_max = [0.0f32, 3.0, 1e-30, 3e38, 16.0, 0.0];
        let w_max = [0.0f32, 0.5, 2.0, 1e-30, 1.0, 1e6];
        let cols = a_max.len();
        // Two tokens (signs and a smaller second row) and two weight rows.
        let acts: Vec<f32> = a_max
            .iter()
            .chain(a_max.iter())
            .enumerate()
            .map(|(i, &v)| if i < cols { -v } else { v * 0.5 })
            .collect();
        let weights: Vec<f32> = w_max
            .iter()
            .map(|&v| v * 0.25)
            .chain(w_max.iter().map(|&v| -v))
            .collect();
        for epsilon in [1e-5f32, 1e-3, 0.0] {
            let eps = epsilon.max(1e-10);
            let factors = |alpha: f32| {
                let cfg = SmoothQuantConfig { alpha, epsilon };
                compute_smooth_factors(&acts, &weights, cols, 2, 2, &cfg)
            };
            let (f1, f0) = (factors(1.0), factors(0.0));
            for j in 0..cols {
                let want1 = (a_max[j] + eps).max(eps);
                let want0 = (1.0 / (w_max[j] + eps)).max(eps);
                assert_eq!(
                    f1[j].to_bits(),
                    want1.to_bits(),
                    "alpha 1, eps {epsilon}, channel {j}"
                );
                assert_eq!(
                    f0[j].to_bits(),
                    want0.to_bits(),
                    "alpha 0, eps {epsilon}, channel {j}"
                );
            }
        }
        // eps 0 is floored to 1e-10, below half an ulp of 1 and 16.
        let cfg = |alpha: f32| SmoothQuantConfig {
            alpha,
            epsilon: 0.0,
        };
        let close =
            |got: f32, want: f32| assert!((got / want - 1.0).abs() < 1e-6, "{got} vs {want}");
        // a 16, w 1: 16^0.25 / 1^0.75 = 2 and 16^0.75 / 1^0.25 = 8;
        // a 1, w 16: 1 / 16^0.75 = 1/8 and 1 / 16^0.25 = 1/2.
        let f = compute_smooth_factors(&[16.0, 1.0], &[1.0, 16.0], 2, 1, 1, &cfg(0.25));
        close(f[0], 2.0);
        close(f[1], 0.125);
        let f = compute_smooth_factors(&[16.0, 1.0], &[1.0, 16.0], 2, 1, 1, &cfg(0.75));
        close(f[0], 8.0);
        close(f[1], 0.5);
    }

    #[test]
    fn alpha_and_epsilon_are_checked() {
        assert_eq!(SmoothQuantConfig::new(1.5).alpha, 1.0);
        assert_eq!(
            SmoothQuantConfig::try_new(1.5, 1e-5),
            Err(DynQuantError::InvalidAlpha(1.5))
        );
        assert!(SmoothQuantConfig::try_new(f32::NAN, 1e-5).is_err());
        assert!(SmoothQuantConfig::try_new(0.5, -1.0).is_err());
        assert!(SmoothQuantConfig::try_new(0.5, 0.0).is_ok());
    }

    #[test]
    fn apply_checks_feature_dim_before_shape() {
        let mut a = vec![1.0; 5];
        assert_eq!(
            smooth_activations(&mut a, &[1.0; 3], 2, 2),
            Err(DynQuantError::FeatureDimMismatch {
                in_features: 2,
                sf_len: 3
            })
        );
        assert_eq!(
            smooth_weights(&mut a, &[1.0; 2], 2, 2),
            Err(DynQuantError::ShapeMismatch {
                expected: 4,
                actual: 5
            })
        );
        let mut a = vec![2.0, 6.0, 4.0, 9.0];
        smooth_activations(&mut a, &[2.0, 3.0], 2, 2).unwrap();
        assert_eq!(a, vec![1.0, 2.0, 2.0, 3.0]);
        smooth_weights(&mut a, &[2.0, 3.0], 2, 2).unwrap();
        assert_eq!(a, vec![2.0, 6.0, 4.0, 9.0]);
    }

    #[test]
    fn column_max_skips_nan_and_handles_short_rows() {
        let m = column_abs_max(&[1.0, f32::NAN, -3.0, 2.0, 5.0], 2);
        assert_eq!(m, vec![5.0, 2.0]);
    }
}
