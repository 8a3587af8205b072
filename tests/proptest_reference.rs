//! Every public function of the crate against a plain scalar oracle written
//! here from SPEC §1: sort-based percentiles, `f32::round`, true f32
//! divisions, i64 sums. int8 data and f32 scales are compared bit for bit;
//! only mean / std_dev / MAE (which the SPEC lets dynquant sum in f64) get a
//! tolerance. The SIMD paths are forced one after another in a single test
//! (the path is process-global) and must give the scalar path's bits.

use std::sync::Mutex;

use dynquant::simd::{self, Isa};
use dynquant::{
    calib::CalibStats, matmul, parallel, quantize, scale, smooth, tensor, weights, ActQuant,
    DynQuantError, DynQuantFormat, DynQuantTensor, DynamicScaleMode, Int4Layout, NanPolicy,
    SmoothQuantConfig,
};
use proptest::prelude::*;

/// Serialises the tests that switch the process-global kernel path.
static ISA_LOCK: Mutex<()> = Mutex::new(());

// ─── the oracle ─────────────────────────────────────────────────────────────

mod oracle {
    use super::*;

    pub fn percentile_index(p: f32, n: usize) -> usize {
        let p = p.clamp(0.0, 1.0);
        let k = (p * n as f32).ceil() as usize; // all f32: n rounds above 2^24
        k.saturating_sub(1).min(n - 1)
    }

    /// `max |x|` (NaN skipped by `f32::max`) or the sorted-|x| percentile.
    pub fn amax(x: &[f32], mode: DynamicScaleMode) -> f32 {
        match mode {
            DynamicScaleMode::MaxAbs => x.iter().fold(0.0f32, |m, v| m.max(v.abs())),
            DynamicScaleMode::Percentile(p) => {
                let mut a: Vec<f32> = x.iter().map(|v| v.abs()).collect();
                a.sort_by(|l, r| l.partial_cmp(r).expect("no NaN under Percentile"));
                a[percentile_index(p, a.len())]
            }
        }
    }

    pub fn scale(x: &[f32], clip: f32, mode: DynamicScaleMode) -> f32 {
        if x.is_empty() {
            return 0.0;
        }
        let a = amax(x, mode);
        if a == 0.0 {
            0.0
        } else {
            a / clip
        }
    }

    pub fn q(x: f32, s: f32, clip: f32) -> i8 {
        (x / s).round().clamp(-clip, clip) as i8
    }

    pub fn quantize(x: &[f32], clip: f32, mode: DynamicScaleMode) -> (Vec<i8>, f32) {
        let s = scale(x, clip, mode);
        let data = if s == 0.0 {
            vec![0; x.len()]
        } else {
            x.iter().map(|&v| q(v, s, clip)).collect()
        };
        (data, s)
    }

    /// The reference's per-row loop, short and long inputs included.
    pub fn per_row(
        x: &[f32],
        rows: usize,
        cols: usize,
        mode: DynamicScaleMode,
    ) -> (Vec<i8>, Vec<f32>) {
        if x.is_empty() || rows == 0 || cols == 0 {
            return (vec![], vec![]);
        }
        let (mut data, mut scales) = (vec![], vec![]);
        for r in 0..rows {
            let start = r * cols;
            if start >= x.len() {
                data.extend(std::iter::repeat_n(0i8, cols));
                scales.push(0.0);
                continue;
            }
            let row = &x[start..(start + cols).min(x.len())];
            let (d, s) = quantize(row, 127.0, mode);
            data.extend(d);
            scales.push(s);
        }
        (data, scales)
    }

    pub fn dequantize(data: &[i8], scales: &[f32], format: DynQuantFormat) -> Vec<f32> {
        match format {
            DynQuantFormat::Int8PerRow => {
                if scales.is_empty() || data.is_empty() {
                    return vec![];
                }
                let cols = data.len() / scales.len();
                let mut out = vec![];
                for (r, &s) in scales.iter().enumerate() {
                    let start = r * cols;
                    for &v in &data[start..(start + cols).min(data.len())] {
                        out.push(v as f32 * s);
                    }
                }
                out
            }
            _ => {
                let s = scales.first().copied().unwrap_or(0.0);
                data.iter().map(|&v| v as f32 * s).collect()
            }
        }
    }

    pub fn mae(original: &[f32], deq: &[f32]) -> f64 {
        let n = original.len().min(deq.len());
        if n == 0 {
            return 0.0;
        }
        let sum: f64 = (0..n).map(|i| (original[i] - deq[i]).abs() as f64).sum();
        sum / n as f64
    }

    pub fn column_max(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        let mut m = vec![0.0f32; cols];
        for r in 0..rows {
            for (j, slot) in m.iter_mut().enumerate() {
                if let Some(v) = x.get(r * cols + j) {
                    if v.abs() > *slot {
                        *slot = v.abs();
                    }
                }
            }
        }
        m
    }

    pub fn factors(a_max: &[f32], w_max: &[f32], alpha: f32, epsilon: f32) -> Vec<f32> {
        let alpha = alpha.clamp(0.0, 1.0);
        let eps = epsilon.max(1e-10);
        a_max
            .iter()
            .zip(w_max)
            .map(|(&a, &w)| ((a + eps).powf(alpha) / (w + eps).powf(1.0 - alpha)).max(eps))
            .collect()
    }

    pub fn dot(w: &[i8], a: &[i8]) -> i64 {
        w.iter().zip(a).map(|(&w, &a)| w as i64 * a as i64).sum()
    }

    pub fn matvec(w: &[i8], ws: &[f32], x: &[f32], out: usize, k: usize) -> Vec<f32> {
        let (q, s) = quantize(x, 127.0, DynamicScaleMode::MaxAbs);
        (0..out)
            .map(|o| (dot(&w[o * k..(o + 1) * k], &q) as f32 * ws[o]) * s)
            .collect()
    }

    pub struct Calib {
        pub min: f32,
        pub max: f32,
        pub mean: f64,
        pub std: f64,
        pub p99: f32,
        pub scale: f32,
    }

    pub fn calib(batches: &[Vec<f32>]) -> Calib {
        let all: Vec<f32> = batches.iter().flatten().copied().collect();
        if all.is_empty() {
            return Calib {
                min: 0.0,
                max: 0.0,
                mean: 0.0,
                std: 0.0,
                p99: 0.0,
                scale: 0.0,
            };
        }
        let n = all.len();
        let min = all.iter().copied().fold(f32::INFINITY, f32::min);
        let max = all.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mean = all.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = all.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let p99 = amax(&all, DynamicScaleMode::Percentile(0.99));
        let max_abs = amax(&all, DynamicScaleMode::MaxAbs);
        let scale = if p99 > 0.0 {
            p99 / 127.0
        } else if max_abs > 0.0 {
            max_abs / 127.0
        } else {
            1.0 / 127.0
        };
        Calib {
            min,
            max,
            mean,
            std: var.sqrt(),
            p99,
            scale,
        }
    }

    /// Column `col` of a packed row of `cols` columns: blocks of the
    /// largest of 256, 128 and 64 columns that fits in what is left, then a
    /// last block of r < 64. In a block of B >= 64 columns (lanes of B / 8
    /// columns), byte 32i + 4l + j holds column (B / 8) l + 8i + j in its
    /// low nibble and (B / 8) l + 8i + 4 + j in its high one; in the last
    /// block, byte j holds columns j and j + ceil(r / 2). Nibbles store
    /// value + 8.
    pub fn int4(packed: &[u8], cols: usize, col: usize) -> i8 {
        let mut start = 0;
        let width = loop {
            let left = cols - start;
            let width = [256, 128, 64]
                .into_iter()
                .find(|&w| left >= w)
                .unwrap_or(left);
            if col < start + width {
                break width;
            }
            start += width;
        };
        let at = col - start;
        let (byte, high) = if width >= 64 {
            let span = width / 8;
            let (lane, rest) = (at / span, at % span);
            (32 * (rest / 8) + 4 * lane + rest % 4, rest % 8 >= 4)
        } else {
            let half = width.div_ceil(2);
            (at % half, at >= half)
        };
        let b = packed[start / 2 + byte];
        let nib = if high { b >> 4 } else { b & 15 };
        nib as i8 - 8
    }
}

// ─── comparison helpers ─────────────────────────────────────────────────────

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// Whether `e` is `NonFinite` naming `value` (its bits) at `index`.
fn non_finite_at(e: &DynQuantError, index: usize, value: f32) -> bool {
    matches!(e, DynQuantError::NonFinite { index: i, value: v }
        if *i == index && v.to_bits() == value.to_bits())
}

/// Relative closeness. MAE comes back as f32 (as in the reference), so its
/// oracle value is rounded to f32 first: a subnormal result keeps few bits.
fn close(a: f64, b: f64, rel: f64) -> bool {
    a == b || (a - b).abs() <= rel * a.abs().max(b.abs()) || (a.is_nan() && b.is_nan())
}

// ─── strategies ─────────────────────────────────────────────────────────────

fn finite() -> impl Strategy<Value = f32> {
    use proptest::num::f32::*;
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

/// float32 data over magnitudes 1e-30..1e30, any finite value, .5 ties with
/// max |x| = 127 (scale exactly 1), or mostly zeros.
fn data(min: usize, max: usize) -> impl Strategy<Value = Vec<f32>> {
    prop_oneof![
        (prop::collection::vec(-1.0f32..=1.0, min..max), -30i32..=30).prop_map(|(v, e)| {
            let m = 10f64.powi(e);
            v.into_iter().map(|x| (x as f64 * m) as f32).collect()
        }),
        prop::collection::vec(finite(), min..max),
        (
            prop::collection::vec(-254i16..=254, min..max),
            any::<prop::sample::Index>(),
            any::<bool>()
        )
            .prop_map(|(h, i, neg)| {
                let mut x: Vec<f32> = h.iter().map(|&h| h as f32 / 2.0).collect();
                if !x.is_empty() {
                    let at = i.index(x.len());
                    x[at] = if neg { -127.0 } else { 127.0 };
                }
                x
            }),
        prop::collection::vec(
            prop::sample::select(vec![0.0f32, -0.0, 1.5, -3.0]),
            min..max
        ),
    ]
}

fn mode() -> impl Strategy<Value = DynamicScaleMode> {
    prop_oneof![
        Just(DynamicScaleMode::MaxAbs),
        (1e-6f32..=1.0).prop_map(DynamicScaleMode::Percentile),
        prop::sample::select(vec![0.5f32, 0.9, 0.99, 0.999, 1.0])
            .prop_map(DynamicScaleMode::Percentile),
    ]
}

fn int8s(len: usize) -> impl Strategy<Value = Vec<i8>> {
    prop_oneof![
        prop::collection::vec(any::<i8>(), len),
        prop::collection::vec(prop::sample::select(vec![-128i8, 127, -127, 0]), len),
        // Like real weights: mostly small, a few large (the GEMM's offset
        // form takes these, with a residual for the few unsafe pairs).
        prop::collection::vec(prop_oneof![8 => -40i8..=40, 1 => any::<i8>()], len),
    ]
}

/// Exactly `n` values.
fn exactly(n: usize) -> impl Strategy<Value = Vec<f32>> {
    data(n, n + 1)
}

/// `(rows, cols, data)` with data exactly rows * cols long.
fn matrix(max_rows: usize, max_cols: usize) -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
    (0..=max_rows, 0..=max_cols).prop_flat_map(|(r, c)| (Just(r), Just(c), exactly(r * c)))
}

// ─── the reference API ──────────────────────────────────────────────────────

proptest! {
    // 256 cases each (proptest's default); PROPTEST_CASES=n runs more.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn compute_scale_is_the_oracle(
        x in data(0, 200),
        clip in prop::sample::select(vec![127.0f32, 7.0, 1.0, 0.1, 1e-30, 3e38]),
        m in mode(),
    ) {
        let want = oracle::scale(&x, clip, m).to_bits();
        prop_assert_eq!(dynquant::compute_scale(&x, clip, m).to_bits(), want);
        for policy in [NanPolicy::Raise, NanPolicy::Reference] {
            let got = dynquant::try_compute_scale(&x, clip, m, policy).unwrap();
            prop_assert_eq!(got.to_bits(), want);
        }
    }

    /// One or two NaN / ±inf somewhere in finite data: `Raise` names the
    /// first non-finite value whatever the mode (a percentile below the
    /// infinity must not hide it); `Reference` gives the oracle's scale
    /// (MaxAbs skips NaN, an infinity is a value like any other, also beside
    /// a NaN), except a NaN under `Percentile`, where the reference panics
    /// and dynquant errs naming the first NaN (an earlier infinity is
    /// accepted there).
    #[test]
    fn non_finite_scale_follows_the_policy(
        x in data(0, 120),
        inserts in prop::collection::vec(
            (any::<prop::sample::Index>(), prop::sample::select(vec![f32::NAN, f32::INFINITY, f32::NEG_INFINITY])),
            1..3,
        ),
        m in mode(),
    ) {
        let mut x = x;
        for (at, v) in inserts {
            let at = at.index(x.len() + 1);
            x.insert(at, v);
        }
        let i = x.iter().position(|v| !v.is_finite()).unwrap();
        let bad = x[i];
        let first_nan = x.iter().position(|v| v.is_nan());
        for clip in [127.0f32, 7.0] {
            let e = dynquant::try_compute_scale(&x, clip, m, NanPolicy::Raise).unwrap_err();
            prop_assert!(non_finite_at(&e, i, bad), "Raise: {:?}", e);
            let got = dynquant::try_compute_scale(&x, clip, m, NanPolicy::Reference);
            if let (Some(n), DynamicScaleMode::Percentile(_)) = (first_nan, m) {
                prop_assert!(non_finite_at(&got.unwrap_err(), n, f32::NAN));
            } else {
                prop_assert_eq!(got.unwrap().to_bits(), oracle::scale(&x, clip, m).to_bits());
            }
        }
        let e = dynquant::try_dynamic_quantize_int8(&x, m, NanPolicy::Raise).unwrap_err();
        prop_assert!(non_finite_at(&e, i, bad), "{:?}", e);
        let e = dynquant::try_dynamic_quantize_int8_per_row(&x, 1, x.len(), m, NanPolicy::Raise).unwrap_err();
        prop_assert!(non_finite_at(&e, i, bad), "{:?}", e);
    }

    #[test]
    fn per_tensor_quantizers_are_the_oracle(x in data(0, 300), m in mode()) {
        for (clip, format) in [(127.0, DynQuantFormat::Int8PerTensor), (7.0, DynQuantFormat::Int4PerTensor)] {
            let (q, s) = oracle::quantize(&x, clip, m);
            let t = if clip == 127.0 {
                dynquant::dynamic_quantize_int8(&x, m)
            } else {
                dynquant::dynamic_quantize_int4(&x, m)
            };
            prop_assert_eq!(&t.data, &q);
            prop_assert_eq!(bits(&t.scales), vec![s.to_bits()]);
            prop_assert_eq!(&t.shape, &vec![x.len()]);
            prop_assert_eq!(t.format, format);
            let t2 = if clip == 127.0 {
                dynquant::try_dynamic_quantize_int8(&x, m, NanPolicy::Raise)
            } else {
                dynquant::try_dynamic_quantize_int4(&x, m, NanPolicy::Raise)
            };
            prop_assert_eq!(t2.unwrap(), t.clone());
            let mut out = vec![99i8; x.len()];
            let s2 = quantize::quantize_per_tensor_into(&x, clip, m, NanPolicy::Raise, &mut out).unwrap();
            prop_assert_eq!((out, s2.to_bits()), (q.clone(), s.to_bits()));
            // the tensor methods
            prop_assert_eq!(bits(&t.dequantize()), bits(&oracle::dequantize(&q, &[s], format)));
            prop_assert_eq!(t.dequantized_len(), x.len());
            let mut d = vec![f32::NAN; x.len()];
            t.dequantize_into(&mut d);
            prop_assert_eq!(bits(&d), bits(&oracle::dequantize(&q, &[s], format)));
            prop_assert_eq!(t.memory_bytes(), x.len() + 4);
            prop_assert_eq!(t.element_count(), x.len());
            prop_assert_eq!(t.compression_ratio().to_bits(), ((4 * x.len()) as f32 / (x.len() + 4) as f32).to_bits());
            let want = oracle::mae(&x, &oracle::dequantize(&q, &[s], format));
            if want.is_finite() {
                prop_assert!(close(dynquant::quantization_mae(&x, &t) as f64, want as f32 as f64, 1e-6));
            }
        }
    }

    #[test]
    fn per_row_is_the_oracle((rows, cols, x) in matrix(8, 60), m in mode()) {
        let (q, s) = oracle::per_row(&x, rows, cols, m);
        let t = dynquant::dynamic_quantize_int8_per_row(&x, rows, cols, m);
        prop_assert_eq!(&t.data, &q);
        prop_assert_eq!(bits(&t.scales), bits(&s));
        prop_assert_eq!(&t.shape, &vec![rows, cols]);
        prop_assert_eq!(t.format, DynQuantFormat::Int8PerRow);
        let t2 = dynquant::try_dynamic_quantize_int8_per_row(&x, rows, cols, m, NanPolicy::Raise).unwrap();
        prop_assert_eq!(&t2, &t);
        if rows * cols > 0 {
            let mut out = vec![99i8; x.len()];
            let mut sc = vec![f32::NAN; rows];
            quantize::quantize_per_row_into(&x, cols, m, NanPolicy::Raise, &mut out, &mut sc).unwrap();
            prop_assert_eq!(&out, &q);
            prop_assert_eq!(bits(&sc), bits(&s));
        }
        let deq = oracle::dequantize(&q, &s, DynQuantFormat::Int8PerRow);
        prop_assert_eq!(bits(&t.dequantize()), bits(&deq));
        prop_assert_eq!(tensor::dequantized_len(&t.data, &t.scales, t.format), deq.len());
        prop_assert_eq!(t.memory_bytes(), q.len() + 4 * s.len());
        let want = oracle::mae(&x, &deq);
        if want.is_finite() {
            prop_assert!(close(dynquant::quantization_mae(&x, &t) as f64, want as f32 as f64, 1e-6));
            prop_assert!(close(tensor::mae_of_parts(&x, &t.data, &t.scales, t.format) as f64, want as f32 as f64, 1e-6));
        }
    }

    /// The reference's per-row quirks: a short input pads zero rows, a long
    /// one is cut (the checked form rejects both).
    #[test]
    fn per_row_short_and_long_inputs(
        rows in 1usize..6, cols in 1usize..9, x in data(0, 60), m in mode(),
    ) {
        let (q, s) = oracle::per_row(&x, rows, cols, m);
        let t = dynquant::dynamic_quantize_int8_per_row(&x, rows, cols, m);
        prop_assert_eq!(&t.data, &q);
        prop_assert_eq!(bits(&t.scales), bits(&s));
        prop_assert_eq!(bits(&t.dequantize()), bits(&oracle::dequantize(&q, &s, DynQuantFormat::Int8PerRow)));
        let checked = dynquant::try_dynamic_quantize_int8_per_row(&x, rows, cols, m, NanPolicy::Raise);
        if x.len() == rows * cols {
            prop_assert!(checked.is_ok());
        } else {
            prop_assert_eq!(checked.unwrap_err(), DynQuantError::ShapeMismatch { expected: rows * cols, actual: x.len() });
        }
    }

    #[test]
    fn percentile_helpers_are_the_oracle(x in data(1, 300), p in 0.0f32..=1.0, split in any::<prop::sample::Index>()) {
        let n = x.len();
        let k = oracle::percentile_index(p, n);
        prop_assert_eq!(scale::percentile_index(p, n), k);
        let mut sorted: Vec<f32> = x.iter().map(|v| v.abs()).collect();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        prop_assert_eq!(scale::percentile_of_abs(&x, p).to_bits(), sorted[k].to_bits());
        prop_assert_eq!(scale::kth_smallest_abs(&x, k).to_bits(), sorted[k].to_bits());
        let at = split.index(n + 1);
        prop_assert_eq!(scale::kth_smallest_abs_in(&[&x[..at], &x[at..]], k).to_bits(), sorted[k].to_bits());
    }

    #[test]
    fn smoothing_is_the_oracle(
        (tokens, out, cols, a, w) in (0usize..6, 0usize..6, 1usize..40).prop_flat_map(|(t, o, c)| {
            (Just(t), Just(o), Just(c), exactly(t * c), exactly(o * c))
        }),
        alpha in prop_oneof![Just(0.0f32), Just(0.5), Just(1.0), 0.0f32..=1.0],
        eps in prop::sample::select(vec![1e-5f32, 0.0, 1e-12, 1e-3, 1.0]),
    ) {
        let a_max = oracle::column_max(&a, tokens, cols);
        let w_max = oracle::column_max(&w, out, cols);
        prop_assert_eq!(bits(&smooth::column_abs_max(&a, cols)), bits(&a_max));
        let cfg = SmoothQuantConfig { alpha, epsilon: eps };
        let want = oracle::factors(&a_max, &w_max, alpha, eps);
        let got = dynquant::compute_smooth_factors(&a, &w, cols, tokens, out, &cfg);
        prop_assert_eq!(bits(&got), bits(&want));
        prop_assert_eq!(bits(&smooth::smooth_factors_from_maxima(&a_max, &w_max, &cfg)), bits(&want));
        prop_assert_eq!(SmoothQuantConfig::try_new(alpha, eps).unwrap(), cfg.clone());
        // apply (skip factors that are 0 or non-finite: division semantics only)
        let f: Vec<f32> = want.iter().map(|&v| if v.is_finite() && v > 0.0 { v } else { 1.0 }).collect();
        let want_a: Vec<f32> = a.iter().enumerate().map(|(i, &v)| v / f[i % cols]).collect();
        let want_w: Vec<f32> = w.iter().enumerate().map(|(i, &v)| v * f[i % cols]).collect();
        let mut a2 = a.clone();
        dynquant::smooth_activations(&mut a2, &f, tokens, cols).unwrap();
        prop_assert_eq!(bits(&a2), bits(&want_a));
        let mut w2 = w.clone();
        dynquant::smooth_weights(&mut w2, &f, out, cols).unwrap();
        prop_assert_eq!(bits(&w2), bits(&want_w));
        let mut dst = vec![f32::NAN; a.len()];
        dynquant::smooth_activations_into(&a, &f, tokens, cols, &mut dst).unwrap();
        prop_assert_eq!(bits(&dst), bits(&want_a));
        let mut dst = vec![f32::NAN; w.len()];
        dynquant::smooth_weights_into(&w, &f, out, cols, &mut dst).unwrap();
        prop_assert_eq!(bits(&dst), bits(&want_w));
    }

    #[test]
    fn matvec_is_the_oracle(
        (out, k, w, ws, a) in (0usize..8, 1usize..300).prop_flat_map(|(o, k)| {
            (Just(o), Just(k), int8s(o * k), exactly(o), exactly(k))
        }),
    ) {
        let want = bits(&oracle::matvec(&w, &ws, &a, out, k));
        prop_assert_eq!(bits(&dynquant::w8a8_matvec(&w, &ws, &a, out, k).unwrap()), want.clone());
        prop_assert_eq!(bits(&dynquant::try_w8a8_matvec(&w, &ws, &a, out, k, NanPolicy::Raise).unwrap()), want.clone());
        let mut y = vec![f32::NAN; out];
        dynquant::w8a8_matvec_into(&w, &ws, &a, k, NanPolicy::Raise, &mut y).unwrap();
        prop_assert_eq!(bits(&y), want.clone());
        // batched, per token, with one token: the same bits
        let mut y = vec![f32::NAN; out];
        dynquant::w8a8_matmul_into(&a, 1, &w, &ws, None, ActQuant::PER_TOKEN, &mut y).unwrap();
        prop_assert_eq!(bits(&y), want);
    }

    #[test]
    fn calib_is_the_oracle(batches in prop::collection::vec(data(0, 80), 0..5)) {
        let want = oracle::calib(&batches);
        let got = CalibStats::collect(&batches);
        let parts: Vec<&[f32]> = batches.iter().map(Vec::as_slice).collect();
        let got2 = CalibStats::try_collect(&parts, NanPolicy::Raise).unwrap();
        prop_assert_eq!(got, got2);
        prop_assert_eq!(got.min, want.min);
        prop_assert_eq!(got.max, want.max);
        prop_assert_eq!(got.p99.to_bits(), want.p99.to_bits());
        prop_assert_eq!(got.suggested_scale.to_bits(), want.scale.to_bits());
        if want.mean.is_finite() && want.std.is_finite() {
            let spread = want.min.abs().max(want.max.abs()) as f64;
            prop_assert!(close(got.mean as f64, want.mean, 1e-6) || (got.mean as f64 - want.mean).abs() <= 1e-6 * spread);
            prop_assert!(close(got.std_dev as f64, want.std, 1e-6) || (got.std_dev as f64 - want.std).abs() <= 1e-6 * spread);
        }
    }

    #[test]
    fn batched_w8a8_is_the_oracle(
        (m, n, k, x, w, ws, b) in (0usize..6, 0usize..7, 1usize..70).prop_flat_map(|(m, n, k)| {
            (Just(m), Just(n), Just(k), exactly(m * k), int8s(n * k), exactly(n), exactly(n))
        }),
        per_token in any::<bool>(),
        with_bias in any::<bool>(),
    ) {
        let (q, s): (Vec<i8>, Vec<f32>) = if per_token {
            oracle::per_row(&x, m, k, DynamicScaleMode::MaxAbs)
        } else {
            let (q, s) = oracle::quantize(&x, 127.0, DynamicScaleMode::MaxAbs);
            (q, vec![s; m])
        };
        let mut want = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let acc = oracle::dot(&w[j * k..(j + 1) * k], &q[i * k..(i + 1) * k]);
                let y = (acc as f32 * ws[j]) * s[i];
                want[i * n + j] = if with_bias { y + b[j] } else { y };
            }
        }
        let act = if per_token { ActQuant::PER_TOKEN } else { ActQuant::PER_TENSOR };
        // Every forced form of the GEMM (the W4A8 test below sets forms too).
        for form in [matmul::GemmForm::Sign, matmul::GemmForm::Offset, matmul::GemmForm::Panel] {
            matmul::set_gemm_form(form);
            let mut y = vec![f32::NAN; m * n];
            matmul::w8a8_matmul_into(&x, m, &w, &ws, with_bias.then_some(b.as_slice()), act, &mut y).unwrap();
            matmul::set_gemm_form(matmul::GemmForm::Auto);
            prop_assert_eq!(bits(&y), bits(&want), "{:?}", form);
        }
    }

    #[test]
    fn int4_packing_and_w4a8_are_the_oracle(
        (m, n, k, group, values, x, scales) in (1usize..4, 1usize..20, prop_oneof![1usize..100, 100usize..800, (1usize..13).prop_map(|b| 64 * b)], prop::sample::select(vec![None, Some(2usize), Some(32), Some(64), Some(128)]))
            .prop_flat_map(|(m, n, k, g)| {
                let groups = k.div_ceil(g.unwrap_or(k));
                (
                    Just(m), Just(n), Just(k), Just(g),
                    prop::collection::vec(-8i8..=7, n * k),
                    exactly(m * k),
                    prop::collection::vec(1e-3f32..1.0, n * groups),
                )
            }),
    ) {
        let packed = weights::pack_int4(&values, k).unwrap();
        prop_assert_eq!(packed.len(), n * k.div_ceil(2));
        for r in 0..n {
            for c in 0..k {
                prop_assert_eq!(oracle::int4(&packed[r * k.div_ceil(2)..], k, c), values[r * k + c]);
            }
        }
        prop_assert_eq!(weights::unpack_int4(&packed, k).unwrap(), values.clone());
        let g = group.unwrap_or(k);
        let groups = k.div_ceil(g);
        let (q, s) = oracle::per_row(&x, m, k, DynamicScaleMode::MaxAbs);
        let mut want = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let dot = |c: usize| values[j * k + c] as i64 * q[i * k + c] as i64;
                // Exact group sums, in eight lanes by group % 8 (groups in
                // order), then a fixed-order lane sum.
                let mut lane = [-0.0f32; 8];
                for gi in 0..groups {
                    let acc: i64 = (gi * g..((gi + 1) * g).min(k)).map(dot).sum();
                    lane[gi % 8] += acc as f32 * scales[j * groups + gi];
                }
                let y = ((lane[0] + lane[4]) + (lane[2] + lane[6])) + ((lane[1] + lane[5]) + (lane[3] + lane[7]));
                if groups == 1 {
                    // One group: the W8A8 formula.
                    let acc: i64 = (0..k).map(dot).sum();
                    prop_assert_eq!(y.to_bits(), (acc as f32 * scales[j]).to_bits());
                }
                want[i * n + j] = y * s[i];
            }
        }
        let layout = Int4Layout { out_features: n, in_features: k, group_size: g };
        // The tile form and the 16-row panel form (where this CPU has its
        // kernel and k % 64 == 0). The W8A8 test above sets forms too; every
        // form gives the same bits, so a race changes only which one runs.
        for form in [matmul::GemmForm::Sign, matmul::GemmForm::Panel] {
            matmul::set_gemm_form(form);
            let mut y = vec![f32::NAN; m * n];
            dynquant::w4a8_matmul_into(&x, m, &packed, &scales, layout, None, ActQuant::PER_TOKEN, &mut y).unwrap();
            matmul::set_gemm_form(matmul::GemmForm::Auto);
            prop_assert_eq!(bits(&y), bits(&want), "{:?}", form);
        }
    }

    #[test]
    fn weight_quantizers(
        (n, k, w) in (0usize..6, 1usize..80).prop_flat_map(|(n, k)| {
            (
                Just(n),
                Just(k),
                (prop::collection::vec(-1.0f32..=1.0, n * k), -3i32..=3)
                    .prop_map(|(v, e)| v.into_iter().map(|x| x * 10f32.powi(e)).collect::<Vec<f32>>()),
            )
        }),
        group in prop::sample::select(vec![None, Some(32usize), Some(64)]),
    ) {
        // int8: the per-row quantizer of the oracle
        let (q, s) = weights::quantize_weights_int8(&w, n, k).unwrap();
        let (oq, os) = oracle::per_row(&w, n, k, DynamicScaleMode::MaxAbs);
        prop_assert_eq!(&q, &if n * k == 0 { vec![0i8; 0] } else { oq });
        prop_assert_eq!(bits(&s), if n * k == 0 { vec![0; n] } else { bits(&os) });
        // int4: values in [-8, 7], and never worse than round-to-nearest with max|w| / 7
        let (packed, scales) = weights::quantize_weights_int4(&w, n, k, group).unwrap();
        let g = group.unwrap_or(k);
        let groups = k.div_ceil(g);
        prop_assert_eq!(scales.len(), n * groups);
        let v = weights::unpack_int4(&packed, k).unwrap();
        for r in 0..n {
            for gi in 0..groups {
                let cols = gi * g..((gi + 1) * g).min(k);
                let sc = scales[r * groups + gi];
                let err: f64 = cols.clone().map(|c| (w[r * k + c] as f64 - v[r * k + c] as f64 * sc as f64).powi(2)).sum();
                let amax = cols.clone().fold(0.0f32, |a, c| a.max(w[r * k + c].abs()));
                let s0 = amax / 7.0;
                let rtn: f64 = if s0 == 0.0 { cols.clone().map(|c| (w[r * k + c] as f64).powi(2)).sum() } else {
                    cols.map(|c| (w[r * k + c] as f64 - oracle::q(w[r * k + c], s0, 7.0) as f64 * s0 as f64).powi(2)).sum()
                };
                prop_assert!(err <= rtn * (1.0 + 1e-9) + 1e-30, "row {} group {}: {} > {}", r, gi, err, rtn);
            }
        }
    }
}

// ─── crafted cases ──────────────────────────────────────────────────────────

#[test]
fn ties_with_scale_one() {
    let x = [127.0f32, 0.5, -0.5, 1.5, -2.5, 0.49999997, -126.5, 126.5];
    let t = dynquant::dynamic_quantize_int8(&x, DynamicScaleMode::MaxAbs);
    assert_eq!(t.scales, vec![1.0]);
    assert_eq!(t.data, vec![127, 1, -1, 2, -3, 0, -127, 127]);
}

#[test]
fn percentile_index_in_f32() {
    assert_eq!(scale::percentile_index(0.999, 32999), 32965);
    assert_eq!(oracle::percentile_index(0.999, 32999), 32965);
    let n = 32999;
    let x: Vec<f32> = (1..=n).rev().map(|v| v as f32).collect();
    let s = dynquant::compute_scale(&x, 127.0, DynamicScaleMode::Percentile(0.999));
    assert_eq!(s, 32966.0 / 127.0);
    // n = 2^24 + 1 rounds to 2^24 in f32: Percentile(1.0) is not the max.
    let mut x = vec![1.0f32; (1 << 24) + 1];
    *x.last_mut().unwrap() = 5.0;
    let s = dynquant::compute_scale(&x, 127.0, DynamicScaleMode::Percentile(1.0));
    assert_eq!(s, 1.0 / 127.0);
}

#[test]
fn subnormal_scale_underflow() {
    let t = dynquant::dynamic_quantize_int8(
        &[f32::from_bits(63), -f32::from_bits(63)],
        DynamicScaleMode::MaxAbs,
    );
    assert_eq!((t.data, t.scales[0].to_bits()), (vec![0, 0], 0));
    let t = dynquant::dynamic_quantize_int8(
        &[f32::from_bits(64), f32::from_bits(5)],
        DynamicScaleMode::MaxAbs,
    );
    assert_eq!((t.data, t.scales[0].to_bits()), (vec![64, 5], 1));
}

#[test]
fn matvec_beyond_i32_and_acc_rounding() {
    let n = 140_001;
    let w = vec![-128i8; n];
    let a = vec![-1.0f32; n];
    let y = dynquant::w8a8_matvec(&w, &[1.0], &a, 1, n).unwrap();
    let acc = 128i64 * 127 * n as i64;
    assert!(acc > i32::MAX as i64);
    assert_eq!(
        y[0].to_bits(),
        ((acc as f32 * 1.0) * (1.0f32 / 127.0)).to_bits()
    );
    // acc = 127 * 127 * 1041 = 16790289 rounds to 16790288 as f32.
    let n = 1041;
    let y = dynquant::w8a8_matvec(&vec![127i8; n], &[1.0], &vec![1.0f32; n], 1, n).unwrap();
    assert_eq!(
        y[0].to_bits(),
        ((16790288.0f32 * 1.0) * (1.0f32 / 127.0)).to_bits()
    );
    assert_ne!(y[0], 132207.0);
}

#[test]
fn matvec_error_order() {
    let w = [1i8; 6];
    let s = [1.0f32; 2];
    assert_eq!(
        dynquant::w8a8_matvec(&w[..5], &s[..1], &[], 2, 3),
        Err(DynQuantError::EmptyInput)
    );
    assert_eq!(
        dynquant::w8a8_matvec(&w[..5], &s[..1], &[1.0; 2], 2, 3),
        Err(DynQuantError::ShapeMismatch {
            expected: 3,
            actual: 2
        })
    );
    assert_eq!(
        dynquant::w8a8_matvec(&w[..5], &s[..1], &[1.0; 3], 2, 3),
        Err(DynQuantError::ShapeMismatch {
            expected: 6,
            actual: 5
        })
    );
    assert_eq!(
        dynquant::w8a8_matvec(&w, &s[..1], &[1.0; 3], 2, 3),
        Err(DynQuantError::ShapeMismatch {
            expected: 2,
            actual: 1
        })
    );
    assert_eq!(dynquant::w8a8_matvec(&[], &[], &[1.0; 3], 0, 3), Ok(vec![]));
}

#[test]
fn smoothing_errors_feature_dim_first() {
    let mut a = vec![1.0f32; 5];
    assert_eq!(
        dynquant::smooth_activations(&mut a, &[1.0; 2], 2, 3),
        Err(DynQuantError::FeatureDimMismatch {
            in_features: 3,
            sf_len: 2
        })
    );
    assert_eq!(
        dynquant::smooth_weights(&mut a, &[1.0; 3], 2, 3),
        Err(DynQuantError::ShapeMismatch {
            expected: 6,
            actual: 5
        })
    );
    assert!(SmoothQuantConfig::try_new(1.5, 1e-5).is_err());
    assert!(SmoothQuantConfig::try_new(0.5, -1.0).is_err());
    assert_eq!(SmoothQuantConfig::new(1.5).alpha, 1.0); // the reference clamps
    assert_eq!(
        SmoothQuantConfig::default_alpha(),
        SmoothQuantConfig {
            alpha: 0.5,
            epsilon: 1e-5
        }
    );
}

#[test]
fn non_finite_policies() {
    let x = [1.0f32, f32::NAN, -2.0];
    let t = dynquant::dynamic_quantize_int8(&x, DynamicScaleMode::MaxAbs);
    assert_eq!(t.data, vec![64, 0, -127]);
    assert_eq!(t.scales[0].to_bits(), (2.0f32 / 127.0).to_bits());
    assert!(matches!(
        dynquant::try_dynamic_quantize_int8(&x, DynamicScaleMode::MaxAbs, NanPolicy::Raise),
        Err(DynQuantError::NonFinite { index: 1, .. })
    ));
    assert!(dynquant::try_dynamic_quantize_int8(
        &x,
        DynamicScaleMode::Percentile(0.5),
        NanPolicy::Reference
    )
    .is_err());
    let t = dynquant::dynamic_quantize_int8(&[1.0, f32::INFINITY], DynamicScaleMode::MaxAbs);
    assert_eq!((t.data, t.scales), (vec![0, 0], vec![f32::INFINITY]));
    let y = dynquant::w8a8_matvec(&[1, 1], &[1.0], &[f32::NEG_INFINITY, 1.0], 1, 2).unwrap();
    assert!(y[0].is_nan()); // (0 * 1) * inf
    assert!(DynamicScaleMode::Percentile(0.0).validate().is_err());
    assert!(matches!(
        CalibStats::try_collect(&[&[0.0], &[1.0, f32::INFINITY]], NanPolicy::Raise),
        Err(DynQuantError::NonFinite { index: 2, .. })
    ));
}

#[test]
fn tensor_edge_cases() {
    let empty = dynquant::dynamic_quantize_int8(&[], DynamicScaleMode::MaxAbs);
    assert_eq!((empty.memory_bytes(), empty.compression_ratio()), (4, 0.0));
    let none = dynquant::dynamic_quantize_int8_per_row(&[], 3, 0, DynamicScaleMode::MaxAbs);
    assert!(none.scales.is_empty());
    assert_eq!((none.memory_bytes(), none.compression_ratio()), (0, 1.0));
    let t = DynQuantTensor {
        data: vec![1, 2, 3, 4, 5],
        scales: vec![1.0, 2.0],
        shape: vec![2, 2],
        format: DynQuantFormat::Int8PerRow,
    };
    // cols = 5 / 2 = 2: the partial remainder is dropped, as the reference does.
    assert_eq!(
        t.dequantize(),
        oracle::dequantize(&t.data, &t.scales, t.format)
    );
    assert_eq!(t.dequantize(), vec![1.0, 2.0, 6.0, 8.0]);
}

#[test]
fn large_inputs_take_the_parallel_paths() {
    // Two threads whatever the machine or RAYON_NUM_THREADS says: with one,
    // every "parallel" path below would run serially.
    parallel::set_num_threads(2).unwrap();
    let n = 1_000_003;
    let mut state = 0x9e3779b97f4a7c15u64;
    let x: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                * if state & 3 == 0 { 100.0 } else { 1.0 }
        })
        .collect();
    for m in [DynamicScaleMode::MaxAbs, DynamicScaleMode::Percentile(0.99)] {
        let (q, s) = oracle::quantize(&x, 127.0, m);
        let t = dynquant::dynamic_quantize_int8(&x, m);
        assert_eq!(t.scales[0].to_bits(), s.to_bits());
        assert!(t.data == q);
    }
    let (rows, cols) = (1000, 1000);
    let (q, s) = oracle::per_row(&x[..rows * cols], rows, cols, DynamicScaleMode::MaxAbs);
    let t = dynquant::dynamic_quantize_int8_per_row(
        &x[..rows * cols],
        rows,
        cols,
        DynamicScaleMode::MaxAbs,
    );
    assert!(t.data == q && bits(&t.scales) == bits(&s));
    let batches = vec![x.clone()];
    let want = oracle::calib(&batches);
    let got = CalibStats::collect(&batches);
    assert_eq!(got.p99.to_bits(), want.p99.to_bits());
    assert_eq!((got.min, got.max), (want.min, want.max));
    let f = dynquant::compute_smooth_factors(
        &x[..rows * cols],
        &x[..500 * cols],
        cols,
        rows,
        500,
        &SmoothQuantConfig::default_alpha(),
    );
    let want = oracle::factors(
        &oracle::column_max(&x[..rows * cols], rows, cols),
        &oracle::column_max(&x[..500 * cols], 500, cols),
        0.5,
        1e-5,
    );
    assert_eq!(bits(&f), bits(&want));
}

#[test]
fn parallel_helpers() {
    let data: Vec<u32> = (0..300_000).collect();
    let sum = parallel::map_reduce(
        &data,
        1000,
        0u64,
        |c| c.iter().map(|&v| v as u64).sum(),
        |a, b| a + b,
    );
    assert_eq!(sum, 299_999 * 300_000 / 2);
    let mut out = vec![0u32; data.len()];
    parallel::zip_chunks(&data, 1, &mut out, 1, 777, |i, o| {
        for (o, i) in o.iter_mut().zip(i) {
            *o = i * 2;
        }
    });
    assert!(out.iter().enumerate().all(|(i, &v)| v == 2 * i as u32));
    parallel::chunks_mut(&mut out, 1, 1000, |c| c.iter_mut().for_each(|v| *v += 1));
    assert!(out.iter().enumerate().all(|(i, &v)| v == 2 * i as u32 + 1));
    assert!(parallel::num_threads() >= 1);
    assert!(parallel::set_num_threads(5000).is_err());
}

// ─── SIMD paths: one test, so the process-global path is not raced ─────────

#[test]
fn every_simd_path_gives_the_scalar_bits() {
    let _guard = ISA_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let paths = simd::supported();
    assert_eq!(paths[0], Isa::Scalar);
    assert!(paths.contains(&simd::best_supported()));
    assert!(Isa::parse("bogus").is_err());
    for isa in [Isa::Avx2, Isa::AvxVnni, Isa::Avx512Vnni, Isa::Neon] {
        assert_eq!(simd::set_isa(isa).is_ok(), paths.contains(&isa));
    }

    // One buffer; every slice is taken at offset 1..=3 so loads are unaligned.
    let mut state = 12345u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        state >> 33
    };
    let mut fbuf: Vec<f32> = (0..300)
        .map(|_| (next() % 2001) as f32 / 8.0 - 125.0)
        .collect();
    fbuf[17] = f32::NAN;
    fbuf[40] = -f32::INFINITY;
    fbuf[90] = f32::from_bits(3); // subnormal
    let wbuf: Vec<i8> = (0..300)
        .map(|i| if i % 7 == 0 { -128 } else { next() as u8 as i8 })
        .collect();
    let abuf: Vec<i8> = (0..300)
        .map(|_| ((next() % 255) as i16 - 127) as i8)
        .collect();
    let pbuf: Vec<u8> = (0..600).map(|_| next() as u8).collect();

    type Row = (
        Vec<i8>,
        Vec<i8>,
        u32,
        u32,
        i64,
        [[i64; 4]; 2],
        [[i64; 1]; 4],
        [[f32; 2]; 4],
        Vec<u32>,
    );
    let run = |isa: Isa| -> Vec<Row> {
        simd::set_isa(isa).unwrap();
        assert_eq!(simd::active(), isa);
        let mut rows = vec![];
        for len in 0..=257usize {
            for off in 1..=3usize {
                let x = &fbuf[off..off + len];
                let mut q8 = vec![0i8; len];
                simd::quantize(x, 125.0 / 127.0, 127.0, &mut q8);
                let mut q4 = vec![0i8; len];
                simd::quantize(x, 0.5, 7.0, &mut q4);
                let finite: Vec<f32> = x
                    .iter()
                    .map(|v| if v.is_finite() { *v } else { 0.0 })
                    .collect();
                let w = &wbuf[off..off + len];
                let a = &abuf[off..off + len];
                let a2 = &abuf[off + 1..off + 1 + len];
                let tile = simd::dot_tile(&[w, a2], &[a, a2, a, a2]);
                let tile1 = simd::dot_tile(&[w, a, a2, w], &[a]);
                // Dequantized W8A8 tiles (T = 4 and 3) against the oracle.
                let (ws, ts) = ([0.011f32, 3.7e-3], [0.5f32, 1.0 / 127.0, 2.5e-2, 9.0]);
                let mut w8 = Vec::new();
                for bias in [None, Some([1.5f32, -0.25])] {
                    let y4 = simd::w8a8_tile(&[w, a2], &[a, a2, a, a2], ws, ts, bias);
                    let y3 =
                        simd::w8a8_tile(&[a2, w], &[a2, a, a2], ws, [ts[3], ts[1], ts[0]], bias);
                    for (t, tok) in [a, a2, a, a2].iter().enumerate() {
                        for (r, row) in [w, a2].iter().enumerate() {
                            let v = (oracle::dot(row, tok) as f32 * ws[r]) * ts[t];
                            let v = bias.map_or(v, |b| v + b[r]);
                            assert_eq!(y4[t][r].to_bits(), v.to_bits(), "w8a8_tile len {len}");
                        }
                    }
                    w8.extend(y4.iter().chain(&y3).flatten().map(|v| v.to_bits()));
                }
                // W4A8 tile: 4 packed rows of `len` columns, one group per 32 columns.
                let k32 = len / 32 * 32;
                let rb = k32.div_ceil(2);
                let wp: [&[u8]; 4] =
                    core::array::from_fn(|r| &pbuf[off + r * 130..off + r * 130 + rb]);
                let groups = (k32 / 32).max(1);
                let sc: Vec<f32> = (0..4 * groups).map(|i| 0.01 + i as f32 * 0.003).collect();
                let ws: [&[f32]; 4] = core::array::from_fn(|r| &sc[r * groups..(r + 1) * groups]);
                let sums = [
                    simd::int4_group_sums(&a[..k32], 32),
                    simd::int4_group_sums(&a2[..k32], 32),
                ];
                let w4 = if k32 > 0 {
                    simd::w4a8_tile(
                        &wp,
                        &ws,
                        &[&a[..k32], &a2[..k32]],
                        &[&sums[0], &sums[1]],
                        32,
                    )
                } else {
                    [[0.0; 2]; 4]
                };
                rows.push((
                    q8,
                    q4,
                    simd::abs_max_bits(x),
                    simd::abs_max_bits(&finite),
                    simd::dot_i8(w, a),
                    tile,
                    tile1,
                    w4,
                    w8,
                ));
            }
        }
        rows
    };

    let scalar = run(Isa::Scalar);
    // the scalar path against the oracle
    for (i, row) in scalar.iter().enumerate() {
        let (len, off) = (i / 3, i % 3 + 1);
        let x = &fbuf[off..off + len];
        let want8: Vec<i8> = x
            .iter()
            .map(|&v| oracle::q(v, 125.0 / 127.0, 127.0))
            .collect();
        assert_eq!(row.0, want8, "quantize len {len}");
        let want_bits = x
            .iter()
            .map(|v| v.to_bits() & 0x7fff_ffff)
            .max()
            .unwrap_or(0);
        assert_eq!(row.2, want_bits);
        assert_eq!(
            row.4,
            oracle::dot(&wbuf[off..off + len], &abuf[off..off + len])
        );
    }
    for isa in paths.iter().copied().filter(|&p| p != Isa::Scalar) {
        let other = run(isa);
        for (i, (s, o)) in scalar.iter().zip(&other).enumerate() {
            let (len, off) = (i / 3, i % 3 + 1);
            assert_eq!(s.0, o.0, "{isa:?} quantize int8, len {len} off {off}");
            assert_eq!(s.1, o.1, "{isa:?} quantize int4, len {len} off {off}");
            assert_eq!(s.2, o.2, "{isa:?} abs_max_bits, len {len} off {off}");
            assert_eq!(s.3, o.3, "{isa:?} abs_max_bits finite, len {len} off {off}");
            assert_eq!(s.4, o.4, "{isa:?} dot_i8, len {len} off {off}");
            assert_eq!(s.5, o.5, "{isa:?} dot_tile<2,4>, len {len} off {off}");
            assert_eq!(s.6, o.6, "{isa:?} dot_tile<4,1>, len {len} off {off}");
            let sb: Vec<u32> = s.7.iter().flatten().map(|v| v.to_bits()).collect();
            let ob: Vec<u32> = o.7.iter().flatten().map(|v| v.to_bits()).collect();
            assert_eq!(sb, ob, "{isa:?} w4a8_tile, len {len} off {off}");
            assert_eq!(s.8, o.8, "{isa:?} w8a8_tile, len {len} off {off}");
        }
        // dot_i8 across the AVX2 block boundary (2^14 steps of 32): exact i64.
        simd::set_isa(isa).unwrap();
        let n = 2 * (1 << 19) + 45;
        let w = vec![-128i8; n];
        let a = vec![-127i8; n];
        assert_eq!(simd::dot_i8(&w[1..], &a[1..]), 128 * 127 * (n as i64 - 1));
        // whole functions through this path
        let x: Vec<f32> = (0..5000)
            .map(|i| ((i * 7919) % 2003) as f32 / 7.0 - 140.0)
            .collect();
        let (q, s) = oracle::quantize(&x[1..], 127.0, DynamicScaleMode::MaxAbs);
        let t = dynquant::dynamic_quantize_int8(&x[1..], DynamicScaleMode::MaxAbs);
        assert_eq!((t.data, t.scales[0].to_bits()), (q, s.to_bits()));
    }
    simd::set_isa(simd::best_supported()).unwrap();
}
