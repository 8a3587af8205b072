//! Scale modes and the scale of a slice: max-abs or a percentile of |x|.

use crate::parallel;
use crate::simd::{self, scalar::INF_BITS};
use crate::DynQuantError;

/// How to compute the dynamic quantization scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DynamicScaleMode {
    /// Use the max absolute value: scale = max(|x|) / clip_val
    MaxAbs,
    /// Use a percentile of absolute values (more robust to outliers).
    /// `percentile` in (0, 1] — e.g. 0.99 = 99th percentile
    Percentile(f32),
}

/// What to do with NaN and infinities in activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NanPolicy {
    /// Return [`DynQuantError::NonFinite`] naming the first bad index.
    #[default]
    Raise,
    /// Reproduce the reference: MaxAbs ignores NaN, NaN quantizes to 0, an
    /// infinity makes the scale infinite. Where the reference panics (a NaN
    /// under `Percentile`), return `NonFinite` instead.
    Reference,
}

impl DynamicScaleMode {
    /// Checks `Percentile(p)` is in (0, 1]; the reference clamps instead.
    pub fn validate(self) -> Result<Self, DynQuantError> {
        match self {
            DynamicScaleMode::Percentile(p) if !(p > 0.0 && p <= 1.0) => {
                Err(DynQuantError::InvalidPercentile(p))
            }
            mode => Ok(mode),
        }
    }
}

/// Compute the quantization scale for a slice (the reference's function).
///
/// - `MaxAbs`: `scale = max(|x|) / clip_val`
/// - `Percentile(p)`: the p-th percentile of |x| / clip_val
///
/// # Panics
/// With `Percentile` and a NaN in `data`, as the reference's sort does.
pub fn compute_scale(data: &[f32], clip_val: f32, mode: DynamicScaleMode) -> f32 {
    try_compute_scale(data, clip_val, mode, NanPolicy::Reference)
        .unwrap_or_else(|e| panic!("compute_scale: {e}"))
}

/// [`compute_scale`] with a NaN policy. It does not validate `mode`: the
/// reference clamps a percentile into [0, 1] and so does this.
pub fn try_compute_scale(
    data: &[f32],
    clip_val: f32,
    mode: DynamicScaleMode,
    policy: NanPolicy,
) -> Result<f32, DynQuantError> {
    if data.is_empty() {
        return Ok(0.0);
    }
    let amax = match mode {
        DynamicScaleMode::MaxAbs => abs_max(data, policy)?,
        DynamicScaleMode::Percentile(p) => {
            let bits = abs_max_bits(data);
            if bits > INF_BITS || (bits == INF_BITS && policy == NanPolicy::Raise) {
                return Err(first_non_finite(data));
            }
            percentile_of_abs(data, p)
        }
    };
    Ok(if amax == 0.0 { 0.0 } else { amax / clip_val })
}

/// `max |x|`, with the policy applied to NaN and infinities.
pub(crate) fn abs_max(data: &[f32], policy: NanPolicy) -> Result<f32, DynQuantError> {
    let bits = abs_max_bits(data);
    if bits < INF_BITS {
        return Ok(f32::from_bits(bits));
    }
    match policy {
        NanPolicy::Raise => Err(first_non_finite(data)),
        // `f32::max` skips NaN: the largest non-NaN |x| (an infinity counts).
        NanPolicy::Reference if bits > INF_BITS => Ok(f32::from_bits(
            data.iter()
                .map(|v| v.to_bits() & 0x7fff_ffff)
                .filter(|&b| b <= INF_BITS)
                .max()
                .unwrap_or(0),
        )),
        NanPolicy::Reference => Ok(f32::INFINITY),
    }
}

/// Parallel [`simd::abs_max_bits`] over large slices.
pub(crate) fn abs_max_bits(data: &[f32]) -> u32 {
    parallel::map_reduce(data, parallel::GRAIN, 0u32, simd::abs_max_bits, u32::max)
}

/// The error naming the first NaN or infinity (call only when one exists).
pub(crate) fn first_non_finite(data: &[f32]) -> DynQuantError {
    let index = data.iter().position(|v| !v.is_finite()).unwrap_or(0);
    DynQuantError::NonFinite {
        index,
        value: data.get(index).copied().unwrap_or(f32::NAN),
    }
}

/// The reference's percentile index: `ceil(p * n) - 1` in f32 arithmetic,
/// saturating at 0 and capped at `n - 1` (`p` clamped into [0, 1] first).
pub fn percentile_index(p: f32, n: usize) -> usize {
    let p = p.clamp(0.0, 1.0);
    ((p * n as f32).ceil() as usize)
        .saturating_sub(1)
        .min(n.saturating_sub(1))
}

/// The element of |x| at the reference's percentile index, as a sort would
/// find it. `data` must be non-empty and free of NaN.
pub fn percentile_of_abs(data: &[f32], p: f32) -> f32 {
    kth_smallest_abs(data, percentile_index(p, data.len()))
}

/// The k-th smallest |x| (0-based) by radix selection on the bit patterns,
/// which order like the values for non-negative floats: a histogram of the
/// top 12 bits finds the bucket, then only that bucket's values are sorted
/// out. Two passes over the data, O(n), no full sort.
pub fn kth_smallest_abs(data: &[f32], k: usize) -> f32 {
    kth_smallest_abs_in(&[data], k)
}

/// [`kth_smallest_abs`] over the concatenation of `parts`, without
/// concatenating them. `parts` must hold no NaN.
pub fn kth_smallest_abs_in(parts: &[&[f32]], k: usize) -> f32 {
    const SHIFT: u32 = 20;
    const BUCKETS: usize = (0x7fff_ffff >> SHIFT) + 1;
    let n: usize = parts.iter().map(|p| p.len()).sum();
    assert!(k < n, "kth_smallest_abs: k {k} of {n}");
    let abs_bits = |v: &f32| v.to_bits() & 0x7fff_ffff;
    if n <= 4096 {
        let mut bits: Vec<u32> = parts.iter().flat_map(|p| p.iter().map(abs_bits)).collect();
        return f32::from_bits(*bits.select_nth_unstable(k).1);
    }
    let add = |mut a: Vec<u32>, b: Vec<u32>| {
        for (x, y) in a.iter_mut().zip(&b) {
            *x += y;
        }
        a
    };
    let histogram = parts
        .iter()
        .map(|part| {
            parallel::map_reduce(
                part,
                parallel::GRAIN,
                vec![0u32; BUCKETS],
                histogram_of,
                add,
            )
        })
        .fold(vec![0u32; BUCKETS], add);
    let mut below = 0usize;
    let mut bucket = 0u32;
    for (b, &count) in histogram.iter().enumerate() {
        if below + count as usize > k {
            bucket = b as u32;
            break;
        }
        below += count as usize;
    }
    let gather = |chunk: &[f32]| -> Vec<u32> {
        chunk
            .iter()
            .map(abs_bits)
            .filter(|b| b >> SHIFT == bucket)
            .collect()
    };
    let concat = |mut a: Vec<u32>, mut b: Vec<u32>| {
        a.append(&mut b);
        a
    };
    let mut members: Vec<u32> = parts
        .iter()
        .map(|part| parallel::map_reduce(part, parallel::GRAIN, Vec::new(), gather, concat))
        .fold(Vec::new(), concat);
    f32::from_bits(*members.select_nth_unstable(k - below).1)
}

/// Bucket counts of the top bits of |x|, in four interleaved sub-histograms
/// so that runs of equal buckets do not serialise on one counter.
fn histogram_of(chunk: &[f32]) -> Vec<u32> {
    const SHIFT: u32 = 20;
    const BUCKETS: usize = (0x7fff_ffff >> SHIFT) + 1;
    let mut h = vec![0u32; 4 * BUCKETS];
    let bucket = |v: &f32| ((v.to_bits() & 0x7fff_ffff) >> SHIFT) as usize;
    let mut quads = chunk.chunks_exact(4);
    for q in &mut quads {
        h[bucket(&q[0])] += 1;
        h[BUCKETS + bucket(&q[1])] += 1;
        h[2 * BUCKETS + bucket(&q[2])] += 1;
        h[3 * BUCKETS + bucket(&q[3])] += 1;
    }
    for v in quads.remainder() {
        h[bucket(v)] += 1;
    }
    let (a, rest) = h.split_at(BUCKETS);
    let (b, rest) = rest.split_at(BUCKETS);
    let (c, d) = rest.split_at(BUCKETS);
    (0..BUCKETS).map(|i| a[i] + b[i] + c[i] + d[i]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted_abs(data: &[f32]) -> Vec<f32> {
        let mut v: Vec<f32> = data.iter().map(|x| x.abs()).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v
    }

    #[test]
    fn percentile_index_is_computed_in_f32() {
        // In f32, 0.999 * 32999 rounds to 32965.965..; with f64 it is 32966.001.
        assert_eq!(percentile_index(0.999, 32999), 32965);
        assert_eq!(percentile_index(0.0, 10), 0);
        assert_eq!(percentile_index(1.0, 10), 9);
        assert_eq!(percentile_index(2.0, 10), 9);
        assert_eq!(percentile_index(f32::NAN, 10), 0);
    }

    #[test]
    fn radix_select_matches_sort() {
        let mut state = 12345u64;
        let data: Vec<f32> = (0..100_003)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (state >> 40) as f32 / (1u64 << 24) as f32;
                (u - 0.5) * if state & 1 == 0 { 1.0 } else { 1e-30 }
            })
            .collect();
        let sorted = sorted_abs(&data);
        for k in [0, 1, 500, 50_000, 99_000, 100_002] {
            assert_eq!(kth_smallest_abs(&data, k).to_bits(), sorted[k].to_bits());
        }
    }

    #[test]
    fn scale_of_zeros_and_empty() {
        assert_eq!(compute_scale(&[], 127.0, DynamicScaleMode::MaxAbs), 0.0);
        assert_eq!(
            compute_scale(&[0.0, -0.0], 127.0, DynamicScaleMode::MaxAbs),
            0.0
        );
        assert_eq!(
            compute_scale(&[1.0, -2.0, 0.5], 127.0, DynamicScaleMode::MaxAbs),
            2.0 / 127.0
        );
    }

    #[test]
    fn nan_policy() {
        let data = [1.0, f32::NAN, -3.0];
        assert_eq!(
            try_compute_scale(&data, 127.0, DynamicScaleMode::MaxAbs, NanPolicy::Reference),
            Ok(3.0 / 127.0)
        );
        assert!(matches!(
            try_compute_scale(&data, 127.0, DynamicScaleMode::MaxAbs, NanPolicy::Raise),
            Err(DynQuantError::NonFinite { index: 1, .. })
        ));
        assert!(try_compute_scale(
            &data,
            127.0,
            DynamicScaleMode::Percentile(0.5),
            NanPolicy::Reference
        )
        .is_err());
        let inf = [1.0, f32::NEG_INFINITY];
        assert_eq!(
            try_compute_scale(&inf, 127.0, DynamicScaleMode::MaxAbs, NanPolicy::Reference),
            Ok(f32::INFINITY)
        );
        assert_eq!(
            try_compute_scale(
                &inf,
                127.0,
                DynamicScaleMode::Percentile(0.5),
                NanPolicy::Reference
            ),
            Ok(1.0 / 127.0)
        );
    }

    #[test]
    fn percentile_validation() {
        for p in [0.0, -1.0, 1.5, f32::NAN] {
            assert!(DynamicScaleMode::Percentile(p).validate().is_err());
        }
        assert!(DynamicScaleMode::Percentile(1.0).validate().is_ok());
    }
}
