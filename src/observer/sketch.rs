//! A mergeable relative-error quantile sketch of |x| (DDSketch-style).
//!
//! Bucket `i` holds the values `|x|` in `(γ^(i−1), γ^i]` with `γ = 2^(1/M)`:
//! `M` buckets per octave, the smallest `M` whose accuracy
//! `α' = (γ − 1)/(γ + 1)` (plus a margin of 2^-20 for the f32 rounding of
//! answers and the bucket boundaries) is within the requested `α`. Answering
//! a rank with its bucket's representative `2γ^i/(γ + 1)` is then within
//! relative error `α` of the exact value at that rank. Zeros are counted
//! apart (their quantile is exactly 0).
//!
//! Because `γ^M = 2`, the bucket of an f32 follows from its bits: the
//! exponent gives the octave and a table on the mantissa gives the bucket
//! inside it (a 4096-cell table plus one or two comparisons), with no
//! logarithm per value. The boundaries are computed with IEEE basic
//! operations only (no libm), so every platform buckets identically and
//! observers merge across machines.
//!
//! Counts live in a dense window of at most `max_buckets` consecutive
//! buckets. When values span more, the lowest buckets are folded into the
//! lowest kept one (`floor = top − max_buckets + 1`, as DDSketch's
//! collapsing-lowest store): ranks there are answered with the floor
//! bucket's value, so accuracy is lost for the smallest |x| only, never for
//! the high quantiles calibration uses, and `collapsed` counts the values
//! affected. The folded state depends only on the multiset of values, so
//! merging stays exact in any order.

use std::sync::{Arc, Mutex};

use super::exact_sum::pow2;
use crate::DynQuantError;

/// Mantissa bits that index the cell table.
const CELL_BITS: u32 = 12;

/// Margin kept between the sketch's accuracy and the requested one, for the
/// rounding of boundaries (≤ 2^-23 relative) and of f32 answers (2^-24).
const MARGIN: f64 = 1.0 / (1u64 << 20) as f64;

/// Smallest and largest relative accuracy accepted.
pub const MIN_ALPHA: f64 = 1e-5;
/// See [`MIN_ALPHA`].
pub const MAX_ALPHA: f64 = 0.5;

/// `2^x` for x in [0, 1], from IEEE basic operations only (a Taylor series
/// of `e^(x ln 2)`), so it gives the same bits on every platform.
fn exp2_unit(x: f64) -> f64 {
    let t = x * core::f64::consts::LN_2;
    let (mut sum, mut term) = (1.0f64, 1.0f64);
    for n in 1..30 {
        term = term * t / n as f64;
        sum += term;
        if term < 1e-18 {
            break;
        }
    }
    sum
}

/// The accuracy of `m` buckets per octave.
fn accuracy_of(m: u32) -> f64 {
    let gamma = exp2_unit(1.0 / m as f64);
    (gamma - 1.0) / (gamma + 1.0)
}

/// The bucket layout for one `M`: boundaries and the cell table.
#[derive(Debug)]
pub(crate) struct Mapping {
    /// Buckets per octave.
    m: u32,
    /// `thresholds[j]`: the smallest 23-bit mantissa whose bucket within its
    /// octave is at least `j` (`j` = 0..=M), then a `u32::MAX` sentinel.
    thresholds: Vec<u32>,
    /// Bucket within the octave of each cell's first mantissa; the top bit
    /// marks cells a bucket edge cuts (then `thresholds` decide).
    cells: Vec<u32>,
    /// `2^(k/M)` for k = 0..M.
    powers: Vec<f64>,
    gamma: f64,
}

impl Mapping {
    fn new(m: u32) -> Self {
        let powers: Vec<f64> = (0..m).map(|k| exp2_unit(k as f64 / m as f64)).collect();
        let mut thresholds = vec![0u32];
        // Mantissa u is in bucket ≥ j (j ≥ 1) when 1 + u/2^23 > 2^((j-1)/M).
        for j in 1..=m {
            let edge = (powers[j as usize - 1] - 1.0) * (1u32 << 23) as f64;
            thresholds.push(edge.floor() as u32 + 1);
        }
        thresholds.push(u32::MAX);
        let mut cells = Vec::with_capacity(1 << CELL_BITS);
        let mut k = 0u32;
        for c in 0..1u32 << CELL_BITS {
            let u = c << (23 - CELL_BITS);
            while u >= thresholds[k as usize + 1] {
                k += 1;
            }
            // Flag the cells where a bucket edge falls inside (before the
            // next cell's first mantissa).
            let next = (c + 1) << (23 - CELL_BITS);
            let straddles = next > thresholds[k as usize + 1];
            cells.push(k | (straddles as u32) << 31);
        }
        let gamma = exp2_unit(1.0 / m as f64);
        Self {
            m,
            thresholds,
            cells,
            powers,
            gamma,
        }
    }

    /// The mapping for relative accuracy `alpha` (validated by the caller),
    /// shared with other observers of the same accuracy.
    pub(crate) fn for_accuracy(alpha: f64) -> Arc<Mapping> {
        static CACHE: Mutex<Vec<(u64, Arc<Mapping>)>> = Mutex::new(Vec::new());
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, map)) = cache.iter().find(|(bits, _)| *bits == alpha.to_bits()) {
            return Arc::clone(map);
        }
        let map = Self::build_for(alpha);
        if cache.len() >= 8 {
            cache.remove(0);
        }
        cache.push((alpha.to_bits(), Arc::clone(&map)));
        map
    }

    fn build_for(alpha: f64) -> Arc<Mapping> {
        let fits = |m: u32| accuracy_of(m) + MARGIN <= alpha;
        // A close guess, then the smallest M that fits (a monotone test, so
        // the answer does not depend on the platform's `ln`).
        let guess = (core::f64::consts::LN_2 / ((1.0 + alpha) / (1.0 - alpha)).ln()).ceil();
        let mut m = (guess as u32).max(1);
        while m > 1 && fits(m - 1) {
            m -= 1;
        }
        while !fits(m) {
            m += 1;
        }
        Arc::new(Mapping::new(m))
    }

    /// Buckets per octave.
    pub(crate) fn per_octave(&self) -> u32 {
        self.m
    }

    /// The accuracy the buckets give (at most the requested one).
    pub(crate) fn accuracy(&self) -> f64 {
        (self.gamma - 1.0) / (self.gamma + 1.0)
    }

    /// Bucket of a positive finite |x| given as bits (`0 < bits < INF`).
    #[inline(always)]
    pub(crate) fn index(&self, abs_bits: u32) -> i32 {
        let exp = abs_bits >> 23;
        let (octave, u) = if exp != 0 {
            (exp as i32 - 127, abs_bits & 0x7f_ffff)
        } else {
            // Subnormal: normalise the mantissa.
            let top = 31 - abs_bits.leading_zeros();
            (top as i32 - 149, (abs_bits << (23 - top)) & 0x7f_ffff)
        };
        let cell = self.cells[(u >> (23 - CELL_BITS)) as usize];
        let mut k = cell & 0x7fff_ffff;
        if cell >> 31 != 0 {
            while u >= self.thresholds[k as usize + 1] {
                k += 1;
            }
        }
        octave * self.m as i32 + k as i32
    }

    /// `γ^i`, the upper edge of bucket `i`.
    pub(crate) fn upper(&self, index: i32) -> f64 {
        let m = self.m as i32;
        let (octave, k) = (index.div_euclid(m), index.rem_euclid(m));
        self.powers[k as usize] * pow2(octave)
    }

    /// The value that answers for bucket `i`: within α' of all its members.
    pub(crate) fn representative(&self, index: i32) -> f64 {
        2.0 * self.upper(index) / (self.gamma + 1.0)
    }
}

/// Bucket counts in a dense window of at most `max_buckets` buckets.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub(crate) struct Store {
    /// Index of `counts[0]`.
    pub(crate) offset: i32,
    pub(crate) counts: Vec<u64>,
    /// Values whose own bucket lies below the window (folded into it).
    pub(crate) collapsed: u64,
}

impl Store {
    pub(crate) fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Highest bucket of the window (which always has a count).
    pub(crate) fn top(&self) -> i32 {
        self.offset + self.counts.len() as i32 - 1
    }

    /// Makes the window cover `lo..=hi` (as far as `max_buckets` allows)
    /// and returns the floor: buckets below it are to be counted at it.
    pub(crate) fn reserve(&mut self, lo: i32, hi: i32, max_buckets: u32) -> i32 {
        let (old_lo, old_hi) = if self.is_empty() {
            (lo, hi)
        } else {
            (self.offset, self.top())
        };
        let new_hi = hi.max(old_hi);
        let floor = new_hi - (max_buckets as i32 - 1);
        let new_lo = lo.min(old_lo).max(floor);
        if !self.is_empty() && new_lo == old_lo && new_hi == old_hi {
            return floor;
        }
        let mut counts = vec![0u64; (new_hi - new_lo + 1) as usize];
        let mut moved = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            let index = self.offset + i as i32;
            if index < new_lo {
                moved += c;
            }
            counts[(index.max(new_lo) - new_lo) as usize] += c;
        }
        if moved > 0 {
            // Every value in a bucket below the new floor is now collapsed,
            // including those collapsed before (they sat at the old floor).
            self.collapsed = moved;
        }
        self.counts = counts;
        self.offset = new_lo;
        floor
    }

    /// Adds the counts of `other` (same mapping and `max_buckets`).
    pub(crate) fn merge(&mut self, other: &Store, max_buckets: u32) {
        if other.is_empty() {
            return;
        }
        let floor = self.reserve(other.offset, other.top(), max_buckets);
        let mut moved = 0u64;
        for (i, &c) in other.counts.iter().enumerate() {
            let index = other.offset + i as i32;
            if index < floor {
                moved += c;
            }
            self.counts[(index.max(floor) - self.offset) as usize] += c;
        }
        self.collapsed += if other.offset < floor {
            moved
        } else {
            other.collapsed
        };
    }

    /// The window without zero counts at either end.
    pub(crate) fn trimmed(&self) -> (i32, &[u64]) {
        let first = self.counts.iter().position(|&c| c != 0);
        let last = self.counts.iter().rposition(|&c| c != 0);
        match (first, last) {
            (Some(f), Some(l)) => (self.offset + f as i32, &self.counts[f..=l]),
            _ => (0, &[]),
        }
    }

    /// Bucket holding the `rank`-th (0-based) counted value.
    pub(crate) fn bucket_of_rank(&self, rank: u64) -> Option<i32> {
        let mut below = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            below += c;
            if below > rank {
                return Some(self.offset + i as i32);
            }
        }
        None
    }
}

/// Checks a relative accuracy.
pub(crate) fn check_alpha(alpha: f64) -> Result<f64, DynQuantError> {
    if (MIN_ALPHA..=MAX_ALPHA).contains(&alpha) {
        Ok(alpha)
    } else {
        Err(DynQuantError::InvalidArgument(format!(
            "relative_accuracy must be in [{MIN_ALPHA}, {MAX_ALPHA}], got {alpha}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp2_unit_is_accurate() {
        for i in 0..=64 {
            let x = i as f64 / 64.0;
            assert!((exp2_unit(x) - x.exp2()).abs() <= 4.0 * f64::EPSILON);
        }
    }

    #[test]
    fn default_accuracy_needs_70_buckets_per_octave() {
        let m = Mapping::for_accuracy(0.005);
        assert_eq!(m.per_octave(), 70);
        assert!(m.accuracy() <= 0.005 && m.accuracy() > 0.0049);
        assert_eq!(Mapping::for_accuracy(0.5).per_octave(), 1);
        assert!(Mapping::for_accuracy(MIN_ALPHA).per_octave() > 30_000);
    }

    #[test]
    fn index_is_monotone_and_matches_the_edges() {
        for alpha in [0.005, 0.02, 0.3, 1e-4] {
            let map = Mapping::for_accuracy(alpha);
            let mut prev = i32::MIN;
            // Every 97th bit pattern, plus the ends, over all positive finite f32.
            let mut bits = 1u32;
            while bits < 0x7f80_0000 {
                let i = map.index(bits);
                assert!(i >= prev, "not monotone at {bits:#x}");
                prev = i;
                let x = f32::from_bits(bits) as f64;
                let (lo, hi) = (map.upper(i - 1), map.upper(i));
                // Within the bucket, up to the f64 rounding of the edges.
                assert!(
                    x > lo * (1.0 - 1e-12) && x <= hi * (1.0 + 1e-12),
                    "{x} in {i}"
                );
                let rep = map.representative(i);
                assert!((rep - x).abs() <= alpha * x);
                bits += if bits < 4096 { 1 } else { 97 };
            }
        }
    }

    #[test]
    fn powers_of_two_sit_on_bucket_edges() {
        let map = Mapping::for_accuracy(0.005);
        for e in -149..=127 {
            let x = 2f32.powi(e);
            if x == 0.0 || !x.is_finite() {
                continue;
            }
            assert_eq!(map.index(x.to_bits()), e * 70, "2^{e}");
            let next = f32::from_bits(x.to_bits() + 1);
            if next.is_finite() && e >= -126 {
                assert_eq!(map.index(next.to_bits()), e * 70 + 1);
            }
        }
    }

    #[test]
    fn store_folds_lowest_buckets() {
        let mut s = Store::default();
        let f = s.reserve(10, 12, 4);
        assert_eq!(f, 9);
        s.counts[0] += 1;
        s.counts[2] += 1;
        // A value at 20 raises the floor to 17: both old buckets collapse.
        let f = s.reserve(20, 20, 4);
        assert_eq!(
            (f, s.offset, s.counts.as_slice()),
            (17, 17, &[2, 0, 0, 0][..])
        );
        assert_eq!(s.collapsed, 2);
        s.counts[3] += 1;
        let mut t = Store::default();
        t.reserve(5, 5, 4);
        t.counts[0] = 3;
        s.merge(&t, 4);
        assert_eq!((s.counts.as_slice(), s.collapsed), (&[5, 0, 0, 1][..], 5));
    }
}
