//! The plain-tensor MoE convolution: the oracle the sparse kernels are tested against and the
//! implementation on devices without them (Burn's CPU backend).
//!
//! It runs every expert with one dense convolution and keeps each sample's own channels: `N`
//! times the work of the sparse path.

use burn::tensor::Tensor;
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
