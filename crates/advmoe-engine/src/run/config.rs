//! What defines a run ([`RunConfig`]) and how it is checked against a dataset.

use advmoe_core::{DatasetSpec, ModelSpec, SpecError, TrainSpec};
use advmoe_data::Dataset;
use serde::{Deserialize, Serialize};

/// Everything that defines a run. Stored as `config.json` beside every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The model.
    pub model: ModelSpec,
    /// The data.
    pub data: DatasetSpec,
    /// The training procedure.
    pub train: TrainSpec,
    /// Weight of the load-balancing term for MoE models (0: off).
    pub balance_weight: f64,
}

/// A model and a dataset that do not fit each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the model expects {channels} channels, {size:?} pixels and {classes} classes, but {split} has {} channels, {:?} pixels and {} classes",
    found.0, found.1, found.2
)]
pub struct ShapeMismatch {
    /// The model's input channels.
    pub channels: usize,
    /// The model's image size.
    pub size: [usize; 2],
    /// The model's classes.
    pub classes: usize,
    /// The split that differs (its name).
    pub split: String,
    /// The split's channels, size and classes.
    pub found: (usize, [usize; 2], usize),
}

impl RunConfig {
    /// Check every part.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.model.validate()?;
        self.train.validate()?;
        self.data.validate()?;
        if !(self.balance_weight.is_finite() && self.balance_weight >= 0.0) {
            return Err(SpecError {
                field: "balance_weight",
                reason: format!("{} is not >= 0", self.balance_weight),
            });
        }
        if self.train.method.has_router_optimizer() && !self.model.is_moe() {
            return Err(SpecError {
                field: "method",
                reason: format!(
                    "{} trains routers and needs an MoE model (experts >= 2)",
                    self.train.method
                ),
            });
        }
        Ok(())
    }

    /// Check that `dataset` fits this run's model: channels, image size and classes of both
    /// splits.
    ///
    /// # Errors
    /// The first split that differs, with both shapes.
    pub fn check_dataset(&self, dataset: &Dataset) -> Result<(), ShapeMismatch> {
        let m = &self.model;
        for t in [&dataset.train, &dataset.test] {
            if m.in_channels != t.channels
                || m.image_size != t.size
                || m.num_classes != t.num_classes
            {
                return Err(ShapeMismatch {
                    channels: m.in_channels,
                    size: m.image_size,
                    classes: m.num_classes,
                    split: t.name.clone(),
                    found: (t.channels, t.size, t.num_classes),
                });
            }
        }
        Ok(())
    }

    /// Set the model's input shape and class count from a dataset.
    pub fn fit_to(&mut self, dataset: &Dataset) {
        self.model.in_channels = dataset.train.channels;
        self.model.image_size = dataset.train.size;
        self.model.num_classes = dataset.train.num_classes;
    }
}
