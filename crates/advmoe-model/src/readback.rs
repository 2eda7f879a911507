//! Synchronous readback of small tensors to the host, with failures as errors (never empty data).
//! For evaluation, checkpoints and inspection; the training loop defers its readbacks.

use burn::tensor::{Element, Int, Tensor, TensorData};

/// A tensor could not be read back from the device (e.g. the device was lost).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("reading {what} back from the device failed: {reason}")]
pub struct ReadbackError {
    /// What was being read.
    pub what: &'static str,
    /// Why it failed.
    pub reason: String,
}

fn data_as<E: Element, X: std::fmt::Debug>(
    data: Result<TensorData, X>,
    what: &'static str,
) -> Result<Vec<E>, ReadbackError> {
    let error = |reason: String| ReadbackError { what, reason };
    data.map_err(|e| error(format!("{e:?}")))?
        .try_into_vec_as::<E>()
        .map_err(|e| error(format!("{e:?}")))
}

/// Read a float tensor back as `f32`s.
pub fn read_f32<const D: usize>(
    t: Tensor<D>,
    what: &'static str,
) -> Result<Vec<f32>, ReadbackError> {
    data_as(t.try_into_data(), what)
}

/// Read an int tensor back as `i64`s.
pub fn read_i64<const D: usize>(
    t: Tensor<D, Int>,
    what: &'static str,
) -> Result<Vec<i64>, ReadbackError> {
    data_as(t.try_into_data(), what)
}
