//! Fuzzing on stable Rust (`cargo fuzz` needs nightly): proptest drives every
//! public function of the crate — the reference names, the `try_` and `_into`
//! forms, the helpers and the raw SIMD kernels — with random shapes, lengths
//! that do and do not multiply out, unaligned offsets and raw f32 bit
//! patterns (NaN payloads, ±Inf, -0.0, subnormals, f32::MAX). For each input,
//! every supported kernel path must give the scalar path's bits (or the same
//! error), and nothing may panic except where the API documents a panic.
//! Correctness against an oracle is `proptest_reference.rs`'s job; this file
//! is about surviving hostile input.
//!
//! Cases: `DYNQUANT_FUZZ_CASES` (or `PROPTEST_CASES`), default 1024 small
//! inputs (a few seconds in release mode on two cores) and 1/32 as many
//! large ones (parallel paths). Run longer by hand with e.g.
//! `DYNQUANT_FUZZ_CASES=100000 cargo test --release --test fuzz_kernels -- --nocapture`.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once};

use dynquant::simd::{self, scalar, Isa};
use dynquant::{
    calib::CalibStats, parallel, quantize, scale, smooth, tensor, weights, ActQuant, DynQuantError,
    DynQuantFormat, DynQuantTensor, DynamicScaleMode, Int4Layout, NanPolicy, SmoothQuantConfig,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Serialises the tests that switch the process-global kernel path.
static ISA_LOCK: Mutex<()> = Mutex::new(());
/// Calls made by `fuzz_every_public_function_on_every_path`, by outcome:
/// a result, an error, a documented panic.
static OUTCOMES: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];

thread_local! {
    /// Set while a call that may panic (as documented) runs: its panic
    /// message is not printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
}

fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                default(info);
            }
        }));
    });
}

fn cases(default: u32) -> u32 {
    ["DYNQUANT_FUZZ_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.parse().ok())
        .unwrap_or(default)
}

fn runner(default: u32) -> TestRunner {
    install_quiet_hook();
    TestRunner::new(Config {
        cases: cases(default),
        failure_persistence: None,
        ..Config::default()
    })
}

// ─── outcomes ───────────────────────────────────────────────────────────────

/// What one call did, comparable across kernel paths bit for bit.
#[derive(Debug, Clone, PartialEq)]
enum Out {
    Ok(Vec<u64>),
    Err(String),
    Panic(String),
}

impl Out {
    fn is_panic(&self) -> bool {
        matches!(self, Out::Panic(_))
    }
}

/// Bits of floats, with every NaN as one value: Rust leaves the sign and
/// payload of a NaN produced by arithmetic unspecified (LLVM may swap the
/// operands of `a + b`), so only NaN-ness is compared.
fn f32s(v: &[f32]) -> Vec<u64> {
    v.iter()
        .map(|x| {
            if x.is_nan() {
                u64::MAX - 1
            } else {
                x.to_bits() as u64
            }
        })
        .collect()
}

fn i8s(v: &[i8]) -> Vec<u64> {
    v.iter().map(|&x| x as u8 as u64).collect()
}

fn tensor_bits(t: &DynQuantTensor) -> Vec<u64> {
    let mut v = i8s(&t.data);
    v.push(u64::MAX);
    v.extend(f32s(&t.scales));
    v.push(u64::MAX);
    v.extend(t.shape.iter().map(|&d| d as u64));
    v.push(t.format as u64);
    v
}

fn err(e: DynQuantError) -> Out {
    Out::Err(format!("{e:?}"))
}

fn run(f: impl FnOnce() -> Result<Vec<u64>, DynQuantError>) -> Out {
    QUIET.with(|q| q.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    match r {
        Ok(Ok(v)) => Out::Ok(v),
        Ok(Err(e)) => err(e),
        Err(p) => Out::Panic(
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default(),
        ),
    }
}

/// The outcomes of one input under the active path, by function name, and
/// whether each may panic for this input.
type Outcomes = Vec<(&'static str, Out, bool)>;

// ─── inputs ─────────────────────────────────────────────────────────────────

const SPECIALS: [f32; 18] = [
    0.0,
    -0.0,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    f32::MAX,
    f32::MIN,
    f32::MIN_POSITIVE,
    f32::EPSILON,
    0.5,
    -0.5,
    1.5,
    -2.5,
    126.5,
    127.0,
    -127.49999,
    1e-45,
    -3e-39,
];

/// Any f32 at all, weighted towards the interesting ones.
fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -1000.0f32..1000.0,
        2 => any::<u32>().prop_map(f32::from_bits),
        1 => (any::<bool>(), 0u32..0x0080_0000)
            .prop_map(|(neg, b)| f32::from_bits(b | if neg { 1 << 31 } else { 0 })),
        1 => prop::sample::select(&SPECIALS[..]),
        1 => any::<u32>().prop_map(|b| f32::from_bits(0x7f80_0001 | b)), // NaN payloads
    ]
}

fn mode() -> impl Strategy<Value = DynamicScaleMode> {
    prop_oneof![
        2 => Just(DynamicScaleMode::MaxAbs),
        2 => (0.0f32..=1.0).prop_map(DynamicScaleMode::Percentile),
        1 => value().prop_map(DynamicScaleMode::Percentile), // NaN, <0, >1, ...
    ]
}

fn policy() -> impl Strategy<Value = NanPolicy> {
    prop_oneof![Just(NanPolicy::Raise), Just(NanPolicy::Reference)]
}

/// A length near `exact`: usually exact, sometimes off by a little or a lot.
fn perturb(exact: usize, which: u8, delta: i16, me: u8) -> usize {
    if which != me {
        return exact;
    }
    (exact as i64 + delta as i64).max(0) as usize
}

#[derive(Debug, Clone)]
struct Case {
    fbuf: Vec<f32>,
    wbuf: Vec<i8>,
    pbuf: Vec<u8>,
    off: usize,
    len: usize,
    m: usize,
    n: usize,
    k: usize,
    mode: DynamicScaleMode,
    policy: NanPolicy,
    /// Which length to get wrong (0 = none) and by how much.
    which: u8,
    delta: i16,
    clean: bool,
    per_token: bool,
    bias: bool,
    group: usize,
    alpha: f32,
    epsilon: f32,
    scale: f32,
    clip: f32,
    p: f32,
}

const FBUF: usize = 1600;

fn case() -> impl Strategy<Value = Case> {
    let dims = (
        0usize..=8,
        0usize..=300,
        0usize..6,
        0usize..8,
        prop_oneof![3 => 0usize..70, 1 => prop::sample::select(vec![32usize, 64, 96, 128])],
    );
    let knobs = (mode(), policy(), 0u8..8, -40i16..=40, any::<bool>());
    let more = (
        any::<bool>(),
        any::<bool>(),
        prop_oneof![
            prop::sample::select(vec![0usize, 1, 2, 3, 7, 8, 32, 64, 1000]),
            1usize..130
        ],
        prop_oneof![0.0f32..=1.0, value()],
        prop_oneof![0.0f32..1.0, value()],
        value(),
        prop_oneof![Just(127.0f32), Just(7.0f32), 0.0f32..=127.0],
        prop_oneof![0.0f32..=1.0, value()],
    );
    let bufs = (
        prop::collection::vec(value(), FBUF),
        prop::collection::vec(any::<i8>(), FBUF),
        prop::collection::vec(any::<u8>(), FBUF),
    );
    (dims, knobs, more, bufs).prop_map(
        |(
            (off, len, m, n, k),
            (mode, policy, which, delta, clean),
            (per_token, bias, group, alpha, epsilon, scale, clip, p),
            (mut fbuf, wbuf, pbuf),
        )| {
            if clean {
                for v in &mut fbuf {
                    if !v.is_finite() {
                        *v = 1.0 / 3.0;
                    }
                }
            }
            Case {
                fbuf,
                wbuf,
                pbuf,
                off,
                len,
                m,
                n,
                k,
                mode,
                policy,
                which,
                delta,
                clean,
                per_token,
                bias,
                group,
                alpha,
                epsilon,
                scale,
                clip,
                p,
            }
        },
    )
}

impl Case {
    fn x(&self) -> &[f32] {
        &self.fbuf[self.off..self.off + self.len]
    }

    fn floats(&self, start: usize, len: usize) -> &[f32] {
        let start = (self.off + start).min(FBUF);
        &self.fbuf[start..(start + len).min(FBUF)]
    }

    fn has_nan(&self, x: &[f32]) -> bool {
        x.iter().any(|v| v.is_nan())
    }

    fn is_percentile(&self) -> bool {
        matches!(self.mode, DynamicScaleMode::Percentile(_))
    }
}

// ─── every public function on one input ────────────────────────────────────

fn all_functions(c: &Case) -> Outcomes {
    let mut o: Outcomes = Vec::new();
    let x = c.x();
    let (mode, policy) = (c.mode, c.policy);
    let pct_nan = c.is_percentile() && c.has_nan(x);

    // scale
    o.push((
        "compute_scale",
        run(|| Ok(f32s(&[scale::compute_scale(x, 127.0, mode)]))),
        pct_nan,
    ));
    for clip in [127.0, 7.0, c.clip, c.scale] {
        o.push((
            "try_compute_scale",
            run(|| scale::try_compute_scale(x, clip, mode, policy).map(|s| f32s(&[s]))),
            false,
        ));
    }
    o.push(("validate", run(|| mode.validate().map(|_| vec![])), false));
    o.push((
        "percentile_index",
        run(|| Ok(vec![scale::percentile_index(c.p, x.len()) as u64])),
        false,
    ));
    if !x.is_empty() && !c.has_nan(x) {
        let k = scale::percentile_index(c.p, x.len());
        o.push((
            "percentile_of_abs",
            run(|| Ok(f32s(&[scale::percentile_of_abs(x, c.p)]))),
            false,
        ));
        o.push((
            "kth_smallest_abs",
            run(|| Ok(f32s(&[scale::kth_smallest_abs(x, k)]))),
            false,
        ));
        let (a, b) = x.split_at(x.len() / 3);
        o.push((
            "kth_smallest_abs_in",
            run(|| Ok(f32s(&[scale::kth_smallest_abs_in(&[a, &[], b], k)]))),
            false,
        ));
    }

    // quantizers, reference and try_
    o.push((
        "dynamic_quantize_int8",
        run(|| Ok(tensor_bits(&dynquant::dynamic_quantize_int8(x, mode)))),
        pct_nan,
    ));
    o.push((
        "dynamic_quantize_int4",
        run(|| Ok(tensor_bits(&dynquant::dynamic_quantize_int4(x, mode)))),
        pct_nan,
    ));
    o.push((
        "try_dynamic_quantize_int8",
        run(|| dynquant::try_dynamic_quantize_int8(x, mode, policy).map(|t| tensor_bits(&t))),
        false,
    ));
    o.push((
        "try_dynamic_quantize_int4",
        run(|| dynquant::try_dynamic_quantize_int4(x, mode, policy).map(|t| tensor_bits(&t))),
        false,
    ));
    let (rows, cols) = (c.m, c.k);
    let rc = perturb(rows * cols, c.which, c.delta, 1).min(FBUF - c.off);
    let d = c.floats(0, rc);
    // The reference per-row function reads rows * cols values at most.
    let used = &d[..d.len().min(rows * cols)];
    o.push((
        "dynamic_quantize_int8_per_row",
        run(|| {
            Ok(tensor_bits(&dynquant::dynamic_quantize_int8_per_row(
                d, rows, cols, mode,
            )))
        }),
        c.is_percentile() && c.has_nan(used),
    ));
    o.push((
        "try_dynamic_quantize_int8_per_row",
        run(|| {
            dynquant::try_dynamic_quantize_int8_per_row(d, rows, cols, mode, policy)
                .map(|t| tensor_bits(&t))
        }),
        false,
    ));
    o.push((
        "quantize_per_tensor_into",
        run(|| {
            let mut q = vec![0i8; perturb(x.len(), c.which, c.delta, 2)];
            quantize::quantize_per_tensor_into(x, c.clip, mode, policy, &mut q).map(|s| {
                let mut v = i8s(&q);
                v.extend(f32s(&[s]));
                v
            })
        }),
        false,
    ));
    o.push((
        "quantize_per_row_into",
        run(|| {
            let mut q = vec![0i8; perturb(d.len(), c.which, c.delta, 3)];
            let mut s = vec![0f32; perturb(rows, c.which, c.delta, 4)];
            quantize::quantize_per_row_into(d, cols, mode, policy, &mut q, &mut s).map(|()| {
                let mut v = i8s(&q);
                v.extend(f32s(&s));
                v
            })
        }),
        false,
    ));

    // tensors, including inconsistent hand-built ones
    let formats = [
        DynQuantFormat::Int8PerTensor,
        DynQuantFormat::Int8PerRow,
        DynQuantFormat::Int4PerTensor,
    ];
    for format in formats {
        let data = &c.wbuf[..perturb(rows * cols, c.which, c.delta, 5).min(FBUF)];
        let scales = c.floats(7, perturb(rows, c.which, c.delta, 6)).to_vec();
        let t = DynQuantTensor {
            data: data.to_vec(),
            scales,
            shape: vec![rows, cols],
            format,
        };
        o.push((
            "tensor methods",
            run(|| {
                let deq = t.dequantize();
                let mut into = vec![0f32; t.dequantized_len()];
                t.dequantize_into(&mut into);
                assert_eq!(f32s(&deq), f32s(&into));
                let mut v = f32s(&deq);
                v.push(t.memory_bytes() as u64);
                v.extend(f32s(&[t.compression_ratio()]));
                v.push(t.element_count() as u64);
                v.extend(f32s(&[dynquant::quantization_mae(x, &t)]));
                v.extend(f32s(&[tensor::mae_of_parts(x, &t.data, &t.scales, format)]));
                v.push(tensor::dequantized_len(&t.data, &t.scales, format) as u64);
                Ok(v)
            }),
            false,
        ));
    }

    // SmoothQuant
    let (tokens, inf, outf) = (c.m, c.k, c.n);
    let a = c.floats(0, perturb(tokens * inf, c.which, c.delta, 1));
    let w = c.floats(400, perturb(outf * inf, c.which, c.delta, 2));
    let f = c.floats(900, perturb(inf, c.which, c.delta, 3));
    let cfg = SmoothQuantConfig::new(c.alpha);
    let cfg2 = SmoothQuantConfig {
        alpha: c.alpha,
        epsilon: c.epsilon,
    };
    o.push((
        "SmoothQuantConfig::try_new",
        run(|| SmoothQuantConfig::try_new(c.alpha, c.epsilon).map(|s| f32s(&[s.alpha, s.epsilon]))),
        false,
    ));
    for cfg in [&cfg, &cfg2, &SmoothQuantConfig::default_alpha()] {
        o.push((
            "compute_smooth_factors",
            run(|| {
                Ok(f32s(&smooth::compute_smooth_factors(
                    a, w, inf, tokens, outf, cfg,
                )))
            }),
            false,
        ));
    }
    o.push((
        "column_abs_max + factors_from_maxima",
        run(|| {
            let am = smooth::column_abs_max(a, inf);
            let wm = smooth::column_abs_max(w, inf);
            Ok(f32s(&smooth::smooth_factors_from_maxima(&am, &wm, &cfg2)))
        }),
        false,
    ));
    o.push((
        "smooth_activations",
        run(|| {
            let mut v = a.to_vec();
            smooth::smooth_activations(&mut v, f, tokens, inf).map(|()| f32s(&v))
        }),
        false,
    ));
    o.push((
        "smooth_weights",
        run(|| {
            let mut v = w.to_vec();
            smooth::smooth_weights(&mut v, f, outf, inf).map(|()| f32s(&v))
        }),
        false,
    ));
    o.push((
        "smooth_activations_into",
        run(|| {
            let mut dst = vec![0f32; perturb(a.len(), c.which, c.delta, 4)];
            smooth::smooth_activations_into(a, f, tokens, inf, &mut dst).map(|()| f32s(&dst))
        }),
        false,
    ));
    o.push((
        "smooth_weights_into",
        run(|| {
            let mut dst = vec![0f32; perturb(w.len(), c.which, c.delta, 5)];
            smooth::smooth_weights_into(w, f, outf, inf, &mut dst).map(|()| f32s(&dst))
        }),
        false,
    ));

    // W8A8
    let (m, n, k) = (c.m, c.n, c.k);
    let wl = perturb(n * k, c.which, c.delta, 1).min(FBUF);
    let wi8 = &c.wbuf[..wl];
    let ws = c.floats(1000, perturb(n, c.which, c.delta, 2));
    let act = c.floats(0, perturb(k, c.which, c.delta, 3));
    o.push((
        "w8a8_matvec",
        run(|| dynquant::w8a8_matvec(wi8, ws, act, n, k).map(|y| f32s(&y))),
        false,
    ));
    o.push((
        "try_w8a8_matvec",
        run(|| dynquant::try_w8a8_matvec(wi8, ws, act, n, k, policy).map(|y| f32s(&y))),
        false,
    ));
    o.push((
        "w8a8_matvec_into",
        run(|| {
            let mut y = vec![0f32; perturb(n, c.which, c.delta, 4)];
            dynquant::w8a8_matvec_into(wi8, ws, act, k, policy, &mut y).map(|()| f32s(&y))
        }),
        false,
    ));
    let aq = ActQuant {
        per_token: c.per_token,
        mode,
        policy,
    };
    let xm = c.floats(0, perturb(m * k, c.which, c.delta, 5));
    let bias = c.floats(1100, perturb(n, c.which, c.delta, 6));
    o.push((
        "w8a8_matmul_into",
        run(|| {
            let mut y = vec![0f32; perturb(m * n, c.which, c.delta, 7)];
            dynquant::w8a8_matmul_into(xm, m, wi8, ws, c.bias.then_some(bias), aq, &mut y)
                .map(|()| f32s(&y))
        }),
        false,
    ));

    // int4 weights and W4A8
    let wf = c.floats(200, perturb(n * k, c.which, c.delta, 1));
    o.push((
        "quantize_weights_int8",
        run(|| {
            weights::quantize_weights_int8(wf, n, k).map(|(q, s)| {
                let mut v = i8s(&q);
                v.extend(f32s(&s));
                v
            })
        }),
        false,
    ));
    for group in [None, Some(c.group)] {
        o.push((
            "quantize_weights_int4",
            run(|| {
                weights::quantize_weights_int4(wf, n, k, group).map(|(p, s)| {
                    let mut v: Vec<u64> = p.iter().map(|&b| b as u64).collect();
                    v.extend(f32s(&s));
                    v
                })
            }),
            false,
        ));
    }
    let int4s: Vec<i8> = c.wbuf[..wl]
        .iter()
        .map(|&v| if c.clean { v >> 4 } else { v })
        .collect();
    o.push((
        "pack/unpack_int4",
        run(|| {
            let p = weights::pack_int4(&int4s, k)?;
            let u = weights::unpack_int4(&p, k)?;
            let mut v: Vec<u64> = p.iter().map(|&b| b as u64).collect();
            v.extend(i8s(&u));
            Ok(v)
        }),
        false,
    ));
    o.push((
        "unpack_int4 (raw bytes)",
        run(|| weights::unpack_int4(&c.pbuf[..wl], k).map(|u| i8s(&u))),
        false,
    ));
    o.push((
        "int4_group_scale",
        run(|| {
            let mut q = vec![0i8; perturb(wf.len(), c.which, c.delta, 2)];
            let s = weights::int4_group_scale(wf, &mut q);
            let mut v = i8s(&q);
            v.extend(f32s(&[s]));
            Ok(v)
        }),
        false,
    ));
    let layout = Int4Layout {
        out_features: n,
        in_features: k,
        group_size: c.group,
    };
    let packed = &c.pbuf[..perturb(n * layout.row_bytes(), c.which, c.delta, 3).min(FBUF)];
    let gs = c.floats(1200, perturb(n * layout.groups(), c.which, c.delta, 4));
    o.push((
        "w4a8_matmul_into",
        run(|| {
            let mut y = vec![0f32; perturb(m * n, c.which, c.delta, 7)];
            dynquant::w4a8_matmul_into(
                xm,
                m,
                packed,
                gs,
                layout,
                c.bias.then_some(bias),
                aq,
                &mut y,
            )
            .map(|()| f32s(&y))
        }),
        false,
    ));

    // calibration
    let batches: Vec<&[f32]> = vec![c.floats(0, c.len / 2), &[], c.floats(c.len / 2, c.len)];
    let owned: Vec<Vec<f32>> = batches.iter().map(|b| b.to_vec()).collect();
    let calib = |s: CalibStats| f32s(&[s.min, s.max, s.mean, s.std_dev, s.p99, s.suggested_scale]);
    o.push((
        "CalibStats::collect",
        run(|| Ok(calib(CalibStats::collect(&owned)))),
        batches.iter().any(|b| c.has_nan(b)),
    ));
    o.push((
        "CalibStats::try_collect",
        run(|| CalibStats::try_collect(&batches, policy).map(calib)),
        false,
    ));

    // raw kernels, within their documented preconditions
    o.push((
        "simd::abs_max_bits",
        run(|| Ok(vec![simd::abs_max_bits(x) as u64])),
        false,
    ));
    if c.scale != 0.0 {
        o.push((
            "simd::quantize",
            run(|| {
                let mut q = vec![0i8; x.len()];
                simd::quantize(x, c.scale, c.clip, &mut q);
                let mut v = i8s(&q);
                let mut qbuf = vec![0i8; x.len() + 32];
                let q = &mut qbuf[c.off * 3..c.off * 3 + x.len()];
                simd::quantize_to(x, c.scale, c.clip, q, true);
                v.extend(i8s(q));
                Ok(v)
            }),
            false,
        ));
    }
    let len = c.len.min(FBUF - 2);
    let w8 = &c.wbuf[..len];
    // Activations within ±127, as every quantizer produces.
    let a8: Vec<i8> = c.wbuf[1..len + 1].iter().map(|&v| v.max(-127)).collect();
    let a8b: Vec<i8> = c.wbuf[2..len + 2].iter().map(|&v| v.max(-127)).collect();
    o.push((
        "simd::dot_i8 / dot_tile",
        run(|| {
            let mut v = vec![simd::dot_i8(w8, &a8) as u64];
            let t = simd::dot_tile(&[w8, &a8b], &[&a8, &a8b, &a8]);
            v.extend(t.iter().flatten().map(|&d| d as u64));
            let t = simd::dot_tile(&[w8, &a8, &a8b, w8], &[&a8b]);
            v.extend(t.iter().flatten().map(|&d| d as u64));
            Ok(v)
        }),
        false,
    ));
    let group = c.group.max(1);
    let kk = len.min(300);
    let rb = kk.div_ceil(2);
    let groups = kk.div_ceil(group);
    o.push((
        "simd::w4a8_tile",
        run(|| {
            let wp: [&[u8]; 4] = core::array::from_fn(|r| &c.pbuf[r * 300..r * 300 + rb]);
            let sc: [&[f32]; 4] = core::array::from_fn(|r| c.floats(r * 300, groups.max(1)));
            if sc.iter().any(|s| s.len() < groups) {
                return Ok(vec![]);
            }
            let (s1, s2) = (
                simd::int4_group_sums(&a8[..kk], group),
                simd::int4_group_sums(&a8b[..kk], group),
            );
            let y = simd::w4a8_tile(&wp, &sc, &[&a8[..kk], &a8b[..kk]], &[&s1, &s2], group);
            let y1 = simd::w4a8_tile(&[wp[0]], &[sc[0]], &[&a8[..kk]], &[&s1], group);
            let mut v: Vec<u64> = f32s(&y.concat());
            v.extend(f32s(&[y1[0][0]]));
            Ok(v)
        }),
        false,
    ));
    o
}

/// Runs `all_functions` under every supported path; checks panics and that
/// every path agrees with scalar.
fn check_case(c: &Case) -> Result<(), TestCaseError> {
    let _guard = ISA_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut per_path = Vec::new();
    for isa in simd::supported() {
        simd::set_isa(isa).unwrap();
        per_path.push((isa, all_functions(c)));
    }
    simd::set_isa(simd::best_supported()).unwrap();
    let (_, scalar_out) = &per_path[0];
    for (name, out, may_panic) in scalar_out {
        let kind = match out {
            Out::Ok(_) => 0,
            Out::Err(_) => 1,
            Out::Panic(_) => 2,
        };
        OUTCOMES[kind].fetch_add(1, Ordering::Relaxed);
        if out.is_panic() && !may_panic {
            return Err(TestCaseError::fail(format!(
                "{name} panicked (undocumented): {out:?}"
            )));
        }
    }
    for (isa, outs) in &per_path[1..] {
        for ((name, s, _), (_, o, _)) in scalar_out.iter().zip(outs) {
            if s != o {
                return Err(TestCaseError::fail(format!(
                    "{isa:?} differs from scalar in {name}: {s:?} vs {o:?}"
                )));
            }
        }
    }
    Ok(())
}

#[test]
fn fuzz_every_public_function_on_every_path() {
    let start = std::time::Instant::now();
    let tried = AtomicUsize::new(0);
    runner(1024)
        .run(&case(), |c| {
            tried.fetch_add(1, Ordering::Relaxed);
            check_case(&c)
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let [ok, errors, panics] = OUTCOMES.each_ref().map(|a| a.load(Ordering::Relaxed));
    eprintln!(
        "fuzz_every_public_function_on_every_path: {} inputs x {} paths in {:.1?}; \
         per path {ok} calls returned a value, {errors} an error, {panics} a documented panic",
        tried.into_inner(),
        simd::supported().len(),
        start.elapsed()
    );
}

// ─── large inputs: the parallel chunking paths ─────────────────────────────

#[test]
fn fuzz_large_inputs_across_paths_and_thread_counts() {
    let strategy = (
        (2 * parallel::GRAIN)..(2 * parallel::GRAIN + 5000),
        0usize..8,
        mode(),
        policy(),
        any::<u64>(),
        prop::sample::select(vec![0usize, 37, 1000, 100_003]),
    );
    let start = std::time::Instant::now();
    let tried = AtomicUsize::new(0);
    let mut runner = runner(0);
    runner = TestRunner::new(Config {
        cases: (cases(256) / 32).max(8),
        ..runner.config().clone()
    });
    runner
        .run(&strategy, |(len, off, mode, policy, seed, nan_at)| {
            tried.fetch_add(1, Ordering::Relaxed);
            let _guard = ISA_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            let mut state = seed | 1;
            let mut buf: Vec<f32> = (0..len + off)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    f32::from_bits((state >> 32) as u32 & 0xbfff_ffff) // finite, |x| < 2
                })
                .collect();
            if nan_at > 0 && nan_at < len {
                buf[off + nan_at] = f32::NAN;
            }
            let x = &buf[off..];
            let cols = 1 + (seed % 300) as usize;
            let rows = x.len() / cols;
            let xr = &x[..rows * cols];
            let wq: Vec<i8> = (0..64 * cols).map(|i| (i * 37 % 255) as u8 as i8).collect();
            let ws = vec![0.01f32; 64];
            let mut results = Vec::new();
            for isa in simd::supported() {
                for threads in [1, 2] {
                    simd::set_isa(isa).unwrap();
                    parallel::set_num_threads(threads).unwrap();
                    let t8 = run(|| {
                        dynquant::try_dynamic_quantize_int8(x, mode, policy)
                            .map(|t| tensor_bits(&t))
                    });
                    let pr = run(|| {
                        dynquant::try_dynamic_quantize_int8_per_row(xr, rows, cols, mode, policy)
                            .map(|t| tensor_bits(&t))
                    });
                    let cs = run(|| {
                        CalibStats::try_collect(&[x], policy).map(|s| f32s(&[s.min, s.max, s.p99]))
                    });
                    let mut y = vec![0f32; rows.min(8) * 64];
                    let mm = run(|| {
                        dynquant::w8a8_matmul_into(
                            &xr[..rows.min(8) * cols],
                            rows.min(8),
                            &wq,
                            &ws,
                            None,
                            ActQuant::PER_TOKEN,
                            &mut y,
                        )
                        .map(|()| f32s(&y))
                    });
                    let f = vec![1.5f32; cols];
                    let sm = run(|| {
                        let mut d = vec![0f32; xr.len()];
                        smooth::smooth_activations_into(xr, &f, rows, cols, &mut d)
                            .map(|()| f32s(&d))
                    });
                    for r in [&t8, &pr, &cs, &mm, &sm] {
                        prop_assert!(!r.is_panic(), "{isa:?} x {threads} threads panicked: {r:?}");
                    }
                    results.push((isa, threads, [t8, pr, cs, mm, sm]));
                }
            }
            parallel::set_num_threads(0).unwrap();
            simd::set_isa(simd::best_supported()).unwrap();
            for (isa, threads, r) in &results[1..] {
                prop_assert!(
                    r == &results[0].2,
                    "{isa:?} x {threads} threads differ from scalar x 1"
                );
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let tried = tried.into_inner();
    eprintln!(
        "fuzz_large_inputs_across_paths_and_thread_counts: {tried} inputs in {:.1?}",
        start.elapsed()
    );
}

// ─── every length 0..=257 at every offset 0..=7, raw bit patterns ──────────

#[test]
fn simd_kernels_on_every_length_and_offset() {
    let _guard = ISA_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    install_quiet_hook();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Raw bit patterns: NaN payloads, infinities, subnormals, anything.
    let fbuf: Vec<f32> = (0..300)
        .map(|i| {
            let r = next();
            match i % 5 {
                0 => f32::from_bits(r as u32),
                1 => f32::from_bits(r as u32 & 0x807f_ffff), // ±subnormal or 0
                _ => (r % 4001) as f32 / 16.0 - 125.0,
            }
        })
        .collect();
    let wbuf: Vec<i8> = (0..300).map(|_| next() as i8).collect();
    let abuf: Vec<i8> = (0..300).map(|_| (next() as i8).max(-127)).collect();
    let pbuf: Vec<u8> = (0..1300).map(|_| next() as u8).collect();
    let sbuf: Vec<f32> = (0..400).map(|i| 0.001 + i as f32 * 0.37).collect();
    let compute = |isa: Isa| {
        simd::set_isa(isa).unwrap();
        let mut rows = Vec::new();
        for len in 0..=257usize {
            for off in 0..=7usize {
                let x = &fbuf[off..off + len];
                let mut v = vec![simd::abs_max_bits(x) as u64];
                for (scale, clip) in [
                    (125.0 / 127.0, 127.0),
                    (0.5, 7.0),
                    (3e-39, 127.0),
                    (1e30, 0.0),
                ] {
                    let mut q = vec![0i8; len];
                    simd::quantize(x, scale, clip, &mut q);
                    v.extend(i8s(&q));
                    // Streaming stores: an unaligned head, then aligned stores.
                    let mut qbuf = vec![0i8; len + 40];
                    let q = &mut qbuf[off * 5..off * 5 + len];
                    simd::quantize_to(x, scale, clip, q, true);
                    v.extend(i8s(q));
                }
                let (w, a) = (&wbuf[off..off + len], &abuf[off..off + len]);
                let a2 = &abuf[off + 1..off + 1 + len];
                v.push(simd::dot_i8(w, a) as u64);
                v.extend(
                    simd::dot_tile(&[w, a2], &[a, a2, a, a2])
                        .iter()
                        .flatten()
                        .map(|&d| d as u64),
                );
                v.extend(
                    simd::dot_tile(&[w, a, a2, w], &[a])
                        .iter()
                        .flatten()
                        .map(|&d| d as u64),
                );
                // Dequantized tiles: every token count, with and without bias.
                let ws = [sbuf[off] * 1e-3, sbuf[off + 9] * 1e-2];
                let ts = [0.5f32, 1.25e-3, 3.0, 7.5e-2];
                for bias in [None, Some([0.25f32, -3.5])] {
                    let bits = |y: &[[f32; 2]]| -> Vec<u64> {
                        y.iter().flatten().map(|v| v.to_bits() as u64).collect()
                    };
                    v.extend(bits(&simd::w8a8_tile(
                        &[w, a2],
                        &[a, a2, a, a2],
                        ws,
                        ts,
                        bias,
                    )));
                    let t3 = [ts[1], ts[2], ts[3]];
                    v.extend(bits(&simd::w8a8_tile(&[a2, w], &[a2, a, a2], ws, t3, bias)));
                    v.extend(bits(&simd::w8a8_tile(
                        &[w, w],
                        &[a, a2],
                        ws,
                        [ts[3], ts[0]],
                        bias,
                    )));
                    v.extend(bits(&simd::w8a8_tile(&[w, a], &[a2], ws, [ts[2]], bias)));
                }
                for group in [32usize, 64, 2, 5] {
                    let rb = len.div_ceil(2);
                    let groups = len.div_ceil(group);
                    let wp: [&[u8]; 4] =
                        core::array::from_fn(|r| &pbuf[off + r * 320..off + r * 320 + rb]);
                    let ws: [&[f32]; 4] = core::array::from_fn(|r| &sbuf[r..r + groups]);
                    if len > 0 {
                        let sums = [
                            simd::int4_group_sums(a, group),
                            simd::int4_group_sums(a2, group),
                        ];
                        let y = simd::w4a8_tile(&wp, &ws, &[a, a2], &[&sums[0], &sums[1]], group);
                        v.extend(f32s(&y.concat()));
                    }
                }
                rows.push(v);
            }
        }
        rows
    };
    let scalar_rows = compute(Isa::Scalar);
    // The scalar path is plain Rust; spot-check it against the definitions.
    for (i, row) in scalar_rows.iter().enumerate() {
        let (len, off) = (i / 8, i % 8);
        let x = &fbuf[off..off + len];
        let want = x
            .iter()
            .map(|v| v.to_bits() & 0x7fff_ffff)
            .max()
            .unwrap_or(0);
        assert_eq!(row[0], want as u64);
        let q: Vec<u64> = x
            .iter()
            .map(|&v| scalar::quantize_one(v, 125.0 / 127.0, 127.0) as u8 as u64)
            .collect();
        assert_eq!(&row[1..1 + len], q.as_slice());
    }
    for isa in simd::supported().into_iter().skip(1) {
        let other = compute(isa);
        for (i, (s, o)) in scalar_rows.iter().zip(&other).enumerate() {
            assert_eq!(
                s,
                o,
                "{isa:?} differs from scalar at len {} offset {}",
                i / 8,
                i % 8
            );
        }
    }
    simd::set_isa(simd::best_supported()).unwrap();
}

/// A named call that must panic.
type Precondition<'a> = (&'a str, Box<dyn Fn() + 'a>);

/// The panics the kernels document are the same on every path (the SIMD
/// bodies must not be reached with inputs that break their preconditions).
#[test]
fn kernel_preconditions_panic_on_every_path() {
    let _guard = ISA_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    install_quiet_hook();
    for isa in simd::supported() {
        simd::set_isa(isa).unwrap();
        let x = [1.0f32; 40];
        let cases: Vec<Precondition> = vec![
            (
                "quantize lengths",
                Box::new(|| simd::quantize(&x, 1.0, 127.0, &mut [0i8; 39])),
            ),
            (
                "quantize clip < 0",
                Box::new(|| simd::quantize(&x, 1.0, -1.0, &mut [0i8; 40])),
            ),
            (
                "quantize clip NaN",
                Box::new(|| simd::quantize(&x, 1.0, f32::NAN, &mut [0i8; 40])),
            ),
            (
                "quantize clip > 127",
                Box::new(|| simd::quantize(&x, 1.0, 200.0, &mut [0i8; 40])),
            ),
            (
                "dot_i8 lengths",
                Box::new(|| {
                    simd::dot_i8(&[0i8; 64], &[0i8; 63]);
                }),
            ),
            (
                "dot_tile lengths",
                Box::new(|| {
                    simd::dot_tile(&[&[0i8; 64][..]], &[&[0i8; 64][..], &[0i8; 32][..]]);
                }),
            ),
            (
                "w4a8_tile group 0",
                Box::new(|| {
                    simd::w4a8_tile(
                        &[&[0u8; 32][..]; 4],
                        &[&[1.0f32][..]; 4],
                        &[&[0i8; 64][..]],
                        &[&[0i32; 16][..]],
                        0,
                    );
                }),
            ),
            (
                "w4a8_tile short packed row",
                Box::new(|| {
                    simd::w4a8_tile(
                        &[&[0u8; 31][..]; 4],
                        &[&[1.0f32][..]; 4],
                        &[&[0i8; 64][..]],
                        &[&[0i32; 8][..]],
                        64,
                    );
                }),
            ),
            (
                "w4a8_tile short scales",
                Box::new(|| {
                    simd::w4a8_tile(
                        &[&[0u8; 64][..]; 4],
                        &[&[1.0f32][..]; 4],
                        &[&[0i8; 128][..]],
                        &[&[0i32; 32][..]],
                        32,
                    );
                }),
            ),
            (
                "w4a8_tile short group sums",
                Box::new(|| {
                    simd::w4a8_tile(
                        &[&[0u8; 32][..]; 4],
                        &[&[1.0f32; 2][..]; 4],
                        &[&[0i8; 64][..]],
                        &[&[0i32; 1][..]],
                        32,
                    );
                }),
            ),
            (
                "w4a8_tile k >= 2^20",
                Box::new(|| {
                    let big = vec![0i8; 1 << 20];
                    let p = vec![0u8; 1 << 19];
                    let sums = [0i32; 8];
                    simd::w4a8_tile(
                        &[&p[..]; 4],
                        &[&[1.0f32][..]; 4],
                        &[&big[..]],
                        &[&sums[..]],
                        1 << 20,
                    );
                }),
            ),
            (
                "kth_smallest_abs k >= n",
                Box::new(|| {
                    scale::kth_smallest_abs(&x, 40);
                }),
            ),
        ];
        for (name, f) in cases {
            let out = run(|| {
                f();
                Ok(vec![])
            });
            assert!(out.is_panic(), "{isa:?} {name}: no panic ({out:?})");
        }
    }
    simd::set_isa(simd::best_supported()).unwrap();
}

/// Found by the fuzzer: with no columns the scalar path returned
/// `0.0 * ws[r][0]` (-0.0 or NaN by the scale, or an index panic with no
/// scales) while AVX2 returned +0.0. Now +0.0 everywhere, no scale read.
#[test]
fn w4a8_tile_with_no_columns() {
    let _guard = ISA_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for isa in simd::supported() {
        simd::set_isa(isa).unwrap();
        let no_scales: [&[f32]; 4] = [&[]; 4];
        let y = simd::w4a8_tile(&[&[][..]; 4], &no_scales, &[&[][..]], &[&[][..]], 32);
        assert_eq!(f32s(&y.concat()), vec![0; 4], "{isa:?}");
        let y = simd::w4a8_tile(&[&[][..]], &[&[-1.0f32][..]], &[&[][..]], &[&[][..]], 7);
        assert_eq!(y[0][0].to_bits(), 0, "{isa:?}");
    }
    simd::set_isa(simd::best_supported()).unwrap();
}
