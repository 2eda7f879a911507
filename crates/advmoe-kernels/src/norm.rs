//! The fused batch norm on Burn's CPU backend (`flex`): Burn's own batch norm for the fused
//! operations, and their parts (for the autodiff backward) out of Burn's tensor operations. The
//! CPU reduces long rows well, so fusing would gain little there. The `wgpu` implementation is the WGSL kernels ([`crate::cube`]);
//! the suite checks both against Burn's `batch_norm_train` and `batch_norm`.

use burn::backend::Flex;
use burn::backend::TensorMetadata;
use burn::backend::ops::{ActivationOps, FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::tensor::{Scalar, Shape, Slice};

use crate::ops::BatchNormOps;

/// The table's rows (as `ROW_*` in `shaders/moe_conv_common.wgsl`).
const ROW_MEAN: usize = 0;
const ROW_INV_STD: usize = 1;
const ROW_SCALE: usize = 2;
const ROW_BETA: usize = 3;

/// `[channels]` as `[1, channels, 1, 1]`, to broadcast over `[batch, channels, h, w]`.
fn per_channel(t: FloatTensor<Flex>) -> FloatTensor<Flex> {
    let [channels] = t.shape().dims::<1>();
    Flex::float_reshape(t, Shape::from([1, channels, 1, 1]))
}

/// Row `row` of the table, as `[1, channels, 1, 1]`.
fn row(table: &FloatTensor<Flex>, row: usize) -> FloatTensor<Flex> {
    let [_, channels] = table.shape().dims::<2>();
    let slice = Flex::float_slice(
        table.clone(),
        &[
            Slice::new(row as isize, Some(row as isize + 1), 1),
            Slice::full(),
        ],
    );
    Flex::float_reshape(slice, Shape::from([1, channels, 1, 1]))
}

/// Per channel, the sum over the batch and the pixels: `[channels]`.
fn channel_sum(t: FloatTensor<Flex>) -> FloatTensor<Flex> {
    let [_, channels, ..] = t.shape().dims::<4>();
    Flex::float_reshape(Flex::float_sum_dims(t, &[0, 2, 3]), Shape::from([channels]))
}

/// The values per channel of `x`: batch × pixels.
fn count(x: &FloatTensor<Flex>) -> f64 {
    let [batch, _, h, w] = x.shape().dims::<4>();
    (batch * h * w) as f64
}

/// The table of statistics `mean` and `variance`.
fn table_of(
    gamma: FloatTensor<Flex>,
    beta: FloatTensor<Flex>,
    mean: FloatTensor<Flex>,
    variance: FloatTensor<Flex>,
    epsilon: f64,
) -> FloatTensor<Flex> {
    let [channels] = gamma.shape().dims::<1>();
    let inv_std = Flex::float_recip(Flex::float_sqrt(Flex::float_add_scalar(
        variance,
        Scalar::Float(epsilon),
    )));
    let scale = Flex::float_mul(gamma, inv_std.clone());
    let rows = [mean, inv_std, scale, beta]
        .map(|t| Flex::float_reshape(t, Shape::from([1, channels])))
        .to_vec();
    Flex::float_cat(rows, 0)
}

/// The output before the ReLU: `(x - mean) * scale + beta`.
fn normalised(x: FloatTensor<Flex>, table: &FloatTensor<Flex>) -> FloatTensor<Flex> {
    Flex::float_add(
        Flex::float_mul(
            Flex::float_sub(x, row(table, ROW_MEAN)),
            row(table, ROW_SCALE),
        ),
        row(table, ROW_BETA),
    )
}

/// The output's gradient with the ReLU's cut applied (zero where the output was cut).
fn through_relu(
    grad: FloatTensor<Flex>,
    x: FloatTensor<Flex>,
    table: &FloatTensor<Flex>,
    relu: bool,
) -> FloatTensor<Flex> {
    if relu {
        Flex::relu_backward(normalised(x, table), grad)
    } else {
        grad
    }
}

impl BatchNormOps for Flex {
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let out = <Self as ModuleOps<Self>>::batch_norm_train(x, gamma, beta, epsilon);
        let output = if relu {
            Self::relu(out.output)
        } else {
            out.output
        };
        (output, out.mean, out.variance)
    }

    fn fused_batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> FloatTensor<Self> {
        let output = <Self as ModuleOps<Self>>::batch_norm(x, gamma, beta, mean, variance, epsilon);
        if relu { Self::relu(output) } else { output }
    }

    fn batch_norm_table_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let n = count(&x);
        let mean = Self::float_mul_scalar(channel_sum(x.clone()), Scalar::Float(1.0 / n));
        let centred = Self::float_sub(x, per_channel(mean.clone()));
        let variance = Self::float_mul_scalar(
            channel_sum(Self::float_mul(centred.clone(), centred)),
            Scalar::Float(1.0 / n),
        );
        let table = table_of(gamma, beta, mean.clone(), variance.clone(), epsilon);
        (table, mean, variance)
    }

    fn batch_norm_table_eval(
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        table_of(gamma, beta, mean, variance, epsilon)
    }

    fn batch_norm_apply(
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        let output = normalised(x, &table);
        if relu { Self::relu(output) } else { output }
    }

    fn batch_norm_grad_sums(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let g = through_relu(grad, x.clone(), &table, relu);
        let x_hat = Self::float_mul(
            Self::float_sub(x, row(&table, ROW_MEAN)),
            row(&table, ROW_INV_STD),
        );
        let grad_gamma = channel_sum(Self::float_mul(g.clone(), x_hat));
        (grad_gamma, channel_sum(g))
    }

    fn batch_norm_grad_input(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        grad_gamma: FloatTensor<Self>,
        grad_beta: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        let n = count(&x);
        let g = through_relu(grad, x.clone(), &table, relu);
        let x_hat = Self::float_mul(
            Self::float_sub(x, row(&table, ROW_MEAN)),
            row(&table, ROW_INV_STD),
        );
        let through_stats = Self::float_add(
            per_channel(grad_beta),
            Self::float_mul(x_hat, per_channel(grad_gamma)),
        );
        let centred = Self::float_sub(
            g,
            Self::float_mul_scalar(through_stats, Scalar::Float(1.0 / n)),
        );
        Self::float_mul(centred, row(&table, ROW_SCALE))
    }

    fn batch_norm_grad_input_eval(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        let g = through_relu(grad, x, &table, relu);
        Self::float_mul(g, row(&table, ROW_SCALE))
    }
    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::relu(Self::float_add(a, b))
    }

    fn relu_grad(grad: FloatTensor<Self>, output: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::relu_backward(output, grad)
    }
}
