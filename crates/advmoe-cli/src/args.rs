//! Flags and helpers shared by several commands: the model, data, attack and worst-case flags,
//! the choice lists (generated from the core enums' `ALL`), fractions like `8/255`, progress
//! bars, dataset and model loading, Ctrl-C.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use advmoe_core::{
    Arch, AttackKind, AttackLoss, AttackSpec, AttackTarget, DatasetKind, DatasetSpec, ModelSpec,
    Named, RouterKind, TargetClass,
};
use advmoe_engine::robust::{NamedAttack, RobustOptions};
use advmoe_engine::{RunConfig, load_model_path};
use advmoe_model::MoeNet;
use anyhow::{Context as _, bail};
use clap::Args;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use indicatif::{ProgressBar, ProgressStyle};

/// The parser of a core enum's flag: its possible values are the enum's [`Named::ALL`], so
/// `--help` and the error for a wrong value list every choice, the newest included.
pub(crate) fn choice<T: Named + Send + Sync>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::ALL.iter().map(|v| v.name())).try_map(|name: String| {
        T::ALL
            .iter()
            .copied()
            .find(|v| v.name() == name)
            .ok_or_else(|| format!("unknown value {name:?}"))
    })
}

/// A number, or a fraction such as `8/255`.
pub(crate) fn parse_fraction(s: &str) -> Result<f32, String> {
    let value = match s.split_once('/') {
        Some((a, b)) => {
            let a: f32 = a.trim().parse().map_err(|_| format!("bad number {a:?}"))?;
            let b: f32 = b.trim().parse().map_err(|_| format!("bad number {b:?}"))?;
            if b == 0.0 {
                return Err("division by zero".into());
            }
            a / b
        }
        None => s.trim().parse().map_err(|_| format!("bad number {s:?}"))?,
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(format!("{s} is not finite"))
    }
}

/// The architecture flags of `train`, `compare` and `macs`.
#[derive(Args, Clone)]
pub(crate) struct ModelArgs {
    /// Backbone.
    #[arg(long, default_value = "resnet", value_parser = choice::<Arch>())]
    arch: Arch,
    /// Base width b (channels of the first stage).
    #[arg(long, default_value_t = 16)]
    width: usize,
    /// ResNet blocks per stage d (1: ResNet-10, 2: ResNet-18).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Number of experts N (1: dense model).
    #[arg(long, default_value_t = 2)]
    experts: usize,
    /// Expert width ratio r in (0, 1].
    #[arg(long, default_value_t = 0.5)]
    ratio: f64,
    /// Router kind: one router for all layers (image) or one per layer.
    #[arg(long, default_value = "image", value_parser = choice::<RouterKind>())]
    router: RouterKind,
}

impl ModelArgs {
    pub(crate) fn spec(&self) -> ModelSpec {
        ModelSpec {
            arch: self.arch,
            width: self.width,
            depth: self.depth,
            num_experts: self.experts,
            ratio: self.ratio,
            router: self.router,
            ..ModelSpec::resnet(16, 1, 2, 0.5)
        }
    }
}

/// The dataset flags of `train` and `compare`.
#[derive(Args, Clone)]
pub(crate) struct DataArgs {
    /// Dataset (default: image-folder when --data is given, synthetic otherwise).
    #[arg(long, value_parser = choice::<DatasetKind>())]
    dataset: Option<DatasetKind>,
    /// An image folder (train/<class>/*.png|jpg and test/<class>/*.png|jpg) or a .tar / .tar.gz
    /// of one, e.g. the shared CIFAR-10 archive cifar10-jpg.tar.gz.
    #[arg(long, conflicts_with = "data_dir")]
    data: Option<PathBuf>,
    /// Folder with the official dataset files (IDX for MNIST, binary version for CIFAR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Training images generated for `synthetic`.
    #[arg(long, default_value_t = 10_000)]
    train_size: usize,
    /// Test images generated for `synthetic`.
    #[arg(long, default_value_t = 1_000)]
    test_size: usize,
    /// Seed of the `synthetic` generator.
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    /// Turn off random-crop / flip augmentation.
    #[arg(long)]
    no_augment: bool,
}

impl DataArgs {
    pub(crate) fn spec(&self) -> DatasetSpec {
        let kind = self.dataset.unwrap_or(if self.data.is_some() {
            DatasetKind::ImageFolder
        } else {
            DatasetKind::Synthetic
        });
        DatasetSpec {
            kind,
            data_dir: self
                .data
                .as_ref()
                .or(self.data_dir.as_ref())
                .map(|p| p.to_string_lossy().into_owned()),
            synthetic_train_size: self.train_size,
            synthetic_test_size: self.test_size,
            synthetic_seed: self.data_seed,
            augment: !self.no_augment,
        }
    }
}

/// Named starting points of `train` and `compare`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Preset {
    /// The AdvMoE paper's released configuration.
    Paper,
}

/// Attack flags shared by `eval`, `attack` and `compare`.
#[derive(Args, Clone)]
pub(crate) struct AttackFlags {
    /// Radius (L∞ for every attack but pgd-l2, L2 for pgd-l2), pixels in [0, 1]; fractions
    /// work.
    #[arg(long, default_value = "8/255", value_parser = parse_fraction)]
    pub(crate) eps: f32,
    /// Gradient steps (fgsm takes one; for square, queries per image).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Step size (default: 2.5·ε/steps, for L∞ kept within [ε/4, ε], so 2/255 for PGD-10 at
    /// 8/255; apgd and square pick their own).
    #[arg(long, value_parser = parse_fraction)]
    step_size: Option<f32>,
    /// Random restarts; the worst case per image is kept.
    #[arg(long, default_value_t = 1)]
    restarts: usize,
    /// Loss maximised on the logits.
    #[arg(long, default_value = "ce", value_parser = choice::<AttackLoss>())]
    loss: AttackLoss,
    /// Loss of the router attack: the attack's own with --target router (default kl, on every
    /// router at once), the dissection's router attack otherwise (default cw, the margin, aimed
    /// at each router).
    #[arg(long, value_parser = choice::<AttackLoss>())]
    router_loss: Option<AttackLoss>,
    /// Start at the clean image instead of a random point in the ball.
    #[arg(long)]
    no_random_start: bool,
    /// Targeted attack: "next" (label + 1) or a class index.
    #[arg(long)]
    targeted: Option<TargetClass>,
    /// Differentiate the attack on the full target through the straight-through gates, as the
    /// AdvMoE paper's released code does (image router only). A weaker attack than the default
    /// (the exact gradient, gates held constant): use it to compare with figures measured that
    /// way, not as a robustness figure.
    #[arg(long)]
    through_gates: bool,
    /// Add BETA times the routers' cross-entropy against the class partition (label mod the
    /// number of experts) to the full target's loss, as the AdvMoE paper's released evaluation
    /// does (with --through-gates and BETA = 6). Like --through-gates, it reproduces that
    /// measurement; it is not the product's robustness figure.
    #[arg(long, value_name = "BETA", default_value_t = 0.0)]
    router_term: f32,
}

impl AttackFlags {
    /// The attack these flags describe, from [`AttackSpec::with_defaults`].
    pub(crate) fn spec(
        &self,
        kind: AttackKind,
        target: AttackTarget,
    ) -> anyhow::Result<AttackSpec> {
        let defaults = AttackSpec::with_defaults(kind, target, self.eps, self.steps);
        let spec = AttackSpec {
            step_size: self.step_size.unwrap_or(defaults.step_size),
            random_start: !self.no_random_start,
            restarts: self.restarts,
            loss: if target == AttackTarget::Router {
                self.router_loss.unwrap_or(defaults.loss)
            } else {
                self.loss
            },
            targeted: self.targeted,
            through_gates: self.through_gates,
            router_term: self.router_term,
            ..defaults
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The loss of the dissection's router attack (`eval`, `compare`, the router ladder).
    pub(crate) fn dissection_router_loss(&self) -> AttackLoss {
        self.router_loss.unwrap_or(AttackSpec::router_eval().loss)
    }

    /// The dissection's options: `kind` on the full and expert targets, and `router`'s attack
    /// on the routers, all at --eps.
    pub(crate) fn robust_options(
        &self,
        kind: AttackKind,
        router: &RouterAttackFlags,
    ) -> anyhow::Result<RobustOptions> {
        let attack = self.spec(kind, AttackTarget::Full)?;
        let router_attack = AttackSpec {
            eps: self.eps,
            step_size: self.eps / 4.0,
            steps: router.router_steps,
            restarts: router.router_restarts,
            loss: self.dissection_router_loss(),
            ..AttackSpec::router_eval()
        };
        router_attack.validate()?;
        Ok(RobustOptions {
            attack,
            router_attack,
            ..RobustOptions::default()
        })
    }
}

/// The router attack of the dissection (`eval --attack`, `compare`): PGD on the routers at --eps
/// with step ε/4 and --router-loss, run once aimed at each router. The defaults are where more
/// steps and restarts stopped lowering router robustness on the demo models
/// (`eval --router-ladder` shows it for a model).
#[derive(Args, Clone)]
pub(crate) struct RouterAttackFlags {
    /// Steps of the router attack, per router.
    #[arg(long, default_value_t = AttackSpec::router_eval().steps)]
    router_steps: usize,
    /// Random starts of the router attack, per router; a route counts as flipped if any point
    /// any start reached flips it.
    #[arg(long, default_value_t = AttackSpec::router_eval().restarts)]
    router_restarts: usize,
}

/// The worst-case evaluation and the forced-route bound, shared by `eval` and `compare`.
#[derive(Args, Clone)]
pub(crate) struct WorstCaseFlags {
    /// Also run AutoAttack's white-box pair at --eps (APGD-CE, and targeted APGD-DLR against
    /// each of the 9 classes the clean image ranks highest after its label) and report the
    /// per-image worst case over them and --attack as the robust accuracy.
    #[arg(long)]
    worst_case: bool,
    /// Iterations of each worst-case attack.
    #[arg(long, default_value_t = 100)]
    worst_case_steps: usize,
    /// Add AutoAttack's black-box check to the worst case: the Square Attack on the margin loss
    /// with this many queries per image (AutoAttack: 5000).
    #[arg(long, requires = "worst_case")]
    worst_case_square: Option<usize>,
    /// Also measure MoE models with every route forced to the class partition (y mod N) and the
    /// same attacks aimed at the experts through those routes: what a router that always routed
    /// by the partition, and that no attack could turn, would give. Split by whether the model's
    /// own router sends the image there, with the clean accuracy of every route shifted to the
    /// next expert, (y + 1) mod N. The route is chosen from the label, so this is a bound, not a
    /// classifier.
    #[arg(long)]
    pub(crate) partition_routes: bool,
    /// Also record whether each test image was right clean, under the RA attack and under the
    /// worst case (`per_image` in the JSON, a '1' or '0' per image), so that two models measured
    /// on the same images can be compared image by image: `compare` then adds their paired
    /// differences, with standard errors and McNemar's exact test, to `compare.md`.
    #[arg(long)]
    pub(crate) per_image: bool,
}

impl WorstCaseFlags {
    /// Whether a flag that measures under attack was given (`eval` needs --attack for them;
    /// `compare` always has one).
    pub(crate) fn needs_attack(&self) -> bool {
        self.worst_case || self.partition_routes || self.per_image
    }

    /// The further attacks asked for, beside `kind` at `eps` on a model of `classes` classes.
    pub(crate) fn attacks(
        &self,
        kind: AttackKind,
        eps: f32,
        classes: usize,
    ) -> anyhow::Result<Vec<NamedAttack>> {
        if !self.worst_case {
            return Ok(Vec::new());
        }
        if kind.is_l2() {
            bail!("--worst-case attacks in the L∞ ball; --attack pgd-l2 measures L2");
        }
        Ok(NamedAttack::worst_case(
            eps,
            self.worst_case_steps,
            classes,
            self.worst_case_square,
        )?)
    }
}

/// A progress bar of `len` units called `what`.
pub(crate) fn progress_bar(len: usize, what: &str) -> ProgressBar {
    ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template(&format!("{{bar:30}} {{pos}}/{{len}} {what}  eta {{eta}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

/// A fraction as a percentage, or "n/a (dense)" for a metric a dense model lacks.
pub(crate) fn pct(v: Option<f64>) -> String {
    v.map_or_else(
        || "n/a (dense)".to_string(),
        |v| format!("{:.2}%", 100.0 * v),
    )
}

/// The first MoE layer's expert load, e.g. `[48% 52%] (layer 1 of 8)`.
pub(crate) fn format_load(load: &[Vec<f64>]) -> String {
    match load.first() {
        None => "dense".to_string(),
        Some(first) => {
            let l: Vec<String> = first.iter().map(|f| format!("{:.0}%", 100.0 * f)).collect();
            format!("[{}] (layer 1 of {})", l.join(" "), load.len())
        }
    }
}

/// Load the dataset `spec` names, with a spinner and a one-line summary.
pub(crate) fn load_dataset(spec: &DatasetSpec) -> anyhow::Result<advmoe_data::Dataset> {
    let spinner = ProgressBar::new_spinner().with_message(format!("loading {}", spec.kind));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let start = std::time::Instant::now();
    let dataset =
        advmoe_data::load(spec).with_context(|| format!("loading dataset {}", spec.kind))?;
    spinner.finish_and_clear();
    describe_dataset(spec.kind, start.elapsed().as_secs_f64(), &dataset);
    Ok(dataset)
}

/// The one-line summary of a loaded dataset, on stderr.
pub(crate) fn describe_dataset(kind: DatasetKind, secs: f64, dataset: &advmoe_data::Dataset) {
    let (train, test) = (&dataset.train, &dataset.test);
    eprintln!(
        "dataset {kind} (loaded in {secs:.2} s): {} train / {} test images, {} channels, {}x{}, {} classes",
        train.len(),
        test.len(),
        train.channels,
        train.size[0],
        train.size[1],
        train.num_classes
    );
}

/// Load a model folder (or downloaded pair) onto `device` and its dataset (from `data_dir`
/// when given), and check that they fit each other.
pub(crate) fn load_model_and_data(
    dir: &Path,
    data_dir: Option<&Path>,
    device: &burn::tensor::Device,
) -> anyhow::Result<(RunConfig, MoeNet, advmoe_data::Dataset)> {
    let (mut config, model) =
        load_model_path(dir, device).with_context(|| format!("loading model from {dir:?}"))?;
    if let Some(data_dir) = data_dir {
        config.data.data_dir = Some(data_dir.to_string_lossy().into_owned());
    }
    let dataset = load_dataset(&config.data)?;
    config
        .check_dataset(&dataset)
        .with_context(|| format!("model in {dir:?}"))?;
    Ok((config, model, dataset))
}

/// A flag that Ctrl-C (or SIGTERM, or SIGHUP) sets: long commands stop cleanly after the step (or
/// `compare`'s evaluation batch) in progress and save what they have. A second one ends the
/// process at once (`eval`'s evaluation, which does not stop, can take half an hour on the CPU).
pub(crate) fn interrupt_flag() -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\ninterrupted again: quitting without saving");
            std::process::exit(130);
        }
        eprintln!(
            "\ninterrupted: saving after the step or batch in progress (again to quit at once)"
        );
    })
    .ok();
    interrupted
}
