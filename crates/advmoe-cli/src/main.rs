//! `advmoe`: train, evaluate and inspect mixture-of-experts CNNs from the command line.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

mod adversarial;
mod bench;

use advmoe_core::{
    Arch, AttackSpec, DatasetKind, DatasetSpec, MethodKind, ModelSpec, OptimizerKind, RouterKind,
    RouterObjective, ScheduleKind, TrainSpec, count_macs,
};
use advmoe_engine::{DeviceChoice, Run, RunConfig, RunState, block_on, make_device};
use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Train and attack compact mixture-of-experts CNNs (AdvMoE, arXiv 2308.10110).
#[derive(Parser)]
#[command(name = "advmoe", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model and write DIR/config.json, DIR/model.safetensors, DIR/metrics.jsonl
    /// (plus optimizer.safetensors and run.json, so `--resume DIR` continues exactly).
    Train(Box<TrainArgs>),
    /// Evaluate a trained model on the test split: clean, and with `--attack` the whole
    /// robustness dissection (robust accuracy, router and expert robustness, route flips).
    Eval(adversarial::EvalArgs),
    /// Attack one test image and write the clean image, the amplified perturbation and the
    /// adversarial image as PNGs plus attack.json (predictions, confidences, routes).
    Attack(adversarial::AttackArgs),
    /// The AdvMoE paper's comparison: train dense TRADES (full and same-cost width), an MoE with
    /// vanilla MoE AT (without and with the balance term) and an MoE with AdvMoE, evaluate all
    /// with the same attacks, print a markdown table and write compare.json.
    Compare(Box<adversarial::CompareArgs>),
    /// Print the analytic inference cost (MACs) of an architecture.
    Macs(ModelArgs),
    /// Benchmarks, timed side by side in one run (`bench sparse-conv`).
    Bench {
        #[command(subcommand)]
        command: bench::BenchCommand,
    },
}

#[derive(Args, Clone)]
pub(crate) struct ModelArgs {
    /// Backbone: resnet or vgg.
    #[arg(long, default_value = "resnet")]
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
    /// Router kind: image (one router for all layers) or per-layer.
    #[arg(long, default_value = "image")]
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

#[derive(Args, Clone)]
pub(crate) struct DataArgs {
    /// Dataset: synthetic (built in), mnist, fashion-mnist, cifar10, cifar100 or image-folder
    /// (default: image-folder when --data is given, synthetic otherwise).
    #[arg(long)]
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

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Start from a named configuration: `paper` is the AdvMoE paper's released one (advmoe,
    /// class-partition router objective, SGD 0.1, batch 128). Flags given explicitly override it.
    #[arg(long)]
    preset: Option<adversarial::Preset>,
    /// Training method: standard, pgd-at, trades, moe-at or advmoe [default: standard; paper
    /// preset advmoe].
    #[arg(long)]
    method: Option<MethodKind>,
    /// Weight β of the KL terms (trades, moe-at, advmoe).
    #[arg(long, default_value_t = 6.0)]
    beta: f64,
    /// Weight α of the routers' KL(clean ‖ adversarial) in advmoe's class-partition objective
    /// CE(router, y mod N) + α·KL (the cross-entropy has weight 1, as in the released code).
    #[arg(long, default_value_t = 6.0)]
    alpha: f64,
    /// AdvMoE's router objective: robust (TRADES loss through the routers) or class-partition
    /// [default: robust; paper preset class-partition].
    #[arg(long)]
    router_objective: Option<RouterObjective>,
    /// Epochs over the training split (converted to steps).
    #[arg(long, conflicts_with = "steps")]
    epochs: Option<f64>,
    /// Optimiser steps (default: 300 when --epochs is not given).
    #[arg(long)]
    steps: Option<usize>,
    /// Mini-batch size [default: 64; paper preset 128].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Optimiser: sgd or adam.
    #[arg(long, default_value = "sgd")]
    optimizer: OptimizerKind,
    /// Peak learning rate [default: 0.05; paper preset 0.1].
    #[arg(long)]
    lr: Option<f64>,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// L2 weight decay.
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,
    /// Learning-rate schedule: cosine, step or constant.
    #[arg(long, default_value = "cosine")]
    schedule: ScheduleKind,
    /// Weight of the MoE load-balancing term (0: off). Measured on `synthetic`: 0.01 lets the
    /// image router collapse onto one expert; 1.0 keeps both experts in use.
    #[arg(long, default_value_t = 1.0)]
    balance_weight: f64,
    /// Training-attack radius of the adversarial methods (L∞, pixels in [0, 1]; fractions like
    /// 8/255 work).
    #[arg(long, default_value = "8/255", value_parser = parse_fraction)]
    attack_eps: f32,
    /// Training-attack steps.
    #[arg(long, default_value_t = 2)]
    attack_steps: usize,
    /// Training-attack step size.
    #[arg(long, default_value = "5/255", value_parser = parse_fraction)]
    attack_step_size: f32,
    /// Evaluate every this many steps (and at the end).
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    /// Test images per evaluation during training (0: the whole test split).
    #[arg(long, default_value_t = 1000)]
    eval_size: usize,
    /// Write a resumable checkpoint every this many steps (0: only at the end).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// Seed of weight init, shuffling, augmentation and attack starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device: cpu (Burn's flex backend) or gpu (wgpu: Vulkan, Metal, DX12).
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Output folder.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Continue the run checkpointed in this folder (other training flags are ignored).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Print each evaluation as one JSON line on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
}

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

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(args) => train(*args),
        Command::Eval(args) => adversarial::eval(args),
        Command::Attack(args) => adversarial::attack(args),
        Command::Compare(args) => adversarial::compare(*args),
        Command::Macs(args) => macs(args),
        Command::Bench { command } => bench::run(command),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}

pub(crate) fn load_dataset(spec: &DatasetSpec) -> anyhow::Result<advmoe_data::Dataset> {
    let spinner = ProgressBar::new_spinner().with_message(format!("loading {}", spec.kind));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let start = std::time::Instant::now();
    let dataset =
        advmoe_data::load(spec).with_context(|| format!("loading dataset {}", spec.kind))?;
    spinner.finish_and_clear();
    eprintln!(
        "dataset {} (loaded in {:.2} s): {} train / {} test images, {} channels, {}x{}, {} classes",
        spec.kind,
        start.elapsed().as_secs_f64(),
        dataset.train.len(),
        dataset.test.len(),
        dataset.train.channels,
        dataset.train.size[0],
        dataset.train.size[1],
        dataset.train.num_classes
    );
    Ok(dataset)
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let device = make_device(args.device);
    let (mut run, out) = if let Some(dir) = &args.resume {
        let config: RunConfig = serde_json::from_slice(
            &std::fs::read(dir.join("config.json"))
                .with_context(|| format!("reading {:?}", dir.join("config.json")))?,
        )
        .context("parsing config.json")?;
        let dataset = Arc::new(load_dataset(&config.data)?);
        let run = Run::resume_from(dir, dataset, &device)
            .with_context(|| format!("resuming from {dir:?}"))?;
        eprintln!(
            "resumed at step {} of {}",
            run.step_index(),
            config.train.total_steps
        );
        (run, dir.clone())
    } else {
        let data = args.data.spec();
        let dataset = Arc::new(load_dataset(&data)?);
        let start = match args.preset {
            Some(adversarial::Preset::Paper) => TrainSpec::paper(),
            None => TrainSpec {
                lr: 0.05,
                batch_size: 64,
                ..TrainSpec::default()
            },
        };
        let batch_size = args.batch_size.unwrap_or(start.batch_size);
        let steps_per_epoch = (dataset.train.len() / batch_size.max(1)).max(1);
        let total_steps = match (args.steps, args.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) if e > 0.0 => ((e * steps_per_epoch as f64).ceil() as usize).max(1),
            (None, Some(e)) => bail!("--epochs must be positive, got {e}"),
            (None, None) => 300,
        };
        let mut config = RunConfig {
            model: args.model.spec(),
            data,
            train: TrainSpec {
                method: args.method.unwrap_or(start.method),
                optimizer: args.optimizer,
                lr: args.lr.unwrap_or(start.lr),
                momentum: args.momentum,
                weight_decay: args.weight_decay,
                schedule: args.schedule,
                batch_size,
                total_steps,
                eval_every: args.eval_every,
                eval_size: args.eval_size,
                seed: args.seed,
                attack: AttackSpec {
                    eps: args.attack_eps,
                    steps: args.attack_steps,
                    step_size: args.attack_step_size,
                    ..AttackSpec::paper_train()
                },
                beta: args.beta,
                alpha: args.alpha,
                router_objective: args.router_objective.unwrap_or(start.router_objective),
            },
            balance_weight: args.balance_weight,
        };
        config.fit_to(&dataset);
        let run = Run::new(config, dataset, &device)?;
        std::fs::create_dir_all(&args.out).with_context(|| format!("creating {:?}", args.out))?;
        std::fs::remove_file(args.out.join("metrics.jsonl")).ok();
        (run, args.out.clone())
    };
    let config = run.config().clone();
    let macs = count_macs(&config.model);
    eprintln!(
        "model {} b={} d={} N={} r={} router={} method={} on {}: {:.4} GMACs per image ({:.4} with router, dense {:.4})",
        config.model.arch,
        config.model.width,
        config.model.depth,
        config.model.num_experts,
        config.model.ratio,
        config.model.router,
        config.train.method,
        args.device,
        macs.pathway as f64 / 1e9,
        macs.pathway_with_router as f64 / 1e9,
        macs.dense as f64 / 1e9,
    );

    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).ok();
    }
    let bar = ProgressBar::new(config.train.total_steps as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {per_sec}  eta {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(run.step_index() as u64);
    let metrics_path = out.join("metrics.jsonl");
    let mut last_loss = f64::NAN;
    while run.state() == RunState::Running {
        if interrupted.load(Ordering::SeqCst) {
            run.stop();
            break;
        }
        run.step()?;
        bar.inc(1);
        let step = run.step_index();
        if step % 10 == 0 || run.state() != RunState::Running {
            if let Some(&l) = block_on(run.drain_losses())?.last() {
                last_loss = l;
            }
            bar.set_message(format!("loss {last_loss:.4}"));
        }
        if run.eval_due() {
            let report = block_on(run.evaluate())?;
            let line = serde_json::to_string(&report)?;
            let mut file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&metrics_path)
                .with_context(|| format!("writing {metrics_path:?}"))?;
            writeln!(file, "{line}")?;
            if args.json {
                println!("{line}");
            }
            let summary = format!(
                "step {:>6}  loss {:.4}  test loss {:.4}  clean acc {:.2}%  load {}",
                report.step,
                report.loss,
                report.test_loss,
                100.0 * report.clean_acc,
                format_load(&report.expert_load)
            );
            if bar.is_hidden() {
                eprintln!("{summary}");
            } else {
                bar.println(summary);
            }
        }
        if args.checkpoint_every > 0
            && step % args.checkpoint_every == 0
            && run.state() == RunState::Running
        {
            block_on(run.save_checkpoint(&out))?;
        }
    }
    bar.finish_and_clear();
    block_on(run.save_checkpoint(&out))
        .with_context(|| format!("writing checkpoint to {out:?}"))?;
    let p = run.progress();
    match run.state() {
        RunState::Stopped => eprintln!(
            "stopped at step {} of {}; checkpoint in {out:?} (continue with --resume {out:?})",
            p.step, p.total_steps
        ),
        _ => eprintln!(
            "done: {} steps in {:.1} s ({:.1} steps/s); model in {out:?}",
            p.step,
            p.train_secs,
            p.step as f64 / p.train_secs.max(1e-9)
        ),
    }
    Ok(())
}

pub(crate) fn format_load(load: &[Vec<f64>]) -> String {
    match load.first() {
        None => "dense".to_string(),
        Some(first) => {
            let l: Vec<String> = first.iter().map(|f| format!("{:.0}%", 100.0 * f)).collect();
            format!("[{}] (layer 1 of {})", l.join(" "), load.len())
        }
    }
}

pub(crate) fn check_matches(
    config: &RunConfig,
    dataset: &advmoe_data::Dataset,
    dir: &Path,
) -> anyhow::Result<()> {
    config
        .check_dataset(dataset)
        .map_err(|e| anyhow::anyhow!("model in {dir:?}: {e}"))
}

fn macs(args: ModelArgs) -> anyhow::Result<()> {
    let spec = args.spec();
    spec.validate()?;
    let r = count_macs(&spec);
    println!("{}", serde_json::to_string_pretty(&r)?);
    Ok(())
}
