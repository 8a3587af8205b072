//! Weight blocks of the W8A8 GEMM in the offset form: each block's rows are
//! split into pair-safe values and a sparse residual
//! ([`simd::split_pair_safe`]), so the AVX2 kernel multiplies unsigned
//! tokens (`q + 128`) by them with `maddubs`, which cannot saturate there,
//! instead of paying a `sign` per product for signed tokens. The products
//! stay exact; the residual, the offset and the last `k % 32` columns are
//! added back per output as integers ([`SplitRows::extra`]). On the VNNI
//! paths, whose multiply-add never saturates
//! ([`simd::offset_takes_any_weights`]), the rows are used as they are and
//! only the offset and the last columns are added back.

use core::cell::RefCell;
use core::ops::Range;

use crate::matmul::Tokens;
use crate::simd;

/// Residuals above one per this many values make a block take the sign
/// form. Per token, the offset form saves one vector operation per 32
/// columns, and each residual costs about three per 8 tokens (widen,
/// multiply, add) plus its share of the split: break-even near one residual
/// per 12 values, so 1 in 64 keeps a wide margin. Real weights have 1 in
/// 80–330; uniform random bytes 1 in 8.
const MAX_RESIDUAL_DENSITY: usize = 64;

/// One block of weight rows, split.
#[derive(Default)]
pub(crate) struct SplitRows {
    k: usize,
    /// Whether the rows are used as they are (`clip` then unused).
    unsplit: bool,
    /// The pair-safe rows (`k` values each; the last `k % 32` copied as is).
    clip: Vec<i8>,
    /// Per row, `-128 * sum(clip)` over the first `k / 32 * 32` columns
    /// (of the row itself where unsplit).
    offset: Vec<i32>,
    /// Row `r`'s residuals are `cols[starts[r]..starts[r + 1]]` (columns in
    /// the row) and the same range of `vals`.
    starts: Vec<u32>,
    cols: Vec<u32>,
    vals: Vec<i8>,
    /// One row's residuals, before they join `cols` and `vals`.
    row_cols: Vec<u32>,
    row_vals: Vec<i8>,
    /// `tokens` per row: what [`simd::w8a8_row_pairs_offset`] adds to each
    /// of the row's offset sums with tokens `first_token..` (see
    /// [`SplitRows::fill_extras`]).
    extras: Vec<i32>,
    first_token: usize,
    tokens: usize,
}

thread_local! {
    /// Each thread's block buffers, reused from call to call.
    static BLOCK: RefCell<SplitRows> = RefCell::new(SplitRows::default());
}

impl SplitRows {
    /// Runs `f` with this thread's block buffers holding `w`'s rows (`k`
    /// values each) split, or, with `decline_dense`, returns `None` without
    /// calling it when the rows have too many residuals for the offset form
    /// to pay (more than one per [`MAX_RESIDUAL_DENSITY`] values). With
    /// `unsplit` (for a kernel that takes any weights, see
    /// [`simd::offset_takes_any_weights`]) the rows are not split: only
    /// their offsets are computed.
    pub(crate) fn with_split<R>(
        w: &[i8],
        k: usize,
        decline_dense: bool,
        unsplit: bool,
        f: impl FnOnce(&mut SplitRows) -> R,
    ) -> Option<R> {
        let limit = if decline_dense {
            w.len() / MAX_RESIDUAL_DENSITY
        } else {
            usize::MAX
        };
        BLOCK.with_borrow_mut(|block| block.split(w, k, limit, unsplit).then(|| f(block)))
    }

    /// Splits the rows of `w` into this block; false when they hold more
    /// than `limit` residuals (the block is then partly filled and
    /// unusable). With `unsplit`, only the offsets are computed: no copy,
    /// no residuals.
    fn split(&mut self, w: &[i8], k: usize, limit: usize, unsplit: bool) -> bool {
        assert!(k > 0 && w.len().is_multiple_of(k), "SplitRows: shapes");
        let body = k / 32 * 32;
        self.k = k;
        self.offset.clear();
        self.starts.clear();
        self.cols.clear();
        self.vals.clear();
        self.starts.push(0);
        self.unsplit = unsplit;
        if unsplit {
            for row in w.chunks_exact(k) {
                // The block's rows are below EXACT_I32_TOTAL long: the sum
                // fits in i32, and the offset wraps as the products do.
                let sum = simd::sum_i8(&row[..body]) as i32;
                self.offset.push(sum.wrapping_mul(-128));
                self.starts.push(0);
            }
            return true;
        }
        // Every value is written below.
        self.clip.resize(w.len(), 0);
        self.row_cols.resize(body / 2, 0);
        self.row_vals.resize(body / 2, 0);
        for (row, clip) in w.chunks_exact(k).zip(self.clip.chunks_exact_mut(k)) {
            let (sum, n) = simd::split_pair_safe(
                &row[..body],
                &mut clip[..body],
                &mut self.row_cols,
                &mut self.row_vals,
            );
            self.cols.extend_from_slice(&self.row_cols[..n]);
            self.vals.extend_from_slice(&self.row_vals[..n]);
            clip[body..].copy_from_slice(&row[body..]);
            self.offset.push(sum.wrapping_mul(-128));
            self.starts.push(self.cols.len() as u32);
            if self.cols.len() > limit {
                return false;
            }
        }
        true
    }

    /// Fills [`SplitRows::extras`] for the tokens `tokens` of the `m`
    /// tokens `q`: for row `r` and token `t`, the offset correction
    /// `-128 * sum(clip)`, the residual's products and the last `k % 32`
    /// columns' products (from the original rows `w`, this block's),
    /// wrapping in i32 — what makes the offset sum `sum q * w` exactly. A
    /// row's residual products come from [`simd::add_residual_products`],
    /// which reads each residual column's tokens side by side from `qt`
    /// (`q` transposed, `[k, m]`; unused, and may be empty, when unsplit).
    pub(crate) fn fill_extras(
        &mut self,
        w: &[i8],
        q: Tokens<'_>,
        qt: &[i8],
        m: usize,
        tokens: Range<usize>,
    ) {
        let k = self.k;
        let body = k / 32 * 32;
        let rows = self.offset.len();
        let count = tokens.len();
        assert!(
            w.len() == rows * k
                && (qt.len() == k * m || self.cols.is_empty())
                && tokens.end <= m
                && q.count() >= m,
            "SplitRows: tokens"
        );
        self.first_token = tokens.start;
        self.tokens = count;
        self.extras.clear();
        self.extras.resize(rows * count, 0);
        for (r, e) in self.extras.chunks_exact_mut(count).enumerate() {
            e.fill(self.offset[r]);
            let (start, end) = (self.starts[r] as usize, self.starts[r + 1] as usize);
            simd::add_residual_products(
                e,
                &self.cols[start..end],
                &self.vals[start..end],
                qt,
                m,
                tokens.start,
            );
            if body < k {
                let w_tail = &w[r * k + body..(r + 1) * k];
                for (t, e) in tokens.clone().zip(e.iter_mut()) {
                    let tail = simd::scalar::dot_i8(w_tail, &q.row(t)[body..]);
                    *e = e.wrapping_add(tail as i32);
                }
            }
        }
    }

    /// The rows `rows` (indices within `w`, the block of rows given to
    /// [`SplitRows::with_split`]), row-major, as the offset form's kernel
    /// takes them: pair-safe, or `w`'s own where unsplit.
    pub(crate) fn rows<'a>(&'a self, w: &'a [i8], rows: core::ops::Range<usize>) -> &'a [i8] {
        let rows = rows.start * self.k..rows.end * self.k;
        if self.unsplit {
            &w[rows]
        } else {
            &self.clip[rows]
        }
    }

    /// Whether [`SplitRows::rows`] are pair-safe (split), not the block's own.
    pub(crate) fn pair_safe(&self) -> bool {
        !self.unsplit
    }

    /// What [`simd::w8a8_row_pairs_offset`] adds to the offset sum of row
    /// `r` (index within the block) and token `t` (one of the last
    /// [`SplitRows::fill_extras`] call's).
    #[inline(always)]
    pub(crate) fn extra(&self, r: usize, t: usize) -> i32 {
        self.extras[r * self.tokens + (t - self.first_token)]
    }
}
