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
    /// under `Percentile`), return `NonFinite` naming the first NaN instead.
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
                return Err(first_rejected(data, policy));
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
        NanPolicy::Raise => Err(first_rejected(data, policy)),
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

/// Whether `policy` refuses `v`: `Raise` any NaN or infinity, `Reference`
/// only a NaN (it accepts infinities, as the reference does), so that its
/// error names the NaN even after an Inf.
pub(crate) fn rejects(v: f32, policy: NanPolicy) -> bool {
    match policy {
        NanPolicy::Raise => !v.is_finite(),
        NanPolicy::Reference => v.is_nan(),
    }
}

/// The error naming the first value `policy` refuses (call only when one
/// exists).
pub(crate) fn first_rejected(data: &[f32], policy: NanPolicy) -> DynQuantError {
    let index = data.iter().position(|&v| rejects(v, policy)).unwrap_or(0);
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
/// top 11 bits finds the bucket, then only that bucket's values are sorted
/// out (or, for a huge bucket, the next 10 bits are histogrammed). Two to
/// four passes over the data, O(n), no full sort, bounded extra memory.
pub fn kth_smallest_abs(data: &[f32], k: usize) -> f32 {
    kth_smallest_abs_in(&[data], k)
}

/// Most values the selection copies out of a bucket; a bigger bucket (many
/// equal or close values) is narrowed by further histogram passes instead,
/// so the extra memory stays bounded whatever the data.
const MAX_MEMBERS: usize = 1 << 22;

/// Histogram of bits `shift..shift + width` of the |x| bit patterns whose
/// bits above `shift + width` (at most 31) equal `prefix`. Counts are
/// `usize`: one bucket may hold more than 2^32 values.
fn abs_bits_histogram(parts: &[&[f32]], shift: u32, width: u32, prefix: u32) -> Vec<usize> {
    let buckets = 1usize << width;
    let add = |mut a: Vec<usize>, b: Vec<usize>| {
        for (x, y) in a.iter_mut().zip(&b) {
            *x += y;
        }
        a
    };
    parts
        .iter()
        .map(|part| {
            parallel::map_reduce(
                part,
                parallel::GRAIN,
                vec![0usize; buckets],
                |chunk| histogram_of(chunk, shift, width, prefix),
                add,
            )
        })
        .fold(vec![0usize; buckets], add)
}

/// One chunk of [`abs_bits_histogram`], in four interleaved u32
/// sub-histograms so that runs of equal buckets do not serialise on one
/// counter; blocks of at most 2^32 values keep each sub-count below 2^31.
fn histogram_of(chunk: &[f32], shift: u32, width: u32, prefix: u32) -> Vec<usize> {
    let buckets = 1usize << width;
    let mask = buckets - 1;
    // The first pass (no prefix yet) needs no filter; loop unswitching
    // keeps the test out of its loop.
    let filter = shift + width < 31;
    let mut total = vec![0usize; buckets];
    for block in chunk.chunks((u32::MAX as usize).saturating_add(1)) {
        // Values outside the prefix count in a spare slot past the buckets.
        let slot = |v: &f32| {
            let b = v.to_bits() & 0x7fff_ffff;
            if !filter || b >> (shift + width) == prefix {
                (b >> shift) as usize & mask
            } else {
                buckets
            }
        };
        let mut h4 = vec![0u32; 4 * (buckets + 1)];
        let stride = buckets + 1;
        let mut quads = block.chunks_exact(4);
        for q in &mut quads {
            h4[slot(&q[0])] += 1;
            h4[stride + slot(&q[1])] += 1;
            h4[2 * stride + slot(&q[2])] += 1;
            h4[3 * stride + slot(&q[3])] += 1;
        }
        for v in quads.remainder() {
            h4[slot(v)] += 1;
        }
        for (i, t) in total.iter_mut().enumerate() {
            *t += (0..4).map(|j| h4[j * stride + i] as usize).sum::<usize>();
        }
    }
    total
}

/// [`kth_smallest_abs`] over the concatenation of `parts`, without
/// concatenating them. `parts` must hold no NaN.
pub fn kth_smallest_abs_in(parts: &[&[f32]], k: usize) -> f32 {
    let n: usize = parts.iter().map(|p| p.len()).sum();
    assert!(k < n, "kth_smallest_abs: k {k} of {n}");
    let abs_bits = |v: &f32| v.to_bits() & 0x7fff_ffff;
    if n <= 4096 {
        let mut bits: Vec<u32> = parts.iter().flat_map(|p| p.iter().map(abs_bits)).collect();
        return f32::from_bits(*bits.select_nth_unstable(k).1);
    }
    // The 31 magnitude bits in passes of 11, 10 and 10: `prefix` holds the
    // `known` top bits of the answer, `k` its rank among the values sharing them.
    let (mut prefix, mut known, mut k) = (0u32, 0u32, k);
    for width in [11, 10, 10] {
        let shift = 31 - known - width;
        let histogram = abs_bits_histogram(parts, shift, width, prefix);
        let mut below = 0usize;
        let (mut bucket, mut count) = (0u32, 0usize);
        for (b, &c) in histogram.iter().enumerate() {
            if below + c > k {
                (bucket, count) = (b as u32, c);
                break;
            }
            below += c;
        }
        (prefix, known, k) = ((prefix << width) | bucket, known + width, k - below);
        if known < 31 && count <= MAX_MEMBERS {
            let shift = 31 - known;
            let gather = |chunk: &[f32]| -> Vec<u32> {
                chunk
                    .iter()
                    .map(abs_bits)
                    .filter(|b| b >> shift == prefix)
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
            return f32::from_bits(*members.select_nth_unstable(k).1);
        }
    }
    // All 31 bits found: every value left has exactly these bits.
    f32::from_bits(prefix)
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
    fn radix_select_narrows_huge_buckets() {
        // Over MAX_MEMBERS values in one top-11-bit bucket ([1, 1.125)): the
        // second pass narrows them; values sharing 21 bits need the third.
        let n = MAX_MEMBERS + 12_345;
        let one = 1.0f32.to_bits();
        for spread in [1u32 << 20, 1 << 10] {
            let data: Vec<f32> = (0..n as u32)
                .map(|i| {
                    let v = f32::from_bits(one + i.wrapping_mul(2_654_435_761) % spread);
                    if i % 3 == 0 {
                        -v
                    } else {
                        v
                    }
                })
                .collect();
            let sorted = sorted_abs(&data);
            for k in [0, 1, n / 3, n / 2, n - 2, n - 1] {
                assert_eq!(kth_smallest_abs(&data, k).to_bits(), sorted[k].to_bits());
            }
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
        // Under Reference an infinity is accepted: the error names the NaN.
        let inf_nan = [1.0, f32::INFINITY, 2.0, f32::NAN];
        let pct = DynamicScaleMode::Percentile(0.5);
        assert!(matches!(
            try_compute_scale(&inf_nan, 127.0, pct, NanPolicy::Reference),
            Err(DynQuantError::NonFinite { index: 3, .. })
        ));
        assert!(matches!(
            try_compute_scale(&inf_nan, 127.0, pct, NanPolicy::Raise),
            Err(DynQuantError::NonFinite { index: 1, .. })
        ));
    }

    #[test]
    fn percentile_validation() {
        for p in [0.0, -1.0, 1.5, f32::NAN] {
            assert!(DynamicScaleMode::Percentile(p).validate().is_err());
        }
        assert!(DynamicScaleMode::Percentile(1.0).validate().is_ok());
    }
}
