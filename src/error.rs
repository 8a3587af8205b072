//! The one error type of the crate: the reference's four variants plus what
//! dynquant checks that the reference does not.

use core::fmt;

/// Errors from dynamic quantization operations.
///
/// The first four variants are the reference module's (`oxibonsai-model`
/// 0.1.1, `dynamic_quant`), with the same fields and messages; the rest are
/// dynquant's additions for input the reference accepts silently.
///
/// `#[non_exhaustive]`: checks may gain variants in a minor release, so a
/// `match` outside this crate needs a wildcard arm (the cross-check has one):
///
/// ```
/// use dynquant::DynQuantError;
/// fn kind(e: &DynQuantError) -> &'static str {
///     match e {
///         DynQuantError::ShapeMismatch { .. } => "shape",
///         DynQuantError::NonFinite { .. } => "nan or inf",
///         _ => "other",
///     }
/// }
/// assert_eq!(kind(&DynQuantError::EmptyInput), "other");
/// ```
///
/// Naming every variant without one does not compile:
///
/// ```compile_fail,E0004
/// use dynquant::DynQuantError as E;
/// fn kind(e: &E) -> u8 {
///     match e {
///         E::ShapeMismatch { .. } | E::EmptyInput | E::InvalidAlpha(_) => 0,
///         E::FeatureDimMismatch { .. } | E::NonFinite { .. } => 1,
///         E::NonFiniteArgument { .. } | E::InvalidPercentile(_) => 2,
///         E::InvalidEpsilon(_) | E::InvalidArgument(_) => 3,
///         E::AllocationFailed { .. } | E::FeatureWidthMismatch { .. } => 4,
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum DynQuantError {
    /// Shape mismatch between expected and actual sizes.
    ShapeMismatch { expected: usize, actual: usize },
    /// Input tensor is empty.
    EmptyInput,
    /// Alpha value is out of the valid [0, 1] range.
    InvalidAlpha(f32),
    /// Input feature dimension doesn't match smooth factors length.
    FeatureDimMismatch { in_features: usize, sf_len: usize },
    /// An input whose feature width (its last dimension) is not the
    /// `in_features` already fixed, e.g. by an observer's first batch;
    /// `argument` names the input. (The reference's `FeatureDimMismatch` is
    /// for smoothing factors only, and its message says so.)
    FeatureWidthMismatch {
        argument: &'static str,
        in_features: usize,
        actual: usize,
    },
    /// A NaN or infinity where finite values are required.
    NonFinite { index: usize, value: f32 },
    /// A NaN or infinity in an argument that must be finite whatever the
    /// [`NanPolicy`](crate::NanPolicy) (the weight scales or the bias of a
    /// product beyond the reference), named by `argument`.
    NonFiniteArgument {
        argument: &'static str,
        index: usize,
        value: f32,
    },
    /// `Percentile(p)` with `p` outside (0, 1] or NaN.
    InvalidPercentile(f32),
    /// SmoothQuant epsilon that is negative, NaN or infinite.
    InvalidEpsilon(f32),
    /// Any other argument out of its domain; the message names it.
    InvalidArgument(String),
    /// An output or buffer of this many bytes could not be allocated (the
    /// Python layer raises `MemoryError`).
    AllocationFailed { bytes: usize },
}

/// `a * b`, or `InvalidArgument` naming `what` when it overflows usize.
pub(crate) fn checked_size(a: usize, b: usize, what: &str) -> Result<usize, DynQuantError> {
    a.checked_mul(b)
        .ok_or_else(|| DynQuantError::InvalidArgument(format!("{a} x {b} {what} overflow usize")))
}

/// `Ok` when every value of `values` is finite, else
/// [`DynQuantError::NonFiniteArgument`] naming `argument` and the first bad
/// index. One pass; for the short weight-scale and bias vectors of a product.
pub(crate) fn check_finite_argument(
    values: &[f32],
    argument: &'static str,
) -> Result<(), DynQuantError> {
    if crate::simd::abs_max_bits(values) < crate::simd::scalar::INF_BITS {
        return Ok(()); // the common case, in one vectorized pass
    }
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(index) => Err(DynQuantError::NonFiniteArgument {
            argument,
            index,
            value: values[index],
        }),
    }
}

/// `vec![value; n]`, or `AllocationFailed` instead of aborting the process
/// when the allocator refuses (for buffers sized by an argument rather than
/// by an input that already exists).
pub(crate) fn try_vec<T: Clone>(n: usize, value: T) -> Result<Vec<T>, DynQuantError> {
    let mut v = try_reserved(n)?;
    v.resize(n, value);
    Ok(v)
}

/// An empty `Vec` with room for at least `n` values (`try_reserve_exact`),
/// or `AllocationFailed`.
pub(crate) fn try_reserved<T>(n: usize) -> Result<Vec<T>, DynQuantError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| DynQuantError::AllocationFailed {
            bytes: n.saturating_mul(core::mem::size_of::<T>()),
        })?;
    Ok(v)
}

impl fmt::Display for DynQuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ShapeMismatch { expected, actual } => {
                write!(f, "shape mismatch: expected {expected}, got {actual}")
            }
            Self::EmptyInput => write!(f, "empty input"),
            Self::InvalidAlpha(a) => write!(f, "invalid alpha {a}: must be in [0, 1]"),
            Self::FeatureDimMismatch {
                in_features,
                sf_len,
            } => write!(
                f,
                "dimension mismatch: in_features {in_features}, smooth_factors {sf_len}"
            ),
            Self::FeatureWidthMismatch {
                argument,
                in_features,
                actual,
            } => write!(
                f,
                "dimension mismatch: in_features {in_features}, {argument} has width {actual}"
            ),
            // No advice here: whether `NanPolicy::Reference` would give a
            // result depends on the caller (the Python layer words its hint).
            Self::NonFinite { index, value } => {
                write!(f, "non-finite value {value} at flat index {index}")
            }
            Self::NonFiniteArgument {
                argument,
                index,
                value,
            } => write!(
                f,
                "non-finite value {value} at flat index {index} of {argument}: \
                 {argument} must be finite"
            ),
            Self::InvalidPercentile(p) => {
                write!(f, "invalid percentile {p}: must be in (0, 1]")
            }
            Self::InvalidEpsilon(e) => {
                write!(f, "invalid epsilon {e}: must be finite and >= 0")
            }
            Self::InvalidArgument(msg) => f.write_str(msg),
            Self::AllocationFailed { bytes } => write!(f, "cannot allocate {bytes} bytes"),
        }
    }
}

impl std::error::Error for DynQuantError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_the_reference() {
        let e = DynQuantError::ShapeMismatch {
            expected: 3,
            actual: 4,
        };
        assert_eq!(e.to_string(), "shape mismatch: expected 3, got 4");
        assert_eq!(DynQuantError::EmptyInput.to_string(), "empty input");
        assert_eq!(
            DynQuantError::InvalidAlpha(1.5).to_string(),
            "invalid alpha 1.5: must be in [0, 1]"
        );
        let e = DynQuantError::FeatureDimMismatch {
            in_features: 4,
            sf_len: 3,
        };
        assert_eq!(
            e.to_string(),
            "dimension mismatch: in_features 4, smooth_factors 3"
        );
    }
}
