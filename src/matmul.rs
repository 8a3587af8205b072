//! W8A8 products: int8 weights times dynamically quantized activations.

use core::ops::Range;
use core::sync::atomic::{AtomicU8, Ordering};

use crate::error::{check_finite_argument, checked_size, try_reserved, try_vec};
use crate::pair_split::SplitRows;
use crate::parallel::{DisjointOut, RowBlocks};
use crate::quantize::{
    quantize_per_row_into, quantize_per_row_strided_into, quantize_per_tensor_into, INT8_CLIP,
};
use crate::scale::{DynamicScaleMode, NanPolicy};
use crate::simd;
use crate::DynQuantError;

/// The reference's checks, in its order.
fn check_matvec(
    weight_len: usize,
    scales_len: usize,
    activation_len: usize,
    out_size: usize,
    in_size: usize,
) -> Result<(), DynQuantError> {
    if activation_len == 0 {
        return Err(DynQuantError::EmptyInput);
    }
    if activation_len != in_size {
        return Err(DynQuantError::ShapeMismatch {
            expected: in_size,
            actual: activation_len,
        });
    }
    let expected_w = out_size.checked_mul(in_size).ok_or_else(|| {
        DynQuantError::InvalidArgument(format!("{out_size} x {in_size} weights overflow usize"))
    })?;
    if weight_len != expected_w {
        return Err(DynQuantError::ShapeMismatch {
            expected: expected_w,
            actual: weight_len,
        });
    }
    if scales_len != out_size {
        return Err(DynQuantError::ShapeMismatch {
            expected: out_size,
            actual: scales_len,
        });
    }
    Ok(())
}

/// How an exact integer dot product becomes an output value:
/// `(acc as f32 * weight_scales[j]) * token_scales[i] (+ bias[j])`, in that
/// order (the reference's).
#[derive(Clone, Copy)]
pub(crate) struct Dequant<'a> {
    pub weight_scales: &'a [f32],
    pub token_scales: &'a [f32],
    pub bias: Option<&'a [f32]>,
}

impl Dequant<'_> {
    #[inline(always)]
    pub(crate) fn value(&self, i: usize, j: usize, acc: i64) -> f32 {
        let v = (acc as f32 * self.weight_scales[j]) * self.token_scales[i];
        match self.bias {
            Some(b) => v + b[j],
            None => v,
        }
    }
}

/// The quantized tokens: row `i` is `q[i * stride..i * stride + k]`.
#[derive(Clone, Copy)]
pub(crate) struct Tokens<'a> {
    pub q: &'a [i8],
    pub k: usize,
    pub stride: usize,
    /// Each token's [`simd::token_sum`], where the product computed them
    /// (for the VNNI paths' row pairs).
    pub sums: Option<&'a [i32]>,
}

impl<'a> Tokens<'a> {
    /// Tokens stored one after the other.
    pub(crate) fn dense(q: &'a [i8], k: usize) -> Self {
        Tokens {
            q,
            k,
            stride: k,
            sums: None,
        }
    }

    #[inline(always)]
    pub(crate) fn row(&self, i: usize) -> &'a [i8] {
        &self.q[i * self.stride..i * self.stride + self.k]
    }

    pub(crate) fn count(&self) -> usize {
        if self.q.is_empty() || self.q.len() < self.k {
            0
        } else {
            (self.q.len() - self.k) / self.stride.max(1) + 1
        }
    }
}

/// The row stride that keeps token rows of `k` int8 values from sharing L1
/// cache sets: rows a multiple of 2048 bytes apart (4096 for typical model
/// widths) map to the same one or two sets of the 4 KiB-periodic L1, and the
/// four token rows of a tile plus the weight rows would evict each other.
fn token_stride(k: usize) -> usize {
    if k >= 2048 && k.is_multiple_of(2048) {
        k + 64
    } else {
        k
    }
}

/// Where a task writes: the shared output and the row length `n`.
struct Sink<'a> {
    out: &'a DisjointOut<'a>,
    n: usize,
    dequant: Dequant<'a>,
}

impl Sink<'_> {
    /// Writes the tile of tokens `m0..m0 + T` by weight rows `j0..j0 + R`.
    ///
    /// # Safety
    /// The caller's task owns weight rows `j0..j0 + R` (no other task writes
    /// these columns).
    #[inline(always)]
    unsafe fn tile<const R: usize, const T: usize>(&self, m0: usize, j0: usize, d: &[[i64; T]; R]) {
        for (t, i) in (m0..m0 + T).enumerate() {
            for (r, j) in (j0..j0 + R).enumerate() {
                // SAFETY: the caller owns column j; i * n + j is in bounds
                // (checked inside `write`).
                unsafe {
                    self.out
                        .write(i * self.n + j, self.dequant.value(i, j, d[r][t]))
                };
            }
        }
    }

    /// Dot products and dequantization of the weight row pairs starting at
    /// `j0` (`pairs` of them) with tokens `m0..m0 + T`, written, prefetching
    /// as [`simd::w8a8_row_pairs`] does for `prefetch_rows`.
    ///
    /// # Safety
    /// The caller's task owns weight rows `j0..j0 + 2 * pairs`.
    #[inline(always)]
    unsafe fn row_pairs<const T: usize>(
        &self,
        w: &[i8],
        q: Tokens<'_>,
        m0: usize,
        j0: usize,
        pairs: usize,
        prefetch_rows: isize,
    ) {
        const CHUNK: usize = 16;
        let k = q.k;
        let tokens: [&[i8]; T] = core::array::from_fn(|t| q.row(m0 + t));
        let d = &self.dequant;
        let ts: [f32; T] = core::array::from_fn(|t| d.token_scales[m0 + t]);
        let sums = q.sums.map(|s| core::array::from_fn(|t| s[m0 + t]));
        let mut y = [[[0.0f32; 2]; T]; CHUNK];
        let mut p0 = 0;
        while p0 < pairs {
            let count = CHUNK.min(pairs - p0);
            let (j, j_end) = (j0 + 2 * p0, j0 + 2 * (p0 + count));
            simd::w8a8_row_pairs(
                &w[j * k..j_end * k],
                &tokens,
                sums,
                prefetch_rows,
                &d.weight_scales[j..j_end],
                ts,
                d.bias.map(|b| &b[j..j_end]),
                &mut y[..count],
            );
            // SAFETY: the caller owns these columns.
            unsafe { self.write_pairs(m0, j, &y[..count]) };
            p0 += count;
        }
    }

    /// [`Sink::row_pairs`] in the offset form: `split` holds the caller's
    /// block of rows (starting at weight row `block_start`) split, `u` the
    /// tokens with their top bit flipped.
    ///
    /// # Safety
    /// The caller's task owns weight rows `j0..j0 + 2 * pairs`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn row_pairs_offset<const T: usize>(
        &self,
        split: &SplitRows,
        block_start: usize,
        u: Tokens<'_>,
        m0: usize,
        j0: usize,
        pairs: usize,
    ) {
        const CHUNK: usize = 16;
        let offset_tokens: [&[i8]; T] = core::array::from_fn(|t| u.row(m0 + t));
        let d = &self.dequant;
        let ts: [f32; T] = core::array::from_fn(|t| d.token_scales[m0 + t]);
        let mut y = [[[0.0f32; 2]; T]; CHUNK];
        let mut extras = [[[0i32; 2]; T]; CHUNK];
        let mut p0 = 0;
        while p0 < pairs {
            let count = CHUNK.min(pairs - p0);
            let (j, j_end) = (j0 + 2 * p0, j0 + 2 * (p0 + count));
            for (p, e) in extras[..count].iter_mut().enumerate() {
                for i in 0..2 {
                    let r = j + 2 * p + i - block_start;
                    for (t, e) in e.iter_mut().enumerate() {
                        e[i] = split.extra(r, m0 + t);
                    }
                }
            }
            simd::w8a8_row_pairs_offset(
                split.clip_rows(j - block_start..j_end - block_start),
                &offset_tokens,
                &extras[..count],
                &d.weight_scales[j..j_end],
                ts,
                d.bias.map(|b| &b[j..j_end]),
                &mut y[..count],
            );
            // SAFETY: the caller owns these columns.
            unsafe { self.write_pairs(m0, j, &y[..count]) };
            p0 += count;
        }
    }

    /// Writes `y[p][t]` to token `m0 + t`, weight rows `j + 2p`, `j + 2p + 1`:
    /// gathered per token first, so that each token's run goes out in a few
    /// wide stores (the output's lines are rarely in cache, and each narrow
    /// store to one would hold a store-buffer entry until it comes).
    ///
    /// # Safety
    /// The caller owns these columns.
    #[inline(always)]
    unsafe fn write_pairs<const T: usize>(&self, m0: usize, j: usize, y: &[[[f32; 2]; T]]) {
        const MAX_PAIRS: usize = 16;
        debug_assert!(y.len() <= MAX_PAIRS);
        let mut runs = [[0.0f32; 2 * MAX_PAIRS]; T];
        for (p, pair) in y.iter().enumerate() {
            for (run, values) in runs.iter_mut().zip(pair) {
                run[2 * p..2 * p + 2].copy_from_slice(values);
            }
        }
        for (t, run) in runs.iter().enumerate() {
            // SAFETY: the caller owns these columns (bounds checked inside
            // `write_run`).
            unsafe {
                self.out
                    .write_run((m0 + t) * self.n + j, &run[..2 * y.len()])
            };
        }
    }
}

/// Weight rows `rows` against tokens `m0..m0 + T`: two rows at a time with
/// a vectorized dequantization, then a last odd row.
///
/// # Safety
/// The caller's task owns weight rows `rows`.
#[allow(clippy::too_many_arguments)]
unsafe fn pair_rows<const T: usize>(
    w: &[i8],
    q: Tokens<'_>,
    offset: Option<(&SplitRows, Tokens<'_>)>,
    rows: Range<usize>,
    m0: usize,
    prefetch_rows: isize,
    sink: &Sink<'_>,
) {
    let pairs = rows.len() / 2;
    let odd = rows.start + 2 * pairs;
    // SAFETY (all calls): rows in `rows` belong to this task.
    unsafe {
        match offset {
            Some((split, u)) => {
                sink.row_pairs_offset::<T>(split, rows.start, u, m0, rows.start, pairs)
            }
            None => sink.row_pairs::<T>(w, q, m0, rows.start, pairs, prefetch_rows),
        }
        if odd < rows.end {
            tile_rows::<1, T>(w, q, odd..rows.end, m0, sink);
        }
    }
}

/// Dot products of weight rows `rows` with tokens `m0..m0 + T`, `R` rows at
/// a time (then single rows for the remainder).
///
/// # Safety
/// The caller's task owns weight rows `rows`.
unsafe fn tile_rows<const R: usize, const T: usize>(
    w: &[i8],
    q: Tokens<'_>,
    rows: Range<usize>,
    m0: usize,
    sink: &Sink<'_>,
) {
    let k = q.k;
    let tokens: [&[i8]; T] = core::array::from_fn(|t| q.row(m0 + t));
    let mut n = rows.start;
    while n + R <= rows.end {
        let weights: [&[i8]; R] = core::array::from_fn(|r| &w[(n + r) * k..(n + r + 1) * k]);
        // SAFETY: rows n..n + R belong to this task.
        unsafe { sink.tile(m0, n, &simd::dot_tile(&weights, &tokens)) };
        n += R;
    }
    for n in n..rows.end {
        // SAFETY: row n belongs to this task.
        unsafe { sink.tile(m0, n, &simd::dot_tile(&[&w[n * k..(n + 1) * k]], &tokens)) };
    }
}

/// All tokens against weight rows `rows`: tokens four at a time, so each
/// block of weight rows stays in cache while the tokens stream past. With
/// `offset_tokens` (the tokens with their top bit flipped) the block is
/// split for the offset form first, unless its weights have too many
/// residuals for that to pay.
///
/// # Safety
/// The caller's task owns weight rows `rows`.
unsafe fn gemm_block(
    w: &[i8],
    q: Tokens<'_>,
    offset_tokens: Option<OffsetTokens<'_>>,
    m: usize,
    rows: Range<usize>,
    next: Option<Range<usize>>,
    sink: &Sink<'_>,
) {
    let k = q.k;
    if m == 1 {
        // One token (a matrix-vector product): four rows at a time.
        // SAFETY: the rows are the caller's.
        return unsafe { tile_rows::<4, 1>(w, q, rows, 0, sink) };
    }
    if let Some(OffsetTokens { u, qt, always }) = offset_tokens {
        let block = &w[rows.start * k..rows.end * k];
        let done = SplitRows::with_split(block, k, !always, |split| {
            // The per-output corrections for a chunk of tokens at a time,
            // so their buffer stays small however many tokens there are.
            for t0 in (0..m).step_by(EXTRA_TOKENS) {
                let tokens = t0..(t0 + EXTRA_TOKENS).min(m);
                split.fill_extras(block, q, qt, m, tokens.clone());
                // SAFETY: the rows are the caller's.
                unsafe { token_groups(w, q, Some((split, u)), tokens, rows.clone(), None, sink) }
            }
        });
        if done.is_some() {
            return;
        }
    }
    // SAFETY: the rows are the caller's.
    unsafe { token_groups(w, q, None, 0..m, rows, next, sink) }
}

/// Tokens per chunk of [`SplitRows::fill_extras`]: its buffer holds at most
/// this many i32 per row of the block.
const EXTRA_TOKENS: usize = 512;

/// [`pair_rows`] for every group of four of the tokens `tokens`, then the
/// rest. The first group over a block streams its weights in, prefetching
/// the next tile's rows into L2; with two or more groups, the last one —
/// its weights already in L2 — prefetches the rows of `next` (the block
/// this thread will probably take next), so that memory stays busy while
/// the block's later groups compute (8 tokens by 8 distinct 4096 x 4096
/// matrices in turn: 0.55-0.59 against 0.62-0.64 ms per product).
///
/// # Safety
/// The caller's task owns weight rows `rows`.
unsafe fn token_groups(
    w: &[i8],
    q: Tokens<'_>,
    offset: Option<(&SplitRows, Tokens<'_>)>,
    tokens: Range<usize>,
    rows: Range<usize>,
    next: Option<Range<usize>>,
    sink: &Sink<'_>,
) {
    /// The first group's distance: the next tile (four rows on, at most).
    const NEXT_TILE: isize = 4;
    let (mut m0, m) = (tokens.start, tokens.end);
    let to_next = next.map_or(0, |n| n.start as isize - rows.start as isize);
    let prefetch_for = |m0: usize| {
        if m0 == 0 {
            NEXT_TILE
        } else if m0 + 4 >= m {
            to_next
        } else {
            0
        }
    };
    // SAFETY (all calls): the rows are the caller's.
    unsafe {
        while m0 + 4 <= m {
            pair_rows::<4>(w, q, offset, rows.clone(), m0, prefetch_for(m0), sink);
            m0 += 4;
        }
        let pf = prefetch_for(m0);
        match m - m0 {
            3 => pair_rows::<3>(w, q, offset, rows, m0, pf, sink),
            2 => pair_rows::<2>(w, q, offset, rows, m0, pf, sink),
            1 => pair_rows::<1>(w, q, offset, rows, m0, pf, sink),
            _ => {}
        }
    }
}

/// Which form the W8A8 GEMM's AVX2 kernel takes for signed int8 products.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmForm {
    /// The offset form on the AVX2 path from [`OFFSET_MIN_TOKENS`] tokens,
    /// [`OFFSET_MIN_ROWS`] rows and [`OFFSET_MIN_COLUMNS`] columns, in the
    /// weight blocks whose residual is sparse; else the sign form (which
    /// the VNNI paths run with the weights as the unsigned side: see
    /// [`simd::w8a8_row_pairs`]).
    Auto,
    /// `|w|` times `a` with `w`'s sign (`abs`, `sign`, then the multiply).
    Sign,
    /// Pair-safe weights times `a + 128` (`pair_split`) in every weight
    /// block of any product of two or more tokens with 32 or more columns,
    /// on every path (the scalar twin where there is no AVX2) — for tests.
    Offset,
    /// The packed GEMM's broadcast kernel ([`crate::packed`]), each 64-row
    /// panel packed on the fly, for every product with `0 < k <`
    /// [`simd::EXACT_I32_TOTAL`] (the scalar twin where there is no
    /// AVX-512 VNNI) — for tests. `Auto` takes it on the `avx512vnni` path
    /// from [`PANEL_MIN_TOKENS`] tokens.
    Panel,
}

static GEMM_FORM: AtomicU8 = AtomicU8::new(0);

/// Forces the GEMM's form for later calls (tests and benchmarks); every
/// form gives the same bits.
pub fn set_gemm_form(form: GemmForm) {
    let code = match form {
        GemmForm::Auto => 0,
        GemmForm::Sign => 1,
        GemmForm::Offset => 2,
        GemmForm::Panel => 3,
    };
    GEMM_FORM.store(code, Ordering::Relaxed);
}

/// The form [`set_gemm_form`] last set.
pub fn gemm_form() -> GemmForm {
    match GEMM_FORM.load(Ordering::Relaxed) {
        1 => GemmForm::Sign,
        2 => GemmForm::Offset,
        3 => GemmForm::Panel,
        _ => GemmForm::Auto,
    }
}

/// From this many tokens `Auto` takes the panel form where the panel
/// kernel runs; from [`PANEL_MIN_TOKENS_SMALL`] when the weights take at
/// most [`PANEL_SMALL_WEIGHTS`] bytes. Packing a panel streams its rows
/// once more, which pays at fewer tokens while the weights stay in cache
/// (session 15, 2 threads, panel ÷ sign form: 4096² 1.28 at 16 tokens, 1.00
/// at 48, 0.82 at 128; 11008 × 4096 1.17 at 16, 1.00 at 64, 0.90 at 128;
/// 1024² 0.93 at 16; 1536 × 384 0.89 at 8, 0.64 at 16).
pub const PANEL_MIN_TOKENS: usize = 64;
/// See [`PANEL_MIN_TOKENS`].
pub const PANEL_MIN_TOKENS_SMALL: usize = 16;
/// See [`PANEL_MIN_TOKENS`].
pub const PANEL_SMALL_WEIGHTS: usize = 2 << 20;

/// Whether an `m`-token product with `n` weight rows of `k` columns takes
/// the panel form.
fn panel_form_use(form: GemmForm, m: usize, n: usize, k: usize) -> bool {
    (1..simd::EXACT_I32_TOTAL).contains(&k)
        && match form {
            GemmForm::Panel => true,
            GemmForm::Auto => {
                let small = n.saturating_mul(k) <= PANEL_SMALL_WEIGHTS;
                (m >= PANEL_MIN_TOKENS || (small && m >= PANEL_MIN_TOKENS_SMALL))
                    && simd::panel_kernel_available()
            }
            GemmForm::Sign | GemmForm::Offset => false,
        }
}

/// From this many tokens, columns and weight rows the offset form's split
/// of each weight block (a pass over it), its per-call token copies (which
/// fewer rows share) and per-tile corrections (which shorter rows pay more
/// often) cost less than the `sign` per product it saves (measured on Zen 3
/// at 2 threads, tokens x rows x columns: 0.92 of the sign form's time at
/// 64 x 4096 x 4096, 0.84 at 128 tokens, 0.95 at 128 x 4096 x 1024 and
/// 184 x 1024 x 1536; 1.26 at 16 x 4096 x 4096, 1.08 at MiniLM's
/// 184 x 384 x 1536).
pub const OFFSET_MIN_TOKENS: usize = 64;
/// See [`OFFSET_MIN_TOKENS`].
pub const OFFSET_MIN_COLUMNS: usize = 1024;
/// See [`OFFSET_MIN_TOKENS`].
pub const OFFSET_MIN_ROWS: usize = 1024;

/// Where an `m`-token product with `n` weight rows of `k` columns takes the
/// offset form: `None` nowhere, `Some(false)` in the weight blocks where it
/// pays (see [`SplitRows::with_split`]), `Some(true)` in every block (tests).
fn offset_form_use(form: GemmForm, m: usize, n: usize, k: usize) -> Option<bool> {
    if !(32..simd::EXACT_I32_TOTAL).contains(&k) || m < 2 {
        return None;
    }
    match form {
        GemmForm::Sign | GemmForm::Panel => None,
        GemmForm::Offset => Some(true),
        GemmForm::Auto => (m >= OFFSET_MIN_TOKENS
            && n >= OFFSET_MIN_ROWS
            && k >= OFFSET_MIN_COLUMNS
            && simd::active() == simd::Isa::Avx2)
            .then_some(false),
    }
}

/// Exact int8 GEMM: `out[i * n + j] = dequant.value(i, j, sum_l q[i, l] * w[j, l])`
/// for `m` tokens `q` (`[m, k]`, within ±127) and `n` weight rows `w`
/// (`[n, k]`, any int8). Weight rows are split across threads.
pub(crate) fn int8_gemm(
    w: &[i8],
    q: Tokens<'_>,
    m: usize,
    n: usize,
    dequant: Dequant<'_>,
    out: &mut [f32],
) {
    let k = q.k;
    assert!(
        w.len() == n * k && q.count() == m && q.stride >= k && out.len() == m * n,
        "int8_gemm: shapes"
    );
    assert!(
        dequant.weight_scales.len() == n
            && dequant.token_scales.len() == m
            && dequant.bias.is_none_or(|b| b.len() == n),
        "int8_gemm: scales"
    );
    if m == 0 || n == 0 {
        return;
    }
    let out = DisjointOut::new(out);
    let sink = Sink {
        out: &out,
        n,
        dequant,
    };
    // SAFETY: RowBlocks hands each task a distinct block of rows.
    RowBlocks::weight_rows(m, n, k)
        .run_ahead(|rows, next| unsafe { gemm_block(w, q, None, m, rows, next, &sink) });
}

/// `out[o] = (dot(w[o], q) as f32 * w_scales[o]) * q_scale` — the
/// reference's dequantization, in its order. `q` is int8 within ±127.
pub(crate) fn int8_rows_times_vector(
    weight_i8: &[i8],
    weight_scales: &[f32],
    q: &[i8],
    q_scale: f32,
    out: &mut [f32],
) {
    let dequant = Dequant {
        weight_scales,
        token_scales: &[q_scale],
        bias: None,
    };
    int8_gemm(
        weight_i8,
        Tokens::dense(q, q.len()),
        1,
        out.len(),
        dequant,
        out,
    );
}

/// W8A8 matrix-vector product into `out`: quantize the activation per
/// tensor (MaxAbs), accumulate exactly in integers, and scale.
///
/// `out.len()` stands for [`w8a8_matvec`]'s `out_size`, and the errors are
/// that function's, in its order: an `out` of the wrong length is reported
/// as the weights not being `out.len() * in_size` long.
pub fn w8a8_matvec_into(
    weight_i8: &[i8],
    weight_scales: &[f32],
    activation: &[f32],
    in_size: usize,
    policy: NanPolicy,
    out: &mut [f32],
) -> Result<(), DynQuantError> {
    // `out.len()` is the reference's `out_size`, so the errors are its
    // errors for that size (the cross-check holds this form to them).
    check_matvec(
        weight_i8.len(),
        weight_scales.len(),
        activation.len(),
        out.len(),
        in_size,
    )?;
    let mut q = try_vec(in_size, 0i8)?;
    let scale = quantize_per_tensor_into(
        activation,
        INT8_CLIP,
        DynamicScaleMode::MaxAbs,
        policy,
        &mut q,
    )?;
    int8_rows_times_vector(weight_i8, weight_scales, &q, scale, out);
    Ok(())
}

/// W8A8 matrix-vector multiply: quantize activation on-the-fly, then INT8 GEMV.
///
/// - `weight_i8`: shape `[out_size, in_size]` pre-quantized INT8 (row-major)
/// - `weight_scales`: shape `[out_size]` per-row dequant scales
/// - `activation`: shape `[in_size]` — dynamically quantized per-tensor
///
/// Non-finite activations are handled as the reference does (NaN → 0); the
/// integer sum is exact at any size (the reference's i32 overflows past
/// ~133k columns).
pub fn w8a8_matvec(
    weight_i8: &[i8],
    weight_scales: &[f32],
    activation: &[f32],
    out_size: usize,
    in_size: usize,
) -> Result<Vec<f32>, DynQuantError> {
    try_w8a8_matvec(
        weight_i8,
        weight_scales,
        activation,
        out_size,
        in_size,
        NanPolicy::Reference,
    )
}

/// [`w8a8_matvec`] with a NaN policy.
pub fn try_w8a8_matvec(
    weight_i8: &[i8],
    weight_scales: &[f32],
    activation: &[f32],
    out_size: usize,
    in_size: usize,
    policy: NanPolicy,
) -> Result<Vec<f32>, DynQuantError> {
    check_matvec(
        weight_i8.len(),
        weight_scales.len(),
        activation.len(),
        out_size,
        in_size,
    )?;
    let mut out = try_vec(out_size, 0.0f32)?;
    w8a8_matvec_into(
        weight_i8,
        weight_scales,
        activation,
        in_size,
        policy,
        &mut out,
    )?;
    Ok(out)
}

/// How a product quantizes its activations.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActQuant {
    /// One scale per token (row) — then each token's W8A8 result equals
    /// [`w8a8_matvec`] on that token, bit for bit — or one for all tokens
    /// (the reference's per-tensor rule).
    pub per_token: bool,
    /// How each scale is chosen.
    pub mode: DynamicScaleMode,
    /// What NaN and infinities do.
    pub policy: NanPolicy,
}

impl ActQuant {
    /// Per token, MaxAbs, non-finite input rejected.
    pub const PER_TOKEN: ActQuant = ActQuant {
        per_token: true,
        mode: DynamicScaleMode::MaxAbs,
        policy: NanPolicy::Raise,
    };

    /// Per tensor, MaxAbs, non-finite input rejected.
    pub const PER_TENSOR: ActQuant = ActQuant {
        per_token: false,
        ..Self::PER_TOKEN
    };

    /// Quantizes `m` tokens of `k` values into `q`; returns one scale per token.
    pub(crate) fn quantize(
        &self,
        x: &[f32],
        k: usize,
        q: &mut [i8],
    ) -> Result<Vec<f32>, DynQuantError> {
        let m = x.len() / k.max(1);
        let mode = self.mode.validate()?;
        if self.per_token {
            let mut s = vec![0.0f32; m];
            quantize_per_row_into(x, k, mode, self.policy, q, &mut s)?;
            Ok(s)
        } else {
            let s = quantize_per_tensor_into(x, INT8_CLIP, mode, self.policy, q)?;
            Ok(vec![s; m])
        }
    }
}

/// Batched W8A8: `out[i, j] = (dot(w[j], q[i]) as f32 * w_scales[j]) * s_i
/// (+ bias[j])` for `m` tokens `x` (`[m, k]`), int8 weights `[n, k]`.
///
/// NaN or infinite weight scales or bias are
/// [`DynQuantError::NonFiniteArgument`] (whatever `act.policy`), where
/// [`w8a8_matvec`] passes such scales through IEEE arithmetic as the
/// reference does.
#[allow(clippy::too_many_arguments)]
pub fn w8a8_matmul_into(
    x: &[f32],
    m: usize,
    weight_i8: &[i8],
    weight_scales: &[f32],
    bias: Option<&[f32]>,
    act: ActQuant,
    out: &mut [f32],
) -> Result<(), DynQuantError> {
    let form = gemm_form();
    w8a8_matmul_in_form(x, m, weight_i8, weight_scales, bias, act, out, form)
}

/// [`w8a8_matmul_into`] in the given form (every form gives the same bits).
#[allow(clippy::too_many_arguments)]
pub(crate) fn w8a8_matmul_in_form(
    x: &[f32],
    m: usize,
    weight_i8: &[i8],
    weight_scales: &[f32],
    bias: Option<&[f32]>,
    act: ActQuant,
    out: &mut [f32],
    form: GemmForm,
) -> Result<(), DynQuantError> {
    let n = weight_scales.len();
    let k = x.len().checked_div(m).unwrap_or(0);
    // With no tokens, x must be empty too (as w4a8_matmul_into checks).
    if x.len() != m * k {
        return Err(DynQuantError::ShapeMismatch {
            expected: m * k,
            actual: x.len(),
        });
    }
    if m > 0 && k == 0 {
        return Err(DynQuantError::EmptyInput);
    }
    let k = if m == 0 {
        weight_i8.len() / n.max(1)
    } else {
        k
    };
    let expected = checked_size(n, k, "weights")?;
    if expected != weight_i8.len() {
        return Err(DynQuantError::ShapeMismatch {
            expected,
            actual: weight_i8.len(),
        });
    }
    check_bias_output_and_scales(m, weight_scales, bias, out.len())?;
    if m == 0 {
        return Ok(());
    }
    if panel_form_use(form, m, n, k) {
        let panels = crate::packed::Panels::RowMajor(weight_i8);
        return crate::packed::panel_gemm(x, m, n, k, panels, weight_scales, bias, act, out);
    }
    let out = DisjointOut::new(out);
    let gemm = |acts: &QuantizedActs, rows: Range<usize>, next: Option<Range<usize>>| {
        let sink = Sink {
            out: &out,
            n,
            dequant: Dequant {
                weight_scales,
                token_scales: &acts.scales,
                bias,
            },
        };
        // SAFETY: RowBlocks hands each task a distinct block of rows.
        unsafe {
            gemm_block(
                weight_i8,
                acts.tokens(),
                acts.offset_tokens(),
                m,
                rows,
                next,
                &sink,
            )
        }
    };
    let blocks = RowBlocks::weight_rows(m, n, k);
    let stride = token_stride(k);
    let offset = offset_form_use(form, m, n, k);
    if act.per_token {
        // Quantized while the helper threads wake up.
        blocks.run_prepared_ahead(
            || {
                QuantizedActs::per_token(x, m, k, act, stride)
                    .map(|a| a.with_offset(offset).with_token_sums())
            },
            gemm,
        )
    } else {
        let acts = QuantizedActs::per_tensor(x, m, k, act, stride)?
            .with_offset(offset)
            .with_token_sums();
        blocks.run_ahead(|rows, next| gemm(&acts, rows, next));
        Ok(())
    }
}

/// The GEMM's checks once the weights' shape is known, in the reference's
/// order: a bias of one value per weight row (`weight_scales.len()` of
/// them), an output of `m` such rows, finite weight scales and bias.
pub(crate) fn check_bias_output_and_scales(
    m: usize,
    weight_scales: &[f32],
    bias: Option<&[f32]>,
    out_len: usize,
) -> Result<(), DynQuantError> {
    let n = weight_scales.len();
    for (expected, actual) in [
        (n, bias.map_or(n, <[f32]>::len)),
        (checked_size(m, n, "outputs")?, out_len),
    ] {
        if expected != actual {
            return Err(DynQuantError::ShapeMismatch { expected, actual });
        }
    }
    check_finite_argument(weight_scales, "weight_scales")?;
    check_finite_argument(bias.unwrap_or_default(), "bias")
}

/// The `m` tokens `q` transposed: `[k, m]`, column `c`'s tokens side by
/// side. Whole 8 x 8 blocks go through [`transpose8x8`].
fn transpose_tokens(q: Tokens<'_>, m: usize, qt: &mut [i8]) {
    let k = q.k;
    assert_eq!(qt.len(), k * m, "transpose_tokens: output length");
    let (m8, k8) = (m / 8 * 8, k / 8 * 8);
    for t0 in (0..m8).step_by(8) {
        let rows: [&[i8]; 8] = core::array::from_fn(|i| q.row(t0 + i));
        for c0 in (0..k8).step_by(8) {
            let block = transpose8x8(core::array::from_fn(|i| {
                u64::from_le_bytes(core::array::from_fn(|j| rows[i][c0 + j] as u8))
            }));
            for (j, column) in block.iter().enumerate() {
                let out = &mut qt[(c0 + j) * m + t0..(c0 + j) * m + t0 + 8];
                for (o, b) in out.iter_mut().zip(column.to_le_bytes()) {
                    *o = b as i8;
                }
            }
        }
    }
    // The rest: tokens past the last whole block, then columns past it.
    for t in 0..m {
        let row = q.row(t);
        let columns = if t < m8 { k8..k } else { 0..k };
        for c in columns {
            qt[c * m + t] = row[c];
        }
    }
}

/// Transposes an 8 x 8 byte matrix held as eight little-endian rows (byte
/// `c` of `x[r]` is element `(r, c)`): three rounds of swapping the
/// off-diagonal blocks of 4, 2 and 1 bytes.
fn transpose8x8(mut x: [u64; 8]) -> [u64; 8] {
    for (shift, mask, pairs) in [
        (
            32,
            0x0000_0000_ffff_ffffu64,
            [(0, 4), (1, 5), (2, 6), (3, 7)],
        ),
        (16, 0x0000_ffff_0000_ffff, [(0, 2), (1, 3), (4, 6), (5, 7)]),
        (8, 0x00ff_00ff_00ff_00ff, [(0, 1), (2, 3), (4, 5), (6, 7)]),
    ] {
        for (a, b) in pairs {
            let t = ((x[a] >> shift) ^ x[b]) & mask;
            x[b] ^= t;
            x[a] ^= t << shift;
        }
    }
    x
}

/// What the GEMM's offset form needs of the tokens (see
/// [`OffsetCopies`]).
#[derive(Clone, Copy)]
struct OffsetTokens<'a> {
    u: Tokens<'a>,
    qt: &'a [i8],
    always: bool,
}

/// The tokens' copies for the GEMM's offset form.
pub(crate) struct OffsetCopies {
    /// `q` with every top bit flipped (`q + 128` as unsigned bytes).
    flipped: Vec<i8>,
    /// `q` transposed (`[k, m]`), for the products of the split's
    /// residuals.
    transposed: Vec<i8>,
    /// Whether every weight block takes the form.
    always: bool,
}

/// A product's quantized activations: token `i` is
/// `q[i * stride..i * stride + k]`, with scale `scales[i]`.
pub(crate) struct QuantizedActs {
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
    pub k: usize,
    pub stride: usize,
    /// The copies for the GEMM's offset form, where it takes it.
    pub offset_q: Option<OffsetCopies>,
    /// Each token's [`simd::token_sum`], where the active path uses them.
    pub sums: Option<Vec<i32>>,
}

impl QuantizedActs {
    /// `m` tokens of `k` values, one scale per token, on the calling thread.
    pub(crate) fn per_token(
        x: &[f32],
        m: usize,
        k: usize,
        act: ActQuant,
        stride: usize,
    ) -> Result<Self, DynQuantError> {
        let mode = act.mode.validate()?;
        let mut q = try_vec((m - 1) * stride + k, 0i8)?;
        let mut scales = try_vec(m, 0.0f32)?;
        quantize_per_row_strided_into(x, k, mode, act.policy, &mut q, stride, &mut scales)?;
        Ok(QuantizedActs {
            q,
            scales,
            k,
            stride,
            offset_q: None,
            sums: None,
        })
    }

    /// `m` tokens of `k` values quantized by `act` (here: one scale for all
    /// tokens, repeated per token), in parallel when large.
    pub(crate) fn per_tensor(
        x: &[f32],
        m: usize,
        k: usize,
        act: ActQuant,
        stride: usize,
    ) -> Result<Self, DynQuantError> {
        let mut dense = try_vec(m * k, 0i8)?;
        let scales = act.quantize(x, k, &mut dense)?;
        let q = if stride == k {
            dense
        } else {
            let mut padded = try_vec((m - 1) * stride + k, 0i8)?;
            for (i, row) in dense.chunks_exact(k).enumerate() {
                padded[i * stride..i * stride + k].copy_from_slice(row);
            }
            padded
        };
        Ok(QuantizedActs {
            q,
            scales,
            k,
            stride,
            offset_q: None,
            sums: None,
        })
    }

    pub(crate) fn tokens(&self) -> Tokens<'_> {
        Tokens {
            q: &self.q,
            k: self.k,
            stride: self.stride,
            sums: self.sums.as_deref(),
        }
    }

    /// Adds each token's [`simd::token_sum`] where the active path uses
    /// them (the VNNI paths, for two or more tokens); without them (or
    /// when they cannot be allocated) the product gives the same bits.
    fn with_token_sums(mut self) -> Self {
        let m = self.scales.len();
        if m >= 2 && simd::full_range_int8_madd() {
            if let Ok(mut sums) = try_reserved::<i32>(m) {
                sums.extend((0..m).map(|i| simd::token_sum(self.tokens().row(i))));
                self.sums = Some(sums);
            }
        }
        self
    }

    /// Adds the offset tokens for the offset form's use (see
    /// [`offset_form_use`]).
    ///
    /// The two copies double the tokens' memory; when that cannot be had,
    /// the product keeps the sign form (the same bits) instead of failing.
    fn with_offset(mut self, offset: Option<bool>) -> Self {
        if let Some(always) = offset {
            let copies = try_reserved::<i8>(self.q.len())
                .and_then(|flipped| Ok((flipped, try_vec(self.k * self.scales.len(), 0i8)?)));
            if let Ok((mut flipped, mut transposed)) = copies {
                flipped.extend(self.q.iter().map(|&v| v ^ i8::MIN));
                transpose_tokens(self.tokens(), self.scales.len(), &mut transposed);
                self.offset_q = Some(OffsetCopies {
                    flipped,
                    transposed,
                    always,
                });
            }
        }
        self
    }

    fn offset_tokens(&self) -> Option<OffsetTokens<'_>> {
        self.offset_q.as_ref().map(|copies| OffsetTokens {
            u: Tokens {
                q: &copies.flipped,
                k: self.k,
                stride: self.stride,
                sums: None,
            },
            qt: &copies.transposed,
            always: copies.always,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_the_panel_form_past_its_thresholds() {
        use GemmForm::{Auto, Offset, Panel, Sign};
        let kernel = simd::panel_kernel_available();
        assert_eq!(panel_form_use(Auto, 64, 4096, 4096), kernel);
        assert!(!panel_form_use(Auto, 63, 4096, 4096));
        assert_eq!(panel_form_use(Auto, 16, 1024, 1024), kernel);
        assert!(!panel_form_use(Auto, 15, 1024, 1024));
        assert!(!panel_form_use(Auto, 32, 2048, 2048)); // 4 MiB: not small
        assert!(panel_form_use(Panel, 1, 3, 5));
        assert!(!panel_form_use(Panel, 1, 3, 0));
        assert!(!panel_form_use(Panel, 2, 1, simd::EXACT_I32_TOTAL));
        assert!(!panel_form_use(Sign, 128, 4096, 4096) && !panel_form_use(Offset, 128, 4096, 4096));
    }

    /// `out.len()` is the reference's `out_size`: an `out` of the wrong
    /// length gets the reference's error for that size, after its checks of
    /// the activation (and the cross-check holds it to that).
    #[test]
    fn matvec_into_errors_are_the_references_for_out_len() {
        let (w, s, x) = ([1i8; 6], [1.0f32; 3], [1.0f32; 2]);
        for len in [0usize, 2, 4] {
            let mut out = vec![0.0; len];
            assert_eq!(
                w8a8_matvec_into(&w, &s, &x, 2, NanPolicy::Reference, &mut out),
                Err(DynQuantError::ShapeMismatch {
                    expected: 2 * len,
                    actual: 6
                })
            );
            assert_eq!(
                w8a8_matvec_into(&w, &s, &[], 2, NanPolicy::Reference, &mut out),
                Err(DynQuantError::EmptyInput)
            );
        }
        let mut out = vec![0.0; 3];
        assert_eq!(
            w8a8_matvec_into(&w, &s[..2], &x, 2, NanPolicy::Reference, &mut out),
            Err(DynQuantError::ShapeMismatch {
                expected: 3,
                actual: 2
            })
        );
        w8a8_matvec_into(&w, &s, &x, 2, NanPolicy::Reference, &mut out).unwrap();
        assert_eq!(out, vec![2.0; 3]);
    }

    /// No tokens with a non-empty `x` is a shape error (x is not ignored).
    #[test]
    fn no_tokens_with_data_is_a_shape_error() {
        let mut out = vec![];
        let r = w8a8_matmul_into(
            &[1.0; 6],
            0,
            &[1i8; 6],
            &[1.0; 2],
            None,
            ActQuant::PER_TOKEN,
            &mut out,
        );
        assert_eq!(
            r,
            Err(DynQuantError::ShapeMismatch {
                expected: 0,
                actual: 6
            })
        );
        let r = w8a8_matmul_into(
            &[],
            0,
            &[1i8; 6],
            &[1.0; 2],
            None,
            ActQuant::PER_TOKEN,
            &mut out,
        );
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn errors_in_the_reference_order() {
        let w = [1i8; 6];
        let s = [1.0f32; 2];
        assert_eq!(
            w8a8_matvec(&w, &s, &[], 2, 3),
            Err(DynQuantError::EmptyInput)
        );
        assert_eq!(
            w8a8_matvec(&w, &s, &[1.0; 2], 2, 3),
            Err(DynQuantError::ShapeMismatch {
                expected: 3,
                actual: 2
            })
        );
        assert_eq!(
            w8a8_matvec(&w[..5], &s, &[1.0; 3], 2, 3),
            Err(DynQuantError::ShapeMismatch {
                expected: 6,
                actual: 5
            })
        );
        assert_eq!(
            w8a8_matvec(&w, &s[..1], &[1.0; 3], 2, 3),
            Err(DynQuantError::ShapeMismatch {
                expected: 2,
                actual: 1
            })
        );
        assert_eq!(w8a8_matvec(&[], &[], &[1.0; 3], 0, 3), Ok(vec![]));
    }

    #[test]
    fn minus_128_weights_and_exact_sums() {
        // amax 127 → scale 1, q = activation.
        let a = [127.0f32, -127.0, 1.0];
        let w = [-128i8, -128, -128, 127, -128, 0];
        let y = w8a8_matvec(&w, &[1.0, 0.5], &a, 2, 3).unwrap();
        assert_eq!(y, vec![-128.0, (127.0 * 127.0 + 128.0 * 127.0) * 0.5]);
    }

    /// The activation switch by hand: a loud token (max 127, scale 1) and a
    /// quiet one ([1, 0.4]). Per token, the quiet token gets its own scale
    /// 1/127 (values [127, 51]); per tensor it shares the loud token's scale
    /// 1 (values [1, 0]), so its second output is exactly 0. With one token
    /// the two modes agree.
    #[test]
    fn per_token_and_per_tensor_scales_by_hand() {
        let x = [127.0f32, -127.0, 1.0, 0.4];
        let w = [1i8, 0, 0, -128];
        let ws = [1.0f32, 0.5];
        let loud = [127.0f32, (-127.0 * -128.0) * 0.5];
        let s1 = 1.0f32 / 127.0;
        let run = |x: &[f32], act: ActQuant| {
            let mut y = vec![f32::NAN; x.len()];
            w8a8_matmul_into(x, x.len() / 2, &w, &ws, None, act, &mut y).unwrap();
            y
        };
        let per_token = run(&x, ActQuant::PER_TOKEN);
        assert_eq!(
            per_token,
            vec![
                loud[0],
                loud[1],
                (127.0f32 * 1.0) * s1,
                ((51.0f32 * -128.0) * 0.5) * s1
            ]
        );
        let per_tensor = run(&x, ActQuant::PER_TENSOR);
        assert_eq!(per_tensor, vec![loud[0], loud[1], 1.0, 0.0]);
        for act in [ActQuant::PER_TOKEN, ActQuant::PER_TENSOR] {
            assert_eq!(run(&x[2..], act), per_token[2..].to_vec(), "{act:?}");
        }
    }

    #[test]
    fn matmul_rows_equal_matvec() {
        let (m, n, k) = (7, 5, 67);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.37)
            .collect();
        let w: Vec<i8> = (0..n * k).map(|i| (i * 91 % 256) as u8 as i8).collect();
        let s: Vec<f32> = (0..n).map(|j| 0.01 + j as f32 * 0.003).collect();
        let mut y = vec![0.0; m * n];
        w8a8_matmul_into(&x, m, &w, &s, None, ActQuant::PER_TOKEN, &mut y).unwrap();
        for i in 0..m {
            let row = w8a8_matvec(&w, &s, &x[i * k..(i + 1) * k], n, k).unwrap();
            assert_eq!(&y[i * n..(i + 1) * n], row.as_slice());
        }
    }

    /// A product small enough for one block: 67 weight rows are 33 pairs
    /// (two full chunks of 16 pairs, one more, then an odd row) for 4 + 2
    /// tokens with a k % 32 tail; each token's row is `w8a8_matvec` plus
    /// the bias, on every kernel path.
    #[test]
    fn row_pair_chunks_equal_matvec_on_every_path() {
        let (m, n, k) = (6, 67, 100);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 613 % 419) as f32 - 209.0) * 0.021)
            .collect();
        let w: Vec<i8> = (0..n * k).map(|i| (i * 73 % 256) as u8 as i8).collect();
        let s: Vec<f32> = (0..n).map(|j| 0.003 + j as f32 * 0.0007).collect();
        let b: Vec<f32> = (0..n).map(|j| 1.5 - j as f32 * 0.25).collect();
        matmul_rows_equal_matvec_plus_bias_on_every_path(&x, &w, &s, &b);
    }

    /// Wide rows (padded token stride), every tile shape (4 tokens, then
    /// 1; row pairs, then an odd row), -128 weights and a bias: each token's
    /// row is `w8a8_matvec` plus the bias, on every kernel path.
    #[test]
    fn wide_matmul_rows_equal_matvec_on_every_path() {
        let (m, n, k) = (9, 7, 4096 + 2048);
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 0.013)
            .collect();
        let mut w: Vec<i8> = (0..n * k).map(|i| (i * 131 % 256) as u8 as i8).collect();
        w[..k].fill(-128);
        let s: Vec<f32> = (0..n).map(|j| 0.002 + j as f32 * 0.001).collect();
        let b: Vec<f32> = (0..n).map(|j| j as f32 - 2.5).collect();
        assert_ne!(token_stride(k), k);
        matmul_rows_equal_matvec_plus_bias_on_every_path(&x, &w, &s, &b);
    }

    /// On every kernel path, each token's row of the per-token W8A8 GEMM of
    /// `x` (`[m, k]`) with `w` (`[n, k]`) is `w8a8_matvec` on that token plus
    /// the bias (so every path gives the same bits).
    fn matmul_rows_equal_matvec_plus_bias_on_every_path(x: &[f32], w: &[i8], s: &[f32], b: &[f32]) {
        let n = s.len();
        let k = w.len() / n;
        let m = x.len() / k;
        let mut results = Vec::new();
        for isa in simd::supported() {
            simd::set_isa(isa).unwrap();
            for form in [GemmForm::Sign, GemmForm::Offset, GemmForm::Panel] {
                let mut y = vec![0.0; m * n];
                let act = ActQuant::PER_TOKEN;
                w8a8_matmul_in_form(x, m, w, s, Some(b), act, &mut y, form).unwrap();
                for i in 0..m {
                    let row = w8a8_matvec(w, s, &x[i * k..(i + 1) * k], n, k).unwrap();
                    let want: Vec<f32> = row.iter().zip(b).map(|(v, b)| v + b).collect();
                    let got = &y[i * n..(i + 1) * n];
                    assert_eq!(got, want.as_slice(), "{isa:?} {form:?} token {i}");
                }
                results.push(y);
            }
        }
        simd::set_isa(simd::best_supported()).unwrap();
        assert!(results.windows(2).all(|p| p[0] == p[1]));
    }

    /// Weights like real ones: mostly small, a few pairs that are not
    /// pair-safe (both large, one sign), plus the extremes at fixed places.
    fn realistic_weights(n: usize, k: usize, seed: u64) -> Vec<i8> {
        let mut next = crate::test_rng::xorshift(seed);
        let mut w: Vec<i8> = (0..n * k)
            .map(|_| {
                let sum: i32 = (0..4).map(|_| (next() % 65) as i32 - 32).sum();
                sum.clamp(-128, 127) as i8
            })
            .collect();
        for (i, pair) in [
            [127, 127],
            [-128, -128],
            [-128, -1],
            [1, 127],
            [-128, 127],
            [64, 65],
        ]
        .iter()
        .enumerate()
        {
            let at = ((2 * i * 37) % (n * k - 1)) & !1;
            w[at..at + 2].copy_from_slice(pair);
        }
        w
    }

    /// The offset form (pair-safe weights times `q + 128`, residuals added
    /// back) gives the sign form's bits and `w8a8_matvec`'s, on every path,
    /// for both activation modes, with and without a bias: odd and short
    /// rows (tails of 1..31 columns), one and several token groups.
    #[test]
    fn offset_form_equals_sign_form_and_matvec() {
        for (m, n, k) in [
            (2, 3, 32),
            (5, 7, 33),
            (9, 6, 95),
            (17, 10, 385),
            (4, 9, 1024),
            (66, 5, 64),
            (1030, 3, 40), // more tokens than one chunk of extras
        ] {
            let mut x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 2003) as f32 - 1001.0) * 0.013)
                .collect();
            // Tokens of all +127 and all -127: the sums nearest i16 saturation.
            x[..k].fill(1.0);
            x[k..2 * k].fill(-1.0);
            let w = realistic_weights(n, k, 0x5eed + k as u64);
            let s: Vec<f32> = (0..n).map(|j| 0.002 + j as f32 * 0.001).collect();
            let b: Vec<f32> = (0..n).map(|j| j as f32 - 2.5).collect();
            matmul_rows_equal_matvec_plus_bias_on_every_path(&x, &w, &s, &b);
            for act in [ActQuant::PER_TOKEN, ActQuant::PER_TENSOR] {
                let mut results = Vec::new();
                for isa in simd::supported() {
                    simd::set_isa(isa).unwrap();
                    for form in [GemmForm::Sign, GemmForm::Offset, GemmForm::Panel] {
                        let mut y = vec![0.0; m * n];
                        w8a8_matmul_in_form(&x, m, &w, &s, None, act, &mut y, form).unwrap();
                        results.push(y);
                    }
                }
                simd::set_isa(simd::best_supported()).unwrap();
                assert!(
                    results.windows(2).all(|p| p[0] == p[1]),
                    "{m}x{n}x{k} {act:?}"
                );
            }
        }
    }

    /// A block whose weights are dense in unsafe pairs (uniform bytes) takes
    /// the sign form, the others the offset form, in one product with the
    /// same bits as either form throughout.
    #[test]
    fn offset_form_declines_dense_blocks() {
        let (m, n, k) = (5, 200, 4096);
        let mut w = realistic_weights(n, k, 7);
        let mut next = crate::test_rng::xorshift(11);
        let rows_per_block = 64; // RowBlocks::weight_rows for k = 4096
        for v in &mut w[..rows_per_block * k] {
            *v = next() as u8 as i8;
        }
        let block = |b: usize| &w[b * rows_per_block * k..((b + 1) * rows_per_block).min(n) * k];
        assert!(SplitRows::with_split(block(0), k, true, |_| ()).is_none());
        assert!(SplitRows::with_split(block(0), k, false, |_| ()).is_some());
        for b in 1..4 {
            assert!(SplitRows::with_split(block(b), k, true, |_| ()).is_some());
        }
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 613 % 419) as f32 - 209.0) * 0.021)
            .collect();
        let s = vec![0.01f32; n];
        let b: Vec<f32> = (0..n).map(|j| j as f32 * 0.5).collect();
        matmul_rows_equal_matvec_plus_bias_on_every_path(&x, &w, &s, &b);
    }

    /// Every one of the 65536 weight pairs, on every path: `clip` is
    /// pair-safe, `clip + residual == w`, the residual sits only on changed
    /// second values, and the sums and residuals agree across paths.
    #[test]
    fn split_pair_safe_on_every_pair() {
        let w: Vec<i8> = (0..=u16::MAX)
            .flat_map(|p| p.to_le_bytes())
            .map(|b| b as i8)
            .collect();
        let mut results = Vec::new();
        for isa in simd::supported() {
            simd::set_isa(isa).unwrap();
            let mut clip = vec![0i8; w.len()];
            let (mut cols, mut vals) = (vec![0u32; w.len() / 2], vec![0i8; w.len() / 2]);
            let (sum, count) = simd::split_pair_safe(&w, &mut clip, &mut cols, &mut vals);
            let mut rebuilt: Vec<i32> = clip.iter().map(|&c| c as i32).collect();
            for (&c, &v) in cols[..count].iter().zip(&vals[..count]) {
                assert_eq!(c % 2, 1, "{isa:?}: residual on a first value");
                rebuilt[c as usize] += v as i32;
            }
            let original: Vec<i32> = w.iter().map(|&v| v as i32).collect();
            assert_eq!(rebuilt, original, "{isa:?}");
            for p in clip.chunks_exact(2) {
                let (a, b) = (p[0] as i32, p[1] as i32);
                assert!(
                    a.max(0) + b.max(0) <= 128 && a.min(0) + b.min(0) >= -128,
                    "{isa:?} {p:?}"
                );
                // maddubs' worst cases stay within i16.
                assert!((255 * (a.max(0) + b.max(0))) <= i16::MAX as i32);
                assert!((255 * (a.min(0) + b.min(0))) >= i16::MIN as i32);
            }
            assert_eq!(sum, clip.iter().map(|&c| c as i32).sum::<i32>(), "{isa:?}");
            // Unsafe pairs: both of one sign, magnitudes summing past 128.
            let unsafe_pairs = w
                .chunks_exact(2)
                .filter(|p| {
                    let (a, b) = (p[0] as i32, p[1] as i32);
                    (a > 0 && b > 0 && a + b > 128) || (a < 0 && b < 0 && a + b < -128)
                })
                .count();
            assert_eq!(count, unsafe_pairs, "{isa:?}");
            results.push((clip, cols[..count].to_vec(), vals[..count].to_vec(), sum));
        }
        simd::set_isa(simd::best_supported()).unwrap();
        assert!(results.windows(2).all(|p| p[0] == p[1]));
    }

    /// The clipped sum of the pairs that clamp to +128 (and -128) in every
    /// lane for longer than an i16 lane can count without widening.
    #[test]
    fn split_pair_safe_sums_long_saturated_rows() {
        for (value, pair_sum) in [(127i8, 128i32), (-128, -128)] {
            let w = vec![value; 32 * 600];
            for isa in simd::supported() {
                simd::set_isa(isa).unwrap();
                let mut clip = vec![0i8; w.len()];
                let (mut cols, mut vals) = (vec![0u32; w.len() / 2], vec![0i8; w.len() / 2]);
                let (sum, count) = simd::split_pair_safe(&w, &mut clip, &mut cols, &mut vals);
                assert_eq!(sum, pair_sum * (w.len() / 2) as i32, "{isa:?} {value}");
                assert_eq!(count, w.len() / 2, "{isa:?} {value}");
            }
        }
        simd::set_isa(simd::best_supported()).unwrap();
    }

    /// A row's residual products for every token count around the vector
    /// width and every first token, on every path, against the definition.
    #[test]
    fn residual_products_match_the_definition() {
        let (k, m) = (40usize, 27usize);
        let mut next = crate::test_rng::xorshift(7);
        let qt: Vec<i8> = (0..k * m).map(|_| (next() % 255) as i8).collect();
        let cols: Vec<u32> = (0..k as u32).rev().step_by(3).collect();
        let mut vals: Vec<i8> = cols.iter().map(|_| next() as i8).collect();
        vals[0] = i8::MIN;
        for first in [0, 1, 5] {
            for count in 0..=m - first {
                let start: Vec<i32> = (0..count as i32).map(|t| t * 1000 - 7).collect();
                let mut want = start.clone();
                for (t, w) in want.iter_mut().enumerate() {
                    for (&c, &v) in cols.iter().zip(&vals) {
                        *w += v as i32 * qt[c as usize * m + first + t] as i32;
                    }
                }
                for isa in simd::supported() {
                    simd::set_isa(isa).unwrap();
                    let mut acc = start.clone();
                    simd::add_residual_products(&mut acc, &cols, &vals, &qt, m, first);
                    assert_eq!(acc, want, "{isa:?} first {first} count {count}");
                }
            }
        }
        simd::set_isa(simd::best_supported()).unwrap();
    }

    /// The row pairs given the tokens' sums (which the VNNI paths use to
    /// take the weights as the unsigned side) equal those without, on every
    /// path, for any int8 weights; `token_sum` is the plain sum of the
    /// whole 32-column steps.
    #[test]
    fn row_pairs_with_token_sums_on_every_path() {
        const T: usize = 4;
        let (k, pairs) = (4096 + 96 + 5, 5);
        let mut next = crate::test_rng::xorshift(11);
        let w: Vec<i8> = (0..2 * pairs * k)
            .map(|i| if i % 7 == 0 { i8::MIN } else { next() as i8 })
            .collect();
        let q: Vec<Vec<i8>> = (0..T)
            .map(|_| (0..k).map(|_| (next() as i8).max(-127)).collect())
            .collect();
        let q: [&[i8]; T] = core::array::from_fn(|t| &q[t][..]);
        let ws: Vec<f32> = (0..2 * pairs).map(|j| 1e-4 * (j + 3) as f32).collect();
        let ts = [0.5, 0.01, 2.0, 1e-3];
        let bits = |y: &[[[f32; 2]; T]]| -> Vec<u32> {
            y.iter().flatten().flatten().map(|v| v.to_bits()).collect()
        };
        simd::set_isa(simd::Isa::Scalar).unwrap();
        let mut want = vec![[[0.0f32; 2]; T]; pairs];
        simd::w8a8_row_pairs(&w, &q, None, 0, &ws, ts, None, &mut want);
        for isa in simd::supported() {
            simd::set_isa(isa).unwrap();
            let sums = q.map(simd::token_sum);
            let plain: i64 = q[1][..k / 32 * 32].iter().map(|&v| v as i64).sum();
            assert_eq!(sums[1] as i64, plain, "{isa:?}");
            for a_sums in [None, Some(sums)] {
                let mut got = vec![[[0.0f32; 2]; T]; pairs];
                simd::w8a8_row_pairs(
                    &w,
                    &q,
                    a_sums,
                    if a_sums.is_some() { -2 } else { 4 },
                    &ws,
                    ts,
                    None,
                    &mut got,
                );
                assert_eq!(bits(&got), bits(&want), "{isa:?} {}", a_sums.is_some());
            }
        }
        simd::set_isa(simd::best_supported()).unwrap();
    }

    /// The 8 x 8 block transpose and its edges against the definition, for
    /// token counts and widths around the block size, with padded rows.
    #[test]
    fn transpose_tokens_matches_the_definition() {
        for m in [1, 7, 8, 9, 17] {
            for (k, stride) in [(1, 1), (8, 8), (13, 16), (64, 64), (70, 100)] {
                let q: Vec<i8> = (0..(m - 1) * stride + k)
                    .map(|i| (i * 37 % 256) as u8 as i8)
                    .collect();
                let tokens = Tokens {
                    q: &q,
                    k,
                    stride,
                    sums: None,
                };
                let mut qt = vec![0i8; k * m];
                transpose_tokens(tokens, m, &mut qt);
                for t in 0..m {
                    for c in 0..k {
                        assert_eq!(qt[c * m + t], q[t * stride + c], "m {m} k {k} ({t}, {c})");
                    }
                }
            }
        }
    }

    /// The batched product refuses NaN/Inf weight scales and bias (naming
    /// the argument and the first bad index), under either NaN policy and
    /// with no tokens; the matrix-vector product keeps the reference's IEEE
    /// pass-through.
    #[test]
    fn matmul_refuses_non_finite_scales_and_bias() {
        let (n, k) = (4, 3);
        let w = [1i8; 12];
        let x = [0.5f32, -1.0, 2.0, 1.0, 1.0, 1.0];
        let good = [0.5f32; 4];
        let mut y = vec![0.0; 2 * n];
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut s = good;
            s[2] = bad;
            s[3] = f32::NAN;
            for (m, act) in [
                (2, ActQuant::PER_TOKEN),
                (2, ActQuant::PER_TENSOR),
                (0, ActQuant::PER_TOKEN),
            ] {
                for policy in [NanPolicy::Raise, NanPolicy::Reference] {
                    let act = ActQuant { policy, ..act };
                    let (xm, ym) = (&x[..m * k], &mut y[..m * n]);
                    let err = w8a8_matmul_into(xm, m, &w, &s, None, act, ym).unwrap_err();
                    assert!(matches!(
                        err,
                        DynQuantError::NonFiniteArgument { argument: "weight_scales", index: 2, value }
                            if value.to_bits() == bad.to_bits()
                    ));
                    let err = w8a8_matmul_into(xm, m, &w, &good, Some(&s), act, ym).unwrap_err();
                    assert!(matches!(
                        err,
                        DynQuantError::NonFiniteArgument {
                            argument: "bias",
                            index: 2,
                            ..
                        }
                    ));
                }
            }
            let y = w8a8_matvec(&w, &s, &x[..k], n, k).unwrap();
            assert!(y[0].is_finite() && y[0] > 0.0 && y[3].is_nan());
            assert!(y[2] == bad || (y[2].is_nan() && bad.is_nan()));
        }
        let err = w8a8_matmul_into(&x, 2, &w, &[f32::NAN; 4], None, ActQuant::PER_TOKEN, &mut y);
        assert_eq!(
            err.unwrap_err().to_string(),
            "non-finite value NaN at flat index 0 of weight_scales: weight_scales must be finite"
        );
    }

    #[test]
    fn offset_form_is_exact_at_the_i32_limit() {
        // The longest rows the offset form takes, with the largest sums:
        // its parts (the offset sum, -128 * sum(clip), the residual) pass
        // i32 and wrap, and the total must still be exact.
        let k = simd::EXACT_I32_TOTAL - 1;
        let (m, n) = (3, 4);
        let mut w = vec![-128i8; n * k]; // every pair unsafe: a dense residual
        w[k..2 * k].fill(127);
        for (i, v) in w[2 * k..3 * k].iter_mut().enumerate() {
            *v = if i % 2 == 0 { 127 } else { -128 };
        }
        // Pair-safe as it is, and its offset sum with the all-127 token,
        // 255 * 64 * k, passes i32: the wrapping sums must come back.
        w[3 * k..].fill(64);
        let mut x = vec![1.0f32; m * k];
        x[k..2 * k].fill(-1.0);
        for (i, v) in x[2 * k..].iter_mut().enumerate() {
            *v = if i % 3 == 0 { -1.0 } else { 1.0 };
        }
        let s = vec![1.0f32; n];
        let mut results = Vec::new();
        for form in [GemmForm::Sign, GemmForm::Offset, GemmForm::Panel] {
            let mut y = vec![0.0; m * n];
            w8a8_matmul_in_form(&x, m, &w, &s, None, ActQuant::PER_TOKEN, &mut y, form).unwrap();
            for i in 0..m {
                let want = w8a8_matvec(&w, &s, &x[i * k..(i + 1) * k], n, k).unwrap();
                assert_eq!(
                    &y[i * n..(i + 1) * n],
                    want.as_slice(),
                    "{form:?} token {i}"
                );
            }
            results.push(y);
        }
        // Row 0 with token 0: -128 * 127 * k, within i32 by one column.
        assert_eq!(
            results[1][0],
            (-128.0f32 * 127.0 * k as f32) * (1.0 / 127.0)
        );
        assert_eq!(results[0], results[1]);
    }

    #[test]
    fn no_overflow_past_i32() {
        let n = 140_000;
        let w = vec![-128i8; n];
        let a = vec![-1.0f32; n];
        let y = w8a8_matvec(&w, &[1.0], &a, 1, n).unwrap();
        let acc = 128i64 * 127 * n as i64;
        assert_eq!(y[0], (acc as f32 * 1.0) * (1.0 / 127.0));
    }
}
