//! The backend extension: the sparse MoE convolution as operations of a Burn backend.
//!
//! Implemented for the CubeCL backend (Burn's `wgpu` devices; [`crate::cube`]), for Burn's CPU
//! backend (`flex`; [`crate::cpu`]) and for `Autodiff` over either ([`crate::autodiff`]). Other
//! backends are not listed: callers check [`crate::sparse_supported`] first and use
//! [`crate::reference`] there.

use burn::backend::Backend;
use burn::backend::backend_extension;
use burn::backend::tensor::{FloatTensor, IntTensor};

/// Sparse MoE convolution with top-1 routing. Shapes:
/// - `input [batch, c_in, h_in, w_in]`
/// - `weight [num_experts * c_out, c_in, kernel, kernel]`, expert `e` owning rows
///   `e * c_out .. (e + 1) * c_out`
/// - `gate [batch, num_experts]`, `experts [batch]` (the selected expert of each sample)
/// - output `[batch, c_out, h_out, w_out]` with
///   `h_out = (h_in + 2 * padding - kernel) / stride + 1`
#[backend_extension(Cube, Flex, Autodiff)]
pub trait SparseMoeOps: Backend {
    /// `output[b] = gate[b, experts[b]] * conv(input[b], weight of expert experts[b])`.
    /// Differentiable (on autodiff devices) in `input`, `weight` and `gate`; the gate's gradient
    /// is zero off the selected expert.
    fn sparse_moe_conv(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// The gated expert convolution without a backward: `output[b] = gate[b, experts[b]] *
    /// z[b]` with `z[b] = conv(input[b], weight of expert experts[b])`, in one pass (the gate is
    /// read where the output is written). `z` is returned too when `keep_ungated` (the gate's
    /// gradient needs it), else `None`. The number of experts is the gate's columns.
    fn sparse_moe_conv_forward(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
        keep_ungated: bool,
    ) -> (FloatTensor<Self>, Option<FloatTensor<Self>>);

    /// Gradient of the gated convolution with respect to its input,
    /// `[batch, c_in, height, width]` for `input_size = [height, width]`: each sample's output
    /// gradient through its expert's filters, times `gate[b, experts[b]]` (the number of experts
    /// is the gate's columns).
    fn sparse_moe_conv_input_grad(
        grad_output: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
        input_size: [usize; 2],
    ) -> FloatTensor<Self>;

    /// Gradient of the gated convolution with respect to the weight,
    /// `[num_experts * c_out, c_in, kernel, kernel]`: each sample adds its share, times
    /// `gate[b, experts[b]]`, into its own expert's rows (the number of experts is the gate's
    /// columns).
    fn sparse_moe_conv_weight_grad(
        grad_output: FloatTensor<Self>,
        input: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
        kernel: usize,
    ) -> FloatTensor<Self>;

    /// Straight-through gate gradient `[batch, num_experts]`: `sum(grad_output[b] * z[b])` at the
    /// selected expert, zero elsewhere (`z` is the ungated output).
    fn sparse_moe_gate_grad(
        grad_output: FloatTensor<Self>,
        z: FloatTensor<Self>,
        experts: IntTensor<Self>,
        num_experts: usize,
    ) -> FloatTensor<Self>;

    /// `conv(input[b], weight)` for every sample: a plain convolution (one expert, no gate, no
    /// bias), differentiable in `input` and `weight` on autodiff devices: the MoE convolution's
    /// kernels with one expert and a gate of 1 (on `wgpu` the model calls it only where
    /// [`crate::set_own_gpu_conv`] asked for it, see [`crate::conv2d`]).
    fn expert_conv(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;
}
