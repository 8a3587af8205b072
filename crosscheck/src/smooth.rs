//! SmoothQuant: `compute_smooth_factors`, `smooth_activations`,
//! `smooth_weights` (results and errors).

use dynquant as d;
use oxibonsai_model::dynamic_quant as r;

use crate::common::*;
use crate::npz::{names, Npz, Ragged};
use crate::rng::{Dist, Rng};

pub struct SfCase {
    pub name: String,
    pub act: Vec<f32>,
    pub tokens: usize,
    pub w: Vec<f32>,
    pub out: usize,
    pub inf: usize,
    pub alpha: f32,
    pub eps: f32,
}

impl SfCase {
    fn py(&self) -> bool {
        self.act.len() == self.tokens * self.inf
            && self.w.len() == self.out * self.inf
            && (0.0..=1.0).contains(&self.alpha)
            && self.eps.is_finite()
            && self.eps >= 0.0
    }
}

/// Smoothing applied to `data` (`rows x inf`) with `factors`, through both
/// `smooth_activations` (divide) and `smooth_weights` (multiply).
pub struct ApplyCase {
    pub name: String,
    pub data: Vec<f32>,
    pub rows: usize,
    pub inf: usize,
    pub factors: Vec<f32>,
}

impl ApplyCase {
    fn py(&self) -> bool {
        self.data.len() == self.rows * self.inf
    }
}

fn act_dist() -> Dist {
    Dist::Outliers {
        sigma: 1.0,
        every: 8,
        factor: 50.0,
    }
}

pub fn factor_cases(set: Set) -> Vec<SfCase> {
    let mut cases = Vec::new();
    let shapes: Vec<(usize, usize, usize)> = match set {
        // (tokens, in, out)
        Set::Small => vec![(1, 1, 1), (4, 3, 2), (16, 8, 5), (3, 17, 1), (8, 64, 4)],
        Set::Full => vec![
            (1, 1, 1),
            (2, 2, 3),
            (4, 3, 2),
            (16, 8, 5),
            (3, 15, 1),
            (3, 16, 2),
            (3, 17, 1),
            (8, 64, 4),
            (32, 384, 16),
            (7, 1000, 3),
            (128, 384, 64),
        ],
    };
    let alphas: Vec<f32> = match set {
        Set::Small => vec![0.5, 0.25, 0.85, 0.0, 1.0],
        Set::Full => vec![0.0, 0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 0.8, 0.85, 0.9, 1.0],
    };
    let mut add = |name: String, act: Vec<f32>, tokens, w: Vec<f32>, out, inf, alpha, eps| {
        cases.push(SfCase {
            name,
            act,
            tokens,
            w,
            out,
            inf,
            alpha,
            eps,
        })
    };
    for &(t, i, o) in &shapes {
        for &alpha in &alphas {
            let name = format!("sf/{t}x{i}/out{o}/alpha{alpha}");
            let mut rng = Rng::for_case(&name);
            let act = act_dist().sample(&mut rng, t * i, i);
            let w = Dist::Normal(0.05).sample(&mut rng, o * i, i);
            add(name, act, t, w, o, i, alpha, 1e-5);
        }
    }
    // powf over many magnitudes: one factor per channel, values spread over
    // binades (glibc's powf is not correctly rounded; only the same f32
    // powf gives the same bits).
    let (channels, alphas): (usize, &[f32]) = match set {
        Set::Full => (65_536, &[0.5, 0.3, 0.75, 0.85]),
        Set::Small => (512, &[0.5, 0.85]),
    };
    for &alpha in alphas {
        let name = format!("sf/powf-spread/{channels}/alpha{alpha}");
        let mut rng = Rng::for_case(&name);
        let act = Dist::LogUniform(-30, 30).sample(&mut rng, 2 * channels, channels);
        let w = Dist::LogUniform(-30, 10).sample(&mut rng, 2 * channels, channels);
        add(name, act, 2, w, 2, channels, alpha, 1e-5);
    }
    // Channels picked where replacing powf changes the factor: by sqrtf at
    // alpha 0.5, by an f64 pow otherwise (dynquant must call f32 powf, as
    // the reference does).
    for alpha in [0.5f32, 0.3, 0.85] {
        let name = format!("sf/powf-sensitive/alpha{alpha}");
        let mut rng = Rng::for_case(&name);
        let eps = 1e-5f32;
        let factor = |pa: f32, pw: f32| (pa / pw).max(eps);
        let alt = |v: f32, e: f32| {
            if e == 0.5 {
                v.sqrt()
            } else {
                (v as f64).powf(e as f64) as f32
            }
        };
        let (mut act, mut w) = (Vec::new(), Vec::new());
        while act.len() < 48 {
            let a = rng.log_uniform(-20, 20).abs();
            let wv = rng.log_uniform(-20, 5).abs();
            let (ea, ew) = (alpha, 1.0 - alpha);
            let powf = factor((a + eps).powf(ea), (wv + eps).powf(ew));
            if factor(alt(a + eps, ea), alt(wv + eps, ew)) != powf {
                act.push(a * rng.sign());
                w.push(wv * rng.sign());
            }
        }
        add(name, act, 1, w, 1, 48, alpha, eps);
    }
    // Epsilon: 0 and below 1e-10 are raised to 1e-10; large ones floor it.
    for eps in [0.0f32, 1e-12, 1e-10, 1e-3, 0.5, f32::MIN_POSITIVE, 3.0] {
        let name = format!("sf/eps{eps:e}");
        let mut rng = Rng::for_case(&name);
        let act = Dist::LogUniform(-40, 5).sample(&mut rng, 4 * 32, 32);
        let w = Dist::LogUniform(-40, 0).sample(&mut rng, 3 * 32, 32);
        add(name, act, 4, w, 3, 32, 0.5, eps);
    }
    // Zero columns, huge values, non-finite values.
    let mut rng = Rng::for_case("sf/special");
    let mut act = Dist::Normal(1.0).sample(&mut rng, 4 * 8, 8);
    let mut w = Dist::Normal(0.1).sample(&mut rng, 3 * 8, 8);
    for t in 0..4 {
        act[t * 8] = 0.0; // channel 0: zero activations
        act[t * 8 + 5] = -0.0;
    }
    for o in 0..3 {
        w[o * 8 + 1] = 0.0; // channel 1: zero weights
        w[o * 8 + 5] = 0.0; // channel 5: both zero
    }
    act[2] = 3e38; // channel 2: huge activation
    w[3] = -3e38; // channel 3: huge weight
    for alpha in [0.0f32, 0.5, 1.0, 0.85] {
        add(
            format!("sf/zero-and-huge/alpha{alpha}"),
            act.clone(),
            4,
            w.clone(),
            3,
            8,
            alpha,
            1e-5,
        );
    }
    let mut act_inf = act.clone();
    act_inf[8 + 4] = f32::INFINITY;
    act_inf[16 + 6] = f32::NEG_INFINITY;
    let mut w_inf = w.clone();
    w_inf[8 + 7] = f32::INFINITY;
    let mut act_nan = act.clone();
    act_nan[4] = f32::NAN;
    act_nan[8 + 6] = f32::NAN;
    let mut w_nan = w.clone();
    w_nan[7] = f32::NAN;
    for alpha in [0.0f32, 0.5, 1.0] {
        add(
            format!("sf/inf/alpha{alpha}"),
            act_inf.clone(),
            4,
            w_inf.clone(),
            3,
            8,
            alpha,
            1e-5,
        );
        add(
            format!("sf/nan/alpha{alpha}"),
            act_nan.clone(),
            4,
            w_nan.clone(),
            3,
            8,
            alpha,
            1e-5,
        );
    }
    // No tokens, no output rows, no features.
    add("sf/no-tokens".into(), vec![], 0, w.clone(), 3, 8, 0.5, 1e-5);
    add("sf/no-out".into(), act.clone(), 4, vec![], 0, 8, 0.5, 1e-5);
    add("sf/no-features".into(), vec![], 4, vec![], 3, 0, 0.5, 1e-5);
    // Rust only: lengths that are not tokens * in (the reference ignores
    // the extra and counts what is there), alpha and epsilon out of range
    // (the reference clamps alpha and floors epsilon).
    add(
        "sf/lax/act-short".into(),
        act[..29].to_vec(),
        4,
        w.clone(),
        3,
        8,
        0.5,
        1e-5,
    );
    add(
        "sf/lax/act-long".into(),
        act.clone(),
        3,
        w.clone(),
        3,
        8,
        0.5,
        1e-5,
    );
    add(
        "sf/lax/w-short".into(),
        act.clone(),
        4,
        w[..13].to_vec(),
        3,
        8,
        0.5,
        1e-5,
    );
    for alpha in [1.5f32, -0.5, f32::NAN] {
        add(
            format!("sf/alpha-out-of-range/{alpha}"),
            act.clone(),
            4,
            w.clone(),
            3,
            8,
            alpha,
            1e-5,
        );
    }
    for eps in [-1.0f32, f32::NAN, f32::INFINITY] {
        add(
            format!("sf/eps-out-of-range/{eps}"),
            act.clone(),
            4,
            w.clone(),
            3,
            8,
            0.5,
            eps,
        );
    }
    cases
}

pub fn apply_cases(set: Set, derived: Vec<ApplyCase>) -> Vec<ApplyCase> {
    // Smooths the smaller inputs (the file stays small; large smoothing is
    // covered by apply/large-1024x384).
    let limit = if set == Set::Full { 65_536 } else { 256 };
    let mut cases: Vec<ApplyCase> = derived
        .into_iter()
        .filter(|c| c.data.len() <= limit)
        .collect();
    let mut rng = Rng::for_case("apply/special-factors");
    let data = Dist::Normal(1.0).sample(&mut rng, 4 * 8, 8);
    let special = vec![
        0.0f32,
        -0.0,
        -2.0,
        f32::from_bits(1),
        f32::INFINITY,
        f32::NAN,
        f32::NEG_INFINITY,
        3e38,
    ];
    cases.push(ApplyCase {
        name: "apply/special-factors".into(),
        data: data.clone(),
        rows: 4,
        inf: 8,
        factors: special,
    });
    let mut with_special_data = data.clone();
    with_special_data[1] = f32::NAN;
    with_special_data[10] = f32::INFINITY;
    with_special_data[20] = f32::from_bits(3);
    with_special_data[30] = -0.0;
    cases.push(ApplyCase {
        name: "apply/special-data".into(),
        data: with_special_data,
        rows: 4,
        inf: 8,
        factors: Dist::LogUniform(-20, 20).sample(&mut rng, 8, 8),
    });
    if set == Set::Full {
        let name = "apply/large-1024x384".to_string();
        let mut rng = Rng::for_case(&name);
        cases.push(ApplyCase {
            data: act_dist().sample(&mut rng, 1024 * 384, 384),
            factors: Dist::LogUniform(-10, 10)
                .sample(&mut rng, 384, 384)
                .into_iter()
                .map(f32::abs)
                .collect(),
            name,
            rows: 1024,
            inf: 384,
        });
    }
    // Errors: FeatureDimMismatch is checked before ShapeMismatch.
    for (len, rows, inf, sf) in [
        (12usize, 3usize, 4usize, 3usize), // factors short
        (12, 3, 4, 5),                     // factors long
        (0, 0, 4, 0),                      // no factors for 4 features
        (11, 3, 4, 4),                     // data short
        (13, 3, 4, 4),                     // data long
        (11, 3, 4, 3),                     // both wrong: factors first
        (5, 0, 4, 4),                      // data for zero rows
        (3, 1, 0, 0),                      // zero features, data present
    ] {
        let name = format!("apply/error/len{len}-{rows}x{inf}-sf{sf}");
        let mut rng = Rng::for_case(&name);
        cases.push(ApplyCase {
            data: Dist::Normal(1.0).sample(&mut rng, len, inf),
            factors: Dist::Uniform(2.0).sample(&mut rng, sf, sf),
            name,
            rows,
            inf,
        });
    }
    cases
}

#[derive(Default)]
pub struct SfFile {
    names: Vec<String>,
    act: Ragged<f32>,
    w: Ragged<f32>,
    shape: Vec<i64>,
    config: Vec<f32>,
    factors: Ragged<f32>,
}

impl SfFile {
    pub fn write(&self, npz: &mut Npz) {
        names(npz, "sf.names", &self.names);
        self.act.write(npz, "sf.act");
        self.w.write(npz, "sf.w");
        npz.add("sf.shape", &self.shape, &[self.names.len(), 3]);
        npz.add("sf.config", &self.config, &[self.names.len(), 2]);
        self.factors.write(npz, "sf.factors");
        let default = r::SmoothQuantConfig::default_alpha();
        npz.add_1d("sf.default_config", &[default.alpha, default.epsilon]);
    }
}

/// `SmoothQuantConfig::new` (alpha clamped) and `default_alpha`.
pub fn run_config(rep: &mut Report) {
    let alphas = [0.0f32, 0.5, 1.0, 0.3, -0.5, 1.5, f32::NAN, f32::INFINITY];
    let cfg = configs(0)[0];
    for alpha in alphas {
        let (rc, dc) = (
            r::SmoothQuantConfig::new(alpha),
            d::SmoothQuantConfig::new(alpha),
        );
        rep.count("smooth_config", false);
        let diff = diff_f32(
            "(alpha, epsilon)",
            &[rc.alpha, rc.epsilon],
            &[dc.alpha, dc.epsilon],
            None,
        );
        rep.check("smooth_config", &format!("new({alpha})"), &cfg, diff);
    }
    let (rc, dc) = (
        r::SmoothQuantConfig::default_alpha(),
        d::SmoothQuantConfig::default_alpha(),
    );
    rep.count("smooth_config", true);
    let diff = diff_f32(
        "(alpha, epsilon)",
        &[rc.alpha, rc.epsilon],
        &[dc.alpha, dc.epsilon],
        None,
    );
    rep.check("smooth_config", "default_alpha()", &cfg, diff);
}

/// Runs the factor cases; returns, for each case with consistent lengths,
/// its activations and its weights with the reference's factors, to smooth.
pub fn run_factors(
    cases: &[SfCase],
    rep: &mut Report,
    mut file: Option<&mut SfFile>,
) -> Vec<ApplyCase> {
    let mut to_apply = Vec::new();
    for c in cases {
        let rcfg = r::SmoothQuantConfig {
            alpha: c.alpha,
            epsilon: c.eps,
        };
        let dcfg = d::SmoothQuantConfig {
            alpha: c.alpha,
            epsilon: c.eps,
        };
        let rf = r::compute_smooth_factors(&c.act, &c.w, c.inf, c.tokens, c.out, &rcfg);
        rep.count("compute_smooth_factors", c.py());
        for cfg in configs(c.act.len().max(c.w.len())) {
            activate(cfg);
            let diff = match guarded(|| {
                d::compute_smooth_factors(&c.act, &c.w, c.inf, c.tokens, c.out, &dcfg)
            }) {
                Ok(df) => diff_f32("factors", &rf, &df, None),
                Err(e) => Some(e),
            };
            rep.check("compute_smooth_factors", &c.name, &cfg, diff);
        }
        if c.py() {
            to_apply.push(ApplyCase {
                name: format!("{}/act", c.name),
                data: c.act.clone(),
                rows: c.tokens,
                inf: c.inf,
                factors: rf.clone(),
            });
            to_apply.push(ApplyCase {
                name: format!("{}/w", c.name),
                data: c.w.clone(),
                rows: c.out,
                inf: c.inf,
                factors: rf.clone(),
            });
        }
        if let Some(f) = file.as_deref_mut().filter(|_| c.py()) {
            f.names.push(c.name.clone());
            f.act.push(&c.act);
            f.w.push(&c.w);
            f.shape
                .extend([c.tokens as i64, c.out as i64, c.inf as i64]);
            f.config.extend([c.alpha, c.eps]);
            f.factors.push(&rf);
        }
    }
    to_apply
}

#[derive(Default)]
pub struct ApplyFile {
    names: Vec<String>,
    data: Ragged<f32>,
    shape: Vec<i64>,
    factors: Ragged<f32>,
    div: Ragged<f32>,
    mul: Ragged<f32>,
    err: Vec<i64>,
}

impl ApplyFile {
    pub fn write(&self, npz: &mut Npz) {
        names(npz, "ap.names", &self.names);
        self.data.write(npz, "ap.data");
        npz.add("ap.shape", &self.shape, &[self.names.len(), 2]);
        self.factors.write(npz, "ap.factors");
        self.div.write(npz, "ap.div");
        self.mul.write(npz, "ap.mul");
        npz.add("ap.err", &self.err, &[self.names.len(), 3]);
    }
}

pub fn run_apply(cases: &[ApplyCase], rep: &mut Report, mut file: Option<&mut ApplyFile>) {
    for c in cases {
        let (rows, inf, f) = (c.rows, c.inf, &c.factors[..]);
        let mut rdiv = c.data.clone();
        let rdiv_res = r::smooth_activations(&mut rdiv, f, rows, inf);
        let mut rmul = c.data.clone();
        let rmul_res = r::smooth_weights(&mut rmul, f, rows, inf);
        let is_err = rdiv_res.is_err();
        for op in ["smooth_activations", "smooth_weights"] {
            rep.count(if is_err { "smooth_errors" } else { op }, c.py());
        }
        for cfg in configs(c.data.len()) {
            activate(cfg);
            // In place (the reference's signature) and into a new buffer.
            let mut ddiv = c.data.clone();
            let res = guarded(|| d::smooth_activations(&mut ddiv, f, rows, inf));
            let diff = match res {
                Ok(res) => diff_result("smooth_activations", &rdiv_res, &res, |_, _| {
                    diff_f32("smoothed", &rdiv, &ddiv, Some(&c.data))
                }),
                Err(e) => Some(e),
            };
            rep.check("smooth_activations", &c.name, &cfg, diff);
            let mut dmul = c.data.clone();
            let res = guarded(|| d::smooth_weights(&mut dmul, f, rows, inf));
            let diff = match res {
                Ok(res) => diff_result("smooth_weights", &rmul_res, &res, |_, _| {
                    diff_f32("smoothed", &rmul, &dmul, Some(&c.data))
                }),
                Err(e) => Some(e),
            };
            rep.check("smooth_weights", &c.name, &cfg, diff);
            if !is_err {
                let mut out = vec![0.0f32; c.data.len()];
                let diff = match d::smooth_activations_into(&c.data, f, rows, inf, &mut out) {
                    Ok(()) => diff_f32("smooth_activations_into", &rdiv, &out, Some(&c.data)),
                    Err(e) => Some(format!("smooth_activations_into: error {e:?}")),
                };
                rep.check("smooth_activations", &c.name, &cfg, diff);
                let diff = match d::smooth_weights_into(&c.data, f, rows, inf, &mut out) {
                    Ok(()) => diff_f32("smooth_weights_into", &rmul, &out, Some(&c.data)),
                    Err(e) => Some(format!("smooth_weights_into: error {e:?}")),
                };
                rep.check("smooth_weights", &c.name, &cfg, diff);
            }
        }
        if let Some(file) = file.as_deref_mut().filter(|_| c.py()) {
            file.names.push(c.name.clone());
            file.data.push(&c.data);
            file.shape.extend([rows as i64, inf as i64]);
            file.factors.push(f);
            match (&rdiv_res, &rmul_res) {
                (Ok(()), Ok(())) => {
                    file.div.push(&rdiv);
                    file.mul.push(&rmul);
                    file.err.extend([0, 0, 0]);
                }
                (Err(e), _) | (_, Err(e)) => {
                    file.div.push(&[]);
                    file.mul.push(&[]);
                    let (code, a, b) = ErrKey::of_ref(e).code();
                    file.err.extend([code as i64, a, b]);
                }
            }
        }
    }
}
