//! `advmoe eval`, `advmoe attack` and `advmoe compare`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use advmoe_core::{
    AttackKind, AttackLoss, AttackSpec, AttackTarget, MethodKind, OptimizerKind, RouterObjective,
    ScheduleKind, TargetClass, TrainSpec, count_macs,
};
use advmoe_engine::compare::{CompareEvent, compare_entries, markdown_table, run_comparison};
use advmoe_engine::eval::{EvalOptions, evaluate};
use advmoe_engine::robust::{NamedAttack, RobustOptions, RobustReport, evaluate_robust};
use advmoe_engine::run::load_model_path;
use advmoe_engine::tensors::to_device;
use advmoe_engine::{DeviceChoice, RunConfig, attack_image, block_on, make_device};
use advmoe_model::MoeNet;
use anyhow::{Context as _, bail};
use burn::module::Module as _;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::{DataArgs, ModelArgs, check_matches, format_load, load_dataset, parse_fraction};

/// Attack flags shared by `eval`, `attack` and `compare`.
#[derive(Args, Clone)]
pub(crate) struct AttackFlags {
    /// Radius (L∞ for fgsm, pgd, apgd, square; L2 for pgd-l2), pixels in [0, 1]; fractions work.
    #[arg(long, default_value = "8/255", value_parser = parse_fraction)]
    eps: f32,
    /// Gradient steps (fgsm takes one; for square, queries per image).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Step size (default: 2/255 for L∞ attacks, 2.5·ε/steps for pgd-l2; apgd picks its own).
    #[arg(long, value_parser = parse_fraction)]
    step_size: Option<f32>,
    /// Random restarts; the worst case per image is kept.
    #[arg(long, default_value_t = 1)]
    restarts: usize,
    /// Loss maximised on the logits: ce, cw or kl.
    #[arg(long, default_value = "ce")]
    loss: AttackLoss,
    /// Loss of the router attack: kl or ce.
    #[arg(long, default_value = "kl")]
    router_loss: AttackLoss,
    /// Start at the clean image instead of a random point in the ball.
    #[arg(long)]
    no_random_start: bool,
    /// Targeted attack: "next" (label + 1) or a class index.
    #[arg(long)]
    targeted: Option<TargetClass>,
}

impl AttackFlags {
    fn spec(&self, kind: AttackKind, target: AttackTarget) -> anyhow::Result<AttackSpec> {
        let step_size = self.step_size.unwrap_or(if kind.is_l2() {
            2.5 * self.eps / self.steps.max(1) as f32
        } else {
            2.0 / 255.0
        });
        let spec = AttackSpec {
            kind,
            eps: self.eps,
            steps: if kind == AttackKind::Fgsm {
                1
            } else {
                self.steps
            },
            step_size,
            random_start: !self.no_random_start,
            restarts: self.restarts,
            loss: if target == AttackTarget::Router {
                self.router_loss
            } else {
                self.loss
            },
            target,
            targeted: self.targeted,
        };
        spec.validate()?;
        Ok(spec)
    }

    fn robust_options(&self, kind: AttackKind) -> anyhow::Result<RobustOptions> {
        let attack = self.spec(kind, AttackTarget::Full)?;
        self.spec(kind, AttackTarget::Router)?;
        Ok(RobustOptions {
            attack,
            router_loss: self.router_loss,
            ..RobustOptions::default()
        })
    }
}

/// The worst-case evaluation, shared by `eval` and `compare`.
#[derive(Args, Clone)]
pub(crate) struct WorstCaseFlags {
    /// Also run AutoAttack's white-box pair at --eps (APGD-CE, and targeted APGD-DLR against
    /// each of the 9 classes the clean image ranks highest after its label) and report the
    /// per-image worst case over them and --attack as the robust accuracy.
    #[arg(long, requires = "attack")]
    worst_case: bool,
    /// Iterations of each worst-case attack.
    #[arg(long, default_value_t = 100)]
    worst_case_steps: usize,
    /// Add AutoAttack's black-box check to the worst case: the Square Attack on the margin loss
    /// with this many queries per image (AutoAttack: 5000).
    #[arg(long, requires = "worst_case")]
    worst_case_square: Option<usize>,
}

impl WorstCaseFlags {
    /// The further attacks asked for, beside `kind` at `eps` on a model of `classes` classes.
    fn attacks(
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

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// Folder written by `advmoe train`, or a model pair the web app downloaded (either of
    /// `<name>.safetensors` / `<name>.json`).
    #[arg(long)]
    model: PathBuf,
    /// Device: cpu or gpu.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Read the model's real dataset from this folder (or image-folder archive) instead of the
    /// path in its config.
    #[arg(long, alias = "data")]
    data_dir: Option<PathBuf>,
    /// Evaluate only the first N test images (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    /// Images per batch (default: 250 clean, 100 under attack).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Attack algorithm: fgsm, pgd, pgd-l2 or apgd. Without it only clean accuracy is measured.
    #[arg(long)]
    attack: Option<AttackKind>,
    #[command(flatten)]
    flags: AttackFlags,
    /// Radii of the ε-curves, comma separated (e.g. 1/255,2/255,4/255,8/255).
    #[arg(long, value_delimiter = ',', value_parser = parse_fraction)]
    eps_sweep: Vec<f32>,
    /// Seed of the attacks' random starts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    worst: WorstCaseFlags,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn progress_bar(len: usize, what: &str) -> ProgressBar {
    ProgressBar::new(len as u64).with_style(
        ProgressStyle::with_template(&format!("{{bar:30}} {{pos}}/{{len}} {what}  eta {{eta}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    )
}

fn pct(v: Option<f64>) -> String {
    v.map_or_else(
        || "n/a (dense)".to_string(),
        |v| format!("{:.2}%", 100.0 * v),
    )
}

/// Load a model folder onto `device` and its dataset (from `data_dir` when given), and check
/// that they fit each other.
fn load_model_and_data(
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
    check_matches(&config, &dataset, dir)?;
    Ok((config, model, dataset))
}

pub(crate) fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let device = make_device(args.device);
    let (config, model, dataset) =
        load_model_and_data(&args.model, args.data_dir.as_deref(), &device)?;
    let macs = count_macs(&config.model);
    let started = std::time::Instant::now();
    let result = block_on(evaluate(
        &model,
        &dataset.test,
        &EvalOptions {
            batch_size: args.batch_size.unwrap_or(250),
            limit: args.limit,
            ..EvalOptions::default()
        },
        &device,
    ))?;
    let clean_secs = started.elapsed().as_secs_f64();
    let mut json = serde_json::json!({
        "model": args.model,
        "device": args.device,
        "dataset": config.data.kind,
        "images": result.images,
        "clean_acc": result.clean_acc,
        "test_loss": result.test_loss,
        "macs_pathway": macs.pathway,
        "macs_pathway_with_router": macs.pathway_with_router,
        "macs_all_experts": macs.all_experts,
        "macs_dense": macs.dense,
        "moe_layers": macs.moe_layers,
        "expert_load": result.expert_load,
        "eval_secs": clean_secs,
        "images_per_sec": result.images as f64 / clean_secs.max(1e-9),
    });
    let robust = match args.attack {
        None => None,
        Some(kind) => {
            let options = RobustOptions {
                eps_sweep: args.eps_sweep.clone(),
                batch_size: args.batch_size.unwrap_or(100),
                limit: args.limit,
                seed: args.seed,
                worst_case: args
                    .worst
                    .attacks(kind, args.flags.eps, config.model.num_classes)?,
                ..args.flags.robust_options(kind)?
            };
            let bar = progress_bar(result.images, "images attacked");
            let model = model.fork(&device.clone().autodiff());
            let report = block_on(evaluate_robust(
                &model,
                &dataset.test,
                &options,
                &device,
                &mut |done, _| bar.set_position(done as u64),
            ))?;
            bar.finish_and_clear();
            Some(report)
        }
    };
    if let (Some(report), Some(obj)) = (&robust, json.as_object_mut()) {
        let extra = serde_json::to_value(report)?;
        if let Some(extra) = extra.as_object() {
            for (k, v) in extra {
                if k != "expert_load" {
                    obj.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if args.json {
        println!("{json}");
        return Ok(());
    }
    println!(
        "{}: clean accuracy {:.2}% on {} test images ({:.0} images/s on {})",
        args.model.display(),
        100.0 * result.clean_acc,
        result.images,
        result.images as f64 / clean_secs.max(1e-9),
        args.device
    );
    println!(
        "cost: {:.4} GMACs per image ({:.4} with router; all experts {:.4}; dense {:.4})",
        macs.pathway as f64 / 1e9,
        macs.pathway_with_router as f64 / 1e9,
        macs.all_experts as f64 / 1e9,
        macs.dense as f64 / 1e9
    );
    for (i, layer) in result.expert_load.iter().enumerate() {
        let l: Vec<String> = layer
            .iter()
            .map(|f| format!("{:5.1}%", 100.0 * f))
            .collect();
        println!("MoE layer {:>2}: {}", i + 1, l.join(" "));
    }
    if let Some(r) = &robust {
        print_robust(r);
    }
    Ok(())
}

fn print_robust(r: &RobustReport) {
    let a = &r.attack;
    println!(
        "attack {} ε={:.4} steps={} step={:.4} restarts={} loss={}{}:",
        a.kind,
        a.eps,
        a.steps,
        a.step_size,
        a.restarts,
        a.loss,
        a.targeted
            .map_or(String::new(), |t| format!(" targeted={t}"))
    );
    println!("  robust accuracy     {:.2}%", 100.0 * r.robust_acc);
    if let Some(w) = &r.worst_case {
        let names: Vec<&str> = w.each.iter().map(|(name, _)| name.as_str()).collect();
        println!(
            "  worst case (RA)     {:.2}%  (per image, over {})",
            100.0 * w.robust_acc,
            names.join(", ")
        );
        for (name, acc) in &w.each {
            println!("    {name:<28} {:.2}%", 100.0 * acc);
        }
    }
    println!("  route flips (full)  {}", pct(r.route_flip_rate));
    println!("  router robustness   {}", pct(r.router_robustness));
    println!("  expert robustness   {}", pct(r.expert_robustness));
    for p in &r.sweep {
        println!(
            "  ε={:.4}: robust {:.2}%  route flips {}  router robustness {}",
            p.eps,
            100.0 * p.robust_acc,
            pct(p.route_flip_rate),
            pct(p.router_robustness)
        );
    }
    println!("  ({} images, {:.1} s)", r.images, r.secs);
}

#[derive(Args)]
pub(crate) struct AttackArgs {
    /// Folder written by `advmoe train`, or a model pair the web app downloaded (either of
    /// `<name>.safetensors` / `<name>.json`).
    #[arg(long)]
    model: PathBuf,
    /// Index of the test image.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// Attack algorithm: fgsm, pgd, pgd-l2 or apgd.
    #[arg(long, default_value = "pgd")]
    attack: AttackKind,
    /// Target: full (whole MoE), router (routing only) or expert (routes frozen).
    #[arg(long, default_value = "full")]
    target: AttackTarget,
    #[command(flatten)]
    flags: AttackFlags,
    /// Nearest-neighbour upscaling of the PNGs.
    #[arg(long, default_value_t = 4)]
    scale: usize,
    /// Read the model's real dataset from this folder (or image-folder archive) instead of the
    /// path in its config.
    #[arg(long, alias = "data")]
    data_dir: Option<PathBuf>,
    /// Device: cpu or gpu.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Seed of the random start.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder.
    #[arg(long, default_value = "runs/attack")]
    out: PathBuf,
}

pub(crate) fn attack(args: AttackArgs) -> anyhow::Result<()> {
    let device = make_device(args.device).autodiff();
    let (config, model, dataset) =
        load_model_and_data(&args.model, args.data_dir.as_deref(), &device)?;
    let test = &dataset.test;
    if args.index >= test.len() {
        bail!(
            "--index {} is out of range: the test split has {} images",
            args.index,
            test.len()
        );
    }
    if args.target != AttackTarget::Full && !config.model.is_moe() {
        bail!(
            "the {} target needs an MoE model; this one is dense",
            args.target
        );
    }
    let spec = args.flags.spec(args.attack, args.target)?;
    let host = test.batch(args.index, args.index + 1);
    let label = usize::from(host.labels[0]);
    let batch = to_device(&host, config.model.num_classes, &device);
    let result = block_on(attack_image(&model, batch.images, label, &spec, args.seed))?;
    let [c, h, w] = result.shape;
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {:?}", args.out))?;
    for (name, values) in [
        ("clean.png", &result.clean_pixels),
        ("perturbation.png", &result.perturbation_pixels()),
        ("adversarial.png", &result.adversarial_pixels),
    ] {
        let path = args.out.join(name);
        write_png(&path, values, c, h, w, args.scale.max(1))
            .with_context(|| format!("writing {path:?}"))?;
    }
    let mut json = serde_json::json!({
        "model": args.model,
        "index": args.index,
        "label": label,
        "attack": spec,
        "linf": result.linf,
        "l2": result.l2,
        "clean": result.clean,
        "adversarial": result.adversarial,
        "files": ["clean.png", "perturbation.png", "adversarial.png"],
        "perturbation_png": "0.5 + 0.5 * delta / eps (gray = unchanged); for pgd-l2, scaled by the largest |delta|",
    });
    if let (Some(frozen), Some(obj)) = (&result.adversarial_with_clean_routes, json.as_object_mut())
    {
        obj.insert(
            "adversarial_with_clean_routes".into(),
            serde_json::to_value(frozen)?,
        );
    }
    let path = args.out.join("attack.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&json)?)
        .with_context(|| format!("writing {path:?}"))?;
    println!("{json}");
    Ok(())
}

/// Write a `[c, h, w]` image with values in [0, 1] as an 8-bit gray (c = 1) or RGB PNG,
/// upscaled `scale` times.
fn write_png(
    path: &Path,
    values: &[f32],
    c: usize,
    h: usize,
    w: usize,
    scale: usize,
) -> anyhow::Result<()> {
    let (sh, sw) = (h * scale, w * scale);
    let out_channels = if c == 1 { 1 } else { 3 };
    let mut pixels = Vec::with_capacity(sh * sw * out_channels);
    for y in 0..sh {
        for x in 0..sw {
            for ch in 0..out_channels {
                let v = values[(ch.min(c - 1) * h + y / scale) * w + x / scale];
                pixels.push((v.clamp(0.0, 1.0) * 255.0).round() as u8);
            }
        }
    }
    let file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut encoder = png::Encoder::new(file, sw as u32, sh as u32);
    encoder.set_color(if c == 1 {
        png::ColorType::Grayscale
    } else {
        png::ColorType::Rgb
    });
    encoder.set_depth(png::BitDepth::Eight);
    encoder.write_header()?.write_image_data(&pixels)?;
    Ok(())
}

#[derive(Args)]
pub(crate) struct CompareArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Start from a named configuration: `paper` is the AdvMoE paper's released one (image
    /// router, class-partition router objective with α = β = 6, TRADES-2 inner attack, SGD 0.1
    /// with momentum 0.9 and weight decay 5e-4, cosine, batch 128, balance 0.1 for
    /// moe-at-balanced). Flags given explicitly override it.
    #[arg(long)]
    preset: Option<Preset>,
    /// Optimiser steps of every model (`--steps` is the evaluation attack's).
    #[arg(long, default_value_t = 200)]
    train_steps: usize,
    /// Mini-batch size [default: 32; paper preset 128].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate (SGD, momentum 0.9, weight decay 5e-4, cosine schedule) [default:
    /// 0.05; paper preset 0.1].
    #[arg(long)]
    lr: Option<f64>,
    /// Weight of the balance term for `moe-at-balanced` and `advmoe` (0: leave it out)
    /// [default: 1; paper preset 0.1].
    #[arg(long)]
    balance_weight: Option<f64>,
    /// Weight β of the KL terms.
    #[arg(long, default_value_t = 6.0)]
    beta: f64,
    /// AdvMoE's router objective: robust or class-partition [default: robust; paper preset
    /// class-partition].
    #[arg(long)]
    router_objective: Option<RouterObjective>,
    /// Training-attack steps (of 5/255 each, ε = 8/255).
    #[arg(long, default_value_t = 2)]
    train_attack_steps: usize,
    /// Record clean accuracy and expert load on the evaluation subset every this many steps
    /// (the training curves in compare.json; default: only at the end).
    #[arg(long)]
    eval_every: Option<usize>,
    /// Evaluation attack: fgsm, pgd, pgd-l2 or apgd.
    #[arg(long, default_value = "pgd")]
    attack: AttackKind,
    #[command(flatten)]
    flags: AttackFlags,
    #[command(flatten)]
    worst: WorstCaseFlags,
    /// Test images evaluated per model (0: all).
    #[arg(long, default_value_t = 500)]
    eval_size: usize,
    /// Extra radii for the ε-curves of every model, comma separated (fractions work).
    #[arg(long, value_delimiter = ',', value_parser = parse_fraction)]
    eps_sweep: Vec<f32>,
    /// Only these models, comma separated, trained in this order (dense-full-trades,
    /// dense-same-cost-trades, moe-at, moe-at-balanced, advmoe); default: all, in that order.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Device: cpu or gpu.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Output folder: one sub-folder per model, compare.json and compare.md.
    #[arg(long, default_value = "runs/compare")]
    out: PathBuf,
    /// Print the JSON on stdout instead of the table.
    #[arg(long)]
    json: bool,
}

/// Named starting points of `train` and `compare`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum Preset {
    /// The AdvMoE paper's released configuration.
    Paper,
}

pub(crate) fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let device = make_device(args.device);
    let data = args.data.spec();
    let dataset = Arc::new(load_dataset(&data)?);
    let paper = matches!(args.preset, Some(Preset::Paper));
    let start = if paper {
        TrainSpec::paper()
    } else {
        TrainSpec {
            lr: 0.05,
            batch_size: 32,
            router_objective: RouterObjective::Robust,
            ..TrainSpec::default()
        }
    };
    let mut base = RunConfig {
        model: args.model.spec(),
        data,
        train: TrainSpec {
            method: MethodKind::MoeAt,
            optimizer: OptimizerKind::Sgd,
            lr: args.lr.unwrap_or(start.lr),
            schedule: ScheduleKind::Cosine,
            batch_size: args.batch_size.unwrap_or(start.batch_size),
            total_steps: args.train_steps,
            eval_every: args.eval_every.unwrap_or(args.train_steps).max(1),
            eval_size: args.eval_size,
            seed: args.seed,
            attack: AttackSpec {
                steps: args.train_attack_steps,
                ..AttackSpec::paper_train()
            },
            beta: args.beta,
            router_objective: args.router_objective.unwrap_or(start.router_objective),
            ..start
        },
        balance_weight: args.balance_weight.unwrap_or(if paper { 0.1 } else { 1.0 }),
    };
    base.fit_to(&dataset);
    if !base.model.is_moe() {
        bail!("compare needs an MoE model: pass --experts 2 or more");
    }
    let eval = RobustOptions {
        limit: args.eval_size,
        seed: args.seed,
        eps_sweep: args.eps_sweep.clone(),
        worst_case: args
            .worst
            .attacks(args.attack, args.flags.eps, base.model.num_classes)?,
        ..args.flags.robust_options(args.attack)?
    };
    let mut entries = compare_entries(&base);
    if !args.models.is_empty() {
        let known: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
        if let Some(bad) = args.models.iter().find(|m| !known.contains(m)) {
            bail!(
                "unknown model {bad:?} for --models; expected some of: {}",
                known.join(", ")
            );
        }
        // In the order given: a cut comparison has finished the models named first.
        entries = args
            .models
            .iter()
            .filter_map(|m| entries.iter().find(|e| &e.name == m).cloned())
            .collect();
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {:?}", args.out))?;
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).ok();
    }
    let mut bar = ProgressBar::hidden();
    let mut evaluating = false;
    let mut done_rows = Vec::new();
    // compare.json and compare.md for the rows so far; returns the JSON written.
    let write_results =
        |rows: &[advmoe_engine::compare::CompareRow]| -> anyhow::Result<serde_json::Value> {
            let json = serde_json::json!({
                "base": base,
                "eval": eval,
                "rows": rows,
            });
            std::fs::write(
                args.out.join("compare.json"),
                serde_json::to_vec_pretty(&json)?,
            )?;
            std::fs::write(args.out.join("compare.md"), markdown_table(rows))?;
            Ok(json)
        };
    let rows = block_on(run_comparison(
        &entries,
        dataset,
        &device,
        &eval,
        Some(&args.out),
        &mut |event| match event {
            CompareEvent::Training {
                entry,
                index,
                total,
            } => {
                eprintln!(
                    "[{}/{total}] {}: {} N={} r={} balance={}",
                    index + 1,
                    entry.name,
                    entry.config.train.method,
                    entry.config.model.num_experts,
                    entry.config.model.ratio,
                    entry.config.balance_weight
                );
                bar = progress_bar(entry.config.train.total_steps, "steps");
                evaluating = false;
            }
            CompareEvent::Step { done, .. } => bar.set_position(done as u64),
            CompareEvent::Evaluating { done, of } => {
                if !evaluating {
                    evaluating = true;
                    bar.finish_and_clear();
                    bar = progress_bar(of, "images attacked");
                }
                bar.set_position(done as u64);
            }
            CompareEvent::Done(row) => {
                bar.finish_and_clear();
                done_rows.push(row.clone());
                if let Err(e) = write_results(&done_rows) {
                    eprintln!("could not write the results so far: {e:#}");
                }
                let worst = row.report.worst_case.as_ref().map_or(String::new(), |w| {
                    format!(" (worst case {:.1}%)", 100.0 * w.robust_acc)
                });
                eprintln!(
                    "    SA {:.1}%  RA {:.1}%{worst}  router robustness {}  expert robustness {}  load {}  ({:.0} s training)",
                    100.0 * row.report.clean_acc,
                    100.0 * row.report.robust_acc,
                    pct(row.report.router_robustness),
                    pct(row.report.expert_robustness),
                    format_load(&row.report.expert_load),
                    row.train_secs
                );
            }
        },
        &|| interrupted.load(Ordering::SeqCst),
    ))?;
    // Also when no model finished (interrupted during the first), so the files always exist.
    let json = write_results(&rows)?;
    let table = markdown_table(&rows);
    if rows.len() < entries.len() {
        eprintln!(
            "interrupted: {} of {} models done",
            rows.len(),
            entries.len()
        );
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{table}");
    }
    Ok(())
}
