//! Shared vocabulary of AdvMoE Lab.
//!
//! Validated specifications (model, data, training), the analytic MAC counter, the metrics that
//! engines report and front-ends draw, and the project's seeded RNG. This crate must not depend on
//! burn, egui or wgpu: it is what every other crate and every front-end can agree on cheaply.

pub mod macs;
pub mod metrics;
pub mod rng;
pub mod spec;

pub use macs::{MacReport, count_macs};
pub use metrics::{EvalReport, StepMetrics};
pub use rng::Rng;
pub use spec::{
    Arch, AttackKind, AttackLoss, AttackSpec, AttackTarget, BnPasses, DatasetKind, DatasetSpec,
    MethodKind, ModelSpec, Named, OptimizerKind, RouterKind, RouterObjective, ScheduleKind,
    SpecError, TargetClass, TrainSpec, warmed_up,
};
