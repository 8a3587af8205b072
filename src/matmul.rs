//! W8A8 products: int8 weights times dynamically quantized activations.

use core::ops::Range;

use crate::error::{checked_size, try_vec};
use crate::parallel::{self, DisjointOut};
use crate::quantize::{quantize_per_row_into, quantize_per_tensor_into, INT8_CLIP};
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
}

/// Dot products of weight rows `rows` with tokens `m0..m0 + T`, `R` rows at
/// a time (then single rows for the remainder).
///
/// # Safety
/// The caller's task owns weight rows `rows`.
unsafe fn tile_rows<const R: usize, const T: usize>(
    w: &[i8],
    q: &[i8],
    k: usize,
    rows: Range<usize>,
    m0: usize,
    sink: &Sink<'_>,
) {
    let tokens: [&[i8]; T] = core::array::from_fn(|t| &q[(m0 + t) * k..(m0 + t + 1) * k]);
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
unsafe fn gemm_block(w: &[i8], q: &[i8], k: usize, m: usize, rows: Range<usize>, sink: &Sink<'_>) {
    let mut m0 = 0;
    // SAFETY (all calls): the rows are the caller's.
    unsafe {
        while m0 + 4 <= m {
            tile_rows::<2, 4>(w, q, k, rows.clone(), m0, sink);
            m0 += 4;
        }
        match m - m0 {
            3 => tile_rows::<2, 3>(w, q, k, rows, m0, sink),
            2 => tile_rows::<2, 2>(w, q, k, rows, m0, sink),
            1 => tile_rows::<4, 1>(w, q, k, rows, m0, sink),
            _ => {}
        }
    }
}

/// Exact int8 GEMM: `out[i * n + j] = dequant.value(i, j, sum_l q[i, l] * w[j, l])`
/// for `m` tokens `q` (`[m, k]`, within ±127) and `n` weight rows `w`
/// (`[n, k]`, any int8). Weight rows are split across threads.
pub(crate) fn int8_gemm(
    w: &[i8],
    q: &[i8],
    m: usize,
    n: usize,
    k: usize,
    dequant: Dequant<'_>,
    out: &mut [f32],
) {
    assert!(
        w.len() == n * k && q.len() == m * k && out.len() == m * n,
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
    // SAFETY: weight_row_blocks hands each task a distinct block of rows.
    parallel::weight_row_blocks(m, n, k, |rows| unsafe {
        gemm_block(w, q, k, m, rows, &sink)
    });
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
    int8_gemm(weight_i8, q, 1, out.len(), q.len(), dequant, out);
}

/// W8A8 matrix-vector product into `out` (`out_size` long): quantize the
/// activation per tensor (MaxAbs), accumulate exactly in integers, and scale.
pub fn w8a8_matvec_into(
    weight_i8: &[i8],
    weight_scales: &[f32],
    activation: &[f32],
    in_size: usize,
    policy: NanPolicy,
    out: &mut [f32],
) -> Result<(), DynQuantError> {
    let out_size = out.len();
    check_matvec(
        weight_i8.len(),
        weight_scales.len(),
        activation.len(),
        out_size,
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
    if m > 0 && x.len() != m * k {
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
    if m == 0 {
        return Ok(());
    }
    let mut q = try_vec(m * k, 0i8)?;
    let scales = act.quantize(x, k, &mut q)?;
    let dequant = Dequant {
        weight_scales,
        token_scales: &scales,
        bias,
    };
    int8_gemm(weight_i8, &q, m, n, k, dequant, out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
