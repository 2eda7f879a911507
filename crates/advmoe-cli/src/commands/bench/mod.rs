//! `advmoe bench sparse-conv`: the sparse MoE conv kernels (WGSL on wgpu, or the CPU kernels)
//! against the reference (all experts, then select) and Burn's dense conv at the active width,
//! timed side by side in one run, plus
//! one whole AdvMoE training step with and without sparse execution. `advmoe bench steps`
//! ([`steps`]): the training steps and the evaluation attack, for the PyTorch reference under
//! `bench/reference/` to check and time the same work.

mod steps;

pub(crate) use steps::device_label;

use std::sync::Arc;

use advmoe_core::macs::conv_plans;
use advmoe_core::{DatasetSpec, MethodKind, ModelSpec, Rng, TrainSpec};
use advmoe_engine::{DeviceChoice, Run, RunConfig, make_device};
use advmoe_kernels::{
    Variant, parity, reference, set_kernel_variant, set_sparse_execution, sparse_moe_conv,
};
use advmoe_model::readback::{block_on, read_f32};
use anyhow::{Context as _, bail};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Int, Tensor, TensorData};
use clap::{Args, Subcommand, ValueEnum};
use serde::Serialize;
use std::time::Instant;

/// What to benchmark.
#[derive(Subcommand)]
pub(crate) enum BenchCommand {
    /// Sparse MoE conv vs the reference vs Burn's dense conv, forward and forward+backward, over
    /// the MoE conv shapes of the classroom and paper-scale ResNets; then one AdvMoE training
    /// step with and without sparse execution.
    SparseConv(SparseConvArgs),
    /// The training steps (standard, TRADES on the dense model, vanilla MoE AT, AdvMoE) and a
    /// PGD-10 evaluation batch, timed; writes each model's initial checkpoint and what it
    /// computes on a fixed batch, for the PyTorch reference (`bench/compare.sh`) to check and time.
    Steps(steps::StepsArgs),
}

/// Which model's layer shapes to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scale {
    /// Classroom ResNet-10 (b = 16, r = 0.5).
    Classroom,
    /// Paper-scale ResNet-18 (b = 64, r = 0.5).
    Paper,
    /// Both.
    All,
}

/// Which kernel variant to time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum VariantArg {
    /// Chosen by adapter.
    Auto,
    /// Workgroup-memory tiles.
    Tiled,
    /// Straight from global memory.
    Direct,
}

#[derive(Args)]
pub(crate) struct SparseConvArgs {
    /// Layer shapes: classroom, paper or all.
    #[arg(long, value_enum, default_value = "all")]
    scale: Scale,
    /// Expert counts to time (1 compares the sparse kernel with Burn's conv at equal work).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    experts: Vec<usize>,
    /// Batch size of every timed call.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Timed repetitions per measurement (the median is reported), after one warm-up.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Kernel variant: auto (direct on software adapters, tiled on GPUs), tiled or direct.
    #[arg(long, value_enum, default_value = "auto")]
    variant: VariantArg,
    /// Device: gpu (the WGSL kernels on wgpu) or cpu (the CPU kernels, `advmoe_kernels::cpu`,
    /// against Burn's CPU conv2d).
    #[arg(long, default_value = "gpu")]
    device: DeviceChoice,
    /// Skip the whole-training-step comparison.
    #[arg(long)]
    no_step: bool,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

/// One measured row.
#[derive(Debug, Serialize)]
struct Row {
    /// `conv` or `advmoe-step`.
    kind: &'static str,
    /// Which model the shape comes from.
    scale: &'static str,
    /// The MoE conv shape, e.g. `32x16x32x32 -> 8 k3 s1`.
    shape: String,
    experts: usize,
    /// `fwd`, `fwd+bwd` or `step`.
    pass: &'static str,
    sparse_ms: f64,
    reference_ms: f64,
    /// Burn's conv2d at the active width (one expert's filters); `None` for training steps.
    dense_ms: Option<f64>,
    sparse_over_reference: f64,
    sparse_over_dense: Option<f64>,
    /// Largest sparse-vs-reference difference of the results, relative to the largest value
    /// (checked before timing; `None` for training steps).
    max_rel_diff: Option<f64>,
    device: String,
}

pub(crate) fn run(command: BenchCommand) -> anyhow::Result<()> {
    let args = match command {
        BenchCommand::SparseConv(args) => args,
        BenchCommand::Steps(args) => return steps::run(&args),
    };
    if args.reps == 0 || args.batch == 0 {
        bail!("--reps and --batch must be positive");
    }
    if let Some(&n) = args.experts.iter().find(|&&n| !(1..=8).contains(&n)) {
        bail!("--experts {n}: the kernels support 1 to 8 experts");
    }
    set_kernel_variant(match args.variant {
        VariantArg::Auto => None,
        VariantArg::Tiled => Some(Variant::Tiled),
        VariantArg::Direct => Some(Variant::Direct),
    });
    let device = make_device(args.device);
    let adapter = device
        .identity()
        .map_or_else(|| format!("{device:?}"), |identity| identity.name);
    if !args.json {
        println!("device: {adapter}; kernel variant: {:?}", args.variant);
        println!();
    }
    let mut rows = Vec::new();
    let scales: &[(Scale, &'static str, ModelSpec)] = &[
        (
            Scale::Classroom,
            "classroom",
            ModelSpec::resnet(16, 1, 2, 0.5),
        ),
        (Scale::Paper, "paper", ModelSpec::resnet(64, 2, 2, 0.5)),
    ];
    if !args.json {
        println!(
            "| scale | shape (b×c_in×h×w → c_out) | N | pass | sparse ms | reference ms | dense ms | sparse/ref | sparse/dense |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
    }
    for (scale, name, spec) in scales {
        if args.scale != Scale::All && args.scale != *scale {
            continue;
        }
        let mut shapes: Vec<_> = conv_plans(spec)
            .into_iter()
            .filter(|plan| plan.moe)
            .map(|plan| {
                (
                    plan.channels_in,
                    plan.channels_out,
                    plan.size_in,
                    plan.kernel,
                    plan.stride,
                )
            })
            .collect();
        shapes.sort();
        shapes.dedup();
        for &(c_in, c_out, [h, w], kernel, stride) in &shapes {
            for &num_experts in &args.experts {
                let geometry = Geometry {
                    batch: args.batch,
                    c_in,
                    c_out,
                    h,
                    w,
                    kernel,
                    stride,
                    num_experts,
                };
                for backward in [false, true] {
                    let row = time_conv(&geometry, backward, args.reps, &device)
                        .with_context(|| format!("timing {}", geometry.label()))?;
                    let row = Row {
                        scale: name,
                        device: adapter.clone(),
                        ..row
                    };
                    print_row(&row, args.json)?;
                    rows.push(row);
                }
            }
        }
    }
    if !args.no_step {
        let row = time_training_step(args.batch, args.reps, &device)?;
        let row = Row {
            device: adapter.clone(),
            ..row
        };
        print_row(&row, args.json)?;
        rows.push(row);
    }
    if !args.json {
        summarise(&rows);
    }
    Ok(())
}

fn print_row(row: &Row, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(row)?);
    } else {
        let opt =
            |v: Option<f64>, digits: usize| v.map_or("–".to_owned(), |v| format!("{v:.digits$}"));
        println!(
            "| {} | {} | {} | {} | {:.3} | {:.3} | {} | {:.2} | {} |",
            row.scale,
            row.shape,
            row.experts,
            row.pass,
            row.sparse_ms,
            row.reference_ms,
            opt(row.dense_ms, 3),
            row.sparse_over_reference,
            opt(row.sparse_over_dense, 2),
        );
    }
    Ok(())
}

/// Geometric means of the ratios per expert count and pass.
fn summarise(rows: &[Row]) {
    println!();
    println!("geometric means over shapes:");
    let mut keys: Vec<(usize, &str)> = rows
        .iter()
        .filter(|r| r.kind == "conv")
        .map(|r| (r.experts, r.pass))
        .collect();
    keys.sort();
    keys.dedup();
    for (experts, pass) in keys {
        let selected: Vec<&Row> = rows
            .iter()
            .filter(|r| r.kind == "conv" && r.experts == experts && r.pass == pass)
            .collect();
        let geo = |f: &dyn Fn(&Row) -> f64| {
            (selected.iter().map(|r| f(r).ln()).sum::<f64>() / selected.len() as f64).exp()
        };
        println!(
            "  N = {experts}, {pass}: sparse/reference {:.2}, sparse/dense {:.2}",
            geo(&|r| r.sparse_over_reference),
            geo(&|r| r.sparse_over_dense.unwrap_or(f64::NAN)),
        );
    }
}

struct Geometry {
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    kernel: usize,
    stride: usize,
    num_experts: usize,
}

impl Geometry {
    fn label(&self) -> String {
        format!(
            "{}x{}x{}x{} -> {} k{} s{}",
            self.batch, self.c_in, self.h, self.w, self.c_out, self.kernel, self.stride
        )
    }
}

fn random(shape: [usize; 4], rng: &mut Rng, device: &Device) -> Tensor<4> {
    let values: Vec<f32> = (0..shape.iter().product()).map(|_| rng.normal()).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Median wall time in milliseconds of `f` (one warm-up call first), each call synchronised.
fn median_ms(
    reps: usize,
    device: &Device,
    f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    Ok(timed_ms(reps, device, f)?.1)
}

/// The first call's time (warm-up, lazy initialisation and shader compilation included) and
/// the median of `reps` more, in milliseconds, each ended by a device sync.
fn timed_ms(
    reps: usize,
    device: &Device,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<(f64, f64)> {
    let start = Instant::now();
    f()?;
    device.sync().context("device failed during warm-up")?;
    let first = start.elapsed().as_secs_f64() * 1e3;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        f()?;
        device.sync().context("device failed during timing")?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok((first, times[times.len() / 2]))
}

fn time_conv(
    geometry: &Geometry,
    backward: bool,
    reps: usize,
    plain: &Device,
) -> anyhow::Result<Row> {
    let &Geometry {
        batch,
        c_in,
        c_out,
        h,
        w,
        kernel,
        stride,
        num_experts,
    } = geometry;
    let device = if backward {
        plain.clone().autodiff()
    } else {
        plain.clone()
    };
    let mut rng = Rng::seed(7);
    let padding = kernel / 2;
    let x = random([batch, c_in, h, w], &mut rng, &device);
    let weight = random(
        [num_experts * c_out, c_in, kernel, kernel],
        &mut rng,
        &device,
    );
    let dense_weight = random([c_out, c_in, kernel, kernel], &mut rng, &device);
    // Balanced routes: sample b takes expert b mod N.
    let experts: Vec<i64> = (0..batch).map(|b| (b % num_experts) as i64).collect();
    let experts = Tensor::<1, Int>::from_data(TensorData::new(experts, [batch]), &device);
    let gate = experts
        .clone()
        .one_hot::<2>(num_experts.max(2))
        .float()
        .narrow(1, 0, num_experts);
    let (x, weight, dense_weight, gate) = if backward {
        (
            x.require_grad(),
            weight.require_grad(),
            dense_weight.require_grad(),
            gate.require_grad(),
        )
    } else {
        (x, weight, dense_weight, gate)
    };
    let finish = |y: Tensor<4>| -> anyhow::Result<()> {
        if backward {
            // The same reduction for every path, so the ratio compares the convolutions.
            drop(y.sum().backward());
        } else {
            drop(y);
        }
        Ok(())
    };
    let max_rel_diff = agreement(&x, &weight, &gate, &experts, stride, backward)?;
    if max_rel_diff > 1e-3 {
        bail!(
            "sparse and reference disagree by {max_rel_diff:.2e} (relative): not timing a wrong kernel"
        );
    }
    let sparse_ms = median_ms(reps, plain, || {
        finish(sparse_moe_conv(
            x.clone(),
            weight.clone(),
            gate.clone(),
            experts.clone(),
            stride,
            padding,
        ))
    })?;
    let reference_ms = median_ms(reps, plain, || {
        finish(reference::moe_conv(
            x.clone(),
            weight.clone(),
            gate.clone(),
            stride,
            padding,
        ))
    })?;
    let options = ConvOptions::new([stride, stride], [padding, padding], [1, 1], 1);
    let dense_ms = median_ms(reps, plain, || {
        finish(conv2d(
            x.clone(),
            dense_weight.clone(),
            None,
            options.clone(),
        ))
    })?;
    Ok(Row {
        kind: "conv",
        scale: "",
        shape: geometry.label(),
        experts: num_experts,
        pass: if backward { "fwd+bwd" } else { "fwd" },
        sparse_ms,
        reference_ms,
        dense_ms: Some(dense_ms),
        sparse_over_reference: sparse_ms / reference_ms,
        sparse_over_dense: Some(sparse_ms / dense_ms),
        max_rel_diff: Some(max_rel_diff),
        device: String::new(),
    })
}

/// The largest difference between the sparse and the reference results (the output, and with
/// `backward` the input, weight and router-score gradients), relative to the largest reference
/// value ([`parity::relative_difference`], the check the parity tests make too).
fn agreement(
    x: &Tensor<4>,
    weight: &Tensor<4>,
    gate: &Tensor<2>,
    experts: &Tensor<1, Int>,
    stride: usize,
    backward: bool,
) -> anyhow::Result<f64> {
    // As in the model: a straight-through gate over router scores, whose gradient is the one
    // the sparse gate kernel must reproduce (the raw gate's gradient off the selected expert is
    // masked by the one-hot and never reaches a router).
    // Forward-only timing runs without autodiff, where nothing may require a gradient.
    let scores = if backward {
        gate.clone().detach().require_grad()
    } else {
        gate.clone()
    };
    let route = |scores: Tensor<2>| {
        let one_hot = scores.clone().detach();
        (
            one_hot * (scores.clone() - scores.detach() + 1.0),
            experts.clone(),
        )
    };
    // The gradient of the output's sum.
    let ones = |dims: [usize; 4]| Tensor::<4>::ones(dims, &x.device());
    let case = parity::ParityCase {
        input: x,
        weight,
        scores: &scores,
        route: &route,
        stride,
        upstream: backward.then_some(&ones as &dyn Fn([usize; 4]) -> Tensor<4>),
    };
    let read = |sparse: bool| -> anyhow::Result<Vec<Vec<f32>>> {
        parity::run_path(sparse, &case)?
            .into_iter()
            .map(|t| Ok(block_on(read_f32(t, "benchmark result"))?))
            .collect()
    };
    let (sparse, reference) = (read(true)?, read(false)?);
    Ok(sparse
        .iter()
        .zip(&reference)
        .map(|(s, r)| parity::relative_difference(s, r))
        .fold(0.0, f64::max))
}

/// One `advmoe` training step of the classroom model (two attacks and two optimiser steps),
/// with sparse execution and with the reference path.
fn time_training_step(batch: usize, reps: usize, device: &Device) -> anyhow::Result<Row> {
    let spec = ModelSpec::resnet(16, 1, 2, 0.5);
    let data = DatasetSpec {
        synthetic_train_size: batch * (reps + 2),
        synthetic_test_size: batch,
        ..DatasetSpec::default()
    };
    let dataset = Arc::new(advmoe_data::load(&data).context("building the synthetic set")?);
    let time_path = |sparse: bool| -> anyhow::Result<f64> {
        let previous = set_sparse_execution(sparse);
        let config = RunConfig {
            model: spec.clone(),
            data: data.clone(),
            train: TrainSpec {
                method: MethodKind::Advmoe,
                // One step more than timed, so no evaluation falls inside the timing.
                total_steps: reps + 2,
                batch_size: batch,
                eval_every: reps + 2,
                ..TrainSpec::default()
            },
            balance_weight: 1.0,
        };
        let mut run = Run::new(config, dataset.clone(), device).context("building the run")?;
        // Each timed call is one step and its loss readback (the engine's smallest advance).
        let result = median_ms(reps, device, || {
            block_on(run.advance(1, &mut |_| true))?;
            Ok(())
        });
        set_sparse_execution(previous);
        result
    };
    let sparse_ms = time_path(true)?;
    let reference_ms = time_path(false)?;
    Ok(Row {
        kind: "advmoe-step",
        scale: "classroom",
        shape: format!("advmoe step, ResNet-10 b16 N2 r0.5, batch {batch}"),
        experts: 2,
        pass: "step",
        sparse_ms,
        reference_ms,
        dense_ms: None,
        sparse_over_reference: sparse_ms / reference_ms,
        sparse_over_dense: None,
        max_rel_diff: None,
        device: String::new(),
    })
}
