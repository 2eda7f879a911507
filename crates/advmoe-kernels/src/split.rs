//! The MoE convolution on Burn's CPU backend: the batch split by expert, one dense convolution
//! per expert over its own images, the results put back in place. The same work as the sparse
//! kernels (each image through its expert only), where the reference ([`crate::reference`])
//! runs every expert on every image: `N` times as much.
//!
//! The split needs the routes on the host. Reading them is a copy on the CPU backend (no device
//! to wait for), which is why only that backend takes this path, and only natively: a browser's
//! CPU fallback cannot read synchronously.

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

/// `output[b] = gate[b, e_b] * conv(input[b], weight of expert e_b)` for the expert `e_b =
/// experts[b]`, the sparse op's contract: its gate gradient is zero off the selected expert.
///
/// # Shapes
/// - input `[batch, c_in, h, w]`, weight `[num_experts * c_out, c_in, k, k]`,
///   gate `[batch, num_experts]`, experts `[batch]`
/// - output `[batch, c_out, h_out, w_out]`
pub fn moe_conv(
    input: Tensor<4>,
    weight: Tensor<4>,
    gate: Tensor<2>,
    experts: Tensor<1, Int>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    let [batch, num_experts] = gate.dims();
    if batch == 0 {
        return crate::reference::moe_conv(input, weight, gate, stride, padding);
    }
    let [rows, ..] = weight.dims();
    let c_out = rows / num_experts;
    let device = input.device();
    let chosen: Vec<i64> = experts.into_data().iter::<i64>().collect();
    let options = ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1);
    let mut out: Option<Tensor<4>> = None;
    for e in 0..num_experts {
        let own: Vec<i64> = (0..batch as i64)
            .filter(|&b| chosen[b as usize] == e as i64)
            .collect();
        if own.is_empty() {
            continue;
        }
        let w = weight.clone().narrow(0, e * c_out, c_out);
        let column = gate.clone().narrow(1, e, 1);
        if own.len() == batch {
            // Every image chose this expert: no split.
            return conv2d(input, w, None, options) * column.reshape([batch, 1, 1, 1]);
        }
        let n = own.len();
        let index = Tensor::<1, Int>::from_data(TensorData::new(own, [n]), &device);
        let y = conv2d(
            input.clone().select(0, index.clone()),
            w,
            None,
            options.clone(),
        ) * column.select(0, index.clone()).reshape([n, 1, 1, 1]);
        let [_, c, h, w] = y.dims();
        let base = out.unwrap_or_else(|| Tensor::zeros([batch, c, h, w], &device));
        out = Some(base.select_assign(0, index, y, IndexingUpdateOp::Add));
    }
    out.expect("every image chose an expert")
}
