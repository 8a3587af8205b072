//! W4A8 products: packed int4 weights (see [`crate::weights`] for the
//! layout) times dynamically quantized int8 activations. Nibbles are
//! unpacked inside the kernel, 32 at a time; the matrix is never expanded.

use core::ops::Range;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::error::{check_finite_argument, checked_size};
use crate::matmul::{ActQuant, QuantizedActs};
use crate::parallel::{DisjointOut, RowBlocks};
use crate::simd::{self, scalar::INF_BITS};
use crate::weights;
use crate::DynQuantError;

/// Shape of a packed int4 weight matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Int4Layout {
    /// Output features (rows).
    pub out_features: usize,
    /// Input features (columns before packing).
    pub in_features: usize,
    /// Columns per scale; `in_features` for one scale per row.
    pub group_size: usize,
}

impl Int4Layout {
    /// Packed bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.in_features.div_ceil(2)
    }

    /// Scales per row.
    pub fn groups(&self) -> usize {
        self.in_features.div_ceil(self.group_size.max(1))
    }
}

/// The quantized tokens as the W4A8 kernels read them.
#[derive(Clone, Copy)]
struct Int4Tokens<'a> {
    /// Token rows in column order (the scalar path).
    q: &'a [i8],
    /// The same rows in the packed order of the weights
    /// ([`weights::int4_packed_order`], the SIMD paths); `q` itself when
    /// `k % 64 != 0` (no SIMD path runs then).
    packed: &'a [i8],
    /// Per token and group, `8 * sum(a)` ([`simd::int4_group_sums`]).
    sums: &'a [i32],
}

/// Tokens per tile: each weight row's nibbles are unpacked once per segment
/// and used for this many tokens.
const TOKENS: usize = 4;

/// Bytes of weight rows (packed values and scales) a row block may take, so
/// that it stays in L2 while the tokens stream past.
const L2_BYTES: usize = 320 << 10;

/// Weight rows `rows` against tokens `m0 .. m0 + T`: sixteen rows a tile
/// while they last (one kernel call, one emit per token, for sixteen rows:
/// at MiniLM's 384 columns the per-tile work was a large part of the time),
/// then four (a last one to three rows are padded with copies of the last
/// row, whose extra results are dropped).
fn w4a8_rows<const T: usize>(
    packed: &[u8],
    scales: &[f32],
    layout: Int4Layout,
    q: Int4Tokens,
    m0: usize,
    rows: Range<usize>,
    emit: &impl Fn(usize, usize, &[f32]),
) {
    let mut j = rows.start;
    while j + 16 <= rows.end {
        w4a8_tile_rows::<16, T>(packed, scales, layout, q, m0, j, 16, emit);
        j += 16;
    }
    while j < rows.end {
        let live = (rows.end - j).min(4);
        w4a8_tile_rows::<4, T>(packed, scales, layout, q, m0, j, live, emit);
        j += 4;
    }
}

/// One tile of [`w4a8_rows`]: rows `j .. j + live` (`live <= R`; rows past
/// them repeat the last one and are dropped).
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)] // t: y[r][t] for every r
#[inline]
fn w4a8_tile_rows<const R: usize, const T: usize>(
    packed: &[u8],
    scales: &[f32],
    layout: Int4Layout,
    q: Int4Tokens,
    m0: usize,
    j: usize,
    live: usize,
    emit: &impl Fn(usize, usize, &[f32]),
) {
    let (k, rb, g) = (layout.in_features, layout.row_bytes(), layout.groups());
    let tokens: [&[i8]; T] = core::array::from_fn(|t| &q.q[(m0 + t) * k..(m0 + t + 1) * k]);
    let ordered: [&[i8]; T] = core::array::from_fn(|t| &q.packed[(m0 + t) * k..(m0 + t + 1) * k]);
    let sums: [&[i32]; T] = core::array::from_fn(|t| &q.sums[(m0 + t) * g..(m0 + t + 1) * g]);
    let row = |r: usize| j + r.min(live - 1);
    let w: [&[u8]; R] = core::array::from_fn(|r| &packed[row(r) * rb..(row(r) + 1) * rb]);
    let s: [&[f32]; R] = core::array::from_fn(|r| &scales[row(r) * g..(row(r) + 1) * g]);
    let y = simd::w4a8_tile_packed(&w, &s, &tokens, &ordered, &sums, layout.group_size);
    for t in 0..T {
        let run: [f32; R] = core::array::from_fn(|r| y[r][t]);
        emit(m0 + t, j, &run[..live]);
    }
}

/// Weight rows `rows` against all `m` tokens: tokens [`TOKENS`] at a time,
/// so the block of weight rows stays in cache while the tokens stream past.
#[allow(clippy::too_many_arguments)]
fn w4a8_block(
    packed: &[u8],
    scales: &[f32],
    layout: Int4Layout,
    q: Int4Tokens,
    m: usize,
    rows: Range<usize>,
    emit: &impl Fn(usize, usize, &[f32]),
) {
    // Sub-blocks of rows whose packed bytes and scales fit in L2 (the
    // caller's blocks count packed bytes only, not the scales).
    let row_bytes = layout.row_bytes() + 4 * layout.groups();
    let step = ((L2_BYTES / row_bytes.max(1)) / 4 * 4).max(4);
    let mut start = rows.start;
    while start < rows.end {
        let sub = start..(start + step).min(rows.end);
        let mut m0 = 0;
        while m0 + TOKENS <= m {
            w4a8_rows::<TOKENS>(packed, scales, layout, q, m0, sub.clone(), emit);
            m0 += TOKENS;
        }
        match m - m0 {
            3 => w4a8_rows::<3>(packed, scales, layout, q, m0, sub.clone(), emit),
            2 => w4a8_rows::<2>(packed, scales, layout, q, m0, sub.clone(), emit),
            1 => w4a8_rows::<1>(packed, scales, layout, q, m0, sub.clone(), emit),
            _ => {}
        }
        start = sub.end;
    }
}

/// Batched W4A8: `out[i, j] = y_ij * s_i (+ bias[j])` where `y_ij` adds up
/// in f32, in eight lanes by group index mod 8 and then a fixed-order lane
/// sum, each group's exact integer dot product times the group's scale (see
/// [`simd::w4a8_tile`]). With one group per row this equals W8A8 on the
/// unpacked weights, bit for bit. NaN or infinite `scales` or bias are
/// [`DynQuantError::NonFiniteArgument`] (whatever `act.policy`).
#[allow(clippy::too_many_arguments)]
pub fn w4a8_matmul_into(
    x: &[f32],
    m: usize,
    packed: &[u8],
    scales: &[f32],
    layout: Int4Layout,
    bias: Option<&[f32]>,
    act: ActQuant,
    out: &mut [f32],
) -> Result<(), DynQuantError> {
    let (n, k) = (layout.out_features, layout.in_features);
    if m > 0 && k == 0 {
        return Err(DynQuantError::EmptyInput);
    }
    if layout.group_size == 0 || k >= 1 << 20 {
        return Err(DynQuantError::InvalidArgument(format!(
            "W4A8 needs 0 < group_size and in_features < 2^20, got group_size {} and {k}",
            layout.group_size
        )));
    }
    for (expected, actual) in [
        (checked_size(m, k, "activations")?, x.len()),
        (
            checked_size(n, layout.row_bytes(), "packed bytes")?,
            packed.len(),
        ),
        (checked_size(n, layout.groups(), "scales")?, scales.len()),
        (n, bias.map_or(n, <[f32]>::len)),
        (checked_size(m, n, "outputs")?, out.len()),
    ] {
        if expected != actual {
            return Err(DynQuantError::ShapeMismatch { expected, actual });
        }
    }
    weights::check_int4_padding(packed, layout.in_features)?;
    check_finite_argument(bias.unwrap_or_default(), "bias")?;
    if m == 0 || n == 0 {
        return check_finite_argument(scales, "scales");
    }
    // Per token, the offset corrections of the int4 kernels (weights are
    // stored offset by 8) and, for the SIMD kernels, the token in the
    // weights' packed order.
    let with_sums = |acts: QuantizedActs| {
        let sums: Vec<i32> = acts
            .q
            .chunks(k)
            .flat_map(|t| simd::int4_group_sums(t, layout.group_size))
            .collect();
        // The reordered tokens start on a 64-byte line (an allocation 64
        // bytes longer, used from its first aligned byte): every 32-byte
        // load of them then stays within one cache line.
        let mut packed = Vec::new();
        let mut start = 0;
        if k.is_multiple_of(64) {
            packed = vec![0i8; acts.q.len() + 64];
            start = packed.as_ptr().align_offset(64).min(64);
            let ordered = &mut packed[start..start + acts.q.len()];
            for (t, p) in acts.q.chunks(k).zip(ordered.chunks_mut(k)) {
                weights::int4_packed_order(t, p);
            }
        }
        (acts, sums, packed, start)
    };
    let sink = DisjointOut::new(out);
    // The group scales are checked block by block, in parallel, just before
    // the block reads them (a separate serial pass over them cost W4A8 at
    // one token a third of its time); on a non-finite one the block stops,
    // and the first bad index is found afterwards.
    let scales_bad = AtomicBool::new(false);
    let block = |(acts, sums, order, start): &(QuantizedActs, Vec<i32>, Vec<i8>, usize),
                 rows: Range<usize>| {
        let groups = layout.groups();
        let block_scales = &scales[rows.start * groups..rows.end * groups];
        if simd::abs_max_bits(block_scales) >= INF_BITS {
            scales_bad.store(true, Ordering::Relaxed);
            return;
        }
        // Token i's results for weight rows j.. (at most sixteen): scaled
        // by the token's scale, plus the bias, written in one run.
        let emit = |i: usize, j: usize, ys: &[f32]| {
            let s = acts.scales[i];
            let mut v = [0.0f32; 16];
            for (o, &y) in v.iter_mut().zip(ys) {
                *o = y * s;
            }
            if let Some(b) = bias {
                for (o, &b) in v.iter_mut().zip(&b[j..j + ys.len()]) {
                    *o += b;
                }
            }
            // SAFETY: each (i, j..) is emitted once, by the task owning those rows.
            unsafe { sink.write_run(i * n + j, &v[..ys.len()]) }
        };
        let tokens = Int4Tokens {
            q: &acts.q,
            packed: if order.is_empty() {
                &acts.q
            } else {
                &order[*start..*start + acts.q.len()]
            },
            sums,
        };
        w4a8_block(packed, scales, layout, tokens, m, rows, &emit)
    };
    let blocks = if m == 1 {
        // One token is compute-bound here: fewer, larger tasks than
        // `RowBlocks::weight_rows` makes for streaming kernels.
        RowBlocks::one_token(n, k / 2, 16, 16)
    } else {
        RowBlocks::weight_rows(m, n, k / 2)
    };
    let ran = if act.per_token {
        // Quantized while the helper threads wake up.
        blocks.run_prepared(
            || QuantizedActs::per_token(x, m, k, act, k).map(with_sums),
            block,
        )
    } else {
        QuantizedActs::per_tensor(x, m, k, act, k).map(|acts| {
            let prepared = with_sums(acts);
            blocks.run(|rows| block(&prepared, rows));
        })
    };
    // Bad scales are reported before bad activations, as when the check
    // ran first.
    if ran.is_err() || scales_bad.load(Ordering::Relaxed) {
        check_finite_argument(scales, "scales")?;
    }
    ran
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matmul::w8a8_matmul_into;
    use crate::scale::NanPolicy;
    use crate::weights::{pack_int4, quantize_weights_int4, unpack_int4};

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 - 500.0) / 97.0)
            .collect()
    }

    /// The activation switch by hand, as in W8A8: a loud token (max 127,
    /// scale 1) and a quiet one ([1, 0.4]). Per token, the quiet token has
    /// scale 1/127 and values [127, 51]; per tensor it has the loud token's
    /// scale 1 and values [1, 0]. With one token the two modes agree.
    #[test]
    fn per_token_and_per_tensor_scales_by_hand() {
        let x = [127.0f32, -127.0, 1.0, 0.4];
        let packed = pack_int4(&[1, 0, 0, -8], 2).unwrap();
        let scales = [1.0f32, 0.5];
        let layout = Int4Layout {
            out_features: 2,
            in_features: 2,
            group_size: 2,
        };
        let run = |x: &[f32], act: ActQuant| {
            let mut y = vec![f32::NAN; x.len()];
            w4a8_matmul_into(x, x.len() / 2, &packed, &scales, layout, None, act, &mut y).unwrap();
            y
        };
        let loud = [127.0f32, (-127.0 * -8.0) * 0.5];
        let s1 = 1.0f32 / 127.0;
        let per_token = run(&x, ActQuant::PER_TOKEN);
        assert_eq!(
            per_token,
            vec![loud[0], loud[1], 127.0 * s1, ((51.0f32 * -8.0) * 0.5) * s1]
        );
        assert_eq!(
            run(&x, ActQuant::PER_TENSOR),
            vec![loud[0], loud[1], 1.0, 0.0]
        );
        for act in [ActQuant::PER_TOKEN, ActQuant::PER_TENSOR] {
            assert_eq!(run(&x[2..], act), per_token[2..].to_vec(), "{act:?}");
        }
    }

    #[test]
    fn non_finite_scales_and_bias_are_refused() {
        let (n, k, m) = (3, 64, 2);
        let (packed, scales) = quantize_weights_int4(&data(n * k, 1), n, k, Some(32)).unwrap();
        let layout = Int4Layout {
            out_features: n,
            in_features: k,
            group_size: 32,
        };
        let x = data(m * k, 3);
        let mut out = vec![0.0; m * n];
        let bias = [0.0f32, f32::INFINITY, f32::NAN];
        for bad in [f32::NAN, f32::NEG_INFINITY] {
            let mut s = scales.clone();
            s[4] = bad;
            for policy in [NanPolicy::Raise, NanPolicy::Reference] {
                let act = ActQuant {
                    policy,
                    ..ActQuant::PER_TOKEN
                };
                let err = w4a8_matmul_into(&x, m, &packed, &s, layout, None, act, &mut out);
                assert!(matches!(
                    err,
                    Err(DynQuantError::NonFiniteArgument {
                        argument: "scales",
                        index: 4,
                        ..
                    })
                ));
                let err = w4a8_matmul_into(&[], 0, &packed, &s, layout, None, act, &mut []);
                assert!(matches!(
                    err,
                    Err(DynQuantError::NonFiniteArgument {
                        argument: "scales",
                        index: 4,
                        ..
                    })
                ));
                let b = Some(&bias[..]);
                let err = w4a8_matmul_into(&x, m, &packed, &scales, layout, b, act, &mut out);
                assert!(matches!(
                    err,
                    Err(DynQuantError::NonFiniteArgument { argument: "bias", index: 1, value })
                        if value == f32::INFINITY
                ));
            }
        }
    }

    /// The scales are checked block by block inside the parallel run: a bad
    /// one in any block, first or last, is found, whatever the token count
    /// and activation mode, and named before bad activations.
    #[test]
    fn non_finite_scales_in_any_block_are_refused() {
        let (n, k) = (2048, 256);
        let layout = Int4Layout {
            out_features: n,
            in_features: k,
            group_size: 32,
        };
        let (packed, scales) = quantize_weights_int4(&data(n * k, 5), n, k, Some(32)).unwrap();
        crate::parallel::set_num_threads(2).unwrap();
        for m in [1, 5] {
            let x = data(m * k, 6);
            let mut nan_x = x.clone();
            nan_x[0] = f32::NAN;
            let mut out = vec![0.0; m * n];
            for index in [0, scales.len() / 2 + 3, scales.len() - 1] {
                let mut s = scales.clone();
                s[index] = f32::INFINITY;
                for act in [ActQuant::PER_TOKEN, ActQuant::PER_TENSOR] {
                    for input in [&x, &nan_x] {
                        let err =
                            w4a8_matmul_into(input, m, &packed, &s, layout, None, act, &mut out);
                        assert!(
                            matches!(
                                err,
                                Err(DynQuantError::NonFiniteArgument { argument: "scales", index: i, .. })
                                    if i == index
                            ),
                            "m {m}, index {index}, {act:?}: {err:?}"
                        );
                    }
                }
            }
            // Finite scales, NaN activations: the activations' error.
            let err = w4a8_matmul_into(
                &nan_x,
                m,
                &packed,
                &scales,
                layout,
                None,
                ActQuant::PER_TOKEN,
                &mut out,
            );
            assert!(
                matches!(err, Err(DynQuantError::NonFinite { .. })),
                "{err:?}"
            );
        }
    }

    #[test]
    fn rows_packed_for_one_more_column_are_refused() {
        // 96 and 95 columns pack into the same 48 bytes a row.
        let (n, m) = (3, 2);
        let values: Vec<i8> = (0..n * 96).map(|i| (i % 15) as i8 - 7).collect();
        let packed96 = pack_int4(&values, 96).unwrap();
        let x = data(m * 95, 2);
        let mut out = vec![0.0; m * n];
        let layout = |k| Int4Layout {
            out_features: n,
            in_features: k,
            group_size: 32,
        };
        let scales = vec![0.5f32; n * 3];
        let err = w4a8_matmul_into(
            &x,
            m,
            &packed96,
            &scales,
            layout(95),
            None,
            ActQuant::PER_TOKEN,
            &mut out,
        )
        .unwrap_err();
        assert!(
            matches!(&err, DynQuantError::InvalidArgument(msg) if msg.contains("packed for 96 columns")),
            "{err:?}"
        );
        // One row is enough, whatever its extra column holds: every nibble
        // but 8 (the value 0), negative weights (nibbles below 8) included.
        for v in (-8i8..=7).filter(|&v| v != 0) {
            let mut row = vec![1i8; 96];
            row[95] = v;
            let mut y = vec![0.0; m];
            let one = Int4Layout {
                out_features: 1,
                ..layout(95)
            };
            let err = w4a8_matmul_into(
                &x,
                m,
                &pack_int4(&row, 96).unwrap(),
                &scales[..3],
                one,
                None,
                ActQuant::PER_TOKEN,
                &mut y,
            )
            .unwrap_err();
            assert!(
                matches!(&err, DynQuantError::InvalidArgument(msg) if msg.contains("packed row 0")),
                "last column {v}: {err:?}"
            );
        }
        // Packed for 95 columns (or with a zero last column), it runs.
        let values95: Vec<i8> = values.chunks(96).flat_map(|r| r[..95].to_vec()).collect();
        let packed95 = pack_int4(&values95, 95).unwrap();
        w4a8_matmul_into(
            &x,
            m,
            &packed95,
            &scales,
            layout(95),
            None,
            ActQuant::PER_TOKEN,
            &mut out,
        )
        .unwrap();
        let mut zero_last = values.clone();
        zero_last
            .iter_mut()
            .skip(95)
            .step_by(96)
            .for_each(|v| *v = 0);
        let mut out0 = vec![0.0; m * n];
        let packed0 = pack_int4(&zero_last, 96).unwrap();
        w4a8_matmul_into(
            &x,
            m,
            &packed0,
            &scales,
            layout(95),
            None,
            ActQuant::PER_TOKEN,
            &mut out0,
        )
        .unwrap();
        assert_eq!(out0, out);
    }

    #[test]
    fn one_group_equals_w8a8_on_unpacked_values() {
        for k in [96, 128, 640] {
            one_group_case(5, 9, k);
        }
        // Tiles of sixteen rows, then four, then a padded one.
        one_group_case(6, 37, 384);
        one_group_case(3, 50, 1024);
    }

    fn one_group_case(m: usize, n: usize, k: usize) {
        let x = data(m * k, 1);
        let values: Vec<i8> = (0..n * k).map(|i| ((i * 13 % 16) as i8) - 8).collect();
        let packed = pack_int4(&values, k).unwrap();
        let scales: Vec<f32> = (0..n).map(|j| 0.01 * (j + 1) as f32).collect();
        let layout = Int4Layout {
            out_features: n,
            in_features: k,
            group_size: k,
        };
        let mut y4 = vec![0.0; m * n];
        let mut y8 = vec![0.0; m * n];
        for act in [ActQuant::PER_TOKEN, ActQuant::PER_TENSOR] {
            w4a8_matmul_into(&x, m, &packed, &scales, layout, None, act, &mut y4).unwrap();
            w8a8_matmul_into(&x, m, &values, &scales, None, act, &mut y8).unwrap();
            assert_eq!(y4, y8);
        }
    }

    /// Every group form of the AVX2 kernel (32, 64, larger, one per row),
    /// with partial chunks of groups, token and row remainders, against the
    /// scalar definition.
    #[test]
    fn paths_agree_on_every_group_form() {
        for (k, groups) in [
            (384, vec![32, 64, 128, 192, 384]),
            (320, vec![32, 64, 320]),
            (1024, vec![32, 64, 128, 256, 512, 1024]),
            (64, vec![32, 64]),
            // Packed blocks of 256, 128 and 64 in one row; groups spanning
            // blocks and chunks made of several blocks.
            (448, vec![32, 64, 448]),
            (576, vec![32, 64, 192, 576]),
            (1536, vec![32, 64, 128, 192, 256, 768]),
            // Groups of 192 and 320 ending inside blocks, and one group
            // wholly inside a block's last lanes (192 at 576..768).
            (768, vec![192, 384]),
            (960, vec![192, 320, 960]),
        ] {
            for group in groups {
                for (m, n) in [(1, 4), (6, 7), (9, 5)] {
                    let x = data(m * k, k + group);
                    let w = data(n * k, 3 * k + group);
                    let (packed, scales) = quantize_weights_int4(&w, n, k, Some(group)).unwrap();
                    let layout = Int4Layout {
                        out_features: n,
                        in_features: k,
                        group_size: group,
                    };
                    let mut results = Vec::new();
                    for isa in simd::supported() {
                        simd::set_isa(isa).unwrap();
                        let mut y = vec![0.0; m * n];
                        let act = ActQuant::PER_TOKEN;
                        w4a8_matmul_into(&x, m, &packed, &scales, layout, None, act, &mut y)
                            .unwrap();
                        results.push(y.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
                    }
                    simd::set_isa(simd::best_supported()).unwrap();
                    assert!(
                        results.windows(2).all(|p| p[0] == p[1]),
                        "k {k} group {group} m {m} n {n}"
                    );
                }
            }
        }
    }

    /// The bias is added after the token scale: with it, every value is
    /// the bias-free value plus the bias, on every path (runs of four rows
    /// and a last partial run of three).
    #[test]
    fn bias_adds_to_the_scaled_result() {
        let (m, n, k) = (5, 7, 384);
        let x = data(m * k, 4);
        let w = data(n * k, 5);
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.37 - 1.1).collect();
        let (packed, scales) = quantize_weights_int4(&w, n, k, Some(32)).unwrap();
        let layout = Int4Layout {
            out_features: n,
            in_features: k,
            group_size: 32,
        };
        for isa in simd::supported() {
            simd::set_isa(isa).unwrap();
            let (mut plain, mut biased) = (vec![0.0; m * n], vec![0.0; m * n]);
            let act = ActQuant::PER_TOKEN;
            w4a8_matmul_into(&x, m, &packed, &scales, layout, None, act, &mut plain).unwrap();
            w4a8_matmul_into(
                &x,
                m,
                &packed,
                &scales,
                layout,
                Some(&bias),
                act,
                &mut biased,
            )
            .unwrap();
            for (i, (&p, &b)) in plain.iter().zip(&biased).enumerate() {
                assert_eq!(b.to_bits(), (p + bias[i % n]).to_bits(), "{isa:?} at {i}");
            }
        }
        simd::set_isa(simd::best_supported()).unwrap();
    }

    #[test]
    fn simd_and_scalar_paths_agree_with_groups() {
        let (m, n, k) = (3, 10, 128);
        let x = data(m * k, 2);
        let w = data(n * k, 3);
        let (packed, scales) = quantize_weights_int4(&w, n, k, Some(32)).unwrap();
        assert_eq!(unpack_int4(&packed, k).unwrap().len(), n * k);
        let layout = Int4Layout {
            out_features: n,
            in_features: k,
            group_size: 32,
        };
        let mut results = Vec::new();
        for isa in simd::supported() {
            simd::set_isa(isa).unwrap();
            let mut y = vec![0.0; m * n];
            w4a8_matmul_into(
                &x,
                m,
                &packed,
                &scales,
                layout,
                None,
                ActQuant::PER_TOKEN,
                &mut y,
            )
            .unwrap();
            results.push(y);
        }
        simd::set_isa(simd::best_supported()).unwrap();
        assert!(results.windows(2).all(|p| p[0] == p[1]));
    }
}
