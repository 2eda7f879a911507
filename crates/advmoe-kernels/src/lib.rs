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
//! software adapters); [`Variant`] says which, chosen by adapter. On Burn's CPU backend
//! (natively) [`split::moe_conv`] splits the batch by expert and runs one dense convolution per
//! expert, reading the routes on the host (a copy there). Everywhere else, and as the oracle of
//! the parity tests, [`reference::moe_conv`] runs all experts and selects.
//!
//! This crate must not read GPU data back, nor loop over experts on the host for a GPU.

mod autodiff;
mod cube;
mod ops;
pub mod parity;
pub mod reference;
pub mod shaders;
pub mod split;

use std::cell::Cell;

use burn::backend::{Dispatch, DispatchDevice};
use burn::tensor::{Device, Int, Tensor};

pub use ops::SparseMoeOps;

pub use shaders::Variant;

thread_local! {
    static SPARSE_ENABLED: Cell<bool> = const { Cell::new(true) };
    static VARIANT: Cell<Option<Variant>> = const { Cell::new(None) };
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
/// default); returns the previous setting. For benchmarks and tests that compare the two paths;
/// a graph already built keeps the path it was built with.
pub fn set_sparse_execution(enabled: bool) -> bool {
    SPARSE_ENABLED.with(|cell| cell.replace(enabled))
}

/// Whether MoE convs built on this thread may use the sparse kernels.
pub fn sparse_execution_enabled() -> bool {
    SPARSE_ENABLED.with(Cell::get)
}

/// Whether the sparse kernels run on `device`: Burn's CubeCL (`wgpu`) devices, with or without
/// autodiff.
pub fn sparse_supported(device: &Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Cube(_)
    )
}

/// Whether [`split::moe_conv`] runs on this device: Burn's CPU backend, natively.
pub fn split_supported(device: &Device) -> bool {
    !cfg!(target_arch = "wasm32")
        && !matches!(
            device.clone().inner().as_dispatch(),
            DispatchDevice::Cube(_)
        )
}

/// The MoE convolution on the fastest path the device has: sparse kernels on `wgpu` (unless
/// turned off with [`set_sparse_execution`]), the reference elsewhere. See
/// [`reference::moe_conv`] for the contract on `gate`.
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
    } else if sparse_execution_enabled() && split_supported(&input.device()) {
        split::moe_conv(input, weight, gate, experts, stride, padding)
    } else {
        reference::moe_conv(input, weight, gate, stride, padding)
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
