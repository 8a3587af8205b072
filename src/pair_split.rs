//! Weight blocks of the W8A8 GEMM in the offset form: each block's rows are
//! split into pair-safe values and a sparse residual
//! ([`simd::split_pair_safe`]), so the AVX2 kernel multiplies unsigned
//! tokens (`q + 128`) by them with `maddubs`, which cannot saturate there,
//! instead of paying a `sign` per product for signed tokens. The products
//! stay exact; the residual, the offset and the last `k % 32` columns are
//! added back per output as integers ([`SplitRows::extra`]).

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
    /// The pair-safe rows (`k` values each; the last `k % 32` copied as is).
    clip: Vec<i8>,
    /// Per row, `-128 * sum(clip)` over the first `k / 32 * 32` columns.
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
    /// to pay (more than one per [`MAX_RESIDUAL_DENSITY`] values).
    pub(crate) fn with_split<R>(
        w: &[i8],
        k: usize,
        decline_dense: bool,
        f: impl FnOnce(&mut SplitRows) -> R,
    ) -> Option<R> {
        let limit = if decline_dense {
            w.len() / MAX_RESIDUAL_DENSITY
        } else {
            usize::MAX
        };
        BLOCK.with_borrow_mut(|block| block.split(w, k, limit).then(|| f(block)))
    }

    /// Splits the rows of `w` into this block; false when they hold more
    /// than `limit` residuals (the block is then partly filled and
    /// unusable).
    fn split(&mut self, w: &[i8], k: usize, limit: usize) -> bool {
        assert!(k > 0 && w.len().is_multiple_of(k), "SplitRows: shapes");
        let body = k / 32 * 32;
        self.k = k;
        // Every value is written below.
        self.clip.resize(w.len(), 0);
        self.offset.clear();
        self.starts.clear();
        self.cols.clear();
        self.vals.clear();
        self.starts.push(0);
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
    /// (`q` transposed, `[k, m]`).
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
            w.len() == rows * k && qt.len() == k * m && tokens.end <= m && q.count() >= m,
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

    /// The pair-safe rows `rows` (indices within the block), row-major.
    pub(crate) fn clip_rows(&self, rows: core::ops::Range<usize>) -> &[i8] {
        &self.clip[rows.start * self.k..rows.end * self.k]
    }

    /// What [`simd::w8a8_row_pairs_offset`] adds to the offset sum of row
    /// `r` (index within the block) and token `t` (one of the last
    /// [`SplitRows::fill_extras`] call's).
    #[inline(always)]
    pub(crate) fn extra(&self, r: usize, t: usize) -> i32 {
        self.extras[r * self.tokens + (t - self.first_token)]
    }
}
