//! The quantized tensor, its format, and the error metric on it.

/// Format of a dynamically quantized tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DynQuantFormat {
    /// Per-tensor INT8: one scale for the whole tensor.
    Int8PerTensor,
    /// Per-row INT8: one scale per row in a 2D tensor.
    Int8PerRow,
    /// Per-tensor INT4: values in [-7, 7], one per i8 (as the reference).
    Int4PerTensor,
}

/// A dynamically quantized tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct DynQuantTensor {
    /// Quantized values (i8 storage for both INT8 and INT4).
    pub data: Vec<i8>,
    /// Scales, one per quantization group.
    pub scales: Vec<f32>,
    /// Shape of the original tensor.
    pub shape: Vec<usize>,
    /// Quantization format.
    pub format: DynQuantFormat,
}

impl DynQuantTensor {
    /// Dequantize back to f32: `q * scale` (per row: that row's scale).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.dequantized_len()];
        self.dequantize_into(&mut out);
        out
    }

    /// Length of [`Self::dequantize`]'s result.
    pub fn dequantized_len(&self) -> usize {
        dequantized_len(&self.data, &self.scales, self.format)
    }

    /// [`Self::dequantize`] into `out`, which must have
    /// [`Self::dequantized_len`] elements.
    ///
    /// # Panics
    /// When `out` has another length.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        dequantize_into(&self.data, &self.scales, self.format, out)
    }

    /// Memory in bytes (data + scales).
    pub fn memory_bytes(&self) -> usize {
        self.data.len() + self.scales.len() * core::mem::size_of::<f32>()
    }

    /// Compression ratio vs f32: `4 * len(data) / memory_bytes()`, 1.0 when
    /// there are no bytes at all.
    pub fn compression_ratio(&self) -> f32 {
        let original_bytes = self.data.len() * core::mem::size_of::<f32>();
        let quantized_bytes = self.memory_bytes();
        if quantized_bytes == 0 {
            return 1.0;
        }
        original_bytes as f32 / quantized_bytes as f32
    }

    /// Number of elements.
    pub fn element_count(&self) -> usize {
        self.data.len()
    }
}

/// Length of the dequantized values of `data` and `scales` in `format`. For
/// a per-row tensor whose data is not a whole number of rows, the reference
/// drops the remainder.
pub fn dequantized_len(data: &[i8], scales: &[f32], format: DynQuantFormat) -> usize {
    match format {
        DynQuantFormat::Int8PerRow if scales.is_empty() => 0,
        DynQuantFormat::Int8PerRow => data.len() / scales.len() * scales.len(),
        _ => data.len(),
    }
}

/// Dequantizes the parts of a tensor into `out` (see [`dequantized_len`]).
///
/// # Panics
/// When `out.len()` is not [`dequantized_len`]`(data, scales, format)`: the
/// buffer is the caller's, sized from that function.
pub fn dequantize_into(data: &[i8], scales: &[f32], format: DynQuantFormat, out: &mut [f32]) {
    assert_eq!(
        out.len(),
        dequantized_len(data, scales, format),
        "dequantize_into: output length"
    );
    match format {
        DynQuantFormat::Int8PerRow => {
            let cols = data.len() / scales.len().max(1);
            if cols == 0 {
                return;
            }
            for ((o, q), &scale) in out.chunks_mut(cols).zip(data.chunks(cols)).zip(scales) {
                for (o, &q) in o.iter_mut().zip(q) {
                    *o = q as f32 * scale;
                }
            }
        }
        _ => {
            let scale = scales.first().copied().unwrap_or(0.0);
            for (o, &q) in out.iter_mut().zip(data) {
                *o = q as f32 * scale;
            }
        }
    }
}

/// Mean absolute quantization error between `original` and the dequantized
/// tensor, over their common length (0.0 when that is 0). Each difference is
/// taken in f32 as the reference does; the sum is kept in f64, which is more
/// accurate than the reference's f32 sum.
pub fn quantization_mae(original: &[f32], quantized: &DynQuantTensor) -> f32 {
    mae_of_parts(
        original,
        &quantized.data,
        &quantized.scales,
        quantized.format,
    )
}

/// [`quantization_mae`] on a tensor's parts, without building one.
pub fn mae_of_parts(original: &[f32], data: &[i8], scales: &[f32], format: DynQuantFormat) -> f32 {
    let len = dequantized_len(data, scales, format);
    let n = original.len().min(len);
    if n == 0 {
        return 0.0;
    }
    // Row r of a per-row tensor has scale r; per tensor, one chunk.
    let (cols, per_tensor_scale) = match format {
        DynQuantFormat::Int8PerRow => (len / scales.len(), None),
        _ => (n, Some(scales.first().copied().unwrap_or(0.0))),
    };
    let sum: f64 = original[..n]
        .chunks(cols)
        .zip(data[..n].chunks(cols))
        .enumerate()
        .map(|(r, (o, q))| {
            let scale = per_tensor_scale.unwrap_or_else(|| scales[r]);
            o.iter()
                .zip(q)
                .map(|(&o, &q)| (o - q as f32 * scale).abs() as f64)
                .sum::<f64>()
        })
        .sum();
    (sum / n as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_row(data: Vec<i8>, scales: Vec<f32>) -> DynQuantTensor {
        DynQuantTensor {
            shape: vec![scales.len(), 0],
            data,
            scales,
            format: DynQuantFormat::Int8PerRow,
        }
    }

    #[test]
    fn per_row_dequantize_uses_each_rows_scale() {
        let t = per_row(vec![1, 2, 3, 4], vec![0.5, 2.0]);
        assert_eq!(t.dequantize(), vec![0.5, 1.0, 6.0, 8.0]);
    }

    #[test]
    fn per_row_dequantize_drops_a_partial_row_like_the_reference() {
        let t = per_row(vec![1, 2, 3, 4, 5], vec![1.0, 1.0]);
        assert_eq!(t.dequantize(), vec![1.0, 2.0, 3.0, 4.0]);
        let t = per_row(vec![1], vec![1.0, 1.0]);
        assert_eq!(t.dequantize(), Vec::<f32>::new());
    }

    #[test]
    fn memory_and_ratio() {
        let empty = DynQuantTensor {
            data: vec![],
            scales: vec![0.0],
            shape: vec![0],
            format: DynQuantFormat::Int8PerTensor,
        };
        assert_eq!(empty.memory_bytes(), 4);
        assert_eq!(empty.compression_ratio(), 0.0);
        let none = per_row(vec![], vec![]);
        assert_eq!(none.compression_ratio(), 1.0);
        let t = DynQuantTensor {
            data: vec![1; 12],
            scales: vec![1.0],
            shape: vec![12],
            format: DynQuantFormat::Int8PerTensor,
        };
        assert_eq!(t.compression_ratio(), 48.0 / 16.0);
        assert_eq!(t.element_count(), 12);
    }

    #[test]
    fn mae_over_common_length() {
        let t = DynQuantTensor {
            data: vec![1, 2],
            scales: vec![1.0],
            shape: vec![2],
            format: DynQuantFormat::Int8PerTensor,
        };
        assert_eq!(quantization_mae(&[1.5, 2.0, 100.0], &t), 0.25);
        assert_eq!(quantization_mae(&[], &t), 0.0);
    }
}
