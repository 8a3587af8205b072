//! PyO3 glue for `dynquant._core`: argument conversion, error mapping and
//! releasing the GIL. No math here — every call forwards to the crate.
//!
//! The Python layer (`python/dynquant/`) hands in C-contiguous arrays of the
//! right dtype and ndim; these functions still check what they rely on.

use std::panic::{catch_unwind, AssertUnwindSafe};

use numpy::npyffi::{get_type_object, npy_intp, NpyTypes, PY_ARRAY_API};
use numpy::{
    IntoPyArray, PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyReadonlyArray1,
    PyReadonlyArray2, PyReadonlyArrayDyn, PyReadwriteArrayDyn, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::os::raw::c_int;

use crate::calib::CalibStats;
use crate::scale::{DynamicScaleMode, NanPolicy};
use crate::tensor::DynQuantFormat;
mod observer;
mod packed;

use crate::{
    float_layers, matmul, parallel, quantize, scale, simd, smooth, tensor, w4a8, weights,
    DynQuantError,
};

/// Quantized values and their scales, as returned to Python.
type QuantizedParts<'py> = (Bound<'py, PyArrayDyn<i8>>, Bound<'py, PyArray1<f32>>);

/// Packed int4 weights and their scales, as returned to Python.
type PackedParts<'py> = (Bound<'py, PyArrayDyn<u8>>, Bound<'py, PyArrayDyn<f32>>);

/// Builds the matching exception of `dynquant.errors`.
fn to_py_err(py: Python<'_>, err: DynQuantError) -> PyErr {
    let build = || -> PyResult<PyErr> {
        let errors = py.import("dynquant.errors")?;
        let kwargs = PyDict::new(py);
        let class = match &err {
            DynQuantError::ShapeMismatch { expected, actual } => {
                kwargs.set_item("expected", expected)?;
                kwargs.set_item("actual", actual)?;
                "ShapeMismatchError"
            }
            DynQuantError::EmptyInput => "EmptyInputError",
            DynQuantError::InvalidAlpha(alpha) => {
                kwargs.set_item("alpha", alpha)?;
                "InvalidAlphaError"
            }
            DynQuantError::FeatureDimMismatch {
                in_features,
                sf_len,
            } => {
                kwargs.set_item("in_features", in_features)?;
                kwargs.set_item("sf_len", sf_len)?;
                "FeatureDimMismatchError"
            }
            DynQuantError::FeatureWidthMismatch {
                argument,
                in_features,
                actual,
            } => {
                kwargs.set_item("in_features", in_features)?;
                kwargs.set_item("sf_len", actual)?;
                kwargs.set_item("argument", argument)?;
                "FeatureDimMismatchError"
            }
            DynQuantError::NonFinite { index, value } => {
                kwargs.set_item("index", index)?;
                kwargs.set_item("value", value)?;
                "NonFiniteError"
            }
            DynQuantError::NonFiniteArgument {
                argument,
                index,
                value,
            } => {
                kwargs.set_item("argument", argument)?;
                kwargs.set_item("index", index)?;
                kwargs.set_item("value", value)?;
                "NonFiniteError"
            }
            DynQuantError::InvalidPercentile(p) => {
                kwargs.set_item("p", p)?;
                "InvalidPercentileError"
            }
            DynQuantError::InvalidEpsilon(e) => {
                kwargs.set_item("epsilon", e)?;
                "InvalidEpsilonError"
            }
            DynQuantError::InvalidArgument(_) => "InvalidArgumentError",
            DynQuantError::AllocationFailed { .. } => {
                return Ok(PyMemoryError::new_err(err.to_string()));
            }
        };
        let value = errors
            .getattr(class)?
            .call((err.to_string(),), Some(&kwargs))?;
        Ok(PyErr::from_value(value))
    };
    build().unwrap_or_else(|e| e)
}

/// Work below this many elements runs with the GIL held: releasing and
/// re-taking it costs more than the kernel (NumPy draws the same line).
const DETACH_MIN_WORK: usize = 1 << 14;

/// Runs `f` without the GIL (when `work` is worth it); a Rust panic becomes
/// `dynquant.errors.InternalError` instead of unwinding into Python. A bad
/// `DYNQUANT_KERNEL` is an `InvalidArgumentError` before any kernel runs.
fn detached_if<T: Send>(
    py: Python<'_>,
    work: usize,
    f: impl FnOnce() -> Result<T, DynQuantError> + Send,
) -> PyResult<T> {
    simd::try_active().map_err(|e| to_py_err(py, e))?;
    let outcome = if work >= DETACH_MIN_WORK {
        py.detach(|| catch_unwind(AssertUnwindSafe(f)))
    } else {
        catch_unwind(AssertUnwindSafe(f))
    };
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(to_py_err(py, err)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            let class = py.import("dynquant.errors")?.getattr("InternalError")?;
            Err(PyErr::from_value(class.call1((format!(
                "internal error in dynquant's Rust core (please report): {msg}"
            ),))?))
        }
    }
}

/// [`detached_if`] for work that is always worth releasing the GIL for.
fn detached<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> Result<T, DynQuantError> + Send,
) -> PyResult<T> {
    detached_if(py, usize::MAX, f)
}

/// The error for an array the Python layer should have made C-contiguous and
/// aligned (rust-numpy refuses to make a slice of anything else).
fn not_contiguous() -> PyErr {
    Python::attach(|py| {
        to_py_err(
            py,
            DynQuantError::InvalidArgument(
                "dynquant._core expects aligned, C-contiguous arrays".into(),
            ),
        )
    })
}

fn contiguous<T>(slice: Result<&[T], numpy::AsSliceError>) -> PyResult<&[T]> {
    slice.map_err(|_| not_contiguous())
}

fn contiguous_mut<T>(slice: Result<&mut [T], numpy::AsSliceError>) -> PyResult<&mut [T]> {
    slice.map_err(|_| not_contiguous())
}

fn scale_mode(percentile: Option<f32>) -> DynamicScaleMode {
    percentile.map_or(DynamicScaleMode::MaxAbs, DynamicScaleMode::Percentile)
}

fn nan_policy(reference: bool) -> NanPolicy {
    if reference {
        NanPolicy::Reference
    } else {
        NanPolicy::Raise
    }
}

/// How a product quantizes its activations, from the glue's flat arguments.
fn act_quant(per_token: bool, percentile: Option<f32>, reference: bool) -> matmul::ActQuant {
    matmul::ActQuant {
        per_token,
        mode: scale_mode(percentile),
        policy: nan_policy(reference),
    }
}

/// An optional array (the bias) as a slice, refusing a non-contiguous one.
fn optional_contiguous<'a, T: numpy::Element>(
    array: &'a Option<PyReadonlyArray1<'_, T>>,
) -> PyResult<Option<&'a [T]>> {
    array.as_ref().map(|a| contiguous(a.as_slice())).transpose()
}

fn format_of(code: u8) -> PyResult<DynQuantFormat> {
    match code {
        0 => Ok(DynQuantFormat::Int8PerTensor),
        1 => Ok(DynQuantFormat::Int8PerRow),
        2 => Ok(DynQuantFormat::Int4PerTensor),
        _ => Err(PyValueError::new_err(format!("unknown format code {code}"))),
    }
}

/// A new uninitialised C-contiguous array of `shape`, or `MemoryError` when
/// it cannot be allocated (rust-numpy's `PyArray::new` panics instead).
fn alloc_array<'py, T: numpy::Element>(
    py: Python<'py>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    let bytes = shape
        .iter()
        .try_fold(core::mem::size_of::<T>(), |acc, &d| acc.checked_mul(d))
        .filter(|&b| b <= isize::MAX as usize)
        .filter(|_| shape.iter().all(|&d| d <= isize::MAX as usize));
    let Some(bytes) = bytes else {
        let bytes = usize::MAX;
        return Err(to_py_err(py, DynQuantError::AllocationFailed { bytes }));
    };
    // Each dim fits npy_intp (isize), checked above (a zero dim makes the
    // product fit whatever the others are).
    let dims: Vec<npy_intp> = shape.iter().map(|&d| d as npy_intp).collect();
    // SAFETY: the same call as rust-numpy's `PyArray::new` (a NumPy C-API
    // function taking a new reference to the dtype, `dims.len()` dims read
    // from a live Vec, no strides or data: NumPy allocates). It returns a new
    // reference, or NULL with a Python error set, which is turned into a
    // PyErr here instead of a panic.
    let ptr = unsafe {
        PY_ARRAY_API.PyArray_NewFromDescr(
            py,
            get_type_object(py, NpyTypes::PyArray_Type),
            T::get_dtype(py).into_dtype_ptr(),
            dims.len() as c_int,
            dims.as_ptr() as *mut npy_intp,
            core::ptr::null_mut(),
            core::ptr::null_mut(),
            0,
            core::ptr::null_mut(),
        )
    };
    // SAFETY: `ptr` is a new (owned) reference or NULL with an error set.
    let array = unsafe { Bound::from_owned_ptr_or_err(py, ptr) }.map_err(|e| {
        if e.is_instance_of::<PyMemoryError>(py) {
            to_py_err(py, DynQuantError::AllocationFailed { bytes })
        } else {
            e
        }
    })?;
    // SAFETY: an ndarray of T's dtype with `shape.len()` dims, as requested.
    Ok(unsafe { array.cast_into_unchecked() })
}

/// A fresh array of `shape`, filled by `fill` (without the GIL when `work`,
/// in elements touched, is large).
fn new_array<'py, T: numpy::Element + Send, R: Send>(
    py: Python<'py>,
    shape: &[usize],
    work: usize,
    fill: impl FnOnce(&mut [T]) -> Result<R, DynQuantError> + Send,
) -> PyResult<(Bound<'py, PyArrayDyn<T>>, R)> {
    let array = alloc_array::<T>(py, shape)?;
    // SAFETY: the array is new, so no other reference to its data exists
    // (Python cannot see it until this function returns). Its elements are
    // uninitialised: `fill` must write every one before reading it, which
    // each kernel does (it is an output they only store to; on error the
    // array is dropped unseen). i8/u8/f32 have no invalid bit patterns.
    let out = contiguous_mut(unsafe { array.as_slice_mut() })?;
    let extra = detached_if(py, work, || fill(out))?;
    Ok((array, extra))
}

#[pyfunction]
fn noop() {}

#[pyfunction]
fn kernel_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let info = PyDict::new(py);
    let isa = simd::try_active().map_err(|e| to_py_err(py, e))?;
    info.set_item("isa", isa.name())?;
    info.set_item("threads", parallel::num_threads())?;
    let supported: Vec<&str> = simd::supported().iter().map(|i| i.name()).collect();
    info.set_item("supported", PyList::new(py, supported)?)?;
    info.set_item("arch", std::env::consts::ARCH)?;
    info.set_item("packed_gemm", simd::panel_kernel_available())?;
    Ok(info)
}

#[pyfunction]
fn set_kernel(py: Python<'_>, name: &str) -> PyResult<()> {
    simd::Isa::parse(name)
        .and_then(simd::set_isa)
        .map_err(|e| to_py_err(py, e))
}

/// Forces the W8A8 GEMM's form ("auto", "sign", "offset" or "panel"; tests and
/// benchmarks — every form gives the same bits).
#[pyfunction]
fn set_gemm_form(py: Python<'_>, name: &str) -> PyResult<()> {
    let form = match name {
        "auto" => matmul::GemmForm::Auto,
        "sign" => matmul::GemmForm::Sign,
        "offset" => matmul::GemmForm::Offset,
        "panel" => matmul::GemmForm::Panel,
        _ => {
            return Err(to_py_err(
                py,
                DynQuantError::InvalidArgument(format!(
                    "GEMM form must be 'auto', 'sign', 'offset' or 'panel', got {name:?}"
                )),
            ))
        }
    };
    matmul::set_gemm_form(form);
    Ok(())
}

#[pyfunction]
fn set_num_threads(py: Python<'_>, threads: usize) -> PyResult<()> {
    detached(py, || parallel::set_num_threads(threads))
}

#[pyfunction]
fn compute_scale(
    py: Python<'_>,
    x: PyReadonlyArrayDyn<'_, f32>,
    clip: f32,
    percentile: Option<f32>,
    reference: bool,
) -> PyResult<f32> {
    let x = contiguous(x.as_slice())?;
    detached_if(py, x.len(), || {
        scale::try_compute_scale(x, clip, scale_mode(percentile), nan_policy(reference))
    })
}

/// Per-tensor quantization keeping the input's shape: `(q, [scale])`.
#[pyfunction]
fn quantize_per_tensor<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    clip: f32,
    percentile: Option<f32>,
    reference: bool,
) -> PyResult<QuantizedParts<'py>> {
    let shape = x.shape().to_vec();
    let x = contiguous(x.as_slice())?;
    let mode = scale_mode(percentile)
        .validate()
        .map_err(|e| to_py_err(py, e))?;
    let (q, scale) = new_array(py, &shape, x.len(), |out| {
        quantize::quantize_per_tensor_into(x, clip, mode, nan_policy(reference), out)
    })?;
    Ok((q, PyArray1::from_slice(py, &[scale])))
}

/// Per-row int8 quantization of a 2-D array: `(q, scales)`.
#[pyfunction]
fn quantize_per_row<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    percentile: Option<f32>,
    reference: bool,
) -> PyResult<QuantizedParts<'py>> {
    let (rows, cols) = (x.shape()[0], x.shape()[1]);
    let x = contiguous(x.as_slice())?;
    let mode = scale_mode(percentile)
        .validate()
        .map_err(|e| to_py_err(py, e))?;
    // A zero-size input has no scales, however many rows it has (and
    // `rows` alone must not size an allocation: `(2**40, 0)` is a valid array).
    let mut scales = vec![0f32; if x.is_empty() { 0 } else { rows }];
    let (q, ()) = new_array(py, &[rows, cols], x.len(), |out| {
        quantize::quantize_per_row_into(x, cols, mode, nan_policy(reference), out, &mut scales)
    })?;
    Ok((q, scales.into_pyarray(py)))
}

#[pyfunction]
fn dequantize<'py>(
    py: Python<'py>,
    data: PyReadonlyArrayDyn<'py, i8>,
    scales: PyReadonlyArray1<'py, f32>,
    format: u8,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let format = format_of(format)?;
    let (data, scales) = (contiguous(data.as_slice())?, contiguous(scales.as_slice())?);
    let len = tensor::dequantized_len(data, scales, format);
    let (out, ()) = new_array(py, &[len], len, |out| {
        tensor::dequantize_into(data, scales, format, out);
        Ok(())
    })?;
    Ok(out)
}

#[pyfunction]
fn quantization_mae(
    py: Python<'_>,
    original: PyReadonlyArrayDyn<'_, f32>,
    data: PyReadonlyArrayDyn<'_, i8>,
    scales: PyReadonlyArray1<'_, f32>,
    format: u8,
) -> PyResult<f32> {
    let format = format_of(format)?;
    let original = contiguous(original.as_slice())?;
    let (data, scales) = (contiguous(data.as_slice())?, contiguous(scales.as_slice())?);
    detached_if(py, original.len(), || {
        Ok(tensor::mae_of_parts(original, data, scales, format))
    })
}

/// BERT's erf GELU of every value, in a new array of `x`'s shape.
#[pyfunction]
fn gelu<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let shape = x.shape().to_vec();
    let x = contiguous(x.as_slice())?;
    let (out, ()) = new_array(py, &shape, x.len(), |out| float_layers::gelu_into(x, out))?;
    Ok(out)
}

/// LayerNorm of `x (+ residual)` over rows of `gamma.len()` values, in a
/// new array of `x`'s shape.
#[pyfunction]
#[pyo3(signature = (x, residual, gamma, beta, eps))]
fn layer_norm<'py>(
    py: Python<'py>,
    x: PyReadonlyArrayDyn<'py, f32>,
    residual: Option<PyReadonlyArrayDyn<'py, f32>>,
    gamma: PyReadonlyArray1<'py, f32>,
    beta: PyReadonlyArray1<'py, f32>,
    eps: f32,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let shape = x.shape().to_vec();
    let x = contiguous(x.as_slice())?;
    let residual = match &residual {
        Some(r) => Some(contiguous(r.as_slice())?),
        None => None,
    };
    let (gamma, beta) = (contiguous(gamma.as_slice())?, contiguous(beta.as_slice())?);
    let (out, ()) = new_array(py, &shape, x.len(), |out| {
        float_layers::layer_norm_into(x, residual, gamma, beta, eps, out)
    })?;
    Ok(out)
}

/// The two NumPy-exact halves of a row softmax (around `np.exp`), in place
/// over the last axis: `x -= max` (`normalize == false`) or `x /= sum`.
#[pyfunction]
fn softmax_rows_inplace(
    py: Python<'_>,
    mut x: PyReadwriteArrayDyn<'_, f32>,
    normalize: bool,
) -> PyResult<()> {
    let width = x.shape().last().copied().unwrap_or(1);
    let x = contiguous_mut(x.as_slice_mut())?;
    detached(py, || {
        if normalize {
            float_layers::softmax_normalize_rows(x, width)
        } else {
            float_layers::softmax_shift_rows(x, width)
        }
    })
}

#[pyfunction]
fn smooth_factors<'py>(
    py: Python<'py>,
    activations: PyReadonlyArray2<'py, f32>,
    weights: PyReadonlyArray2<'py, f32>,
    alpha: f32,
    epsilon: f32,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let in_features = activations.shape()[1];
    if weights.shape()[1] != in_features {
        return Err(to_py_err(
            py,
            DynQuantError::FeatureDimMismatch {
                in_features,
                sf_len: weights.shape()[1],
            },
        ));
    }
    let config =
        smooth::SmoothQuantConfig::try_new(alpha, epsilon).map_err(|e| to_py_err(py, e))?;
    let (tokens, out_features) = (activations.shape()[0], weights.shape()[0]);
    let a = contiguous(activations.as_slice())?;
    let w = contiguous(weights.as_slice())?;
    // Allocated first, so that an `in_features` no data backs (`(0, 2**40)`
    // arrays) is a MemoryError, not an abort in the Rust allocator.
    let (factors, ()) = new_array(py, &[in_features], a.len() + w.len(), |out| {
        out.copy_from_slice(&smooth::compute_smooth_factors(
            a,
            w,
            in_features,
            tokens,
            out_features,
            &config,
        ));
        Ok(())
    })?;
    Ok(factors)
}

fn rows_of(ndim: usize, shape: &[usize]) -> usize {
    if ndim == 2 {
        shape[0]
    } else {
        1
    }
}

/// Factors from per-channel activation maxima and the weights `[out, in]`.
#[pyfunction]
fn smooth_factors_from_act_max<'py>(
    py: Python<'py>,
    act_max: PyReadonlyArray1<'py, f32>,
    weights: PyReadonlyArray2<'py, f32>,
    alpha: f32,
    epsilon: f32,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let in_features = weights.shape()[1];
    if act_max.len() != in_features {
        return Err(to_py_err(
            py,
            DynQuantError::FeatureDimMismatch {
                in_features,
                sf_len: act_max.len(),
            },
        ));
    }
    let config =
        smooth::SmoothQuantConfig::try_new(alpha, epsilon).map_err(|e| to_py_err(py, e))?;
    let a = contiguous(act_max.as_slice())?;
    let w = contiguous(weights.as_slice())?;
    let factors = detached(py, || {
        let w_max = smooth::column_abs_max(w, in_features);
        Ok(smooth::smooth_factors_from_maxima(a, &w_max, &config))
    })?;
    Ok(factors.into_pyarray(py))
}

/// `out = src / factors` (or `* factors` with `multiply`) per column.
#[pyfunction]
fn smooth_apply(
    py: Python<'_>,
    src: PyReadonlyArrayDyn<'_, f32>,
    factors: PyReadonlyArray1<'_, f32>,
    multiply: bool,
    mut out: PyReadwriteArrayDyn<'_, f32>,
) -> PyResult<()> {
    let in_features = factors.len();
    let rows = rows_of(src.ndim(), src.shape());
    let factors = contiguous(factors.as_slice())?;
    let src = contiguous(src.as_slice())?;
    let dst = contiguous_mut(out.as_slice_mut())?;
    detached(py, || {
        if multiply {
            smooth::smooth_weights_into(src, factors, rows, in_features, dst)
        } else {
            smooth::smooth_activations_into(src, factors, rows, in_features, dst)
        }
    })
}

/// [`smooth_apply`] in place on `data`.
#[pyfunction]
fn smooth_apply_inplace(
    py: Python<'_>,
    mut data: PyReadwriteArrayDyn<'_, f32>,
    factors: PyReadonlyArray1<'_, f32>,
    multiply: bool,
) -> PyResult<()> {
    let in_features = factors.len();
    let rows = rows_of(data.ndim(), data.shape());
    let factors = contiguous(factors.as_slice())?;
    let data = contiguous_mut(data.as_slice_mut())?;
    detached(py, || {
        if multiply {
            smooth::smooth_weights(data, factors, rows, in_features)
        } else {
            smooth::smooth_activations(data, factors, rows, in_features)
        }
    })
}

#[pyfunction]
fn w8a8_matvec<'py>(
    py: Python<'py>,
    weight: PyReadonlyArray2<'py, i8>,
    weight_scales: PyReadonlyArray1<'py, f32>,
    activation: PyReadonlyArray1<'py, f32>,
    reference: bool,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let (out_size, in_size) = (weight.shape()[0], weight.shape()[1]);
    let w = contiguous(weight.as_slice())?;
    let s = contiguous(weight_scales.as_slice())?;
    let a = contiguous(activation.as_slice())?;
    let (out, ()) = new_array(py, &[out_size], w.len(), |out| {
        matmul::w8a8_matvec_into(w, s, a, in_size, nan_policy(reference), out)
    })?;
    Ok(out)
}

/// Batched W8A8 of a 2-D `x` `[m, k]`: `[m, n]`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn w8a8_matmul<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    weight: PyReadonlyArray2<'py, i8>,
    weight_scales: PyReadonlyArray1<'py, f32>,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    per_token: bool,
    percentile: Option<f32>,
    reference: bool,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let m = x.shape()[0];
    let n = weight.shape()[0];
    let xs = contiguous(x.as_slice())?;
    let w = contiguous(weight.as_slice())?;
    let s = contiguous(weight_scales.as_slice())?;
    let b = optional_contiguous(&bias)?;
    let act = act_quant(per_token, percentile, reference);
    let (out, ()) = new_array(py, &[m, n], w.len().saturating_mul(m), |out| {
        matmul::w8a8_matmul_into(xs, m, w, s, b, act, out)
    })?;
    Ok(out)
}

/// Int8 weights `[out, in]` → `(q, scales)`.
#[pyfunction]
fn quantize_weights_int8<'py>(
    py: Python<'py>,
    weight: PyReadonlyArray2<'py, f32>,
) -> PyResult<QuantizedParts<'py>> {
    let (n, k) = (weight.shape()[0], weight.shape()[1]);
    let w = contiguous(weight.as_slice())?;
    let (q, s) = detached(py, || weights::quantize_weights_int8(w, n, k))?;
    Ok((q.into_pyarray(py).reshape(vec![n, k])?, s.into_pyarray(py)))
}

/// Int4 weights `[out, in]` → `(packed [out, ceil(in/2)], scales [out, groups])`.
#[pyfunction]
fn quantize_weights_int4<'py>(
    py: Python<'py>,
    weight: PyReadonlyArray2<'py, f32>,
    group_size: Option<usize>,
) -> PyResult<PackedParts<'py>> {
    let (n, k) = (weight.shape()[0], weight.shape()[1]);
    let w = contiguous(weight.as_slice())?;
    let (p, s) = detached(py, || weights::quantize_weights_int4(w, n, k, group_size))?;
    let groups = weights::int4_groups(k, group_size);
    Ok((
        p.into_pyarray(py).reshape(vec![n, k.div_ceil(2)])?,
        s.into_pyarray(py).reshape(vec![n, groups])?,
    ))
}

/// Packs `[rows, cols]` int4 values → `[rows, ceil(cols/2)]` bytes.
#[pyfunction]
fn pack_int4<'py>(
    py: Python<'py>,
    values: PyReadonlyArray2<'py, i8>,
) -> PyResult<Bound<'py, PyArrayDyn<u8>>> {
    let (rows, cols) = (values.shape()[0], values.shape()[1]);
    let v = contiguous(values.as_slice())?;
    let p = detached(py, || weights::pack_int4(v, cols))?;
    p.into_pyarray(py).reshape(vec![rows, cols.div_ceil(2)])
}

/// Unpacks `[rows, ceil(cols/2)]` bytes → `[rows, cols]` int4 values.
#[pyfunction]
fn unpack_int4<'py>(
    py: Python<'py>,
    packed: PyReadonlyArray2<'py, u8>,
    cols: usize,
) -> PyResult<Bound<'py, PyArrayDyn<i8>>> {
    let rows = packed.shape()[0];
    if packed.shape()[1] != cols.div_ceil(2) {
        return Err(to_py_err(
            py,
            DynQuantError::ShapeMismatch {
                expected: cols.div_ceil(2),
                actual: packed.shape()[1],
            },
        ));
    }
    let p = contiguous(packed.as_slice())?;
    let v = detached(py, || weights::unpack_int4(p, cols))?;
    v.into_pyarray(py).reshape(vec![rows, cols])
}

/// Batched W4A8 of a 2-D `x` `[m, k]` with packed weights: `[m, n]`.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
fn w4a8_matmul<'py>(
    py: Python<'py>,
    x: PyReadonlyArray2<'py, f32>,
    packed: PyReadonlyArray2<'py, u8>,
    scales: PyReadonlyArray2<'py, f32>,
    in_features: usize,
    group_size: usize,
    bias: Option<PyReadonlyArray1<'py, f32>>,
    per_token: bool,
    percentile: Option<f32>,
    reference: bool,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let m = x.shape()[0];
    let layout = w4a8::Int4Layout {
        out_features: packed.shape()[0],
        in_features,
        group_size,
    };
    let xs = contiguous(x.as_slice())?;
    let p = contiguous(packed.as_slice())?;
    let s = contiguous(scales.as_slice())?;
    let b = optional_contiguous(&bias)?;
    let act = act_quant(per_token, percentile, reference);
    let (out, ()) = new_array(
        py,
        &[m, layout.out_features],
        p.len().saturating_mul(m),
        |out| w4a8::w4a8_matmul_into(xs, m, p, s, layout, b, act, out),
    )?;
    Ok(out)
}

/// `(min, max, mean, std_dev, p99, suggested_scale)` over all batches.
#[pyfunction]
fn calib_collect(
    py: Python<'_>,
    batches: Vec<PyReadonlyArrayDyn<'_, f32>>,
    reference: bool,
) -> PyResult<(f32, f32, f32, f32, f32, f32)> {
    let parts = batches
        .iter()
        .map(|b| contiguous(b.as_slice()))
        .collect::<PyResult<Vec<&[f32]>>>()?;
    let s = detached(py, || {
        CalibStats::try_collect(&parts, nan_policy(reference))
    })?;
    Ok((s.min, s.max, s.mean, s.std_dev, s.p99, s.suggested_scale))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(noop, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_info, m)?)?;
    m.add_function(wrap_pyfunction!(set_kernel, m)?)?;
    m.add_function(wrap_pyfunction!(set_gemm_form, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(compute_scale, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_per_tensor, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_per_row, m)?)?;
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(quantization_mae, m)?)?;
    m.add_function(wrap_pyfunction!(gelu, m)?)?;
    m.add_function(wrap_pyfunction!(layer_norm, m)?)?;
    m.add_function(wrap_pyfunction!(softmax_rows_inplace, m)?)?;
    m.add_function(wrap_pyfunction!(smooth_factors, m)?)?;
    m.add_function(wrap_pyfunction!(smooth_factors_from_act_max, m)?)?;
    m.add_function(wrap_pyfunction!(smooth_apply, m)?)?;
    m.add_function(wrap_pyfunction!(smooth_apply_inplace, m)?)?;
    m.add_function(wrap_pyfunction!(w8a8_matvec, m)?)?;
    m.add_function(wrap_pyfunction!(w8a8_matmul, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_weights_int8, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_weights_int4, m)?)?;
    m.add_function(wrap_pyfunction!(pack_int4, m)?)?;
    m.add_function(wrap_pyfunction!(unpack_int4, m)?)?;
    m.add_function(wrap_pyfunction!(w4a8_matmul, m)?)?;
    m.add_function(wrap_pyfunction!(calib_collect, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Streaming calibration (src/observer.rs).
    m.add_class::<observer::PyCalibObserver>()?;
    m.add_class::<packed::PyPackedInt8Weights>()?;
    m.add_class::<packed::PyPackedInt4Weights>()?;
    m.add_function(wrap_pyfunction!(packed::pack_weights_int8, m)?)?;
    m.add_function(wrap_pyfunction!(packed::w8a8_matmul_packed, m)?)?;
    m.add_function(wrap_pyfunction!(packed::pack_weights_int4, m)?)?;
    m.add_function(wrap_pyfunction!(packed::w4a8_matmul_packed, m)?)?;
    m.add_class::<observer::PyChannelMaxObserver>()?;
    Ok(())
}
