//! W8A8 products: int8 weights times dynamically quantized activations.

use core::ops::Range;

use crate::error::{check_finite_argument, checked_size, try_vec};
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
    fn value(&self, i: usize, j: usize, acc: i64) -> f32 {
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
}

impl<'a> Tokens<'a> {
    /// Tokens stored one after the other.
    pub(crate) fn dense(q: &'a [i8], k: usize) -> Self {
        Tokens { q, k, stride: k }
    }

    #[inline(always)]
    fn row(&self, i: usize) -> &'a [i8] {
        &self.q[i * self.stride..i * self.stride + self.k]
    }

    fn count(&self) -> usize {
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
    /// `j0` (`pairs` of them) with tokens `m0..m0 + T`, written.
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
    ) {
        const CHUNK: usize = 16;
        let k = q.k;
        let tokens: [&[i8]; T] = core::array::from_fn(|t| q.row(m0 + t));
        let d = &self.dequant;
        let ts: [f32; T] = core::array::from_fn(|t| d.token_scales[m0 + t]);
        let mut y = [[[0.0f32; 2]; T]; CHUNK];
        let mut p0 = 0;
        while p0 < pairs {
            let count = CHUNK.min(pairs - p0);
            let (j, j_end) = (j0 + 2 * p0, j0 + 2 * (p0 + count));
            simd::w8a8_row_pairs(
                &w[j * k..j_end * k],
                &tokens,
                &d.weight_scales[j..j_end],
                ts,
                d.bias.map(|b| &b[j..j_end]),
                &mut y[..count],
            );
            for (p, pair) in y[..count].iter().enumerate() {
                for (t, values) in pair.iter().enumerate() {
                    // SAFETY: the caller owns these columns (bounds checked
                    // inside `write_run`).
                    unsafe { self.out.write_run((m0 + t) * self.n + j + 2 * p, values) };
                }
            }
            p0 += count;
        }
    }
}

/// Weight rows `rows` against tokens `m0..m0 + T`: two rows at a time with
/// a vectorized dequantization, then a last odd row.
///
/// # Safety
/// The caller's task owns weight rows `rows`.
unsafe fn pair_rows<const T: usize>(
    w: &[i8],
    q: Tokens<'_>,
    rows: Range<usize>,
    m0: usize,
    sink: &Sink<'_>,
) {
    let pairs = rows.len() / 2;
    let odd = rows.start + 2 * pairs;
    // SAFETY (both calls): rows in `rows` belong to this task.
    unsafe {
        sink.row_pairs::<T>(w, q, m0, rows.start, pairs);
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
/// block of weight rows stays in cache while the tokens stream past.
///
/// # Safety
/// The caller's task owns weight rows `rows`.
unsafe fn gemm_block(w: &[i8], q: Tokens<'_>, m: usize, rows: Range<usize>, sink: &Sink<'_>) {
    let mut m0 = 0;
    // SAFETY (all calls): the rows are the caller's.
    unsafe {
        if m == 1 {
            // One token (a matrix-vector product): four rows at a time.
            return tile_rows::<4, 1>(w, q, rows, m0, sink);
        }
        while m0 + 4 <= m {
            pair_rows::<4>(w, q, rows.clone(), m0, sink);
            m0 += 4;
        }
        match m - m0 {
            3 => pair_rows::<3>(w, q, rows, m0, sink),
            2 => pair_rows::<2>(w, q, rows, m0, sink),
            1 => pair_rows::<1>(w, q, rows, m0, sink),
            _ => {}
        }
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
    RowBlocks::weight_rows(m, n, k).run(|rows| unsafe { gemm_block(w, q, m, rows, &sink) });
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
    for (expected, actual) in [
        (checked_size(n, k, "weights")?, weight_i8.len()),
        (n, bias.map_or(n, <[f32]>::len)),
        (checked_size(m, n, "outputs")?, out.len()),
    ] {
        if expected != actual {
            return Err(DynQuantError::ShapeMismatch { expected, actual });
        }
    }
    check_finite_argument(weight_scales, "weight_scales")?;
    check_finite_argument(bias.unwrap_or_default(), "bias")?;
    if m == 0 {
        return Ok(());
    }
    let out = DisjointOut::new(out);
    let gemm = |acts: &QuantizedActs, rows: Range<usize>| {
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
        unsafe { gemm_block(weight_i8, acts.tokens(), m, rows, &sink) }
    };
    let blocks = RowBlocks::weight_rows(m, n, k);
    let stride = token_stride(k);
    if act.per_token {
        // Quantized while the helper threads wake up.
        blocks.run_prepared(|| QuantizedActs::per_token(x, m, k, act, stride), gemm)
    } else {
        let acts = QuantizedActs::per_tensor(x, m, k, act, stride)?;
        blocks.run(|rows| gemm(&acts, rows));
        Ok(())
    }
}

/// A product's quantized activations: token `i` is
/// `q[i * stride..i * stride + k]`, with scale `scales[i]`.
pub(crate) struct QuantizedActs {
    pub q: Vec<i8>,
    pub scales: Vec<f32>,
    pub k: usize,
    pub stride: usize,
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
        })
    }

    pub(crate) fn tokens(&self) -> Tokens<'_> {
        Tokens {
            q: &self.q,
            k: self.k,
            stride: self.stride,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            let mut y = vec![0.0; m * n];
            w8a8_matmul_into(x, m, w, s, Some(b), ActQuant::PER_TOKEN, &mut y).unwrap();
            for i in 0..m {
                let row = w8a8_matvec(w, s, &x[i * k..(i + 1) * k], n, k).unwrap();
                let want: Vec<f32> = row.iter().zip(b).map(|(v, b)| v + b).collect();
                assert_eq!(&y[i * n..(i + 1) * n], want.as_slice(), "{isa:?} token {i}");
            }
            results.push(y);
        }
        simd::set_isa(simd::best_supported()).unwrap();
        assert!(results.windows(2).all(|p| p[0] == p[1]));
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
    fn no_overflow_past_i32() {
        let n = 140_000;
        let w = vec![-128i8; n];
        let a = vec![-1.0f32; n];
        let y = w8a8_matvec(&w, &[1.0], &a, 1, n).unwrap();
        let acc = 128i64 * 127 * n as i64;
        assert_eq!(y[0], (acc as f32 * 1.0) * (1.0 / 127.0));
    }
}
