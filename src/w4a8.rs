//! W4A8 products: packed int4 weights (see [`crate::weights`] for the
//! layout) times dynamically quantized int8 activations. Nibbles are
//! unpacked inside the kernel, 32 at a time; the matrix is never expanded.
//!
//! Two forms, the same bits: the *tile* form reads the packed rows as they
//! are (eight f32 lanes of a row in one 256-bit register, summed across at
//! the end); the *panel* form (AVX-512 VNNI, from [`PANEL_MIN_TOKENS`]
//! tokens) regroups each 16 rows into a panel on the fly — each 4-byte
//! word of a row is one column octet, so a panel is a transpose of words
//! — and holds each of the eight lanes as a register of 16 rows.

use core::cell::RefCell;
use core::ops::Range;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::error::{check_finite_argument, checked_size};
use crate::huge_pages;
use crate::matmul::{gemm_form, ActQuant, GemmForm, QuantizedActs};
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

/// Tokens from which `Auto` takes the panel form (see the module notes):
/// each panel is regrouped once per call, so it must serve enough tokens.
/// Panel ÷ tile time on Zen 4 (2 threads): 16 tokens 0.76 at 1536 x 384,
/// 1.02 at 384 x 1536; 64 to 256 tokens 0.62–0.97; 8 tokens 0.87 at
/// 1536 x 384 but 1.5 at 4096 x 4096, where regrouping the 8 MB is most of
/// the call (hence [`PANEL_MIN_TOKENS_SMALL`]).
pub const PANEL_MIN_TOKENS: usize = 16;

/// Tokens from which `Auto` takes the panel form when the packed weights
/// take at most [`PANEL_SMALL_WEIGHTS`] bytes.
pub const PANEL_MIN_TOKENS_SMALL: usize = 8;

/// See [`PANEL_MIN_TOKENS_SMALL`].
pub const PANEL_SMALL_WEIGHTS: usize = 1 << 20;

/// Whether a product of `m` tokens takes the panel form: where the kernel
/// exists and the shape has whole octets per group (every SIMD shape has);
/// `GemmForm::Panel` forces it from one token, the tile forms refuse it.
fn panel_form(m: usize, layout: Int4Layout, form: GemmForm) -> bool {
    let (k, group) = (layout.in_features, layout.group_size);
    let shape = k.is_multiple_of(64) && group.is_multiple_of(8) && k.is_multiple_of(group);
    let small = layout.out_features.saturating_mul(layout.row_bytes()) <= PANEL_SMALL_WEIGHTS;
    let wanted = match form {
        GemmForm::Auto => m >= PANEL_MIN_TOKENS || (small && m >= PANEL_MIN_TOKENS_SMALL),
        GemmForm::Panel => true,
        GemmForm::Sign | GemmForm::Offset => false,
    };
    wanted && shape && simd::panel_kernel_available()
}

/// The octet (columns `8o .. 8o + 8`) each 4-byte word of a packed row
/// holds (`k % 64 == 0`, see [`crate::weights`]: in a block of `B`
/// columns at `c0`, the word at byte `32i + 4l` holds columns
/// `c0 + (B / 8) l + 8i ..`).
fn word_octets(k: usize) -> Vec<u32> {
    let mut octet = vec![0; k / 8];
    for (c0, width) in weights::int4_blocks(k) {
        let span = width / 8;
        for l in 0..8 {
            for i in 0..span / 8 {
                octet[(c0 / 2 + 32 * i + 4 * l) / 4] = ((c0 + span * l + 8 * i) / 8) as u32;
            }
        }
    }
    octet
}

/// Rows `rows` (1 to 16) regrouped as a panel for [`simd::panel_w4a8`]: per
/// octet, one word of each row; per group, each row's scale. Rows past
/// `rows` repeat its last row (their results are dropped).
fn pack_int4_panel(
    packed: &[u8],
    scales: &[f32],
    layout: Int4Layout,
    word_octet: &[u32],
    rows: Range<usize>,
    words: &mut [u32],
    row_scales: &mut [f32],
) {
    let (rb, groups) = (layout.row_bytes(), layout.groups());
    let row = |r: usize| rows.start + r.min(rows.len() - 1);
    let bytes: [&[u8]; 16] = core::array::from_fn(|r| &packed[row(r) * rb..(row(r) + 1) * rb]);
    simd::transpose_rows_of_words(&bytes, word_octet, words);
    for r in 0..16 {
        for (g, &s) in scales[row(r) * groups..(row(r) + 1) * groups]
            .iter()
            .enumerate()
        {
            row_scales[16 * g + r] = s;
        }
    }
}

thread_local! {
    /// Each thread's panel (words, scales), reused from call to call.
    static PANEL: RefCell<(Vec<u32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Weight rows `rows` against all `m` tokens in the panel form: 16 rows a
/// panel, regrouped into this thread's buffer; `emit` as in [`w4a8_block`].
#[allow(clippy::too_many_arguments)]
fn w4a8_panels(
    packed: &[u8],
    scales: &[f32],
    layout: Int4Layout,
    q: Int4Tokens,
    m: usize,
    rows: Range<usize>,
    word_octet: &[u32],
    emit: &impl Fn(usize, usize, &[f32]),
) {
    PANEL.with(|panel| {
        let (words, row_scales) = &mut *panel.borrow_mut();
        words.resize(16 * word_octet.len(), 0);
        row_scales.resize(16 * layout.groups(), 0.0);
        let mut j = rows.start;
        while j < rows.end {
            let live = (rows.end - j).min(16);
            let panel_rows = j..j + live;
            pack_int4_panel(
                packed, scales, layout, word_octet, panel_rows, words, row_scales,
            );
            panel_tokens(words, row_scales, layout, q, m, j, live, emit);
            j += 16;
        }
    });
}

/// One panel (rows `j .. j + live`) against all `m` tokens, two a kernel
/// call, each token's `live` results emitted.
#[allow(clippy::too_many_arguments)]
fn panel_tokens(
    words: &[u32],
    row_scales: &[f32],
    layout: Int4Layout,
    q: Int4Tokens,
    m: usize,
    j: usize,
    live: usize,
    emit: &impl Fn(usize, usize, &[f32]),
) {
    let (k, groups) = (layout.in_features, layout.groups());
    let per_group = layout.group_size / 8;
    let token = |i: usize| &q.q[i * k..(i + 1) * k];
    let sums = |i: usize| &q.sums[i * groups..(i + 1) * groups];
    let mut i = 0;
    while i + 2 <= m {
        let z = simd::panel_w4a8::<2>(
            words,
            row_scales,
            &[token(i), token(i + 1)],
            &[sums(i), sums(i + 1)],
            per_group,
        );
        emit(i, j, &z[0][..live]);
        emit(i + 1, j, &z[1][..live]);
        i += 2;
    }
    if i < m {
        let z = simd::panel_w4a8::<1>(words, row_scales, &[token(i)], &[sums(i)], per_group);
        emit(i, j, &z[0][..live]);
    }
}

/// Packed int4 weights regrouped once into 16-row panels (the panel form's
/// layout, see the module notes), for products of any token count without
/// regrouping per call: per panel, 16 words per column octet, then 16
/// scales per group (a last partial panel repeats its last row). Needs
/// `in_features` a positive multiple of 64 and `group_size` a multiple of
/// 8 that divides it (the panel kernel's shapes).
///
/// ```
/// use dynquant::w4a8::{w4a8_matmul_packed_into, Int4Layout, PackedInt4Weights};
/// use dynquant::{quantize_weights_int4, w4a8_matmul_into, ActQuant};
///
/// let (n, k, m) = (40, 128, 3); // two full panels and a partial one
/// let w: Vec<f32> = (0..n * k).map(|i| ((i * 37 % 101) as f32 - 50.0) / 8.0).collect();
/// let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.7).sin()).collect();
/// let (packed, scales) = quantize_weights_int4(&w, n, k, Some(32))?;
/// let layout = Int4Layout { out_features: n, in_features: k, group_size: 32 };
/// let held = PackedInt4Weights::pack(&packed, &scales, layout)?; // once
/// assert_eq!(held.unpack(), (packed.clone(), scales.clone()));
///
/// let mut y = vec![0.0f32; m * n];
/// w4a8_matmul_packed_into(&x, m, &held, None, ActQuant::PER_TOKEN, &mut y)?;
/// let mut want = vec![0.0f32; m * n];
/// w4a8_matmul_into(&x, m, &packed, &scales, layout, None, ActQuant::PER_TOKEN, &mut want)?;
/// assert!(y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()));
/// # Ok::<(), dynquant::DynQuantError>(())
/// ```
#[derive(Clone, Debug)]
pub struct PackedInt4Weights {
    layout: Int4Layout,
    words: Vec<u32>,
    scales: Vec<f32>,
}

impl PackedInt4Weights {
    /// Regroups `packed` (`n` rows in the layout of [`crate::weights`]) and
    /// its `scales` (`[n, groups]`, finite).
    pub fn pack(packed: &[u8], scales: &[f32], layout: Int4Layout) -> Result<Self, DynQuantError> {
        let (n, k, group) = (layout.out_features, layout.in_features, layout.group_size);
        if k == 0
            || !k.is_multiple_of(64)
            || group == 0
            || !group.is_multiple_of(8)
            || !k.is_multiple_of(group)
            || k >= 1 << 20
        {
            return Err(DynQuantError::InvalidArgument(format!(
                "int4 panels need in_features a positive multiple of 64 (below 2^20) and \
                 group_size a multiple of 8 dividing it, got in_features {k}, group_size {group}"
            )));
        }
        for (expected, actual) in [
            (
                checked_size(n, layout.row_bytes(), "packed bytes")?,
                packed.len(),
            ),
            (checked_size(n, layout.groups(), "scales")?, scales.len()),
        ] {
            if expected != actual {
                return Err(DynQuantError::ShapeMismatch { expected, actual });
            }
        }
        weights::check_int4_padding(packed, k)?;
        check_finite_argument(scales, "scales")?;
        let word_octet = word_octets(k);
        let (per_words, per_scales) = (16 * word_octet.len(), 16 * layout.groups());
        let panels = n.div_ceil(16);
        // On huge pages, as the other weight buffers: at one token the
        // panels stream from memory, and the prefetchers stop at each page.
        let mut words = huge_pages::try_vec(checked_size(panels, per_words, "panel words")?, 0u32)?;
        let mut held = huge_pages::try_vec(panels * per_scales, 0.0f32)?;
        for (p, (w, s)) in words
            .chunks_mut(per_words)
            .zip(held.chunks_mut(per_scales))
            .enumerate()
        {
            let rows = 16 * p..(16 * p + 16).min(n);
            pack_int4_panel(packed, scales, layout, &word_octet, rows, w, s);
        }
        Ok(PackedInt4Weights {
            layout,
            words,
            scales: held,
        })
    }

    /// The shape and group size it was packed with.
    pub fn layout(&self) -> Int4Layout {
        self.layout
    }

    /// Bytes held: the panels (rows padded to 16) and their scales.
    pub fn nbytes(&self) -> usize {
        4 * (self.words.len() + self.scales.len())
    }

    /// The packed int4 rows and `[n, groups]` scales back, exactly.
    pub fn unpack(&self) -> (Vec<u8>, Vec<f32>) {
        let layout = self.layout;
        let (n, rb, groups) = (layout.out_features, layout.row_bytes(), layout.groups());
        let word_octet = word_octets(layout.in_features);
        let (per_words, per_scales) = (16 * word_octet.len(), 16 * groups);
        let mut packed = vec![0u8; n * rb];
        let mut scales = vec![0.0f32; n * groups];
        for r in 0..n {
            let (p, i) = (r / 16, r % 16);
            let words = &self.words[p * per_words..(p + 1) * per_words];
            for (w, &o) in word_octet.iter().enumerate() {
                let word = words[16 * o as usize + i].to_le_bytes();
                packed[r * rb + 4 * w..r * rb + 4 * w + 4].copy_from_slice(&word);
            }
            let held = &self.scales[p * per_scales..(p + 1) * per_scales];
            for g in 0..groups {
                scales[r * groups + g] = held[16 * g + i];
            }
        }
        (packed, scales)
    }
}

/// [`w4a8_matmul_into`] on weights regrouped once ([`PackedInt4Weights`]):
/// the same checks, errors and bits, on every kernel path (the panel
/// kernel's scalar twin where there is no AVX-512 VNNI).
pub fn w4a8_matmul_packed_into(
    x: &[f32],
    m: usize,
    weights: &PackedInt4Weights,
    bias: Option<&[f32]>,
    act: ActQuant,
    out: &mut [f32],
) -> Result<(), DynQuantError> {
    let layout = weights.layout;
    let (n, k, groups) = (layout.out_features, layout.in_features, layout.groups());
    for (expected, actual) in [
        (checked_size(m, k, "activations")?, x.len()),
        (n, bias.map_or(n, <[f32]>::len)),
        (checked_size(m, n, "outputs")?, out.len()),
    ] {
        if expected != actual {
            return Err(DynQuantError::ShapeMismatch { expected, actual });
        }
    }
    check_finite_argument(bias.unwrap_or_default(), "bias")?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (per_words, per_scales) = (2 * k, 16 * groups); // 16 words per 8 columns
    let sink = DisjointOut::new(out);
    let prepare = |acts: QuantizedActs| {
        let sums: Vec<i32> = acts
            .q
            .chunks(k)
            .flat_map(|t| simd::int4_group_sums(t, layout.group_size))
            .collect();
        (acts, sums)
    };
    let block = |(acts, sums): &(QuantizedActs, Vec<i32>), panels: Range<usize>| {
        let tokens = Int4Tokens {
            q: &acts.q,
            packed: &acts.q,
            sums,
        };
        let emit = |i: usize, j: usize, ys: &[f32]| emit_scaled(&sink, acts, bias, n, i, j, ys);
        for p in panels {
            let words = &weights.words[p * per_words..(p + 1) * per_words];
            let scales = &weights.scales[p * per_scales..(p + 1) * per_scales];
            let live = (n - 16 * p).min(16);
            panel_tokens(words, scales, layout, tokens, m, 16 * p, live, &emit);
        }
    };
    let work = m.saturating_mul(n).saturating_mul(k / 2) / 4;
    let blocks = RowBlocks::units(n.div_ceil(16), work);
    if act.per_token {
        blocks.run_prepared(
            || QuantizedActs::per_token(x, m, k, act, k).map(prepare),
            block,
        )
    } else {
        QuantizedActs::per_tensor(x, m, k, act, k).map(|acts| {
            let prepared = prepare(acts);
            blocks.run(|panels| block(&prepared, panels));
        })
    }
}

/// Token `i`'s results for weight rows `j ..` (at most sixteen): scaled by
/// the token's scale, plus the bias, written in one run.
fn emit_scaled(
    sink: &DisjointOut<'_>,
    acts: &QuantizedActs,
    bias: Option<&[f32]>,
    n: usize,
    i: usize,
    j: usize,
    ys: &[f32],
) {
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
    let form = gemm_form();
    w4a8_matmul_in_form(x, m, packed, scales, layout, bias, act, out, form)
}

/// [`w4a8_matmul_into`] in the given form (the tile forms and the panel
/// form give the same bits).
#[allow(clippy::too_many_arguments)]
pub(crate) fn w4a8_matmul_in_form(
    x: &[f32],
    m: usize,
    packed: &[u8],
    scales: &[f32],
    layout: Int4Layout,
    bias: Option<&[f32]>,
    act: ActQuant,
    out: &mut [f32],
    form: GemmForm,
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
    let panels = panel_form(m, layout, form);
    let word_octet = if panels { word_octets(k) } else { Vec::new() };
    // Per token, the offset corrections of the int4 kernels (weights are
    // stored offset by 8) and, for the tile form's SIMD kernels, the token
    // in the weights' packed order.
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
        if k.is_multiple_of(64) && !panels {
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
        let emit = |i: usize, j: usize, ys: &[f32]| emit_scaled(&sink, acts, bias, n, i, j, ys);
        let tokens = Int4Tokens {
            q: &acts.q,
            packed: if order.is_empty() {
                &acts.q
            } else {
                &order[*start..*start + acts.q.len()]
            },
            sums,
        };
        if panels {
            w4a8_panels(packed, scales, layout, tokens, m, rows, &word_octet, &emit)
        } else {
            w4a8_block(packed, scales, layout, tokens, m, rows, &emit)
        }
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

    /// Scalar path, sign (tile) form: the reference the other paths and the
    /// panel form must equal bit for bit.
    #[allow(clippy::too_many_arguments)]
    fn w4a8_on(
        isa: simd::Isa,
        form: GemmForm,
        x: &[f32],
        m: usize,
        packed: &[u8],
        scales: &[f32],
        layout: Int4Layout,
        bias: Option<&[f32]>,
        act: ActQuant,
    ) -> Vec<f32> {
        simd::set_isa(isa).unwrap();
        let mut y = vec![f32::NAN; m * layout.out_features];
        w4a8_matmul_in_form(x, m, packed, scales, layout, bias, act, &mut y, form).unwrap();
        y
    }

    /// `m` tokens (the first all +-127) and `n` int4 rows of `k` columns
    /// (the first all -8, the last all 7) with group scales: the operands
    /// of the panel-form tests.
    fn extreme_int4_case(
        m: usize,
        n: usize,
        k: usize,
        group: usize,
        seed: usize,
    ) -> (Vec<f32>, Vec<u8>, Vec<f32>, Int4Layout) {
        let mut x = data(m * k, seed);
        for (i, v) in x[..k].iter_mut().enumerate() {
            *v = if i % 2 == 0 { 1.0 } else { -1.0 };
        }
        let mut values: Vec<i8> = (0..n * k).map(|i| ((i * 37 + k) % 16) as i8 - 8).collect();
        if n > 0 {
            values[..k].fill(-8);
            values[(n - 1) * k..].fill(7);
        }
        let packed = pack_int4(&values, k).unwrap();
        let scales: Vec<f32> = (0..n * (k / group))
            .map(|i| 0.01 + (i % 13) as f32 * 0.003)
            .collect();
        let layout = Int4Layout {
            out_features: n,
            in_features: k,
            group_size: group,
        };
        (x, packed, scales, layout)
    }

    #[test]
    fn panel_and_tile_forms_give_the_same_bits_on_every_path() {
        // Partial panels (5, 33, 37 rows), one and odd token counts, every
        // group form the panel takes (32, 64, 128, 256, one per row), the
        // extreme operands (-8 and 7 weights, +-127 tokens).
        for (m, n, k, group) in [
            (1, 5, 64, 32),
            (2, 16, 256, 32),
            (3, 37, 384, 64),
            (17, 33, 1024, 128),
            (4, 20, 320, 320),
            (5, 17, 512, 256),
        ] {
            let (x, packed, scales, layout) = extreme_int4_case(m, n, k, group, k);
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.25 - 1.0).collect();
            for act in [ActQuant::PER_TOKEN, ActQuant::PER_TENSOR] {
                let run = |isa, form| {
                    w4a8_on(isa, form, &x, m, &packed, &scales, layout, Some(&bias), act)
                };
                let want = run(simd::Isa::Scalar, GemmForm::Sign);
                for isa in simd::supported() {
                    for form in [GemmForm::Sign, GemmForm::Panel, GemmForm::Auto] {
                        let got = run(isa, form);
                        let same = got
                            .iter()
                            .zip(&want)
                            .all(|(a, b)| a.to_bits() == b.to_bits());
                        assert!(same, "{m}x{n}x{k} group {group} {isa:?} {form:?} {act:?}");
                    }
                }
            }
        }
        simd::set_isa(simd::best_supported()).unwrap();
    }

    #[test]
    fn panel_kernel_and_its_scalar_twin_are_the_definition() {
        // One panel of 16 rows by the kernel (AVX-512 where this CPU has it),
        // by its scalar twin and by the tile definition on the packed rows:
        // extreme weights and tokens, scales from subnormal to overflowing
        // products, every group form.
        let k = 512;
        let values: Vec<i8> = (0..16 * k).map(|i| ((i * 29 + 3) % 16) as i8 - 8).collect();
        let packed = pack_int4(&values, k).unwrap();
        let tokens: Vec<i8> = (0..3 * k)
            .map(|i| match i % 5 {
                0 => 127,
                1 => -127,
                _ => ((i * 13) % 255) as i8,
            })
            .collect();
        for group in [32, 64, 128, 256, 512] {
            let layout = Int4Layout {
                out_features: 16,
                in_features: k,
                group_size: group,
            };
            let groups = k / group;
            let scales: Vec<f32> = (0..16 * groups)
                .map(|i| match i % 7 {
                    0 => 1e-40,
                    1 => 3e37,
                    _ => 0.001 * (i % 11) as f32,
                })
                .collect();
            let octets = word_octets(k);
            let (mut words, mut row_scales) = (vec![0; 16 * octets.len()], vec![0.0; 16 * groups]);
            pack_int4_panel(
                &packed,
                &scales,
                layout,
                &octets,
                0..16,
                &mut words,
                &mut row_scales,
            );
            let a: [&[i8]; 3] = core::array::from_fn(|t| &tokens[t * k..(t + 1) * k]);
            let sums: Vec<Vec<i32>> = a.iter().map(|t| simd::int4_group_sums(t, group)).collect();
            let s: [&[i32]; 3] = core::array::from_fn(|t| &sums[t][..]);
            let kernel = simd::panel_w4a8::<3>(&words, &row_scales, &a, &s, group / 8);
            let twin = simd::scalar::panel_w4a8::<3>(&words, &row_scales, &a, &s, group / 8);
            let rb = layout.row_bytes();
            let w: [&[u8]; 16] = core::array::from_fn(|r| &packed[r * rb..(r + 1) * rb]);
            let ws: [&[f32]; 16] = core::array::from_fn(|r| &scales[r * groups..(r + 1) * groups]);
            let definition = simd::scalar::w4a8_tile::<16, 3>(&w, &ws, &a, group);
            for t in 0..3 {
                for r in 0..16 {
                    let want = definition[r][t].to_bits();
                    assert_eq!(
                        kernel[t][r].to_bits(),
                        want,
                        "group {group} token {t} row {r}"
                    );
                    assert_eq!(
                        twin[t][r].to_bits(),
                        want,
                        "group {group} token {t} row {r}"
                    );
                }
            }
        }
    }

    #[test]
    fn held_panels_round_trip_and_give_the_row_major_bits_on_every_path() {
        for (m, n, k, group) in [
            (1, 5, 64, 32),
            (3, 37, 384, 64),
            (17, 16, 512, 512),
            (2, 0, 64, 32),
        ] {
            let (x, packed, scales, layout) = extreme_int4_case(m, n, k, group, k + 1);
            let held = PackedInt4Weights::pack(&packed, &scales, layout).unwrap();
            assert_eq!(held.unpack(), (packed.clone(), scales.clone()));
            assert_eq!(held.nbytes(), 4 * n.div_ceil(16) * 16 * (k / 8 + k / group));
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.5 - 2.0).collect();
            for act in [ActQuant::PER_TOKEN, ActQuant::PER_TENSOR] {
                let want = w4a8_on(
                    simd::Isa::Scalar,
                    GemmForm::Sign,
                    &x,
                    m,
                    &packed,
                    &scales,
                    layout,
                    Some(&bias),
                    act,
                );
                for isa in simd::supported() {
                    simd::set_isa(isa).unwrap();
                    let mut y = vec![f32::NAN; m * n];
                    w4a8_matmul_packed_into(&x, m, &held, Some(&bias), act, &mut y).unwrap();
                    let same = y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{m}x{n}x{k} group {group} {isa:?} {act:?}");
                }
            }
        }
        simd::set_isa(simd::best_supported()).unwrap();
    }

    #[test]
    fn held_panels_refuse_what_the_kernel_cannot_take() {
        let layout = |k, group| Int4Layout {
            out_features: 2,
            in_features: k,
            group_size: group,
        };
        let ok = |k: usize, g: usize| {
            let packed = vec![0x88u8; 2 * k.div_ceil(2)];
            let scales = vec![1.0f32; 2 * k.div_ceil(g)];
            PackedInt4Weights::pack(&packed, &scales, layout(k, g))
        };
        assert!(ok(64, 32).is_ok());
        for (k, g) in [(100, 50), (96, 32), (64, 12), (128, 48)] {
            assert!(
                matches!(ok(k, g), Err(DynQuantError::InvalidArgument(_))),
                "{k} {g}"
            );
        }
        let packed = vec![0x88u8; 64];
        let err = PackedInt4Weights::pack(&packed, &[1.0, f32::NAN, 1.0, 1.0], layout(64, 32));
        assert!(matches!(err, Err(DynQuantError::NonFiniteArgument { .. })));
        let err = PackedInt4Weights::pack(&packed[..63], &[1.0; 4], layout(64, 32));
        assert!(matches!(err, Err(DynQuantError::ShapeMismatch { .. })));
        let held = ok(64, 32).unwrap();
        let mut y = vec![0.0; 2];
        let err = w4a8_matmul_packed_into(&[1.0; 63], 1, &held, None, ActQuant::PER_TOKEN, &mut y);
        assert!(matches!(
            err,
            Err(DynQuantError::ShapeMismatch {
                expected: 64,
                actual: 63
            })
        ));
        let bad_bias = Some(&[f32::INFINITY, 0.0][..]);
        let err =
            w4a8_matmul_packed_into(&[1.0; 64], 1, &held, bad_bias, ActQuant::PER_TOKEN, &mut y);
        assert!(matches!(err, Err(DynQuantError::NonFiniteArgument { .. })));
    }

    #[test]
    fn each_word_of_a_packed_row_is_its_octet() {
        // Column c holds c % 16 - 8: each octet's word must hold columns
        // 8o .. 8o + 4 in its low nibbles and 8o + 4 .. 8o + 8 in its high.
        for k in [64, 128, 192, 256, 320, 384, 448, 1088] {
            let values: Vec<i8> = (0..k).map(|c| (c % 16) as i8 - 8).collect();
            let packed = pack_int4(&values, k).unwrap();
            let octets = word_octets(k);
            let mut seen = vec![false; k / 8];
            for (w, &o) in octets.iter().enumerate() {
                let o = o as usize;
                seen[o] = true;
                for j in 0..4 {
                    let byte = packed[4 * w + j];
                    assert_eq!((byte & 15) as i8 - 8, values[8 * o + j], "k {k} word {w}");
                    assert_eq!(
                        (byte >> 4) as i8 - 8,
                        values[8 * o + 4 + j],
                        "k {k} word {w}"
                    );
                }
            }
            assert!(seen.iter().all(|&s| s), "k {k}: every octet once");
        }
    }

    #[test]
    fn word_transpose_matches_its_scalar_twin() {
        // 16 rows of 37 words (two SIMD blocks and a scalar tail), words
        // sent to a permuted destination, rows at odd offsets.
        let words = 37;
        let bytes: Vec<u8> = (0..16 * (4 * words + 3))
            .map(|i| (i * 131 % 251) as u8)
            .collect();
        let rows: [&[u8]; 16] = core::array::from_fn(|r| {
            let start = r * (4 * words + 3) + r % 3;
            &bytes[start..start + 4 * words]
        });
        let dest: Vec<u32> = (0..words as u32).map(|w| (w * 5) % words as u32).collect();
        let mut want = vec![0u32; 16 * words];
        simd::scalar::transpose_rows_of_words(&rows, 0, &dest, &mut want);
        let mut got = vec![0u32; 16 * words];
        simd::transpose_rows_of_words(&rows, &dest, &mut got);
        assert_eq!(got, want);
        for (w, &d) in dest.iter().enumerate() {
            for (r, row) in rows.iter().enumerate() {
                let b = &row[4 * w..4 * w + 4];
                assert_eq!(
                    want[16 * d as usize + r],
                    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
                );
            }
        }
    }

    #[test]
    fn auto_takes_the_panel_form_past_its_thresholds() {
        let layout = |n, k| Int4Layout {
            out_features: n,
            in_features: k,
            group_size: 32,
        };
        let available = simd::panel_kernel_available();
        let big = layout(4096, 4096);
        let small = layout(1536, 384);
        assert!(!panel_form(PANEL_MIN_TOKENS - 1, big, GemmForm::Auto));
        assert_eq!(panel_form(PANEL_MIN_TOKENS, big, GemmForm::Auto), available);
        assert!(!panel_form(
            PANEL_MIN_TOKENS_SMALL - 1,
            small,
            GemmForm::Auto
        ));
        assert_eq!(
            panel_form(PANEL_MIN_TOKENS_SMALL, small, GemmForm::Auto),
            available
        );
        assert!(!panel_form(1000, big, GemmForm::Sign));
        assert_eq!(panel_form(1, big, GemmForm::Panel), available);
        assert!(!panel_form(1000, layout(64, 100), GemmForm::Panel)); // k % 64 != 0
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
