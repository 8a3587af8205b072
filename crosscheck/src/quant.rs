//! The quantizers (int8 and int4 per tensor, int8 per row), `compute_scale`,
//! the tensor methods (dequantize, memory_bytes, compression_ratio,
//! element_count) and `quantization_mae`.

use dynquant as d;
use oxibonsai_model::dynamic_quant as r;

use crate::common::*;
use crate::npz::{names, Npz, Ragged};
use crate::rng::{pow2, Dist, Rng};

/// The clip values `compute_scale` is called with on every per-tensor input.
pub const CLIPS: [f32; 7] = [127.0, 7.0, 1.0, 255.0, 0.3, 1e-30, -1.0];

/// Per-tensor inputs: each goes through int8, int4, compute_scale (every
/// clip), the tensor methods and quantization_mae.
pub struct PtCase {
    pub name: String,
    pub x: Vec<f32>,
    pub mode: Mode,
    /// Written to the file for the Python test.
    pub py: bool,
}

fn pt(name: impl Into<String>, x: Vec<f32>, mode: Mode) -> PtCase {
    let py = mode.checked_ok();
    PtCase {
        name: name.into(),
        x,
        mode,
        py,
    }
}

/// Sizes that hit SIMD tails, the radix-select cutoff (4096) and the
/// parallel threshold (131072).
fn sizes(set: Set) -> Vec<usize> {
    let mut s = vec![
        1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 257, 1000,
    ];
    if set == Set::Full {
        s.extend([
            4, 5, 6, 23, 24, 25, 47, 48, 49, 95, 96, 97, 128, 255, 256, 511, 1023, 1024, 1025,
            4095, 4096, 4097, 4098,
        ]);
    }
    s
}

fn dists(set: Set) -> Vec<Dist> {
    let mut v = vec![
        Dist::Normal(1.0),
        Dist::Uniform(1.0),
        Dist::Heavy(1.0),
        Dist::Outliers {
            sigma: 0.5,
            every: 16,
            factor: 60.0,
        },
        Dist::LogUniform(-149, 127),
        Dist::Ints(127),
        Dist::Sparse(8),
    ];
    if set == Set::Full {
        v.extend([
            Dist::Normal(1e-3),
            Dist::Normal(3e4),
            Dist::Uniform(127.0),
            Dist::Heavy(1e-20),
            Dist::LogUniform(-149, -120),
            Dist::LogUniform(100, 127),
            Dist::Ints(7),
            Dist::Ints(1000),
            Dist::Const(0.3),
            Dist::Offset {
                offset: 100.0,
                sigma: 0.01,
            },
        ]);
    }
    v
}

fn modes(set: Set) -> Vec<Mode> {
    let mut v = vec![Mode::MaxAbs, Mode::Pct(0.99), Mode::Pct(0.5)];
    if set == Set::Full {
        v.extend([
            Mode::Pct(0.999),
            Mode::Pct(1.0),
            Mode::Pct(0.001),
            Mode::Pct(0.9),
        ]);
    }
    v
}

/// `(p, n)` pairs where the reference's f32 index `ceil(p * n) - 1` differs
/// from the same computed in f64.
pub fn f32_index_divergences(p: f32, lo: usize, hi: usize, want: usize) -> Vec<usize> {
    (lo..hi)
        .filter(|&n| {
            let i32f = (p * n as f32).ceil() as i64 - 1;
            let i64f = (p as f64 * n as f64).ceil() as i64 - 1;
            i32f != i64f
        })
        .take(want)
        .collect()
}

/// Values `x` at (nearly) `.5` ties of `x / s` where dividing by `s` and
/// multiplying by `1 / s` round differently (`s = amax / clip`).
fn division_sensitive(rng: &mut Rng, clip: f32, want: usize) -> Vec<f32> {
    let mut out = Vec::new();
    while out.len() < want {
        let amax = 0.5 + rng.unit() * 1.5;
        let s = amax / clip;
        let inv = 1.0 / s;
        let mut found = vec![amax];
        for k in 0..clip as i32 {
            let t = (k as f32 + 0.5) * s;
            for x in [
                f32::from_bits(t.to_bits() - 1),
                t,
                f32::from_bits(t.to_bits() + 1),
            ] {
                if x < amax && (x / s).round() != (x * inv).round() {
                    found.push(if rng.next_u64() & 1 == 0 { x } else { -x });
                }
            }
        }
        if found.len() > 1 {
            out.extend(found);
        }
    }
    out
}

pub fn per_tensor_cases(set: Set) -> Vec<PtCase> {
    let mut cases = Vec::new();
    // Generated: sizes x distributions x modes.
    for n in sizes(set) {
        for dist in dists(set) {
            for mode in modes(set) {
                let name = format!("pt/{}/n{n}/{}", dist.tag(), mode.tag());
                let x = dist.sample(&mut Rng::for_case(&name), n, n);
                cases.push(pt(name, x, mode));
            }
        }
    }
    if set == Set::Full {
        // Larger inputs: the radix selection (n > 4096) and, from 131072,
        // the parallel paths.
        let outliers = Dist::Outliers {
            sigma: 1.0,
            every: 64,
            factor: 40.0,
        };
        let mut large = Vec::new();
        for n in [10_007usize, 65_536, 65_537] {
            for dist in dists(set).into_iter().take(6) {
                for mode in [Mode::MaxAbs, Mode::Pct(0.99)] {
                    large.push((n, dist, mode));
                }
            }
        }
        for n in [131_071usize, 131_072, 131_073, 1_000_003] {
            large.extend([
                (n, Dist::Normal(1.0), Mode::MaxAbs),
                (n, Dist::Heavy(1.0), Mode::Pct(0.999)),
                (n, outliers, Mode::Pct(0.5)),
                (n, outliers, Mode::MaxAbs),
            ]);
        }
        for (n, dist, mode) in large {
            let name = format!("pt/{}/n{n}/{}", dist.tag(), mode.tag());
            let x = dist.sample(&mut Rng::for_case(&name), n, 4096);
            cases.push(pt(name, x, mode));
        }
    }

    // .5 ties at scale exactly 1.0: amax 127 (int8) and 7 (int4).
    for clip in [127i32, 7] {
        let mut x = vec![clip as f32, -(clip as f32)];
        for k in 0..clip {
            x.push(k as f32 + 0.5);
            x.push(-(k as f32) - 0.5);
            x.push(k as f32);
        }
        for mode in [Mode::MaxAbs, Mode::Pct(1.0)] {
            cases.push(pt(
                format!("pt/ties-scale1-amax{clip}/{}", mode.tag()),
                x.clone(),
                mode,
            ));
        }
    }
    // Where x / s and x * (1 / s) round differently.
    for clip in [127.0f32, 7.0] {
        let name = format!("pt/division-sensitive-clip{clip}");
        let want = if set == Set::Full { 2000 } else { 200 };
        let x = division_sensitive(&mut Rng::for_case(&name), clip, want);
        cases.push(pt(name, x, Mode::MaxAbs));
    }
    // Empty, one element, zeros.
    for mode in [Mode::MaxAbs, Mode::Pct(0.5), Mode::Pct(1.0)] {
        cases.push(pt(format!("pt/empty/{}", mode.tag()), vec![], mode));
    }
    for (i, v) in [
        0.0f32,
        -0.0,
        1.0,
        -1.0,
        0.3,
        -2.5,
        127.0,
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        pow2(-149),
        -1e30,
    ]
    .into_iter()
    .enumerate()
    {
        for mode in [Mode::MaxAbs, Mode::Pct(0.5)] {
            cases.push(pt(format!("pt/one-{i}/{}", mode.tag()), vec![v], mode));
        }
    }
    for n in [1usize, 2, 5, 16, 17, 33, 100] {
        let x: Vec<f32> = (0..n)
            .map(|i| if i % 3 == 0 { -0.0 } else { 0.0 })
            .collect();
        for mode in [Mode::MaxAbs, Mode::Pct(0.99)] {
            cases.push(pt(format!("pt/zeros-n{n}/{}", mode.tag()), x.clone(), mode));
        }
    }
    // Subnormal amax: the scale underflows to 0 at amax <= 63 * 2^-149
    // (int8) or 3 * 2^-149 (int4).
    for k in [1u32, 2, 3, 4, 7, 63, 64, 65, 126, 127, 128, 1000, 0x7f_ffff] {
        let amax = f32::from_bits(k);
        let mut x = vec![amax, -amax];
        for j in 0..k.min(40) {
            x.push(f32::from_bits(j) * if j % 2 == 0 { 1.0 } else { -1.0 });
        }
        for mode in [Mode::MaxAbs, Mode::Pct(0.5)] {
            cases.push(pt(
                format!("pt/subnormal-amax{k}/{}", mode.tag()),
                x.clone(),
                mode,
            ));
        }
    }
    // Huge values; a small percentile scale with huge values (x / s = inf).
    cases.push(pt(
        "pt/huge",
        vec![f32::MAX, -f32::MAX, 1.0, -3e38, 1e-30],
        Mode::MaxAbs,
    ));
    for mode in [Mode::Pct(0.5), Mode::Pct(0.2)] {
        cases.push(pt(
            format!("pt/huge-over-small-percentile/{}", mode.tag()),
            vec![1e-30, 3e38, -3e38, 2e-30, 1e-31],
            mode,
        ));
    }
    // Infinities (the reference: MaxAbs scale inf, all q 0; a percentile
    // may or may not pick the inf).
    let mut normal_with_inf = Dist::Normal(1.0).sample(&mut Rng::for_case("pt/inf"), 100, 100);
    normal_with_inf[37] = f32::INFINITY;
    for (i, x) in [
        vec![f32::INFINITY],
        vec![f32::NEG_INFINITY],
        vec![1.0, f32::INFINITY, -2.0],
        vec![f32::INFINITY, f32::NEG_INFINITY, 0.0],
        normal_with_inf,
    ]
    .into_iter()
    .enumerate()
    {
        for mode in [
            Mode::MaxAbs,
            Mode::Pct(0.5),
            Mode::Pct(1.0),
            Mode::Pct(0.99),
        ] {
            cases.push(pt(format!("pt/inf-{i}/{}", mode.tag()), x.clone(), mode));
        }
    }
    // NaN, MaxAbs only (the reference's percentile sort has no result).
    let qnan_payload = f32::from_bits(0x7fc0_0001);
    let snan = f32::from_bits(0x7f80_0001);
    let neg_nan = f32::from_bits(0xffc0_0000);
    let mut normal_with_nan = Dist::Normal(2.0).sample(&mut Rng::for_case("pt/nan"), 1000, 1000);
    for i in (3..1000).step_by(97) {
        normal_with_nan[i] = f32::NAN;
    }
    for (i, x) in [
        vec![f32::NAN],
        vec![f32::NAN, 1.0],
        vec![1.0, f32::NAN, -3.0, f32::NAN],
        vec![f32::NAN; 5],
        vec![f32::NAN, f32::INFINITY, 2.0],
        vec![qnan_payload, snan, neg_nan, -0.5, 0.25],
        normal_with_nan,
    ]
    .into_iter()
    .enumerate()
    {
        cases.push(pt(format!("pt/nan-{i}"), x, Mode::MaxAbs));
    }
    // Percentile index computed in f32: n = 32999, p = 0.999 picks index
    // 32965 where f64 would pick 32966. Distinct |x| so the index matters.
    let percentile_divergent = |p: f32, n: usize| {
        let name = format!("pt/percentile-f32-index/p{p}/n{n}");
        let mut rng = Rng::for_case(&name);
        let mut x: Vec<f32> = (1..=n).map(|k| k as f32 / 256.0 * rng.sign()).collect();
        for i in (1..n).rev() {
            x.swap(i, rng.below(i as u64 + 1) as usize);
        }
        pt(name, x, Mode::Pct(p))
    };
    cases.push(percentile_divergent(0.999, 32_999));
    if set == Set::Full {
        for p in [0.99f32, 0.999, 0.9999, 0.95, 0.7, 0.123] {
            for n in f32_index_divergences(p, 1000, 200_000, 3) {
                cases.push(percentile_divergent(p, n));
            }
        }
    }
    // p outside (0, 1]: the reference clamps; so does dynquant's
    // unchecked Rust API. Python rejects it (a documented difference).
    let x = Dist::Normal(1.0).sample(&mut Rng::for_case("pt/p-out-of-range"), 100, 100);
    for p in [0.0f32, -0.5, 1.5, f32::NAN, f32::INFINITY, 1e-30] {
        cases.push(pt(
            format!("pt/p-out-of-range/p{p}"),
            x.clone(),
            Mode::Pct(p),
        ));
    }
    cases
}

/// What the Python test needs of the per-tensor cases.
#[derive(Default)]
pub struct PtFile {
    names: Vec<String>,
    x: Ragged<f32>,
    mode: Vec<f32>,
    q8: Ragged<i8>,
    q4: Ragged<i8>,
    s8: Vec<f32>,
    s4: Vec<f32>,
    deq8: Ragged<f32>,
    deq4: Ragged<f32>,
    ratio8: Vec<f32>,
    ratio4: Vec<f32>,
    scales: Vec<f32>,
    mae: Vec<f32>,
    mae_exact: Vec<f64>,
}

impl PtFile {
    pub fn write(&self, npz: &mut Npz) {
        names(npz, "pt.names", &self.names);
        self.x.write(npz, "pt.x");
        npz.add_1d("pt.mode", &self.mode);
        self.q8.write(npz, "pt.q8");
        self.q4.write(npz, "pt.q4");
        npz.add_1d("pt.s8", &self.s8);
        npz.add_1d("pt.s4", &self.s4);
        self.deq8.write(npz, "pt.deq8");
        self.deq4.write(npz, "pt.deq4");
        npz.add_1d("pt.ratio8", &self.ratio8);
        npz.add_1d("pt.ratio4", &self.ratio4);
        npz.add_1d("pt.clips", &CLIPS);
        npz.add("pt.scales", &self.scales, &[self.names.len(), CLIPS.len()]);
        npz.add("pt.mae", &self.mae, &[self.names.len(), 3]);
        npz.add("pt.mae_exact", &self.mae_exact, &[self.names.len(), 3]);
    }
}

/// Compares a reference tensor with a dynquant one: fields, methods, MAE.
fn diff_tensor(
    rep: &mut Report,
    op: &'static str,
    case: &str,
    cfg: &Cfg,
    original: &[f32],
    rt: &r::DynQuantTensor,
    dt: &d::DynQuantTensor,
) {
    let input = (rt.data.len() == original.len()).then_some(original);
    rep.check(op, case, cfg, diff_i8("data", &rt.data, &dt.data, input));
    rep.check(
        op,
        case,
        cfg,
        diff_f32("scales", &rt.scales, &dt.scales, None),
    );
    rep.check(
        op,
        case,
        cfg,
        (rt.shape != dt.shape || format!("{:?}", rt.format) != format!("{:?}", dt.format)).then(
            || {
                format!(
                    "shape/format: reference {:?} {:?}, dynquant {:?} {:?}",
                    rt.shape, rt.format, dt.shape, dt.format
                )
            },
        ),
    );
    tensor_methods(rep, case, cfg, original, rt, dt);
}

/// dequantize, memory_bytes, compression_ratio, element_count, and
/// quantization_mae against `original`.
fn tensor_methods(
    rep: &mut Report,
    case: &str,
    cfg: &Cfg,
    original: &[f32],
    rt: &r::DynQuantTensor,
    dt: &d::DynQuantTensor,
) {
    let rdeq = rt.dequantize();
    match guarded(|| dt.dequantize()) {
        Ok(ddeq) => rep.check(
            "dequantize",
            case,
            cfg,
            diff_f32("dequantize", &rdeq, &ddeq, None),
        ),
        Err(e) => rep.check("dequantize", case, cfg, Some(e)),
    }
    let methods = (
        rt.memory_bytes(),
        rt.compression_ratio().to_bits(),
        rt.element_count(),
    );
    let dmethods = (
        dt.memory_bytes(),
        dt.compression_ratio().to_bits(),
        dt.element_count(),
    );
    rep.check(
        "tensor_methods",
        case,
        cfg,
        (methods != dmethods).then(|| {
            format!("(memory_bytes, compression_ratio bits, element_count): reference {methods:?}, dynquant {dmethods:?}")
        }),
    );
    let rmae = r::quantization_mae(original, rt);
    match guarded(|| d::quantization_mae(original, dt)) {
        Ok(dmae) => {
            let exact = exact_mae(original, &rdeq);
            let res = tolerance(rmae, dmae, exact, exact.abs());
            rep.check_tol("quantization_mae", case, cfg, "mae", res);
        }
        Err(e) => rep.check("quantization_mae", case, cfg, Some(e)),
    }
}

pub fn run_per_tensor(cases: &[PtCase], rep: &mut Report, mut file: Option<&mut PtFile>) {
    for c in cases {
        let (x, mode) = (&c.x[..], c.mode);
        let name = &label(&c.name, x)[..];
        let r8 = r::dynamic_quantize_int8(x, mode.r());
        let r4 = r::dynamic_quantize_int4(x, mode.r());
        // Every clip on inputs up to 65537 values, 127 and 7 above (the
        // reference sorts for each percentile scale); NaN marks a skipped one.
        let clips = if x.len() <= 65_537 {
            &CLIPS[..]
        } else {
            &CLIPS[..2]
        };
        let mut rscales: Vec<f32> = clips
            .iter()
            .map(|&clip| r::compute_scale(x, clip, mode.r()))
            .collect();
        let half = &x[..x.len() / 2];
        for op in ["quantize_int8", "quantize_int4", "dequantize", "dequantize"] {
            rep.count(op, c.py);
        }
        for op in ["tensor_methods", "tensor_methods"] {
            rep.count(op, c.py);
        }
        for _ in 0..3 {
            rep.count("quantization_mae", c.py);
        }
        for _ in clips {
            rep.count("compute_scale", c.py);
        }
        let finite = all_finite(x);
        for cfg in configs(x.len()) {
            activate(cfg);
            // The reference's names.
            match guarded(|| d::dynamic_quantize_int8(x, mode.d())) {
                Ok(d8) => {
                    diff_tensor(rep, "quantize_int8", name, &cfg, x, &r8, &d8);
                    // MAE over a shorter original (the common length).
                    let rmae = r::quantization_mae(half, &r8);
                    match guarded(|| d::quantization_mae(half, &d8)) {
                        Ok(dmae) => {
                            let exact = exact_mae(half, &r8.dequantize());
                            let res = tolerance(rmae, dmae, exact, exact.abs());
                            rep.check_tol("quantization_mae", name, &cfg, "mae (half)", res);
                        }
                        Err(e) => rep.check("quantization_mae", name, &cfg, Some(e)),
                    }
                }
                Err(e) => rep.check("quantize_int8", name, &cfg, Some(e)),
            }
            match guarded(|| d::dynamic_quantize_int4(x, mode.d())) {
                Ok(d4) => diff_tensor(rep, "quantize_int4", name, &cfg, x, &r4, &d4),
                Err(e) => rep.check("quantize_int4", name, &cfg, Some(e)),
            }
            for (i, &clip) in clips.iter().enumerate() {
                let ds = guarded(|| d::compute_scale(x, clip, mode.d()));
                rep.check(
                    "compute_scale",
                    name,
                    &cfg,
                    match ds {
                        Ok(s) => {
                            diff_scalar_f32(&format!("compute_scale(clip {clip})"), rscales[i], s)
                        }
                        Err(e) => Some(e),
                    },
                );
                let ds = d::try_compute_scale(x, clip, mode.d(), d::NanPolicy::Reference);
                rep.check(
                    "compute_scale",
                    name,
                    &cfg,
                    match ds {
                        Ok(s) => diff_scalar_f32(
                            &format!("try_compute_scale(clip {clip}, Reference)"),
                            rscales[i],
                            s,
                        ),
                        Err(e) => Some(format!("try_compute_scale(Reference): error {e:?}")),
                    },
                );
            }
            // dynquant's checked forms, with the reference's NaN handling
            // (and, for finite input, the default Raise policy).
            if mode.checked_ok() {
                let mut policies = vec![d::NanPolicy::Reference];
                if finite {
                    policies.push(d::NanPolicy::Raise);
                }
                for policy in policies {
                    for (op, rt, res) in [
                        (
                            "quantize_int8",
                            &r8,
                            d::try_dynamic_quantize_int8(x, mode.d(), policy),
                        ),
                        (
                            "quantize_int4",
                            &r4,
                            d::try_dynamic_quantize_int4(x, mode.d(), policy),
                        ),
                    ] {
                        let diff = match res {
                            Ok(dt) => diff_i8("try_ data", &rt.data, &dt.data, Some(x))
                                .or_else(|| diff_f32("try_ scales", &rt.scales, &dt.scales, None)),
                            Err(e) => Some(format!("try_ form ({policy:?}): error {e:?}")),
                        };
                        rep.check(op, name, &cfg, diff);
                    }
                }
            }
        }
        if let Some(f) = file.as_deref_mut().filter(|_| c.py) {
            f.names.push(c.name.clone());
            f.x.push(x);
            f.mode.push(mode.code());
            f.q8.push(&r8.data);
            f.q4.push(&r4.data);
            f.s8.push(r8.scales[0]);
            f.s4.push(r4.scales[0]);
            // Dequantized values of large inputs are left to the Rust side.
            let small = x.len() <= 4097;
            let (deq8, deq4) = if small {
                (r8.dequantize(), r4.dequantize())
            } else {
                (vec![], vec![])
            };
            f.deq8.push(&deq8);
            f.deq4.push(&deq4);
            f.ratio8.push(r8.compression_ratio());
            f.ratio4.push(r4.compression_ratio());
            rscales.resize(CLIPS.len(), f32::NAN);
            f.scales.extend(&rscales);
            f.mae.extend([
                r::quantization_mae(x, &r8),
                r::quantization_mae(x, &r4),
                r::quantization_mae(half, &r8),
            ]);
            f.mae_exact.extend([
                exact_mae(x, &r8.dequantize()),
                exact_mae(x, &r4.dequantize()),
                exact_mae(half, &r8.dequantize()),
            ]);
        }
    }
}

// ─── Per row ─────────────────────────────────────────────────────────────────

pub struct PrCase {
    pub name: String,
    pub x: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    pub mode: Mode,
}

impl PrCase {
    /// Expressible in Python: a real 2-D array and a valid mode.
    fn py(&self) -> bool {
        self.x.len() == self.rows * self.cols && self.mode.checked_ok()
    }
}

pub fn per_row_cases(set: Set) -> Vec<PrCase> {
    let mut cases = Vec::new();
    let (rows, cols): (Vec<usize>, Vec<usize>) = match set {
        Set::Small => (vec![1, 3, 16], vec![1, 3, 16, 17, 33, 100]),
        Set::Full => (
            vec![1, 2, 3, 4, 5, 7, 16, 33, 128],
            vec![
                1, 2, 3, 7, 8, 15, 16, 17, 31, 32, 33, 64, 65, 100, 384, 1000, 4097,
            ],
        ),
    };
    let ds = match set {
        Set::Small => vec![
            Dist::Normal(1.0),
            Dist::Outliers {
                sigma: 1.0,
                every: 8,
                factor: 80.0,
            },
            Dist::LogUniform(-149, 127),
        ],
        Set::Full => vec![
            Dist::Normal(1.0),
            Dist::Heavy(1.0),
            Dist::Outliers {
                sigma: 1.0,
                every: 8,
                factor: 80.0,
            },
            Dist::LogUniform(-149, 127),
            Dist::Ints(127),
            Dist::Sparse(4),
        ],
    };
    for &r in &rows {
        for &c in &cols {
            if r * c > 20_000 {
                continue; // the large shapes below cover these sizes
            }
            for dist in &ds {
                for mode in [Mode::MaxAbs, Mode::Pct(0.9)] {
                    let name = format!("pr/{}/{r}x{c}/{}", dist.tag(), mode.tag());
                    let x = dist.sample(&mut Rng::for_case(&name), r * c, c);
                    cases.push(PrCase {
                        name,
                        x,
                        rows: r,
                        cols: c,
                        mode,
                    });
                }
            }
        }
    }
    if set == Set::Full {
        for (r, c) in [
            (3usize, 70_000usize),
            (300, 1000),
            (1024, 384),
            (2, 140_000),
            (1, 262_147),
        ] {
            for mode in [Mode::MaxAbs, Mode::Pct(0.99)] {
                let dist = Dist::Outliers {
                    sigma: 1.0,
                    every: 32,
                    factor: 50.0,
                };
                let name = format!("pr/{}/{r}x{c}/{}", dist.tag(), mode.tag());
                let x = dist.sample(&mut Rng::for_case(&name), r * c, c);
                cases.push(PrCase {
                    name,
                    x,
                    rows: r,
                    cols: c,
                    mode,
                });
            }
        }
    }
    let mut push = |name: &str, x: Vec<f32>, rows: usize, cols: usize, mode: Mode| {
        cases.push(PrCase {
            name: format!("pr/{name}/{}", mode.tag()),
            x,
            rows,
            cols,
            mode,
        })
    };
    // Zero rows between others; a tie row at scale 1.0; subnormal rows.
    let mut x = Dist::Normal(1.0).sample(&mut Rng::for_case("pr/zero-rows"), 5 * 9, 9);
    for v in &mut x[9..18] {
        *v = 0.0;
    }
    for v in &mut x[36..45] {
        *v = -0.0;
    }
    for mode in [Mode::MaxAbs, Mode::Pct(0.5)] {
        push("zero-rows", x.clone(), 5, 9, mode);
    }
    let mut ties: Vec<f32> = (0..127).map(|k| k as f32 + 0.5).collect();
    ties.push(-127.0);
    let mut two = ties.clone();
    two.extend(ties.iter().map(|v| v * 0.5));
    push("ties", two, 2, 128, Mode::MaxAbs);
    let sub: Vec<f32> = (0..4 * 8)
        .map(|i| f32::from_bits([1u32, 63, 64, 1000][i / 8] * (1 + (i % 8) as u32) / 8))
        .collect();
    push("subnormal-rows", sub, 4, 8, Mode::MaxAbs);
    // Non-finite rows.
    let mut x = Dist::Normal(1.0).sample(&mut Rng::for_case("pr/inf-row"), 3 * 6, 6);
    x[8] = f32::NEG_INFINITY;
    for mode in [Mode::MaxAbs, Mode::Pct(0.5), Mode::Pct(1.0)] {
        push("inf-row", x.clone(), 3, 6, mode);
    }
    let mut x = Dist::Normal(1.0).sample(&mut Rng::for_case("pr/nan-row"), 4 * 5, 5);
    x[2] = f32::NAN;
    for v in &mut x[10..15] {
        *v = f32::NAN;
    }
    push("nan-rows", x, 4, 5, Mode::MaxAbs);
    // Zero-size shapes.
    for (r, c) in [(3usize, 0usize), (0, 5), (0, 0)] {
        push(&format!("zero-size-{r}x{c}"), vec![], r, c, Mode::MaxAbs);
    }
    // Data whose length is not rows * cols (the reference pads or cuts;
    // Rust only: a NumPy array always has rows * cols values).
    let x = Dist::Normal(1.0).sample(&mut Rng::for_case("pr/lax"), 13, 13);
    for (len, r, c) in [
        (10usize, 3usize, 4usize),
        (4, 3, 4),
        (13, 3, 4),
        (5, 1, 3),
        (1, 4, 4),
    ] {
        for mode in [Mode::MaxAbs, Mode::Pct(0.5)] {
            push(
                &format!("lax-len{len}-{r}x{c}"),
                x[..len].to_vec(),
                r,
                c,
                mode,
            );
        }
    }
    push("lax-empty-data-2x3", vec![], 2, 3, Mode::MaxAbs);
    // p outside (0, 1], clamped by the reference (Rust only).
    let x = Dist::Normal(1.0).sample(&mut Rng::for_case("pr/p-range"), 3 * 10, 10);
    for p in [0.0f32, 2.0, f32::NAN] {
        push(
            &format!("p-out-of-range-{p}"),
            x.clone(),
            3,
            10,
            Mode::Pct(p),
        );
    }
    cases
}

#[derive(Default)]
pub struct PrFile {
    names: Vec<String>,
    x: Ragged<f32>,
    shape: Vec<i64>,
    mode: Vec<f32>,
    q: Ragged<i8>,
    scales: Ragged<f32>,
    deq: Ragged<f32>,
    ratio: Vec<f32>,
    mae: Vec<f32>,
    mae_exact: Vec<f64>,
}

impl PrFile {
    pub fn write(&self, npz: &mut Npz) {
        names(npz, "pr.names", &self.names);
        self.x.write(npz, "pr.x");
        npz.add("pr.shape", &self.shape, &[self.names.len(), 2]);
        npz.add_1d("pr.mode", &self.mode);
        self.q.write(npz, "pr.q");
        self.scales.write(npz, "pr.scales");
        self.deq.write(npz, "pr.deq");
        npz.add_1d("pr.ratio", &self.ratio);
        npz.add_1d("pr.mae", &self.mae);
        npz.add_1d("pr.mae_exact", &self.mae_exact);
    }
}

pub fn run_per_row(cases: &[PrCase], rep: &mut Report, mut file: Option<&mut PrFile>) {
    for c in cases {
        let (x, rows, cols, mode) = (&c.x[..], c.rows, c.cols, c.mode);
        let name = &label(&c.name, x)[..];
        let rt = r::dynamic_quantize_int8_per_row(x, rows, cols, mode.r());
        for op in [
            "quantize_int8_per_row",
            "dequantize",
            "tensor_methods",
            "quantization_mae",
        ] {
            rep.count(op, c.py());
        }
        let finite = all_finite(x);
        for cfg in configs(x.len()) {
            activate(cfg);
            match guarded(|| d::dynamic_quantize_int8_per_row(x, rows, cols, mode.d())) {
                Ok(dt) => diff_tensor(rep, "quantize_int8_per_row", name, &cfg, x, &rt, &dt),
                Err(e) => rep.check("quantize_int8_per_row", name, &cfg, Some(e)),
            }
            if c.py() {
                let mut policies = vec![d::NanPolicy::Reference];
                if finite {
                    policies.push(d::NanPolicy::Raise);
                }
                for policy in policies {
                    let diff =
                        match d::try_dynamic_quantize_int8_per_row(x, rows, cols, mode.d(), policy)
                        {
                            Ok(dt) => diff_i8("try_ data", &rt.data, &dt.data, Some(x))
                                .or_else(|| diff_f32("try_ scales", &rt.scales, &dt.scales, None)),
                            Err(e) => Some(format!("try_ form ({policy:?}): error {e:?}")),
                        };
                    rep.check("quantize_int8_per_row", name, &cfg, diff);
                }
            }
        }
        if let Some(f) = file.as_deref_mut().filter(|_| c.py()) {
            f.names.push(c.name.clone());
            f.x.push(x);
            f.shape.extend([rows as i64, cols as i64]);
            f.mode.push(mode.code());
            f.q.push(&rt.data);
            f.scales.push(&rt.scales);
            let deq = if x.len() <= 4097 {
                rt.dequantize()
            } else {
                vec![]
            };
            f.deq.push(&deq);
            f.ratio.push(rt.compression_ratio());
            f.mae.push(r::quantization_mae(x, &rt));
            f.mae_exact.push(exact_mae(x, &rt.dequantize()));
        }
    }
}

// ─── Hand-built tensors (Rust only) ──────────────────────────────────────────

/// Tensors whose fields disagree (possible in both crates' Rust API, not in
/// Python's checked dataclass): the methods must still agree.
pub fn run_hand_built(rep: &mut Report) {
    use r::DynQuantFormat as RF;
    let q: Vec<i8> = (0..10).map(|i| (i * 29 - 128) as i8).collect();
    let orig: Vec<f32> = (0..12).map(|i| i as f32 * 0.7 - 3.0).collect();
    let tensors: Vec<(&str, Vec<i8>, Vec<f32>, RF)> = vec![
        (
            "per-row-10-data-3-scales",
            q.clone(),
            vec![0.5, -1.0, 2.0],
            RF::Int8PerRow,
        ),
        ("per-row-no-scales", q.clone(), vec![], RF::Int8PerRow),
        ("per-row-no-data", vec![], vec![1.0, 2.0], RF::Int8PerRow),
        (
            "per-row-more-scales-than-data",
            q[..2].to_vec(),
            vec![1.0, 2.0, 3.0],
            RF::Int8PerRow,
        ),
        ("per-tensor-no-scales", q.clone(), vec![], RF::Int8PerTensor),
        (
            "per-tensor-two-scales",
            q.clone(),
            vec![0.25, 4.0],
            RF::Int8PerTensor,
        ),
        (
            "int4-out-of-range-values",
            q.clone(),
            vec![0.1],
            RF::Int4PerTensor,
        ),
        ("nan-scale", q.clone(), vec![f32::NAN], RF::Int8PerTensor),
        (
            "inf-scale",
            q.clone(),
            vec![f32::INFINITY],
            RF::Int4PerTensor,
        ),
        ("empty", vec![], vec![], RF::Int8PerTensor),
    ];
    let dfmt = |f: RF| match f {
        RF::Int8PerTensor => d::DynQuantFormat::Int8PerTensor,
        RF::Int8PerRow => d::DynQuantFormat::Int8PerRow,
        RF::Int4PerTensor => d::DynQuantFormat::Int4PerTensor,
    };
    for (name, data, scales, format) in tensors {
        let name = format!("hand-built/{name}");
        let rt = r::DynQuantTensor {
            data: data.clone(),
            scales: scales.clone(),
            shape: vec![data.len()],
            format,
        };
        let dt = d::DynQuantTensor {
            data,
            scales,
            shape: rt.shape.clone(),
            format: dfmt(format),
        };
        for op in ["dequantize", "tensor_methods", "quantization_mae"] {
            rep.count(op, false);
        }
        for cfg in configs(0) {
            activate(cfg);
            tensor_methods(rep, &name, &cfg, &orig, &rt, &dt);
        }
    }
}

/// n = 2^24 + 1 rounds to 2^24 in f32, so the reference's Percentile(1.0)
/// picks the second largest |x|. 64 MiB of input and a sort per call: only
/// compute_scale and the int8 quantizer, Rust only.
pub fn run_huge_percentile(rep: &mut Report) {
    let n = (1usize << 24) + 1;
    let name = "pt/percentile-n2^24+1/p1";
    let mut x = Dist::Uniform(1.0).sample(&mut Rng::for_case(name), n, n);
    x[12_345] = 5.0;
    x[54_321] = -4.0;
    let mode = Mode::Pct(1.0);
    let rscale = r::compute_scale(&x, 127.0, mode.r());
    let r8 = r::dynamic_quantize_int8(&x, mode.r());
    rep.count("compute_scale", false);
    rep.count("quantize_int8", false);
    for cfg in configs(n) {
        activate(cfg);
        let diff = match guarded(|| d::compute_scale(&x, 127.0, mode.d())) {
            Ok(s) => diff_scalar_f32("compute_scale(clip 127)", rscale, s),
            Err(e) => Some(e),
        };
        rep.check("compute_scale", name, &cfg, diff);
        let diff = match guarded(|| d::dynamic_quantize_int8(&x, mode.d())) {
            Ok(dt) => diff_f32("scales", &r8.scales, &dt.scales, None)
                .or_else(|| diff_i8("data", &r8.data, &dt.data, Some(&x))),
            Err(e) => Some(e),
        };
        rep.check("quantize_int8", name, &cfg, diff);
    }
}
