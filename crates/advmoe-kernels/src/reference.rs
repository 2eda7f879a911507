//! Plain-tensor versions of the extensions' operations: the oracles the kernels are tested
//! against, and the implementation on devices without the kernels.
//!
//! The MoE convolution runs every expert with one dense convolution and keeps each sample's own
//! channels: `N` times the work of the sparse path. The updates ([`sgd_step`], [`adam_step`],
//! [`running_stats_step`], [`linf_step`]) are what the CPU runs, one tensor operation per
//! product or sum, in the order the update kernels compute them.

use burn::tensor::Tensor;

use crate::ops::AdamHyper;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;

/// `output[b] = sum over e of gate[b, e] * conv(input[b], weight of expert e)`. With a gate
/// that is zero off the selected expert in value (every routing the model uses), this equals
/// the sparse convolution, and so do its input and weight gradients. Its gate gradient also
/// has entries off the selected expert (the unselected experts' outputs, computed here); the
/// sparse op defines those as zero, and the model's gates (one-hot times a straight-through
/// factor, or constant) mask them, so the router-score gradients agree.
///
/// # Shapes
/// - input `[batch, c_in, h, w]`, weight `[num_experts * c_out, c_in, k, k]`,
///   gate `[batch, num_experts]`
/// - output `[batch, c_out, h_out, w_out]`
pub fn moe_conv(
    input: Tensor<4>,
    weight: Tensor<4>,
    gate: Tensor<2>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    let [batch, num_experts] = gate.dims();
    let [rows, ..] = weight.dims();
    let c_out = rows / num_experts;
    let all = conv2d(
        input,
        weight,
        None,
        ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1),
    );
    // Sum of each expert's channel slice times its gate column. (A reshape of `all` to
    // `[batch, N, c_out, h, w]` computes the same forward, but its backward gave wrong input
    // gradients on wgpu once the upstream gradient came from another conv.)
    (0..num_experts)
        .map(|e| {
            let slice = all.clone().narrow(1, e * c_out, c_out);
            let column = gate.clone().narrow(1, e, 1).reshape([batch, 1, 1, 1]);
            slice * column
        })
        .reduce(|acc, y| acc + y)
        .expect("a gate has at least one column")
}

/// SGD with momentum (no dampening) and weight decay, as PyTorch's: `(param', buf')`; a `buf` of
/// `None` starts the momentum buffer with this step's gradient.
pub fn sgd_step(
    param: Tensor<1>,
    grad: Tensor<1>,
    buf: Option<Tensor<1>>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) -> (Tensor<1>, Tensor<1>) {
    let grad = with_decay(grad, &param, weight_decay);
    let buf = match buf {
        Some(buf) => buf.mul_scalar(momentum) + grad,
        None => grad,
    };
    (param - buf.clone().mul_scalar(lr), buf)
}

/// Adam with bias correction, weight decay added to the gradient: `(param', m', v')`; moments of
/// `None` start at zero.
pub fn adam_step(
    param: Tensor<1>,
    grad: Tensor<1>,
    moments: Option<(Tensor<1>, Tensor<1>)>,
    hyper: AdamHyper,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    let grad = with_decay(grad, &param, hyper.weight_decay);
    let m = grad.clone().mul_scalar(1.0 - hyper.beta1);
    let v = (grad.clone() * grad).mul_scalar(1.0 - hyper.beta2);
    let (m, v) = match moments {
        Some((m_old, v_old)) => (
            m_old.mul_scalar(hyper.beta1) + m,
            v_old.mul_scalar(hyper.beta2) + v,
        ),
        None => (m, v),
    };
    let m_hat = m.clone().div_scalar(1.0 - hyper.beta1.powi(hyper.step));
    let v_hat = v.clone().div_scalar(1.0 - hyper.beta2.powi(hyper.step));
    let step = (m_hat / (v_hat.sqrt().add_scalar(hyper.eps))).mul_scalar(hyper.lr);
    (param - step, m, v)
}

/// A batch norm's running statistics after one train-mode pass: `(mean', var')`, the batch's
/// biased variance times `unbiased` (n / (n - 1)) folded in with weight `momentum`.
pub fn running_stats_step(
    running_mean: Tensor<1>,
    running_var: Tensor<1>,
    batch_mean: Tensor<1>,
    batch_var: Tensor<1>,
    momentum: f64,
    unbiased: f64,
) -> (Tensor<1>, Tensor<1>) {
    let keep = 1.0 - momentum;
    let batch_var = batch_var.mul_scalar(unbiased);
    (
        running_mean.mul_scalar(keep) + batch_mean.mul_scalar(momentum),
        running_var.mul_scalar(keep) + batch_var.mul_scalar(momentum),
    )
}

/// One step of an L∞ attack: `x + step_size * sign(grad)`, projected onto the ball of `radius`
/// around `center` and into `[0, 1]`.
pub fn linf_step(
    x: Tensor<4>,
    grad: Tensor<4>,
    center: Tensor<4>,
    step_size: f64,
    radius: f64,
) -> Tensor<4> {
    let moved = x + grad.sign().mul_scalar(step_size);
    let delta = (moved - center.clone()).clamp(-radius, radius);
    (center + delta).clamp(0.0, 1.0)
}

/// `grad + weight_decay * param` when the decay is above zero.
fn with_decay(grad: Tensor<1>, param: &Tensor<1>, weight_decay: f64) -> Tensor<1> {
    if weight_decay > 0.0 {
        grad + param.clone().mul_scalar(weight_decay)
    } else {
        grad
    }
}
