//! The autodiff backward of the sparse MoE convolution (input, weight and gate gradients from
//! the sparse kernels, registered on the three parents), of the one-expert convolution (input
//! and weight gradients from the same kernels with one expert), of the fused batch
//! norm (the per-channel sums, then the input's gradient) and of the residual block's
//! `relu(a + b)` (one launch, from the output).

use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{AutodiffBackend, Backend, TensorMetadata};
use burn::tensor::{DType, IntDType};

use crate::ops::{BatchNormOps, SparseMoeOps};

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
        let [_, _, height, width] = input.shape().dims::<4>();
        let [_, _, kernel, _] = weight.shape().dims::<4>();
        if let Some(node) = node_weight {
            let grad_weight =
                B::expert_conv_weight_grad(grad.clone(), input, stride, padding, kernel);
            grads.register::<B>(node.id, grad_weight);
        }
        if let Some(node) = node_input {
            let grad_input =
                B::expert_conv_input_grad(grad, weight, stride, padding, [height, width]);
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

    fn expert_conv_input_grad(
        grad_output: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        input_size: [usize; 2],
    ) -> FloatTensor<Self> {
        Self::from_inner(B::expert_conv_input_grad(
            grad_output.into_primitive(),
            weight.into_primitive(),
            stride,
            padding,
            input_size,
        ))
    }

    fn expert_conv_weight_grad(
        grad_output: FloatTensor<Self>,
        input: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        kernel: usize,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::expert_conv_weight_grad(
            grad_output.into_primitive(),
            input.into_primitive(),
            stride,
            padding,
            kernel,
        ))
    }
}

/// What the fused batch norm's backward needs: the input, the table of the statistics it was
/// normalised with, and whether those were the batch's own.
#[derive(Debug, Clone)]
struct NormState<B: Backend> {
    x: FloatTensor<B>,
    table: FloatTensor<B>,
    relu: bool,
    train: bool,
}

/// In train mode the input's gradient runs through the batch's statistics too, so it needs the
/// two per-channel sums whether or not gamma and beta take a gradient; in eval mode the
/// statistics are constants, and the sums run only when gamma or beta take a gradient (an
/// attack's frozen model takes none: one launch backward).
#[derive(Debug)]
struct BatchNormBackward;

impl<B: Backend + BatchNormOps> Backward<B, 3> for BatchNormBackward {
    type State = NormState<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let NormState {
            x,
            table,
            relu,
            train,
        } = ops.state;
        let sums = (train || node_gamma.is_some() || node_beta.is_some())
            .then(|| B::batch_norm_grad_sums(grad.clone(), x.clone(), table.clone(), relu));
        if let Some(node) = node_x {
            let grad_x = match &sums {
                Some((grad_gamma, grad_beta)) if train => B::batch_norm_grad_input(
                    grad,
                    x,
                    table,
                    grad_gamma.clone(),
                    grad_beta.clone(),
                    relu,
                ),
                _ => B::batch_norm_grad_input_eval(grad, x, table, relu),
            };
            grads.register::<B>(node.id, grad_x);
        }
        if let Some((grad_gamma, grad_beta)) = sums {
            if let Some(node) = node_gamma {
                grads.register::<B>(node.id, grad_gamma);
            }
            if let Some(node) = node_beta {
                grads.register::<B>(node.id, grad_beta);
            }
        }
    }
}

/// Record the fused batch norm's `output` of `x` on the autodiff graph (parents `nodes`: x,
/// gamma, beta).
fn track_norm<B: Backend + BatchNormOps, C: CheckpointStrategy>(
    nodes: [NodeGuard; 3],
    state: NormState<B>,
    output: FloatTensor<B>,
) -> FloatTensor<Autodiff<B, C>> {
    match BatchNormBackward
        .prepare::<C>(nodes)
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(state, output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// The residual block's end, `relu(a + b)`: both parents take the incoming gradient cut where the
/// output (the state) is zero.
#[derive(Debug)]
struct AddReluBackward;

impl<B: Backend + BatchNormOps> Backward<B, 2> for AddReluBackward {
    type State = FloatTensor<B>;

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let [node_a, node_b] = ops.parents;
        let grad = B::relu_grad(grads.consume::<B>(&ops.node), ops.state);
        match (node_a, node_b) {
            (Some(a), Some(b)) => {
                grads.register::<B>(a.id, grad.clone());
                grads.register::<B>(b.id, grad);
            }
            (Some(node), None) | (None, Some(node)) => grads.register::<B>(node.id, grad),
            (None, None) => {}
        }
    }
}

impl<B: Backend + BatchNormOps, C: CheckpointStrategy> BatchNormOps for Autodiff<B, C> {
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let nodes = [x.node(), gamma.node(), beta.node()];
        let x = x.into_primitive();
        let (table, mean, variance) = B::batch_norm_table_train(
            x.clone(),
            gamma.into_primitive(),
            beta.into_primitive(),
            epsilon,
        );
        let output = B::batch_norm_apply(x.clone(), table.clone(), relu);
        let state = NormState {
            x,
            table,
            relu,
            train: true,
        };
        let output = track_norm::<B, C>(nodes, state, output);
        (output, Self::from_inner(mean), Self::from_inner(variance))
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
        let nodes = [x.node(), gamma.node(), beta.node()];
        let x = x.into_primitive();
        let table = B::batch_norm_table_eval(
            gamma.into_primitive(),
            beta.into_primitive(),
            mean.into_primitive(),
            variance.into_primitive(),
            epsilon,
        );
        let output = B::batch_norm_apply(x.clone(), table.clone(), relu);
        let state = NormState {
            x,
            table,
            relu,
            train: false,
        };
        track_norm::<B, C>(nodes, state, output)
    }

    fn batch_norm_table_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (table, mean, variance) = B::batch_norm_table_train(
            x.into_primitive(),
            gamma.into_primitive(),
            beta.into_primitive(),
            epsilon,
        );
        (
            Self::from_inner(table),
            Self::from_inner(mean),
            Self::from_inner(variance),
        )
    }

    fn batch_norm_table_eval(
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::batch_norm_table_eval(
            gamma.into_primitive(),
            beta.into_primitive(),
            mean.into_primitive(),
            variance.into_primitive(),
            epsilon,
        ))
    }

    fn batch_norm_apply(
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::batch_norm_apply(
            x.into_primitive(),
            table.into_primitive(),
            relu,
        ))
    }

    fn batch_norm_grad_sums(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (grad_gamma, grad_beta) = B::batch_norm_grad_sums(
            grad.into_primitive(),
            x.into_primitive(),
            table.into_primitive(),
            relu,
        );
        (Self::from_inner(grad_gamma), Self::from_inner(grad_beta))
    }

    fn batch_norm_grad_input(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        grad_gamma: FloatTensor<Self>,
        grad_beta: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::batch_norm_grad_input(
            grad.into_primitive(),
            x.into_primitive(),
            table.into_primitive(),
            grad_gamma.into_primitive(),
            grad_beta.into_primitive(),
            relu,
        ))
    }

    fn batch_norm_grad_input_eval(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::batch_norm_grad_input_eval(
            grad.into_primitive(),
            x.into_primitive(),
            table.into_primitive(),
            relu,
        ))
    }
    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let nodes = [a.node(), b.node()];
        let output = B::add_relu(a.into_primitive(), b.into_primitive());
        match AddReluBackward
            .prepare::<C>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(output.clone(), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        }
    }

    fn relu_grad(grad: FloatTensor<Self>, output: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::relu_grad(grad.into_primitive(), output.into_primitive()))
    }
}
