//! MoE-CNN models on Burn.
//!
//! The MoE convolution with top-1 routing and the straight-through router gradient
//! ([`moe::MoeConv2d`]), both router kinds, ResNet and VGG backbones ([`MoeNet`]), the analytic MAC
//! counter (re-exported from `advmoe-core`), and safetensors checkpoints ([`checkpoint`]).
//!
//! Models are generic over the runtime device: Burn's `flex` CPU backend or its `wgpu` GPU
//! backend (`Device::wgpu`). This crate never reads GPU data back except in the explicit
//! checkpoint and inspection helpers.

pub mod checkpoint;
pub mod layers;
pub mod moe;
pub mod net;
pub mod readback;
pub mod router;

pub use advmoe_core::{MacReport, ModelSpec, count_macs};
pub use checkpoint::{CheckpointError, load_model, model_from_bytes, save_model};
pub use moe::{
    LayerRoute, MoeConv2d, RouteError, check_routes, fixed_route, gate_from_scores, hard_route,
    one_hot_rows,
};
pub use net::{BnUpdate, Mode, MoeNet, Output, Routing, is_router_path};
