//! What an attack maximises: per-image objectives for the three targets of DESIGN §5.
//!
//! An [`Objective`] maps a batch of images to one value per image (to be maximised, with the
//! gradient reaching the images) and a per-image success flag (the attack has reached its goal:
//! misclassified, the target class hit, a route flipped). The attack algorithms keep, per image,
//! the iterate that succeeded, or else the one with the highest value.
//!
//! Objectives run the model in [`Mode::Eval`] (running batch-norm statistics, as in the TRADES
//! and AdvMoE reference code), on an autodiff device, and on a copy of it whose parameters take
//! no gradient ([`frozen`]): an attack differentiates with respect to the images only.

use std::cell::RefCell;

use advmoe_core::{AttackLoss, AttackSpec, AttackTarget, TargetClass};
use advmoe_model::{LayerRoute, Mode, MoeNet, Output, Routing};
use burn::module::Module;
use burn::tensor::{Bool, Int, Tensor, activation::log_softmax};

use crate::loss::{cross_entropy_each, distinct_routes, kl_each_from_log};

/// One evaluation of an objective.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Per-image value to maximise, `[batch]`.
    pub value: Tensor<1>,
    /// Per-image success, `[batch]` (detached).
    pub success: Tensor<1, burn::tensor::Bool>,
}

/// `model` with every parameter untracked (the weights are shared, not copied). Burn's autodiff
/// skips the weight gradient of an op whose weights are untracked, so an attack's backward pass
/// computes the images' gradient alone: two of a convolution's three products instead of three,
/// as `torch.autograd.grad(loss, x)` does.
pub fn frozen(model: &MoeNet) -> MoeNet {
    model.clone().no_grad()
}

/// A per-image quantity an attack maximises.
pub trait Objective {
    /// Evaluate on `images` `[batch, channels, h, w]`.
    fn evaluate(&self, images: Tensor<4>) -> Evaluation;
}

/// Attacks on the logits: the `full` target (routing recomputed on every iterate, the gradient
/// that of the pathway chosen there: [`Routing::Exact`]) and the `expert` target (routes fixed
/// to the clean image's).
pub struct LogitObjective {
    /// The attacked model, [`frozen`].
    model: MoeNet,
    routing: Routing,
    loss: AttackLoss,
    /// `[batch]` labels.
    labels: Tensor<1, Int>,
    /// `[batch, classes]` one-hot of the class the value is computed against: the label, or the
    /// target class of a targeted attack.
    aim: Tensor<2>,
    /// `[batch, classes]` one-hot of the label (`dlr` needs it beside a target).
    label_hot: Tensor<2>,
    targeted: bool,
    /// Clean log-probabilities (for `kl`).
    clean_log_probs: Option<Tensor<2>>,
    /// β of the routers' partition cross-entropy added to the value ([`AttackSpec::router_term`]).
    router_term: f32,
}

impl LogitObjective {
    /// Build for `images` with `labels` `[batch]`. Computes the clean quantities it needs (the
    /// clean routes for the `expert` target, clean log-probabilities for `kl`) once, detached.
    pub fn new(
        model: &MoeNet,
        images: Tensor<4>,
        labels: Tensor<1, Int>,
        loss: AttackLoss,
        target: AttackTarget,
        targeted: Option<TargetClass>,
    ) -> Self {
        let needs_clean = loss == AttackLoss::Kl
            || target == AttackTarget::Expert
            || matches!(targeted, Some(TargetClass::Ranked(_)));
        let model = frozen(model);
        let clean = needs_clean.then(|| model.forward(images.detach(), Mode::Eval));
        Self::build(model, clean.as_ref(), labels, loss, target, targeted)
    }

    /// Build from an attack spec with the clean images' eval-mode output already computed
    /// (`model.forward(images, Mode::Eval)`), so that several attacks on one batch share it.
    pub fn with_clean(
        model: &MoeNet,
        clean: &Output,
        labels: Tensor<1, Int>,
        spec: &AttackSpec,
    ) -> Self {
        Self::build(
            frozen(model),
            Some(clean),
            labels,
            spec.loss,
            spec.target,
            spec.targeted,
        )
        .full_target_options(spec)
    }

    /// The options of the `full` target: with [`AttackSpec::through_gates`] the routers decide
    /// with the straight-through gates, whose gradient reaches the image through an image
    /// router; [`AttackSpec::router_term`] adds the routers' partition cross-entropy.
    fn full_target_options(self, spec: &AttackSpec) -> Self {
        if spec.target != AttackTarget::Full {
            return self;
        }
        let this = Self {
            router_term: spec.router_term,
            ..self
        };
        if spec.through_gates {
            this.with_routing(Routing::Free)
        } else {
            this
        }
    }

    fn build(
        model: MoeNet,
        clean: Option<&Output>,
        labels: Tensor<1, Int>,
        loss: AttackLoss,
        target: AttackTarget,
        targeted: Option<TargetClass>,
    ) -> Self {
        let routing = match (clean, target) {
            (Some(out), AttackTarget::Expert) => {
                Routing::Fixed(out.routes.iter().map(|r| r.experts.clone()).collect())
            }
            _ => Routing::Exact,
        };
        let clean_log_probs = clean
            .filter(|_| loss == AttackLoss::Kl)
            .map(|out| log_softmax(out.logits.clone().detach(), 1));
        let classes = model.num_classes;
        let aim_index = match targeted {
            None => labels.clone(),
            Some(TargetClass::Next) => labels
                .clone()
                .add_scalar(1)
                .remainder_scalar(classes as i64),
            Some(TargetClass::Class(c)) => labels.zeros_like().add_scalar(c as i64),
            Some(TargetClass::Ranked(k)) => {
                let logits = clean
                    .expect("ranked targets are built with the clean output")
                    .logits
                    .clone()
                    .detach();
                let others = logits.mask_fill(
                    advmoe_model::one_hot_rows(labels.clone(), classes).equal_elem(1.0),
                    f32::NEG_INFINITY,
                );
                let ranked = top_logits(others, k.clamp(1, classes.saturating_sub(1).max(1)));
                ranked
                    .last()
                    .map(|(_, class)| class.clone())
                    .unwrap_or_else(|| labels.clone())
            }
        };
        Self {
            model,
            routing,
            loss,
            aim: advmoe_model::one_hot_rows(aim_index, classes),
            label_hot: advmoe_model::one_hot_rows(labels.clone(), classes),
            labels,
            targeted: targeted.is_some(),
            clean_log_probs,
            router_term: 0.0,
        }
    }

    /// Build from an attack spec (`target` must be `full` or `expert`).
    pub fn from_spec(
        model: &MoeNet,
        images: Tensor<4>,
        labels: Tensor<1, Int>,
        spec: &AttackSpec,
    ) -> Self {
        Self::new(model, images, labels, spec.loss, spec.target, spec.targeted)
            .full_target_options(spec)
    }

    /// The routing the objective uses (fixed clean routes for the `expert` target).
    pub fn routing(&self) -> &Routing {
        &self.routing
    }

    /// The same objective on the model run with `routing` instead (e.g. routes fixed by an
    /// oracle, so that the attack can only reach the experts).
    pub fn with_routing(self, routing: Routing) -> Self {
        Self { routing, ..self }
    }
}

impl Objective for LogitObjective {
    fn evaluate(&self, images: Tensor<4>) -> Evaluation {
        let out = self.model.forward_with(images, Mode::Eval, &self.routing);
        let router_term = self.router_term_of(&out.routes);
        let logits = out.logits;
        let [b, _] = logits.dims();
        let value = match self.loss {
            AttackLoss::Ce if self.targeted => {
                cross_entropy_each(logits.clone(), self.aim.clone()).neg()
            }
            AttackLoss::Ce => cross_entropy_each(logits.clone(), self.aim.clone()),
            AttackLoss::Cw => {
                let (aimed, other) = (picked(&logits, &self.aim), best_other(&logits, &self.aim));
                if self.targeted {
                    aimed - other
                } else {
                    other - aimed
                }
            }
            AttackLoss::Kl => {
                let clean = self
                    .clean_log_probs
                    .clone()
                    .expect("kl objectives keep the clean log-probabilities");
                kl_each_from_log(clean, log_softmax(logits.clone(), 1))
            }
            AttackLoss::Dlr => {
                let top: Vec<Tensor<1>> = top_logits(logits.clone(), 4)
                    .into_iter()
                    .map(|(value, _)| value)
                    .collect();
                // With fewer than 4 classes the smallest logit stands in for the missing ranks.
                let rank = |i: usize| top[i.min(top.len() - 1)].clone();
                let label = picked(&logits, &self.label_hot);
                let (margin, scale) = if self.targeted {
                    let aimed = picked(&logits, &self.aim);
                    (label - aimed, rank(0) - (rank(2) + rank(3)).mul_scalar(0.5))
                } else {
                    let other = best_other(&logits, &self.label_hot);
                    (label - other, rank(0) - rank(2))
                };
                margin.neg() / scale.add_scalar(1e-12)
            }
        };
        let value = match router_term {
            Some(term) => value + term,
            None => value,
        };
        let predicted = logits.detach().argmax(1).reshape([b]);
        let success = if self.targeted {
            let aim: Tensor<1, Int> = self.aim.clone().argmax(1).reshape([b]);
            predicted.equal(aim)
        } else {
            predicted.not_equal(self.labels.clone())
        };
        Evaluation { value, success }
    }
}

impl LogitObjective {
    /// β times the cross-entropy of the routers' scores against the class partition (label mod
    /// the number of experts), per image, averaged over the distinct decisions; `None` when β
    /// is 0 or the model has no router.
    fn router_term_of(&self, routes: &[LayerRoute]) -> Option<Tensor<1>> {
        let decisions = distinct_routes(routes, self.model.has_image_router());
        if self.router_term == 0.0 || decisions.is_empty() {
            return None;
        }
        let sum = decisions
            .iter()
            .map(|r| {
                let [_, n] = r.scores.dims();
                let partition =
                    advmoe_model::one_hot_rows(self.labels.clone().remainder_scalar(n as i64), n);
                cross_entropy_each(r.scores.clone(), partition)
            })
            .reduce(|a, b| a + b)?;
        Some(sum.mul_scalar(self.router_term / decisions.len() as f32))
    }
}

/// Each row's logit at the class the one-hot `hot` `[batch, classes]` marks, `[batch]`.
fn picked(logits: &Tensor<2>, hot: &Tensor<2>) -> Tensor<1> {
    let [b, _] = logits.dims();
    (logits.clone() * hot.clone()).sum_dim(1).reshape([b])
}

/// Each row's largest logit among the classes the one-hot `hot` does not mark, `[batch]`.
fn best_other(logits: &Tensor<2>, hot: &Tensor<2>) -> Tensor<1> {
    let [b, _] = logits.dims();
    logits
        .clone()
        .mask_fill(hot.clone().equal_elem(1.0), f32::NEG_INFINITY)
        .max_dim(1)
        .reshape([b])
}

/// The `count` largest entries of each row of `logits` `[batch, classes]` (at most `classes`), in
/// descending order, each as its values `[batch]` and its classes `[batch]`. Found by repeated
/// argmax and masking rather than a sort, which some backends only do after a readback; the
/// values keep their gradient. Ties go to the lower class first.
pub fn top_logits(logits: Tensor<2>, count: usize) -> Vec<(Tensor<1>, Tensor<1, Int>)> {
    let [b, classes] = logits.dims();
    let mut rest = logits;
    let mut top = Vec::with_capacity(count.min(classes));
    for i in 0..count.min(classes) {
        let class: Tensor<1, Int> = rest.clone().detach().argmax(1).reshape([b]);
        // The row's maximum (not the product with the one-hot: masked entries are -inf).
        top.push((rest.clone().max_dim(1).reshape([b]), class.clone()));
        if i + 1 < count.min(classes) {
            let hot = advmoe_model::one_hot_rows(class, classes);
            rest = rest.mask_fill(hot.equal_elem(1.0), f32::NEG_INFINITY);
        }
    }
    top
}

/// The `router` target: maximise the change of every distinct routing decision (the image
/// router's one, or each per-layer router's), summed over those decisions. The losses:
/// - `kl`: the KL divergence from the clean router distribution;
/// - `cw`: the margin of the best other expert's score over the clean route's, capped at 0, so
///   that a decision already flipped stops drawing the gradient and the others get it;
/// - anything else: the cross-entropy against the clean route.
///
/// Success: some route flipped. [`RouterObjective::recording_flips`] also keeps, per decision
/// and image, whether any point it was evaluated at flipped it: the per-route worst case over
/// every iterate and start of an attack (router robustness counts a route as flipped when some
/// perturbation in the ball flipped it, as robust accuracy counts an image as broken when some
/// attack broke it).
pub struct RouterObjective {
    /// The attacked model, [`frozen`].
    model: MoeNet,
    loss: AttackLoss,
    clean_log_probs: Vec<Tensor<2>>,
    clean_routes: Vec<Tensor<1, Int>>,
    /// Per distinct decision, `[batch]`: flipped at some evaluated point (when recording).
    flipped: Option<RefCell<Vec<Tensor<1, Bool>>>>,
    /// The one decision the value is taken from (`None`: all of them).
    focus: Option<usize>,
}

impl RouterObjective {
    /// Build for clean `images`; `loss` is `kl`, `cw` or `ce`.
    pub fn new(model: &MoeNet, images: Tensor<4>, loss: AttackLoss) -> Self {
        let model = frozen(model);
        let scores = model.route_scores(images.detach());
        Self::with_frozen(model, scores, loss)
    }

    /// Build from the clean images' router scores, one per distinct routing decision (as
    /// [`MoeNet::route_scores`] returns them), so that several attacks on one batch share them.
    pub fn from_clean_scores(model: &MoeNet, scores: Vec<Tensor<2>>, loss: AttackLoss) -> Self {
        Self::with_frozen(frozen(model), scores, loss)
    }

    fn with_frozen(model: MoeNet, scores: Vec<Tensor<2>>, loss: AttackLoss) -> Self {
        let clean_routes = scores
            .iter()
            .map(|s| {
                let [b, _] = s.dims();
                s.clone().detach().argmax(1).reshape([b])
            })
            .collect();
        Self {
            model,
            loss,
            clean_log_probs: scores
                .into_iter()
                .map(|s| log_softmax(s.detach(), 1))
                .collect(),
            clean_routes,
            flipped: None,
            focus: None,
        }
    }

    /// Take the value from the `decision`-th distinct decision alone (success and the recorded
    /// flips still cover all of them): an attack aimed at one router.
    pub fn focused_on(mut self, decision: usize) -> Self {
        self.focus = Some(decision);
        self
    }

    /// Keep, from now on, which decisions of which images any evaluated point flipped
    /// ([`RouterObjective::flips`]).
    pub fn recording_flips(mut self) -> Self {
        self.flipped = Some(RefCell::new(Vec::new()));
        self
    }

    /// Per distinct decision, `[batch]`: whether some point evaluated since
    /// [`RouterObjective::recording_flips`] flipped it (`None` when not recording, or before
    /// the first evaluation). Stays on the device.
    pub fn flips(&self) -> Option<Vec<Tensor<1, Bool>>> {
        let flipped = self.flipped.as_ref()?.borrow();
        (!flipped.is_empty()).then(|| flipped.clone())
    }
}

impl Objective for RouterObjective {
    fn evaluate(&self, images: Tensor<4>) -> Evaluation {
        let [b, ..] = images.dims();
        let device = images.device();
        let scores = self.model.route_scores(images);
        let mut value: Tensor<1> = Tensor::zeros([b], &device);
        let mut flips = Vec::with_capacity(scores.len());
        for (d, ((s, clean_lp), clean_route)) in scores
            .into_iter()
            .zip(&self.clean_log_probs)
            .zip(&self.clean_routes)
            .enumerate()
        {
            let [_, n] = s.dims();
            let route: Tensor<1, Int> = s.clone().detach().argmax(1).reshape([b]);
            flips.push(route.not_equal(clean_route.clone()));
            if self.focus.is_some_and(|f| f != d) {
                continue;
            }
            let clean_hot = advmoe_model::one_hot_rows(clean_route.clone(), n);
            let term = match self.loss {
                AttackLoss::Kl => kl_each_from_log(clean_lp.clone(), log_softmax(s.clone(), 1)),
                AttackLoss::Cw => {
                    (best_other(&s, &clean_hot) - picked(&s, &clean_hot)).clamp_max(0.0)
                }
                _ => cross_entropy_each(s.clone(), clean_hot),
            };
            value = value + term;
        }
        if let Some(flipped) = &self.flipped {
            let mut flipped = flipped.borrow_mut();
            *flipped = if flipped.is_empty() {
                flips.clone()
            } else {
                flipped
                    .iter()
                    .zip(&flips)
                    .map(|(old, new)| old.clone().bool_or(new.clone()))
                    .collect()
            };
        }
        let mut flipped: Tensor<1, Int> = Tensor::zeros([b], &device);
        for f in flips {
            flipped = flipped + f.int();
        }
        Evaluation {
            value,
            success: flipped.greater_elem(0),
        }
    }
}

/// The sum of several objectives' values; success is the first one's (AdvMoE's inner
/// maximisation: the TRADES KL of the output plus the KL of the routers).
pub struct SumObjective<'a> {
    /// The parts.
    pub parts: Vec<Box<dyn Objective + 'a>>,
}

impl Objective for SumObjective<'_> {
    fn evaluate(&self, images: Tensor<4>) -> Evaluation {
        let mut parts = self.parts.iter().map(|p| p.evaluate(images.clone()));
        let first = parts.next().expect("a sum objective has at least one part");
        let value = parts.fold(first.value, |acc, e| acc + e.value);
        Evaluation {
            value,
            success: first.success,
        }
    }
}
