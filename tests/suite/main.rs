//! Cross-crate tests of AdvMoE Lab, linked as one binary (one link of burn + wgpu).
//!
//! GPU tests run on whatever adapter wgpu finds; on CI machines that is Mesa's lavapipe
//! (software Vulkan). They fail, never skip, when no adapter exists.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail loudly, like the tests"
)]

mod adversarial;
mod app;
mod attacks;
mod checkpoint;
mod common;
mod moe_conv;
mod sparse;
mod training;
