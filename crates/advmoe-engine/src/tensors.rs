//! Host batches to device tensors, and small readback helpers.

use advmoe_core::Rng;
use advmoe_data::Batch;
use burn::tensor::{Device, Element, Int, Tensor, TensorData};

/// A batch on the device.
#[derive(Debug, Clone)]
pub struct DeviceBatch {
    /// `[batch, channels, h, w]`, pixels in [0, 1].
    pub images: Tensor<4>,
    /// `[batch]` class indices.
    pub labels: Tensor<1, Int>,
    /// `[batch, classes]` one-hot labels.
    pub one_hot: Tensor<2>,
}

/// Upload a host batch.
pub fn to_device(batch: &Batch, num_classes: usize, device: &Device) -> DeviceBatch {
    let images = Tensor::from_data(TensorData::new(batch.images.clone(), batch.shape), device);
    let labels_i64: Vec<i64> = batch.labels.iter().map(|&l| l as i64).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels_i64, [batch.len()]), device);
    let one_hot = labels.clone().one_hot::<2>(num_classes).float();
    DeviceBatch {
        images,
        labels,
        one_hot,
    }
}

/// Uniform noise in `[-bound, bound)` of `shape`, drawn on the host from `rng` (reproducible on
/// every device, and part of a run's checkpointed state).
pub fn uniform_noise(shape: [usize; 4], bound: f32, rng: &mut Rng, device: &Device) -> Tensor<4> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.uniform_range(-bound, bound)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A tensor could not be read back from the device (e.g. the device was lost).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("reading {what} back from the device failed: {reason}")]
pub struct ReadbackError {
    /// What was being read.
    pub what: &'static str,
    /// Why it failed.
    pub reason: String,
}

/// Convert read-back data to a vector of `E`.
fn data_as<E: Element>(data: TensorData, what: &'static str) -> Result<Vec<E>, ReadbackError> {
    data.try_into_vec_as::<E>().map_err(|e| ReadbackError {
        what,
        reason: format!("{e:?}"),
    })
}

/// Read a float tensor back as `f32`s (synchronous).
pub fn read_f32<const D: usize>(
    t: Tensor<D>,
    what: &'static str,
) -> Result<Vec<f32>, ReadbackError> {
    data_as(t.into_data(), what)
}

/// Read an int tensor back (synchronous).
pub fn read_i64<const D: usize>(
    t: Tensor<D, Int>,
    what: &'static str,
) -> Result<Vec<i64>, ReadbackError> {
    data_as(t.into_data(), what)
}
