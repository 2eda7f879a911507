//! The step-wise training engine of AdvMoE Lab (no UI).
//!
//! A [`Run`] is created from a [`RunConfig`] and advanced one step (or one chunk) at a time by
//! whoever drives it: the CLI's loop, a UI worker thread, or a browser task. Training losses stay
//! on the device until [`Run::drain_losses`] reads them back in one go, so the hot loop never
//! waits on the GPU; every drained loss is checked for NaN/Inf. Training methods are pluggable
//! ([`method::Method`]); optimisers ([`optim`]) and the learning-rate schedule are the project's
//! own so that a run checkpoint holds their exact state.

pub mod attack;
pub mod compare;
pub mod device;
pub mod eval;
pub mod inspect;
pub mod loss;
pub mod method;
pub mod optim;
pub mod robust;
pub mod run;
pub mod tensors;

/// Drive one of the engine's async functions to completion on this thread (native only).
#[cfg(not(target_arch = "wasm32"))]
pub use advmoe_model::readback::block_on;
pub use device::{DeviceChoice, make_device};
pub use eval::{EvalOptions, evaluate};
pub use inspect::{ImageAttack, Prediction, attack_image, predict};
pub use robust::{NamedAttack, RobustOptions, RobustReport, evaluate_robust};
pub use run::{
    EngineError, Progress, Run, RunConfig, RunState, load_model_bytes, load_model_dir,
    load_model_path,
};
