//! The step-wise training engine of AdvMoE Lab (no UI).
//!
//! A [`Run`] is built from a [`RunConfig`] ([`Run::from_config`]) or a checkpoint
//! ([`Run::from_checkpoint`]) and driven to each evaluation with [`Run::advance`] by whoever
//! drives it: the CLI, a UI worker thread, a browser task, the comparison, the benchmark, the
//! tests. Training losses stay on the device until the advance ends and reads them back in one
//! go, so the hot loop never waits on the GPU; every loss read is checked for NaN/Inf. Training methods are pluggable
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
pub mod paired;
pub mod robust;
pub mod run;
pub mod seeds;
pub mod tensors;

/// Drive one of the engine's async functions to completion on this thread (native only).
#[cfg(not(target_arch = "wasm32"))]
pub use advmoe_model::readback::block_on;
pub use device::{DeviceChoice, make_device};
pub use eval::{EvalOptions, evaluate};
pub use inspect::{ImageAttack, Prediction, attack_image, predict};
pub use robust::{
    EvalProgress, Evaluation, LadderOptions, NamedAttack, RobustOptions, RobustReport, RouterRung,
    evaluate_robust, evaluate_robust_from, router_ladder,
};
pub use run::{
    Advance, COMMIT_FILE, CheckpointSource, DataLoad, EngineError, NamedFiles, Progress, Recovery,
    Run, RunConfig, RunState, ShapeMismatch, load_data, load_model_bytes, load_model_dir,
    load_model_path,
};
