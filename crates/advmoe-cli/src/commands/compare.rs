//! `advmoe compare`: the AdvMoE paper's comparison (engine's `compare`), with progress, Ctrl-C
//! and compare.json / compare.md written after every model.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use advmoe_core::{
    AttackKind, AttackSpec, BnPasses, MethodKind, OptimizerKind, RouterObjective, ScheduleKind,
    TrainSpec,
};
use advmoe_engine::compare::{
    CHECKPOINT_DIR, CompareEvent, CompareRow, Comparison, compare_entries, markdown_curves,
    markdown_paired, markdown_routes, markdown_table, run_comparison,
};
use advmoe_engine::robust::RobustOptions;
use advmoe_engine::{DeviceChoice, RunConfig, block_on, make_device};
use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::ProgressBar;

use crate::args::{
    AttackFlags, DataArgs, ModelArgs, Preset, RouterAttackFlags, WorstCaseFlags, choice,
    format_load, interrupt_flag, load_dataset, parse_fraction, pct, progress_bar,
};

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
    /// [default: 1; paper preset 0.1]. AdvMoE's class-partition router objective has no such
    /// term: there the weight acts only on `moe-at-balanced`. With per-layer routers 1 stalls
    /// both MoE methods on `synthetic`: use 0 (docs/results/synthetic-balance-term.md).
    #[arg(long)]
    balance_weight: Option<f64>,
    /// Weight β of the KL terms.
    #[arg(long, default_value_t = 6.0)]
    beta: f64,
    /// AdvMoE's router objective [default: robust; paper preset class-partition].
    #[arg(long, value_parser = choice::<RouterObjective>())]
    router_objective: Option<RouterObjective>,
    /// Weight α of the routers' KL in the class-partition objective.
    #[arg(long, default_value_t = 6.0)]
    alpha: f64,
    /// Fraction of the run over which α rises linearly from 0 (ours, not the released code's;
    /// 0: α from the first step).
    #[arg(long, default_value_t = TrainSpec::default().router_kl_warmup)]
    router_kl_warmup: f64,
    /// AdvMoE's router learning rate as a multiple of the experts' (same schedule; 1, the
    /// released code's: both optimisers at the same rate).
    #[arg(long, default_value_t = TrainSpec::default().router_lr_scale)]
    router_lr_scale: f64,
    /// Which train-mode passes of an AdvMoE step fold their batch statistics into the running
    /// statistics: own (each step its own passes, into its own batch norms) or released (as the
    /// paper's released script: every pass into every batch norm it runs through, plus three
    /// clean passes per batch).
    #[arg(long, value_parser = choice::<BnPasses>(), default_value = TrainSpec::default().bn_passes.as_str())]
    bn_passes: BnPasses,
    /// Training-attack steps (of 5/255 each, ε = 8/255).
    #[arg(long, default_value_t = 2)]
    train_attack_steps: usize,
    /// Differentiate the training attacks through the straight-through gates, as the AdvMoE
    /// paper's released training does (image router only; default: the exact gradient).
    #[arg(long)]
    train_attack_through_gates: bool,
    /// Also measure every model under the AdvMoE paper code's evaluation attack (the RA attack
    /// through the straight-through gates, plus 6 × the routers' cross-entropy against the class
    /// partition), in a column of its own: to set beside figures measured that way, not a
    /// robustness figure. Models already measured get it without being measured again.
    #[arg(long)]
    released_eval: bool,
    /// Record clean accuracy and expert load on the evaluation subset every this many steps
    /// (the training curves in compare.json; default: only at the end).
    #[arg(long)]
    eval_every: Option<usize>,
    /// At each of those evaluations, also measure robust accuracy (PGD-10 at 8/255) and router
    /// robustness on this many test images: the robust training curves (0: none).
    #[arg(long, default_value_t = 0)]
    curve_robust: usize,
    /// Evaluation attack.
    #[arg(long, default_value = "pgd", value_parser = choice::<AttackKind>())]
    attack: AttackKind,
    #[command(flatten)]
    flags: AttackFlags,
    #[command(flatten)]
    worst: WorstCaseFlags,
    #[command(flatten)]
    router: RouterAttackFlags,
    /// Test images evaluated per model (0: all), and the training curves' clean points. Models
    /// already trained in `--out` are measured again on another subset, not trained again.
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

pub(crate) fn run(args: CompareArgs) -> anyhow::Result<()> {
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
            robust_eval_size: args.curve_robust,
            seed: args.seed,
            attack: AttackSpec {
                steps: args.train_attack_steps,
                through_gates: args.train_attack_through_gates,
                ..AttackSpec::paper_train()
            },
            beta: args.beta,
            alpha: args.alpha,
            router_kl_warmup: args.router_kl_warmup,
            router_lr_scale: args.router_lr_scale,
            bn_passes: args.bn_passes,
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
        partition_routes: args.worst.partition_routes,
        per_image: args.worst.per_image,
        released_eval: args.released_eval,
        ..args.flags.robust_options(args.attack, &args.router)?
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
    let interrupted = interrupt_flag();
    let mut bar = ProgressBar::hidden();
    let mut evaluating = false;
    let mut training = String::new();
    let mut done_rows = Vec::new();
    // compare.json and compare.md for the rows so far; returns the JSON written.
    let write_results = |rows: &[CompareRow]| -> anyhow::Result<serde_json::Value> {
        let json = serde_json::to_value(Comparison {
            base: base.clone(),
            eval: eval.clone(),
            rows: rows.to_vec(),
        })?;
        std::fs::write(
            args.out.join("compare.json"),
            serde_json::to_vec_pretty(&json)?,
        )?;
        let mut md = markdown_table(rows);
        let routes = markdown_routes(rows);
        if !routes.is_empty() {
            md.push_str(&format!(
                "\nRoutes and classes (first MoE layer, by the clean route):\n\n{routes}"
            ));
        }
        let paired = markdown_paired(rows);
        if !paired.is_empty() {
            md.push_str(&format!(
                "\nPaired differences (the same test images, image by image):\n\n{paired}"
            ));
        }
        let curves = markdown_curves(rows);
        if !curves.is_empty() {
            md.push_str(&format!("\nTraining curves:\n\n{curves}"));
        }
        std::fs::write(args.out.join("compare.md"), md)?;
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
                training.clone_from(&entry.name);
            }
            CompareEvent::Resumed { step } => {
                bar.suspend(|| {
                    eprintln!(
                        "    continuing from the checkpoint after step {step} (in {})",
                        args.out.join(&training).join(CHECKPOINT_DIR).display()
                    );
                });
                bar.set_position(step as u64);
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
                let mut worst = row.report.worst_case.as_ref().map_or(String::new(), |w| {
                    format!(" (worst case {:.1}%)", 100.0 * w.robust_acc)
                });
                if let Some(acc) = row.report.released_robust_acc {
                    worst.push_str(&format!(" (paper code's eval {:.1}%)", 100.0 * acc));
                }
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
