//! Exact Σx and Σx² over f32 values, so that mean and variance do not depend
//! on the order in which values (or observers) were added.
//!
//! A finite f32 is `m · 2^(s − 150)` with an integer mantissa `m < 2^24` and
//! an exponent slot `s = max(biased exponent, 1)` in 1..=254. Keeping one
//! integer sum of `m` (and of `m²`) per slot makes adding a value, and merging
//! two sums, integer arithmetic: associative, commutative and without
//! rounding. Only the final mean and variance are rounded, once each, from
//! the exact totals (fixed-point integers of up to 768 bits, [`Wide`]).

use core::cmp::Ordering;

/// Slots are indexed by the biased exponent (0 is never used: subnormals
/// share slot 1, where their scale is the same).
pub(crate) const SLOTS: usize = 256;

/// Values a [`BlockSums`] may take before it must be flushed: then no u64
/// bin can overflow (`(2^24 − 1)² · 2^16 < 2^64`).
pub(crate) const BLOCK: usize = 1 << 16;

/// Exponent slot and integer mantissa of a finite |x| given as bits.
#[inline(always)]
pub(crate) fn slot_and_mantissa(abs_bits: u32) -> (usize, u64) {
    let e = abs_bits >> 23;
    let hidden = if e != 0 { 1 << 23 } else { 0 };
    (e.max(1) as usize, ((abs_bits & 0x7f_ffff) | hidden) as u64)
}

/// Independent bin sets, so that runs of values with the same exponent
/// do not wait on one another's adds.
pub(crate) const LANES: usize = 4;

/// Per-slot sums of at most [`BLOCK`] values between flushes, in u64 (fast
/// to add to).
pub(crate) struct BlockSums {
    /// Per lane, `[0..256)`: Σm of positive values, `[256..512)`: of
    /// negative values, `[512..768)`: Σm².
    bins: Vec<[u64; 3 * SLOTS]>,
}

impl BlockSums {
    pub(crate) fn new() -> Self {
        Self {
            bins: vec![[0; 3 * SLOTS]; LANES],
        }
    }

    /// Adds one finite value (as bits) to `lane`. At most [`BLOCK`] calls
    /// per flush.
    #[inline(always)]
    pub(crate) fn add(&mut self, lane: usize, bits: u32) {
        let (slot, m) = slot_and_mantissa(bits & 0x7fff_ffff);
        let bins = &mut self.bins[lane % LANES];
        bins[((bits >> 31) as usize) * SLOTS + slot] += m;
        bins[2 * SLOTS + slot] += m * m;
    }
}

/// Exact per-slot sums over any number of values (u128 bins: with fewer
/// than 2^64 values, Σm < 2^88 and Σm² < 2^112).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExactSums {
    /// Σm of positive values, per slot ([`SLOTS`] entries).
    pub(crate) pos: Vec<u128>,
    /// Σm of negative values.
    pub(crate) neg: Vec<u128>,
    /// Σm².
    pub(crate) sq: Vec<u128>,
}

impl ExactSums {
    pub(crate) fn new() -> Self {
        Self {
            pos: vec![0; SLOTS],
            neg: vec![0; SLOTS],
            sq: vec![0; SLOTS],
        }
    }

    /// Moves the block's sums of slots `slots` (every slot it holds
    /// non-zero sums in) into these, leaving the block zeroed.
    pub(crate) fn flush(&mut self, block: &mut BlockSums, slots: core::ops::RangeInclusive<usize>) {
        for bins in block.bins.iter_mut() {
            for s in slots.clone() {
                self.pos[s] += core::mem::take(&mut bins[s]) as u128;
                self.neg[s] += core::mem::take(&mut bins[SLOTS + s]) as u128;
                self.sq[s] += core::mem::take(&mut bins[2 * SLOTS + s]) as u128;
            }
        }
    }

    /// Adds `other`; callers keep the total count below 2^64, which keeps
    /// every bin below 2^112 (checked when decoding bytes).
    pub(crate) fn merge(&mut self, other: &ExactSums) {
        for s in 0..SLOTS {
            self.pos[s] += other.pos[s];
            self.neg[s] += other.neg[s];
            self.sq[s] += other.sq[s];
        }
    }

    /// Σx in units of 2^-149, as (negative?, magnitude).
    fn signed_sum(&self) -> (bool, Wide) {
        let mut pos = Wide::ZERO;
        let mut neg = Wide::ZERO;
        for s in 1..SLOTS {
            pos.add_shifted(self.pos[s], s as u32 - 1);
            neg.add_shifted(self.neg[s], s as u32 - 1);
        }
        if pos.cmp(&neg) == Ordering::Less {
            neg.sub(&pos);
            (true, neg)
        } else {
            pos.sub(&neg);
            (false, pos)
        }
    }

    /// Σx² in units of 2^-298.
    fn sum_of_squares(&self) -> Wide {
        let mut total = Wide::ZERO;
        for s in 1..SLOTS {
            total.add_shifted(self.sq[s], 2 * (s as u32 - 1));
        }
        total
    }

    /// Σx, correctly rounded to f64.
    #[cfg(test)]
    pub(crate) fn sum(&self) -> f64 {
        signed_f64(self.signed_sum())
    }

    /// Mean and population variance of `count` values: the exact
    /// `n·Σx² − (Σx)²` is rounded once to f64, then divided by n² (so the
    /// variance is within a few ulps and never negative).
    pub(crate) fn mean_and_variance(&self, count: u64) -> (f64, f64) {
        if count == 0 {
            return (0.0, 0.0);
        }
        let n = count as f64;
        let sum = self.signed_sum();
        let s2 = sum.1.square();
        let mean = signed_f64(sum) / n;
        let mut d = self.sum_of_squares();
        d.mul_u64(count);
        // n·Σx² ≥ (Σx)² always holds for real sums (Cauchy–Schwarz); only
        // inconsistent decoded bytes could break it.
        if d.cmp(&s2) == Ordering::Less {
            return (mean, 0.0);
        }
        d.sub(&s2);
        (mean, d.to_f64(-298) / n / n)
    }
}

/// A signed sum in units of 2^-149, correctly rounded to f64.
fn signed_f64((negative, magnitude): (bool, Wide)) -> f64 {
    let v = magnitude.to_f64(-149);
    if negative {
        -v
    } else {
        v
    }
}

/// Limbs of [`Wide`]: 768 bits hold `n·Σx²` and `(Σx)²` for n < 2^64.
const LIMBS: usize = 12;

/// A non-negative fixed-width integer (little-endian u64 limbs). Callers
/// size their values to fit; an overflow is a bug and panics in debug.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Wide([u64; LIMBS]);

impl Wide {
    const ZERO: Wide = Wide([0; LIMBS]);

    /// `v · 2^shift`.
    #[cfg(test)]
    fn shifted(v: u128, shift: u32) -> Wide {
        let mut w = Wide::ZERO;
        let (limb, bit) = ((shift / 64) as usize, shift % 64);
        let parts = [v as u64, (v >> 64) as u64, 0];
        for (i, _) in parts.iter().enumerate() {
            let lo = parts[i] << bit;
            let carry = if bit == 0 || i == 0 {
                0
            } else {
                parts[i - 1] >> (64 - bit)
            };
            if limb + i < LIMBS {
                w.0[limb + i] = lo | carry;
            } else {
                debug_assert_eq!(lo | carry, 0, "Wide::shifted overflow");
            }
        }
        w
    }

    /// `self += v · 2^shift`, touching only the limbs it must.
    fn add_shifted(&mut self, v: u128, shift: u32) {
        if v == 0 {
            return;
        }
        let (limb, bit) = ((shift / 64) as usize, shift % 64);
        let (lo, hi) = (v as u64, (v >> 64) as u64);
        let parts = if bit == 0 {
            [lo, hi, 0]
        } else {
            [
                lo << bit,
                (hi << bit) | (lo >> (64 - bit)),
                hi >> (64 - bit),
            ]
        };
        let mut carry = false;
        for (i, &p) in parts.iter().enumerate() {
            if limb + i >= LIMBS {
                debug_assert!(p == 0 && !carry, "Wide::add_shifted overflow");
                return;
            }
            let (s1, c1) = self.0[limb + i].overflowing_add(p);
            let (s2, c2) = s1.overflowing_add(carry as u64);
            self.0[limb + i] = s2;
            carry = c1 || c2;
        }
        let mut i = limb + 3;
        while carry && i < LIMBS {
            let (s, c) = self.0[i].overflowing_add(1);
            self.0[i] = s;
            carry = c;
            i += 1;
        }
        debug_assert!(!carry, "Wide::add_shifted overflow");
    }

    #[cfg(test)]
    fn add(&mut self, other: &Wide) {
        let mut carry = false;
        for (a, &b) in self.0.iter_mut().zip(&other.0) {
            let (s1, c1) = a.overflowing_add(b);
            let (s2, c2) = s1.overflowing_add(carry as u64);
            *a = s2;
            carry = c1 || c2;
        }
        debug_assert!(!carry, "Wide::add overflow");
    }

    /// `self −= other`; requires `self >= other`.
    fn sub(&mut self, other: &Wide) {
        let mut borrow = false;
        for (a, &b) in self.0.iter_mut().zip(&other.0) {
            let (d1, b1) = a.overflowing_sub(b);
            let (d2, b2) = d1.overflowing_sub(borrow as u64);
            *a = d2;
            borrow = b1 || b2;
        }
        debug_assert!(!borrow, "Wide::sub underflow");
    }

    fn cmp(&self, other: &Wide) -> Ordering {
        self.0.iter().rev().cmp(other.0.iter().rev())
    }

    fn mul_u64(&mut self, m: u64) {
        let mut carry = 0u128;
        for a in self.0.iter_mut() {
            let p = *a as u128 * m as u128 + carry;
            *a = p as u64;
            carry = p >> 64;
        }
        debug_assert_eq!(carry, 0, "Wide::mul_u64 overflow");
    }

    fn square(&self) -> Wide {
        let mut out = [0u64; LIMBS];
        for i in 0..LIMBS {
            if self.0[i] == 0 {
                continue;
            }
            let mut carry = 0u128;
            for j in 0..LIMBS - i {
                let p = self.0[i] as u128 * self.0[j] as u128 + out[i + j] as u128 + carry;
                out[i + j] = p as u64;
                carry = p >> 64;
            }
            debug_assert_eq!(carry, 0, "Wide::square overflow");
        }
        Wide(out)
    }

    /// `self · 2^exp2`, correctly rounded to f64 (round half to even): the
    /// top 64 bits with a sticky bit for the rest convert exactly as the
    /// whole number would. The result must lie in f64's normal range.
    fn to_f64(&self, exp2: i32) -> f64 {
        let Some(top) = self.0.iter().rposition(|&l| l != 0) else {
            return 0.0;
        };
        let high_bit = top as i32 * 64 + 63 - self.0[top].leading_zeros() as i32;
        let shift = (high_bit - 63).max(0);
        let (limb, bit) = ((shift / 64) as usize, (shift % 64) as u32);
        let mut head = self.0[limb] >> bit;
        if bit != 0 && limb + 1 < LIMBS {
            head |= self.0[limb + 1] << (64 - bit);
        }
        let below_mask = if bit == 0 { 0 } else { (1u64 << bit) - 1 };
        let sticky = self.0[..limb].iter().any(|&l| l != 0) || self.0[limb] & below_mask != 0;
        (head | sticky as u64) as f64 * pow2(shift + exp2)
    }
}

/// `2^k` for k in f64's normal exponent range.
pub(crate) fn pow2(k: i32) -> f64 {
    debug_assert!((-1022..=1023).contains(&k), "pow2({k})");
    f64::from_bits(((k + 1023) as u64) << 52)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sums_of(values: &[f32]) -> ExactSums {
        let mut sums = ExactSums::new();
        let mut b = BlockSums::new();
        for block in values.chunks(BLOCK) {
            for (i, v) in block.iter().enumerate() {
                b.add(i, v.to_bits());
            }
            sums.flush(&mut b, 1..=SLOTS - 1);
        }
        sums
    }

    #[test]
    fn wide_rounds_to_nearest_even() {
        // 2^53 + 1 is a tie between 2^53 and 2^53 + 2: even wins.
        assert_eq!(Wide::shifted((1 << 53) + 1, 0).to_f64(0), 2f64.powi(53));
        assert_eq!(
            Wide::shifted((1 << 53) + 3, 0).to_f64(0),
            2f64.powi(53) + 4.0
        );
        // A bit far below the top breaks the tie upwards (sticky).
        let mut w = Wide::shifted(((1 << 53) + 1) << 60, 100);
        w.add(&Wide::shifted(1, 0));
        assert_eq!(w.to_f64(-160), 2f64.powi(53) + 2.0);
        assert_eq!(Wide::shifted(3, 300).square().to_f64(-600), 9.0);
    }

    #[test]
    fn add_shifted_matches_shift_then_add() {
        let mut state = 7u64;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            state
        };
        let (mut a, mut b) = (Wide::ZERO, Wide::ZERO);
        for _ in 0..2000 {
            let v = ((next() as u128) << 64 | next() as u128) >> (next() % 128);
            let shift = (next() % 600) as u32;
            a.add_shifted(v, shift);
            b.add(&Wide::shifted(v, shift));
            assert_eq!(a, b);
        }
        // Carries that run through many limbs.
        let mut c = Wide([u64::MAX; LIMBS]);
        c.0[LIMBS - 1] = 0;
        c.add_shifted(1, 0);
        assert_eq!(c.0[LIMBS - 1], 1);
        assert!(c.0[..LIMBS - 1].iter().all(|&l| l == 0));
    }

    #[test]
    fn sums_are_exact_where_f64_is_not() {
        let v = [1e30f32, 1.0, -1e30, 1e-30, 3.0];
        let s = sums_of(&v);
        assert_eq!(s.sum(), 4.0 + 1e-30f32 as f64);
        let (mean, var) = s.mean_and_variance(5);
        let exact_mean = (4.0 + 1e-30f32 as f64) / 5.0;
        assert_eq!(mean, exact_mean);
        let expected = (2.0 * (1e30f32 as f64).powi(2) + 10.0) / 5.0 - exact_mean * exact_mean;
        assert!((var - expected).abs() <= 1e-15 * expected);
    }

    #[test]
    fn extremes_fit() {
        let v = [f32::MAX, f32::MAX, -f32::MIN_POSITIVE, f32::from_bits(1)];
        let s = sums_of(&v);
        assert_eq!(
            s.sum(),
            2.0 * f32::MAX as f64 - f32::MIN_POSITIVE as f64 + 2f64.powi(-149)
        );
        let (_, var) = s.mean_and_variance(4);
        assert!(var.is_finite() && var > 0.0);
        let (mean, var) = sums_of(&[0.5; 1000]).mean_and_variance(1000);
        assert_eq!((mean, var), (0.5, 0.0));
    }
}
