//! `w8a8_matvec`: results and errors; and, past the reference's i32
//! accumulator (in > 132104 can overflow), dynquant against an exact i64 sum.

use dynquant as d;
use oxibonsai_model::dynamic_quant as r;

use crate::common::*;
use crate::npz::{names, Npz, Ragged};
use crate::rng::{Dist, Rng};

/// Columns up to which the reference's i32 sum cannot overflow:
/// 128 * 127 * 132104 < 2^31.
pub const I32_SAFE_IN: usize = 132_104;

pub struct MvCase {
    pub name: String,
    pub w: Vec<i8>,
    pub scales: Vec<f32>,
    pub act: Vec<f32>,
    pub out: usize,
    pub inn: usize,
    /// Past the i32 range: compared against an exact i64 sum, not the
    /// reference's own result.
    pub big: bool,
}

impl MvCase {
    /// Python derives `out` and `in` from a 2-D weight array.
    fn py(&self) -> bool {
        self.w.len() == self.out * self.inn
    }
}

#[derive(Clone, Copy)]
enum WPat {
    Any,
    AllMin,
    AllMax,
    Alternating,
    MostlyMin,
    Ramp,
}

fn weights(pat: WPat, rng: &mut Rng, n: usize) -> Vec<i8> {
    (0..n)
        .map(|i| match pat {
            WPat::Any => rng.i8_any(),
            WPat::AllMin => -128,
            WPat::AllMax => 127,
            WPat::Alternating => {
                if i % 2 == 0 {
                    -128
                } else {
                    127
                }
            }
            WPat::MostlyMin => {
                if rng.below(4) == 0 {
                    rng.i8_any()
                } else {
                    -128
                }
            }
            WPat::Ramp => (i % 256) as u8 as i8,
        })
        .collect()
}

fn scales(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| (1.0 + rng.unit()) * 0.004).collect()
}

pub fn cases(set: Set) -> Vec<MvCase> {
    let mut cases = Vec::new();
    let (outs, ins): (Vec<usize>, Vec<usize>) = match set {
        Set::Small => (
            vec![0, 1, 2, 3, 5, 8, 9],
            vec![1, 2, 3, 15, 16, 17, 31, 32, 33, 64, 65, 257],
        ),
        Set::Full => (
            vec![0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 33, 64],
            vec![
                1, 2, 3, 4, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 256,
                1000, 4096, 4097,
            ],
        ),
    };
    let dists = [
        Dist::Normal(1.0),
        Dist::Outliers {
            sigma: 1.0,
            every: 16,
            factor: 40.0,
        },
    ];
    for &o in &outs {
        for &i in &ins {
            for (k, dist) in dists.iter().enumerate() {
                let name = format!("mv/{o}x{i}/{}", dist.tag());
                let mut rng = Rng::for_case(&name);
                let pat = [WPat::Any, WPat::MostlyMin][k];
                cases.push(MvCase {
                    w: weights(pat, &mut rng, o * i),
                    scales: scales(&mut rng, o),
                    act: dist.sample(&mut rng, i, i),
                    name,
                    out: o,
                    inn: i,
                    big: false,
                });
            }
        }
    }
    let mut push = |name: &str, pat: WPat, act: Vec<f32>, out: usize, sc: Option<Vec<f32>>| {
        let name = format!("mv/{name}");
        let mut rng = Rng::for_case(&name);
        let inn = act.len();
        cases.push(MvCase {
            w: weights(pat, &mut rng, out * inn),
            scales: sc.unwrap_or_else(|| scales(&mut rng, out)),
            act,
            name,
            out,
            inn,
            big: inn > I32_SAFE_IN,
        })
    };
    // The largest sums the i32 reference holds; |acc| > 2^24 rounds in
    // `acc as f32`.
    let n = I32_SAFE_IN;
    push(
        "i32-edge/all-min-x-127",
        WPat::AllMin,
        vec![1.0; n],
        2,
        None,
    );
    push(
        "i32-edge/alternating",
        WPat::Alternating,
        vec![-3.0; n],
        2,
        None,
    );
    if set == Set::Full {
        let mut rng = Rng::for_case("mv/i32-edge/random");
        push(
            "i32-edge/random-mostly-min",
            WPat::MostlyMin,
            Dist::Uniform(1.0).sample(&mut rng, n, n),
            3,
            None,
        );
        let mut rng = Rng::for_case("mv/large");
        for (o, i) in [(4usize, 65_537usize), (64, 4096), (1000, 384), (3, 100_000)] {
            push(
                &format!("large-{o}x{i}"),
                WPat::Any,
                Dist::Heavy(1.0).sample(&mut rng, i, i),
                o,
                None,
            );
        }
    }
    // Past the reference's i32: dynquant must still be exact.
    push(
        "beyond-i32/all-min-x-127",
        WPat::AllMin,
        vec![1.0; 200_000],
        1,
        None,
    );
    push("beyond-i32/ramp", WPat::Ramp, vec![-2.0; 140_000], 2, None);
    if set == Set::Full {
        let mut rng = Rng::for_case("mv/beyond-i32/random");
        push(
            "beyond-i32/random",
            WPat::MostlyMin,
            Dist::Uniform(1.0).sample(&mut rng, 1 << 20, 1 << 20),
            3,
            None,
        );
    }
    // Special activations and scales.
    let mut rng = Rng::for_case("mv/special");
    let base = Dist::Normal(1.0).sample(&mut rng, 33, 33);
    push("zero-activation", WPat::Any, vec![0.0; 33], 3, None);
    let mut a = base.clone();
    a[5] = f32::INFINITY;
    push("inf-activation", WPat::Any, a, 3, None);
    let mut a = base.clone();
    a[7] = f32::NAN;
    a[20] = f32::NAN;
    push("nan-activation", WPat::Any, a, 3, None);
    push("all-nan-activation", WPat::Any, vec![f32::NAN; 9], 2, None);
    push(
        "special-weight-scales",
        WPat::Any,
        base.clone(),
        7,
        Some(vec![
            0.0,
            -0.5,
            f32::from_bits(1),
            f32::INFINITY,
            f32::NAN,
            3e38,
            -0.0,
        ]),
    );
    push("one-element", WPat::AllMin, vec![-0.7], 1, None);
    push(
        "subnormal-activation",
        WPat::Any,
        vec![f32::from_bits(70), -f32::from_bits(3)],
        2,
        None,
    );
    push(
        "huge-activation",
        WPat::AllMax,
        vec![f32::MAX, -f32::MAX, 1.0],
        2,
        Some(vec![3e38, 1.0]),
    );
    // Errors, in the reference's order: empty activation, activation
    // length, weight length, scale length.
    let mut err = |name: &str, w: usize, s: usize, a: usize, out: usize, inn: usize| {
        let name = format!("mv/error/{name}");
        let mut rng = Rng::for_case(&name);
        cases.push(MvCase {
            w: weights(WPat::Any, &mut rng, w),
            scales: scales(&mut rng, s),
            act: Dist::Normal(1.0).sample(&mut rng, a, a),
            name,
            out,
            inn,
            big: false,
        })
    };
    err("empty-activation-in0", 0, 2, 0, 2, 0);
    err("empty-activation-in3", 6, 2, 0, 2, 3);
    err("empty-activation-and-bad-weights", 5, 1, 0, 2, 3);
    err("activation-short", 10, 2, 4, 2, 5);
    err("activation-long", 10, 2, 6, 2, 5);
    err("activation-and-weights-wrong", 7, 1, 4, 2, 5);
    err("weights-short", 5, 2, 3, 2, 3);
    err("weights-long", 7, 2, 3, 2, 3);
    err("weights-and-scales-wrong", 7, 5, 3, 2, 3);
    err("scales-short", 6, 1, 3, 2, 3);
    err("scales-long", 6, 3, 3, 2, 3);
    err("no-outputs-with-scales", 0, 1, 3, 0, 3);
    err("no-outputs", 0, 0, 3, 0, 3);
    cases
}

#[derive(Default)]
pub struct MvFile {
    names: Vec<String>,
    w: Ragged<i8>,
    scales: Ragged<f32>,
    act: Ragged<f32>,
    shape: Vec<i64>,
    y: Ragged<f32>,
    err: Vec<i64>,
    big: Vec<u8>,
}

impl MvFile {
    pub fn write(&self, npz: &mut Npz) {
        names(npz, "mv.names", &self.names);
        self.w.write(npz, "mv.w");
        self.scales.write(npz, "mv.scales");
        self.act.write(npz, "mv.act");
        npz.add("mv.shape", &self.shape, &[self.names.len(), 2]);
        self.y.write(npz, "mv.y");
        npz.add("mv.err", &self.err, &[self.names.len(), 3]);
        npz.add_1d("mv.big", &self.big);
    }
}

/// The product with the reference's activation quantization and an exact
/// i64 sum: what the reference would give without i32 overflow.
fn exact_i64(c: &MvCase) -> Vec<f32> {
    let q = r::dynamic_quantize_int8(&c.act, r::DynamicScaleMode::MaxAbs);
    let s = q.scales[0];
    (0..c.out)
        .map(|o| {
            let row = &c.w[o * c.inn..(o + 1) * c.inn];
            let acc: i64 = row
                .iter()
                .zip(&q.data)
                .map(|(&w, &a)| w as i64 * a as i64)
                .sum();
            (acc as f32 * c.scales[o]) * s
        })
        .collect()
}

pub fn run(cases: &[MvCase], rep: &mut Report, mut file: Option<&mut MvFile>) {
    for c in cases {
        let (w, s, a, out, inn) = (&c.w[..], &c.scales[..], &c.act[..], c.out, c.inn);
        let expected: Result<Vec<f32>, r::DynQuantError> = if c.big {
            let exact = exact_i64(c);
            if !cfg!(debug_assertions) {
                // Informational: the reference's own (i32, wrapping) result.
                if let Ok(ry) = r::w8a8_matvec(w, s, a, out, inn) {
                    if let Some(o) = (0..out).find(|&o| ry[o].to_bits() != exact[o].to_bits()) {
                        rep.notes.push(format!(
                            "{}: the reference's i32 sum overflows: y[{o}] is {} with an exact \
                             (i64) sum, the reference gives {}",
                            c.name,
                            fmt_f32(exact[o]),
                            fmt_f32(ry[o])
                        ));
                    }
                }
            }
            Ok(exact)
        } else {
            r::w8a8_matvec(w, s, a, out, inn)
        };
        let op = match (&expected, c.big) {
            (Err(_), _) => "w8a8_matvec_errors",
            (Ok(_), true) => "w8a8_matvec_beyond_i32",
            (Ok(_), false) => "w8a8_matvec",
        };
        rep.count(op, c.py());
        let finite = all_finite(a);
        let name = label(&c.name, a);
        for cfg in configs(w.len().max(a.len())) {
            activate(cfg);
            let same = |ry: &Vec<f32>, dy: &Vec<f32>| diff_f32("y", ry, dy, None);
            let diff = match guarded(|| d::w8a8_matvec(w, s, a, out, inn)) {
                Ok(res) => diff_result("w8a8_matvec", &expected, &res, same),
                Err(e) => Some(e),
            };
            rep.check(op, &name, &cfg, diff);
            let mut policies = vec![d::NanPolicy::Reference];
            if finite {
                policies.push(d::NanPolicy::Raise);
            }
            for policy in policies {
                let res = d::try_w8a8_matvec(w, s, a, out, inn, policy);
                let diff = diff_result(
                    &format!("try_w8a8_matvec({policy:?})"),
                    &expected,
                    &res,
                    same,
                );
                rep.check(op, &name, &cfg, diff);
                let mut y = vec![0.0f32; out];
                let res = d::w8a8_matvec_into(w, s, a, inn, policy, &mut y).map(|()| y);
                let diff = diff_result(
                    &format!("w8a8_matvec_into({policy:?})"),
                    &expected,
                    &res,
                    same,
                );
                rep.check(op, &name, &cfg, diff);
            }
        }
        if let Some(f) = file.as_deref_mut().filter(|_| c.py()) {
            f.names.push(c.name.clone());
            f.w.push(w);
            f.scales.push(s);
            f.act.push(a);
            f.shape.extend([out as i64, inn as i64]);
            f.big.push(c.big as u8);
            match &expected {
                Ok(y) => {
                    f.y.push(y);
                    f.err.extend([0, 0, 0]);
                }
                Err(e) => {
                    f.y.push(&[]);
                    let (code, a, b) = ErrKey::of_ref(e).code();
                    f.err.extend([code as i64, a, b]);
                }
            }
        }
    }
}
