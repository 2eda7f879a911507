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
use burn::tensor::{DType, FloatDType, IntDType, Shape};

use crate::ops::SparseMoeOps;

/// The expert indices as the kernels read them (i32), converted once so the backward's launches
/// reuse them.
fn i32_experts<B: SparseMoeOps>(experts: IntTensor<B>) -> IntTensor<B> {
    match experts.dtype() {
        DType::I32 => experts,
        _ => B::int_cast(experts, IntDType::I32),
    }
}

/// What the backward needs from the forward.
#[derive(Debug, Clone)]
struct State<B: Backend> {
    input: FloatTensor<B>,
    weight: FloatTensor<B>,
    gate: FloatTensor<B>,
    experts: IntTensor<B>,
    /// The ungated output, kept only when the gate takes a gradient.
    z: Option<FloatTensor<B>>,
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
        let [_, _, kernel, _] = state.weight.shape().dims::<4>();
        let [_, num_experts] = state.gate.shape().dims::<2>();
        if let (Some(node), Some(z)) = (node_gate, state.z) {
            let grad_gate =
                B::sparse_moe_gate_grad(grad.clone(), z, state.experts.clone(), num_experts);
            grads.register::<B>(node.id, grad_gate);
        }
        // The input and weight kernels scale each sample's gradient by its gate themselves.
        if let Some(node) = node_weight {
            let grad_weight = B::sparse_moe_conv_weight_grad(
                grad.clone(),
                state.input,
                state.gate.clone(),
                state.experts.clone(),
                state.stride,
                state.padding,
                kernel,
            );
            grads.register::<B>(node.id, grad_weight);
        }
        if let Some(node) = node_input {
            let grad_input = B::sparse_moe_conv_input_grad(
                grad,
                state.weight,
                state.gate,
                state.experts,
                state.stride,
                state.padding,
                [height, width],
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
        let device = input.device();
        let experts = B::int_zeros(Shape::from([batch]), &device, IntDType::I32);
        let gate = B::float_ones(Shape::from([batch, 1]), &device, FloatDType::F32);
        if let Some(node) = node_weight {
            let grad_weight = B::sparse_moe_conv_weight_grad(
                grad.clone(),
                input,
                gate.clone(),
                experts.clone(),
                stride,
                padding,
                kernel,
            );
            grads.register::<B>(node.id, grad_weight);
        }
        if let Some(node) = node_input {
            let grad_input = B::sparse_moe_conv_input_grad(
                grad,
                weight,
                gate,
                experts,
                stride,
                padding,
                [height, width],
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
        // The ungated output is kept only for the gate's gradient (not when attacks hold the
        // gate constant).
        let keep_ungated = gate.is_tracked();
        let nodes = [input.node(), weight.node(), gate.node()];
        let (input, weight, gate) = (
            input.into_primitive(),
            weight.into_primitive(),
            gate.into_primitive(),
        );
        let experts = i32_experts::<B>(experts);
        let (i, w, g, e) = (input.clone(), weight.clone(), gate.clone(), experts.clone());
        let (output, z) = if keep_ungated {
            let (output, z) = B::sparse_moe_conv_with_ungated(i, w, g, e, stride, padding);
            (output, Some(z))
        } else {
            (B::sparse_moe_conv(i, w, g, e, stride, padding), None)
        };
        match SparseMoeConvBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                State {
                    input,
                    weight,
                    gate,
                    experts,
                    z,
                    stride,
                    padding,
                },
                output,
            ),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    fn sparse_moe_conv_with_ungated(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (output, z) = B::sparse_moe_conv_with_ungated(
            input.into_primitive(),
            weight.into_primitive(),
            gate.into_primitive(),
            experts,
            stride,
            padding,
        );
        (Self::from_inner(output), Self::from_inner(z))
    }

    fn sparse_moe_conv_input_grad(
        grad_output: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
        input_size: [usize; 2],
    ) -> FloatTensor<Self> {
        Self::from_inner(B::sparse_moe_conv_input_grad(
            grad_output.into_primitive(),
            weight.into_primitive(),
            gate.into_primitive(),
            experts,
            stride,
            padding,
            input_size,
        ))
    }

    fn sparse_moe_conv_weight_grad(
        grad_output: FloatTensor<Self>,
        input: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
        kernel: usize,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::sparse_moe_conv_weight_grad(
            grad_output.into_primitive(),
            input.into_primitive(),
            gate.into_primitive(),
            experts,
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
