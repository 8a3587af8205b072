//! Int8 weights packed once for the broadcast W8A8 kernel.
//!
//! Layout: panels of [`PANEL_ROWS`] weight rows; within a panel, for each
//! step of 4 columns, the 64 rows' 4 bytes one after the other
//! (`[k4][64][4]`), columns past `k` and rows past `n` zero. The kernel
//! ([`simd::panel_w8a8`]) loads 16 rows x 4 columns per 512-bit register and
//! broadcasts each token's 4 bytes against them, so each token byte is
//! loaded once per 64 rows (once per 4 in the row-major GEMM's tiles): about
//! half the load bandwidth per multiply-add, which is what the row-major
//! tile runs short of (docs/performance-notes.md, Session 14). The tokens
//! are the unsigned side, `a + 128`, and each row's sum corrects for it:
//! `sum a*w = sum (a+128)*w - 128 * sum w`, exact in wrapping i32 whenever
//! the true sum fits, as every sum of `k < EXACT_I32_TOTAL` products does.
//! Results equal [`crate::w8a8_matmul_into`]'s on the unpacked weights, bit
//! for bit.
//!
//! ```
//! use dynquant::packed::{w8a8_matmul_packed_into, PackedInt8Weights};
//! use dynquant::{quantize_weights_int8, w8a8_matmul_into, ActQuant};
//!
//! let (n, k, m) = (70, 9, 3); // a partial panel and a partial column step
//! let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 8.0).collect();
//! let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.7).sin()).collect();
//! let (w_i8, scales) = quantize_weights_int8(&w, n, k)?;
//! let packed = PackedInt8Weights::pack(&w_i8, n, k)?; // once, ahead of time
//! assert_eq!(packed.unpack(), w_i8);
//!
//! let mut y = vec![0.0f32; m * n];
//! w8a8_matmul_packed_into(&x, m, &packed, &scales, None, ActQuant::PER_TOKEN, &mut y)?;
//! let mut want = vec![0.0f32; m * n];
//! w8a8_matmul_into(&x, m, &w_i8, &scales, None, ActQuant::PER_TOKEN, &mut want)?;
//! assert!(y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
//! # Ok::<(), dynquant::DynQuantError>(())
//! ```

use crate::error::{checked_size, try_vec};
use crate::huge_pages;
use crate::matmul::{check_bias_output_and_scales, w8a8_matmul_into, ActQuant, QuantizedActs};
use crate::parallel::{DisjointOut, RowBlocks};
use crate::simd::{self, EXACT_I32_TOTAL};
use crate::DynQuantError;
use core::cell::RefCell;

/// Weight rows per panel.
pub const PANEL_ROWS: usize = 64;

/// Int8 weights `[n, k]` packed for [`w8a8_matmul_packed_into`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackedInt8Weights {
    n: usize,
    k: usize,
    data: Vec<i8>,
    row_sums: Vec<i32>,
}

impl PackedInt8Weights {
    /// Packs the row-major int8 weights `w` (`n` rows of `k`).
    pub fn pack(w: &[i8], n: usize, k: usize) -> Result<Self, DynQuantError> {
        let expected = checked_size(n, k, "weights")?;
        if w.len() != expected {
            return Err(DynQuantError::ShapeMismatch {
                expected,
                actual: w.len(),
            });
        }
        let k4 = k.div_ceil(4);
        let panels = n.div_ceil(PANEL_ROWS);
        let len = checked_size(panels * PANEL_ROWS, 4 * k4, "packed weights")?;
        // On huge pages, as the row-major weights are (`huge_pages`): at a
        // few tokens the panels stream from memory, and on 4 KiB pages the
        // prefetchers restart every 16 column steps of a panel.
        let mut data = huge_pages::try_vec(len, 0i8)?;
        let mut row_sums = try_vec(n, 0i32)?;
        if k > 0 {
            for (p, (panel, sums)) in data
                .chunks_exact_mut(PANEL_ROWS * 4 * k4)
                .zip(row_sums.chunks_mut(PANEL_ROWS))
                .enumerate()
            {
                pack_panel(&w[p * PANEL_ROWS * k..], k, sums, panel);
            }
        }
        Ok(PackedInt8Weights {
            n,
            k,
            data,
            row_sums,
        })
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Input columns.
    pub fn cols(&self) -> usize {
        self.k
    }

    /// Bytes held: the packed panels and the row sums.
    pub fn nbytes(&self) -> usize {
        self.data.len() + 4 * self.row_sums.len()
    }

    /// The row-major weights back, exactly.
    pub fn unpack(&self) -> Vec<i8> {
        let k4 = self.k.div_ceil(4);
        let mut w = vec![0i8; self.n * self.k];
        for (r, row) in w.chunks_exact_mut(self.k.max(1)).enumerate() {
            let base = (r / PANEL_ROWS) * PANEL_ROWS * 4 * k4 + (r % PANEL_ROWS) * 4;
            for (c, v) in row.iter_mut().enumerate() {
                *v = self.data[base + (c / 4) * PANEL_ROWS * 4 + c % 4];
            }
        }
        w
    }

    fn panel(&self, p: usize) -> &[i8] {
        let size = PANEL_ROWS * 4 * self.k.div_ceil(4);
        &self.data[p * size..(p + 1) * size]
    }
}

/// Packs the first `sums.len()` (at most 64) rows of the row-major `w`
/// (`k > 0` columns each) into `panel` (`256 * ceil(k / 4)` bytes, zero
/// where there is no weight) and writes each row's wrapping sum to `sums`.
fn pack_panel(w: &[i8], k: usize, sums: &mut [i32], panel: &mut [i8]) {
    let rows = sums.len();
    let k4 = k.div_ceil(4);
    assert!(
        rows <= PANEL_ROWS && w.len() >= rows * k && panel.len() == PANEL_ROWS * 4 * k4,
        "pack_panel: shapes"
    );
    if let Some(simd_sums) = simd::pack_panel(&w[..rows * k], k, panel) {
        sums.copy_from_slice(&simd_sums[..rows]);
        return;
    }
    panel.fill(0);
    for (r, (row, sum)) in w.chunks_exact(k).zip(sums.iter_mut()).enumerate() {
        for (s, four) in row.chunks(4).enumerate() {
            let at = s * PANEL_ROWS * 4 + r * 4;
            panel[at..at + four.len()].copy_from_slice(four);
        }
        *sum = row
            .iter()
            .map(|&v| i32::from(v))
            .fold(0i32, i32::wrapping_add);
    }
}

/// Where the panel GEMM finds its panels.
#[derive(Clone, Copy)]
pub(crate) enum Panels<'a> {
    /// Packed once ahead.
    Packed(&'a PackedInt8Weights),
    /// Row-major `[n, k]` weights, each panel packed by the task that takes
    /// it, into that thread's buffer (in L2 while the tokens stream by).
    RowMajor(&'a [i8]),
}

thread_local! {
    /// Each thread's panel, packed from row-major weights, reused from call
    /// to call up to [`MAX_KEPT_PANEL`] bytes.
    static PANEL: RefCell<Vec<i8>> = const { RefCell::new(Vec::new()) };
}

/// Larger panels (rows of more than 65536 columns) are freed after use
/// rather than kept by the thread.
const MAX_KEPT_PANEL: usize = 4 << 20;

/// [`crate::w8a8_matmul_into`] on packed weights: the same checks, errors
/// and bits. Without the AVX-512 panel kernel ([`simd::panel_kernel_available`])
/// or for `k` too long for i32 sums it unpacks the weights and runs the
/// row-major GEMM (correct, not faster).
pub fn w8a8_matmul_packed_into(
    x: &[f32],
    m: usize,
    weights: &PackedInt8Weights,
    weight_scales: &[f32],
    bias: Option<&[f32]>,
    act: ActQuant,
    out: &mut [f32],
) -> Result<(), DynQuantError> {
    let (n, k) = (weights.n, weights.k);
    if !simd::panel_kernel_available() || k >= EXACT_I32_TOTAL || m == 0 || k == 0 {
        return w8a8_matmul_into(x, m, &weights.unpack(), weight_scales, bias, act, out);
    }
    for (expected, actual) in [
        (checked_size(m, k, "activations")?, x.len()),
        (n, weight_scales.len()),
    ] {
        if expected != actual {
            return Err(DynQuantError::ShapeMismatch { expected, actual });
        }
    }
    check_bias_output_and_scales(m, weight_scales, bias, out.len())?;
    panel_gemm(
        x,
        m,
        n,
        k,
        Panels::Packed(weights),
        weight_scales,
        bias,
        act,
        out,
    )
}

/// The panel GEMM once the arguments are checked (`m > 0`, `0 < k <
/// EXACT_I32_TOTAL`): [`w8a8_matmul_packed_into`], and the row-major GEMM's
/// panel form ([`crate::matmul::GemmForm::Panel`]), where each 64-row panel
/// is packed on the fly by the thread that multiplies it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn panel_gemm(
    x: &[f32],
    m: usize,
    n: usize,
    k: usize,
    panels: Panels<'_>,
    weight_scales: &[f32],
    bias: Option<&[f32]>,
    act: ActQuant,
    out: &mut [f32],
) -> Result<(), DynQuantError> {
    let k4 = k.div_ceil(4);
    let acts = if act.per_token {
        QuantizedActs::per_token(x, m, k, act, k)?
    } else {
        QuantizedActs::per_tensor(x, m, k, act, k)?
    };
    // The tokens as unsigned bytes, `a + 128`, each padded to 4 * k4 (the
    // padding meets zero weights).
    let stride = 4 * k4;
    let mut u = try_vec(checked_size(m, stride, "tokens")?, 0u8)?;
    for (dst, src) in u.chunks_exact_mut(stride).zip(acts.q.chunks_exact(k)) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = (s as u8) ^ 0x80;
        }
    }
    let out = DisjointOut::new(out);
    let panel_bytes = PANEL_ROWS * stride;
    let multiply = |p: usize, panel: &[i8], row_sums: &[i32]| {
        let j0 = p * PANEL_ROWS;
        let rows = row_sums.len();
        // The panel's per-row data, zero past its last row.
        let mut offsets = [0i32; PANEL_ROWS];
        let mut ws = [0.0f32; PANEL_ROWS];
        let mut b = [0.0f32; PANEL_ROWS];
        for r in 0..rows {
            offsets[r] = row_sums[r].wrapping_mul(128);
            ws[r] = weight_scales[j0 + r];
            b[r] = bias.map_or(0.0, |bias| bias[j0 + r]);
        }
        let finish = simd::PanelFinish {
            offsets: &offsets,
            weight_scales: &ws,
            bias: bias.map(|_| &b),
        };
        let group = TokenGroup {
            panel,
            k4,
            finish: &finish,
            u: &u,
            scales: &acts.scales,
        };
        // SAFETY: panel p's rows j0..j0 + rows of every token belong to
        // this task alone (RowBlocks hands out each panel once), and each
        // token's run is borrowed for one kernel call at a time.
        let run = |i: usize| unsafe { out.run_mut(i * n + j0, rows) };
        let mut t0 = 0;
        while t0 < m {
            match m - t0 {
                1 => group.run::<1>(t0, run),
                2 => group.run::<2>(t0, run),
                3 => group.run::<3>(t0, run),
                _ => group.run::<4>(t0, run),
            }
            t0 += 4;
        }
    };
    let count = n.div_ceil(PANEL_ROWS);
    RowBlocks::units(count, m.saturating_mul(n).saturating_mul(k) / 4).run(|ps| {
        for p in ps {
            let rows = PANEL_ROWS.min(n - p * PANEL_ROWS);
            match panels {
                Panels::Packed(weights) => {
                    let sums = &weights.row_sums[p * PANEL_ROWS..p * PANEL_ROWS + rows];
                    multiply(p, weights.panel(p), sums);
                }
                Panels::RowMajor(w) => PANEL.with_borrow_mut(|panel| {
                    panel.resize(panel_bytes, 0);
                    let mut sums = [0i32; PANEL_ROWS];
                    pack_panel(&w[p * PANEL_ROWS * k..], k, &mut sums[..rows], panel);
                    multiply(p, panel, &sums[..rows]);
                    if panel_bytes > MAX_KEPT_PANEL {
                        *panel = Vec::new();
                    }
                }),
            }
        }
    });
    Ok(())
}

/// One panel's products with runs of tokens.
struct TokenGroup<'a> {
    panel: &'a [i8],
    k4: usize,
    finish: &'a simd::PanelFinish<'a>,
    /// The tokens as unsigned bytes, `4 * k4` each.
    u: &'a [u8],
    scales: &'a [f32],
}

impl TokenGroup<'_> {
    /// Tokens `t0 .. t0 + MR`, each into its output run `run(token)`.
    fn run<'o, const MR: usize>(&self, t0: usize, run: impl Fn(usize) -> &'o mut [f32]) {
        let stride = 4 * self.k4;
        let u: [&[u8]; MR] =
            core::array::from_fn(|t| &self.u[(t0 + t) * stride..(t0 + t + 1) * stride]);
        let ts: [f32; MR] = core::array::from_fn(|t| self.scales[t0 + t]);
        let mut out: [&mut [f32]; MR] = core::array::from_fn(|t| run(t0 + t));
        simd::panel_w8a8::<MR>(self.panel, self.k4, &u, self.finish, &ts, &mut out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simd::scalar;
    use crate::test_rng::xorshift;

    fn weights(n: usize, k: usize, seed: u64) -> Vec<i8> {
        let mut rng = xorshift(seed);
        (0..n * k)
            .map(|i| match i % 7 {
                0 => -128,
                1 => 127,
                _ => (rng() >> 24) as i8,
            })
            .collect()
    }

    fn activations(m: usize, k: usize, seed: u64) -> Vec<f32> {
        let mut rng = xorshift(seed);
        (0..m * k)
            .map(|i| {
                let v = ((rng() >> 40) as f32 / (1u64 << 24) as f32) - 0.5;
                // An outlier column and an exact .5 tie now and then.
                if i % 97 == 3 {
                    40.0 * v
                } else if i % 89 == 0 {
                    0.5
                } else {
                    v
                }
            })
            .collect()
    }

    #[test]
    fn pack_round_trips_and_pads_with_zeros() {
        // k a multiple of 64 with full panels: the AVX-512 transpose where it runs.
        for (n, k) in [
            (1, 1),
            (3, 5),
            (64, 8),
            (65, 4),
            (130, 37),
            (7, 0),
            (128, 64),
            (130, 192),
            (64, 4096),
        ] {
            let w = weights(n, k, (n * 31 + k) as u64);
            let p = PackedInt8Weights::pack(&w, n, k).unwrap();
            assert_eq!(p.unpack(), w, "n={n} k={k}");
            assert_eq!(p.data.len(), n.div_ceil(64) * 64 * 4 * k.div_ceil(4));
            let nonzero = p.data.iter().filter(|&&v| v != 0).count();
            assert_eq!(nonzero, w.iter().filter(|&&v| v != 0).count());
            for (r, row) in w.chunks_exact(k.max(1)).enumerate().take(n) {
                let want: i64 = row.iter().map(|&v| i64::from(v)).sum();
                assert_eq!(i64::from(p.row_sums[r]), want);
            }
        }
        assert!(matches!(
            PackedInt8Weights::pack(&[0; 5], 2, 3),
            Err(DynQuantError::ShapeMismatch {
                expected: 6,
                actual: 5
            })
        ));
    }

    /// Large packed weights sit on memory advised for huge pages, as the
    /// row-major weights from `quantize_weights_int8` do (x86-64 Linux,
    /// where the kernel takes the advice; see `huge_pages`' own test).
    #[test]
    #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
    fn large_packed_weights_are_advised_for_huge_pages() {
        let (n, k) = (1024, 8192); // 8 MiB packed
        let p = PackedInt8Weights::pack(&vec![3i8; n * k], n, k).unwrap();
        let middle = p.data.as_ptr() as usize + p.data.len() / 2;
        let flags = crate::huge_pages::vm_flags(middle).expect("the panels' mapping in smaps");
        let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled");
        if thp.is_ok_and(|mode| !mode.contains("[never]")) {
            assert!(
                flags.split_whitespace().any(|f| f == "hg"),
                "VmFlags {flags}"
            );
        }
        assert!(p.data.iter().step_by(4096).all(|&v| v == 3));
    }

    #[test]
    fn panel_kernel_equals_its_scalar_definition() {
        for k4 in [1, 2, 7, 64, 257] {
            let panel = weights(64, 4 * k4, k4 as u64);
            let mut rng = xorshift(99 + k4 as u64);
            let toks: Vec<Vec<u8>> = (0..4)
                .map(|t| {
                    (0..4 * k4)
                        .map(|i| {
                            if (i + t) % 5 == 0 {
                                255
                            } else {
                                (rng() >> 30) as u8
                            }
                        })
                        .collect()
                })
                .collect();
            // Offsets up to the i32 extremes (the subtraction wraps), scales
            // from subnormal to huge (products round, overflow to inf), sums
            // past 2^24 at the longer k4 (the conversion rounds, to even).
            let offsets: [i32; 64] = core::array::from_fn(|r| match r % 9 {
                0 => i32::MIN,
                1 => i32::MAX,
                _ => (rng() >> 32) as i32 >> (r % 24),
            });
            let ws: [f32; 64] = core::array::from_fn(|r| match r % 11 {
                0 => 1e-40,
                1 => 3e38,
                2 => 0.0,
                _ => ((rng() >> 40) as f32 + 1.0) * 1e-9,
            });
            let bias: [f32; 64] = core::array::from_fn(|r| r as f32 * 0.375 - 7.0);
            let ts = [0.013f32, 2.5e-3, 1.0, 7.75e-5];
            // The kernel and its twin on the panel's first `rows` rows; the
            // output's cells past them must stay untouched.
            fn both<const MR: usize>(
                panel: &[i8],
                k4: usize,
                u: &[&[u8]; MR],
                finish: &simd::PanelFinish<'_>,
                ts: &[f32; MR],
                rows: usize,
            ) {
                let run = |kernel: &dyn Fn(&mut [&mut [f32]; MR])| {
                    let mut cells = vec![[f32::NAN; 65]; MR];
                    let mut it = cells.iter_mut();
                    let mut out: [&mut [f32]; MR] =
                        core::array::from_fn(|_| &mut it.next().unwrap()[..rows]);
                    kernel(&mut out);
                    cells
                };
                let got = run(&|out| simd::panel_w8a8(panel, k4, u, finish, ts, out));
                let want = run(&|out| scalar::panel_w8a8(panel, k4, u, finish, ts, out));
                for (g, w) in got.iter().zip(&want) {
                    let bits = |v: &[f32]| v.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(g), bits(w), "k4={k4} MR={MR} rows={rows}");
                    assert!(
                        g[rows..].iter().all(|y| y.is_nan()),
                        "a store past row {rows}"
                    );
                }
            }
            for b in [None, Some(&bias)] {
                let finish = simd::PanelFinish {
                    offsets: &offsets,
                    weight_scales: &ws,
                    bias: b,
                };
                let u: [&[u8]; 4] = core::array::from_fn(|t| &toks[t][..]);
                let u3: [&[u8]; 3] = core::array::from_fn(|t| &toks[t + 1][..]);
                for rows in [64, 63, 48, 17, 16, 1, 0] {
                    both::<4>(&panel, k4, &u, &finish, &ts, rows);
                    both::<3>(&panel, k4, &u3, &finish, &[ts[1], ts[2], ts[3]], rows);
                    for (t, u1) in toks.iter().enumerate() {
                        both::<1>(&panel, k4, &[&u1[..]], &finish, &[ts[t]], rows);
                    }
                }
            }
        }
    }

    #[test]
    fn packed_matmul_equals_the_row_major_gemm_bit_for_bit() {
        let bias_of = |n: usize| (0..n).map(|j| j as f32 * 0.25 - 3.0).collect::<Vec<f32>>();
        for (m, n, k) in [
            (1, 1, 1),
            (1, 64, 4),
            (2, 65, 5),
            (5, 130, 384),
            (9, 64, 31),
            (17, 200, 129),
            (4, 3, 4096),
        ] {
            let w = weights(n, k, (m * 7 + n * 3 + k) as u64);
            let x = activations(m, k, (m + n + k) as u64);
            let s: Vec<f32> = (0..n).map(|j| 1e-3 * (1 + j % 13) as f32).collect();
            let p = PackedInt8Weights::pack(&w, n, k).unwrap();
            let bias = bias_of(n);
            for act in [ActQuant::PER_TOKEN, ActQuant::PER_TENSOR] {
                for b in [None, Some(&bias[..])] {
                    let mut want = vec![0.0f32; m * n];
                    w8a8_matmul_into(&x, m, &w, &s, b, act, &mut want).unwrap();
                    let mut got = vec![f32::NAN; m * n];
                    w8a8_matmul_packed_into(&x, m, &p, &s, b, act, &mut got).unwrap();
                    let bits = |v: &[f32]| v.iter().map(|y| y.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "m={m} n={n} k={k} {act:?} bias={}",
                        b.is_some()
                    );
                }
            }
        }
    }

    #[test]
    fn packed_matmul_errors_name_the_shapes() {
        let p = PackedInt8Weights::pack(&[1; 8], 2, 4).unwrap();
        let run = |x: &[f32], m: usize, s: &[f32], out: &mut [f32]| {
            w8a8_matmul_packed_into(x, m, &p, s, None, ActQuant::PER_TOKEN, out)
        };
        let mut out = [0.0; 2];
        assert!(matches!(
            run(&[1.0; 3], 1, &[1.0; 2], &mut out),
            Err(DynQuantError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            run(&[1.0; 4], 1, &[1.0; 3], &mut out),
            Err(DynQuantError::ShapeMismatch { .. })
        ));
        assert!(matches!(
            run(&[1.0; 4], 1, &[1.0, f32::NAN], &mut out),
            Err(DynQuantError::NonFiniteArgument { .. })
        ));
        assert!(run(&[f32::NAN, 1.0, 1.0, 1.0], 1, &[1.0; 2], &mut out).is_err());
        assert!(run(&[1.0, 2.0, 3.0, 4.0], 1, &[1.0; 2], &mut out).is_ok());
        let mut want = [0.0; 2];
        let x = [1.0, 2.0, 3.0, 4.0];
        w8a8_matmul_into(
            &x,
            1,
            &[1; 8],
            &[1.0; 2],
            None,
            ActQuant::PER_TOKEN,
            &mut want,
        )
        .unwrap();
        assert_eq!(out, want);
    }
}
