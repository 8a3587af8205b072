//! Tests of the observers: against `CalibStats::collect` and
//! `compute_smooth_factors`, the merge laws, the sketch's bound, the NaN
//! policy and the byte format.

use proptest::prelude::*;

use super::*;
use crate::scale::kth_smallest_abs_in;
use crate::smooth::compute_smooth_factors;

/// Deterministic pseudo-random f32s spanning many magnitudes.
fn lcg_values(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
            let scale = [1.0, 30.0, 1e-3, 0.0][(state >> 20) as usize % 4];
            u * scale
        })
        .collect()
}

fn observer(exact: bool) -> CalibObserver {
    CalibObserver::new(ObserverConfig {
        exact,
        ..ObserverConfig::default()
    })
    .unwrap()
}

fn observed(batches: &[Vec<f32>], config: ObserverConfig) -> CalibObserver {
    let mut o = CalibObserver::new(config).unwrap();
    for b in batches {
        o.update(b).unwrap();
    }
    o
}

fn exact_kth(batches: &[Vec<f32>], q: f32) -> f32 {
    let parts: Vec<&[f32]> = batches.iter().map(Vec::as_slice).collect();
    let n = parts.iter().map(|p| p.len()).sum();
    kth_smallest_abs_in(&parts, percentile_index(q, n))
}

/// Exact mode gives `CalibStats::collect`'s min, max, p99 and scale.
fn assert_matches_collect(batches: &[Vec<f32>], policy: NanPolicy) {
    let config = ObserverConfig {
        exact: true,
        policy,
        ..ObserverConfig::default()
    };
    let stats = observed(batches, config).stats();
    let parts: Vec<&[f32]> = batches.iter().map(Vec::as_slice).collect();
    let want = CalibStats::try_collect(&parts, policy).unwrap();
    // ±0 compare equal: the sign of a zero min/max is not defined by collect.
    assert_eq!((stats.min, stats.max), (want.min, want.max));
    assert_eq!(stats.p99.to_bits(), want.p99.to_bits());
    assert_eq!(
        stats.suggested_scale.to_bits(),
        want.suggested_scale.to_bits()
    );
    let close = |a: f32, b: f32| {
        (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-6 * b.abs().max(1e-30)
    };
    assert!(close(stats.mean, want.mean), "{stats:?} {want:?}");
    assert!(close(stats.std_dev, want.std_dev), "{stats:?} {want:?}");
}

#[test]
fn small_example_matches_collect() {
    let batches = vec![vec![1.0, 2.0, 3.0], vec![-1.0, 0.0, 4.0]];
    assert_matches_collect(&batches, NanPolicy::Raise);
    let s = observed(&batches, ObserverConfig::default()).stats();
    assert_eq!((s.min, s.max, s.p99), (-1.0, 4.0, 4.0));
    assert_eq!(s.mean, 1.5);
    assert_eq!(s.std_dev, (17.5f32 / 6.0).sqrt());
    assert_eq!(s.suggested_scale, 4.0 / 127.0);
}

#[test]
fn empty_and_zeros() {
    assert_eq!(observer(false).stats(), CalibStats::default());
    assert_eq!(observer(true).stats(), CalibStats::default());
    let mut o = observer(false);
    o.update(&[]).unwrap();
    assert_eq!(o.count(), 0);
    o.update(&[0.0, -0.0, 0.0]).unwrap();
    let s = o.stats();
    assert_eq!((s.p99, s.suggested_scale), (0.0, 1.0 / 127.0));
    assert_eq!((o.zero_count(), o.bucket_count()), (3, 0));
    assert_eq!(o.min().to_bits(), (-0.0f32).to_bits());
    assert_eq!(o.max().to_bits(), 0.0f32.to_bits());
    assert_eq!(o.quantile(1.0).unwrap(), 0.0);
    // p99 is zero but max|x| is not: the scale falls back to max|x|.
    let mut batch = vec![0.0f32; 200];
    batch[7] = -3.0;
    assert_matches_collect(std::slice::from_ref(&batch), NanPolicy::Raise);
    let s = observed(&[batch], ObserverConfig::default()).stats();
    assert_eq!((s.p99, s.suggested_scale), (0.0, 3.0 / 127.0));
}

#[test]
fn large_batches_match_collect_and_sequential_updates() {
    // Over 2 * GRAIN values, so the update runs in parallel chunks.
    let big = lcg_values(300_001, 1);
    let small: Vec<Vec<f32>> = big.chunks(1000).map(<[f32]>::to_vec).collect();
    let a = observed(std::slice::from_ref(&big), ObserverConfig::default());
    let b = observed(&small, ObserverConfig::default());
    assert_eq!(a.to_bytes(), b.to_bytes());
    assert_matches_collect(std::slice::from_ref(&big), NanPolicy::Raise);
    let want = exact_kth(&[big], 0.99);
    let got = a.stats().p99;
    assert!((got - want).abs() <= 0.005 * want, "{got} vs {want}");
}

#[test]
fn extreme_values() {
    let batch = vec![
        f32::MAX,
        -f32::MAX,
        f32::from_bits(1),
        -f32::MIN_POSITIVE,
        1e-40,
        0.0,
    ];
    assert_matches_collect(std::slice::from_ref(&batch), NanPolicy::Raise);
    let o = observed(&[batch], ObserverConfig::default());
    let sum = 2f64.powi(-149) - f32::MIN_POSITIVE as f64 + 1e-40f32 as f64;
    assert_eq!(o.mean(), sum / 6.0);
    assert!(o.std_dev().is_finite());
    assert_eq!(o.quantile(1.0).unwrap(), f32::MAX as f64);
    assert_eq!(o.quantile(0.2).unwrap(), f32::from_bits(1) as f64);
}

#[test]
fn mean_is_exact_where_sequential_f64_is_not() {
    let o = observed(&[vec![1e20, 1.0, -1e20]], ObserverConfig::default());
    assert_eq!(o.mean(), 1.0 / 3.0);
    let s: f64 = [1e20f32, 1.0, -1e20].iter().map(|&v| v as f64).sum();
    assert_eq!(s, 0.0, "the naive f64 sum loses the 1");
}

#[test]
fn nan_and_inf_follow_the_policy() {
    let mut o = observer(false);
    o.update(&[1.0, 2.0]).unwrap();
    let before = o.to_bytes();
    let err = o.update(&[3.0, f32::INFINITY, f32::NAN]).unwrap_err();
    assert!(matches!(err, DynQuantError::NonFinite { index: 1, .. }));
    assert_eq!(o.to_bytes(), before, "a rejected batch changes nothing");
    // NaN far into a large batch, found by a parallel chunk.
    let mut big = lcg_values(200_000, 3);
    big[150_000] = f32::NAN;
    assert!(matches!(
        o.update(&big),
        Err(DynQuantError::NonFinite { index: 150_000, .. })
    ));
    assert_eq!(o.to_bytes(), before);

    let reference = ObserverConfig {
        policy: NanPolicy::Reference,
        ..ObserverConfig::default()
    };
    let mut r = CalibObserver::new(reference).unwrap();
    assert!(matches!(
        r.update(&[f32::INFINITY, 1.0, f32::NAN]),
        Err(DynQuantError::NonFinite { index: 2, .. })
    ));
    let batches = vec![vec![1.0, f32::INFINITY, -2.0], vec![0.5; 300]];
    assert_matches_collect(&batches, NanPolicy::Reference);
    let batches = vec![vec![f32::NEG_INFINITY, 1.0, 0.0]];
    assert_matches_collect(&batches, NanPolicy::Reference);
    let mut inf = vec![1.0f32; 50];
    inf.extend([f32::INFINITY, f32::NEG_INFINITY]);
    assert_matches_collect(&[inf.clone()], NanPolicy::Reference);
    let r = observed(&[inf], reference);
    assert_eq!(r.quantile(1.0).unwrap(), f64::INFINITY);
    assert_eq!(r.stats().p99, f32::INFINITY);
    assert_eq!(r.quantile(0.5).unwrap(), 1.0);
    assert!(r.mean().is_nan() && r.std_dev().is_nan());
}

#[test]
fn settings_are_checked() {
    for alpha in [0.0, -1.0, 0.6, f64::NAN, 1e-6] {
        let c = ObserverConfig {
            relative_accuracy: alpha,
            ..ObserverConfig::default()
        };
        assert!(CalibObserver::new(c).is_err(), "{alpha}");
    }
    for max_buckets in [Some(0), Some(MAX_MAX_BUCKETS + 1)] {
        let c = ObserverConfig {
            max_buckets,
            ..ObserverConfig::default()
        };
        assert!(CalibObserver::new(c).is_err());
    }
    // The default bound keeps 64 octaves whatever the accuracy.
    assert_eq!(observer(false).max_buckets(), 64 * 70);
    let fine = CalibObserver::new(ObserverConfig {
        relative_accuracy: 0.001,
        ..ObserverConfig::default()
    })
    .unwrap();
    assert_eq!(fine.max_buckets(), 64 * fine.buckets_per_octave());
    assert_eq!(fine.config().max_buckets, Some(fine.max_buckets()));
    let mut a = observer(false);
    assert!(a.merge(&observer(true)).is_err());
    let coarse = CalibObserver::new(ObserverConfig {
        relative_accuracy: 0.01,
        ..ObserverConfig::default()
    })
    .unwrap();
    assert!(a.merge(&coarse).is_err());
    assert!(a.quantile(1.5).is_err() && a.quantile(f64::NAN).is_err());
}

#[test]
fn small_bound_collapses_lowest_buckets_only() {
    let config = ObserverConfig {
        max_buckets: Some(140), // two octaves at 70 buckets an octave
        ..ObserverConfig::default()
    };
    let values: Vec<f32> = (1..=10_000).map(|i| i as f32 * 1e-3).collect();
    let o = observed(std::slice::from_ref(&values), config);
    assert!(o.collapsed_count() > 0);
    assert!(o.bucket_count() <= 140);
    // High quantiles keep their accuracy; the lowest ones fold up.
    for q in [0.9f64, 0.99, 0.999] {
        let want = exact_kth(std::slice::from_ref(&values), q as f32) as f64;
        let got = o.quantile(q).unwrap();
        assert!((got - want).abs() <= 0.005 * want, "q {q}: {got} vs {want}");
    }
    let low = o.quantile(0.01).unwrap();
    assert!(low > exact_kth(&[values], 0.01) as f64 * 1.01);
    // Collapsing depends only on the data: splitting it changes nothing.
    let parts: Vec<Vec<f32>> = (1..=10_000).rev().map(|i| vec![i as f32 * 1e-3]).collect();
    assert_eq!(observed(&parts, config).to_bytes(), o.to_bytes());
}

#[test]
fn histogram_covers_the_values() {
    let values = lcg_values(5000, 9);
    let o = observed(std::slice::from_ref(&values), ObserverConfig::default());
    let h = o.histogram();
    let total: u64 = h.iter().map(|b| b.2).sum();
    assert_eq!(total + o.zero_count(), 5000);
    for v in values.iter().filter(|v| **v != 0.0) {
        let x = v.abs() as f64;
        assert!(h
            .iter()
            .any(|&(lo, hi, _)| x > lo * (1.0 - 1e-12) && x <= hi * (1.0 + 1e-12)));
    }
}

#[test]
fn bytes_round_trip_and_reject_garbage() {
    for exact in [false, true] {
        let o = observed(
            &[lcg_values(3000, 4)],
            ObserverConfig {
                exact,
                ..ObserverConfig::default()
            },
        );
        let bytes = o.to_bytes();
        let back = CalibObserver::from_bytes(&bytes).unwrap();
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.stats(), o.stats());
        for cut in 0..bytes.len() {
            assert!(
                CalibObserver::from_bytes(&bytes[..cut]).is_err(),
                "cut {cut}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(CalibObserver::from_bytes(&longer).is_err());
        // Flipping any bit gives an error or a decodable state, never a panic.
        for i in 0..bytes.len().min(400) {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                if let Ok(o) = CalibObserver::from_bytes(&b) {
                    let _ = (o.stats(), o.quantile(0.5), o.histogram());
                }
            }
        }
    }
    assert!(CalibObserver::from_bytes(b"").is_err());
    assert!(CalibObserver::from_bytes(b"DQCM\x01").is_err());
    let empty = observer(false).to_bytes();
    assert!(empty.len() < 100, "{} bytes", empty.len());
    assert_eq!(CalibObserver::from_bytes(&empty).unwrap().count(), 0);
}

#[test]
fn channel_max_matches_compute_smooth_factors() {
    let (tokens, in_features, out_features) = (37, 11, 5);
    let a = lcg_values(tokens * in_features, 5);
    let w = lcg_values(out_features * in_features, 6);
    let config = SmoothQuantConfig::default_alpha();
    let want = compute_smooth_factors(&a, &w, in_features, tokens, out_features, &config);
    let mut o = ChannelMaxObserver::new(None, NanPolicy::Raise);
    for rows in a.chunks(7 * in_features) {
        o.update(rows, rows.len() / in_features, in_features)
            .unwrap();
    }
    assert_eq!(o.tokens(), tokens as u64);
    let got = o.smooth_factors(&w, out_features, &config).unwrap();
    assert_eq!(
        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
    // Merged halves, and the byte form, agree.
    let (top, bottom) = a.split_at(20 * in_features);
    let mut x = ChannelMaxObserver::new(Some(in_features), NanPolicy::Raise);
    x.update(top, 20, in_features).unwrap();
    let mut y = ChannelMaxObserver::new(None, NanPolicy::Raise);
    y.update(bottom, tokens - 20, in_features).unwrap();
    let y = ChannelMaxObserver::from_bytes(&y.to_bytes()).unwrap();
    x.merge(&y).unwrap();
    assert_eq!(x, o);
    for cut in 0..o.to_bytes().len() {
        assert!(ChannelMaxObserver::from_bytes(&o.to_bytes()[..cut]).is_err());
    }
}

/// Bytes for a state no observer reaches: tokens counted, no channels.
#[test]
fn channel_max_bytes_with_tokens_but_no_channels_are_refused() {
    let empty = ChannelMaxObserver::new(None, NanPolicy::Raise);
    let mut bytes = empty.to_bytes();
    assert_eq!(ChannelMaxObserver::from_bytes(&bytes).unwrap(), empty);
    let tokens_at = bytes.len() - 8; // the last field: tokens, u64
    bytes[tokens_at] = 5;
    let err = ChannelMaxObserver::from_bytes(&bytes).unwrap_err();
    assert!(
        err.to_string().contains("5 tokens without in_features"),
        "{err}"
    );
    // An observer that saw an empty batch has channels: its bytes decode.
    let mut seen = ChannelMaxObserver::new(None, NanPolicy::Raise);
    seen.update(&[], 0, 3).unwrap();
    assert_eq!(
        ChannelMaxObserver::from_bytes(&seen.to_bytes()).unwrap(),
        seen
    );
}

#[test]
fn channel_max_errors() {
    let mut o = ChannelMaxObserver::new(Some(3), NanPolicy::Raise);
    let err = o.update(&[1.0; 4], 2, 2).unwrap_err();
    assert_eq!(
        err,
        DynQuantError::FeatureWidthMismatch {
            argument: "data",
            in_features: 3,
            actual: 2
        }
    );
    assert_eq!(
        err.to_string(),
        "dimension mismatch: in_features 3, data has width 2"
    );
    let mut wide = ChannelMaxObserver::new(Some(4), NanPolicy::Raise);
    wide.update(&[1.0; 4], 1, 4).unwrap();
    assert_eq!(
        o.clone().merge(&wide),
        Err(DynQuantError::FeatureWidthMismatch {
            argument: "the merged observer",
            in_features: 3,
            actual: 4
        })
    );
    assert!(matches!(
        o.update(&[1.0; 5], 2, 3),
        Err(DynQuantError::ShapeMismatch {
            expected: 6,
            actual: 5
        })
    ));
    assert!(matches!(
        o.update(&[1.0, f32::NAN, 2.0], 1, 3),
        Err(DynQuantError::NonFinite { index: 1, .. })
    ));
    // An infinity alone is refused too (its factor would be inf).
    for inf in [f32::INFINITY, f32::NEG_INFINITY] {
        assert_eq!(
            o.update(&[1.0, 2.0, 3.0, 4.0, inf, 6.0], 2, 3),
            Err(DynQuantError::NonFinite {
                index: 4,
                value: inf
            })
        );
    }
    assert_eq!(o.tokens(), 0);
    assert!(o
        .smooth_factors(&[1.0; 4], 2, &SmoothQuantConfig::default_alpha())
        .is_err());
    assert!(ChannelMaxObserver::new(None, NanPolicy::Raise)
        .smooth_factors(&[], 0, &SmoothQuantConfig::default_alpha())
        .is_err());
    // Weights too many to count, and configs try_new refuses (public
    // fields): errors, not a saturated size or epsilon factors.
    assert!(matches!(
        o.smooth_factors(&[1.0; 3], usize::MAX, &SmoothQuantConfig::default_alpha()),
        Err(DynQuantError::InvalidArgument(m)) if m.contains("overflow")
    ));
    for (alpha, epsilon) in [(f32::NAN, 1e-5), (1.5, 1e-5), (0.5, -1.0), (0.5, f32::NAN)] {
        let err = o
            .smooth_factors(&[1.0; 3], 1, &SmoothQuantConfig { alpha, epsilon })
            .unwrap_err();
        assert!(
            matches!(
                err,
                DynQuantError::InvalidAlpha(_) | DynQuantError::InvalidEpsilon(_)
            ),
            "{alpha} {epsilon}: {err}"
        );
    }
    // Under the reference policy NaN is skipped, as compute_smooth_factors does.
    let mut r = ChannelMaxObserver::new(None, NanPolicy::Reference);
    r.update(&[1.0, f32::NAN, -f32::INFINITY, 2.0], 2, 2)
        .unwrap();
    assert_eq!(r.act_max(), vec![f32::INFINITY, 2.0]);
    assert!(o.merge(&r).is_err());
}

/// A batch of f32s from a few regimes: normal-ish, wide, tiny, with zeros.
fn batch() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![
            4 => -100.0f32..100.0,
            1 => (-40i32..40, -1.0f32..1.0).prop_map(|(e, m)| m * 2f32.powi(e)),
            1 => Just(0.0f32),
            1 => any::<f32>().prop_filter("finite", |v| v.is_finite()),
        ],
        0..300,
    )
}

/// Whether |x| = `v` is in a bucket the `max_buckets` bound kept.
fn kept(o: &CalibObserver, v: f32) -> bool {
    let store = &o.summary.store;
    v == 0.0 || store.is_empty() || o.map.index(v.to_bits()) > store.top() - o.max_buckets as i32
}

/// Merges observers of `batches` along a tree given by `splits`.
fn tree_merge(obs: &[CalibObserver], splits: &[usize]) -> CalibObserver {
    if obs.len() == 1 {
        return obs[0].clone();
    }
    let cut = 1 + splits.first().copied().unwrap_or(0) % (obs.len() - 1);
    let rest = splits.get(1..).unwrap_or(&[]);
    let mut left = tree_merge(&obs[..cut], rest);
    let right = tree_merge(&obs[cut..], rest);
    if splits.first().copied().unwrap_or(0) % 2 == 0 {
        left.merge(&right).unwrap();
        left
    } else {
        let mut right = right;
        right.merge(&left).unwrap();
        right
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn merge_laws_hold_exactly(
        batches in prop::collection::vec(batch(), 1..8),
        splits in prop::collection::vec(0usize..100, 0..8),
        max_buckets in prop_oneof![Just(None), (20u32..300).prop_map(Some)],
    ) {
        let config = ObserverConfig { max_buckets, ..ObserverConfig::default() };
        let sequential = observed(&batches, config);
        let each: Vec<CalibObserver> =
            batches.iter().map(|b| observed(std::slice::from_ref(b), config)).collect();
        let tree = tree_merge(&each, &splits);
        prop_assert_eq!(tree.to_bytes(), sequential.to_bytes());
        let mut reversed = each.clone();
        reversed.reverse();
        prop_assert_eq!(tree_merge(&reversed, &splits).to_bytes(), sequential.to_bytes());
        // The empty observer is the identity.
        let mut with_empty = CalibObserver::new(config).unwrap();
        with_empty.merge(&sequential).unwrap();
        prop_assert_eq!(with_empty.to_bytes(), sequential.to_bytes());
        let all: Vec<f32> = batches.concat();
        prop_assert_eq!(observed(&[all], config).to_bytes(), sequential.to_bytes());
    }

    #[test]
    fn exact_mode_equals_collect(batches in prop::collection::vec(batch(), 0..6)) {
        assert_matches_collect(&batches, NanPolicy::Raise);
    }

    #[test]
    fn sketch_is_within_its_bound(
        batches in prop::collection::vec(batch(), 1..5),
        alpha in prop_oneof![Just(0.005f64), 1e-4f64..0.3],
        qs in prop::collection::vec(0.0f64..=1.0, 1..6),
    ) {
        let config = ObserverConfig { relative_accuracy: alpha, ..ObserverConfig::default() };
        let o = observed(&batches, config);
        let parts: Vec<&[f32]> = batches.iter().map(Vec::as_slice).collect();
        let n: usize = parts.iter().map(|p| p.len()).sum();
        prop_assume!(n > 0);
        for q in qs.into_iter().chain([0.99, 1.0, 0.0]) {
            let want = kth_smallest_abs_in(&parts, percentile_index(q as f32, n));
            let got = o.quantile(q).unwrap();
            if kept(&o, want) {
                let want = want as f64;
                prop_assert!((got - want).abs() <= alpha * want, "q {} {} vs {}", q, got, want);
            }
        }
        let want = kth_smallest_abs_in(&parts, percentile_index(0.99, n));
        if kept(&o, want) {
            let (p99, want) = (o.stats().p99 as f64, want as f64);
            prop_assert!((p99 - want).abs() <= alpha * want);
        }
    }

    #[test]
    fn mean_and_std_are_order_independent_and_accurate(batches in prop::collection::vec(batch(), 1..5)) {
        let config = ObserverConfig::default();
        let a = observed(&batches, config);
        let mut rev = batches.clone();
        rev.reverse();
        let b = observed(&rev, config);
        prop_assert_eq!(a.mean().to_bits(), b.mean().to_bits());
        prop_assert_eq!(a.std_dev().to_bits(), b.std_dev().to_bits());
        let all: Vec<f64> = batches.concat().iter().map(|&v| v as f64).collect();
        prop_assume!(!all.is_empty());
        let n = all.len() as f64;
        let mean = all.iter().sum::<f64>() / n;
        let var = all.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let scale = all.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        prop_assert!((a.mean() - mean).abs() <= 1e-12 * scale);
        prop_assert!((a.std_dev() - var.sqrt()).abs() <= 1e-6 * scale);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = CalibObserver::from_bytes(&bytes);
        let _ = ChannelMaxObserver::from_bytes(&bytes);
        let mut b = CALIB_MAGIC.to_vec();
        b.push(VERSION);
        b.extend(&bytes);
        let _ = CalibObserver::from_bytes(&b);
    }

    #[test]
    fn channel_max_merge_matches_one_shot(
        rows in prop::collection::vec(prop::collection::vec(-50.0f32..50.0, 4), 1..40),
        cut in 0usize..40,
    ) {
        let cut = cut % rows.len();
        let flat: Vec<f32> = rows.concat();
        let w = lcg_values(12, 2);
        let cfg = SmoothQuantConfig::default_alpha();
        let want = compute_smooth_factors(&flat, &w, 4, rows.len(), 3, &cfg);
        let mut a = ChannelMaxObserver::new(None, NanPolicy::Raise);
        a.update(&flat[..cut * 4], cut, 4).unwrap();
        let mut b = ChannelMaxObserver::new(None, NanPolicy::Raise);
        b.update(&flat[cut * 4..], rows.len() - cut, 4).unwrap();
        b.merge(&a).unwrap();
        let got = b.smooth_factors(&w, 3, &cfg).unwrap();
        prop_assert_eq!(
            got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}

/// The token count cannot wrap: an overflowing update or merge is an error
/// and leaves the observer as it was.
#[test]
fn channel_max_token_count_does_not_wrap() {
    let mut o = ChannelMaxObserver::new(Some(0), NanPolicy::Raise);
    o.update(&[], usize::MAX, 0).unwrap();
    let before = o.clone();
    let mut one = ChannelMaxObserver::new(Some(0), NanPolicy::Raise);
    one.update(&[], 1, 0).unwrap();
    if usize::BITS == 64 {
        assert!(o.update(&[], 1, 0).is_err());
        assert!(o.merge(&one).is_err());
        assert!(o.merge(&o.clone()).is_err());
    }
    assert_eq!(o, before);
}
