//! Training methods as pluggable pieces (DESIGN §4).
//!
//! A method owns what happens in one optimisation step: which inputs the model sees (clean or
//! adversarial), which loss, and which optimiser steps on which parameters. It returns the
//! updated model and the step's loss terms `[terms]`, still on the device (the run reads them
//! back in batches and names the first non-finite term and its step).
//!
//! Inner maximisations run the model in eval mode (running batch-norm statistics) with the
//! gradient reaching the image through the routers; each method sets the loss of its own attack
//! (`pgd-at`: CE, the TRADES family: KL from the clean prediction) and takes radius, steps and
//! step size from the run's attack spec.
//!
//! One file per method (`standard`, `pgd_at`, `trades` for TRADES and vanilla MoE AT, `advmoe`);
//! [`make_method`] is the one registration, an exhaustive `match` on [`MethodKind`], so a new
//! kind does not compile until it has its method.

mod advmoe;
mod pgd_at;
mod standard;
mod trades;

pub use advmoe::AdvMoe;
use pgd_at::PgdAt;
use standard::Standard;
use trades::Trades;

use advmoe_core::{
    AttackLoss, AttackSpec, AttackTarget, BnPasses, MethodKind, Rng, RouterObjective,
};
use advmoe_model::{Mode, MoeNet};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::loss::{cross_entropy, load_balance};
use crate::optim::Optimizer;
use crate::tensors::DeviceBatch;

/// The optimisers of a run: `main` steps every parameter, except under `advmoe`, where it steps
/// the experts (everything but the routers) and `router` steps the routers.
#[derive(Debug, Clone)]
pub struct Optimizers {
    /// The optimiser of every parameter (AdvMoE: of the experts).
    pub main: Optimizer,
    /// AdvMoE's router optimiser (unused by other methods).
    pub router: Optimizer,
}

/// Everything a method may use for one step.
pub struct StepInput<'a> {
    /// The model (on an autodiff device).
    pub model: MoeNet,
    /// The mini-batch (on the same device).
    pub batch: DeviceBatch,
    /// Learning rate of this step.
    pub lr: f64,
    /// Fraction of the run done before this step, in [0, 1).
    pub progress: f64,
    /// The run's optimisers.
    pub optimizers: &'a mut Optimizers,
    /// The run's RNG (attack starts).
    pub rng: &'a mut Rng,
}

/// A training method.
pub trait Method: Send {
    /// Which method this is.
    fn kind(&self) -> MethodKind;

    /// Names of the loss terms a step returns; the first is the run's training loss.
    fn terms(&self) -> &'static [&'static str];

    /// One optimisation step. Returns the updated model and the loss terms `[terms().len()]`
    /// (detached, not read back).
    fn step(&mut self, input: StepInput<'_>) -> (MoeNet, Tensor<1>);
}

/// Hyper-parameters shared by the methods.
#[derive(Debug, Clone)]
pub struct MethodConfig {
    /// Which method.
    pub kind: MethodKind,
    /// Radius, steps and step size of the inner maximisation.
    pub attack: AttackSpec,
    /// Weight of the load-balancing term (0: off; forced to 0 for dense models).
    pub balance_weight: f64,
    /// Weight of the KL terms.
    pub beta: f64,
    /// Weight of the routers' KL(clean ‖ adversarial) in the class-partition objective.
    pub alpha: f64,
    /// Fraction of the run over which `alpha` rises from 0 ([`advmoe_core::warmed_up`]).
    pub router_kl_warmup: f64,
    /// AdvMoE's router learning rate as a multiple of the step's (the experts') rate.
    pub router_lr_scale: f64,
    /// Which passes of an AdvMoE step fold their batch statistics.
    pub bn_passes: BnPasses,
    /// AdvMoE's router objective.
    pub router_objective: RouterObjective,
    /// Whether one image router drives every MoE layer.
    pub image_router: bool,
    /// Number of experts (1: dense).
    pub num_experts: usize,
}

/// Build the method a config names.
pub fn make_method(config: MethodConfig) -> Box<dyn Method> {
    match config.kind {
        MethodKind::Standard => Box::new(Standard { config }),
        MethodKind::PgdAt => Box::new(PgdAt { config }),
        MethodKind::Trades | MethodKind::MoeAt => Box::new(Trades { config }),
        MethodKind::Advmoe => Box::new(AdvMoe { config }),
    }
}

pub(crate) fn stack(terms: Vec<Tensor<1>>) -> Tensor<1> {
    Tensor::cat(terms.into_iter().map(Tensor::detach).collect(), 0)
}

pub(crate) fn zero(like: &Tensor<1>) -> Tensor<1> {
    like.zeros_like().detach()
}

impl MethodConfig {
    pub(crate) fn balance(&self, routes: &[advmoe_model::LayerRoute]) -> Option<Tensor<1>> {
        if self.balance_weight > 0.0 && self.num_experts > 1 {
            load_balance(routes, self.image_router)
        } else {
            None
        }
    }

    /// The attack spec of an inner maximisation with `loss`.
    pub(crate) fn inner_attack(&self, loss: AttackLoss) -> AttackSpec {
        AttackSpec {
            loss,
            target: AttackTarget::Full,
            targeted: None,
            ..self.attack.clone()
        }
    }
}

/// Cross-entropy on `images` (train-mode batch norm) plus the balance term, one step of the
/// main optimiser over every parameter, and the running-statistics update. Terms: cross-entropy,
/// load balance.
pub(crate) fn descend(
    config: &MethodConfig,
    model: MoeNet,
    images: Tensor<4>,
    batch: &DeviceBatch,
    lr: f64,
    optimizer: &mut Optimizer,
) -> (MoeNet, Tensor<1>) {
    let out = model.forward(images, Mode::Train);
    let ce = cross_entropy(out.logits, batch.one_hot.clone());
    let balance = config.balance(&out.routes);
    let loss = match &balance {
        Some(b) => ce.clone() + b.clone().mul_scalar(config.balance_weight),
        None => ce.clone(),
    };
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    let model = optimizer
        .step(model, grads, lr)
        .apply_bn_updates(out.bn_updates);
    let balance = balance.unwrap_or_else(|| zero(&ce));
    (model, stack(vec![ce, balance]))
}
