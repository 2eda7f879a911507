//! Validated specifications: what model to build, what data to read, how to train.
//!
//! Specs are plain serde types so that checkpoints (`config.json`), the CLI and the UI share them.
//! Call `validate` before use; every error names the field and the allowed range.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A spec field outside its allowed range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct SpecError {
    /// The offending field, e.g. `ratio`.
    pub field: &'static str,
    /// What is wrong with it and what is allowed.
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field,
        reason: reason.into(),
    }
}

/// A closed set of named choices (every enum of this module): the CLI's and the app's lists of
/// choices are generated from [`Named::ALL`], so a new variant appears in both.
pub trait Named: Copy + PartialEq + fmt::Display + 'static {
    /// Every choice, in declaration order.
    const ALL: &'static [Self];
    /// The name used on the command line and in JSON.
    fn name(self) -> &'static str;
}

macro_rules! named_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The name used on the command line and in JSON.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl Named for $name {
            const ALL: &'static [$name] = $name::ALL;
            fn name(self) -> &'static str {
                self.as_str()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!(
                        "unknown {} {s:?}; expected one of: {}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

named_enum!(
    /// Backbone family.
    Arch {
        /// ResNet with BasicBlocks, 4 stages (`depth` blocks each).
        Resnet => "resnet",
        /// VGG-11-shaped conv stack.
        Vgg => "vgg",
    }
);

named_enum!(
    /// How experts are chosen.
    RouterKind {
        /// One CNN router reads the image; its choice is used by every MoE layer.
        Image => "image",
        /// Every MoE conv has its own router (global average pool of its input, then linear).
        PerLayer => "per-layer",
    }
);

named_enum!(
    /// Training method (DESIGN §4).
    MethodKind {
        /// Cross-entropy on clean images.
        Standard => "standard",
        /// Madry et al.: cross-entropy on PGD-K adversarial examples with a random start.
        PgdAt => "pgd-at",
        /// TRADES: CE(clean) + β·KL(f(x) ‖ f(x_adv)), x_adv from K steps on that KL.
        Trades => "trades",
        /// Vanilla adversarial training of an MoE: the TRADES loss, one optimiser over routers
        /// and experts, one joint step (the AdvMoE paper's baseline).
        MoeAt => "moe-at",
        /// AdvMoE: alternate an expert step and a router step on freshly generated adversarial
        /// examples, with two optimisers.
        Advmoe => "advmoe",
    }
);

impl MethodKind {
    /// Whether the method trains on adversarial examples (every method but `standard`).
    pub fn is_adversarial(self) -> bool {
        match self {
            MethodKind::Standard => false,
            MethodKind::PgdAt | MethodKind::Trades | MethodKind::MoeAt | MethodKind::Advmoe => true,
        }
    }

    /// Whether β weights a KL term of its loss (TRADES and the two MoE methods built on it).
    pub fn uses_beta(self) -> bool {
        match self {
            MethodKind::Standard | MethodKind::PgdAt => false,
            MethodKind::Trades | MethodKind::MoeAt | MethodKind::Advmoe => true,
        }
    }

    /// Whether the routers have an optimiser and an objective of their own (AdvMoE's
    /// alternating steps); such a method needs an MoE model.
    pub fn has_router_optimizer(self) -> bool {
        match self {
            MethodKind::Standard | MethodKind::PgdAt | MethodKind::Trades | MethodKind::MoeAt => {
                false
            }
            MethodKind::Advmoe => true,
        }
    }
}

named_enum!(
    /// What AdvMoE's router step minimises.
    RouterObjective {
        /// The TRADES loss of the whole MoE with experts frozen (gradient through the
        /// straight-through estimator): the bi-level reading of the paper.
        Robust => "robust",
        /// As in the released code: CE(router, y mod N) + α·KL(router(x) ‖ router(x_adv)).
        ClassPartition => "class-partition",
    }
);

named_enum!(
    /// Which train-mode passes of an AdvMoE step fold their batch statistics into the running
    /// statistics (which attacks and evaluations use).
    BnPasses {
        /// Each of the two steps folds its own passes, clean then adversarial, into its own
        /// batch norms only: the experts' step into the experts', the router step into the
        /// routers'.
        Own => "own",
        /// As the paper's released training script: every pass folds into every batch norm it
        /// runs through, and each batch adds its three clean passes that train nothing (the
        /// router alone and the whole model before the attacks, the whole model in the router
        /// step). The running statistics lean more to clean images.
        Released => "released",
    }
);

named_enum!(
    /// Attack algorithm (DESIGN §5).
    AttackKind {
        /// One signed-gradient step of size ε.
        Fgsm => "fgsm",
        /// Projected gradient descent in the L∞ ball.
        Pgd => "pgd",
        /// Projected gradient descent in the L2 ball.
        PgdL2 => "pgd-l2",
        /// Auto-PGD (Croce & Hein 2020): L∞, momentum and a parameter-free step-size schedule.
        Apgd => "apgd",
        /// Square Attack (Andriushchenko et al. 2020): L∞ random search that only reads the
        /// objective's values, never its gradient (the check against gradient masking). Its
        /// steps are queries.
        Square => "square",
    }
);

named_enum!(
    /// What an attack maximises.
    AttackLoss {
        /// Cross-entropy against the label (or, targeted, minus the cross-entropy of the target).
        Ce => "ce",
        /// Carlini–Wagner margin: best other logit minus the true logit (targeted: target logit
        /// minus the best other).
        Cw => "cw",
        /// KL divergence from the clean prediction (TRADES); for the router target, from the
        /// clean routers' distributions.
        Kl => "kl",
        /// Difference of logits ratio (Croce & Hein 2020), unchanged by shifting or scaling the
        /// logits: `-(z_y - max_{i≠y} z_i) / (z_π1 - z_π3)`, targeted
        /// `-(z_y - z_t) / (z_π1 - (z_π3 + z_π4) / 2)`, with `z_π1 ≥ z_π2 ≥ …` the sorted logits.
        Dlr => "dlr",
    }
);

named_enum!(
    /// Which part of an MoE an attack aims at.
    AttackTarget {
        /// The whole MoE through its logits; routes are recomputed on the perturbed image.
        Full => "full",
        /// Only the routing decisions of every MoE layer.
        Router => "router",
        /// The pathway chosen for the clean image: routes frozen to the clean routes.
        Expert => "expert",
    }
);

named_enum!(
    /// Optimiser.
    OptimizerKind {
        /// SGD with (heavy-ball) momentum and L2 weight decay.
        Sgd => "sgd",
        /// Adam (weight decay added to the gradient, as in PyTorch's `Adam`).
        Adam => "adam",
    }
);

named_enum!(
    /// Learning-rate schedule over the whole run.
    ScheduleKind {
        /// Constant learning rate.
        Constant => "constant",
        /// Cosine decay from `lr` to 0.
        Cosine => "cosine",
        /// Multiply by 0.1 at 50% and 75% of the run.
        Step => "step",
    }
);

named_enum!(
    /// Where images come from.
    DatasetKind {
        /// The built-in procedural set (no files needed).
        Synthetic => "synthetic",
        /// MNIST IDX files.
        Mnist => "mnist",
        /// Fashion-MNIST IDX files.
        FashionMnist => "fashion-mnist",
        /// CIFAR-10 binary version.
        Cifar10 => "cifar10",
        /// CIFAR-100 binary version (fine labels).
        Cifar100 => "cifar100",
        /// `train/<class>/*` and `test/<class>/*` PNG or JPEG files, in a folder or a `.tar` /
        /// `.tar.gz` (`data_dir` names the folder or the archive).
        ImageFolder => "image-folder",
    }
);

/// The architecture of one model. Shapes of every tensor follow from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Backbone family.
    pub arch: Arch,
    /// Base width `b` (channels of the first stage).
    pub width: usize,
    /// Blocks per ResNet stage `d` (1: ResNet-10, 2: ResNet-18). Ignored by `vgg`.
    pub depth: usize,
    /// Number of experts `N` (1 gives a dense model).
    pub num_experts: usize,
    /// Expert width ratio `r` (expert width = `r * planes`).
    pub ratio: f64,
    /// Router kind (irrelevant when `num_experts == 1`).
    pub router: RouterKind,
    /// Input channels (3 for RGB, 1 for MNIST).
    pub in_channels: usize,
    /// Input height and width in pixels.
    pub image_size: [usize; 2],
    /// Number of classes.
    pub num_classes: usize,
}

impl ModelSpec {
    /// A ResNet spec with the classroom defaults for 32×32 RGB, 10 classes.
    pub fn resnet(width: usize, depth: usize, num_experts: usize, ratio: f64) -> Self {
        Self {
            arch: Arch::Resnet,
            width,
            depth,
            num_experts,
            ratio,
            router: RouterKind::Image,
            in_channels: 3,
            image_size: [32, 32],
            num_classes: 10,
        }
    }

    /// Whether the model has MoE convs and routers.
    pub fn is_moe(&self) -> bool {
        self.num_experts > 1
    }

    /// Output width of an MoE conv (or its same-cost dense conv) for `planes` full channels.
    pub fn expert_width(&self, planes: usize) -> usize {
        ((planes as f64 * self.ratio).round() as usize).max(1)
    }

    /// Check every field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(1..=1024).contains(&self.width) {
            return Err(bad("width", format!("{} not in 1..=1024", self.width)));
        }
        if self.arch == Arch::Resnet && !(1..=8).contains(&self.depth) {
            return Err(bad("depth", format!("{} not in 1..=8", self.depth)));
        }
        if !(1..=8).contains(&self.num_experts) {
            return Err(bad("experts", format!("{} not in 1..=8", self.num_experts)));
        }
        if !(self.ratio > 0.0 && self.ratio <= 1.0) {
            return Err(bad("ratio", format!("{} not in (0, 1]", self.ratio)));
        }
        if !(1..=4).contains(&self.in_channels) {
            return Err(bad(
                "in_channels",
                format!("{} not in 1..=4", self.in_channels),
            ));
        }
        let min_side = match self.arch {
            Arch::Resnet => 8,
            Arch::Vgg => 16,
        };
        if self
            .image_size
            .iter()
            .any(|&s| !(min_side..=512).contains(&s))
        {
            return Err(bad(
                "image_size",
                format!(
                    "{:?}: each side must be in {min_side}..=512",
                    self.image_size
                ),
            ));
        }
        if !(2..=1000).contains(&self.num_classes) {
            return Err(bad(
                "num_classes",
                format!("{} not in 2..=1000", self.num_classes),
            ));
        }
        Ok(())
    }
}

/// Which dataset and how to read it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSpec {
    /// The dataset.
    pub kind: DatasetKind,
    /// Folder holding the official files, or the image folder or its archive (ignored by
    /// `synthetic`).
    #[serde(default)]
    pub data_dir: Option<String>,
    /// Training images of `synthetic` (real sets use all their images).
    pub synthetic_train_size: usize,
    /// Test images of `synthetic`.
    pub synthetic_test_size: usize,
    /// Seed of the `synthetic` generator.
    pub synthetic_seed: u64,
    /// Random-crop (pad 4 for 32×32, 2 for smaller) and, where the dataset allows, horizontal
    /// flip augmentation of training batches.
    pub augment: bool,
}

impl Default for DatasetSpec {
    fn default() -> Self {
        Self {
            kind: DatasetKind::Synthetic,
            data_dir: None,
            synthetic_train_size: 10_000,
            synthetic_test_size: 1_000,
            synthetic_seed: 0,
            augment: true,
        }
    }
}

impl DatasetSpec {
    /// Most images of either `synthetic` split (a hostile config must not make the generator
    /// allocate gigabytes; 200,000 images are 600 MB).
    pub const MAX_SYNTHETIC_SIZE: usize = 200_000;

    /// Check the `synthetic` sizes (real sets are checked by their readers).
    pub fn validate(&self) -> Result<(), SpecError> {
        for (field, size) in [
            ("synthetic_train_size", self.synthetic_train_size),
            ("synthetic_test_size", self.synthetic_test_size),
        ] {
            if size > Self::MAX_SYNTHETIC_SIZE {
                return Err(bad(field, format!("{size} > {}", Self::MAX_SYNTHETIC_SIZE)));
            }
        }
        Ok(())
    }
}

/// The class a targeted attack aims at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetClass {
    /// The label's successor, `(y + 1) mod classes`.
    Next,
    /// A fixed class for every image.
    Class(usize),
    /// Per image, the class with the k-th highest clean logit among the classes other than the
    /// label (k = 1: its strongest competitor), as APGD-T picks its targets.
    Ranked(usize),
}

impl fmt::Display for TargetClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetClass::Next => f.write_str("next"),
            TargetClass::Class(c) => write!(f, "{c}"),
            TargetClass::Ranked(k) => write!(f, "rank-{k}"),
        }
    }
}

impl FromStr for TargetClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "next" {
            return Ok(TargetClass::Next);
        }
        if let Some(k) = s.strip_prefix("rank-") {
            return match k.parse() {
                Ok(k) if k >= 1 => Ok(TargetClass::Ranked(k)),
                _ => Err(format!("target class {s:?}: rank-K needs K >= 1")),
            };
        }
        s.parse().map(TargetClass::Class).map_err(|_| {
            format!("target class {s:?}: expected \"next\", \"rank-K\" or a class index")
        })
    }
}

fn one() -> usize {
    1
}

/// An attack: algorithm, radius, steps, loss and target. Used by training (the inner
/// maximisation) and by evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttackSpec {
    /// Algorithm.
    #[serde(default = "AttackKind::default_kind")]
    pub kind: AttackKind,
    /// Radius of the ball (L∞ or L2 by `kind`), in [0, 1] pixel units (8/255 by default).
    pub eps: f32,
    /// Number of gradient steps (FGSM takes one).
    pub steps: usize,
    /// Step size in pixel units (APGD chooses its own, starting at 2ε).
    pub step_size: f32,
    /// Start from a uniformly random point in the ball.
    pub random_start: bool,
    /// Independent runs; the worst case per image is kept.
    #[serde(default = "one")]
    pub restarts: usize,
    /// What is maximised.
    #[serde(default = "AttackLoss::default_loss")]
    pub loss: AttackLoss,
    /// Which part of the MoE is attacked.
    #[serde(default = "AttackTarget::default_target")]
    pub target: AttackTarget,
    /// Aim at a class instead of away from the label.
    #[serde(default)]
    pub targeted: Option<TargetClass>,
    /// Differentiate through the straight-through gates on the `full` target, as the AdvMoE
    /// paper's released code does in its attacks (image router only: per-layer routers read a
    /// detached input). The default, `false`, holds the gates constant: the exact gradient of
    /// the hard-routed network, the stronger attack. Left out of the JSON when off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub through_gates: bool,
    /// β of the router term the AdvMoE paper's released evaluation adds on the `full` target:
    /// the value becomes the loss plus β times the cross-entropy of the routers' scores against
    /// the class partition (label mod the number of experts; averaged over per-layer routers),
    /// so the attack also pushes each image off the expert its class is assigned. The released
    /// code uses its TRADES β, 6, with [`AttackSpec::through_gates`]. 0, the default, adds
    /// nothing (dense models have no router to add); left out of the JSON when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub router_term: f32,
}

fn is_zero(x: &f32) -> bool {
    *x == 0.0
}

impl AttackKind {
    fn default_kind() -> Self {
        AttackKind::Pgd
    }

    /// The norm of the ball: `true` for L2, `false` for L∞.
    pub fn is_l2(self) -> bool {
        self == AttackKind::PgdL2
    }

    /// Whether the attack follows the objective's gradient (all but Square's random search).
    pub fn uses_gradient(self) -> bool {
        match self {
            AttackKind::Fgsm | AttackKind::Pgd | AttackKind::PgdL2 | AttackKind::Apgd => true,
            AttackKind::Square => false,
        }
    }

    /// The name reports and tables give it (e.g. `APGD`).
    pub fn title(self) -> &'static str {
        match self {
            AttackKind::Fgsm => "FGSM",
            AttackKind::Pgd => "PGD",
            AttackKind::PgdL2 => "PGD-L2",
            AttackKind::Apgd => "APGD",
            AttackKind::Square => "Square",
        }
    }

    /// The most steps a spec may ask for: 1,000 gradient steps, or 10,000 queries of Square
    /// (AutoAttack runs 5,000).
    pub fn max_steps(self) -> usize {
        if self.uses_gradient() { 1000 } else { 10_000 }
    }
}

impl AttackLoss {
    fn default_loss() -> Self {
        AttackLoss::Ce
    }
}

impl AttackTarget {
    fn default_target() -> Self {
        AttackTarget::Full
    }

    /// Whether the target exists only in an MoE (routers, or routes to freeze).
    pub fn needs_moe(self) -> bool {
        match self {
            AttackTarget::Full => false,
            AttackTarget::Router | AttackTarget::Expert => true,
        }
    }
}

/// Steps of [`AttackSpec::router_eval`].
const ROUTER_EVAL_STEPS: usize = 20;
/// Random starts of [`AttackSpec::router_eval`].
const ROUTER_EVAL_RESTARTS: usize = 2;

impl AttackSpec {
    /// The paper code's training attack: ε = 8/255, 2 steps of 5/255.
    pub fn paper_train() -> Self {
        Self {
            kind: AttackKind::Pgd,
            eps: 8.0 / 255.0,
            steps: 2,
            step_size: 5.0 / 255.0,
            random_start: true,
            restarts: 1,
            loss: AttackLoss::Ce,
            target: AttackTarget::Full,
            targeted: None,
            through_gates: false,
            router_term: 0.0,
        }
    }

    /// The paper code's evaluation attack: PGD-10 at ε = 8/255, step 2/255, uniform random start.
    pub fn paper_eval() -> Self {
        Self {
            steps: 10,
            step_size: 2.0 / 255.0,
            ..Self::paper_train()
        }
    }

    /// The router attack that router robustness is reported under (DESIGN §5): PGD-L∞ at
    /// ε = 8/255 on the margin of each router's best other expert over its clean route, 20
    /// steps of 2/255 from 2 uniform random starts, run once aimed at each router (the image
    /// router's one decision, or each per-layer router's), a route counted as flipped when any
    /// point any of these attacks reached flipped it. On the demo models
    /// (`docs/router-attack.md`, `advmoe eval --router-ladder`) twice the steps or twice the
    /// starts lowered router robustness by at most 0.5 points. The paper's attack (10 steps on
    /// the sum of the routers' KL, one start, routes read on its final image) overstated it by
    /// 20–40 points there.
    pub fn router_eval() -> Self {
        Self {
            steps: ROUTER_EVAL_STEPS,
            restarts: ROUTER_EVAL_RESTARTS,
            loss: AttackLoss::Cw,
            target: AttackTarget::Router,
            ..Self::paper_eval()
        }
    }

    /// The quick router attack of the live training curve: [`AttackSpec::router_eval`] with 5
    /// steps from one start (on the demo models it read 4–7 points above the converged figure).
    pub fn router_progress() -> Self {
        Self {
            steps: 5,
            restarts: 1,
            ..Self::router_eval()
        }
    }

    /// Ever stronger router attacks at `eps` (step ε/4), as steps × starts per router:
    /// 5 × 1, 10 × 1, 20 × 1, [`AttackSpec::router_eval`]'s 20 × 2, then twice its steps (40 × 2)
    /// and twice its starts (20 × 4). Router robustness that the last two no longer lower was
    /// measured under a converged attack.
    pub fn router_ladder(eps: f32) -> Vec<Self> {
        let base = Self {
            eps,
            step_size: eps / 4.0,
            ..Self::router_eval()
        };
        let (steps, starts) = (ROUTER_EVAL_STEPS, ROUTER_EVAL_RESTARTS);
        [
            (5, 1),
            (10, 1),
            (steps, 1),
            (steps, starts),
            (2 * steps, starts),
            (steps, 2 * starts),
        ]
        .into_iter()
        .map(|(steps, restarts)| Self {
            steps,
            restarts,
            ..base.clone()
        })
        .collect()
    }

    /// The one rule for an attack's defaults, used by the CLI and the attack lab: `steps`
    /// gradient steps (FGSM takes one; Square counts queries) of size 2.5·ε/steps, which for L∞
    /// is kept within [ε/4, ε] (2/255 for PGD-10 at 8/255; APGD and Square pick their own);
    /// the router target maximises KL, the others cross-entropy; a uniform random start, one
    /// restart, untargeted.
    pub fn with_defaults(kind: AttackKind, target: AttackTarget, eps: f32, steps: usize) -> Self {
        let steps = if kind == AttackKind::Fgsm {
            1
        } else {
            steps.max(1)
        };
        let step = 2.5 * eps / steps as f32;
        Self {
            kind,
            eps,
            steps,
            step_size: if kind.is_l2() {
                step
            } else {
                step.max(eps / 4.0).min(eps)
            },
            random_start: true,
            restarts: 1,
            loss: match target {
                AttackTarget::Router => AttackLoss::Kl,
                AttackTarget::Full | AttackTarget::Expert => AttackLoss::Ce,
            },
            target,
            targeted: None,
            through_gates: false,
            router_term: 0.0,
        }
    }

    /// The AdvMoE paper code's options this attack turns on, as reports name them: "through
    /// the gates" ([`AttackSpec::through_gates`]), "+ β × router CE"
    /// ([`AttackSpec::router_term`]). Empty for the product's own attacks.
    pub fn paper_options(&self) -> Vec<String> {
        let mut options = Vec::new();
        if self.through_gates {
            options.push("through the gates".to_owned());
        }
        if self.router_term > 0.0 {
            options.push(format!("+ {} × router CE", self.router_term));
        }
        options
    }

    /// Check every field and their combinations.
    pub fn validate(&self) -> Result<(), SpecError> {
        let max_eps = if self.kind.is_l2() { 64.0 } else { 1.0 };
        if !(self.eps.is_finite() && (0.0..=max_eps).contains(&self.eps)) {
            return Err(bad("eps", format!("{} not in [0, {max_eps}]", self.eps)));
        }
        if !(self.step_size.is_finite() && self.step_size >= 0.0) {
            return Err(bad("step_size", format!("{} is not >= 0", self.step_size)));
        }
        let max_steps = self.kind.max_steps();
        if self.steps > max_steps {
            return Err(bad(
                "attack steps",
                format!("{} > {max_steps} for {}", self.steps, self.kind),
            ));
        }
        if !(1..=100).contains(&self.restarts) {
            return Err(bad("restarts", format!("{} not in 1..=100", self.restarts)));
        }
        if self.target == AttackTarget::Router {
            // cw on the routers is the margin of the best other expert over the clean route
            // (the converged router attack, `router_eval`); dlr has no meaning there.
            if self.loss == AttackLoss::Dlr {
                return Err(bad(
                    "attack loss",
                    format!("the router target takes kl, ce or cw, not {}", self.loss),
                ));
            }
            if self.targeted.is_some() {
                return Err(bad("targeted", "the router target has no class to aim at"));
            }
        }
        if self.targeted.is_some() && self.loss == AttackLoss::Kl {
            return Err(bad(
                "targeted",
                "a targeted attack takes ce, cw or dlr, not kl",
            ));
        }
        if self.targeted == Some(TargetClass::Ranked(0)) {
            return Err(bad("targeted", "rank-K needs K >= 1"));
        }
        if self.through_gates && self.target != AttackTarget::Full {
            return Err(bad(
                "through_gates",
                format!("only the full target runs the gates, not {}", self.target),
            ));
        }
        if !(self.router_term.is_finite() && (0.0..=100.0).contains(&self.router_term)) {
            return Err(bad(
                "router_term",
                format!("{} not in [0, 100]", self.router_term),
            ));
        }
        if self.router_term > 0.0 && (self.target != AttackTarget::Full || self.targeted.is_some())
        {
            return Err(bad(
                "router_term",
                "the router term is added to an untargeted attack on the full target",
            ));
        }
        Ok(())
    }
}

/// `value` scaled by the fraction of a linear warm-up over the first `warmup` of a run done at
/// `progress` (`warmup` 0: `value` throughout).
pub fn warmed_up(value: f64, warmup: f64, progress: f64) -> f64 {
    if warmup > 0.0 {
        value * (progress / warmup).clamp(0.0, 1.0)
    } else {
        value
    }
}

fn six() -> f64 {
    6.0
}

fn one_f64() -> f64 {
    1.0
}

fn own_passes() -> BnPasses {
    BnPasses::Own
}

fn robust() -> RouterObjective {
    RouterObjective::Robust
}

/// Everything a training run needs besides the model spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// Training method.
    pub method: MethodKind,
    /// Optimiser.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD momentum (ignored by Adam).
    pub momentum: f64,
    /// L2 weight decay.
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: ScheduleKind,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Total optimiser steps of the run.
    pub total_steps: usize,
    /// Evaluate every this many steps (and at the end).
    pub eval_every: usize,
    /// Test images used by each evaluation during training (0: the whole test split).
    pub eval_size: usize,
    /// At each evaluation also measure robust accuracy and router robustness
    /// ([`AttackSpec::paper_eval`], PGD-10 at ε = 8/255) on this many test images (0: off).
    #[serde(default)]
    pub robust_eval_size: usize,
    /// Seed of weight init, shuffling, augmentation and attack starts.
    pub seed: u64,
    /// Training attack (the inner maximisation of every adversarial method).
    pub attack: AttackSpec,
    /// Weight β of the KL terms (TRADES, vanilla MoE AT, AdvMoE).
    #[serde(default = "six")]
    pub beta: f64,
    /// Weight α of the routers' KL(router(x) ‖ router(x_adv)) in AdvMoE's `class-partition`
    /// objective, `CE(router(x), y mod N) + α·KL` (as in the paper's released code).
    #[serde(default = "six")]
    pub alpha: f64,
    /// What AdvMoE's router step minimises.
    #[serde(default = "robust")]
    pub router_objective: RouterObjective,
    /// Fraction of the run over which α, the routers' KL weight of the `class-partition`
    /// objective, rises linearly from 0 (ours, not the released code's: 0 turns it off, and is
    /// what configs written before it had). The KL is measured on examples built to maximise
    /// it, and a router that has not yet learned its partition lowers it most by deciding the
    /// same for every image.
    #[serde(default)]
    pub router_kl_warmup: f64,
    /// AdvMoE's router optimiser steps at this multiple of the experts' learning rate, on the
    /// same schedule. 1 (the default, and what older configs read as) is the paper's released
    /// code, which gives both optimisers the same rate.
    #[serde(default = "one_f64")]
    pub router_lr_scale: f64,
    /// Which passes of an AdvMoE step fold their batch statistics ([`BnPasses`]; `own`, the
    /// default and what older configs read as, or the released script's).
    #[serde(default = "own_passes")]
    pub bn_passes: BnPasses,
    /// Opt-in recovery from a NaN or infinite loss: this many times, the run rolls back to its
    /// last checked state (weights, optimiser state, RNG), halves its learning rate, skips the
    /// batches that diverged, logs it and continues. 0 (the default, and what older configs
    /// read as) stops the run at the first one, still rolled back to the last checked state.
    #[serde(default)]
    pub nan_recoveries: usize,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            method: MethodKind::Standard,
            optimizer: OptimizerKind::Sgd,
            lr: 0.05,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: ScheduleKind::Cosine,
            batch_size: 64,
            total_steps: 300,
            eval_every: 100,
            eval_size: 500,
            robust_eval_size: 0,
            seed: 0,
            attack: AttackSpec::paper_train(),
            beta: 6.0,
            alpha: 6.0,
            router_objective: RouterObjective::Robust,
            router_kl_warmup: 0.5,
            router_lr_scale: 1.0,
            bn_passes: BnPasses::Own,
            nan_recoveries: 0,
        }
    }
}

impl TrainSpec {
    /// The AdvMoE paper's released configuration (DESIGN §4): `advmoe` with the image router's
    /// `class-partition` objective (router KL weight α = 6, experts' TRADES β = 6), the TRADES-2
    /// inner attack (ε 8/255, step 5/255), SGD with learning rate 0.1, momentum 0.9 and weight
    /// decay 5e-4, cosine schedule, batch 128. Ours on top: α warms up over the first half of the
    /// run (`router_kl_warmup` 0.5; 0 gives the released objective). Steps, evaluation and seed
    /// keep the defaults.
    pub fn paper() -> Self {
        Self {
            method: MethodKind::Advmoe,
            optimizer: OptimizerKind::Sgd,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: ScheduleKind::Cosine,
            batch_size: 128,
            attack: AttackSpec::paper_train(),
            beta: 6.0,
            alpha: 6.0,
            router_objective: RouterObjective::ClassPartition,
            ..Self::default()
        }
    }

    /// Check every field.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= 10.0) {
            return Err(bad("lr", format!("{} not in (0, 10]", self.lr)));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(bad("momentum", format!("{} not in [0, 1)", self.momentum)));
        }
        if !(self.weight_decay.is_finite() && (0.0..=1.0).contains(&self.weight_decay)) {
            return Err(bad(
                "weight_decay",
                format!("{} not in [0, 1]", self.weight_decay),
            ));
        }
        if !(1..=4096).contains(&self.batch_size) {
            return Err(bad(
                "batch_size",
                format!("{} not in 1..=4096", self.batch_size),
            ));
        }
        if self.total_steps == 0 {
            return Err(bad("steps", "a run needs at least one step"));
        }
        if self.eval_every == 0 {
            return Err(bad("eval_every", "must be at least 1"));
        }
        for (field, value) in [("beta", self.beta), ("alpha", self.alpha)] {
            if !(value.is_finite() && (0.0..=1000.0).contains(&value)) {
                return Err(bad(field, format!("{value} not in [0, 1000]")));
            }
        }
        if self.nan_recoveries > 100 {
            return Err(bad(
                "nan_recoveries",
                format!("{} > 100", self.nan_recoveries),
            ));
        }
        if !(self.router_lr_scale.is_finite()
            && self.router_lr_scale > 0.0
            && self.router_lr_scale <= 100.0)
        {
            return Err(bad(
                "router_lr_scale",
                format!("{} not in (0, 100]", self.router_lr_scale),
            ));
        }
        if !(0.0..=1.0).contains(&self.router_kl_warmup) {
            return Err(bad(
                "router_kl_warmup",
                format!("{} not in [0, 1]", self.router_kl_warmup),
            ));
        }
        if self.attack.targeted.is_some() {
            return Err(bad("attack", "training attacks are untargeted"));
        }
        self.attack.validate()
    }

    /// The routers' KL weight of the `class-partition` objective at `progress` (fraction of the
    /// run done): α, reached linearly over the first `router_kl_warmup` of the run.
    pub fn alpha_at(&self, progress: f64) -> f64 {
        warmed_up(self.alpha, self.router_kl_warmup, progress)
    }

    /// Learning rate at `step` (0-based) of `total_steps`.
    pub fn lr_at(&self, step: usize) -> f64 {
        let progress = step as f64 / self.total_steps.max(1) as f64;
        match self.schedule {
            ScheduleKind::Constant => self.lr,
            ScheduleKind::Cosine => 0.5 * self.lr * (1.0 + (std::f64::consts::PI * progress).cos()),
            ScheduleKind::Step => {
                let drops = [0.5, 0.75].iter().filter(|&&m| progress >= m).count();
                self.lr * 0.1f64.powi(drops as i32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_values_are_named() {
        for kind in MethodKind::ALL {
            assert_eq!(kind.as_str().parse::<MethodKind>().unwrap(), *kind);
        }
        assert_eq!(
            "per-layer".parse::<RouterKind>().unwrap(),
            RouterKind::PerLayer
        );
        let err = "resnet50".parse::<Arch>().unwrap_err();
        assert!(err.contains("resnet, vgg"), "{err}");
        let mut spec = ModelSpec::resnet(16, 1, 2, 0.5);
        spec.validate().unwrap();
        spec.ratio = 1.5;
        assert_eq!(spec.validate().unwrap_err().field, "ratio");
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"arch\":\"resnet\""), "{json}");
    }

    #[test]
    fn attack_specs_reject_impossible_combinations_and_old_configs_load() {
        let mut a = AttackSpec::paper_eval();
        a.validate().unwrap();
        a.target = AttackTarget::Router;
        a.loss = AttackLoss::Dlr;
        assert_eq!(a.validate().unwrap_err().field, "attack loss");
        // The margin over the clean route: the converged router attack's loss.
        a.loss = AttackLoss::Cw;
        a.validate().unwrap();
        a.loss = AttackLoss::Kl;
        a.validate().unwrap();
        a.target = AttackTarget::Full;
        a.targeted = Some(TargetClass::Next);
        assert_eq!(a.validate().unwrap_err().field, "targeted");
        a.loss = AttackLoss::Ce;
        a.validate().unwrap();
        a.eps = 2.0;
        assert_eq!(a.validate().unwrap_err().field, "eps");
        a.kind = AttackKind::PgdL2;
        a.validate().unwrap();
        assert_eq!("next".parse::<TargetClass>().unwrap(), TargetClass::Next);
        assert_eq!("3".parse::<TargetClass>().unwrap(), TargetClass::Class(3));
        assert_eq!(
            "rank-2".parse::<TargetClass>().unwrap(),
            TargetClass::Ranked(2)
        );
        assert_eq!(TargetClass::Ranked(2).to_string(), "rank-2");
        assert!("x".parse::<TargetClass>().is_err());
        assert!("rank-0".parse::<TargetClass>().is_err());
        a.loss = AttackLoss::Dlr;
        a.targeted = Some(TargetClass::Ranked(1));
        a.validate().unwrap();
        a.targeted = Some(TargetClass::Ranked(0));
        assert_eq!(a.validate().unwrap_err().field, "targeted");
        a.targeted = None;
        a.target = AttackTarget::Router;
        assert_eq!(a.validate().unwrap_err().field, "attack loss");
        // A training spec written before the adversarial methods existed still loads, with the
        // paper's defaults for the new fields.
        let old = r#"{"method":"pgd-at","optimizer":"sgd","lr":0.05,"momentum":0.9,
            "weight_decay":0.0005,"schedule":"cosine","batch_size":64,"total_steps":300,
            "eval_every":100,"eval_size":500,"seed":0,
            "attack":{"eps":0.03137255,"steps":2,"step_size":0.019607844,"random_start":true}}"#;
        let t: TrainSpec = serde_json::from_str(old).unwrap();
        assert_eq!(t.attack.kind, AttackKind::Pgd);
        assert_eq!((t.attack.restarts, t.beta, t.alpha), (1, 6.0, 6.0));
        assert_eq!(t.router_objective, RouterObjective::Robust);
        t.validate().unwrap();
    }

    #[test]
    fn the_router_kl_weight_warms_up_and_old_configs_keep_theirs() {
        let t = TrainSpec::paper();
        assert_eq!((t.alpha, t.router_kl_warmup), (6.0, 0.5));
        for (progress, alpha) in [(0.0, 0.0), (0.25, 3.0), (0.5, 6.0), (0.9, 6.0)] {
            assert!((t.alpha_at(progress) - alpha).abs() < 1e-12, "{progress}");
        }
        let off = TrainSpec {
            router_kl_warmup: 0.0,
            ..t.clone()
        };
        assert_eq!(off.alpha_at(0.0), 6.0);
        // A config written before the warm-up existed trains as it did: without it.
        let mut json = serde_json::to_value(&t).unwrap();
        json.as_object_mut().unwrap().remove("router_kl_warmup");
        let old: TrainSpec = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(old.router_kl_warmup, 0.0);
        let bad = TrainSpec {
            router_kl_warmup: 1.5,
            ..t.clone()
        };
        assert!(bad.validate().is_err());
        // The router's learning-rate multiple: older configs read 1 (the released code's), and
        // a multiple that is not a positive finite number up to 100 is refused by name.
        json.as_object_mut().unwrap().remove("router_lr_scale");
        // Which passes fold their batch statistics: older configs read `own`; the names are
        // those of the command line.
        json.as_object_mut().unwrap().remove("bn_passes");
        let old: TrainSpec = serde_json::from_value(json).unwrap();
        assert_eq!(old.router_lr_scale, 1.0);
        assert_eq!(old.bn_passes, BnPasses::Own);
        let released = TrainSpec {
            bn_passes: BnPasses::Released,
            ..t.clone()
        };
        let json = serde_json::to_value(&released).unwrap();
        assert_eq!(json["bn_passes"], "released");
        for scale in [0.0, -1.0, f64::NAN, 101.0] {
            let bad = TrainSpec {
                router_lr_scale: scale,
                ..t.clone()
            };
            assert_eq!(bad.validate().unwrap_err().field, "router_lr_scale");
        }
    }

    #[test]
    fn schedules_hit_their_landmarks() {
        let mut t = TrainSpec {
            lr: 0.1,
            total_steps: 100,
            ..TrainSpec::default()
        };
        assert!((t.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((t.lr_at(50) - 0.05).abs() < 1e-12);
        assert!(t.lr_at(99) < 0.001);
        t.schedule = ScheduleKind::Step;
        assert!((t.lr_at(49) - 0.1).abs() < 1e-12);
        assert!((t.lr_at(50) - 0.01).abs() < 1e-12);
        assert!((t.lr_at(80) - 0.001).abs() < 1e-12);
    }
}
