//! `advmoe` (Zhang et al. 2023): alternating expert and router steps with two optimisers.

use advmoe_core::{BnPasses, MethodKind, Rng, RouterObjective, warmed_up};
use advmoe_model::{Mode, MoeNet, is_router_path};
use burn::optim::GradientsParams;
use burn::tensor::{Tensor, activation::log_softmax};

use super::trades::{RouterKl, apply_bn, trades_examples, trades_loss};
use super::{Method, MethodConfig, StepInput, stack, zero};
use crate::attack::frozen;
use crate::loss::{cross_entropy, kl_each_from_log};
use crate::optim::{Optimizer, freeze_where};
use crate::tensors::DeviceBatch;

/// AdvMoE (Zhang et al. 2023): per mini-batch, (A) adversarial examples against the MoE (TRADES
/// KL of the output plus KL of the routers), one step of the expert optimiser on the TRADES loss;
/// (B) fresh adversarial examples against the updated experts, one step of the router optimiser
/// on the router objective. Each step folds only its own batch norms' statistics, every
/// train-mode pass in order; [`BnPasses::Released`] folds as the released script does.
pub struct AdvMoe {
    pub(super) config: MethodConfig,
}

impl AdvMoe {
    /// AdvMoE with `config` (whose `kind` should be `advmoe`).
    pub fn new(config: MethodConfig) -> Self {
        Self { config }
    }

    /// Step (A): update the experts (every parameter outside the routers). Returns the model and
    /// the terms (TRADES loss, clean cross-entropy, KL). `released`: under
    /// [`BnPasses::Released`], the routers' train-mode clean scores, where the released script's
    /// attacks start the router KL (and its passes then fold into every batch norm); `None`:
    /// this project's own passes.
    pub fn expert_step(
        &self,
        model: MoeNet,
        batch: &DeviceBatch,
        lr: f64,
        optimizer: &mut Optimizer,
        rng: &mut Rng,
        released: Option<&[Tensor<2>]>,
    ) -> (MoeNet, [Tensor<1>; 3]) {
        let expert = |p: &str| !is_router_path(p);
        let adv = trades_examples(&self.config, &model, batch, router_kl(released), rng);
        // This step updates no router, so its backward pass takes no gradient through them.
        let experts_only = freeze_where(model.clone(), &is_router_path);
        let loss = trades_loss(&self.config, &experts_only, adv, batch, false);
        let grads = GradientsParams::from_grads(loss.total.backward(), &experts_only);
        let model = optimizer.step_where(model, grads, lr, &expert);
        // The released script's passes fold into the routers' batch norms too.
        let model = if released.is_some() {
            model.apply_bn_updates(loss.bn_updates)
        } else {
            apply_bn(model, loss.bn_updates, &expert)
        };
        (model, [loss.total, loss.ce, loss.kl])
    }

    /// Step (B): update the routers only. Returns the model and the terms (robust: TRADES loss and
    /// balance term; class-partition: class cross-entropy and router KL). `released` as in
    /// [`AdvMoe::expert_step`].
    #[allow(clippy::too_many_arguments)]
    pub fn router_step(
        &self,
        model: MoeNet,
        batch: &DeviceBatch,
        lr: f64,
        progress: f64,
        optimizer: &mut Optimizer,
        rng: &mut Rng,
        released: Option<&[Tensor<2>]>,
    ) -> (MoeNet, [Tensor<1>; 2]) {
        let adv = trades_examples(&self.config, &model, batch, router_kl(released), rng);
        // This step updates the routers alone: no gradient of an expert's weights.
        let routers_only = freeze_where(model.clone(), &|p| !is_router_path(p));
        let (total, terms, bn_updates) = match self.config.router_objective {
            RouterObjective::Robust => {
                let loss = trades_loss(&self.config, &routers_only, adv, batch, true);
                let balance = loss.balance.unwrap_or_else(|| zero(&loss.ce));
                (loss.total.clone(), [loss.total, balance], loss.bn_updates)
            }
            RouterObjective::ClassPartition => {
                // Only the routers' decisions enter this objective: for the image router only
                // the router runs.
                let (clean, mut updates) =
                    routers_only.router_decisions(batch.images.clone(), Mode::Train);
                let (perturbed, adv_updates) = routers_only.router_decisions(adv, Mode::Train);
                updates.extend(adv_updates);
                let n = self.config.num_experts;
                let partition =
                    advmoe_model::one_hot_rows(batch.labels.clone().remainder_scalar(n as i64), n);
                let pairs: Vec<_> = clean.into_iter().zip(perturbed).collect();
                let layers = pairs.len().max(1) as f64;
                let device = batch.images.device();
                let mut ce: Tensor<1> = Tensor::zeros([1], &device);
                let mut kl: Tensor<1> = Tensor::zeros([1], &device);
                for (c, a) in pairs {
                    ce = ce + cross_entropy(c.clone(), partition.clone());
                    kl = kl + kl_each_from_log(log_softmax(c, 1), log_softmax(a, 1)).mean();
                }
                let (ce, kl) = (ce.div_scalar(layers), kl.div_scalar(layers));
                // As in the paper's released code: the partition's cross-entropy at weight 1 and
                // the routers' KL at α (β weights only the experts' TRADES KL). Weighting the
                // cross-entropy by α instead made its effective learning rate six times the
                // released one, and with SGD momentum the router's decision swung the whole
                // test set from one expert to the other between evaluations. Ours: α warms up
                // (`router_kl_warmup`), so the router learns its partition before the KL, on
                // examples built to raise it, can pull every image to one expert.
                let alpha = warmed_up(self.config.alpha, self.config.router_kl_warmup, progress);
                let total = ce.clone() + kl.clone().mul_scalar(alpha);
                (total, [ce, kl], updates)
            }
        };
        let grads = GradientsParams::from_grads(total.backward(), &routers_only);
        let model = optimizer.step_where(model, grads, lr, &is_router_path);
        let model = apply_bn(model, bn_updates, &is_router_path);
        (model, terms)
    }
}

/// The routers' clean scores in the attacks' router KL: eval-mode ones, or the train-mode ones
/// the released script's attacks start from.
fn router_kl(released: Option<&[Tensor<2>]>) -> RouterKl {
    match released {
        Some(scores) => RouterKl::From(scores.to_vec()),
        None => RouterKl::Eval,
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
        let images = &input.batch.images;
        // The released script's two clean train-mode passes before its attacks, which train
        // nothing: the router alone (its scores are where the attacks' router KL starts) and
        // the whole model. (With per-layer routers the first is the whole model too.)
        let (model, released) = match self.config.bn_passes {
            BnPasses::Own => (input.model, None),
            BnPasses::Released => {
                let plain = frozen(&input.model);
                let (scores, mut updates) = plain.router_decisions(images.clone(), Mode::Train);
                updates.extend(plain.forward(images.clone(), Mode::Train).bn_updates);
                let scores: Vec<_> = scores.into_iter().map(|s| s.detach()).collect();
                (input.model.apply_bn_updates(updates), Some(scores))
            }
        };
        let (model, [total, ce, kl]) = self.expert_step(
            model,
            &input.batch,
            input.lr,
            &mut input.optimizers.main,
            input.rng,
            released.as_deref(),
        );
        // And its clean pass of the whole model in the router step, taken before the routers
        // change, folded after that step's attack: the experts' batch norms (its routers'
        // statistics are those of the router step's own clean pass).
        let later = released.is_some().then(|| {
            frozen(&model)
                .forward(images.clone(), Mode::Train)
                .bn_updates
                .into_iter()
                .filter(|u| !is_router_path(&u.path))
                .collect::<Vec<_>>()
        });
        let (model, [r1, r2]) = self.router_step(
            model,
            &input.batch,
            input.lr * self.config.router_lr_scale,
            input.progress,
            &mut input.optimizers.router,
            input.rng,
            released.as_deref(),
        );
        let model = match later {
            Some(updates) => model.apply_bn_updates(updates),
            None => model,
        };
        (model, stack(vec![total, ce, kl, r1, r2]))
    }
}
