//! What every check shares: scale modes in both crates' types, the kernel
//! and thread configurations dynquant runs under, the tally, and the
//! comparisons (bits, error variants, tolerances).

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

use dynquant as d;
use oxibonsai_model::dynamic_quant as r;

/// Which case set to build.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Set {
    /// A few hundred cases, small inputs: committed for `make test`.
    Small,
    /// The whole set (`make crosscheck`).
    Full,
}

/// A scale mode, convertible to either crate's.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    MaxAbs,
    Pct(f32),
}

impl Mode {
    pub fn r(self) -> r::DynamicScaleMode {
        match self {
            Mode::MaxAbs => r::DynamicScaleMode::MaxAbs,
            Mode::Pct(p) => r::DynamicScaleMode::Percentile(p),
        }
    }

    pub fn d(self) -> d::DynamicScaleMode {
        match self {
            Mode::MaxAbs => d::DynamicScaleMode::MaxAbs,
            Mode::Pct(p) => d::DynamicScaleMode::Percentile(p),
        }
    }

    /// Accepted by dynquant's checked (`try_`) forms and by Python: the
    /// reference clamps any p, dynquant's Python layer wants p in (0, 1].
    pub fn checked_ok(self) -> bool {
        match self {
            Mode::MaxAbs => true,
            Mode::Pct(p) => p > 0.0 && p <= 1.0,
        }
    }

    pub fn tag(self) -> String {
        match self {
            Mode::MaxAbs => "maxabs".into(),
            Mode::Pct(p) => format!("p{p}"),
        }
    }

    /// The file's encoding: NaN for MaxAbs, else p.
    pub fn code(self) -> f32 {
        match self {
            Mode::MaxAbs => f32::NAN,
            Mode::Pct(p) => p,
        }
    }
}

pub fn all_finite(x: &[f32]) -> bool {
    x.iter().all(|v| v.is_finite())
}

/// A dynquant configuration: kernel path and thread count (0 = default).
#[derive(Clone, Copy)]
pub struct Cfg {
    pub isa: d::simd::Isa,
    pub threads: usize,
}

impl Cfg {
    pub fn label(&self) -> String {
        if self.threads == 0 {
            format!("kernel {}", self.isa.name())
        } else {
            format!("kernel {}, {} threads", self.isa.name(), self.threads)
        }
    }
}

/// Work at or above which dynquant's kernels split across threads.
pub const PARALLEL_WORK: usize = 2 * d::parallel::GRAIN;

static THREADS: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The configurations to run a case of `work` elements under: every kernel
/// path this CPU has; above the parallel threshold, with 1 and 3 threads
/// (serial and split paths), else the default pool.
pub fn configs(work: usize) -> Vec<Cfg> {
    let threads: &[usize] = if work >= PARALLEL_WORK { &[1, 3] } else { &[0] };
    let mut out = Vec::new();
    for isa in d::simd::supported() {
        for &t in threads {
            out.push(Cfg { isa, threads: t });
        }
    }
    out
}

/// Makes `cfg` the active dynquant configuration.
pub fn activate(cfg: Cfg) {
    d::simd::set_isa(cfg.isa).expect("set_isa on a supported path");
    if THREADS.swap(cfg.threads, Ordering::Relaxed) != cfg.threads {
        d::parallel::set_num_threads(cfg.threads).expect("set_num_threads");
    }
}

/// Runs a dynquant call, turning a panic into a failure message.
pub fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|e| {
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "?".into());
        format!("dynquant panicked: {msg}")
    })
}

pub fn fmt_f32(v: f32) -> String {
    format!("{v:e} ({:#010x})", v.to_bits())
}

/// A case's name for messages, with its input when that is short.
pub fn label(name: &str, x: &[f32]) -> String {
    if x.len() <= 12 {
        let vals: Vec<String> = x.iter().map(|&v| fmt_f32(v)).collect();
        format!("{name}, input [{}]", vals.join(", "))
    } else {
        name.to_string()
    }
}

/// `None` when `a` and `b` have the same bits, else where they first differ.
pub fn diff_f32(what: &str, a: &[f32], b: &[f32], input: Option<&[f32]>) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!(
            "{what}: length {} (reference) vs {} (dynquant)",
            a.len(),
            b.len()
        ));
    }
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits())?;
    let count = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.to_bits() != y.to_bits())
        .count();
    let at = match input {
        Some(x) if i < x.len() => format!(", input[{i}] = {}", fmt_f32(x[i])),
        _ => String::new(),
    };
    Some(format!(
        "{what}[{i}]: reference {}, dynquant {}{at} ({count} of {} differ)",
        fmt_f32(a[i]),
        fmt_f32(b[i]),
        a.len()
    ))
}

pub fn diff_i8(what: &str, a: &[i8], b: &[i8], input: Option<&[f32]>) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!(
            "{what}: length {} (reference) vs {} (dynquant)",
            a.len(),
            b.len()
        ));
    }
    let i = a.iter().zip(b).position(|(x, y)| x != y)?;
    let count = a.iter().zip(b).filter(|(x, y)| x != y).count();
    let at = match input {
        Some(x) if i < x.len() => format!(", input[{i}] = {}", fmt_f32(x[i])),
        _ => String::new(),
    };
    Some(format!(
        "{what}[{i}]: reference {}, dynquant {}{at} ({count} of {} differ)",
        a[i],
        b[i],
        a.len()
    ))
}

pub fn diff_scalar_f32(what: &str, a: f32, b: f32) -> Option<String> {
    (a.to_bits() != b.to_bits())
        .then(|| format!("{what}: reference {}, dynquant {}", fmt_f32(a), fmt_f32(b)))
}

/// An error as (variant, fields), the same for both crates.
#[derive(Debug, PartialEq, Clone)]
pub struct ErrKey {
    pub variant: &'static str,
    pub fields: Vec<u64>,
}

pub const ERR_SHAPE: u8 = 1;
pub const ERR_EMPTY: u8 = 2;
pub const ERR_FEATURE: u8 = 3;

impl ErrKey {
    pub fn of_ref(e: &r::DynQuantError) -> ErrKey {
        match *e {
            r::DynQuantError::ShapeMismatch { expected, actual } => ErrKey {
                variant: "ShapeMismatch",
                fields: vec![expected as u64, actual as u64],
            },
            r::DynQuantError::EmptyInput => ErrKey {
                variant: "EmptyInput",
                fields: vec![],
            },
            r::DynQuantError::InvalidAlpha(a) => ErrKey {
                variant: "InvalidAlpha",
                fields: vec![a.to_bits() as u64],
            },
            r::DynQuantError::FeatureDimMismatch {
                in_features,
                sf_len,
            } => ErrKey {
                variant: "FeatureDimMismatch",
                fields: vec![in_features as u64, sf_len as u64],
            },
        }
    }

    pub fn of_dq(e: &d::DynQuantError) -> ErrKey {
        match e {
            d::DynQuantError::ShapeMismatch { expected, actual } => ErrKey {
                variant: "ShapeMismatch",
                fields: vec![*expected as u64, *actual as u64],
            },
            d::DynQuantError::EmptyInput => ErrKey {
                variant: "EmptyInput",
                fields: vec![],
            },
            d::DynQuantError::InvalidAlpha(a) => ErrKey {
                variant: "InvalidAlpha",
                fields: vec![a.to_bits() as u64],
            },
            d::DynQuantError::FeatureDimMismatch {
                in_features,
                sf_len,
            } => ErrKey {
                variant: "FeatureDimMismatch",
                fields: vec![*in_features as u64, *sf_len as u64],
            },
            other => ErrKey {
                variant: "dynquant-only variant",
                fields: vec![],
            }
            .with_note(other),
        }
    }

    fn with_note(self, e: &d::DynQuantError) -> ErrKey {
        eprintln!("  (dynquant returned {e:?}, a variant the reference does not have)");
        self
    }

    /// The file's encoding: (code, field0, field1).
    pub fn code(&self) -> (u8, i64, i64) {
        let f = |i: usize| self.fields.get(i).map_or(-1, |&v| v as i64);
        let code = match self.variant {
            "ShapeMismatch" => ERR_SHAPE,
            "EmptyInput" => ERR_EMPTY,
            "FeatureDimMismatch" => ERR_FEATURE,
            v => panic!("no file code for {v}"),
        };
        (code, f(0), f(1))
    }
}

/// Compares two `Result`s: same error key, or both Ok and `same` on the values.
pub fn diff_result<T, U>(
    what: &str,
    reference: &Result<T, r::DynQuantError>,
    dynquant: &Result<U, d::DynQuantError>,
    same: impl FnOnce(&T, &U) -> Option<String>,
) -> Option<String> {
    match (reference, dynquant) {
        (Ok(a), Ok(b)) => same(a, b),
        (Err(a), Err(b)) => {
            let (ka, kb) = (ErrKey::of_ref(a), ErrKey::of_dq(b));
            (ka != kb).then(|| format!("{what}: reference error {a:?}, dynquant error {b:?}"))
        }
        (Ok(_), Err(b)) => Some(format!("{what}: reference Ok, dynquant error {b:?}")),
        (Err(a), Ok(_)) => Some(format!("{what}: reference error {a:?}, dynquant Ok")),
    }
}

/// How a toleranced value (mean, std_dev, MAE) compared.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Tol {
    /// Same bits.
    Exact,
    /// Within the relative tolerance of the reference.
    Within,
    /// Farther from the reference, but closer to the exact (f64) value than
    /// the reference's sequential f32 sum is.
    MoreAccurate,
}

/// Relative tolerance between dynquant and the reference.
pub const RTOL: f64 = 1e-3;
/// How close dynquant must be to the exact value when it is farther than
/// [`RTOL`] from the reference.
pub const RTOL_EXACT: f64 = 1e-6;

/// How far dynquant may be from the exact value: [`RTOL_EXACT`], or one
/// f32 spacing at the exact value (for subnormal results).
fn exact_bound(exact: f64, magnitude: f64) -> f64 {
    let e = (exact.abs() as f32).min(f32::MAX);
    let ulp = (f32::from_bits(e.to_bits() + 1) - e) as f64;
    (RTOL_EXACT * exact.abs().max(magnitude)).max(ulp)
}

/// Compares a toleranced value: `magnitude` is the data's own scale (mean
/// |x|), used when the value itself is near 0.
/// `Ok` holds how it compared and the difference relative to the scale the
/// tolerance applies to.
pub fn tolerance(
    reference: f32,
    dynquant: f32,
    exact: f64,
    magnitude: f64,
) -> Result<(Tol, f64), String> {
    if reference.to_bits() == dynquant.to_bits() {
        return Ok((Tol::Exact, 0.0));
    }
    let (a, b) = (reference as f64, dynquant as f64);
    if !a.is_finite() || !b.is_finite() {
        if (a.is_nan() && b.is_nan()) || a == b {
            return Ok((Tol::Exact, 0.0));
        }
        // The reference's f32 sum overflowed (or met inf - inf) where the
        // exact value is finite and dynquant has it.
        if b.is_finite() && exact.is_finite() && (b - exact).abs() <= exact_bound(exact, magnitude)
        {
            return Ok((Tol::MoreAccurate, f64::INFINITY));
        }
        return Err(format!(
            "reference {}, dynquant {} (exact {exact:e})",
            fmt_f32(reference),
            fmt_f32(dynquant)
        ));
    }
    if a == b {
        return Ok((Tol::Exact, 0.0)); // +0.0 and -0.0
    }
    let scale = a.abs().max(b.abs()).max(magnitude);
    let rel = (a - b).abs() / scale;
    if rel <= RTOL {
        return Ok((Tol::Within, rel));
    }
    let (ea, eb) = ((a - exact).abs(), (b - exact).abs());
    if eb <= exact_bound(exact, magnitude) && eb < ea {
        return Ok((Tol::MoreAccurate, rel));
    }
    Err(format!(
        "reference {}, dynquant {}: relative difference {:.3e} > {RTOL:e}, exact (f64) {exact:e}",
        fmt_f32(reference),
        fmt_f32(dynquant),
        (a - b).abs() / scale
    ))
}

/// The tally of a run.
#[derive(Default)]
pub struct Report {
    /// Cases compared per operation (each under every configuration).
    pub cases: BTreeMap<&'static str, usize>,
    /// Of those, cases that exist only in Rust (not written for Python).
    pub rust_only: BTreeMap<&'static str, usize>,
    /// Individual comparisons made (cases x configurations x entry points).
    pub checks: usize,
    pub failures: Vec<String>,
    pub tol: BTreeMap<&'static str, [usize; 3]>,
    pub max_rel: f64,
    pub max_rel_at: String,
    pub notes: Vec<String>,
}

impl Report {
    pub fn count(&mut self, op: &'static str, in_file: bool) {
        *self.cases.entry(op).or_default() += 1;
        if !in_file {
            *self.rust_only.entry(op).or_default() += 1;
        }
    }

    /// Records one comparison; `diff` is `None` when it matched.
    pub fn check(&mut self, op: &str, case: &str, cfg: &Cfg, diff: Option<String>) {
        self.checks += 1;
        if let Some(msg) = diff {
            let line = format!("MISMATCH {op} [{case}] ({}): {msg}", cfg.label());
            eprintln!("{line}");
            self.failures.push(line);
        }
    }

    pub fn check_tol(
        &mut self,
        op: &'static str,
        case: &str,
        cfg: &Cfg,
        what: &str,
        res: Result<(Tol, f64), String>,
    ) {
        self.checks += 1;
        match res {
            Ok((t, rel)) => {
                let slot = self.tol.entry(op).or_default();
                slot[t as usize] += 1;
                if t == Tol::Within && rel > self.max_rel {
                    self.max_rel = rel;
                    self.max_rel_at = format!("{op} {what} [{case}]");
                }
            }
            Err(msg) => {
                let line = format!("MISMATCH {op} [{case}] ({}): {what}: {msg}", cfg.label());
                eprintln!("{line}");
                self.failures.push(line);
            }
        }
    }
}

/// The mean and population standard deviation in f64 (the "exact" values
/// the toleranced comparisons measure against).
pub fn exact_stats<'a>(parts: impl Iterator<Item = &'a [f32]> + Clone) -> (f64, f64, f64) {
    let (mut n, mut sum, mut abs) = (0usize, 0.0f64, 0.0f64);
    for p in parts.clone() {
        for &v in p {
            n += 1;
            sum += v as f64;
            abs += (v as f64).abs();
        }
    }
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    let mean = sum / n as f64;
    let mut sq = 0.0f64;
    for p in parts {
        for &v in p {
            sq += (v as f64 - mean) * (v as f64 - mean);
        }
    }
    (mean, (sq / n as f64).sqrt(), abs / n as f64)
}

/// The exact MAE of `original` against `deq` over their common length, with
/// each difference taken in f32 (as the reference does) and summed in f64.
pub fn exact_mae(original: &[f32], deq: &[f32]) -> f64 {
    let n = original.len().min(deq.len());
    if n == 0 {
        return 0.0;
    }
    original[..n]
        .iter()
        .zip(&deq[..n])
        .map(|(&o, &q)| (o - q).abs() as f64)
        .sum::<f64>()
        / n as f64
}
