//! The backend extensions: the sparse MoE convolution and the fused batch norm as operations of
//! a Burn backend.
//!
//! Implemented for the CubeCL backend (Burn's `wgpu` devices; [`crate::cube`]), for Burn's CPU
//! backend (`flex`; [`crate::cpu`], the batch norm in `norm.rs`) and for `Autodiff` over either
//! ([`crate::autodiff`]). Other
//! backends are not listed: callers check [`crate::sparse_supported`] first and use
//! [`crate::reference`] there. With this crate's `fusion` feature (Burn's kernel fusion, which
//! wraps the CubeCL backend in `Fusion`), each operation is also registered with the fusion
//! stream as an opaque custom operation: its output shapes (the `#[fusion]` lines) are known
//! without running it, the element-wise work around it fuses, and the kernel runs when the
//! stream reaches it.

use burn::backend::Backend;
use burn::backend::backend_extension;
#[cfg(feature = "fusion")]
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::{FloatTensor, IntTensor};
#[cfg(feature = "fusion")]
use burn::tensor::Shape;

/// Sparse MoE convolution with top-1 routing. Shapes:
/// - `input [batch, c_in, h_in, w_in]`
/// - `weight [num_experts * c_out, c_in, kernel, kernel]`, expert `e` owning rows
///   `e * c_out .. (e + 1) * c_out`
/// - `gate [batch, num_experts]`, `experts [batch]` (the selected expert of each sample)
/// - output `[batch, c_out, h_out, w_out]` with
///   `h_out = (h_in + 2 * padding - kernel) / stride + 1`
#[backend_extension(Cube, Flex, Autodiff, Fusion: cfg(feature = "fusion"))]
pub trait SparseMoeOps: Backend {
    /// `output[b] = gate[b, experts[b]] * conv(input[b], weight of expert experts[b])`.
    /// Differentiable (on autodiff devices) in `input`, `weight` and `gate`; the gate's gradient
    /// is zero off the selected expert.
    #[fusion(dtype = input, shape = conv_output(input, weight, weight[0] / gate[1], *stride, *padding))]
    fn sparse_moe_conv(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// The gated expert convolution without a backward, with its ungated output beside it:
    /// `(output, z)`, `output[b] = gate[b, experts[b]] * z[b]` with `z[b] = conv(input[b],
    /// weight of expert experts[b])`, in one pass (the gate is read where the output is
    /// written). The gate's gradient needs `z`; without it, [`Self::sparse_moe_conv`] of a
    /// backend without autodiff is the same pass. The number of experts is the gate's columns.
    #[fusion(meta = with_ungated_meta)]
    fn sparse_moe_conv_with_ungated(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradient of the gated convolution with respect to its input,
    /// `[batch, c_in, height, width]` for `input_size = [height, width]`: each sample's output
    /// gradient through its expert's filters, times `gate[b, experts[b]]` (the number of experts
    /// is the gate's columns).
    #[fusion(dtype = grad_output, shape = Shape::from([grad_output[0], weight[1], input_size[0], input_size[1]]))]
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
    #[fusion(dtype = grad_output, shape = Shape::from([gate[1] * grad_output[1], input[1], *kernel, *kernel]))]
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
    #[fusion(dtype = grad_output, shape = Shape::from([grad_output[0], *num_experts]))]
    fn sparse_moe_gate_grad(
        grad_output: FloatTensor<Self>,
        z: FloatTensor<Self>,
        experts: IntTensor<Self>,
        num_experts: usize,
    ) -> FloatTensor<Self>;

    /// `conv(input[b], weight)` for every sample: a plain convolution (one expert, no gate, no
    /// bias), differentiable in `input` and `weight` on autodiff devices: the MoE convolution's
    /// kernels with one expert and a gate of 1 (on `wgpu` the model calls it unless
    /// [`crate::set_own_gpu_conv`] turned it off, see [`crate::conv2d`]).
    #[fusion(dtype = input, shape = conv_output(input, weight, weight[0], *stride, *padding))]
    fn expert_conv(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self>;

    /// Gradient of [`Self::expert_conv`] with respect to its input,
    /// `[batch, c_in, height, width]` for `input_size = [height, width]`.
    #[fusion(dtype = grad_output, shape = Shape::from([grad_output[0], weight[1], input_size[0], input_size[1]]))]
    fn expert_conv_input_grad(
        grad_output: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        input_size: [usize; 2],
    ) -> FloatTensor<Self>;

    /// Gradient of [`Self::expert_conv`] with respect to its weight, `[c_out, c_in, kernel, kernel]`.
    #[fusion(dtype = grad_output, shape = Shape::from([grad_output[1], input[1], *kernel, *kernel]))]
    fn expert_conv_weight_grad(
        grad_output: FloatTensor<Self>,
        input: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        kernel: usize,
    ) -> FloatTensor<Self>;
}

/// Batch norm over the channels of `[batch, channels, h, w]` (statistics over the batch and the
/// pixels), with the ReLU that follows it in the models fused in when `relu` (and a residual
/// block's sum and ReLU after its last batch norm, [`Self::add_relu`]): two launches
/// forward and two backward on `wgpu` (`shaders/batch_norm_*.wgsl`), where the same work as
/// tensor operations launches dozens of element-wise kernels and reductions.
///
/// The `fused_*` methods are what callers use; the rest are their parts, for the autodiff
/// backward. The parts pass a per-channel table `[4, channels]` between them: the mean, the
/// inverse standard deviation `1 / sqrt(var + epsilon)`, the scale `gamma / sqrt(var + epsilon)`
/// and `beta` (`ROW_*` in `shaders/moe_conv_common.wgsl`). The statistics passed to eval mode
/// (the running ones) take no gradient; the model's are parameters without one.
#[backend_extension(Cube, Flex, Autodiff, Fusion: cfg(feature = "fusion"))]
pub trait BatchNormOps: Backend {
    /// Train mode: `(output, mean, variance)`, the batch's mean and biased variance
    /// `[channels]`. Differentiable in `x`, `gamma` and `beta`, through the statistics too; the
    /// statistics returned take no gradient.
    #[fusion(meta = train_meta)]
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Eval mode with the given (running) statistics. Differentiable in `x`, `gamma` and `beta`.
    #[fusion(dtype = x, shape = x.clone())]
    fn fused_batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// The batch's statistics and table: `(table, mean, variance)`.
    #[fusion(meta = table_train_meta)]
    fn batch_norm_table_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// The table of given statistics.
    #[fusion(dtype = gamma, shape = Shape::from([4, gamma[0]]))]
    fn batch_norm_table_eval(
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;

    /// `(x - mean) * scale + beta` per channel, then the ReLU when `relu`.
    #[fusion(dtype = x, shape = x.clone())]
    fn batch_norm_apply(
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// The gradients of gamma and beta, `(grad_gamma, grad_beta)`: per channel, the sums of the
    /// output's gradient `g` (zero where the ReLU cut the output) times the normalised input, and
    /// of `g`.
    #[fusion(meta = sums_meta)]
    fn batch_norm_grad_sums(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The input's gradient in train mode, from the two sums of
    /// [`Self::batch_norm_grad_sums`].
    #[fusion(dtype = grad, shape = grad.clone())]
    fn batch_norm_grad_input(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        grad_gamma: FloatTensor<Self>,
        grad_beta: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// The input's gradient in eval mode: `scale * g`.
    #[fusion(dtype = grad, shape = grad.clone())]
    fn batch_norm_grad_input_eval(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self>;

    /// `relu(a + b)`: the end of a residual block (its last batch norm's output plus the
    /// shortcut, then the ReLU) in one pass. Differentiable in both; a NaN stays NaN.
    #[fusion(dtype = a, shape = a.clone())]
    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;

    /// The gradient through a ReLU from the ReLU's output: `grad`, zero where `output <= 0`
    /// (the backward of [`Self::add_relu`], as Burn's `relu_backward`).
    #[fusion(dtype = grad, shape = grad.clone())]
    fn relu_grad(grad: FloatTensor<Self>, output: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Adam's scalars for one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamHyper {
    /// Learning rate.
    pub lr: f64,
    /// Weight decay, added to the gradient times the parameter when above zero.
    pub weight_decay: f64,
    /// The first moment's decay.
    pub beta1: f64,
    /// The second moment's decay.
    pub beta2: f64,
    /// Added to the second moment's square root.
    pub eps: f64,
    /// The step, counted from 1 (the bias corrections `1 - beta^step`).
    pub step: i32,
}

/// The per-step updates that training and attacks make outside the autodiff graph, one launch
/// each on `wgpu` (`shaders/sgd_step.wgsl`, `adam_step.wgsl`, `running_stats.wgsl`,
/// `linf_step.wgsl`) where tensor operations launch six (SGD), fourteen (Adam), seven (running
/// statistics) and seven (an L∞ attack step) element-wise kernels. Every tensor is flat (`[count]`) and on a device without autodiff; the CPU computes
/// the same with tensor operations ([`crate::reference`]), so only the CubeCL backend
/// implements this.
#[backend_extension(Cube, Fusion: cfg(feature = "fusion"))]
pub trait UpdateOps: Backend {
    /// SGD with momentum and weight decay: `(param', buf')`. `buf` is ignored when `has_buf` is
    /// false (the step starts the momentum buffer); it must then still be a tensor (any).
    #[fusion(meta = pair_meta)]
    fn sgd_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        buf: FloatTensor<Self>,
        has_buf: bool,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Adam: `(param', m', v')`. `m` and `v` are ignored when `has_state` is false (the step
    /// starts the moments at zero); they must then still be tensors (any).
    #[fusion(meta = triple_meta)]
    fn adam_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        has_state: bool,
        hyper: AdamHyper,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// A batch norm's running statistics after one train-mode pass: `(mean', var')`, with the
    /// batch's biased variance made unbiased by the factor `unbiased`.
    #[fusion(meta = running_meta)]
    fn running_stats_step(
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        batch_mean: FloatTensor<Self>,
        batch_var: FloatTensor<Self>,
        momentum: f64,
        unbiased: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
    /// One step of an L∞ attack from `x` along the sign of `grad` by `step_size`, projected onto
    /// the ball of `radius` around `center` and into `[0, 1]`.
    #[fusion(dtype = x, shape = x.clone())]
    fn linf_step(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        center: FloatTensor<Self>,
        step_size: f64,
        radius: f64,
    ) -> FloatTensor<Self>;
}

/// [`BatchNormOps::fused_batch_norm_train`]'s outputs: the input's shape, then two of
/// `[channels]`.
#[cfg(feature = "fusion")]
fn train_meta(
    x: &TensorSpec,
    _gamma: &TensorSpec,
    _beta: &TensorSpec,
    _epsilon: &f64,
    _relu: &bool,
) -> (TensorSpec, TensorSpec, TensorSpec) {
    let stat = TensorSpec::new(Shape::from([x.shape[1]]), x.dtype);
    (x.clone(), stat.clone(), stat)
}

/// [`UpdateOps::sgd_step`]'s outputs, two of the parameter's shape.
#[cfg(feature = "fusion")]
fn pair_meta(
    param: &TensorSpec,
    _grad: &TensorSpec,
    _buf: &TensorSpec,
    _has_buf: &bool,
    _lr: &f64,
    _momentum: &f64,
    _weight_decay: &f64,
) -> (TensorSpec, TensorSpec) {
    (param.clone(), param.clone())
}

/// [`UpdateOps::adam_step`]'s outputs, three of the parameter's shape.
#[cfg(feature = "fusion")]
fn triple_meta(
    param: &TensorSpec,
    _grad: &TensorSpec,
    _m: &TensorSpec,
    _v: &TensorSpec,
    _has_state: &bool,
    _hyper: &AdamHyper,
) -> (TensorSpec, TensorSpec, TensorSpec) {
    (param.clone(), param.clone(), param.clone())
}

/// [`UpdateOps::running_stats_step`]'s outputs, two of the statistics' shape.
#[cfg(feature = "fusion")]
fn running_meta(
    running_mean: &TensorSpec,
    _running_var: &TensorSpec,
    _batch_mean: &TensorSpec,
    _batch_var: &TensorSpec,
    _momentum: &f64,
    _unbiased: &f64,
) -> (TensorSpec, TensorSpec) {
    (running_mean.clone(), running_mean.clone())
}

/// [`BatchNormOps::batch_norm_table_train`]'s outputs: the table, then two of `[channels]`.
#[cfg(feature = "fusion")]
fn table_train_meta(
    x: &TensorSpec,
    _gamma: &TensorSpec,
    _beta: &TensorSpec,
    _epsilon: &f64,
) -> (TensorSpec, TensorSpec, TensorSpec) {
    let stat = TensorSpec::new(Shape::from([x.shape[1]]), x.dtype);
    (
        TensorSpec::new(Shape::from([4, x.shape[1]]), x.dtype),
        stat.clone(),
        stat,
    )
}

/// [`BatchNormOps::batch_norm_grad_sums`]'s outputs, two of `[channels]`.
#[cfg(feature = "fusion")]
fn sums_meta(
    grad: &TensorSpec,
    _x: &TensorSpec,
    _table: &TensorSpec,
    _relu: &bool,
) -> (TensorSpec, TensorSpec) {
    let stat = TensorSpec::new(Shape::from([grad.shape[1]]), grad.dtype);
    (stat.clone(), stat)
}

/// The output shape of a convolution of `input` (`[batch, c_in, height, width]`) by `c_out`
/// filters of `weight`'s kernel size.
#[cfg(feature = "fusion")]
fn conv_output(
    input: &Shape,
    weight: &Shape,
    c_out: usize,
    stride: usize,
    padding: usize,
) -> Shape {
    let out = |size: usize| (size + 2 * padding - weight[2]) / stride + 1;
    Shape::from([input[0], c_out, out(input[2]), out(input[3])])
}

/// [`SparseMoeOps::sparse_moe_conv_with_ungated`]'s two outputs, both of the gated output's shape.
#[cfg(feature = "fusion")]
fn with_ungated_meta(
    input: &TensorSpec,
    weight: &TensorSpec,
    gate: &TensorSpec,
    _experts: &TensorSpec,
    stride: &usize,
    padding: &usize,
) -> (TensorSpec, TensorSpec) {
    let shape = conv_output(
        &input.shape,
        &weight.shape,
        weight.shape[0] / gate.shape[1],
        *stride,
        *padding,
    );
    let spec = TensorSpec::new(shape, input.dtype);
    (spec.clone(), spec)
}
