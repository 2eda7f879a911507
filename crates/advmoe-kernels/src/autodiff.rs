//! The autodiff backward of the sparse MoE convolution (input, weight and gate gradients from
//! the sparse kernels, registered on the three parents) and of the one-expert convolution
//! (input and weight gradients from the same kernels, every sample on expert 0).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{AutodiffBackend, Backend, TensorMetadata};
use burn::tensor::{DType, IntDType, Shape};

use crate::ops::SparseMoeOps;

/// The gated forward on a plain backend: `(output, z, scale, experts)` with `z` the ungated
/// expert output, `scale [batch, 1, 1, 1]` each sample's gate at its selected expert and the
/// expert indices as i32.
pub(crate) fn gated<B: SparseMoeOps>(
    input: FloatTensor<B>,
    weight: FloatTensor<B>,
    gate: FloatTensor<B>,
    experts: IntTensor<B>,
    stride: usize,
    padding: usize,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, IntTensor<B>) {
    let [batch, num_experts] = gate.shape().dims::<2>();
    // The kernels read i32 indices: convert once here, so the backward's launches reuse them.
    let experts = match experts.dtype() {
        DType::I32 => experts,
        _ => B::int_cast(experts, IntDType::I32),
    };
    let z =
        B::sparse_moe_conv_forward(input, weight, experts.clone(), num_experts, stride, padding);
    let index = B::int_reshape(experts.clone(), Shape::from([batch, 1]));
    let scale = B::float_gather(1, gate, index);
    let scale = B::float_reshape(scale, Shape::from([batch, 1, 1, 1]));
    let output = B::float_mul(z.clone(), scale.clone());
    (output, z, scale, experts)
}

/// What the backward needs from the forward.
#[derive(Debug, Clone)]
struct State<B: Backend> {
    input: FloatTensor<B>,
    weight: FloatTensor<B>,
    experts: IntTensor<B>,
    z: FloatTensor<B>,
    scale: FloatTensor<B>,
    stride: usize,
    padding: usize,
}

#[derive(Debug)]
struct SparseMoeConvBackward;

impl<B: Backend + SparseMoeOps> Backward<B, 3> for SparseMoeConvBackward {
    type State = State<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_input, node_weight, node_gate] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let state = ops.state;
        let [_, _, height, width] = state.input.shape().dims::<4>();
        let [rows, _, kernel, _] = state.weight.shape().dims::<4>();
        let [_, c_out, ..] = state.z.shape().dims::<4>();
        let num_experts = rows / c_out;
        let grad_z = B::float_mul(grad.clone(), state.scale);
        if let Some(node) = node_gate {
            let grad_gate =
                B::sparse_moe_gate_grad(grad, state.z, state.experts.clone(), num_experts);
            grads.register::<B>(node.id, grad_gate);
        }
        if let Some(node) = node_weight {
            let grad_weight = B::sparse_moe_conv_weight_grad(
                grad_z.clone(),
                state.input,
                state.experts.clone(),
                num_experts,
                state.stride,
                state.padding,
                kernel,
            );
            grads.register::<B>(node.id, grad_weight);
        }
        if let Some(node) = node_input {
            let grad_input = B::sparse_moe_conv_input_grad(
                grad_z,
                state.weight,
                state.experts,
                state.stride,
                state.padding,
                height,
                width,
            );
            grads.register::<B>(node.id, grad_input);
        }
    }
}

/// What the one-expert convolution's backward needs.
#[derive(Debug, Clone)]
struct PlainState<B: Backend> {
    input: FloatTensor<B>,
    weight: FloatTensor<B>,
    stride: usize,
    padding: usize,
}

#[derive(Debug)]
struct ExpertConvBackward;

impl<B: Backend + SparseMoeOps> Backward<B, 2> for ExpertConvBackward {
    type State = PlainState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_input, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let PlainState {
            input,
            weight,
            stride,
            padding,
        } = ops.state;
        let [batch, _, height, width] = input.shape().dims::<4>();
        let [_, _, kernel, _] = weight.shape().dims::<4>();
        let experts = B::int_zeros(Shape::from([batch]), &input.device(), IntDType::I32);
        if let Some(node) = node_weight {
            let grad_weight = B::sparse_moe_conv_weight_grad(
                grad.clone(),
                input,
                experts.clone(),
                1,
                stride,
                padding,
                kernel,
            );
            grads.register::<B>(node.id, grad_weight);
        }
        if let Some(node) = node_input {
            let grad_input = B::sparse_moe_conv_input_grad(
                grad, weight, experts, stride, padding, height, width,
            );
            grads.register::<B>(node.id, grad_input);
        }
    }
}

impl<B: Backend + SparseMoeOps, C: CheckpointStrategy> SparseMoeOps for Autodiff<B, C> {
    fn sparse_moe_conv(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        let nodes = [input.node(), weight.node(), gate.node()];
        let (input, weight, gate) = (
            input.into_primitive(),
            weight.into_primitive(),
            gate.into_primitive(),
        );
        let (output, z, scale, experts) = gated::<B>(
            input.clone(),
            weight.clone(),
            gate,
            experts,
            stride,
            padding,
        );
        match SparseMoeConvBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                State {
                    input,
                    weight,
                    experts,
                    z,
                    scale,
                    stride,
                    padding,
                },
                output,
            ),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    fn sparse_moe_conv_forward(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        experts: IntTensor<Self>,
        num_experts: usize,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::sparse_moe_conv_forward(
            input.into_primitive(),
            weight.into_primitive(),
            experts,
            num_experts,
            stride,
            padding,
        ))
    }

    fn sparse_moe_conv_input_grad(
        grad_output: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
        height: usize,
        width: usize,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::sparse_moe_conv_input_grad(
            grad_output.into_primitive(),
            weight.into_primitive(),
            experts,
            stride,
            padding,
            height,
            width,
        ))
    }

    fn sparse_moe_conv_weight_grad(
        grad_output: FloatTensor<Self>,
        input: FloatTensor<Self>,
        experts: IntTensor<Self>,
        num_experts: usize,
        stride: usize,
        padding: usize,
        kernel: usize,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::sparse_moe_conv_weight_grad(
            grad_output.into_primitive(),
            input.into_primitive(),
            experts,
            num_experts,
            stride,
            padding,
            kernel,
        ))
    }

    fn sparse_moe_gate_grad(
        grad_output: FloatTensor<Self>,
        z: FloatTensor<Self>,
        experts: IntTensor<Self>,
        num_experts: usize,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::sparse_moe_gate_grad(
            grad_output.into_primitive(),
            z.into_primitive(),
            experts,
            num_experts,
        ))
    }

    fn expert_conv(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        let nodes = [input.node(), weight.node()];
        let (input, weight) = (input.into_primitive(), weight.into_primitive());
        let output = B::expert_conv(input.clone(), weight.clone(), stride, padding);
        match ExpertConvBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                PlainState {
                    input,
                    weight,
                    stride,
                    padding,
                },
                output,
            ),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }
}
