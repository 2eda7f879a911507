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

use advmoe_core::{AttackLoss, AttackSpec, AttackTarget, MethodKind, Rng, RouterObjective};
use advmoe_model::{BnUpdate, Mode, MoeNet, is_router_path};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, activation::log_softmax};

use crate::attack::{
    LogitObjective, Objective, RouterObjective as RouterAttack, Start, SumObjective,
    run_attack_last,
};
use crate::loss::{cross_entropy, distinct_routes, kl_div, kl_each_from_log, load_balance};
use crate::optim::Optimizer;
use crate::tensors::DeviceBatch;

/// The standard deviation of TRADES's starting noise.
const TRADES_START_STD: f32 = 0.001;

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

fn stack(terms: Vec<Tensor<1>>) -> Tensor<1> {
    Tensor::cat(terms.into_iter().map(Tensor::detach).collect(), 0)
}

fn zero(like: &Tensor<1>) -> Tensor<1> {
    like.zeros_like().detach()
}

impl MethodConfig {
    fn balance(&self, routes: &[advmoe_model::LayerRoute]) -> Option<Tensor<1>> {
        if self.balance_weight > 0.0 && self.num_experts > 1 {
            load_balance(routes, self.image_router)
        } else {
            None
        }
    }

    /// The attack spec of an inner maximisation with `loss`.
    fn inner_attack(&self, loss: AttackLoss) -> AttackSpec {
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
fn descend(
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

/// Cross-entropy on clean images.
struct Standard {
    config: MethodConfig,
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

/// Madry et al.: cross-entropy on PGD-K examples generated against the current model.
struct PgdAt {
    config: MethodConfig,
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

/// The TRADES loss `CE(f(x), y) + β·KL(f(x) ‖ f(x_adv))` in train mode, with both forward
/// passes' batch statistics. Returns (loss, ce, kl, clean routes' balance term, bn updates).
struct TradesLoss {
    total: Tensor<1>,
    ce: Tensor<1>,
    kl: Tensor<1>,
    balance: Option<Tensor<1>>,
    bn_updates: Vec<BnUpdate>,
}

fn trades_loss(
    config: &MethodConfig,
    model: &MoeNet,
    adv: Tensor<4>,
    batch: &DeviceBatch,
    with_balance: bool,
) -> TradesLoss {
    let clean = model.forward(batch.images.clone(), Mode::Train);
    let perturbed = model.forward(adv, Mode::Train);
    let ce = cross_entropy(clean.logits.clone(), batch.one_hot.clone());
    let kl = kl_div(clean.logits, perturbed.logits);
    let mut total = ce.clone() + kl.clone().mul_scalar(config.beta);
    let balance = if with_balance {
        config.balance(&clean.routes)
    } else {
        None
    };
    if let Some(b) = &balance {
        total = total + b.clone().mul_scalar(config.balance_weight);
    }
    let mut bn_updates = clean.bn_updates;
    bn_updates.extend(perturbed.bn_updates);
    TradesLoss {
        total,
        ce,
        kl,
        balance,
        bn_updates,
    }
}

/// x_adv for TRADES: K steps on KL(f(x) ‖ f(x')) from x + N(0, 0.001²).
fn trades_examples(
    config: &MethodConfig,
    model: &MoeNet,
    batch: &DeviceBatch,
    router_kl: bool,
    rng: &mut Rng,
) -> Tensor<4> {
    let spec = config.inner_attack(AttackLoss::Kl);
    let output =
        LogitObjective::from_spec(model, batch.images.clone(), batch.labels.clone(), &spec);
    let mut parts: Vec<Box<dyn Objective + '_>> = vec![Box::new(output)];
    if router_kl && config.num_experts > 1 {
        parts.push(Box::new(RouterAttack::new(
            model,
            batch.images.clone(),
            AttackLoss::Kl,
        )));
    }
    let objective = SumObjective { parts };
    run_attack_last(
        &objective,
        batch.images.clone(),
        &spec,
        Start::Gaussian(TRADES_START_STD),
        rng,
    )
}

/// Fold the running statistics of the batch norms `keep` selects.
fn apply_bn(model: MoeNet, updates: Vec<BnUpdate>, keep: &dyn Fn(&str) -> bool) -> MoeNet {
    model.apply_bn_updates(updates.into_iter().filter(|u| keep(&u.path)).collect())
}

/// TRADES (Zhang et al. 2019), and `moe-at`: the same loss and one joint step over routers and
/// experts of an MoE (the AdvMoE paper's vanilla baseline), with the optional balance term.
struct Trades {
    config: MethodConfig,
}

impl Method for Trades {
    fn kind(&self) -> MethodKind {
        self.config.kind
    }

    fn terms(&self) -> &'static [&'static str] {
        &[
            "TRADES loss",
            "clean cross-entropy",
            "KL(clean ‖ adversarial)",
            "load balance",
        ]
    }

    fn step(&mut self, input: StepInput<'_>) -> (MoeNet, Tensor<1>) {
        let adv = trades_examples(&self.config, &input.model, &input.batch, false, input.rng);
        let loss = trades_loss(&self.config, &input.model, adv, &input.batch, true);
        let grads = GradientsParams::from_grads(loss.total.backward(), &input.model);
        let model = input
            .optimizers
            .main
            .step(input.model, grads, input.lr)
            .apply_bn_updates(loss.bn_updates);
        let balance = loss.balance.unwrap_or_else(|| zero(&loss.ce));
        (model, stack(vec![loss.total, loss.ce, loss.kl, balance]))
    }
}

/// AdvMoE (Zhang et al. 2023): per mini-batch, (A) adversarial examples against the MoE (TRADES
/// KL of the output plus KL of the routers), one step of the expert optimiser on the TRADES loss;
/// (B) fresh adversarial examples against the updated experts, one step of the router optimiser
/// on the router objective. Each step folds only its own batch norms' statistics.
pub struct AdvMoe {
    config: MethodConfig,
}

impl AdvMoe {
    /// AdvMoE with `config` (whose `kind` should be `advmoe`).
    pub fn new(config: MethodConfig) -> Self {
        Self { config }
    }

    /// Step (A): update the experts (every parameter outside the routers). Returns the model and
    /// the terms (TRADES loss, clean cross-entropy, KL).
    pub fn expert_step(
        &self,
        model: MoeNet,
        batch: &DeviceBatch,
        lr: f64,
        optimizer: &mut Optimizer,
        rng: &mut Rng,
    ) -> (MoeNet, [Tensor<1>; 3]) {
        let expert = |p: &str| !is_router_path(p);
        let adv = trades_examples(&self.config, &model, batch, true, rng);
        let loss = trades_loss(&self.config, &model, adv, batch, false);
        let grads = GradientsParams::from_grads(loss.total.backward(), &model);
        let model = optimizer.step_where(model, grads, lr, &expert);
        let model = apply_bn(model, loss.bn_updates, &expert);
        (model, [loss.total, loss.ce, loss.kl])
    }

    /// Step (B): update the routers only. Returns the model and the terms (robust: TRADES loss and
    /// balance term; class-partition: class cross-entropy and router KL).
    pub fn router_step(
        &self,
        model: MoeNet,
        batch: &DeviceBatch,
        lr: f64,
        optimizer: &mut Optimizer,
        rng: &mut Rng,
    ) -> (MoeNet, [Tensor<1>; 2]) {
        let adv = trades_examples(&self.config, &model, batch, true, rng);
        let (total, terms, bn_updates) = match self.config.router_objective {
            RouterObjective::Robust => {
                let loss = trades_loss(&self.config, &model, adv, batch, true);
                let balance = loss.balance.unwrap_or_else(|| zero(&loss.ce));
                (loss.total.clone(), [loss.total, balance], loss.bn_updates)
            }
            RouterObjective::ClassPartition => {
                let clean = model.forward(batch.images.clone(), Mode::Train);
                let perturbed = model.forward(adv, Mode::Train);
                let n = self.config.num_experts;
                let partition =
                    advmoe_model::one_hot_rows(batch.labels.clone().remainder_scalar(n as i64), n);
                let pairs: Vec<_> = distinct_routes(&clean.routes, self.config.image_router)
                    .iter()
                    .zip(distinct_routes(&perturbed.routes, self.config.image_router))
                    .collect();
                let layers = pairs.len().max(1) as f64;
                let device = batch.images.device();
                let mut ce: Tensor<1> = Tensor::zeros([1], &device);
                let mut kl: Tensor<1> = Tensor::zeros([1], &device);
                for (c, a) in pairs {
                    ce = ce + cross_entropy(c.scores.clone(), partition.clone());
                    kl = kl
                        + kl_each_from_log(
                            log_softmax(c.scores.clone(), 1),
                            log_softmax(a.scores.clone(), 1),
                        )
                        .mean();
                }
                let (ce, kl) = (ce.div_scalar(layers), kl.div_scalar(layers));
                // As in the paper's released code: the partition's cross-entropy at weight 1 and
                // the routers' KL at α (β weights only the experts' TRADES KL). Weighting the
                // cross-entropy by α instead made its effective learning rate six times the
                // released one, and with SGD momentum the router's decision swung the whole
                // test set from one expert to the other between evaluations.
                let total = ce.clone() + kl.clone().mul_scalar(self.config.alpha);
                let mut updates = clean.bn_updates;
                updates.extend(perturbed.bn_updates);
                (total, [ce, kl], updates)
            }
        };
        let grads = GradientsParams::from_grads(total.backward(), &model);
        let model = optimizer.step_where(model, grads, lr, &is_router_path);
        let model = apply_bn(model, bn_updates, &is_router_path);
        (model, terms)
    }
}

impl Method for AdvMoe {
    fn kind(&self) -> MethodKind {
        MethodKind::Advmoe
    }

    fn terms(&self) -> &'static [&'static str] {
        match self.config.router_objective {
            RouterObjective::Robust => &[
                "expert TRADES loss",
                "clean cross-entropy",
                "KL(clean ‖ adversarial)",
                "router TRADES loss",
                "load balance",
            ],
            RouterObjective::ClassPartition => &[
                "expert TRADES loss",
                "clean cross-entropy",
                "KL(clean ‖ adversarial)",
                "router class cross-entropy",
                "router KL(clean ‖ adversarial)",
            ],
        }
    }

    fn step(&mut self, input: StepInput<'_>) -> (MoeNet, Tensor<1>) {
        let (model, [total, ce, kl]) = self.expert_step(
            input.model,
            &input.batch,
            input.lr,
            &mut input.optimizers.main,
            input.rng,
        );
        let (model, [r1, r2]) = self.router_step(
            model,
            &input.batch,
            input.lr,
            &mut input.optimizers.router,
            input.rng,
        );
        (model, stack(vec![total, ce, kl, r1, r2]))
    }
}
