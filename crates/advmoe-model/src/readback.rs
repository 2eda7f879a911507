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

fn data_as<E: Element>(data: TensorData, what: &'static str) -> Result<Vec<E>, ReadbackError> {
    data.try_into_vec_as::<E>().map_err(|e| ReadbackError {
        what,
        reason: format!("{e:?}"),
    })
}

/// Read a float tensor back as `f32`s.
pub fn read_f32<const D: usize>(
    t: Tensor<D>,
    what: &'static str,
) -> Result<Vec<f32>, ReadbackError> {
    data_as(t.into_data(), what)
}

/// Read an int tensor back as `i64`s.
pub fn read_i64<const D: usize>(
    t: Tensor<D, Int>,
    what: &'static str,
) -> Result<Vec<i64>, ReadbackError> {
    data_as(t.into_data(), what)
}
