//! The robustness dissection (DESIGN §5): clean and robust accuracy, router robustness, expert
//! robustness, route flips, ε-curves, expert load and the class × expert matrix.
//!
//! Definitions (per test image, per MoE layer):
//! - `robust_acc`: accuracy on adversarial images from the chosen attack on the `full` target;
//! - `route_flip_rate`: fraction of (image, MoE layer) routes that differ between the clean image
//!   and the `full` attack's adversarial image;
//! - `router_robustness`: fraction of (image, MoE layer) routes that no point reached by the
//!   router attack ([`RobustOptions::router_attack`], run once aimed at each router) flipped;
//! - `expert_robustness`: accuracy under the same algorithm aimed at the `expert` target, with
//!   routes frozen to the clean image's routes (the pathway's own robustness).
//!
//! Dense models have no routes: their router metrics are `None`.
//!
//! With further attacks ([`RobustOptions::worst_case`], e.g. [`NamedAttack::auto_attack`]) the
//! report also gives the per-image worst case, RobustBench's convention: an image counts as
//! robust only if every attack (the main one included) leaves it correctly classified.
//!
//! With [`RobustOptions::partition_routes`] MoE models are measured again with every route
//! forced to the class partition ([`PartitionRoutes`]): what a perfect, unattackable router
//! would give, the counterfactual of the accuracy by route.

use advmoe_core::{AttackKind, AttackLoss, AttackSpec, AttackTarget, Rng, SpecError, TargetClass};
use advmoe_data::ImageSet;
use advmoe_model::readback::read_i64;
use advmoe_model::{LayerRoute, Mode, MoeNet, Routing, check_routes};
use burn::tensor::{Bool, Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use crate::attack::{LogitObjective, RouterObjective, attack, frozen};
use crate::eval::{EvalError, correct_each, count_correct, images_to_evaluate};
use crate::loss::distinct_routes;
pub use crate::paired::{Paired, PerImage};
use crate::tensors::to_device;

/// What to measure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RobustOptions {
    /// The attack (algorithm, ε, steps, step size, restarts, loss, targeting). Its `target` is
    /// ignored: every target is measured.
    pub attack: AttackSpec,
    /// The router attack (target `router`; its `eps` and step size scale to each radius
    /// measured), run once aimed at each router. Default: [`AttackSpec::router_eval`], PGD-20
    /// on the routers' margin from 2 random starts, not the main attack: the paper's 10-step
    /// attack on the routers' KL overstates router robustness.
    pub router_attack: AttackSpec,
    /// Extra radii for the curves (empty: no curves).
    pub eps_sweep: Vec<f32>,
    /// Images per batch.
    pub batch_size: usize,
    /// Only the first this many test images (0: all).
    pub limit: usize,
    /// Seed of the attacks' random starts.
    pub seed: u64,
    /// Further attacks on the `full` target, run after all the others on each batch; the
    /// report's [`WorstCase`] takes the per-image worst case over them and the main attack.
    pub worst_case: Vec<NamedAttack>,
    /// Also measure MoE models with their routes forced to the class partition
    /// ([`PartitionRoutes`]), under the headline attacks again. Left out of the JSON when off,
    /// so a comparison saved before it existed still resumes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partition_routes: bool,
    /// Also measure accuracy under the AdvMoE paper code's evaluation attack
    /// ([`released_attack`] of `attack`), into [`RobustReport::released_robust_acc`]. Not part
    /// of [`evaluate_robust_from`]: callers run [`released_robust_acc`] after it (a comparison
    /// adds it to rows measured without it, without measuring them again). Left out of the JSON
    /// when off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub released_eval: bool,
    /// Also record each image's outcomes ([`RobustReport::per_image`]), so that two models
    /// measured on the same images can be compared image by image ([`Paired`]). Left out of
    /// the JSON when off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_image: bool,
}

impl Default for RobustOptions {
    fn default() -> Self {
        Self {
            attack: AttackSpec::paper_eval(),
            router_attack: AttackSpec::router_eval(),
            eps_sweep: Vec::new(),
            batch_size: 100,
            limit: 0,
            seed: 0,
            worst_case: Vec::new(),
            partition_routes: false,
            released_eval: false,
            per_image: false,
        }
    }
}

/// An attack of the worst-case evaluation: its name and its runs (APGD-T makes one per target
/// class); an image resists it if it resists every run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NamedAttack {
    /// Name, with its steps (e.g. `APGD-CE-100`).
    pub name: String,
    /// The runs, each aimed at the `full` target.
    pub runs: Vec<AttackSpec>,
}

impl NamedAttack {
    /// AutoAttack's two white-box attacks (Croce & Hein 2020; RobustBench's standard set without
    /// the black-box [`NamedAttack::square`]), in the L∞ ball of radius `eps`: APGD on the cross-entropy,
    /// and targeted APGD on the DLR loss against each of the `targets` classes the clean image
    /// ranks highest after its label; `steps` iterations each, one restart.
    pub fn auto_attack(eps: f32, steps: usize, targets: usize) -> Vec<NamedAttack> {
        let apgd = |loss, targeted| AttackSpec {
            kind: AttackKind::Apgd,
            eps,
            steps,
            step_size: 0.0,
            random_start: false,
            restarts: 1,
            loss,
            target: AttackTarget::Full,
            targeted,
            through_gates: false,
            router_term: 0.0,
        };
        vec![
            NamedAttack {
                name: format!("APGD-CE-{steps}"),
                runs: vec![apgd(AttackLoss::Ce, None)],
            },
            NamedAttack {
                name: format!("APGD-T-{steps} ({targets} targets)"),
                runs: (1..=targets)
                    .map(|k| apgd(AttackLoss::Dlr, Some(TargetClass::Ranked(k))))
                    .collect(),
            },
        ]
    }

    /// The worst-case set for a model of `classes` classes, as `eval --worst-case` and the report
    /// view measure it: [`NamedAttack::auto_attack`] at `eps` with `steps` iterations, its
    /// APGD-T aimed at up to 9 classes, and with `square` queries also [`NamedAttack::square`].
    ///
    /// # Errors
    /// A run whose spec does not validate (e.g. more Square queries than allowed).
    pub fn worst_case(
        eps: f32,
        steps: usize,
        classes: usize,
        square: Option<usize>,
    ) -> Result<Vec<NamedAttack>, SpecError> {
        let targets = classes.saturating_sub(1).min(9);
        let mut attacks = Self::auto_attack(eps, steps, targets);
        attacks.extend(square.map(|queries| Self::square(eps, queries)));
        for run in attacks.iter().flat_map(|a| &a.runs) {
            run.validate()?;
        }
        Ok(attacks)
    }

    /// AutoAttack's black-box attack: the Square Attack in the L∞ ball of radius `eps` on the
    /// margin (CW) loss, `queries` evaluations (AutoAttack: 5,000), one restart. It never reads
    /// a gradient, so a model that only hides its gradient from APGD falls to it.
    pub fn square(eps: f32, queries: usize) -> NamedAttack {
        NamedAttack {
            name: format!("Square-{queries}"),
            runs: vec![AttackSpec {
                kind: AttackKind::Square,
                eps,
                steps: queries,
                step_size: 0.0,
                random_start: false,
                restarts: 1,
                loss: AttackLoss::Cw,
                target: AttackTarget::Full,
                targeted: None,
                through_gates: false,
                router_term: 0.0,
            }],
        }
    }
}

/// The per-image worst case over the main attack and the further ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorstCase {
    /// Accuracy counting an image as robust only if every attack left it correct.
    pub robust_acc: f64,
    /// Each attack's own accuracy, `(name, accuracy)`, the main attack first.
    pub each: Vec<(String, f64)>,
}

/// Images, and of them the ones classified correctly clean and under the headline attack.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counted {
    /// Images.
    pub images: usize,
    /// Of them, classified correctly when clean.
    pub clean: usize,
    /// Of them, still correct under the headline attack.
    pub robust: usize,
}

impl Counted {
    /// "SA / RA" in % on these images ("–" when there are none).
    pub fn accuracies(&self) -> String {
        if self.images == 0 {
            return "–".to_string();
        }
        let pct = |n: usize| 100.0 * n as f64 / self.images as f64;
        format!("{:.1} / {:.1}", pct(self.clean), pct(self.robust))
    }
}

/// Accuracy with every MoE layer's route forced to the class partition (`y mod N`, what AdvMoE's
/// class-partition router objective teaches the routers): the counterfactual of a router that
/// always routes by the partition and that no attack can turn. The attacks are the headline
/// ones (the per-image worst case when measured, else the RA attack), aimed at the experts
/// through the forced routes. The images are split by whether the model's own router sends them
/// (clean, first MoE layer) where the partition does, so the rest can be compared with where
/// the model itself sends them. A route chosen from the label tells the model which group of
/// classes (a half, for N = 2) the image belongs to: this bounds what a perfect router would
/// give and is no classifier of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRoutes {
    /// Images whose own clean route (first MoE layer) follows the partition.
    pub follows: Counted,
    /// The rest.
    pub rest: Counted,
    /// Of `follows`, the images classified correctly clean with every route shifted to the next
    /// expert, `(y + 1) mod N` (for N = 2 the other one) instead: against `follows.clean`, what
    /// the partition's expert adds.
    #[serde(default)]
    pub follows_shifted_clean: usize,
    /// The same of `rest`.
    #[serde(default)]
    pub rest_shifted_clean: usize,
}

impl PartitionRoutes {
    /// "SA there / SA on the rest" in % with the routes shifted to the next expert.
    pub fn shifted_accuracies(&self) -> String {
        let pct = |clean: usize, of: usize| {
            if of == 0 {
                "–".to_string()
            } else {
                format!("{:.1}", 100.0 * clean as f64 / of as f64)
            }
        };
        format!(
            "{} / {}",
            pct(self.follows_shifted_clean, self.follows.images),
            pct(self.rest_shifted_clean, self.rest.images)
        )
    }

    /// Both groups together.
    pub fn all(&self) -> Counted {
        Counted {
            images: self.follows.images + self.rest.images,
            clean: self.follows.clean + self.rest.clean,
            robust: self.follows.robust + self.rest.robust,
        }
    }
}

/// What a report's headline robust accuracy is called: `worst-case RA` when it is the per-image
/// worst case, else `RA` (the RA attack alone).
pub fn headline_label(worst_case: bool) -> &'static str {
    if worst_case { "worst-case RA" } else { "RA" }
}

/// One point of the ε-curves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// Radius.
    pub eps: f32,
    /// Accuracy under the `full` attack at this radius.
    pub robust_acc: f64,
    /// Routes flipped by that attack (MoE only).
    pub route_flip_rate: Option<f64>,
    /// Routes kept under the `router` attack at this radius (MoE only).
    pub router_robustness: Option<f64>,
}

/// Everything measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustReport {
    /// Test images evaluated.
    pub images: usize,
    /// Clean accuracy (SA).
    pub clean_acc: f64,
    /// Accuracy under the attack on the `full` target (RA).
    pub robust_acc: f64,
    /// Fraction of (image, MoE layer) routes unchanged under the `router` attack.
    pub router_robustness: Option<f64>,
    /// The router attack measured (MoE only; absent in reports written before it had its own).
    #[serde(default)]
    pub router_attack: Option<AttackSpec>,
    /// Accuracy under the `expert` attack with routes frozen to the clean routes.
    pub expert_robustness: Option<f64>,
    /// Fraction of (image, MoE layer) routes flipped by the `full` attack.
    pub route_flip_rate: Option<f64>,
    /// Per MoE layer, the fraction of clean test images routed to each expert.
    pub expert_load: Vec<Vec<f64>>,
    /// `[MoE layer][class][expert]`: clean test images of each class routed to each expert.
    pub class_expert: Vec<Vec<Vec<usize>>>,
    /// `[MoE layer][class][expert]`: of those images (by their clean route), the ones classified
    /// correctly when clean. Empty in reports written before it was counted.
    #[serde(default)]
    pub class_expert_correct: Vec<Vec<Vec<usize>>>,
    /// The same for the ones still correct under the headline attack: the per-image worst case
    /// when it was measured, else the RA attack.
    #[serde(default)]
    pub class_expert_robust: Vec<Vec<Vec<usize>>>,
    /// ε-curves.
    pub sweep: Vec<SweepPoint>,
    /// The per-image worst case, when [`RobustOptions::worst_case`] named further attacks.
    #[serde(default)]
    pub worst_case: Option<WorstCase>,
    /// Accuracy with the routes forced to the class partition, when
    /// [`RobustOptions::partition_routes`] asked for it (MoE only).
    #[serde(default)]
    pub partition_routes: Option<PartitionRoutes>,
    /// Accuracy under the AdvMoE paper code's evaluation attack ([`released_attack`] of
    /// `attack`), when [`RobustOptions::released_eval`] asked for it: to set beside figures
    /// measured that way, not a robustness figure (it is a weaker attack on a live router).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_robust_acc: Option<f64>,
    /// Each image's outcomes, when [`RobustOptions::per_image`] asked for them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_image: Option<PerImage>,
    /// The attack measured.
    pub attack: AttackSpec,
    /// Wall-clock seconds of the whole evaluation.
    pub secs: f64,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Tally {
    correct: usize,
    routes_same: usize,
    routes: usize,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.correct += other.correct;
        self.routes_same += other.routes_same;
        self.routes += other.routes;
    }
}

fn fraction(a: usize, b: usize) -> f64 {
    a as f64 / b.max(1) as f64
}

/// An evaluation part-way: everything counted on the images done so far, the random streams'
/// states and the seconds spent. [`evaluate_robust_from`] continues it with exactly the
/// measurements an uninterrupted evaluation makes (each batch draws only from these streams),
/// so a cut evaluation is not started again; [`crate::compare::run_comparison`] saves it beside
/// its checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalProgress {
    /// Test images done (from the first).
    pub done: usize,
    secs: f64,
    rng: Rng,
    partition_rng: Rng,
    clean: usize,
    full: Tally,
    router: Tally,
    expert: Tally,
    sweep_full: Vec<Tally>,
    sweep_router: Vec<Tally>,
    /// Per further attack, images it left correct; images every attack left correct.
    resisted: Vec<usize>,
    resisted_all: usize,
    load: Vec<Vec<usize>>,
    class_expert: Vec<Vec<Vec<usize>>>,
    class_expert_correct: Vec<Vec<Vec<usize>>>,
    class_expert_robust: Vec<Vec<Vec<usize>>>,
    partition: PartitionRoutes,
    /// Each image's outcomes so far, when [`RobustOptions::per_image`] asks for them.
    #[serde(default)]
    per_image: PerImage,
}

impl EvalProgress {
    /// Nothing measured yet, for `model` under `options`.
    fn start(model: &MoeNet, options: &RobustOptions) -> Self {
        let num_experts = model.moe_convs().first().map_or(0, |c| c.num_experts);
        let layers = model.moe_convs().len();
        let per_class = vec![vec![vec![0usize; num_experts]; model.num_classes]; layers];
        Self {
            done: 0,
            secs: 0.0,
            rng: Rng::stream(options.seed, 0x6174_7461_636b),
            // Its own stream, so it changes no other measurement's starts.
            partition_rng: Rng::stream(options.seed, 0x7061_7274),
            clean: 0,
            full: Tally::default(),
            router: Tally::default(),
            expert: Tally::default(),
            sweep_full: vec![Tally::default(); options.eps_sweep.len()],
            sweep_router: vec![Tally::default(); options.eps_sweep.len()],
            resisted: vec![0; options.worst_case.len()],
            resisted_all: 0,
            load: vec![vec![0; num_experts]; layers],
            class_expert: per_class.clone(),
            class_expert_correct: per_class.clone(),
            class_expert_robust: per_class,
            partition: PartitionRoutes::default(),
            per_image: PerImage::default(),
        }
    }

    /// Whether this progress can belong to `model` under `options` on `total` images: the
    /// counts have the shapes they would start with.
    fn fits(&self, model: &MoeNet, options: &RobustOptions, total: usize) -> bool {
        let fresh = Self::start(model, options);
        let dims3 = |v: &Vec<Vec<Vec<usize>>>| {
            v.iter()
                .map(|l| l.iter().map(Vec::len).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        self.done <= total
            && (!options.per_image || self.per_image.len() == self.done)
            && self.sweep_full.len() == fresh.sweep_full.len()
            && self.sweep_router.len() == fresh.sweep_router.len()
            && self.resisted.len() == fresh.resisted.len()
            && self
                .load
                .iter()
                .map(Vec::len)
                .eq(fresh.load.iter().map(Vec::len))
            && [
                &self.class_expert,
                &self.class_expert_correct,
                &self.class_expert_robust,
            ]
            .into_iter()
            .all(|v| dims3(v) == dims3(&fresh.class_expert))
    }
}

/// How [`evaluate_robust_from`] ended.
#[derive(Debug, Clone)]
pub enum Evaluation {
    /// Every image measured.
    Done(Box<RobustReport>),
    /// Stopped after a batch, at the progress given: pass it back to continue.
    Stopped(Box<EvalProgress>),
}

/// Run every measurement on `set`. `model` must live on an autodiff device (`device` is that
/// device or its inner device). `progress(done, total)` is called after each batch.
///
/// # Errors
/// As [`evaluate_robust_from`].
pub async fn evaluate_robust(
    model: &MoeNet,
    set: &ImageSet,
    options: &RobustOptions,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<RobustReport, EvalError> {
    let total = images_to_evaluate(options.limit, set.len());
    let on_batch = &mut |p: &EvalProgress| {
        progress(p.done, total);
        true
    };
    match evaluate_robust_from(model, set, options, device, None, on_batch).await? {
        Evaluation::Done(report) => Ok(*report),
        Evaluation::Stopped(_) => unreachable!("the evaluation goes on while `on_batch` says so"),
    }
}

/// [`evaluate_robust`], continued from `from` (an evaluation of the same model with the same
/// options that was stopped; `None`: from the start). After each batch `on_batch` gets the
/// progress so far (to show it, or to save it) and says whether to go on; when it says no, the
/// evaluation stops there and returns that progress.
///
/// # Errors
/// Routes or logits that are not finite, a readback that fails, or a `from` whose counts do
/// not fit this model and these options.
pub async fn evaluate_robust_from(
    model: &MoeNet,
    set: &ImageSet,
    options: &RobustOptions,
    device: &Device,
    from: Option<EvalProgress>,
    on_batch: &mut dyn FnMut(&EvalProgress) -> bool,
) -> Result<Evaluation, EvalError> {
    let started = web_time::Instant::now();
    // Forward passes that nothing differentiates, and attacks, need no parameter's gradient.
    let model = &frozen(model);
    let device = device.clone().autodiff();
    let total = images_to_evaluate(options.limit, set.len());
    let moe = !model.moe_convs().is_empty();
    let num_experts = model.moe_convs().first().map_or(0, |c| c.num_experts);
    let layers = model.moe_convs().len();
    let classes = model.num_classes;
    let spec = |target: AttackTarget, eps: f32, loss: AttackLoss| AttackSpec {
        target,
        eps,
        loss,
        ..options.attack.clone()
    };
    let mut p = match from {
        Some(p) if p.fits(model, options, total) => p,
        Some(p) => {
            return Err(EvalError::Resume(format!(
                "its counts ({} images done) do not fit this model and these attacks",
                p.done
            )));
        }
        None => EvalProgress::start(model, options),
    };
    let measure_partition = moe && options.partition_routes;
    let secs_before = p.secs;
    while p.done < total {
        let start = p.done;
        let end = (start + options.batch_size.max(1)).min(total);
        let host = set.batch(start, end);
        let batch = to_device(&host, classes, &device);
        let images = batch.images.clone();
        let labels = batch.labels.clone();

        // One clean forward pass serves the counts and every attack's clean reference.
        let out = model.forward(images.clone(), Mode::Eval);
        let clean_routes = check_routes(&out.routes).await?;
        let clean_scores = distinct_scores(model, &out.routes);
        let clean_each = correct_each(out.logits.clone(), &host.labels).await?;
        p.clean += clean_each.iter().filter(|c| **c).count();

        // The tally of one `full` attack at `eps`, and which images it left correct.
        let full_at = async |eps: f32, rng: &mut Rng| -> Result<(Tally, Vec<bool>), EvalError> {
            let s = spec(AttackTarget::Full, eps, options.attack.loss);
            let objective = LogitObjective::with_clean(model, &out, labels.clone(), &s);
            let adv = attack(&objective, images.clone(), &s, rng);
            let out = model.forward(adv, Mode::Eval);
            let routes = check_routes(&out.routes).await?;
            let correct = correct_each(out.logits, &host.labels).await?;
            let tally = Tally {
                correct: correct.iter().filter(|c| **c).count(),
                ..compare_routes(&clean_routes, &routes)
            };
            Ok((tally, correct))
        };
        let router_at = async |eps: f32, rng: &mut Rng| -> Result<Tally, EvalError> {
            let s = router_spec(&options.router_attack, eps);
            router_tally(model, &images, &clean_scores, &clean_routes, &s, rng).await
        };

        let (main, mut robust_here) = full_at(options.attack.eps, &mut p.rng).await?;
        p.full.add(main);
        if moe {
            p.router
                .add(router_at(options.attack.eps, &mut p.rng).await?);
            let s = spec(
                AttackTarget::Expert,
                options.attack.eps,
                options.attack.loss,
            );
            let objective = LogitObjective::with_clean(model, &out, labels.clone(), &s);
            let adv = attack(&objective, images.clone(), &s, &mut p.rng);
            let routing: Routing = objective.routing().clone();
            let logits = model.forward_with(adv, Mode::Eval, &routing).logits;
            p.expert.correct += count_correct(logits, &host.labels).await?;
        }
        for (i, &eps) in options.eps_sweep.iter().enumerate() {
            p.sweep_full[i].add(full_at(eps, &mut p.rng).await?.0);
            if moe {
                p.sweep_router[i].add(router_at(eps, &mut p.rng).await?);
            }
        }
        let main_correct = options.per_image.then(|| robust_here.clone());
        // The further attacks come last, so the measurements above draw the same random
        // starts with or without them.
        for (named, resisted) in options.worst_case.iter().zip(&mut p.resisted) {
            let mut kept = vec![true; host.labels.len()];
            for run in &named.runs {
                let s = AttackSpec {
                    target: AttackTarget::Full,
                    ..run.clone()
                };
                let objective = LogitObjective::with_clean(model, &out, labels.clone(), &s);
                let adv = attack(&objective, images.clone(), &s, &mut p.rng);
                let logits = model.forward(adv, Mode::Eval).logits;
                let correct = correct_each(logits, &host.labels).await?;
                for (k, c) in kept.iter_mut().zip(correct) {
                    *k &= c;
                }
            }
            *resisted += kept.iter().filter(|k| **k).count();
            for (r, k) in robust_here.iter_mut().zip(kept) {
                *r &= k;
            }
        }
        p.resisted_all += robust_here.iter().filter(|r| **r).count();
        if let Some(main) = &main_correct {
            let worst = (!options.worst_case.is_empty()).then_some(robust_here.as_slice());
            p.per_image.push(&clean_each, main, worst);
        }
        for (layer, experts) in clean_routes.iter().enumerate() {
            for (i, (&e, &y)) in experts.iter().zip(&host.labels).enumerate() {
                let y = usize::from(y);
                p.load[layer][e] += 1;
                p.class_expert[layer][y][e] += 1;
                p.class_expert_correct[layer][y][e] += usize::from(clean_each[i]);
                p.class_expert_robust[layer][y][e] += usize::from(robust_here[i]);
            }
        }
        if measure_partition {
            let n = num_experts as i64;
            let forced = labels.clone().remainder_scalar(n);
            let shifted = Routing::Fixed(vec![
                forced.clone().add_scalar(1).remainder_scalar(n);
                layers
            ]);
            let shifted_logits = model
                .forward_with(images.clone(), Mode::Eval, &shifted)
                .logits;
            let shifted_clean = correct_each(shifted_logits, &host.labels).await?;
            let routing = Routing::Fixed(vec![forced; layers]);
            let (clean_p, robust_p) = correct_with_routes(
                model,
                (&images, &labels, &host.labels),
                &routing,
                options,
                &mut p.partition_rng,
            )
            .await?;
            let partition = &mut p.partition;
            for (i, &y) in host.labels.iter().enumerate() {
                let (group, shifted) = if clean_routes[0][i] == usize::from(y) % num_experts {
                    (&mut partition.follows, &mut partition.follows_shifted_clean)
                } else {
                    (&mut partition.rest, &mut partition.rest_shifted_clean)
                };
                group.images += 1;
                group.clean += usize::from(clean_p[i]);
                group.robust += usize::from(robust_p[i]);
                *shifted += usize::from(shifted_clean[i]);
            }
        }
        p.done = end;
        p.secs = secs_before + started.elapsed().as_secs_f64();
        if !on_batch(&p) && p.done < total {
            return Ok(Evaluation::Stopped(Box::new(p)));
        }
    }
    Ok(Evaluation::Done(Box::new(report(p, model, options, total))))
}

/// The report of an evaluation of `model` under `options` that measured all `total` images.
fn report(p: EvalProgress, model: &MoeNet, options: &RobustOptions, total: usize) -> RobustReport {
    let moe = !model.moe_convs().is_empty();
    let moe_only = |v: f64| moe.then_some(v);
    let (full, router, expert) = (p.full, p.router, p.expert);
    RobustReport {
        images: total,
        clean_acc: fraction(p.clean, total),
        robust_acc: fraction(full.correct, total),
        router_robustness: moe_only(fraction(router.routes_same, router.routes)),
        router_attack: moe.then(|| router_spec(&options.router_attack, options.attack.eps)),
        expert_robustness: moe_only(fraction(expert.correct, total)),
        route_flip_rate: moe_only(1.0 - fraction(full.routes_same, full.routes)),
        expert_load: p
            .load
            .into_iter()
            .map(|l| l.into_iter().map(|c| fraction(c, total)).collect())
            .collect(),
        class_expert: p.class_expert,
        class_expert_correct: p.class_expert_correct,
        class_expert_robust: p.class_expert_robust,
        sweep: options
            .eps_sweep
            .iter()
            .zip(p.sweep_full.iter().zip(&p.sweep_router))
            .map(|(&eps, (f, r))| SweepPoint {
                eps,
                robust_acc: fraction(f.correct, total),
                route_flip_rate: moe_only(1.0 - fraction(f.routes_same, f.routes)),
                router_robustness: moe_only(fraction(r.routes_same, r.routes)),
            })
            .collect(),
        attack: options.attack.clone(),
        worst_case: (!options.worst_case.is_empty()).then(|| WorstCase {
            robust_acc: fraction(p.resisted_all, total),
            each: std::iter::once((attack_name(&options.attack), fraction(full.correct, total)))
                .chain(
                    options
                        .worst_case
                        .iter()
                        .zip(&p.resisted)
                        .map(|(a, &r)| (a.name.clone(), fraction(r, total))),
                )
                .collect(),
        }),
        partition_routes: (moe && options.partition_routes).then_some(p.partition),
        released_robust_acc: None,
        per_image: options.per_image.then_some(p.per_image),
        secs: p.secs,
    }
}

/// The weight of the routers' partition cross-entropy in the released AdvMoE evaluation's
/// attack loss (its TRADES β).
pub const RELEASED_ROUTER_TERM: f32 = 6.0;

/// The AdvMoE paper code's evaluation attack made from `attack` (the RA attack): the same
/// algorithm, radius, steps and starts, untargeted on the `full` target, differentiated
/// through the straight-through gates and with [`RELEASED_ROUTER_TERM`] times the routers'
/// cross-entropy against the class partition added to its loss (the released `adv_val`).
pub fn released_attack(attack: &AttackSpec) -> AttackSpec {
    AttackSpec {
        target: AttackTarget::Full,
        targeted: None,
        through_gates: true,
        router_term: RELEASED_ROUTER_TERM,
        ..attack.clone()
    }
}

/// Accuracy of `model` on the images [`RobustOptions::limit`] selects of `set` under
/// [`released_attack`] of `options.attack`, its random starts from their own stream (seeded by
/// `options.seed`). `on_batch(done, total)` after each batch says whether to go on; `None`:
/// stopped.
///
/// # Errors
/// As [`evaluate_robust_from`].
pub async fn released_robust_acc(
    model: &MoeNet,
    set: &ImageSet,
    options: &RobustOptions,
    device: &Device,
    on_batch: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<Option<f64>, EvalError> {
    let model = &frozen(model);
    let device = device.clone().autodiff();
    let total = images_to_evaluate(options.limit, set.len());
    let spec = released_attack(&options.attack);
    let mut rng = Rng::stream(options.seed, 0x7265_6c65_6173_6564);
    let mut correct = 0;
    let mut done = 0;
    while done < total {
        let end = (done + options.batch_size.max(1)).min(total);
        let host = set.batch(done, end);
        let batch = to_device(&host, model.num_classes, &device);
        let out = model.forward(batch.images.clone(), Mode::Eval);
        check_routes(&out.routes).await?;
        let objective = LogitObjective::with_clean(model, &out, batch.labels.clone(), &spec);
        let adv = attack(&objective, batch.images, &spec, &mut rng);
        correct += count_correct(model.forward(adv, Mode::Eval).logits, &host.labels).await?;
        done = end;
        if !on_batch(done, total) && done < total {
            return Ok(None);
        }
    }
    Ok(Some(fraction(correct, total)))
}

/// Per image of `batch` (images, labels on the device, labels on the host), whether `model` run
/// with `routing` classifies it correctly clean, and whether it still does under every headline
/// attack (the RA attack of `options`, then each run of its worst case) aimed through that
/// routing.
async fn correct_with_routes(
    model: &MoeNet,
    batch: (&Tensor<4>, &Tensor<1, Int>, &[u16]),
    routing: &Routing,
    options: &RobustOptions,
    rng: &mut Rng,
) -> Result<(Vec<bool>, Vec<bool>), EvalError> {
    let (images, labels, host_labels) = batch;
    let out = model.forward_with(images.clone(), Mode::Eval, routing);
    let clean = correct_each(out.logits.clone(), host_labels).await?;
    let mut kept = vec![true; host_labels.len()];
    let runs =
        std::iter::once(&options.attack).chain(options.worst_case.iter().flat_map(|a| &a.runs));
    for run in runs {
        let s = AttackSpec {
            target: AttackTarget::Full,
            ..run.clone()
        };
        let objective = LogitObjective::with_clean(model, &out, labels.clone(), &s)
            .with_routing(routing.clone());
        let adv = attack(&objective, images.clone(), &s, rng);
        let logits = model.forward_with(adv, Mode::Eval, routing).logits;
        for (k, c) in kept
            .iter_mut()
            .zip(correct_each(logits, host_labels).await?)
        {
            *k &= c;
        }
    }
    Ok((clean, kept))
}

/// The router scores that carry distinct decisions (the image router's once, or every per-layer
/// router's): the clean reference of a router attack.
fn distinct_scores(model: &MoeNet, routes: &[LayerRoute]) -> Vec<Tensor<2>> {
    distinct_routes(routes, model.has_image_router())
        .iter()
        .map(|r| r.scores.clone())
        .collect()
}

/// `router` at radius `eps`, its step size scaled with the radius, aimed at the routers.
fn router_spec(router: &AttackSpec, eps: f32) -> AttackSpec {
    let scale = if router.eps > 0.0 {
        eps / router.eps
    } else {
        1.0
    };
    AttackSpec {
        eps,
        step_size: router.step_size * scale,
        target: AttackTarget::Router,
        ..router.clone()
    }
}

/// Routes kept when the router attack `spec` perturbs `images` (clean router scores
/// `clean_scores`, clean routes `clean_routes`, per layer and image): a route counts as flipped
/// when any point the attack evaluated flipped it, over every step and start (the per-route
/// worst case; an image router's one decision is every layer's route).
async fn router_tally(
    model: &MoeNet,
    images: &Tensor<4>,
    clean_scores: &[Tensor<2>],
    clean_routes: &[Vec<usize>],
    spec: &AttackSpec,
    rng: &mut Rng,
) -> Result<Tally, EvalError> {
    let decisions = clean_scores.len();
    if spec.eps <= 0.0 || decisions == 0 {
        return Ok(compare_routes(clean_routes, clean_routes));
    }
    // One attack aimed at each decision, each with its own stream of starts (so an attack with
    // more starts repeats a weaker one's first); a route is flipped if any of them flipped it.
    let seed = rng.next_u64();
    let mut flipped: Option<Vec<Tensor<1, Bool>>> = None;
    for decision in 0..decisions {
        let mut rng = Rng::stream(seed, decision as u64);
        let objective = RouterObjective::from_clean_scores(model, clean_scores.to_vec(), spec.loss)
            .focused_on(decision)
            .recording_flips();
        attack(&objective, images.clone(), spec, &mut rng);
        let flips = objective
            .flips()
            .expect("an attack with ε > 0 evaluates its objective");
        flipped = Some(match flipped {
            None => flips,
            Some(old) => old
                .into_iter()
                .zip(flips)
                .map(|(a, b)| a.bool_or(b))
                .collect(),
        });
    }
    let flipped = flipped.expect("at least one decision");
    let flipped = read_i64(Tensor::stack::<2>(flipped, 0).int(), "flipped routes").await?;
    let images_n = clean_routes.first().map_or(0, Vec::len);
    let mut tally = Tally::default();
    for layer in 0..clean_routes.len() {
        let decision = layer.min(decisions - 1);
        let row = &flipped[decision * images_n..(decision + 1) * images_n];
        tally.routes += images_n;
        tally.routes_same += row.iter().filter(|&&f| f == 0).count();
    }
    Ok(tally)
}

/// One rung of [`router_ladder`]: a router attack and the router robustness under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterRung {
    /// The router attack.
    pub attack: AttackSpec,
    /// Fraction of (image, MoE layer) routes it left unchanged.
    pub router_robustness: f64,
}

/// What [`router_ladder`] measures.
#[derive(Debug, Clone)]
pub struct LadderOptions {
    /// The router attacks, weakest first (e.g. [`AttackSpec::router_ladder`]).
    pub rungs: Vec<AttackSpec>,
    /// Only the first this many test images (0: all).
    pub limit: usize,
    /// Images per batch.
    pub batch_size: usize,
    /// Seed of the random starts.
    pub seed: u64,
}

/// Router robustness of `model` under each of `options.rungs` on the first images of `set`:
/// whether a stronger router attack still lowers it. Every rung draws each batch's random
/// starts from the same stream (the seed, the batch), so a rung that only adds starts to another
/// repeats that one's starts first and can only flip more routes. `model` lives on an autodiff
/// device; `progress(done, total)` after each batch. A dense model has no routes: an empty
/// result.
pub async fn router_ladder(
    model: &MoeNet,
    set: &ImageSet,
    options: &LadderOptions,
    device: &Device,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<RouterRung>, EvalError> {
    if model.moe_convs().is_empty() {
        return Ok(Vec::new());
    }
    let model = &frozen(model);
    let device = device.clone().autodiff();
    let total = images_to_evaluate(options.limit, set.len());
    let rungs: Vec<AttackSpec> = options
        .rungs
        .iter()
        .map(|r| router_spec(r, r.eps))
        .collect();
    let mut tallies = vec![Tally::default(); rungs.len()];
    let mut start = 0;
    while start < total {
        let end = (start + options.batch_size.max(1)).min(total);
        let host = set.batch(start, end);
        let images = to_device(&host, model.num_classes, &device).images;
        let out = model.forward(images.clone(), Mode::Eval);
        let clean_routes = check_routes(&out.routes).await?;
        let clean_scores = distinct_scores(model, &out.routes);
        for (rung, tally) in rungs.iter().zip(&mut tallies) {
            // Every rung starts each batch from the same stream.
            let mut rng = Rng::stream(options.seed, 0x726f_7574_6572 + start as u64);
            let kept = router_tally(model, &images, &clean_scores, &clean_routes, rung, &mut rng);
            tally.add(kept.await?);
        }
        start = end;
        progress(start, total);
    }
    Ok(rungs
        .into_iter()
        .zip(tallies)
        .map(|(attack, t)| RouterRung {
            attack,
            router_robustness: fraction(t.routes_same, t.routes),
        })
        .collect())
}

/// A short name of an attack, with its steps (and random starts when more than one): `PGD-10`,
/// `APGD-DLR-100`, `FGSM`, `PGD-CW-20 × 2 starts`.
pub fn attack_name(spec: &AttackSpec) -> String {
    let kind = spec.kind.title();
    if spec.kind == AttackKind::Fgsm {
        // One step: no count.
        return kind.into();
    }
    let loss = match spec.loss {
        AttackLoss::Ce => String::new(),
        other => format!("-{}", other.as_str().to_uppercase()),
    };
    let targeted = spec
        .targeted
        .map_or(String::new(), |t| format!(" targeted {t}"));
    let starts = if spec.restarts > 1 {
        format!(" × {} starts", spec.restarts)
    } else {
        String::new()
    };
    let paper: String = spec
        .paper_options()
        .iter()
        .map(|o| format!(" {o}"))
        .collect();
    format!("{kind}{loss}-{}{targeted}{starts}{paper}", spec.steps)
}

/// The name of a router attack as router robustness runs it, one attack aimed at each router:
/// `PGD-CW-20 × 2 starts, aimed at each router`.
pub fn router_attack_name(spec: &AttackSpec) -> String {
    format!("{}, aimed at each router", attack_name(spec))
}

/// Routes equal between `clean` and `other`, over every (image, layer).
fn compare_routes(clean: &[Vec<usize>], other: &[Vec<usize>]) -> Tally {
    let mut tally = Tally::default();
    for (a, b) in clean.iter().zip(other) {
        tally.routes += a.len();
        tally.routes_same += a.iter().zip(b).filter(|(x, y)| x == y).count();
    }
    tally
}
