//! Sparse execution of the MoE convolution.
//!
//! An MoE conv whose samples each pick one of `N` experts needs only one expert's filters per
//! sample. On Burn's `wgpu` devices [`moe_conv`] runs hand-written WGSL compute shaders
//! (`shaders/*.wgsl`, named only in [`shaders`]) that read each sample's expert index from a
//! GPU buffer and compute that expert alone: forward, input gradient, weight gradient (each
//! sample adds into its own expert's slice) and the straight-through router gradient. They are
//! a Burn backend extension ([`SparseMoeOps`]) with a hand-written autodiff backward, so
//! training and attacks use them end to end. Each matrix-product shader comes in a tiled
//! variant (workgroup-memory tiles, for GPUs) and a direct one (no workgroup memory, for
//! software adapters); [`Variant`] says which, chosen by adapter. On Burn's CPU backend (`flex`)
//! the same extension runs [`cpu`]: im2col and one matrix product per image through its own
//! expert, the images spread over the cores; [`conv2d`] runs the model's plain convolutions
//! through those kernels too, because Burn's own CPU conv2d is several times slower at these
//! shapes, and on `wgpu` through the WGSL kernels with one expert, for the same reason there
//! ([`set_own_gpu_conv`]). Everywhere else, and as the oracle of the parity tests,
//! [`reference::moe_conv`] runs all experts and selects.
//!
//! The models' batch norms, with the ReLU that follows them, are a second extension
//! ([`BatchNormOps`]: [`fused_batch_norm_train`], [`fused_batch_norm_eval`]): on `wgpu` WGSL
//! kernels that launch two kernels forward and one or two backward where tensor operations
//! launch dozens, on the CPU Burn's own operations.
//!
//! The updates of a training step and an attack outside the autodiff graph are a third
//! ([`UpdateOps`]: [`sgd_step`], [`adam_step`], [`running_stats_step`], [`linf_step`]): one
//! launch per parameter, batch norm or attack step on `wgpu`, [`reference`]'s tensor operations
//! elsewhere.
//!
//! This crate must not read GPU data back, nor loop over experts on the host for a GPU.

mod autodiff;
pub mod cpu;
mod cube;
mod norm;
mod ops;
pub mod parity;
pub mod reference;
pub mod shaders;

use std::cell::Cell;

use burn::backend::{Dispatch, DispatchDevice};
use burn::tensor::module::conv2d as burn_conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Int, Tensor};

pub use ops::{AdamHyper, BatchNormOps, SparseMoeOps, UpdateOps};

pub use shaders::Variant;

thread_local! {
    static SPARSE_ENABLED: Cell<bool> = const { Cell::new(true) };
    static VARIANT: Cell<Option<Variant>> = const { Cell::new(None) };
    static OWN_GPU_CONV: Cell<bool> = const { Cell::new(true) };
    static OWN_ELEMENTWISE: Cell<bool> = const { Cell::new(true) };
}

/// Run this thread's element-wise updates on `wgpu` ([`sgd_step`], [`adam_step`],
/// [`running_stats_step`], [`linf_step`], and the models' residual [`add_relu`]) on our kernels,
/// one launch each (on by default, in the browser build too), or, turned off, as [`reference`]'s
/// tensor operations (Burn's element-wise kernels; the same results bit for bit); returns the
/// previous setting. A first measurement in headless Chromium had the page slower with them (0.48
/// against 0.74 steps/s), which ten later runs of five builds, alternating, did not reproduce
/// (bench/README.md). The benchmark's `bench steps --elementwise burn` turns it off so that
/// `bench/gpu.sh` can time both.
pub fn set_own_elementwise(enabled: bool) -> bool {
    OWN_ELEMENTWISE.with(|cell| cell.replace(enabled))
}

/// Whether this thread's element-wise updates on `wgpu` run on our kernels.
pub fn own_elementwise() -> bool {
    OWN_ELEMENTWISE.with(Cell::get)
}

/// Whether `device` runs the element-wise kernels: a `wgpu` device, with them on.
fn elementwise_kernels(device: &Device) -> bool {
    own_elementwise() && on_wgpu(device)
}

/// Run the plain convolutions ([`conv2d`]) built on this thread on `wgpu` devices through the
/// sparse kernels with one expert (on by default) or, turned off, through Burn's conv2d; returns
/// the previous setting. On by default because on an NVIDIA H200 ours took 0.26 of the time of
/// Burn's default conv2d (forward and backward, geometric mean over 16 shapes) and 0.66 of its
/// autotuned one, and on lavapipe the two are level; Burn's direct weight gradient sums a whole
/// batch's planes in each GPU thread. The benchmark's `bench steps --gpu-conv burn` turns it off
/// so that `bench/gpu.sh` can time both.
pub fn set_own_gpu_conv(enabled: bool) -> bool {
    OWN_GPU_CONV.with(|cell| cell.replace(enabled))
}

/// Whether this thread's plain convolutions on `wgpu` run through the sparse kernels.
pub fn own_gpu_conv() -> bool {
    OWN_GPU_CONV.with(Cell::get)
}

/// Force the kernel variant for launches from this thread (`None`: by adapter, the default);
/// returns the previous setting. For the parity tests, which check both variants on one
/// adapter, and the benchmark's `--variant`.
pub fn set_kernel_variant(variant: Option<Variant>) -> Option<Variant> {
    VARIANT.with(|cell| cell.replace(variant))
}

/// The forced kernel variant of this thread, if any.
pub fn kernel_variant() -> Option<Variant> {
    VARIANT.with(Cell::get)
}

/// Turn sparse execution on or off for MoE convs built on this thread from now on (on by
/// default; off, the CPU's plain convolutions also go back to Burn's conv2d); returns the
/// previous setting. For benchmarks and tests that compare the two paths; a graph already built
/// keeps the path it was built with.
pub fn set_sparse_execution(enabled: bool) -> bool {
    SPARSE_ENABLED.with(|cell| cell.replace(enabled))
}

/// Whether MoE convs built on this thread may use the sparse kernels.
pub fn sparse_execution_enabled() -> bool {
    SPARSE_ENABLED.with(Cell::get)
}

/// Whether the sparse kernels run on `device`: the WGSL kernels on Burn's CubeCL (`wgpu`)
/// devices and [`cpu`] on Burn's CPU backend, with or without autodiff.
pub fn sparse_supported(device: &Device) -> bool {
    on_wgpu(device) || on_cpu(device)
}

/// Whether `device` is one of Burn's CubeCL (`wgpu`) devices, with or without autodiff.
pub fn on_wgpu(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Cube(_)
    )
}

/// Whether `device` is Burn's CPU backend (`flex`), with or without autodiff.
pub fn on_cpu(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Flex(_)
    )
}

/// The MoE convolution on the fastest path the device has: the sparse kernels (unless turned
/// off with [`set_sparse_execution`]), the reference elsewhere. See [`reference::moe_conv`] for
/// the contract on `gate`.
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
    if sparse_execution_enabled() && sparse_supported(&input.device()) {
        sparse_moe_conv(input, weight, gate, experts, stride, padding)
    } else {
        reference::moe_conv(input, weight, gate, stride, padding)
    }
}

/// A plain convolution (no bias, equal padding on every side): [`cpu`]'s kernels on Burn's CPU
/// backend and the WGSL kernels with one expert on `wgpu` (unless sparse execution is turned
/// off, or on `wgpu` [`set_own_gpu_conv`]), Burn's conv2d elsewhere.
///
/// # Shapes
/// - input `[batch, c_in, h, w]`, weight `[c_out, c_in, k, k]`
/// - output `[batch, c_out, h_out, w_out]`
pub fn conv2d(input: Tensor<4>, weight: Tensor<4>, stride: usize, padding: usize) -> Tensor<4> {
    let device = input.device();
    if sparse_execution_enabled() && (on_cpu(&device) || (own_gpu_conv() && on_wgpu(&device))) {
        Tensor::from_dispatch(Dispatch::expert_conv(
            input.into_dispatch(),
            weight.into_dispatch(),
            stride,
            padding,
        ))
    } else {
        let options = ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1);
        burn_conv2d(input, weight, None, options)
    }
}

/// The sparse MoE convolution. Only on devices where [`sparse_supported`] holds (the backend
/// extension panics elsewhere).
///
/// # Shapes
/// As [`moe_conv`].
pub fn sparse_moe_conv(
    input: Tensor<4>,
    weight: Tensor<4>,
    gate: Tensor<2>,
    experts: Tensor<1, Int>,
    stride: usize,
    padding: usize,
) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::sparse_moe_conv(
        input.into_dispatch(),
        weight.into_dispatch(),
        gate.into_dispatch(),
        experts.into_dispatch(),
        stride,
        padding,
    ))
}

/// Train-mode batch norm as one fused operation (then the ReLU, when `relu`): `(output, mean,
/// variance)`, the batch's mean and biased variance `[channels]` without gradient. On `wgpu`
/// two launches forward and two backward (`shaders/batch_norm_*.wgsl`); on the CPU Burn's
/// `batch_norm_train`. Only on devices where [`sparse_supported`] holds.
///
/// # Shapes
/// - x and output `[batch, channels, h, w]`; gamma, beta and the statistics `[channels]`
pub fn fused_batch_norm_train(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    epsilon: f64,
    relu: bool,
) -> (Tensor<4>, Tensor<1>, Tensor<1>) {
    let (output, mean, variance) = Dispatch::fused_batch_norm_train(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        epsilon,
        relu,
    );
    (
        Tensor::from_dispatch(output),
        Tensor::from_dispatch(mean),
        Tensor::from_dispatch(variance),
    )
}

/// Eval-mode batch norm with the given statistics (which take no gradient) as one fused
/// operation, then the ReLU when `relu`: on `wgpu` two launches forward (the table, then the
/// output) and one backward when gamma and beta take no gradient, as in an attack. Only on
/// devices where [`sparse_supported`] holds.
///
/// # Shapes
/// As [`fused_batch_norm_train`].
pub fn fused_batch_norm_eval(
    x: Tensor<4>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
    mean: Tensor<1>,
    variance: Tensor<1>,
    epsilon: f64,
    relu: bool,
) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::fused_batch_norm_eval(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        mean.into_dispatch(),
        variance.into_dispatch(),
        epsilon,
        relu,
    ))
}

/// `relu(a + b)`, the end of a residual block, as one fused operation: on `wgpu` one launch
/// forward and one backward (`shaders/add_relu.wgsl`, `relu_grad.wgsl`), where tensor
/// operations launch three and two; on the CPU Burn's operations. Only on devices where
/// [`sparse_supported`] holds.
///
/// # Shapes
/// - a, b and the output `[batch, channels, h, w]`
pub fn add_relu(a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::add_relu(a.into_dispatch(), b.into_dispatch()))
}

/// One step of an L∞ attack (FGSM, PGD): `x + step_size * sign(grad)`, projected onto the ball
/// of `radius` around `center` and into `[0, 1]`; the result is detached. On `wgpu` one launch
/// ([`UpdateOps::linf_step`]); elsewhere [`reference::linf_step`].
///
/// # Shapes
/// - every tensor `[batch, channels, h, w]`
pub fn linf_step(
    x: Tensor<4>,
    grad: Tensor<4>,
    center: Tensor<4>,
    step_size: f64,
    radius: f64,
) -> Tensor<4> {
    if !elementwise_kernels(&x.device()) {
        return reference::linf_step(x, grad, center, step_size, radius).detach();
    }
    let autodiff = x.is_autodiff();
    let out = Dispatch::linf_step(
        x.inner().into_dispatch(),
        grad.inner().into_dispatch(),
        center.inner().into_dispatch(),
        step_size,
        radius,
    );
    lift(out, autodiff)
}

/// `t`, moved back onto the autodiff device when `autodiff` (the update operations run on the
/// inner device).
fn lift<const D: usize>(t: burn::backend::DispatchTensor, autodiff: bool) -> Tensor<D> {
    let t = Tensor::from_dispatch(t);
    if autodiff { Tensor::from_inner(t) } else { t }
}

/// One SGD step of one parameter (momentum without dampening, weight decay added to the
/// gradient, as PyTorch's): `(param', buf')`; a `buf` of `None` starts the momentum buffer. On
/// `wgpu` one launch ([`UpdateOps::sgd_step`]); elsewhere [`reference::sgd_step`].
///
/// # Shapes
/// - every tensor `[count]`
pub fn sgd_step(
    param: Tensor<1>,
    grad: Tensor<1>,
    buf: Option<Tensor<1>>,
    lr: f64,
    momentum: f64,
    weight_decay: f64,
) -> (Tensor<1>, Tensor<1>) {
    if !elementwise_kernels(&param.device()) {
        return reference::sgd_step(param, grad, buf, lr, momentum, weight_decay);
    }
    let autodiff = param.is_autodiff();
    let has_buf = buf.is_some();
    let buf = buf.unwrap_or_else(|| grad.clone());
    let (param, buf) = Dispatch::sgd_step(
        param.inner().into_dispatch(),
        grad.inner().into_dispatch(),
        buf.inner().into_dispatch(),
        has_buf,
        lr,
        momentum,
        weight_decay,
    );
    (lift(param, autodiff), lift(buf, autodiff))
}

/// One Adam step of one parameter: `(param', m', v')`; moments of `None` start at zero. On
/// `wgpu` one launch ([`UpdateOps::adam_step`]); elsewhere [`reference::adam_step`].
///
/// # Shapes
/// - every tensor `[count]`
pub fn adam_step(
    param: Tensor<1>,
    grad: Tensor<1>,
    moments: Option<(Tensor<1>, Tensor<1>)>,
    hyper: AdamHyper,
) -> (Tensor<1>, Tensor<1>, Tensor<1>) {
    if !elementwise_kernels(&param.device()) {
        return reference::adam_step(param, grad, moments, hyper);
    }
    let autodiff = param.is_autodiff();
    let has_state = moments.is_some();
    let (m, v) = moments.unwrap_or_else(|| (grad.clone(), grad.clone()));
    let (param, m, v) = Dispatch::adam_step(
        param.inner().into_dispatch(),
        grad.inner().into_dispatch(),
        m.inner().into_dispatch(),
        v.inner().into_dispatch(),
        has_state,
        hyper,
    );
    (lift(param, autodiff), lift(m, autodiff), lift(v, autodiff))
}

/// A batch norm's running statistics after one train-mode pass: `(mean', var')`, with the batch's
/// biased variance times `unbiased` (n / (n - 1)) and weight `momentum`. On `wgpu` one launch
/// for both ([`UpdateOps::running_stats_step`]); elsewhere [`reference::running_stats_step`].
///
/// # Shapes
/// - every tensor `[channels]`
pub fn running_stats_step(
    running_mean: Tensor<1>,
    running_var: Tensor<1>,
    batch_mean: Tensor<1>,
    batch_var: Tensor<1>,
    momentum: f64,
    unbiased: f64,
) -> (Tensor<1>, Tensor<1>) {
    if !elementwise_kernels(&running_mean.device()) {
        return reference::running_stats_step(
            running_mean,
            running_var,
            batch_mean,
            batch_var,
            momentum,
            unbiased,
        );
    }
    let autodiff = running_mean.is_autodiff();
    let (mean, var) = Dispatch::running_stats_step(
        running_mean.inner().into_dispatch(),
        running_var.inner().into_dispatch(),
        batch_mean.inner().into_dispatch(),
        batch_var.inner().into_dispatch(),
        momentum,
        unbiased,
    );
    (lift(mean, autodiff), lift(var, autodiff))
}
