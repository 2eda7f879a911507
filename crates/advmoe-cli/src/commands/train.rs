//! `advmoe train`: build a run from flags (or resume one), drive it with the engine's
//! [`Run::advance`], write metrics.jsonl and checkpoints; Ctrl-C saves a resumable checkpoint.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use advmoe_core::{
    AttackSpec, BnPasses, MethodKind, OptimizerKind, RouterObjective, ScheduleKind, TrainSpec,
    count_macs,
};
use advmoe_data::DataFiles;
use advmoe_engine::{
    Advance, CheckpointSource, DeviceChoice, Run, RunConfig, RunState, block_on, load_data,
    make_device,
};
use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::{
    DataArgs, ModelArgs, Preset, choice, describe_dataset, format_load, interrupt_flag,
    parse_fraction,
};

#[derive(Args)]
pub(crate) struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
    /// Start from a named configuration: `paper` is the AdvMoE paper's released one (advmoe,
    /// class-partition router objective, SGD 0.1, batch 128). Flags given explicitly override it.
    #[arg(long)]
    preset: Option<Preset>,
    /// Training method [default: standard; paper preset advmoe].
    #[arg(long, value_parser = choice::<MethodKind>())]
    method: Option<MethodKind>,
    /// Weight β of the KL terms (trades, moe-at, advmoe).
    #[arg(long, default_value_t = 6.0)]
    beta: f64,
    /// Weight α of the routers' KL(clean ‖ adversarial) in advmoe's class-partition objective
    /// CE(router, y mod N) + α·KL (the cross-entropy has weight 1, as in the released code).
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
    /// Recover from a NaN or infinite loss this many times: roll back to the last checked
    /// state, halve the learning rate, skip the batches that diverged, log it, continue (0: stop
    /// at the first, keeping the last checked state).
    #[arg(long, default_value_t = 0)]
    nan_recoveries: usize,
    /// AdvMoE's router objective [default: robust; paper preset class-partition].
    #[arg(long, value_parser = choice::<RouterObjective>())]
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
    /// Optimiser.
    #[arg(long, default_value = "sgd", value_parser = choice::<OptimizerKind>())]
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
    /// Learning-rate schedule.
    #[arg(long, default_value = "cosine", value_parser = choice::<ScheduleKind>())]
    schedule: ScheduleKind,
    /// Weight of the MoE load-balancing term (0: off). Measured on `synthetic`: 0.01 lets the
    /// image router collapse onto one expert; 1.0 keeps both experts in use. With per-layer
    /// routers 1.0 stalls training (docs/results/synthetic-balance-term.md): use 0. With the
    /// image router and `moe-at` (β = 6) it held the model near chance for its first 100 steps
    /// there, and the paper's vanilla baseline has no such term. AdvMoE with the class-partition
    /// router objective has none either.
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
    /// Differentiate the training attack through the straight-through gates, as the AdvMoE
    /// paper's released training does (image router only; default: the exact gradient).
    #[arg(long)]
    attack_through_gates: bool,
    /// Evaluate every this many steps (and at the end).
    #[arg(long, default_value_t = 100)]
    eval_every: usize,
    /// Test images per evaluation during training (0: the whole test split).
    #[arg(long, default_value_t = 1000)]
    eval_size: usize,
    /// At each evaluation also measure robust accuracy (PGD-10 at 8/255) and router robustness
    /// (a quick router attack: 5 steps aimed at each router) on this many test images (0: off);
    /// written to metrics.jsonl as `robust`.
    #[arg(long, default_value_t = 0)]
    robust_eval: usize,
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
    /// Print each evaluation as one JSON line on stdout (progress goes to stderr), and at the
    /// end a `timing` line: the steps taken and the seconds they took (loss readbacks included,
    /// evaluations not), in all and in the first chunk of up to 10 steps, which compiles the
    /// GPU kernels. `bench/browser.sh` compares this with the web page's figures.
    #[arg(long)]
    json: bool,
}

impl TrainArgs {
    /// The run these flags describe, on a dataset of `train_images` training images (to count
    /// `--epochs` in steps); the model is fitted to the dataset when the run is built.
    fn config(&self, train_images: usize) -> anyhow::Result<RunConfig> {
        let start = match self.preset {
            Some(Preset::Paper) => TrainSpec::paper(),
            None => TrainSpec {
                lr: 0.05,
                batch_size: 64,
                ..TrainSpec::default()
            },
        };
        let batch_size = self.batch_size.unwrap_or(start.batch_size);
        let total_steps = match (self.steps, self.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) if e > 0.0 => {
                let per_epoch = (train_images / batch_size.max(1)).max(1);
                ((e * per_epoch as f64).ceil() as usize).max(1)
            }
            (None, Some(e)) => bail!("--epochs must be positive, got {e}"),
            (None, None) => 300,
        };
        Ok(RunConfig {
            model: self.model.spec(),
            data: self.data.spec(),
            train: TrainSpec {
                method: self.method.unwrap_or(start.method),
                optimizer: self.optimizer,
                lr: self.lr.unwrap_or(start.lr),
                momentum: self.momentum,
                weight_decay: self.weight_decay,
                schedule: self.schedule,
                batch_size,
                total_steps,
                eval_every: self.eval_every,
                eval_size: self.eval_size,
                robust_eval_size: self.robust_eval,
                seed: self.seed,
                attack: AttackSpec {
                    eps: self.attack_eps,
                    steps: self.attack_steps,
                    step_size: self.attack_step_size,
                    through_gates: self.attack_through_gates,
                    ..AttackSpec::paper_train()
                },
                beta: self.beta,
                alpha: self.alpha,
                router_kl_warmup: self.router_kl_warmup,
                router_lr_scale: self.router_lr_scale,
                bn_passes: self.bn_passes,
                router_objective: self.router_objective.unwrap_or(start.router_objective),
                nan_recoveries: self.nan_recoveries,
            },
            balance_weight: self.balance_weight,
        })
    }
}

pub(crate) fn run(args: TrainArgs) -> anyhow::Result<()> {
    let device = make_device(args.device);
    let spinner = ProgressBar::new_spinner().with_message("loading the dataset");
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let (mut run, out) = if let Some(dir) = &args.resume {
        let source = CheckpointSource::Folder(dir.clone());
        let run = Run::from_checkpoint(&source, &DataFiles::default(), &device)
            .with_context(|| format!("resuming from {dir:?}"))?;
        (run, dir.clone())
    } else {
        let spec = args.data.spec();
        let (dataset, load) = load_data(&spec, &DataFiles::default())
            .with_context(|| format!("loading dataset {}", spec.kind))?;
        let config = args.config(dataset.train.len())?;
        let run = Run::fitted(config, Arc::new(dataset), load, &device)?;
        std::fs::create_dir_all(&args.out).with_context(|| format!("creating {:?}", args.out))?;
        std::fs::remove_file(args.out.join("metrics.jsonl")).ok();
        (run, args.out.clone())
    };
    spinner.finish_and_clear();
    let config = run.config().clone();
    describe_dataset(config.data.kind, run.data_load().secs, run.dataset());
    if args.resume.is_some() {
        eprintln!(
            "resumed at step {} of {}",
            run.step_index(),
            config.train.total_steps
        );
        trim_metrics(&out.join("metrics.jsonl"), run.step_index())?;
    }
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

    let interrupted = interrupt_flag();
    let bar = ProgressBar::new(config.train.total_steps as u64).with_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {per_sec}  eta {eta}  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(run.step_index() as u64);
    let metrics_path = out.join("metrics.jsonl");
    let mut timing = Timing::default();
    while run.state() == RunState::Running {
        // Losses are read every 10 steps, and the run stops at each checkpoint step.
        let step = run.step_index();
        let mut limit = 10;
        if args.checkpoint_every > 0 {
            limit = limit.min(args.checkpoint_every - step % args.checkpoint_every);
        }
        let advance = block_on(run.advance(limit, &mut |_| {
            bar.inc(1);
            !interrupted.load(Ordering::SeqCst)
        }))?;
        timing.add(advance.steps, advance.secs);
        if let Some(&loss) = advance.losses.last() {
            bar.set_message(format!("loss {loss:.4}"));
        }
        if let Some(recovery) = &advance.recovered {
            bar.set_position(run.step_index() as u64);
            let line = format!("recovered: {recovery}");
            if bar.is_hidden() {
                eprintln!("{line}");
            } else {
                bar.println(line);
            }
        }
        if advance.eval.is_some() {
            report(&advance, &metrics_path, args.json, &bar)?;
        }
        if interrupted.load(Ordering::SeqCst) {
            run.stop();
            break;
        }
        let step = run.step_index();
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
    if args.json {
        timing.device = super::bench::device_label(&device);
        println!("{}", serde_json::json!({ "timing": timing }));
    }
    Ok(())
}

/// Steps taken by this call and the seconds they took, as [`Run::advance`] measures them.
#[derive(Debug, Default, serde::Serialize)]
struct Timing {
    /// The adapter's name on wgpu, else `cpu (Burn flex)`.
    device: String,
    steps: usize,
    secs: f64,
    first_chunk_steps: usize,
    first_chunk_secs: f64,
}

impl Timing {
    fn add(&mut self, steps: usize, secs: f64) {
        if self.steps == 0 {
            self.first_chunk_steps = steps;
            self.first_chunk_secs = secs;
        }
        self.steps += steps;
        self.secs += secs;
    }
}

/// Drop the evaluations after `step` from metrics.jsonl: a run killed after its last checkpoint
/// logged evaluations that the resumed run takes again.
fn trim_metrics(path: &std::path::Path, step: usize) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step")?.as_u64())
                .is_some_and(|s| s as usize <= step)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    if kept.len() != text.len() {
        advmoe_model::checkpoint::write_atomic(path, kept.as_bytes())
            .with_context(|| format!("trimming {path:?} to step {step}"))?;
    }
    Ok(())
}

/// Append an evaluation (with its robustness, when measured) to metrics.jsonl, print it as a
/// summary line and, with `--json`, as JSON on stdout.
fn report(
    advance: &Advance,
    metrics_path: &std::path::Path,
    json: bool,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let Some(report) = &advance.eval else {
        return Ok(());
    };
    let mut value = serde_json::to_value(report)?;
    if let (Some(robust), Some(object)) = (&advance.robust, value.as_object_mut()) {
        object.insert("robust".into(), serde_json::to_value(robust)?);
    }
    let line = serde_json::to_string(&value)?;
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(metrics_path)
        .with_context(|| format!("writing {metrics_path:?}"))?;
    writeln!(file, "{line}")?;
    if json {
        println!("{line}");
    }
    let robust = advance.robust.as_ref().map_or(String::new(), |r| {
        format!(
            "  RA {:.2}% (PGD-10, {} images){}",
            100.0 * r.robust_acc,
            r.images,
            r.router_robustness.map_or(String::new(), |v| format!(
                "  router robustness {:.2}%",
                100.0 * v
            ))
        )
    });
    let summary = format!(
        "step {:>6}  loss {:.4}  test loss {:.4}  clean acc {:.2}%{robust}  load {}",
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
    Ok(())
}
