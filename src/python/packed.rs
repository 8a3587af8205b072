//! `PackedInt8Weights` and `PackedInt4Weights`: weights packed once for the
//! broadcast W8A8 kernel ([`crate::packed`]) and W4A8's panel kernel
//! ([`crate::w4a8`]); the PyO3 face only, no math here.

use numpy::{
    IntoPyArray, PyArrayDyn, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyUntypedArrayMethods,
};
use pyo3::prelude::*;
use pyo3::types::PyTuple;

use super::{act_quant, contiguous, detached, new_array, optional_contiguous, PackedParts};
use crate::packed::{w8a8_matmul_packed_into, PackedInt8Weights};
use crate::w4a8::{w4a8_matmul_packed_into, Int4Layout, PackedInt4Weights};

/// Int8 weights `[out, in]` packed for `w8a8_matmul` (panels of 64 rows).
#[pyclass(name = "PackedInt8Weights", module = "dynquant._core", frozen)]
pub(super) struct PyPackedInt8Weights(pub(super) PackedInt8Weights);

#[pymethods]
impl PyPackedInt8Weights {
    /// `(out, in)`, as the int8 weights it was packed from.
    #[getter]
    fn shape(&self) -> (usize, usize) {
        (self.0.rows(), self.0.cols())
    }

    /// Bytes held (panels padded to 64 rows and 4 columns, plus row sums).
    #[getter]
    fn nbytes(&self) -> usize {
        self.0.nbytes()
    }

    /// The int8 weights `[out, in]` back, exactly.
    fn unpack<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<i8>>> {
        let (n, k) = self.shape();
        self.0.unpack().into_pyarray(py).reshape(vec![n, k])
    }

    /// Pickled as the int8 weights, packed again on loading.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let pack = py.import("dynquant._core")?.getattr("pack_weights_int8")?;
        let args = PyTuple::new(py, [self.unpack(py)?])?;
        PyTuple::new(py, [pack.into_any(), args.into_any()])
    }

    fn __repr__(&self) -> String {
        let (n, k) = self.shape();
        format!(
            "PackedInt8Weights(shape=({n}, {k}), nbytes={})",
            self.nbytes()
        )
    }
}

/// Int8 weights `[out, in]` → `PackedInt8Weights`.
#[pyfunction]
pub(super) fn pack_weights_int8(
    py: Python<'_>,
    weight: PyReadonlyArray2<'_, i8>,
) -> PyResult<PyPackedInt8Weights> {
    let (n, k) = (weight.shape()[0], weight.shape()[1]);
    let w = contiguous(weight.as_slice())?;
    let packed = detached(py, || PackedInt8Weights::pack(w, n, k))?;
    Ok(PyPackedInt8Weights(packed))
}

/// Batched W8A8 of a 2-D `x` `[m, k]` on packed weights: `[m, n]`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
pub(super) fn w8a8_matmul_packed<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    weight: &PyPackedInt8Weights,
    weight_scales: PyReadonlyArray1<'py, f32>,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    per_token: bool,
    percentile: Option<f32>,
    reference: bool,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let m = x.shape()[0];
    let n = weight.0.rows();
    let xs = contiguous(x.as_slice())?;
    let s = contiguous(weight_scales.as_slice())?;
    let b = optional_contiguous(&bias)?;
    let act = act_quant(per_token, percentile, reference);
    let work = n.saturating_mul(weight.0.cols()).saturating_mul(m);
    let (out, ()) = new_array(py, &[m, n], work, |out| {
        w8a8_matmul_packed_into(xs, m, &weight.0, s, b, act, out)
    })?;
    Ok(out)
}

/// Packed int4 weights regrouped into 16-row panels for `w4a8_matmul`.
#[pyclass(name = "PackedInt4Weights", module = "dynquant._core", frozen)]
pub(super) struct PyPackedInt4Weights(pub(super) PackedInt4Weights);

#[pymethods]
impl PyPackedInt4Weights {
    /// `(out, in)`: the weights' rows and columns (not packed bytes).
    #[getter]
    fn shape(&self) -> (usize, usize) {
        let l = self.0.layout();
        (l.out_features, l.in_features)
    }

    /// Columns per scale.
    #[getter]
    fn group_size(&self) -> usize {
        self.0.layout().group_size
    }

    /// Bytes held (panels padded to 16 rows, and their scales).
    #[getter]
    fn nbytes(&self) -> usize {
        self.0.nbytes()
    }

    /// The packed int4 rows `[out, ceil(in / 2)]` and scales `[out, groups]`
    /// back, exactly.
    fn unpack<'py>(&self, py: Python<'py>) -> PyResult<PackedParts<'py>> {
        let l = self.0.layout();
        let (packed, scales) = self.0.unpack();
        let packed = packed
            .into_pyarray(py)
            .reshape(vec![l.out_features, l.row_bytes()])?;
        let scales = scales
            .into_pyarray(py)
            .reshape(vec![l.out_features, l.groups()])?;
        Ok((packed, scales))
    }

    /// Pickled as the packed rows and scales, regrouped again on loading.
    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let pack = py.import("dynquant._core")?.getattr("pack_weights_int4")?;
        let (packed, scales) = self.unpack(py)?;
        let (k, group) = (self.shape().1, self.group_size());
        let args = (packed, scales, k, group).into_pyobject(py)?;
        PyTuple::new(py, [pack.into_any(), args.into_any()])
    }

    fn __repr__(&self) -> String {
        let (n, k) = self.shape();
        format!(
            "PackedInt4Weights(shape=({n}, {k}), group_size={}, nbytes={})",
            self.group_size(),
            self.nbytes()
        )
    }
}

/// Packed int4 rows `[out, ceil(in / 2)]` and scales `[out, groups]` →
/// `PackedInt4Weights`.
#[pyfunction]
pub(super) fn pack_weights_int4(
    py: Python<'_>,
    packed: PyReadonlyArray2<'_, u8>,
    scales: PyReadonlyArray2<'_, f32>,
    in_features: usize,
    group_size: usize,
) -> PyResult<PyPackedInt4Weights> {
    let layout = Int4Layout {
        out_features: packed.shape()[0],
        in_features,
        group_size,
    };
    let (p, s) = (
        contiguous(packed.as_slice())?,
        contiguous(scales.as_slice())?,
    );
    let held = detached(py, || PackedInt4Weights::pack(p, s, layout))?;
    Ok(PyPackedInt4Weights(held))
}

/// Batched W4A8 of a 2-D `x` `[m, k]` on regrouped int4 weights: `[m, n]`.
#[pyfunction]
pub(super) fn w4a8_matmul_packed<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    weight: &PyPackedInt4Weights,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    per_token: bool,
    percentile: Option<f32>,
    reference: bool,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let m = x.shape()[0];
    let (n, k) = weight.shape();
    let xs = contiguous(x.as_slice())?;
    let b = optional_contiguous(&bias)?;
    let act = act_quant(per_token, percentile, reference);
    let work = n.saturating_mul(k / 2).saturating_mul(m);
    let (out, ()) = new_array(py, &[m, n], work, |out| {
        w4a8_matmul_packed_into(xs, m, &weight.0, b, act, out)
    })?;
    Ok(out)
}
