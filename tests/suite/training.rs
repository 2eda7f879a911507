//! The engine end to end: accuracy, routing, exact resume, NaN handling, and the wgpu device.

use std::sync::Arc;

use advmoe_core::{MethodKind, OptimizerKind, RouterKind, RouterObjective};
use advmoe_data::DataFiles;
use advmoe_engine::eval::{EvalOptions, evaluate};
use advmoe_engine::loss::cross_entropy;
use advmoe_engine::optim::{Optimizer, freeze_where};
use advmoe_engine::run::load_model_dir;
use advmoe_engine::tensors::to_device;
use advmoe_engine::{CheckpointSource, EngineError, Run, RunState};
use advmoe_model::checkpoint::device_tensors;
use advmoe_model::{Mode, MoeNet, is_router_path, one_hot_rows};
use burn::module::Module;
use burn::optim::GradientsParams;

use crate::common::Wait as _;
use crate::common::{Poison, Scratch, cpu, finish, gpu, small_config, synthetic, trained};

/// Asserts that at least `min_layers` MoE layers send more than 5% of the test images to every
/// expert (different images to different experts, not a collapsed router).
fn assert_routes_spread(expert_load: &[Vec<f64>], label: &str, min_layers: usize) {
    assert!(!expert_load.is_empty());
    let mut spread = 0;
    for load in expert_load {
        assert!((load.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let smallest = load.iter().cloned().fold(1.0, f64::min);
        spread += usize::from(smallest > 0.05);
    }
    assert!(
        spread >= min_layers,
        "{label}: only {spread} MoE layers use every expert: {expert_load:?}"
    );
}

#[test]
fn standard_training_beats_chance_and_per_layer_routers_use_every_expert() {
    // Image router. Under `standard` training it may send every image to one expert (it did in
    // this configuration once the MoE selection's summation order changed; the quick start at
    // batch 64 collapses too), so only accuracy is asserted here; see the note on issue #2.
    let report = trained(RouterKind::Image).report.clone();
    assert!(
        report.clean_acc > 0.9,
        "clean accuracy {} after 250 steps",
        report.clean_acc
    );
    assert!(report.test_loss < 0.5, "test loss {}", report.test_loss);

    // Per-layer routers.
    let report = trained(RouterKind::PerLayer).report.clone();
    // Per-layer routing learns much more slowly here (29.4% after 250 steps with the balance
    // weight `trained` gives it, vs 97.6% with the image router): the bar is twice chance (10%),
    // not a quality claim.
    assert!(
        report.clean_acc > 0.2,
        "per-layer clean accuracy {}",
        report.clean_acc
    );
    // How many of the 8 layers stay split depends on the CPU's floating-point path (gemm's and
    // Burn's SIMD kernels sum in another order without AVX-512): at this weight, 8 on the CPU the
    // test was written on, 5 (65.6% clean accuracy) on an AMD EPYC without AVX-512 (2026-12-02),
    // where the same run without the term keeps 2 split (96.6%). Half the layers tells the
    // balanced routers from the collapsing ones on both.
    assert_routes_spread(&report.expert_load, "per-layer router", 4);
    // Per-layer routing really differs between layers for some images.
    let load = &report.expert_load;
    assert!(load.windows(2).any(|w| w[0] != w[1]), "{load:?}");
}

#[test]
fn a_resumed_run_continues_exactly() {
    resumes_exactly(MethodKind::PgdAt, 8);
    // AdvMoE: two optimisers, both checkpointed.
    resumes_exactly(MethodKind::Advmoe, 4);
}

fn resumes_exactly(method: MethodKind, width: usize) {
    let mut config = small_config(width, 2, 8);
    config.train.method = method;
    config.train.eval_every = 4;
    config.train.eval_size = 50;
    let data = synthetic(400, 100);

    let mut straight = Run::new(config.clone(), data.clone(), &cpu()).unwrap();
    let (expected, _) = finish(&mut straight);

    let dir = Scratch::new(&format!("resume-{method}"));
    let mut first = Run::new(config, data.clone(), &cpu()).unwrap();
    // The first advance stops at the evaluation due at step 4.
    let advance = first.advance(100, &mut |_| true).wait().unwrap();
    assert_eq!((advance.steps, advance.eval.map(|e| e.step)), (4, Some(4)));
    let mut got = advance.losses;
    first.save_checkpoint(&dir).wait().unwrap();
    drop(first);
    let source = CheckpointSource::Folder(dir.to_path_buf());
    let mut resumed = Run::from_checkpoint_with(&source, data, &cpu()).unwrap();
    assert_eq!(resumed.step_index(), 4);
    assert_eq!(resumed.history().len(), 1);
    got.extend(finish(&mut resumed).0);
    assert_eq!(resumed.state(), RunState::Finished);
    assert_eq!(got.len(), 8);
    for (i, (a, b)) in expected.iter().zip(&got).enumerate() {
        assert!(
            (a - b).abs() < 1e-6,
            "step {i}: {a} vs {b} ({expected:?} vs {got:?})"
        );
    }
    // The losses changed over the run, so matching them is a real check.
    assert!(expected.windows(2).any(|w| w[0] != w[1]));

    // The saved model directory loads for evaluation too.
    let (loaded_config, _model) = load_model_dir(&dir, &cpu()).unwrap();
    assert_eq!(loaded_config.train.method, method);
}

#[test]
fn nan_losses_stop_the_run_with_the_step_and_pause_stop_work() {
    let config = small_config(8, 2, 10);
    let data = synthetic(200, 50);
    let mut run = Run::new(config, data, &cpu()).unwrap();
    run.advance(2, &mut |_| true).wait().unwrap();
    run.pause();
    assert!(matches!(
        run.step(),
        Err(EngineError::NotRunnable(RunState::Paused))
    ));
    assert_eq!(run.advance(5, &mut |_| true).wait().unwrap().steps, 0);
    run.resume();
    let poisoned = run.model().clone().map(&mut Poison::all());
    run.set_model(poisoned);
    let err = run.advance(2, &mut |_| true).wait().unwrap_err();
    assert!(
        matches!(err, EngineError::NonFinite { step: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("step 2"), "{err}");
    assert_eq!(run.state(), RunState::Failed);
    assert!(run.step().is_err());

    let mut other = Run::new(small_config(8, 2, 10), synthetic(200, 50), &cpu()).unwrap();
    other.stop();
    assert_eq!(other.advance(3, &mut |_| true).wait().unwrap().steps, 0);
    assert_eq!(other.state(), RunState::Stopped);
}

#[test]
fn a_tiny_run_on_wgpu_lowers_the_loss() {
    // One fixed batch, full-batch Adam: the loss must fall fast if gradients flow on the GPU.
    let mut config = small_config(8, 2, 30);
    config.model.router = RouterKind::PerLayer;
    config.train.batch_size = 32;
    config.train.optimizer = advmoe_core::OptimizerKind::Adam;
    config.train.lr = 0.01;
    config.train.schedule = advmoe_core::ScheduleKind::Constant;
    config.data.augment = false;
    config.balance_weight = 0.01;
    let data: Arc<_> = synthetic(32, 32);
    let mut run = Run::new(config, data, &gpu()).unwrap();
    let (losses, report) = finish(&mut run);
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[25..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.8 * first, "loss did not fall on wgpu: {losses:?}");
    assert_eq!(report.images, 32);
}

/// Real images in CI: the shared CIFAR-10 image-folder archive (as `advmoe train --data` reads
/// it) trains a classroom MoE on the CPU above chance on a stated test subset: the first 500
/// test images, 50 of each class (the reader interleaves classes).
#[test]
fn cifar10_image_folder_trains_above_chance_on_the_cpu() {
    let archive = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/cifar10-jpg.tar.gz");
    let mut config = small_config(8, 2, 120);
    config.data = advmoe_core::DatasetSpec {
        kind: advmoe_core::DatasetKind::ImageFolder,
        data_dir: Some(archive.to_string_lossy().into_owned()),
        ..advmoe_core::DatasetSpec::default()
    };
    config.train.batch_size = 64;
    config.train.eval_size = 500;
    // As `advmoe train` and the app build it: the engine loads the archive and fits the model.
    let mut run = Run::from_config(config, &DataFiles::default(), &cpu()).unwrap();
    assert_eq!(run.config().model.num_classes, 10);
    assert!(run.data_load().images > 0);
    let first: Vec<u16> = run.dataset().test.labels[..500].to_vec();
    for class in 0..10 {
        assert_eq!(first.iter().filter(|&&l| l == class).count(), 50);
    }
    let (_, report) = finish(&mut run);
    assert_eq!(report.images, 500);
    assert!(
        report.clean_acc > 0.2,
        "clean accuracy {} on 500 CIFAR-10 test images after 120 steps (chance: 0.1)",
        report.clean_acc
    );
}

/// AdvMoE's class-partition objective (the paper preset's router step) trains the image router
/// to send class y to expert y mod N. With N = 5 on `synthetic`, y mod 5 is the grating's
/// orientation: after 150 steps of batch 16 at least 90% of 300 test images follow the
/// partition (97.3% when measured). With N = 2, y mod 2 is orientation parity XOR frequency band,
/// which this router learns far more slowly (76% after 300 steps of batch 32 with the α
/// warm-up, 54% without it: see `router_kl_warmup`).
#[test]
fn the_class_partition_router_learns_its_partition() {
    let experts = 5;
    let mut config = small_config(4, experts, 150);
    config.train.method = MethodKind::Advmoe;
    config.train.router_objective = RouterObjective::ClassPartition;
    config.train.batch_size = 16;
    config.train.attack.steps = 1;
    config.train.eval_size = 300;
    config.balance_weight = 0.0;
    assert_eq!(config.train.router_kl_warmup, 0.5);
    let mut run = Run::new(config, synthetic(4000, 500), &cpu()).unwrap();
    finish(&mut run);
    let options = EvalOptions {
        limit: 300,
        ..EvalOptions::default()
    };
    let result = evaluate(run.model(), &run.dataset().test, &options, &cpu())
        .wait()
        .unwrap();
    // One image router: every MoE layer routes alike.
    assert!(result.class_expert.windows(2).all(|w| w[0] == w[1]));
    let matrix = &result.class_expert[0];
    let follows: usize = matrix
        .iter()
        .enumerate()
        .map(|(y, row)| row[y % experts])
        .sum();
    let agreement = follows as f64 / result.images as f64;
    assert!(
        agreement >= 0.9,
        "{:.1}% of test images follow y mod {experts}; class × expert counts {matrix:?}",
        100.0 * agreement
    );
}

/// AdvMoE's two steps each take their gradient through a copy of the model whose other
/// parameters are frozen (`freeze_where`): the expert step's through frozen routers, the router
/// step's through frozen experts, so neither backward pass computes gradients it throws away.
/// Through the copy, the parameters a step owns get exactly the update the whole model's
/// gradient gives them, and the frozen ones get no gradient at all (a step over every parameter
/// leaves them as they were).
#[test]
fn a_step_through_frozen_parameters_updates_the_rest_as_before() {
    let device = cpu().autodiff();
    let data = synthetic(4000, 500);
    let batch = to_device(&data.test.batch(0, 16), 10, &device);
    let model = trained(RouterKind::Image).model();
    let hot = one_hot_rows(batch.labels.clone(), 10);
    let host = |m: &MoeNet| -> Vec<(String, Vec<f32>)> {
        device_tensors(m)
            .into_iter()
            .map(|(name, t, _)| (name, t.into_data().try_into_vec_as::<f32>().unwrap()))
            .collect()
    };
    let experts = |p: &str| !is_router_path(p);
    type Owns<'a> = &'a dyn Fn(&str) -> bool;
    let parts: [(&str, Owns); 2] = [("experts", &experts), ("routers", &is_router_path)];
    for (part, owns) in parts {
        let grads = |through: &MoeNet| {
            let logits = through.forward(batch.images.clone(), Mode::Train).logits;
            GradientsParams::from_grads(cross_entropy(logits, hot.clone()).backward(), through)
        };
        let step = |grads, owns: &dyn Fn(&str) -> bool| {
            let mut sgd = Optimizer::new(OptimizerKind::Sgd, 0.9, 5e-4);
            host(&sgd.step_where(model.clone(), grads, 0.1, owns))
        };
        let whole = grads(&model);
        let frozen = grads(&freeze_where(model.clone(), &|p| !owns(p)));
        assert!(
            !frozen.is_empty() && frozen.len() < whole.len(),
            "{part}: {} of {} gradients",
            frozen.len(),
            whole.len()
        );
        assert_eq!(step(frozen, owns), step(whole, owns), "{part}");
        let frozen = grads(&freeze_where(model.clone(), &|p| !owns(p)));
        let before = host(&model);
        for ((name, after), (_, before)) in step(frozen, &|_| true).iter().zip(&before) {
            if !owns(name) {
                assert_eq!(after, before, "{part}: {name} has a gradient");
            }
        }
    }
}

/// Every train-mode pass of a step is folded into the running statistics, in order, as
/// PyTorch's train mode does: a TRADES step's clean and adversarial passes give
/// `0.81·r + 0.09·clean + 0.1·adversarial`. (The product once kept only the last pass's
/// statistics of a batch norm that several passes had seen.)
#[test]
fn the_running_statistics_fold_every_pass_in_order() {
    // The CPU folds with tensor operations, `wgpu` with one kernel per pass and batch norm.
    for device in [cpu(), gpu()] {
        let model = MoeNet::new(&advmoe_core::ModelSpec::resnet(8, 1, 2, 0.5), 5, &device).unwrap();
        let mut rng = advmoe_core::Rng::seed(3);
        let mut batch = |scale: f32| {
            crate::common::tensor4(
                (0..6 * 3 * 32 * 32)
                    .map(|_| scale * rng.uniform())
                    .collect(),
                [6, 3, 32, 32],
                &device,
            )
        };
        let (first, second) = (batch(1.0), batch(0.5));
        let a = model.forward(first, Mode::Train).bn_updates;
        let b = model.forward(second, Mode::Train).bn_updates;
        let vec1 = |t: burn::tensor::Tensor<1>| t.into_data().try_into_vec_as::<f32>().unwrap();
        let stats = |updates: &[advmoe_model::BnUpdate], path: &str| {
            let u = updates.iter().find(|u| u.path == path).unwrap();
            (vec1(u.mean.clone()), vec1(u.unbiased_var()))
        };
        let mut both = a.clone();
        both.extend(b.clone());
        let folded = model.clone().apply_bn_updates(both);
        let reversed = {
            let mut both = b.clone();
            both.extend(a.clone());
            model.clone().apply_bn_updates(both)
        };
        let running = |m: &MoeNet, path: &str| {
            let bn = match path {
                "resnet.stem_bn" => &m.resnet.as_ref().unwrap().stem_bn,
                _ => &m.router.as_ref().unwrap().bns[0],
            };
            (vec1(bn.running_mean.val()), vec1(bn.running_var.val()))
        };
        for path in ["resnet.stem_bn", "router.bns.0"] {
            let ((mean_a, var_a), (mean_b, var_b)) = (stats(&a, path), stats(&b, path));
            // Initial statistics: mean 0, variance 1.
            let expected_mean: Vec<f32> = mean_a
                .iter()
                .zip(&mean_b)
                .map(|(a, b)| 0.09 * a + 0.1 * b)
                .collect();
            let expected_var: Vec<f32> = var_a
                .iter()
                .zip(&var_b)
                .map(|(a, b)| 0.81 + 0.09 * a + 0.1 * b)
                .collect();
            let (mean, var) = running(&folded, path);
            assert!(
                crate::common::max_abs_diff(&mean, &expected_mean) < 1e-6,
                "{path}: {mean:?} vs {expected_mean:?}"
            );
            assert!(
                crate::common::max_abs_diff(&var, &expected_var) < 1e-5,
                "{path}: {var:?} vs {expected_var:?}"
            );
            // The order matters, and the two batches differ enough to show it.
            let (mean_r, _) = running(&reversed, path);
            assert!(crate::common::max_abs_diff(&mean, &mean_r) > 1e-3, "{path}");
        }
    }
}

/// The optimisers' and running statistics' update kernels (one launch per parameter or batch
/// norm on `wgpu`) compute what the tensor operations compute ([`advmoe_kernels::reference`],
/// the CPU's path), and both what the formulas give, computed here on the host: SGD with and
/// without momentum state and weight decay, Adam starting and continuing its moments, and the
/// running statistics' fold. Sizes cross a workgroup's 256 elements.
#[test]
fn update_kernels_compute_the_optimisers_steps() {
    use advmoe_kernels::{AdamHyper, reference};
    use burn::tensor::{Tensor, TensorData};
    let device = gpu();
    let mut rng = advmoe_core::Rng::seed(5);
    let vec1 = |t: Tensor<1>| t.into_data().try_into_vec_as::<f32>().unwrap();
    let mut checked = 0;
    for n in [1, 7, 517] {
        let mut values =
            |offset: f32| -> Vec<f32> { (0..n).map(|_| offset + rng.normal()).collect() };
        let (p, g, b) = (values(0.0), values(0.0), values(0.0));
        let v: Vec<f32> = values(0.0).iter().map(|x| x * x).collect();
        let t = |v: &Vec<f32>| Tensor::<1>::from_data(TensorData::new(v.clone(), [n]), &device);
        // Each output against the reference's (same device) and the host's formula.
        let mut agree = |label: &str, kernel: Tensor<1>, reference: Tensor<1>, host: Vec<f32>| {
            let (kernel, reference) = (vec1(kernel), vec1(reference));
            let scale = host.iter().fold(1.0f32, |m, x| m.max(x.abs()));
            let to_reference = crate::common::max_abs_diff(&kernel, &reference) / scale;
            let to_host = crate::common::max_abs_diff(&kernel, &host) / scale;
            assert!(
                to_reference < 1e-6,
                "{label}, n = {n}: kernel vs tensor ops {to_reference}"
            );
            assert!(
                to_host < 1e-5,
                "{label}, n = {n}: kernel vs formula {to_host}"
            );
            checked += 1;
        };
        for (momentum, weight_decay, with_buf) in [
            (0.9, 5e-4, true),
            (0.9, 5e-4, false),
            (0.9, 0.0, true),
            (0.0, 1e-2, false),
        ] {
            let buf = with_buf.then(|| t(&b));
            let lr = 0.05;
            let (kp, kb) =
                advmoe_kernels::sgd_step(t(&p), t(&g), buf.clone(), lr, momentum, weight_decay);
            let (rp, rb) = reference::sgd_step(t(&p), t(&g), buf, lr, momentum, weight_decay);
            let host_buf: Vec<f32> = (0..n)
                .map(|i| {
                    let gi = g[i] + weight_decay as f32 * p[i];
                    if with_buf {
                        momentum as f32 * b[i] + gi
                    } else {
                        gi
                    }
                })
                .collect();
            let host_p: Vec<f32> = (0..n).map(|i| p[i] - lr as f32 * host_buf[i]).collect();
            let label = format!("SGD m {momentum} wd {weight_decay} buf {with_buf}");
            agree(&format!("{label}: param"), kp, rp, host_p);
            agree(&format!("{label}: buf"), kb, rb, host_buf);
        }
        for (step, weight_decay, with_state) in [(1, 0.0, false), (7, 1e-4, true)] {
            let hyper = AdamHyper {
                lr: 1e-3,
                weight_decay,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                step,
            };
            let moments = with_state.then(|| (t(&b), t(&v)));
            let (kp, km, kv) = advmoe_kernels::adam_step(t(&p), t(&g), moments.clone(), hyper);
            let (rp, rm, rv) = reference::adam_step(t(&p), t(&g), moments, hyper);
            let (mut host_p, mut host_m, mut host_v) = (vec![], vec![], vec![]);
            for i in 0..n {
                let gi = (f64::from(g[i]) + weight_decay * f64::from(p[i])) as f32;
                let (m0, v0) = if with_state { (b[i], v[i]) } else { (0.0, 0.0) };
                let m = 0.9 * m0 + 0.1 * gi;
                let v = 0.999 * v0 + 0.001 * gi * gi;
                let m_hat = f64::from(m) / (1.0 - 0.9f64.powi(step));
                let v_hat = f64::from(v) / (1.0 - 0.999f64.powi(step));
                host_p.push((f64::from(p[i]) - 1e-3 * m_hat / (v_hat.sqrt() + 1e-8)) as f32);
                host_m.push(m);
                host_v.push(v);
            }
            let label = format!("Adam step {step} state {with_state}");
            agree(&format!("{label}: param"), kp, rp, host_p);
            agree(&format!("{label}: m"), km, rm, host_m);
            agree(&format!("{label}: v"), kv, rv, host_v);
        }
        let (unbiased, momentum) = (1.25, 0.1);
        let (km, kv) =
            advmoe_kernels::running_stats_step(t(&p), t(&v), t(&g), t(&b), momentum, unbiased);
        let (rm, rv) =
            reference::running_stats_step(t(&p), t(&v), t(&g), t(&b), momentum, unbiased);
        let host_mean: Vec<f32> = (0..n).map(|i| 0.9 * p[i] + 0.1 * g[i]).collect();
        let host_var: Vec<f32> = (0..n).map(|i| 0.9 * v[i] + 0.1 * 1.25 * b[i]).collect();
        agree("running mean", km, rm, host_mean);
        agree("running var", kv, rv, host_var);
    }
    assert_eq!(checked, 3 * (4 * 2 + 2 * 3 + 2));
}

/// A residual block's end on our kernels, `advmoe_kernels::add_relu` (one launch forward, one
/// backward on `wgpu`), computes what Burn's `relu(a + b)` computes, on lavapipe and the CPU:
/// the output and both inputs' gradients exactly, sums that cancel to zero (where the ReLU cuts
/// and its gradient stops) included, and a NaN stays NaN.
#[test]
fn the_residual_relu_matches_burns() {
    use burn::tensor::Tensor;
    let mut rng = advmoe_core::Rng::seed(17);
    let shape = [3, 5, 7, 9];
    let n = shape.iter().product::<usize>();
    let a: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    // Every fifth entry cancels a's exactly.
    let b: Vec<f32> = (0..n)
        .map(|i| if i % 5 == 0 { -a[i] } else { rng.normal() })
        .collect();
    let upstream: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
    for device in [gpu().autodiff(), cpu().autodiff()] {
        let run = |ours: bool| {
            let ta = crate::common::tensor4(a.clone(), shape, &device).require_grad();
            let tb = crate::common::tensor4(b.clone(), shape, &device).require_grad();
            let out = if ours {
                advmoe_kernels::add_relu(ta.clone(), tb.clone())
            } else {
                burn::tensor::activation::relu(ta.clone() + tb.clone())
            };
            let up = crate::common::tensor4(upstream.clone(), shape, &device);
            let grads = (out.clone() * up).sum().backward();
            let g = |t: &Tensor<4>| {
                crate::common::read(Tensor::<4>::from_inner(t.grad(&grads).unwrap()))
            };
            [crate::common::read(out), g(&ta), g(&tb)]
        };
        let (ours, burns) = (run(true), run(false));
        for (what, (x, y)) in ["output", "grad a", "grad b"]
            .iter()
            .zip(ours.iter().zip(&burns))
        {
            let differ = x.iter().zip(y).filter(|(p, q)| p != q).count();
            assert_eq!(differ, 0, "{what} on {device:?}: values differ from Burn's");
        }
        // The cancelled sums are cut, and their gradient with them.
        assert!(ours[0].iter().step_by(5).all(|v| *v == 0.0));
        assert!(ours[1].iter().step_by(5).all(|v| *v == 0.0));
        let mut with_nan = a.clone();
        with_nan[1] = f32::NAN;
        let t = |v: &Vec<f32>| crate::common::tensor4(v.clone(), shape, &device);
        let out = crate::common::read(advmoe_kernels::add_relu(t(&with_nan), t(&b)));
        assert!(out[1].is_nan(), "a NaN passes the ReLU on {device:?}");
    }
}

/// How a batch norm under test computes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum NormUnderTest {
    /// Burn's `batch_norm_train` / `batch_norm`, then its ReLU: the reference.
    Burns,
    /// `advmoe_model::layers::batch_norm_train_wide` (train mode only).
    Wide,
    /// `advmoe_kernels::fused_batch_norm_train` / `_eval`.
    Fused,
}

/// The batch norms the models can use compute what Burn's `batch_norm_train` and `batch_norm`
/// (then `relu`) compute, to 1e-4 of the largest value: the output, the batch mean and biased
/// variance, and the gradients of input, scale and shift. On lavapipe: the fused WGSL kernels
/// (the default on `wgpu`), in train and eval mode, with and without the ReLU, and the
/// per-image-then-batch reductions (train mode); on the CPU: the fused operation's parts and
/// backward out of tensor operations (`flex`). Odd sizes, a channel mean far from zero (so that
/// centring matters), 1×1 images, and running statistics unlike the batch's included.
#[test]
fn batch_norms_on_our_kernels_match_burns() {
    use burn::tensor::Tensor;
    let mut rng = advmoe_core::Rng::seed(11);
    let cases = [
        (gpu().autodiff(), NormUnderTest::Fused),
        (gpu().autodiff(), NormUnderTest::Wide),
        (cpu().autodiff(), NormUnderTest::Fused),
    ];
    let mut checked = 0;
    for (device, under_test) in cases {
        for shape in [[5, 6, 7, 9], [16, 4, 32, 32], [3, 8, 1, 1]] {
            let [b, c, h, w] = shape;
            let n = b * c * h * w;
            let mut values = |count: usize, offset: f32| -> Vec<f32> {
                (0..count).map(|_| offset + 2.0 * rng.normal()).collect()
            };
            let x_values = values(n, 3.0);
            let upstream = crate::common::tensor4(values(n, 0.0), shape, &device);
            let (gamma_values, beta_values) = (values(c, 1.0), values(c, 0.0));
            let running_mean = values(c, 2.5);
            let running_var: Vec<f32> = values(c, 0.0).iter().map(|v| 0.5 + v * v).collect();
            let vec1 = |t: Tensor<1>| t.into_data().try_into_vec_as::<f32>().unwrap();
            let constant = |v: &Vec<f32>| {
                Tensor::<1>::from_data(burn::tensor::TensorData::new(v.clone(), [c]), &device)
            };
            let run = |how: NormUnderTest, train: bool, relu: bool| {
                let x = crate::common::tensor4(x_values.clone(), shape, &device).require_grad();
                let (gamma, beta) = (
                    constant(&gamma_values).require_grad(),
                    constant(&beta_values).require_grad(),
                );
                let (x_in, g, bt) = (x.clone(), gamma.clone(), beta.clone());
                let (mean, var) = (constant(&running_mean), constant(&running_var));
                let (out, mean, var) = match (how, train) {
                    (NormUnderTest::Fused, true) => {
                        advmoe_kernels::fused_batch_norm_train(x_in, g, bt, 1e-5, relu)
                    }
                    (NormUnderTest::Fused, false) => {
                        let out = advmoe_kernels::fused_batch_norm_eval(
                            x_in,
                            g,
                            bt,
                            mean.clone(),
                            var.clone(),
                            1e-5,
                            relu,
                        );
                        (out, mean, var)
                    }
                    (NormUnderTest::Wide, _) => {
                        let (out, m, v) =
                            advmoe_model::layers::batch_norm_train_wide(x_in, g, bt, 1e-5);
                        (maybe_relu(out, relu), m, v)
                    }
                    (NormUnderTest::Burns, true) => {
                        let o = burn::tensor::module::batch_norm_train(x_in, g, bt, 1e-5);
                        (maybe_relu(o.output, relu), o.mean, o.variance)
                    }
                    (NormUnderTest::Burns, false) => {
                        let out = burn::tensor::module::batch_norm(
                            x_in,
                            g,
                            bt,
                            mean.clone(),
                            var.clone(),
                            1e-5,
                        );
                        (maybe_relu(out, relu), mean, var)
                    }
                };
                let grads = (out.clone() * upstream.clone()).sum().backward();
                let g4 = |t: &Tensor<4>| Tensor::<4>::from_inner(t.grad(&grads).unwrap());
                let g1 = |t: &Tensor<1>| vec1(Tensor::<1>::from_inner(t.grad(&grads).unwrap()));
                [
                    crate::common::read(out),
                    vec1(mean),
                    vec1(var),
                    crate::common::read(g4(&x)),
                    g1(&gamma),
                    g1(&beta),
                ]
            };
            let names = [
                "output",
                "mean",
                "variance",
                "x grad",
                "gamma grad",
                "beta grad",
            ];
            let modes: &[(bool, bool)] = match under_test {
                NormUnderTest::Wide => &[(true, false)],
                _ => &[(true, false), (true, true), (false, false), (false, true)],
            };
            for &(train, relu) in modes {
                let (ours, burns) = (
                    run(under_test, train, relu),
                    run(NormUnderTest::Burns, train, relu),
                );
                for ((name, a), r) in names.iter().zip(&ours).zip(&burns) {
                    let scale = r.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
                    let diff = crate::common::max_abs_diff(a, r) / scale;
                    assert!(
                        diff < 1e-4,
                        "{under_test:?} on {device:?} {shape:?} train {train} relu {relu} {name}: \
                         relative difference {diff:e}"
                    );
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3 * 4 + 3 + 3 * 4);
}

fn maybe_relu(x: burn::tensor::Tensor<4>, relu: bool) -> burn::tensor::Tensor<4> {
    if relu {
        burn::tensor::activation::relu(x)
    } else {
        x
    }
}
