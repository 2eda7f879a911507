//! Host batches to device tensors, and small readback helpers.

use advmoe_core::Rng;
use advmoe_data::Batch;
use burn::tensor::{Device, Int, Tensor, TensorData};

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
    // Built on the host: Burn's `Tensor::one_hot` checks its input with a synchronous
    // readback, which panics in a browser (and costs a GPU round trip natively).
    let mut hot = vec![0f32; batch.len() * num_classes];
    for (i, &label) in batch.labels.iter().enumerate() {
        if let Some(x) = hot.get_mut(i * num_classes + usize::from(label)) {
            *x = 1.0;
        }
    }
    let one_hot = Tensor::from_data(TensorData::new(hot, [batch.len(), num_classes]), device);
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

pub use advmoe_model::readback::{ReadbackError, read_f32, read_i64};
