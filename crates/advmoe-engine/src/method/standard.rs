//! `standard`: cross-entropy on clean images.

use advmoe_core::MethodKind;
use advmoe_model::MoeNet;
use burn::tensor::Tensor;

use super::{Method, MethodConfig, StepInput, descend};

/// Cross-entropy on clean images.
pub(super) struct Standard {
    pub(super) config: MethodConfig,
}

impl Method for Standard {
    fn kind(&self) -> MethodKind {
        MethodKind::Standard
    }

    fn terms(&self) -> &'static [&'static str] {
        &["cross-entropy", "load balance"]
    }

    fn step(&mut self, input: StepInput<'_>) -> (MoeNet, Tensor<1>) {
        let images = input.batch.images.clone();
        descend(
            &self.config,
            input.model,
            images,
            &input.batch,
            input.lr,
            &mut input.optimizers.main,
        )
    }
}
