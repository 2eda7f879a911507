//! Training methods as pluggable pieces.
//!
//! A method owns what happens in one optimisation step: which inputs the model sees (clean or
//! adversarial), which loss, and which optimiser steps. It returns the updated model and the
//! step's loss, still on the device. `standard` and `pgd-at` live here; the AdvMoE paper's
//! methods (TRADES, vanilla MoE AT, AdvMoE's alternating router/expert steps with two
//! optimisers) plug in the same way.

use advmoe_core::{AttackSpec, MethodKind, Rng};
use advmoe_model::{Mode, MoeNet};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::attack::pgd_linf;
use crate::loss::{cross_entropy, load_balance};
use crate::optim::Optimizer;
use crate::tensors::DeviceBatch;

/// Everything a method may use for one step.
pub struct StepInput<'a> {
    /// The model (on an autodiff device).
    pub model: MoeNet,
    /// The mini-batch (on the same device).
    pub batch: DeviceBatch,
    /// Learning rate of this step.
    pub lr: f64,
    /// The run's optimiser(s).
    pub optimizer: &'a mut Optimizer,
    /// The run's RNG (attack starts).
    pub rng: &'a mut Rng,
}

/// A training method.
pub trait Method: Send {
    /// Which method this is.
    fn kind(&self) -> MethodKind;

    /// One optimisation step. Returns the updated model and the step's loss `[1]` (not read back).
    fn step(&mut self, input: StepInput<'_>) -> (MoeNet, Tensor<1>);
}

/// Build the method a spec names.
pub fn make_method(
    kind: MethodKind,
    attack: AttackSpec,
    balance_weight: f64,
    image_router: bool,
) -> Box<dyn Method> {
    let common = Common {
        balance_weight,
        image_router,
    };
    match kind {
        MethodKind::Standard => Box::new(Standard { common }),
        MethodKind::PgdAt => Box::new(PgdAt { common, attack }),
    }
}

#[derive(Debug, Clone, Copy)]
struct Common {
    balance_weight: f64,
    image_router: bool,
}

impl Common {
    /// Cross-entropy on `images` (train-mode batch norm) plus the balance term, one optimiser
    /// step, and the running-statistics update.
    fn descend(
        &self,
        model: MoeNet,
        images: Tensor<4>,
        batch: &DeviceBatch,
        lr: f64,
        optimizer: &mut Optimizer,
    ) -> (MoeNet, Tensor<1>) {
        let out = model.forward(images, Mode::Train);
        let ce = cross_entropy(out.logits, batch.one_hot.clone());
        let loss = match load_balance(&out.routes, self.image_router) {
            Some(balance) if self.balance_weight > 0.0 => {
                ce.clone() + balance.mul_scalar(self.balance_weight)
            }
            _ => ce.clone(),
        };
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let model = optimizer
            .step(model, grads, lr)
            .apply_bn_updates(out.bn_updates);
        (model, ce.detach())
    }
}

/// Cross-entropy on clean images.
struct Standard {
    common: Common,
}

impl Method for Standard {
    fn kind(&self) -> MethodKind {
        MethodKind::Standard
    }

    fn step(&mut self, input: StepInput<'_>) -> (MoeNet, Tensor<1>) {
        let images = input.batch.images.clone();
        self.common
            .descend(input.model, images, &input.batch, input.lr, input.optimizer)
    }
}

/// Madry et al.: cross-entropy on PGD-K examples generated against the current model.
struct PgdAt {
    common: Common,
    attack: AttackSpec,
}

impl Method for PgdAt {
    fn kind(&self) -> MethodKind {
        MethodKind::PgdAt
    }

    fn step(&mut self, input: StepInput<'_>) -> (MoeNet, Tensor<1>) {
        let adv = pgd_linf(
            &input.model,
            input.batch.images.clone(),
            input.batch.one_hot.clone(),
            &self.attack,
            input.rng,
        );
        self.common
            .descend(input.model, adv, &input.batch, input.lr, input.optimizer)
    }
}
