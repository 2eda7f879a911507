//! `advmoe bench steps`: the product's side of the comparison with the PyTorch reference
//! (`bench/reference/advmoe_ref.py`, driven by `bench/compare.sh`).
//!
//! For each step kind it builds the run the CLI's `train` would (same model spec, method and
//! defaults; batch `--batch`), saves the run's initial checkpoint, records what that model
//! computes on a fixed batch (eval logits and routes, the TRADES loss on a fixed perturbation,
//! and the logits after two plain SGD steps), and times one training step (the first, then the
//! median of `--reps` more). The reference loads the same checkpoint, must reproduce the record
//! within its tolerances, and only then times the same steps.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use advmoe_core::{
    AttackKind, AttackSpec, AttackTarget, DatasetSpec, MethodKind, ModelSpec, OptimizerKind, Rng,
    TrainSpec,
};
use advmoe_engine::attack::{LogitObjective, Start, frozen, run_attack};
use advmoe_engine::loss::{cross_entropy, kl_div, load_balance};
use advmoe_engine::optim::Optimizer;
use advmoe_engine::tensors::{DeviceBatch, to_device};
use advmoe_engine::{DeviceChoice, Run, RunConfig, attack_image, make_device};
use advmoe_model::checkpoint::{NamedTensor, safetensors_bytes};
use advmoe_model::readback::{block_on, read_f32, read_i64};
use advmoe_model::{LayerRoute, Mode, MoeNet, layers};
use anyhow::{Context as _, bail};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};
use clap::{Args, ValueEnum};
use serde::Serialize;

use super::timed_ms;
use crate::args::ModelArgs;

/// A step the comparison times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum StepKind {
    /// Standard training of the MoE (cross-entropy on clean images).
    Standard,
    /// TRADES (β = 6, PGD-2 on the KL) on the dense model of the same base width.
    Trades,
    /// Vanilla MoE AT: TRADES on the MoE, one joint step.
    MoeAt,
    /// AdvMoE: an expert step and a router step, each on fresh adversarial examples.
    Advmoe,
    /// PGD-10 at 8/255 on a batch of the MoE, then its accuracy (the evaluation attack).
    Pgd10Eval,
    /// The attack lab's PGD-10 at 8/255 on one test image of the MoE (no random start), its
    /// predictions and routes read back: what moving the ε slider waits for.
    AttackLab,
}

#[derive(Args)]
pub(crate) struct StepsArgs {
    /// The MoE timed (the dense model for TRADES has its width, depth and one expert of ratio 1).
    #[command(flatten)]
    model: ModelArgs,
    /// Images per step.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Timed steps per kind (the median is reported), after the first.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Step kinds to time.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "standard,trades,moe-at,advmoe,pgd10-eval,attack-lab"
    )]
    kinds: Vec<StepKind>,
    /// Device: cpu or gpu.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The plain convolutions on `--device gpu`: the sparse kernels with one expert (as the
    /// product runs them) or Burn's conv2d (`bench/gpu.sh` times both).
    #[arg(long, value_enum, default_value = "own")]
    gpu_conv: GpuConv,
    /// The batch norms on `--device gpu`: our fused kernels with the ReLU after them (as the
    /// product runs them), train mode out of tensor operations summed per image then over the
    /// batch (`wide`, eval mode and the ReLU by Burn's operations), or Burn's `batch_norm_train`
    /// and `batch_norm` (`bench/gpu.sh` times all three).
    #[arg(long, value_enum, default_value = "fused")]
    batch_norm: BatchNormPath,
    /// The element-wise updates on `--device gpu` (each parameter's optimiser step, the running
    /// statistics, each L∞ attack step, the residual blocks' ReLU): one kernel of ours each (as
    /// the product runs them) or Burn's tensor operations, the same results bit for bit
    /// (`bench/gpu.sh` times both).
    #[arg(long, value_enum, default_value = "own")]
    elementwise: GpuConv,
    /// Output folder: `product.json`, and per model `model-<name>/` (its initial checkpoint and
    /// `parity.safetensors`).
    #[arg(long)]
    out: PathBuf,
    /// Write no checkpoints or parity records, so that the process runs the timed steps alone
    /// (`bench/gpu.sh` profiles its kernels so).
    #[arg(long)]
    no_parity: bool,
}

/// Which kernels run the models' plain convolutions (`--gpu-conv`) or the element-wise updates
/// (`--elementwise`) on `wgpu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum GpuConv {
    /// Burn's conv2d; Burn's element-wise tensor operations.
    Burn,
    /// The sparse MoE conv kernels with one expert (`advmoe_kernels::set_own_gpu_conv`); our
    /// element-wise kernels (`advmoe_kernels::set_own_elementwise`).
    Own,
}

/// How the batch norms run on `wgpu` (`advmoe_model::layers::BatchNormPath`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum BatchNormPath {
    /// `advmoe_kernels::fused_batch_norm_train` / `_eval` with the ReLU.
    Fused,
    /// `advmoe_model::layers::batch_norm_train_wide`.
    Wide,
    /// Burn's `batch_norm_train` and `batch_norm`.
    Burn,
}

/// One timed step kind.
#[derive(Debug, Serialize)]
struct StepRow {
    kind: StepKind,
    /// The folder of the model it trains (under `--out`).
    model: String,
    balance_weight: f64,
    first_ms: f64,
    median_ms: f64,
    images_per_s: f64,
}

/// Images in the parity record.
const PARITY_BATCH: usize = 16;

pub(crate) fn run(args: &StepsArgs) -> anyhow::Result<()> {
    if args.reps == 0 || args.batch == 0 {
        bail!("--reps and --batch must be positive");
    }
    let choice = match args.device.as_str() {
        "cpu" => DeviceChoice::Cpu,
        "gpu" => DeviceChoice::Gpu,
        other => bail!("--device {other}: cpu or gpu"),
    };
    let device = make_device(choice);
    advmoe_kernels::set_own_gpu_conv(args.gpu_conv == GpuConv::Own);
    advmoe_kernels::set_own_elementwise(args.elementwise == GpuConv::Own);
    layers::set_batch_norm_path(match args.batch_norm {
        BatchNormPath::Fused => layers::BatchNormPath::Fused,
        BatchNormPath::Wide => layers::BatchNormPath::Wide,
        BatchNormPath::Burn => layers::BatchNormPath::Burn,
    });
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let moe = args.model.spec();
    let dense = ModelSpec {
        num_experts: 1,
        ratio: 1.0,
        ..moe.clone()
    };
    let mut rows = Vec::new();
    let mut recorded = BTreeSet::new();
    for &kind in &args.kinds {
        let (name, spec, method, balance_weight) = match kind {
            StepKind::Standard | StepKind::Pgd10Eval | StepKind::AttackLab => {
                ("moe", &moe, MethodKind::Standard, 0.0)
            }
            StepKind::Trades => ("dense", &dense, MethodKind::Trades, 0.0),
            StepKind::MoeAt => ("moe", &moe, MethodKind::MoeAt, 0.0),
            StepKind::Advmoe => ("moe-balanced", &moe, MethodKind::Advmoe, 1.0),
        };
        let folder = format!("model-{name}");
        let config = RunConfig {
            model: spec.clone(),
            data: DatasetSpec {
                synthetic_train_size: args.batch * (args.reps + 2),
                synthetic_test_size: args.batch.max(PARITY_BATCH),
                augment: false,
                ..DatasetSpec::default()
            },
            train: TrainSpec {
                method,
                // One step more than timed, so no evaluation falls inside the timing.
                total_steps: args.reps + 2,
                eval_every: args.reps + 2,
                batch_size: args.batch,
                ..TrainSpec::default()
            },
            balance_weight,
        };
        let dataset = Arc::new(advmoe_data::load(&config.data).context("the synthetic set")?);
        let mut run = Run::new(config, dataset.clone(), &device).context("building the run")?;
        let dir = args.out.join(&folder);
        if !args.no_parity && recorded.insert(folder.clone()) {
            block_on(run.save_checkpoint(&dir))
                .with_context(|| format!("saving {}", dir.display()))?;
            let record = parity_record(&run, &device)?;
            let bytes = safetensors_bytes(&record, BTreeMap::new())?;
            let path = dir.join("parity.safetensors");
            std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        }
        let (first_ms, median_ms) = if kind == StepKind::AttackLab {
            let model = run.model().clone();
            let image = test_batch(&run, 1, &device).images;
            let label = usize::from(run.dataset().test.labels[0]);
            let spec = AttackSpec {
                random_start: false,
                ..AttackSpec::with_defaults(AttackKind::Pgd, AttackTarget::Full, 8.0 / 255.0, 10)
            };
            timed_ms(args.reps, &device, || {
                block_on(attack_image(&model, image.clone(), label, &spec, 0))?;
                Ok(())
            })?
        } else if kind == StepKind::Pgd10Eval {
            // As `advmoe eval` holds it: parameters that take no gradient.
            let model = frozen(run.model());
            let batch = test_batch(&run, args.batch, &device);
            let spec = AttackSpec::paper_eval();
            let mut rng = Rng::seed(0);
            timed_ms(args.reps, &device, || {
                let objective = LogitObjective::from_spec(
                    &model,
                    batch.images.clone(),
                    batch.labels.clone(),
                    &spec,
                );
                let adv = run_attack(
                    &objective,
                    batch.images.clone(),
                    &spec,
                    Start::Uniform,
                    &mut rng,
                );
                let logits = model.forward(adv, Mode::Eval).logits;
                let correct = logits
                    .argmax(1)
                    .reshape([args.batch])
                    .equal(batch.labels.clone());
                block_on(read_i64(correct.int(), "accuracy"))?;
                Ok(())
            })?
        } else {
            // Each call is one step and its loss readback (the engine's smallest advance).
            timed_ms(args.reps, &device, || {
                block_on(run.advance(1, &mut |_| true))?;
                Ok(())
            })?
        };
        let row = StepRow {
            kind,
            model: folder,
            balance_weight,
            first_ms,
            median_ms,
            images_per_s: if kind == StepKind::AttackLab {
                1.0
            } else {
                args.batch as f64
            } / (median_ms / 1e3),
        };
        eprintln!(
            "{:<11} {:>9.1} ms/step ({:>7.1} img/s; first {:.1} ms)",
            kind.to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_owned()),
            row.median_ms,
            row.images_per_s,
            row.first_ms
        );
        rows.push(row);
    }
    let report = serde_json::json!({
        "batch": args.batch,
        "device": device_label(&device),
        "gpu_conv": args.gpu_conv,
        "batch_norm": args.batch_norm,
        "elementwise": args.elementwise,
        "threads": std::env::var("RAYON_NUM_THREADS").ok().and_then(|t| t.parse::<usize>().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)),
        "model": moe,
        "rows": rows,
        "peak_rss_mib": peak_rss_mib(),
    });
    let path = args.out.join("product.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// The adapter's name on wgpu ("llvmpipe …", "NVIDIA H200"), else `cpu`.
pub(crate) fn device_label(device: &Device) -> String {
    match device.identity() {
        Some(identity) => identity.name,
        None if advmoe_kernels::on_wgpu(device) => format!("{device:?}"),
        None => "cpu (Burn flex)".into(),
    }
}

/// The process's peak resident memory (Linux), in MiB.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// The first `n` test images of the run's dataset, on the device (with autodiff, as the run's
/// model is: attacks and steps take gradients).
fn test_batch(run: &Run, n: usize, device: &Device) -> DeviceBatch {
    let device = &device.clone().autodiff();
    let data = run.dataset();
    to_device(
        &data.test.batch(0, n.min(data.test.len())),
        data.test.num_classes,
        device,
    )
}

/// What the run's initial model computes on the first test images: eval logits and each
/// distinct decision's scores and routes; the train-mode TRADES loss (cross-entropy, KL, and
/// with the balance term) against a fixed perturbation in the 8/255 ball; the eval logits after
/// one and two plain SGD steps (standard training with its balance term) at the run's learning
/// rate.
fn parity_record(run: &Run, device: &Device) -> anyhow::Result<Vec<NamedTensor>> {
    let config = run.config();
    let batch = test_batch(run, PARITY_BATCH, device);
    let model = run.model().clone();
    let mut out = Vec::new();
    let mut put = |name: &str, t: Tensor<1>, shape: Vec<usize>| -> anyhow::Result<()> {
        let values = block_on(read_f32(t, "the parity record"))?;
        out.push(NamedTensor {
            name: name.to_owned(),
            shape,
            values,
        });
        Ok(())
    };
    let dims = batch.images.dims();
    let flat = |t: Tensor<4>| t.reshape([dims.iter().product::<usize>()]);
    put("images", flat(batch.images.clone()), dims.to_vec())?;
    put("labels", batch.labels.clone().float(), vec![dims[0]])?;
    let eval = model.forward(batch.images.clone(), Mode::Eval);
    let [b, c] = eval.logits.dims();
    put(
        "eval_logits",
        eval.logits.clone().reshape([b * c]),
        vec![b, c],
    )?;
    let distinct = if model.has_image_router() {
        1
    } else {
        eval.routes.len()
    };
    for (k, r) in eval.routes.iter().take(distinct).enumerate() {
        let [b, n] = r.scores.dims();
        put(
            &format!("eval_scores.{k}"),
            r.scores.clone().reshape([b * n]),
            vec![b, n],
        )?;
        put(
            &format!("eval_routes.{k}"),
            r.experts.clone().float(),
            vec![b],
        )?;
    }
    let mut rng = Rng::seed(7);
    let eps = 8.0 / 255.0;
    let noise = advmoe_engine::tensors::uniform_noise(dims, eps, &mut rng, device);
    let adv = (batch.images.clone() + noise).clamp(0.0, 1.0);
    put("adv_images", flat(adv.clone()), dims.to_vec())?;
    let clean = model.forward(batch.images.clone(), Mode::Train);
    let perturbed = model.forward(adv, Mode::Train);
    let ce = cross_entropy(clean.logits.clone(), batch.one_hot.clone());
    let kl = kl_div(clean.logits, perturbed.logits);
    let mut total = ce.clone() + kl.clone().mul_scalar(config.train.beta);
    if let Some(b) = balance(config, &clean.routes, &model) {
        total = total + b;
    }
    put("trades_ce", ce, vec![1])?;
    put("trades_kl", kl, vec![1])?;
    put("trades_total", total, vec![1])?;
    let lr = config.train.lr;
    put("lr", Tensor::from_floats([lr as f32], device), vec![1])?;
    let train = &config.train;
    let mut optimizer = Optimizer::new(train.optimizer, train.momentum, train.weight_decay);
    debug_assert_eq!(train.optimizer, OptimizerKind::Sgd);
    let mut model = model;
    for k in 0..2 {
        model = standard_step(model, &batch, config, &mut optimizer, lr);
        let logits = model.forward(batch.images.clone(), Mode::Eval).logits;
        put(
            &format!("logits_after_step.{k}"),
            logits.reshape([b * c]),
            vec![b, c],
        )?;
    }
    Ok(out)
}

/// One step of standard training (cross-entropy, plus the balance term when the run has one),
/// as `method::descend` takes it.
fn standard_step(
    model: MoeNet,
    batch: &DeviceBatch,
    config: &RunConfig,
    optimizer: &mut Optimizer,
    lr: f64,
) -> MoeNet {
    let out = model.forward(batch.images.clone(), Mode::Train);
    let mut loss = cross_entropy(out.logits, batch.one_hot.clone());
    if let Some(b) = balance(config, &out.routes, &model) {
        loss = loss + b;
    }
    let grads = GradientsParams::from_grads(loss.backward(), &model);
    optimizer
        .step(model, grads, lr)
        .apply_bn_updates(out.bn_updates)
}

/// The weighted load-balance term of `routes` when the run has one (an MoE with a positive
/// balance weight), as the engine's methods add it.
fn balance(config: &RunConfig, routes: &[LayerRoute], model: &MoeNet) -> Option<Tensor<1>> {
    (config.balance_weight > 0.0 && config.model.is_moe())
        .then(|| load_balance(routes, model.has_image_router()))
        .flatten()
        .map(|b| b.mul_scalar(config.balance_weight))
}
