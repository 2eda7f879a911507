//! Plain layers with the project's own initialisation (host-side, seeded by [`Rng`], so a seed
//! gives the same initial weights on every device) and explicit train/eval batch norm.

use std::cell::Cell;

use advmoe_core::Rng;
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData, activation, ops::ConvOptions};

thread_local! {
    static BATCH_NORM_PATH: Cell<BatchNormPath> = const { Cell::new(BatchNormPath::Fused) };
}

/// How the batch norms run on `wgpu` devices (Burn's CPU backend always runs Burn's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BatchNormPath {
    /// `advmoe_kernels::fused_batch_norm_train` / `_eval`, with the ReLU after it fused in:
    /// two launches forward, one or two backward (the default); a residual block's sum and
    /// ReLU after its last batch norm by `advmoe_kernels::add_relu` ([`residual_relu`]).
    #[default]
    Fused,
    /// Train mode out of tensor operations with [`batch_norm_train_wide`]'s reductions; eval
    /// mode and the ReLU by Burn's operations.
    Wide,
    /// Burn's `batch_norm_train` and `batch_norm`, then its ReLU.
    Burn,
}

/// Run the batch norms of this thread's models on `wgpu` devices by `path`; returns the previous
/// setting. The benchmark's `bench steps --batch-norm` sets it so that `bench/gpu.sh` can time
/// the three.
pub fn set_batch_norm_path(path: BatchNormPath) -> BatchNormPath {
    BATCH_NORM_PATH.with(|cell| cell.replace(path))
}

/// The end of a residual block, `relu(y + identity)`: on `wgpu` with the fused batch norms
/// ([`BatchNormPath::Fused`]) and the element-wise kernels on (`advmoe_kernels::own_elementwise`)
/// one launch forward and one backward (`advmoe_kernels::add_relu`), elsewhere Burn's
/// operations.
///
/// # Shapes
/// - y, identity and the output `[batch, channels, h, w]`
pub fn residual_relu(y: Tensor<4>, identity: Tensor<4>) -> Tensor<4> {
    if advmoe_kernels::on_wgpu(&y.device())
        && advmoe_kernels::own_elementwise()
        && BATCH_NORM_PATH.with(Cell::get) == BatchNormPath::Fused
    {
        advmoe_kernels::add_relu(y, identity)
    } else {
        activation::relu(y + identity)
    }
}

/// A `[shape]` tensor of normal samples with standard deviation `std`.
pub fn normal_tensor<const D: usize>(
    shape: [usize; D],
    std: f32,
    rng: &mut Rng,
    device: &Device,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.normal() * std).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// A `[shape]` tensor of uniform samples in `[-bound, bound)`.
pub fn uniform_tensor<const D: usize>(
    shape: [usize; D],
    bound: f32,
    rng: &mut Rng,
    device: &Device,
) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.uniform_range(-bound, bound)).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Kaiming-normal std for a ReLU conv with `fan_out = out_channels * k * k` (as torchvision's
/// ResNet initialises its convs).
pub fn kaiming_std(channels_out: usize, kernel: usize) -> f32 {
    (2.0 / (channels_out * kernel * kernel) as f32).sqrt()
}

/// A bias-free conv with "same" padding `kernel / 2`.
#[derive(Module, Debug)]
pub struct Conv {
    /// `[channels_out, channels_in, kernel, kernel]`.
    pub weight: Param<Tensor<4>>,
    /// Stride.
    pub stride: usize,
}

impl Conv {
    /// Create with Kaiming-normal weights.
    pub fn new(
        channels_in: usize,
        channels_out: usize,
        kernel: usize,
        stride: usize,
        rng: &mut Rng,
        device: &Device,
    ) -> Self {
        let std = kaiming_std(channels_out, kernel);
        Self {
            weight: Param::from_tensor(normal_tensor(
                [channels_out, channels_in, kernel, kernel],
                std,
                rng,
                device,
            )),
            stride,
        }
    }

    /// # Shapes
    /// - input `[batch, channels_in, h, w]`
    /// - output `[batch, channels_out, ceil(h / stride), ceil(w / stride)]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let k = self.weight.shape().dims::<4>()[2];
        advmoe_kernels::conv2d(x, self.weight.val(), self.stride, k / 2)
    }
}

/// Conv options for a square kernel with "same" padding.
pub fn conv_options(stride: usize, kernel: usize) -> ConvOptions<2> {
    ConvOptions::new([stride, stride], [kernel / 2, kernel / 2], [1, 1], 1)
}

/// A fully connected layer, PyTorch layout (`weight: [out, in]`).
#[derive(Module, Debug)]
pub struct Fc {
    /// `[features_out, features_in]`.
    pub weight: Param<Tensor<2>>,
    /// `[features_out]`.
    pub bias: Param<Tensor<1>>,
}

impl Fc {
    /// Create with PyTorch's default uniform init (bound `1 / sqrt(features_in)`).
    pub fn new(features_in: usize, features_out: usize, rng: &mut Rng, device: &Device) -> Self {
        let bound = 1.0 / (features_in as f32).sqrt();
        Self {
            weight: Param::from_tensor(uniform_tensor(
                [features_out, features_in],
                bound,
                rng,
                device,
            )),
            bias: Param::from_tensor(uniform_tensor([features_out], bound, rng, device)),
        }
    }

    /// # Shapes
    /// - input `[batch, features_in]`, output `[batch, features_out]`
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        x.matmul(self.weight.val().transpose()) + self.bias.val().unsqueeze::<2>()
    }
}

/// Momentum of running statistics (PyTorch's default).
pub const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// Batch norm whose running statistics are parameters without gradient, updated explicitly by
/// [`crate::MoeNet::apply_bn_updates`] (so a train step is a pure function of its inputs, and
/// checkpoints hold the statistics).
#[derive(Module, Debug)]
pub struct Bn {
    /// Scale, `[channels]`.
    pub gamma: Param<Tensor<1>>,
    /// Shift, `[channels]`.
    pub beta: Param<Tensor<1>>,
    /// Running mean, `[channels]` (no gradient).
    pub running_mean: Param<Tensor<1>>,
    /// Running unbiased variance, `[channels]` (no gradient).
    pub running_var: Param<Tensor<1>>,
    /// This module's path in the model (the key of its statistics update).
    pub path: String,
}

impl Bn {
    /// Identity-initialised batch norm at `path`.
    pub fn new(channels: usize, path: String, device: &Device) -> Self {
        Self {
            gamma: Param::from_tensor(Tensor::ones([channels], device)),
            beta: Param::from_tensor(Tensor::zeros([channels], device)),
            running_mean: Param::from_tensor(Tensor::zeros([channels], device))
                .set_require_grad(false),
            running_var: Param::from_tensor(Tensor::ones([channels], device))
                .set_require_grad(false),
            path,
        }
    }

    /// Normalise with batch statistics (`train`, recording them in `updates`) or with the running
    /// statistics.
    ///
    /// # Shapes
    /// - input and output `[batch, channels, h, w]`
    pub fn forward(
        &self,
        x: Tensor<4>,
        train: bool,
        updates: &mut Vec<crate::BnUpdate>,
    ) -> Tensor<4> {
        self.normalise(x, train, updates, false)
    }

    /// [`Self::forward`], then a ReLU: on `wgpu` one fused operation.
    ///
    /// # Shapes
    /// As [`Self::forward`].
    pub fn forward_relu(
        &self,
        x: Tensor<4>,
        train: bool,
        updates: &mut Vec<crate::BnUpdate>,
    ) -> Tensor<4> {
        self.normalise(x, train, updates, true)
    }

    fn normalise(
        &self,
        x: Tensor<4>,
        train: bool,
        updates: &mut Vec<crate::BnUpdate>,
        relu: bool,
    ) -> Tensor<4> {
        let path = if advmoe_kernels::on_wgpu(&x.device()) {
            BATCH_NORM_PATH.with(Cell::get)
        } else {
            BatchNormPath::Burn
        };
        let (gamma, beta) = (self.gamma.val(), self.beta.val());
        let (mean, var) = (self.running_mean.val(), self.running_var.val());
        if path == BatchNormPath::Fused {
            // The ReLU is part of the fused operation.
            return if train {
                self.record(
                    advmoe_kernels::fused_batch_norm_train(x, gamma, beta, BN_EPS, relu),
                    updates,
                )
            } else {
                advmoe_kernels::fused_batch_norm_eval(x, gamma, beta, mean, var, BN_EPS, relu)
            };
        }
        let output = match (train, path) {
            (false, _) => burn::tensor::module::batch_norm(x, gamma, beta, mean, var, BN_EPS),
            (true, BatchNormPath::Wide) => {
                self.record(batch_norm_train_wide(x, gamma, beta, BN_EPS), updates)
            }
            (true, _) => {
                let out = burn::tensor::module::batch_norm_train(x, gamma, beta, BN_EPS);
                self.record((out.output, out.mean, out.variance), updates)
            }
        };
        if relu {
            activation::relu(output)
        } else {
            output
        }
    }

    /// Record the batch's statistics (`mean` and biased `variance` of the output's batch and
    /// pixels per channel) in `updates` and return the output.
    fn record(
        &self,
        (output, mean, variance): (Tensor<4>, Tensor<1>, Tensor<1>),
        updates: &mut Vec<crate::BnUpdate>,
    ) -> Tensor<4> {
        let [b, _, h, w] = output.dims();
        let n = (b * h * w) as f64;
        updates.push(crate::BnUpdate {
            path: self.path.clone(),
            mean: mean.detach(),
            var: variance.detach(),
            unbiased: if n > 1.0 { n / (n - 1.0) } else { 1.0 },
        });
        output
    }
}

/// Train-mode batch norm out of tensor operations whose reductions keep a GPU busy: returns the
/// output, the batch mean and the biased batch variance (`[channels]` each).
///
/// Burn's `batch_norm_train` gathers each channel into one row of `batch * h * w` values and
/// reduces the rows. Without Burn's autotune a `wgpu` device reduces a row in one invocation, so a
/// channel's whole sum (131,072 values for 32×32 images at batch 128) runs serially in one thread
/// while the rest of the GPU idles, six times per layer and step with the backward. Here
/// each statistic, and the autodiff backward of each broadcast, sums each sample's image per
/// channel, then the batch: `batch * channels` outputs of `h * w` values, then `channels` of
/// `batch`, two launches (Burn folds the image's two dimensions into one). Used on `wgpu` when
/// asked for ([`BatchNormPath::Wide`]; the fused kernels are the default there): Burn's CPU
/// backend reduces long rows well, and its own operation keeps the CPU's figures as they were.
///
/// # Shapes
/// - input and output `[batch, channels, h, w]`; gamma and beta `[channels]`
pub fn batch_norm_train_wide(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let [b, c, h, w] = x.dims();
    let n = (b * h * w) as f64;
    let per_channel_mean = |t: Tensor<4>| t.sum_dims(&[0, 2, 3]).mul_scalar(1.0 / n);
    let mean = per_channel_mean(x.clone());
    let centered = x - mean.clone();
    let variance = per_channel_mean(centered.clone().square());
    let scale =
        gamma.reshape([1, c, 1, 1]) * variance.clone().add_scalar(epsilon).powf_scalar(-0.5);
    let output = centered * scale + beta.reshape([1, c, 1, 1]);
    (output, mean.reshape([c]), variance.reshape([c]))
}
