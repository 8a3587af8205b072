//! Cross-check: runs every operation of the reference module
//! (`oxibonsai-model` 0.1.1, `dynamic_quant`, used as a dependency) and of
//! dynquant on the same deterministic inputs, and requires identical bits
//! (a tolerance only for mean, std_dev and MAE, which dynquant sums in f64).
//! dynquant runs under every kernel path this CPU has and, on large inputs,
//! with 1 and 3 threads.
//!
//! It also writes the inputs and the reference's outputs to an `.npz` that
//! `tests/test_crosscheck.py` runs through `import dynquant`.
//!
//! ```text
//! crosscheck [--small] [--out FILE.npz] [--case SUBSTRING]
//! ```

mod calib;
mod common;
mod matvec;
mod npz;
mod quant;
mod rng;
mod smooth;

use std::time::Instant;

use common::{Report, Set};

/// `arch-os-libc`, as the Python test computes it (`x86_64-linux-glibc`).
fn platform() -> String {
    let libc = if cfg!(target_env = "gnu") {
        "glibc"
    } else if cfg!(target_env = "musl") {
        "musl"
    } else {
        "other"
    };
    format!("{}-{}-{libc}", std::env::consts::ARCH, std::env::consts::OS)
}

fn usage() -> ! {
    eprintln!("usage: crosscheck [--small] [--out FILE.npz] [--case SUBSTRING]");
    std::process::exit(2);
}

fn main() {
    let mut set = Set::Full;
    let mut out: Option<String> = None;
    let mut filter: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--small" => set = Set::Small,
            "--out" => out = Some(args.next().unwrap_or_else(|| usage())),
            "--case" => filter = Some(args.next().unwrap_or_else(|| usage())),
            _ => usage(),
        }
    }
    let keep = |name: &str| filter.as_deref().is_none_or(|f| name.contains(f));
    let start = Instant::now();
    let mut rep = Report::default();
    let isas: Vec<&str> = dynquant::simd::supported()
        .iter()
        .map(|i| i.name())
        .collect();
    println!(
        "crosscheck: dynquant vs oxibonsai-model 0.1.1 dynamic_quant ({} set); dynquant kernels: {}",
        if set == Set::Small { "small" } else { "full" },
        isas.join(", ")
    );

    let mut pt_file = quant::PtFile::default();
    let mut pr_file = quant::PrFile::default();
    let mut sf_file = smooth::SfFile::default();
    let mut ap_file = smooth::ApplyFile::default();
    let mut mv_file = matvec::MvFile::default();
    let mut cs_file = calib::CsFile::default();
    let writing = out.is_some();

    let mut pt = quant::per_tensor_cases(set);
    pt.retain(|c| keep(&c.name));
    quant::run_per_tensor(&pt, &mut rep, writing.then_some(&mut pt_file));
    drop(pt);

    let mut pr = quant::per_row_cases(set);
    pr.retain(|c| keep(&c.name));
    quant::run_per_row(&pr, &mut rep, writing.then_some(&mut pr_file));
    drop(pr);

    if set == Set::Full && keep("pt/percentile-n2^24+1/p1") {
        quant::run_huge_percentile(&mut rep);
    }
    if keep("hand-built") {
        quant::run_hand_built(&mut rep);
    }

    if keep("smooth_config") {
        smooth::run_config(&mut rep);
    }
    let mut sf = smooth::factor_cases(set);
    sf.retain(|c| keep(&c.name));
    let derived = smooth::run_factors(&sf, &mut rep, writing.then_some(&mut sf_file));
    let mut ap = smooth::apply_cases(set, derived);
    ap.retain(|c| keep(&c.name));
    smooth::run_apply(&ap, &mut rep, writing.then_some(&mut ap_file));
    drop(sf);
    drop(ap);

    let mut mv = matvec::cases(set);
    mv.retain(|c| keep(&c.name));
    matvec::run(&mv, &mut rep, writing.then_some(&mut mv_file));
    drop(mv);

    let mut cs = calib::cases(set);
    cs.retain(|c| keep(&c.name));
    calib::run(&cs, &mut rep, writing.then_some(&mut cs_file));
    drop(cs);

    let checked = start.elapsed();
    if let Some(path) = &out {
        let mut z = npz::Npz::new(if set == Set::Small { 9 } else { 1 });
        z.add_1d("meta.version", &[1i64]);
        // Smoothing factors use the platform's powf: the Python test compares
        // them only on the platform that wrote the file.
        z.add_1d("meta.platform", platform().as_bytes());
        pt_file.write(&mut z);
        pr_file.write(&mut z);
        sf_file.write(&mut z);
        ap_file.write(&mut z);
        mv_file.write(&mut z);
        cs_file.write(&mut z);
        let bytes = z.finish();
        if let Some(dir) = std::path::Path::new(path).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).expect("creating the output directory");
            }
        }
        std::fs::write(path, &bytes).unwrap_or_else(|e| panic!("writing {path}: {e}"));
        let in_file: usize =
            rep.cases.values().sum::<usize>() - rep.rust_only.values().sum::<usize>();
        println!(
            "crosscheck: wrote {in_file} cases ({:.1} MB) to {path} for tests/test_crosscheck.py",
            bytes.len() as f64 / 1e6
        );
    }

    for note in &rep.notes {
        println!("note: {note}");
    }
    let total: usize = rep.cases.values().sum();
    let rust_only: usize = rep.rust_only.values().sum();
    println!("crosscheck: cases per operation (each under every kernel; large ones with 1 and 3 threads):");
    for (op, n) in &rep.cases {
        let ro = rep.rust_only.get(op).copied().unwrap_or(0);
        let tol = rep
            .tol
            .get(op)
            .map(|t| format!("  [toleranced values: {} exact, {} within {:e}, {} closer to exact than the reference]", t[0], t[1], common::RTOL, t[2]))
            .unwrap_or_default();
        println!(
            "  {op:<24} {n:>7}{}{tol}",
            if ro > 0 {
                format!(" ({ro} Rust only)")
            } else {
                String::new()
            }
        );
    }
    let by_op: Vec<String> = rep
        .cases
        .iter()
        .map(|(op, n)| format!("{op} {n}"))
        .collect();
    println!(
        "crosscheck: {} — {total} cases compared ({rust_only} Rust only), {} comparisons, {} mismatches, in {:.1} s; by operation: {}; largest relative difference of a toleranced value {:.2e} ({})",
        if rep.failures.is_empty() { "PASSED" } else { "FAILED" },
        rep.checks,
        rep.failures.len(),
        checked.as_secs_f64(),
        by_op.join(", "),
        rep.max_rel,
        rep.max_rel_at,
    );
    if !rep.failures.is_empty() {
        eprintln!(
            "crosscheck: {} mismatches (listed above; rerun one with --case NAME)",
            rep.failures.len()
        );
        std::process::exit(1);
    }
}
