//! Calibration statistics over batches of activations.

use crate::parallel;
use crate::scale::{kth_smallest_abs_in, percentile_index, rejects, NanPolicy};
use crate::simd::scalar::INF_BITS;
use crate::DynQuantError;

/// Calibration statistics for choosing static quantization scales.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CalibStats {
    /// Minimum value across all batches.
    pub min: f32,
    /// Maximum value across all batches.
    pub max: f32,
    /// Mean value across all batches.
    pub mean: f32,
    /// Standard deviation across all batches.
    pub std_dev: f32,
    /// 99th percentile of absolute values.
    pub p99: f32,
    /// Suggested quantization scale (p99 / 127.0 for INT8).
    pub suggested_scale: f32,
}

#[derive(Clone, Copy)]
struct Moments {
    min: f32,
    max: f32,
    sum: f64,
    abs_max_bits: u32,
}

impl Moments {
    const EMPTY: Moments = Moments {
        min: f32::INFINITY,
        max: f32::NEG_INFINITY,
        sum: 0.0,
        abs_max_bits: 0,
    };

    fn of(chunk: &[f32]) -> Moments {
        let mut m = Moments::EMPTY;
        for &v in chunk {
            // f32::min/max skip NaN, as the reference's folds do.
            m.min = m.min.min(v);
            m.max = m.max.max(v);
            m.sum += v as f64;
            m.abs_max_bits = m.abs_max_bits.max(v.to_bits() & 0x7fff_ffff);
        }
        m
    }

    fn merge(a: Moments, b: Moments) -> Moments {
        Moments {
            min: a.min.min(b.min),
            max: a.max.max(b.max),
            sum: a.sum + b.sum,
            abs_max_bits: a.abs_max_bits.max(b.abs_max_bits),
        }
    }
}

impl CalibStats {
    /// Collect calibration statistics from a batch of activation vectors.
    ///
    /// # Panics
    /// On a NaN, as the reference's sort does.
    pub fn collect(batches: &[Vec<f32>]) -> Self {
        let parts: Vec<&[f32]> = batches.iter().map(Vec::as_slice).collect();
        Self::try_collect(&parts, NanPolicy::Reference)
            .unwrap_or_else(|e| panic!("CalibStats::collect: {e}"))
    }

    /// [`Self::collect`] over borrowed batches, with a NaN policy: `Raise`
    /// rejects NaN and infinities, `Reference` accepts infinities as the
    /// reference does (it has no result for NaN). min, max, p99 and the
    /// suggested scale are exact; mean and std_dev are summed in f64.
    pub fn try_collect(batches: &[&[f32]], policy: NanPolicy) -> Result<Self, DynQuantError> {
        let n: usize = batches.iter().map(|b| b.len()).sum();
        if n == 0 {
            return Ok(Self::default());
        }
        let m = batches
            .iter()
            .map(|b| {
                parallel::map_reduce(
                    b,
                    parallel::GRAIN,
                    Moments::EMPTY,
                    Moments::of,
                    Moments::merge,
                )
            })
            .fold(Moments::EMPTY, Moments::merge);
        if m.abs_max_bits > INF_BITS || (m.abs_max_bits == INF_BITS && policy == NanPolicy::Raise) {
            let mut offset = 0;
            for b in batches {
                if let Some(i) = b.iter().position(|&v| rejects(v, policy)) {
                    return Err(DynQuantError::NonFinite {
                        index: offset + i,
                        value: b[i],
                    });
                }
                offset += b.len();
            }
        }
        let mean = m.sum / n as f64;
        let squares: f64 = batches
            .iter()
            .map(|b| {
                parallel::map_reduce(
                    b,
                    parallel::GRAIN,
                    0.0f64,
                    |c| {
                        c.iter()
                            .map(|&v| (v as f64 - mean) * (v as f64 - mean))
                            .sum()
                    },
                    |x, y| x + y,
                )
            })
            .sum();
        let p99 = kth_smallest_abs_in(batches, percentile_index(0.99, n));
        let max_abs = f32::from_bits(m.abs_max_bits);
        let suggested_scale = if p99 > 0.0 {
            p99 / 127.0
        } else if max_abs > 0.0 {
            max_abs / 127.0
        } else {
            1.0 / 127.0
        };
        Ok(Self {
            min: m.min,
            max: m.max,
            mean: mean as f32,
            std_dev: (squares / n as f64).sqrt() as f32,
            p99,
            suggested_scale,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_example() {
        let s = CalibStats::collect(&[vec![1.0, 2.0, 3.0], vec![-1.0, 0.0, 4.0]]);
        assert_eq!((s.min, s.max, s.p99), (-1.0, 4.0, 4.0));
        assert!((s.mean - 1.5).abs() < 1e-7);
        assert!((s.std_dev - (17.5f32 / 6.0).sqrt()).abs() < 1e-6);
        assert_eq!(s.suggested_scale, 4.0 / 127.0);
    }

    #[test]
    fn empty_and_zero() {
        assert_eq!(CalibStats::collect(&[]), CalibStats::default());
        assert_eq!(
            CalibStats::collect(&[vec![], vec![]]),
            CalibStats::default()
        );
        assert_eq!(
            CalibStats::collect(&[vec![0.0; 4]]).suggested_scale,
            1.0 / 127.0
        );
    }

    #[test]
    fn nan_is_an_error_and_inf_follows_policy() {
        let nan = [1.0f32, f32::NAN];
        assert!(CalibStats::try_collect(&[&nan], NanPolicy::Reference).is_err());
        let inf = [1.0f32, f32::INFINITY];
        assert!(matches!(
            CalibStats::try_collect(&[&[0.0], &inf], NanPolicy::Raise),
            Err(DynQuantError::NonFinite { index: 2, .. })
        ));
        let s = CalibStats::try_collect(&[&inf], NanPolicy::Reference).unwrap();
        assert_eq!((s.max, s.p99), (f32::INFINITY, f32::INFINITY));
        // Reference accepts the Inf, so the error names the NaN after it.
        assert!(matches!(
            CalibStats::try_collect(&[&inf, &nan], NanPolicy::Reference),
            Err(DynQuantError::NonFinite { index: 3, .. })
        ));
    }
}
