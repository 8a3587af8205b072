//! Streaming, mergeable calibration in constant memory.
//!
//! [`CalibObserver`] takes batches one at a time ([`CalibObserver::update`])
//! and combines with observers of other batches, threads, processes or
//! machines ([`CalibObserver::merge`]); [`CalibObserver::stats`] then gives
//! the [`CalibStats`] of everything seen. Its memory does not grow with the
//! data: count, min and max are kept as they are, Σx and Σx² as exact
//! integers (`exact_sum`), and the quantiles of |x| in a relative-error
//! sketch of bounded size (`sketch`). Every part merges exactly, so any merge
//! order or tree gives the same state, bit for bit (and the same bytes).
//! An exact mode also keeps the values, to give [`CalibStats::collect`]'s
//! exact p99.
//!
//! [`ChannelMaxObserver`] keeps the running per-channel max |A_j| of
//! `[tokens, in]` activations, for SmoothQuant factors.
//!
//! Both serialize to compact bytes ([`CalibObserver::to_bytes`]), so they
//! travel between processes; decoding checks everything it reads.
//!
//! # Byte format, version 1 (little-endian)
//!
//! `CalibObserver`: `b"DQCO"`, version `u8`, flags `u8` (1 = exact,
//! 2 = reference NaN policy), relative accuracy `f64`, max_buckets `u32`,
//! buckets per octave `u32` (checked against the accuracy); count, zeros,
//! +inf and −inf counts (`u64` each); min key, max key (order-preserving
//! keys of the values), least non-zero |x| and greatest finite |x| bits
//! (`u32` each); the number of non-zero exact sums (`u16`), each as slot
//! `u8`, kind `u8` (0 Σm of positives, 1 of negatives, 2 Σm²) and value
//! `u128`; the sketch window: first bucket index `i32`, length `u32`,
//! collapsed count `u64`, then one LEB128 count per bucket (trimmed: the
//! first and last are non-zero); in exact mode, the number of values `u64`
//! and the values as `f32`.
//!
//! `ChannelMaxObserver`: `b"DQCM"`, version `u8`, flags `u8` (2 = reference,
//! 4 = in_features known), in_features `u64`, tokens `u64`, then the bits of
//! max |A_j| (`u32` each).

mod codec;
mod exact_sum;
mod sketch;

use std::sync::Arc;

use crate::calib::CalibStats;
use crate::error::{checked_size, try_vec};
use crate::parallel;
use crate::scale::{abs_max_bits, first_rejected, kth_smallest_abs, percentile_index, NanPolicy};
use crate::simd::scalar::INF_BITS;
use crate::smooth::{self, SmoothQuantConfig};
use crate::DynQuantError;

use codec::{Reader, Writer};
use exact_sum::{BlockSums, ExactSums, BLOCK, SLOTS};
use sketch::{check_alpha, Mapping, Store};
pub use sketch::{MAX_ALPHA, MIN_ALPHA};

/// Default relative accuracy of the quantile sketch.
pub const DEFAULT_RELATIVE_ACCURACY: f64 = 0.005;
/// Octaves of |x| the sketch keeps by default: `max_buckets` defaults to
/// this many times the buckets per octave (4480 buckets, 35 KiB of counts,
/// at the default accuracy), a dynamic range of 2^64 ≈ 1.8e19.
pub const DEFAULT_OCTAVES: u32 = 64;
/// Largest `max_buckets` accepted.
pub const MAX_MAX_BUCKETS: u32 = 1 << 24;

const CALIB_MAGIC: &[u8; 4] = b"DQCO";
const CHANNEL_MAGIC: &[u8; 4] = b"DQCM";
const VERSION: u8 = 1;
const FLAG_EXACT: u8 = 1;
const FLAG_REFERENCE: u8 = 2;
const FLAG_HAS_FEATURES: u8 = 4;

/// A NaN policy as Python spells it, for messages.
fn policy_name(policy: NanPolicy) -> &'static str {
    match policy {
        NanPolicy::Raise => "'raise'",
        NanPolicy::Reference => "'reference'",
    }
}

/// How a [`CalibObserver`] is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ObserverConfig {
    /// Relative accuracy α of quantiles, in [[`MIN_ALPHA`], [`MAX_ALPHA`]].
    pub relative_accuracy: f64,
    /// Keep every value for exact quantiles (memory grows with the data).
    pub exact: bool,
    /// `Raise` rejects NaN and infinities; `Reference` accepts infinities,
    /// as [`CalibStats::try_collect`] does (NaN is always an error).
    pub policy: NanPolicy,
    /// Most buckets the sketch keeps, in 1..=[`MAX_MAX_BUCKETS`]; `None`
    /// for [`DEFAULT_OCTAVES`] octaves' worth. [`CalibObserver::config`]
    /// gives the value in force.
    pub max_buckets: Option<u32>,
}

impl Default for ObserverConfig {
    fn default() -> Self {
        Self {
            relative_accuracy: DEFAULT_RELATIVE_ACCURACY,
            exact: false,
            policy: NanPolicy::Raise,
            max_buckets: None,
        }
    }
}

/// Order-preserving key of an f32 (a total order: −0 < +0).
#[inline(always)]
fn key_of(bits: u32) -> u32 {
    if bits >> 31 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

fn value_of_key(key: u32) -> f32 {
    f32::from_bits(if key >> 31 != 0 {
        key & 0x7fff_ffff
    } else {
        !key
    })
}

/// Everything an observer knows about its values but the values.
#[derive(Clone, Debug, PartialEq)]
struct Summary {
    count: u64,
    /// [`key_of`] of the least and greatest value (`u32::MAX` / 0 if none).
    min_key: u32,
    max_key: u32,
    /// Bits of the least non-zero finite |x| (`u32::MAX` if none).
    min_pos_abs: u32,
    /// Bits of the greatest finite |x| (0 if none).
    max_finite_abs: u32,
    zeros: u64,
    pos_inf: u64,
    neg_inf: u64,
    sums: ExactSums,
    store: Store,
}

/// Marks a batch holding a value the policy rejects.
#[derive(Clone, Copy, Debug)]
struct Rejected;

impl Summary {
    fn empty() -> Self {
        Self {
            count: 0,
            min_key: u32::MAX,
            max_key: 0,
            min_pos_abs: u32::MAX,
            max_finite_abs: 0,
            zeros: 0,
            pos_inf: 0,
            neg_inf: 0,
            sums: ExactSums::new(),
            store: Store::default(),
        }
    }

    fn merge(&mut self, other: &Summary, max_buckets: u32) {
        self.count += other.count;
        self.min_key = self.min_key.min(other.min_key);
        self.max_key = self.max_key.max(other.max_key);
        self.min_pos_abs = self.min_pos_abs.min(other.min_pos_abs);
        self.max_finite_abs = self.max_finite_abs.max(other.max_finite_abs);
        self.zeros += other.zeros;
        self.pos_inf += other.pos_inf;
        self.neg_inf += other.neg_inf;
        self.sums.merge(&other.sums);
        self.store.merge(&other.store, max_buckets);
    }

    /// Adds a block of at most [`BLOCK`] values. With `INF`, the block may
    /// hold infinities (counted apart); it never holds NaN.
    fn add_block<const INF: bool>(
        &mut self,
        block: &[f32],
        sums: &mut BlockSums,
        map: &Mapping,
        max_buckets: u32,
    ) {
        debug_assert!(block.len() <= BLOCK);
        let (mut min_key, mut max_key) = (self.min_key, self.max_key);
        let (mut min_pos, mut max_abs) = (u32::MAX, 0u32);
        let mut zeros = 0u32;
        // The reductions first, in a loop the compiler can vectorise ...
        for &v in block {
            let bits = v.to_bits();
            let a = bits & 0x7fff_ffff;
            min_key = min_key.min(key_of(bits));
            max_key = max_key.max(key_of(bits));
            let finite = if INF && a == INF_BITS { 0 } else { a };
            zeros += (a == 0) as u32;
            min_pos = min_pos.min(if finite == 0 { u32::MAX } else { finite });
            max_abs = max_abs.max(finite);
        }
        // ... then the exact sums, a scatter into per-exponent bins.
        for (i, &v) in block.iter().enumerate() {
            let bits = v.to_bits();
            if INF && bits & 0x7fff_ffff == INF_BITS {
                if bits >> 31 != 0 {
                    self.neg_inf += 1;
                } else {
                    self.pos_inf += 1;
                }
                continue;
            }
            sums.add(i, bits);
        }
        let zeros = zeros as u64;
        self.count += block.len() as u64;
        self.zeros += zeros;
        (self.min_key, self.max_key) = (min_key, max_key);
        self.min_pos_abs = self.min_pos_abs.min(min_pos);
        self.max_finite_abs = self.max_finite_abs.max(max_abs);
        if min_pos == u32::MAX {
            return; // only zeros and infinities (which add nothing to the sums)
        }
        let slots =
            exact_sum::slot_and_mantissa(min_pos).0..=exact_sum::slot_and_mantissa(max_abs).0;
        self.sums.flush(sums, slots);
        let floor = self
            .store
            .reserve(map.index(min_pos), map.index(max_abs), max_buckets);
        let offset = self.store.offset;
        let counts = &mut self.store.counts;
        let mut collapsed = 0u64;
        for &v in block {
            let a = v.to_bits() & 0x7fff_ffff;
            if a == 0 || (INF && a == INF_BITS) {
                continue;
            }
            let i = map.index(a);
            collapsed += (i < floor) as u64;
            counts[(i.max(floor) - offset) as usize] += 1;
        }
        self.store.collapsed += collapsed;
    }

    /// The summary of a slice, or `Rejected` if it holds a NaN (or, under
    /// `Raise`, an infinity).
    fn of_slice(
        data: &[f32],
        map: &Mapping,
        max_buckets: u32,
        policy: NanPolicy,
    ) -> Result<Summary, Rejected> {
        let mut s = Summary::empty();
        let mut sums = BlockSums::new();
        for block in data.chunks(BLOCK) {
            let bits = abs_max_bits(block);
            if bits < INF_BITS {
                s.add_block::<false>(block, &mut sums, map, max_buckets);
            } else if bits == INF_BITS && policy == NanPolicy::Reference {
                s.add_block::<true>(block, &mut sums, map, max_buckets);
            } else {
                return Err(Rejected);
            }
        }
        Ok(s)
    }

    fn max_abs(&self) -> f32 {
        if self.count == 0 {
            return 0.0;
        }
        value_of_key(self.min_key)
            .abs()
            .max(value_of_key(self.max_key).abs())
    }
}

/// Streaming, mergeable calibration statistics in constant memory.
///
/// min, max and count are exact; mean and std_dev come from exact sums
/// (rounded once, so any merge order gives the same bits); quantiles of |x|
/// (p99 for [`CalibStats`]) come from a relative-error sketch: the answer
/// for quantile q is within relative error α of the exact k-th smallest |x|,
/// `k = ceil(q·n) − 1` in f32 as [`CalibStats::collect`] indexes, as long as
/// that value's bucket was not folded away by the `max_buckets` bound (only
/// values more than `max_buckets / M` octaves below the largest |x| are;
/// the default bound keeps 64 octaves).
#[derive(Clone, Debug)]
pub struct CalibObserver {
    config: ObserverConfig,
    max_buckets: u32,
    map: Arc<Mapping>,
    summary: Summary,
    /// Every value seen, in exact mode only.
    values: Vec<f32>,
}

impl Default for CalibObserver {
    fn default() -> Self {
        Self::new(ObserverConfig::default()).expect("the default config is valid")
    }
}

impl CalibObserver {
    /// An empty observer; errors for an out-of-range accuracy or bound.
    pub fn new(config: ObserverConfig) -> Result<Self, DynQuantError> {
        let alpha = check_alpha(config.relative_accuracy)?;
        let map = Mapping::for_accuracy(alpha);
        let max_buckets = config.max_buckets.unwrap_or_else(|| {
            (map.per_octave().saturating_mul(DEFAULT_OCTAVES)).min(MAX_MAX_BUCKETS)
        });
        if !(1..=MAX_MAX_BUCKETS).contains(&max_buckets) {
            return Err(DynQuantError::InvalidArgument(format!(
                "max_buckets must be in 1..={MAX_MAX_BUCKETS}, got {max_buckets}"
            )));
        }
        Ok(Self {
            config: ObserverConfig {
                max_buckets: Some(max_buckets),
                ..config
            },
            max_buckets,
            map,
            summary: Summary::empty(),
            values: Vec::new(),
        })
    }

    /// An empty observer with the same settings (cheap: the bucket layout
    /// is shared). Observing a batch into one of these and then merging it
    /// gives the same state as [`Self::update`], and lets the batch's work
    /// happen outside a lock on a shared observer.
    pub fn new_like(&self) -> Self {
        Self {
            config: self.config,
            max_buckets: self.max_buckets,
            map: Arc::clone(&self.map),
            summary: Summary::empty(),
            values: Vec::new(),
        }
    }

    /// The configuration in force (`max_buckets` resolved).
    pub fn config(&self) -> ObserverConfig {
        self.config
    }

    /// The bound on the sketch's buckets.
    pub fn max_buckets(&self) -> u32 {
        self.max_buckets
    }

    /// Adds a batch. On an error (a NaN, or an infinity under `Raise`; the
    /// index is the batch's flat index) the observer is left unchanged.
    pub fn update(&mut self, data: &[f32]) -> Result<(), DynQuantError> {
        if data.is_empty() {
            return Ok(());
        }
        let (map, max_buckets, policy) = (&*self.map, self.max_buckets, self.config.policy);
        let total = self
            .summary
            .count
            .checked_add(data.len() as u64)
            .ok_or_else(count_overflow)?;
        let of_slice = |chunk: &[f32]| Summary::of_slice(chunk, map, max_buckets, policy);
        let batch = if data.len() < 2 * parallel::GRAIN {
            of_slice(data) // not worth splitting (nor an empty summary to merge into)
        } else {
            parallel::map_reduce(
                data,
                parallel::GRAIN,
                Ok(Summary::empty()),
                of_slice,
                |a, b| match (a, b) {
                    (Ok(mut a), Ok(b)) => {
                        a.merge(&b, max_buckets);
                        Ok(a)
                    }
                    _ => Err(Rejected),
                },
            )
        };
        let batch = batch.map_err(|Rejected| first_rejected(data, policy))?;
        if self.summary.count == 0 {
            self.summary = batch;
        } else {
            self.summary.merge(&batch, max_buckets);
        }
        debug_assert_eq!(self.summary.count, total);
        if self.config.exact {
            self.values.extend_from_slice(data);
        }
        Ok(())
    }

    /// Adds everything `other` has seen. Both must have the same
    /// configuration (accuracy, bound, policy and exact mode).
    pub fn merge(&mut self, other: &CalibObserver) -> Result<(), DynQuantError> {
        let (a, b) = (self.config, other.config);
        let buckets = |m: Option<u32>| m.map_or("default".to_string(), |m| m.to_string());
        let differences: Vec<String> = [
            (a.relative_accuracy.to_bits() != b.relative_accuracy.to_bits()).then(|| {
                format!(
                    "relative_accuracy {} vs {}",
                    a.relative_accuracy, b.relative_accuracy
                )
            }),
            (a.exact != b.exact).then(|| {
                let py = |e: bool| if e { "True" } else { "False" };
                format!("exact {} vs {}", py(a.exact), py(b.exact))
            }),
            (a.policy != b.policy).then(|| {
                format!(
                    "nan_policy {} vs {}",
                    policy_name(a.policy),
                    policy_name(b.policy)
                )
            }),
            (a.max_buckets != b.max_buckets).then(|| {
                format!(
                    "max_buckets {} vs {}",
                    buckets(a.max_buckets),
                    buckets(b.max_buckets)
                )
            }),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !differences.is_empty() {
            return Err(DynQuantError::InvalidArgument(format!(
                "cannot merge observers with different settings: {}",
                differences.join(", ")
            )));
        }
        self.summary
            .count
            .checked_add(other.summary.count)
            .ok_or_else(count_overflow)?;
        self.summary.merge(&other.summary, self.max_buckets);
        self.values.extend_from_slice(&other.values);
        Ok(())
    }

    /// Values seen.
    pub fn count(&self) -> u64 {
        self.summary.count
    }

    /// Values equal to ±0.
    pub fn zero_count(&self) -> u64 {
        self.summary.zeros
    }

    /// Values whose sketch bucket was folded into the lowest kept one.
    pub fn collapsed_count(&self) -> u64 {
        self.summary.store.collapsed
    }

    /// Non-empty sketch buckets.
    pub fn bucket_count(&self) -> usize {
        self.summary
            .store
            .counts
            .iter()
            .filter(|&&c| c != 0)
            .count()
    }

    /// Sketch buckets per octave (`M`, with `γ = 2^(1/M)`).
    pub fn buckets_per_octave(&self) -> u32 {
        self.map.per_octave()
    }

    /// The relative accuracy the buckets give (at most the requested one).
    pub fn effective_accuracy(&self) -> f64 {
        self.map.accuracy()
    }

    /// Least value (0.0 when empty; −0.0 sorts below +0.0).
    pub fn min(&self) -> f32 {
        if self.summary.count == 0 {
            0.0
        } else {
            value_of_key(self.summary.min_key)
        }
    }

    /// Greatest value (0.0 when empty).
    pub fn max(&self) -> f32 {
        if self.summary.count == 0 {
            0.0
        } else {
            value_of_key(self.summary.max_key)
        }
    }

    /// Mean and population variance in f64 (NaN or ±inf with infinities,
    /// as [`CalibStats::collect`] gives).
    fn mean_and_variance(&self) -> (f64, f64) {
        let s = &self.summary;
        if s.pos_inf + s.neg_inf > 0 {
            let mean = match (s.pos_inf > 0, s.neg_inf > 0) {
                (true, true) => f64::NAN,
                (true, false) => f64::INFINITY,
                _ => f64::NEG_INFINITY,
            };
            return (mean, f64::NAN);
        }
        s.sums.mean_and_variance(s.count)
    }

    /// Mean of the values, from their exact sum (0.0 when empty).
    pub fn mean(&self) -> f64 {
        self.mean_and_variance().0
    }

    /// Population standard deviation, from exact sums (0.0 when empty).
    pub fn std_dev(&self) -> f64 {
        self.mean_and_variance().1.sqrt()
    }

    /// The q-quantile of |x| (q in [0, 1]): the value at the reference's
    /// rank `ceil(q·n) − 1` (in f32), exact in exact mode, otherwise within
    /// the relative accuracy (see the type's documentation). 0.0 when empty.
    pub fn quantile(&self, q: f64) -> Result<f64, DynQuantError> {
        if !(0.0..=1.0).contains(&q) {
            return Err(DynQuantError::InvalidArgument(format!(
                "quantile must be in [0, 1], got {q}"
            )));
        }
        let s = &self.summary;
        if s.count == 0 {
            return Ok(0.0);
        }
        let n = usize::try_from(s.count).map_err(|_| count_overflow())?;
        let k = percentile_index(q as f32, n) as u64;
        if self.config.exact {
            return Ok(kth_smallest_abs(&self.values, k as usize) as f64);
        }
        let finite = s.count - s.pos_inf - s.neg_inf;
        let (min_pos, max_abs) = (
            f32::from_bits(s.min_pos_abs) as f64,
            f32::from_bits(s.max_finite_abs) as f64,
        );
        Ok(if k < s.zeros {
            0.0
        } else if k >= finite {
            f64::INFINITY
        } else if k + 1 == finite {
            max_abs
        } else if k == s.zeros {
            min_pos
        } else {
            match s.store.bucket_of_rank(k - s.zeros) {
                Some(i) => self.map.representative(i).min(max_abs).max(min_pos),
                None => max_abs,
            }
        })
    }

    /// The statistics of everything seen, as [`CalibStats::collect`] gives
    /// them on the concatenated batches: min, max and (in exact mode) p99
    /// and suggested_scale bit for bit; otherwise p99 within the accuracy.
    pub fn stats(&self) -> CalibStats {
        if self.summary.count == 0 {
            return CalibStats::default();
        }
        let (mean, variance) = self.mean_and_variance();
        let p99 = self.quantile(0.99).unwrap_or(f64::NAN) as f32;
        let max_abs = self.summary.max_abs();
        let suggested_scale = if p99 > 0.0 {
            p99 / 127.0
        } else if max_abs > 0.0 {
            max_abs / 127.0
        } else {
            1.0 / 127.0
        };
        CalibStats {
            min: self.min(),
            max: self.max(),
            mean: mean as f32,
            std_dev: variance.sqrt() as f32,
            p99,
            suggested_scale,
        }
    }

    /// The non-empty sketch buckets as `(lower, upper, count)`: `count`
    /// values of |x| in `(lower, upper]` (zeros and infinities excluded; a
    /// folded bucket also holds the values below it).
    pub fn histogram(&self) -> Vec<(f64, f64, u64)> {
        let store = &self.summary.store;
        store
            .counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c != 0)
            .map(|(i, &c)| {
                let index = store.offset + i as i32;
                (self.map.upper(index - 1), self.map.upper(index), c)
            })
            .collect()
    }

    /// The compact byte form (see [`Self::from_bytes`]); equal states give
    /// equal bytes (in exact mode the values keep their arrival order).
    pub fn to_bytes(&self) -> Vec<u8> {
        let s = &self.summary;
        let mut w = Writer::default();
        w.bytes(CALIB_MAGIC);
        w.u8(VERSION);
        let mut flags = 0;
        if self.config.exact {
            flags |= FLAG_EXACT;
        }
        if self.config.policy == NanPolicy::Reference {
            flags |= FLAG_REFERENCE;
        }
        w.u8(flags);
        w.f64(self.config.relative_accuracy);
        w.u32(self.max_buckets);
        w.u32(self.map.per_octave());
        for v in [s.count, s.zeros, s.pos_inf, s.neg_inf] {
            w.u64(v);
        }
        for v in [s.min_key, s.max_key, s.min_pos_abs, s.max_finite_abs] {
            w.u32(v);
        }
        let bins = [&s.sums.pos, &s.sums.neg, &s.sums.sq];
        let entries = bins.iter().flat_map(|b| b.iter()).filter(|&&v| v != 0);
        w.u16(entries.count() as u16);
        for (kind, bin) in bins.iter().enumerate() {
            for (slot, &v) in bin.iter().enumerate().filter(|(_, &v)| v != 0) {
                w.u8(slot as u8);
                w.u8(kind as u8);
                w.u128(v);
            }
        }
        let (offset, counts) = s.store.trimmed();
        w.i32(offset);
        w.u32(counts.len() as u32);
        w.u64(s.store.collapsed);
        for &c in counts {
            w.varint(c);
        }
        if self.config.exact {
            w.u64(self.values.len() as u64);
            for v in &self.values {
                w.bytes(&v.to_le_bytes());
            }
        }
        w.0
    }

    /// Decodes [`Self::to_bytes`]; any malformed or inconsistent input is an
    /// `InvalidArgument` error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DynQuantError> {
        let mut r = Reader::new(bytes, "CalibObserver");
        if r.take(4)? != CALIB_MAGIC {
            return Err(r.bad("not a CalibObserver (magic)"));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(r.bad(format!("unsupported version {version}")));
        }
        let flags = r.u8()?;
        if flags & !(FLAG_EXACT | FLAG_REFERENCE) != 0 {
            return Err(r.bad(format!("unknown flags {flags:#x}")));
        }
        let config = ObserverConfig {
            relative_accuracy: r.f64()?,
            exact: flags & FLAG_EXACT != 0,
            policy: if flags & FLAG_REFERENCE != 0 {
                NanPolicy::Reference
            } else {
                NanPolicy::Raise
            },
            max_buckets: Some(r.u32()?),
        };
        let mut obs = CalibObserver::new(config).map_err(|e| r.bad(e))?;
        if r.u32()? != obs.map.per_octave() {
            return Err(r.bad("buckets per octave do not match the accuracy"));
        }
        let s = &mut obs.summary;
        (s.count, s.zeros, s.pos_inf, s.neg_inf) = (r.u64()?, r.u64()?, r.u64()?, r.u64()?);
        (s.min_key, s.max_key, s.min_pos_abs, s.max_finite_abs) =
            (r.u32()?, r.u32()?, r.u32()?, r.u32()?);
        let entries = r.u16()?;
        // Bins of valid data: Σm ≤ n·(2^24 − 1), Σm² ≤ n·(2^24 − 1)².
        let m_max = (1u128 << 24) - 1;
        for _ in 0..entries {
            let (slot, kind, v) = (r.u8()? as usize, r.u8()?, r.u128()?);
            let limit = if kind == 2 { m_max * m_max } else { m_max };
            let bin = match kind {
                0 => &mut s.sums.pos,
                1 => &mut s.sums.neg,
                2 => &mut s.sums.sq,
                _ => return Err(r.bad(format!("unknown sum kind {kind}"))),
            };
            if !(1..SLOTS - 1).contains(&slot) || bin[slot] != 0 {
                return Err(r.bad(format!("bad or repeated exponent slot {slot}")));
            }
            if v == 0 || v > s.count as u128 * limit {
                return Err(r.bad("a sum is out of range for the count"));
            }
            bin[slot] = v;
        }
        let offset = r.i32()?;
        let len = r.u32()?;
        s.store.collapsed = r.u64()?;
        let m = obs.map.per_octave() as i64;
        let (lo, hi) = (-149 * m, 128 * m);
        if len > obs.max_buckets
            || (len > 0 && (offset as i64) < lo)
            || offset as i64 + len as i64 - 1 > hi
        {
            return Err(r.bad("sketch window out of range"));
        }
        let len = r.length(len as u64, 1)?;
        let mut counts = Vec::with_capacity(len);
        let mut bucketed = 0u64;
        for _ in 0..len {
            let c = r.varint()?;
            bucketed = bucketed
                .checked_add(c)
                .ok_or_else(|| r.bad("counts overflow"))?;
            counts.push(c);
        }
        if len > 0 && (counts[0] == 0 || counts[len - 1] == 0) {
            return Err(r.bad("sketch window not trimmed"));
        }
        if s.store.collapsed > 0
            && (len != obs.max_buckets as usize || s.store.collapsed > counts[0])
        {
            return Err(r.bad("collapsed count inconsistent with the window"));
        }
        s.store.offset = if len > 0 { offset } else { 0 };
        s.store.counts = counts;
        let total = [bucketed, s.zeros, s.pos_inf, s.neg_inf]
            .iter()
            .try_fold(0u64, |acc, &c| acc.checked_add(c));
        if total != Some(s.count) {
            return Err(r.bad("bucket, zero and infinity counts do not add up to the count"));
        }
        if config.policy == NanPolicy::Raise && s.pos_inf + s.neg_inf > 0 {
            return Err(r.bad("infinities under nan_policy raise"));
        }
        let nan_key = |k: u32| value_of_key(k).is_nan();
        let consistent = if s.count == 0 {
            (s.min_key, s.max_key, s.min_pos_abs, s.max_finite_abs) == (u32::MAX, 0, u32::MAX, 0)
        } else {
            s.min_key <= s.max_key
                && !nan_key(s.min_key)
                && !nan_key(s.max_key)
                && (bucketed == 0) == (s.min_pos_abs == u32::MAX)
                && (bucketed == 0 || s.min_pos_abs <= s.max_finite_abs)
                && s.max_finite_abs < INF_BITS
        };
        if !consistent {
            return Err(r.bad("min/max fields inconsistent"));
        }
        if config.exact {
            let n = r.u64()?;
            if n != s.count {
                return Err(r.bad("exact values do not match the count"));
            }
            let n = r.length(n, 4)?;
            let raw = r.take(n * 4)?;
            obs.values = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let bits = abs_max_bits(&obs.values);
            if bits > INF_BITS || (bits == INF_BITS && config.policy == NanPolicy::Raise) {
                return Err(r.bad("exact values hold a value the policy rejects"));
            }
        }
        r.finish()?;
        Ok(obs)
    }
}

fn count_overflow() -> DynQuantError {
    DynQuantError::InvalidArgument("observer count overflows u64".into())
}

/// Running per-channel max |A_j| over streamed `[tokens, in]` activations,
/// for SmoothQuant: [`Self::smooth_factors`] equals
/// [`smooth::compute_smooth_factors`] on the concatenated batches, bit for
/// bit. NaN is skipped under `Reference` (as the reference's comparison
/// does) and an error under `Raise`, as are infinities.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelMaxObserver {
    in_features: Option<usize>,
    /// Bits of max |A_j| (never NaN).
    max_bits: Vec<u32>,
    tokens: u64,
    policy: NanPolicy,
}

impl ChannelMaxObserver {
    /// An empty observer; `in_features` may be left to the first batch.
    ///
    /// # Panics
    /// When the `in_features` slots cannot be allocated ([`Self::try_new`]
    /// returns the error instead).
    pub fn new(in_features: Option<usize>, policy: NanPolicy) -> Self {
        Self::try_new(in_features, policy).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Self::new`], with `AllocationFailed` when the allocator refuses
    /// `in_features` slots (a mistyped size, say) instead of aborting.
    pub fn try_new(in_features: Option<usize>, policy: NanPolicy) -> Result<Self, DynQuantError> {
        Ok(Self {
            in_features,
            max_bits: try_vec(in_features.unwrap_or(0), 0)?,
            tokens: 0,
            policy,
        })
    }

    /// An empty observer with the same settings and channels.
    pub fn new_like(&self) -> Self {
        Self::new(self.in_features, self.policy)
    }

    /// Input channels (None until given or seen).
    pub fn in_features(&self) -> Option<usize> {
        self.in_features
    }

    /// Rows (tokens) seen.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The NaN policy.
    pub fn policy(&self) -> NanPolicy {
        self.policy
    }

    /// max |A_j| per channel (zeros before any token).
    pub fn act_max(&self) -> Vec<f32> {
        self.max_bits.iter().map(|&b| f32::from_bits(b)).collect()
    }

    /// `argument` (of width `in_features`) against the width already seen.
    fn check_features(
        &self,
        in_features: usize,
        argument: &'static str,
    ) -> Result<(), DynQuantError> {
        match self.in_features {
            Some(have) if have != in_features => Err(DynQuantError::FeatureWidthMismatch {
                argument,
                in_features: have,
                actual: in_features,
            }),
            _ => Ok(()),
        }
    }

    /// Adds a row-major `[tokens, in_features]` batch; unchanged on error.
    pub fn update(
        &mut self,
        data: &[f32],
        tokens: usize,
        in_features: usize,
    ) -> Result<(), DynQuantError> {
        self.check_features(in_features, "data")?;
        let expected = tokens.checked_mul(in_features).ok_or_else(|| {
            DynQuantError::InvalidArgument(format!(
                "{tokens} x {in_features} elements overflow usize"
            ))
        })?;
        if data.len() != expected {
            return Err(DynQuantError::ShapeMismatch {
                expected,
                actual: data.len(),
            });
        }
        if self.policy == NanPolicy::Raise && abs_max_bits(data) >= INF_BITS {
            return Err(first_rejected(data, NanPolicy::Raise));
        }
        // Checked before anything changes: an error leaves the observer as it was.
        let total = self
            .tokens
            .checked_add(tokens as u64)
            .ok_or_else(count_overflow)?;
        if self.in_features.is_none() {
            // Allocated before anything changes, so a refusal leaves the
            // observer as it was.
            self.max_bits = try_vec(in_features, 0)?;
            self.in_features = Some(in_features);
        }
        if tokens > 0 {
            // No rows, no maxima (and no per-channel buffer to allocate).
            let batch = smooth::column_abs_max(data, in_features);
            for (m, v) in self.max_bits.iter_mut().zip(&batch) {
                *m = (*m).max(v.to_bits());
            }
        }
        self.tokens = total;
        Ok(())
    }

    /// Adds everything `other` has seen (same channels and policy).
    pub fn merge(&mut self, other: &ChannelMaxObserver) -> Result<(), DynQuantError> {
        if self.policy != other.policy {
            return Err(DynQuantError::InvalidArgument(format!(
                "cannot merge observers with different NaN policies ({} vs {})",
                policy_name(self.policy),
                policy_name(other.policy)
            )));
        }
        let total = self
            .tokens
            .checked_add(other.tokens)
            .ok_or_else(count_overflow)?;
        let Some(theirs) = other.in_features else {
            self.tokens = total;
            return Ok(());
        };
        self.check_features(theirs, "the merged observer")?;
        if self.in_features.is_none() {
            self.in_features = Some(theirs);
            self.max_bits = vec![0; theirs];
        }
        for (m, &o) in self.max_bits.iter_mut().zip(&other.max_bits) {
            *m = (*m).max(o);
        }
        self.tokens = total;
        Ok(())
    }

    /// SmoothQuant factors for `weights` `[out_features, in_features]`,
    /// with the formula of [`smooth::compute_smooth_factors`]. The config is
    /// checked as [`SmoothQuantConfig::try_new`] checks it (its fields are
    /// public, so a NaN alpha, which the formula would turn into epsilon
    /// factors, is an error here).
    pub fn smooth_factors(
        &self,
        weights: &[f32],
        out_features: usize,
        config: &SmoothQuantConfig,
    ) -> Result<Vec<f32>, DynQuantError> {
        let in_features = self.in_features.ok_or_else(|| {
            DynQuantError::InvalidArgument(
                "no activations observed yet: in_features is unknown".into(),
            )
        })?;
        SmoothQuantConfig::try_new(config.alpha, config.epsilon)?;
        let expected = checked_size(out_features, in_features, "weights")?;
        if weights.len() != expected {
            return Err(DynQuantError::ShapeMismatch {
                expected,
                actual: weights.len(),
            });
        }
        if in_features == 0 {
            return Ok(Vec::new());
        }
        let w_max = smooth::column_abs_max(weights, in_features);
        Ok(smooth::smooth_factors_from_maxima(
            &self.act_max(),
            &w_max,
            config,
        ))
    }

    /// Compact bytes: magic, version, flags, in_features, tokens, maxima.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.bytes(CHANNEL_MAGIC);
        w.u8(VERSION);
        let mut flags = 0;
        if self.policy == NanPolicy::Reference {
            flags |= FLAG_REFERENCE;
        }
        if self.in_features.is_some() {
            flags |= FLAG_HAS_FEATURES;
        }
        w.u8(flags);
        w.u64(self.in_features.unwrap_or(0) as u64);
        w.u64(self.tokens);
        for &b in &self.max_bits {
            w.u32(b);
        }
        w.0
    }

    /// Decodes [`Self::to_bytes`]; malformed input is an error.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DynQuantError> {
        let mut r = Reader::new(bytes, "ChannelMaxObserver");
        if r.take(4)? != CHANNEL_MAGIC {
            return Err(r.bad("not a ChannelMaxObserver (magic)"));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(r.bad(format!("unsupported version {version}")));
        }
        let flags = r.u8()?;
        if flags & !(FLAG_REFERENCE | FLAG_HAS_FEATURES) != 0 {
            return Err(r.bad(format!("unknown flags {flags:#x}")));
        }
        let policy = if flags & FLAG_REFERENCE != 0 {
            NanPolicy::Reference
        } else {
            NanPolicy::Raise
        };
        let n = r.u64()?;
        let tokens = r.u64()?;
        if flags & FLAG_HAS_FEATURES == 0 && n != 0 {
            return Err(r.bad("channel maxima without in_features"));
        }
        // The first batch, even an empty one, sets in_features: no observer
        // has counted tokens without it (merging such bytes would add
        // tokens whose maxima were never kept).
        if flags & FLAG_HAS_FEATURES == 0 && tokens != 0 {
            return Err(r.bad(format!("{tokens} tokens without in_features")));
        }
        let n = r.length(n, 4)?;
        let mut max_bits = Vec::with_capacity(n);
        for _ in 0..n {
            let b = r.u32()?;
            let limit = if policy == NanPolicy::Raise {
                INF_BITS - 1
            } else {
                INF_BITS
            };
            if b > limit {
                return Err(r.bad(format!("channel maximum {} not allowed", f32::from_bits(b))));
            }
            max_bits.push(b);
        }
        r.finish()?;
        Ok(Self {
            in_features: (flags & FLAG_HAS_FEATURES != 0).then_some(n),
            max_bits,
            tokens,
            policy,
        })
    }
}

#[cfg(test)]
mod tests;
