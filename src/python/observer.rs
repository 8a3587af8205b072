//! Streaming calibration (src/observer.rs) for Python: the `CalibObserver`
//! and `ChannelMaxObserver` classes that `dynquant.observer` wraps.
//!
//! Both classes hold their observer in a [`Shared`], which owns the one
//! locking rule they need: a batch is observed into a fresh observer without
//! the GIL and without the lock, then merged under the lock (merging is
//! exact, so concurrent updates give the same state as sequential ones). The
//! lock is never held while waiting for the GIL.

use std::sync::{Mutex, MutexGuard};

use numpy::{IntoPyArray, PyArray1, PyReadonlyArray2, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use super::{contiguous, detached, detached_if, nan_policy, to_py_err};
use crate::observer::{CalibObserver, ChannelMaxObserver, ObserverConfig};
use crate::scale::NanPolicy;
use crate::{smooth, DynQuantError};

/// What [`Shared`] needs of an observer.
trait Observer: Clone + Send + Sized {
    fn new_like(&self) -> Self;
    fn merge(&mut self, other: &Self) -> Result<(), DynQuantError>;
    fn to_bytes(&self) -> Vec<u8>;
    fn from_bytes(bytes: &[u8]) -> Result<Self, DynQuantError>;
}

/// Both observers already have these as inherent methods.
macro_rules! impl_observer {
    ($($t:ty),*) => {$(
        impl Observer for $t {
            fn new_like(&self) -> Self {
                <$t>::new_like(self)
            }
            fn merge(&mut self, other: &Self) -> Result<(), DynQuantError> {
                <$t>::merge(self, other)
            }
            fn to_bytes(&self) -> Vec<u8> {
                <$t>::to_bytes(self)
            }
            fn from_bytes(bytes: &[u8]) -> Result<Self, DynQuantError> {
                <$t>::from_bytes(bytes)
            }
        }
    )*};
}

impl_observer!(CalibObserver, ChannelMaxObserver);

/// An observer behind a lock, shared by Python threads.
struct Shared<T>(Mutex<T>);

impl<T: Observer> Shared<T> {
    fn new(inner: T) -> Self {
        Self(Mutex::new(inner))
    }

    /// The observer, recovered if a panic poisoned the lock (a panic is
    /// caught before it changes an observer: batches are observed apart).
    fn get(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Observes one batch of `work` elements with `observe` (on a fresh
    /// observer, without the GIL when worth it), then merges it in.
    fn update(
        &self,
        py: Python<'_>,
        work: usize,
        observe: impl FnOnce(&mut T) -> Result<(), DynQuantError> + Send,
    ) -> PyResult<()> {
        let mut batch = self.get().new_like();
        let batch = detached_if(py, work, move || observe(&mut batch).map(|()| batch))?;
        let merged = self.get().merge(&batch);
        merged.map_err(|e| to_py_err(py, e))
    }

    fn merge(&self, py: Python<'_>, other: &Self) -> PyResult<()> {
        // A copy first: locking both at once could deadlock (a.merge(b)
        // racing b.merge(a), or a.merge(a)).
        let other = other.get().clone();
        let merged = self.get().merge(&other);
        merged.map_err(|e| to_py_err(py, e))
    }

    fn copy(&self) -> Self {
        Self::new(self.get().clone())
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        let bytes = self.get().to_bytes();
        PyBytes::new(py, &bytes)
    }

    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        T::from_bytes(data)
            .map(Self::new)
            .map_err(|e| to_py_err(py, e))
    }
}

/// A [`CalibObserver`]; `dynquant.observer.CalibObserver` is its Python
/// face. Thread-safe (see the module comment).
#[pyclass(name = "CalibObserver", module = "dynquant._core", frozen)]
pub(super) struct PyCalibObserver(Shared<CalibObserver>);

impl PyCalibObserver {
    fn get(&self) -> MutexGuard<'_, CalibObserver> {
        self.0.get()
    }
}

#[pymethods]
impl PyCalibObserver {
    #[new]
    fn new(
        py: Python<'_>,
        relative_accuracy: f64,
        exact: bool,
        reference: bool,
        max_buckets: Option<u32>,
    ) -> PyResult<Self> {
        let config = ObserverConfig {
            relative_accuracy,
            exact,
            policy: nan_policy(reference),
            max_buckets,
        };
        let inner = CalibObserver::new(config).map_err(|e| to_py_err(py, e))?;
        Ok(Self(Shared::new(inner)))
    }

    fn update(&self, py: Python<'_>, x: PyReadonlyArrayDyn<'_, f32>) -> PyResult<()> {
        let x = contiguous(x.as_slice())?;
        self.0.update(py, x.len(), |batch| batch.update(x))
    }

    fn merge(&self, py: Python<'_>, other: &Self) -> PyResult<()> {
        self.0.merge(py, &other.0)
    }

    fn copy(&self) -> Self {
        Self(self.0.copy())
    }

    /// `(min, max, mean, std_dev, p99, suggested_scale)`.
    fn stats(&self, py: Python<'_>) -> PyResult<(f32, f32, f32, f32, f32, f32)> {
        let s = detached(py, || Ok(self.get().stats()))?;
        Ok((s.min, s.max, s.mean, s.std_dev, s.p99, s.suggested_scale))
    }

    fn quantile(&self, py: Python<'_>, q: f64) -> PyResult<f64> {
        detached(py, || self.get().quantile(q))
    }

    /// `(lower, upper, counts)` of the non-empty sketch buckets.
    #[allow(clippy::type_complexity)]
    fn histogram<'py>(
        &self,
        py: Python<'py>,
    ) -> (
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<f64>>,
        Bound<'py, PyArray1<u64>>,
    ) {
        let h = self.get().histogram();
        let lower: Vec<f64> = h.iter().map(|b| b.0).collect();
        let upper: Vec<f64> = h.iter().map(|b| b.1).collect();
        let counts: Vec<u64> = h.iter().map(|b| b.2).collect();
        (
            lower.into_pyarray(py),
            upper.into_pyarray(py),
            counts.into_pyarray(py),
        )
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.0.to_bytes(py)
    }

    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        Shared::from_bytes(py, data).map(Self)
    }

    #[getter]
    fn count(&self) -> u64 {
        self.get().count()
    }

    #[getter]
    fn zero_count(&self) -> u64 {
        self.get().zero_count()
    }

    #[getter]
    fn collapsed_count(&self) -> u64 {
        self.get().collapsed_count()
    }

    #[getter]
    fn bucket_count(&self) -> usize {
        self.get().bucket_count()
    }

    #[getter]
    fn buckets_per_octave(&self) -> u32 {
        self.get().buckets_per_octave()
    }

    #[getter]
    fn effective_accuracy(&self) -> f64 {
        self.get().effective_accuracy()
    }

    #[getter]
    fn relative_accuracy(&self) -> f64 {
        self.get().config().relative_accuracy
    }

    #[getter]
    fn max_buckets(&self) -> u32 {
        self.get().max_buckets()
    }

    #[getter]
    fn exact(&self) -> bool {
        self.get().config().exact
    }

    #[getter]
    fn reference(&self) -> bool {
        self.get().config().policy == NanPolicy::Reference
    }

    #[getter]
    fn min(&self) -> f32 {
        self.get().min()
    }

    #[getter]
    fn max(&self) -> f32 {
        self.get().max()
    }

    #[getter]
    fn mean(&self) -> f64 {
        self.get().mean()
    }

    #[getter]
    fn std_dev(&self) -> f64 {
        self.get().std_dev()
    }
}

/// A [`ChannelMaxObserver`]; `dynquant.observer.ChannelMaxObserver` wraps
/// it. Thread-safe (see the module comment).
#[pyclass(name = "ChannelMaxObserver", module = "dynquant._core", frozen)]
pub(super) struct PyChannelMaxObserver(Shared<ChannelMaxObserver>);

impl PyChannelMaxObserver {
    fn get(&self) -> MutexGuard<'_, ChannelMaxObserver> {
        self.0.get()
    }
}

#[pymethods]
impl PyChannelMaxObserver {
    #[new]
    fn new(py: Python<'_>, in_features: Option<usize>, reference: bool) -> PyResult<Self> {
        let observer = ChannelMaxObserver::try_new(in_features, nan_policy(reference))
            .map_err(|e| to_py_err(py, e))?;
        Ok(Self(Shared::new(observer)))
    }

    /// Adds a `[tokens, in_features]` batch.
    fn update(&self, py: Python<'_>, x: PyReadonlyArray2<'_, f32>) -> PyResult<()> {
        let (tokens, in_features) = (x.shape()[0], x.shape()[1]);
        let x = contiguous(x.as_slice())?;
        self.0
            .update(py, x.len(), |batch| batch.update(x, tokens, in_features))
    }

    fn merge(&self, py: Python<'_>, other: &Self) -> PyResult<()> {
        self.0.merge(py, &other.0)
    }

    fn copy(&self) -> Self {
        Self(self.0.copy())
    }

    fn act_max<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        self.get().act_max().into_pyarray(py)
    }

    /// Factors for `weights` `[out, in]` with the SmoothQuant formula.
    fn smooth_factors<'py>(
        &self,
        py: Python<'py>,
        weights: PyReadonlyArray2<'py, f32>,
        alpha: f32,
        epsilon: f32,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let (out_features, cols) = (weights.shape()[0], weights.shape()[1]);
        if let Some(in_features) = self.get().in_features() {
            if cols != in_features {
                let err = DynQuantError::FeatureWidthMismatch {
                    argument: "weights",
                    in_features,
                    actual: cols,
                };
                return Err(to_py_err(py, err));
            }
        }
        let config =
            smooth::SmoothQuantConfig::try_new(alpha, epsilon).map_err(|e| to_py_err(py, e))?;
        let w = contiguous(weights.as_slice())?;
        let factors = detached(py, || self.get().smooth_factors(w, out_features, &config))?;
        Ok(factors.into_pyarray(py))
    }

    fn to_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        self.0.to_bytes(py)
    }

    #[staticmethod]
    fn from_bytes(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        Shared::from_bytes(py, data).map(Self)
    }

    #[getter]
    fn in_features(&self) -> Option<usize> {
        self.get().in_features()
    }

    #[getter]
    fn tokens(&self) -> u64 {
        self.get().tokens()
    }

    #[getter]
    fn reference(&self) -> bool {
        self.get().policy() == NanPolicy::Reference
    }
}
