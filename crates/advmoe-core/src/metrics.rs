//! Metrics that engines report and front-ends show.

use serde::{Deserialize, Serialize};

/// What one evaluation measured. `metrics.jsonl` holds one of these per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Optimiser steps done when measured.
    pub step: usize,
    /// Mean training loss over the steps since the previous evaluation (NaN before any step;
    /// JSON writes NaN as `null`, which reads back as NaN).
    #[serde(deserialize_with = "nan_if_null")]
    pub loss: f64,
    /// Mean test cross-entropy on clean images.
    #[serde(deserialize_with = "nan_if_null")]
    pub test_loss: f64,
    /// Clean test accuracy in [0, 1].
    pub clean_acc: f64,
    /// Test images evaluated.
    pub images: usize,
    /// Per MoE layer, the fraction of test images routed to each expert (empty for dense models).
    pub expert_load: Vec<Vec<f64>>,
    /// Seconds since the run started (excluding evaluation of earlier points).
    pub elapsed_secs: f64,
}

/// A number that JSON may hold as `null` (how serde_json writes NaN and infinities).
fn nan_if_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// Training losses read back from the device in one go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Step index of the first loss.
    pub first_step: usize,
    /// One training loss per step.
    pub losses: Vec<f64>,
}
