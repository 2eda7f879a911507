//! `pgd-at` (Madry et al.): cross-entropy on PGD-K adversarial examples.

use advmoe_core::{AttackLoss, MethodKind};
use advmoe_model::MoeNet;
use burn::tensor::Tensor;

use super::{Method, MethodConfig, StepInput, descend};
use crate::attack::{LogitObjective, Start, run_attack_last};

/// Madry et al.: cross-entropy on PGD-K examples generated against the current model.
pub(super) struct PgdAt {
    pub(super) config: MethodConfig,
}

impl Method for PgdAt {
    fn kind(&self) -> MethodKind {
        MethodKind::PgdAt
    }

    fn terms(&self) -> &'static [&'static str] {
        &["adversarial cross-entropy", "load balance"]
    }

    fn step(&mut self, input: StepInput<'_>) -> (MoeNet, Tensor<1>) {
        let spec = self.config.inner_attack(AttackLoss::Ce);
        let objective = LogitObjective::from_spec(
            &input.model,
            input.batch.images.clone(),
            input.batch.labels.clone(),
            &spec,
        );
        let adv = run_attack_last(
            &objective,
            input.batch.images.clone(),
            &spec,
            Start::from_spec(&spec),
            input.rng,
        );
        drop(objective);
        descend(
            &self.config,
            input.model,
            adv,
            &input.batch,
            input.lr,
            &mut input.optimizers.main,
        )
    }
}
