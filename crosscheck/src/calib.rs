//! `CalibStats::collect`: min, max, p99 and suggested_scale exactly; mean
//! and std_dev within a tolerance (the reference sums in sequential f32).

use dynquant as d;
use oxibonsai_model::dynamic_quant as r;

use crate::common::*;
use crate::npz::{names, Npz, Ragged};
use crate::quant::f32_index_divergences;
use crate::rng::{Dist, Rng};

pub struct CalibCase {
    pub name: String,
    pub batches: Vec<Vec<f32>>,
}

pub fn cases(set: Set) -> Vec<CalibCase> {
    let mut cases = Vec::new();
    let mut add = |name: String, batches: Vec<Vec<f32>>| cases.push(CalibCase { name, batches });
    let mut sizes = vec![1usize, 2, 3, 99, 100, 101, 1000, 4097];
    let mut ds = vec![
        Dist::Normal(1.0),
        Dist::Heavy(1.0),
        Dist::Offset {
            offset: 100.0,
            sigma: 0.01,
        },
        Dist::Sparse(200),
        Dist::LogUniform(-149, 127),
    ];
    if set == Set::Full {
        sizes.extend([7, 64, 65, 199, 200, 201, 4096, 65_537, 131_073, 1_000_003]);
        ds.extend([
            Dist::Uniform(1.0),
            Dist::Const(0.1),
            Dist::Offset {
                offset: 1e4,
                sigma: 1.0,
            },
            Dist::Outliers {
                sigma: 1.0,
                every: 64,
                factor: 100.0,
            },
        ]);
    }
    for &n in &sizes {
        for dist in &ds {
            let few = match set {
                Set::Small => n > 1000 && !matches!(dist, Dist::Normal(_)),
                Set::Full => {
                    n > 65_536
                        && !matches!(dist, Dist::Normal(_) | Dist::Const(_) | Dist::Offset { .. })
                }
            };
            if few {
                continue;
            }
            let name = format!("cs/{}/n{n}", dist.tag());
            let x = dist.sample(&mut Rng::for_case(&name), n, 384);
            add(name, vec![x]);
        }
    }
    // Many batches of varied sizes (the p99 selection spans them).
    for (count, max_len) in [(3usize, 10usize), (50, 100), (700, 12)] {
        let name = format!("cs/multi/{count}x{max_len}");
        let mut rng = Rng::for_case(&name);
        let batches = (0..count)
            .map(|_| {
                let n = rng.below(max_len as u64 + 1) as usize;
                Dist::Heavy(1.0).sample(&mut rng, n, n)
            })
            .collect();
        add(name, batches);
    }
    // Where the f32 p99 index differs from an f64 one.
    let hi = if set == Set::Full { 200_000 } else { 5000 };
    let want = if set == Set::Full { 4 } else { 1 };
    for n in f32_index_divergences(0.99, 100, hi, want) {
        let name = format!("cs/p99-f32-index/n{n}");
        let x = Dist::Normal(1.0).sample(&mut Rng::for_case(&name), n, n);
        add(name, vec![x]);
    }
    add("cs/no-batches".into(), vec![]);
    add("cs/empty-batches".into(), vec![vec![], vec![]]);
    add("cs/zeros".into(), vec![vec![0.0, -0.0, 0.0], vec![-0.0]]);
    // p99 is 0 but max > 0: the max-abs fallback.
    let mut x = vec![0.0f32; 990];
    x.extend((1..=10).map(|k| k as f32 * -0.25));
    add("cs/p99-zero".into(), vec![x]);
    add(
        "cs/negative".into(),
        vec![vec![-1.0, -2.5, -0.125], vec![-7.0]],
    );
    add("cs/one".into(), vec![vec![-3.5]]);
    add(
        "cs/subnormal".into(),
        vec![(1..50)
            .map(|k| f32::from_bits(k * 3) * if k % 2 == 0 { 1.0 } else { -1.0 })
            .collect()],
    );
    // f32 overflow of the reference's sum (the exact mean is finite).
    add(
        "cs/huge".into(),
        vec![vec![f32::MAX, f32::MAX, 3e38, -1e38]],
    );
    // Infinities: the reference has a result (NaN is left out: its sort
    // has none).
    let base = Dist::Normal(1.0).sample(&mut Rng::for_case("cs/inf"), 200, 200);
    for (i, extra) in [
        vec![f32::INFINITY],
        vec![f32::NEG_INFINITY],
        vec![f32::INFINITY, f32::NEG_INFINITY],
        vec![f32::INFINITY; 5],
    ]
    .into_iter()
    .enumerate()
    {
        let mut x = base.clone();
        x.extend(extra);
        add(format!("cs/inf-{i}"), vec![x]);
    }
    add("cs/inf-only".into(), vec![vec![f32::INFINITY]]);
    cases
}

#[derive(Default)]
pub struct CsFile {
    names: Vec<String>,
    batches: Ragged<f32>,
    case_batches: Vec<i64>,
    stats: Vec<f32>,
    exact: Vec<f64>,
}

impl CsFile {
    pub fn write(&self, npz: &mut Npz) {
        names(npz, "cs.names", &self.names);
        self.batches.write(npz, "cs.batches");
        let mut off = vec![0i64];
        let mut total = 0;
        for &n in &self.case_batches {
            total += n;
            off.push(total);
        }
        npz.add_1d("cs.case_batches_off", &off);
        npz.add("cs.stats", &self.stats, &[self.names.len(), 6]);
        npz.add("cs.exact", &self.exact, &[self.names.len(), 3]);
    }
}

fn fields(s: &r::CalibStats) -> [f32; 6] {
    [s.min, s.max, s.mean, s.std_dev, s.p99, s.suggested_scale]
}

fn dfields(s: &d::CalibStats) -> [f32; 6] {
    [s.min, s.max, s.mean, s.std_dev, s.p99, s.suggested_scale]
}

const NAMES: [&str; 6] = ["min", "max", "mean", "std_dev", "p99", "suggested_scale"];

pub fn run(cases: &[CalibCase], rep: &mut Report, mut file: Option<&mut CsFile>) {
    for c in cases {
        let rs = fields(&r::CalibStats::collect(&c.batches));
        let (mean, std, mag) = exact_stats(c.batches.iter().map(|b| &b[..]));
        rep.count("calib_stats", true);
        let n: usize = c.batches.iter().map(Vec::len).sum();
        let finite = c.batches.iter().all(|b| all_finite(b));
        for cfg in configs(n) {
            activate(cfg);
            let mut results = vec![(
                "collect",
                guarded(|| dfields(&d::CalibStats::collect(&c.batches))),
            )];
            let parts: Vec<&[f32]> = c.batches.iter().map(|b| &b[..]).collect();
            let mut policies = vec![d::NanPolicy::Reference];
            if finite {
                policies.push(d::NanPolicy::Raise);
            }
            for policy in policies {
                let what = if policy == d::NanPolicy::Raise {
                    "try_collect(Raise)"
                } else {
                    "try_collect(Reference)"
                };
                results.push((
                    what,
                    d::CalibStats::try_collect(&parts, policy)
                        .map(|s| dfields(&s))
                        .map_err(|e| format!("{what}: error {e:?}")),
                ));
            }
            for (what, res) in results {
                let ds = match res {
                    Ok(ds) => ds,
                    Err(e) => {
                        rep.check("calib_stats", &c.name, &cfg, Some(e));
                        continue;
                    }
                };
                for i in [0, 1, 4, 5] {
                    rep.check(
                        "calib_stats",
                        &c.name,
                        &cfg,
                        diff_scalar_f32(&format!("{what}.{}", NAMES[i]), rs[i], ds[i]),
                    );
                }
                for (i, exact) in [(2, mean), (3, std)] {
                    let res = tolerance(rs[i], ds[i], exact, mag);
                    rep.check_tol("calib_stats", &c.name, &cfg, NAMES[i], res);
                }
            }
        }
        if let Some(f) = file.as_deref_mut() {
            f.names.push(c.name.clone());
            for b in &c.batches {
                f.batches.push(b);
            }
            f.case_batches.push(c.batches.len() as i64);
            f.stats.extend(rs);
            f.exact.extend([mean, std, mag]);
        }
    }
}
