//! `trades` (Zhang et al. 2019) and `moe-at`, the AdvMoE paper's vanilla MoE baseline: the
//! TRADES loss and one joint step; its loss and examples are shared with `advmoe`.

use advmoe_core::{AttackLoss, MethodKind, Rng};
use advmoe_model::{BnUpdate, Mode, MoeNet};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use super::{Method, MethodConfig, StepInput, stack, zero};
use crate::attack::{
    LogitObjective, Objective, RouterObjective as RouterAttack, Start, SumObjective,
    run_attack_last,
};
use crate::loss::{cross_entropy, kl_div};
use crate::tensors::DeviceBatch;

/// The standard deviation of TRADES's starting noise.
const TRADES_START_STD: f32 = 0.001;

/// The TRADES loss `CE(f(x), y) + β·KL(f(x) ‖ f(x_adv))` in train mode, with both forward
/// passes' batch statistics. Returns (loss, ce, kl, clean routes' balance term, bn updates).
pub(super) struct TradesLoss {
    pub(super) total: Tensor<1>,
    pub(super) ce: Tensor<1>,
    pub(super) kl: Tensor<1>,
    pub(super) balance: Option<Tensor<1>>,
    pub(super) bn_updates: Vec<BnUpdate>,
}

pub(super) fn trades_loss(
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

/// Whether the inner attack also raises the routers' KL, and from which clean scores.
pub(super) enum RouterKl {
    /// The output's KL alone (TRADES, vanilla MoE AT).
    Off,
    /// Plus the routers' KL from their clean scores in eval mode (AdvMoE).
    Eval,
    /// Plus the routers' KL from these clean scores, one per distinct decision (AdvMoE as the
    /// released script attacks: from its train-mode scores).
    From(Vec<Tensor<2>>),
}

/// x_adv for TRADES: K steps on KL(f(x) ‖ f(x')) from x + N(0, 0.001²).
pub(super) fn trades_examples(
    config: &MethodConfig,
    model: &MoeNet,
    batch: &DeviceBatch,
    router_kl: RouterKl,
    rng: &mut Rng,
) -> Tensor<4> {
    let spec = config.inner_attack(AttackLoss::Kl);
    let output =
        LogitObjective::from_spec(model, batch.images.clone(), batch.labels.clone(), &spec);
    let mut parts: Vec<Box<dyn Objective + '_>> = vec![Box::new(output)];
    if config.num_experts > 1 {
        let images = batch.images.clone();
        match router_kl {
            RouterKl::Off => {}
            RouterKl::Eval => {
                parts.push(Box::new(RouterAttack::new(model, images, AttackLoss::Kl)));
            }
            RouterKl::From(scores) => parts.push(Box::new(RouterAttack::from_clean_scores(
                model,
                scores,
                AttackLoss::Kl,
            ))),
        }
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
pub(super) fn apply_bn(
    model: MoeNet,
    updates: Vec<BnUpdate>,
    keep: &dyn Fn(&str) -> bool,
) -> MoeNet {
    model.apply_bn_updates(updates.into_iter().filter(|u| keep(&u.path)).collect())
}

/// TRADES (Zhang et al. 2019), and `moe-at`: the same loss and one joint step over routers and
/// experts of an MoE (the AdvMoE paper's vanilla baseline), with the optional balance term.
pub(super) struct Trades {
    pub(super) config: MethodConfig,
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
        let adv = trades_examples(
            &self.config,
            &input.model,
            &input.batch,
            RouterKl::Off,
            input.rng,
        );
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
