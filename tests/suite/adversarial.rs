//! Adversarial training: AdvMoE's two optimisers, NaN naming, log-space KL, and the comparison.

use advmoe_core::{
    AttackSpec, BnPasses, MethodKind, OptimizerKind, Rng, RouterKind, RouterObjective,
};
use advmoe_engine::compare::{
    CHECKPOINT_DIR, CompareEntry, CompareEvent, CompareRow, Comparison, compare_entries,
    markdown_curves, markdown_paired, markdown_routes, markdown_table, run_comparison,
};
use advmoe_engine::loss::kl_div;
use advmoe_engine::method::{AdvMoe, MethodConfig};
use advmoe_engine::optim::Optimizer;
use advmoe_engine::robust::{
    NamedAttack, RobustOptions, RobustReport, evaluate_robust, released_attack, released_robust_acc,
};
use advmoe_engine::tensors::to_device;
use advmoe_engine::{EngineError, Run, RunState};
use advmoe_model::checkpoint::{host_tensors, load_model};
use advmoe_model::{MoeNet, is_router_path};
use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};

use crate::common::Wait as _;
use crate::common::{Poison, Scratch, cpu, gpu, share_correct, small_config, synthetic};

fn advmoe_config(objective: RouterObjective, router: RouterKind) -> MethodConfig {
    MethodConfig {
        kind: MethodKind::Advmoe,
        attack: AttackSpec::paper_train(),
        balance_weight: 1.0,
        beta: 6.0,
        alpha: 6.0,
        router_kl_warmup: 0.0,
        router_lr_scale: 1.0,
        bn_passes: BnPasses::Own,
        router_objective: objective,
        image_router: router == RouterKind::Image,
        num_experts: 2,
    }
}

/// Which tensors changed between two snapshots, split by router / not router.
fn changed(before: &MoeNet, after: &MoeNet) -> (Vec<String>, Vec<String>, usize, usize) {
    let a = host_tensors(before).wait().unwrap();
    let b = host_tensors(after).wait().unwrap();
    let (mut router_changed, mut expert_changed) = (Vec::new(), Vec::new());
    let (mut routers, mut experts) = (0, 0);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.name, y.name);
        assert!(
            y.values.iter().all(|v| v.is_finite()),
            "{} is not finite",
            y.name
        );
        let moved = x.values != y.values;
        if is_router_path(&x.name) {
            routers += 1;
            if moved {
                router_changed.push(x.name.clone());
            }
        } else {
            experts += 1;
            if moved {
                expert_changed.push(x.name.clone());
            }
        }
    }
    (router_changed, expert_changed, routers, experts)
}

fn optimisers_own_their_parameters(
    device: &Device,
    router: RouterKind,
    objective: RouterObjective,
) {
    let device = device.clone().autodiff();
    let mut config = small_config(4, 2, 1);
    config.model.router = router;
    let model = MoeNet::new(&config.model, 0, &device).unwrap();
    let data = synthetic(64, 16);
    let batch = to_device(&data.train.batch(0, 8), 10, &device);
    let method = AdvMoe::new(advmoe_config(objective, router));
    let mut rng = Rng::seed(1);
    let mut experts_opt = Optimizer::new(OptimizerKind::Sgd, 0.9, 5e-4);
    let mut routers_opt = Optimizer::new(OptimizerKind::Sgd, 0.9, 5e-4);

    let (after_a, _) = method.expert_step(
        model.clone(),
        &batch,
        0.05,
        &mut experts_opt,
        &mut rng,
        None,
    );
    let (r, e, routers, experts) = changed(&model, &after_a);
    let label = format!("{router} / {objective}");
    assert!(
        r.is_empty(),
        "{label}: the expert step changed router tensors {r:?}"
    );
    assert_eq!(
        e.len(),
        experts,
        "{label}: the expert step left expert tensors unchanged"
    );

    let (after_b, _) = method.router_step(
        after_a.clone(),
        &batch,
        0.05,
        0.0,
        &mut routers_opt,
        &mut rng,
        None,
    );
    let (r, e, _, _) = changed(&after_a, &after_b);
    assert!(
        e.is_empty(),
        "{label}: the router step changed expert tensors {e:?}"
    );
    assert_eq!(
        r.len(),
        routers,
        "{label}: the router step left router tensors unchanged"
    );
    assert!(routers > 0);
}

#[test]
fn advmoe_optimisers_change_only_their_own_parameters() {
    optimisers_own_their_parameters(&cpu(), RouterKind::Image, RouterObjective::ClassPartition);
    optimisers_own_their_parameters(&cpu(), RouterKind::PerLayer, RouterObjective::Robust);
    optimisers_own_their_parameters(&gpu(), RouterKind::Image, RouterObjective::Robust);
}

/// Every trained router weight's change over a run's first step (not the batch norms' running
/// statistics, which no optimiser moves), and every expert tensor after it.
fn first_step(router_lr_scale: f64) -> (Vec<f32>, Vec<f32>) {
    let mut config = small_config(4, 2, 5);
    config.train.method = MethodKind::Advmoe;
    config.train.router_objective = RouterObjective::ClassPartition;
    config.train.batch_size = 8;
    config.train.router_lr_scale = router_lr_scale;
    let mut run = Run::new(config, synthetic(64, 16), &cpu()).unwrap();
    let before = host_tensors(run.model()).wait().unwrap();
    run.advance(1, &mut |_| true).wait().unwrap();
    let after = host_tensors(run.model()).wait().unwrap();
    let (mut router_delta, mut experts) = (Vec::new(), Vec::new());
    for (b, a) in before.iter().zip(&after) {
        if is_router_path(&a.name) {
            if a.name.contains("running_") {
                continue;
            }
            router_delta.extend(a.values.iter().zip(&b.values).map(|(a, b)| a - b));
        } else {
            experts.extend(&a.values);
        }
    }
    (router_delta, experts)
}

#[test]
fn the_router_learning_rate_scale_moves_the_routers_alone() {
    // SGD's first step moves each weight by lr × (gradient + decay × weight): at three times
    // the router's rate the routers move three times as far, and the experts, stepped first,
    // end where they did.
    let (delta1, experts1) = first_step(1.0);
    let (delta3, experts3) = first_step(3.0);
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    assert!(
        norm(&delta1) > 1e-4,
        "the router did not move: {}",
        norm(&delta1)
    );
    let off: Vec<f32> = delta3
        .iter()
        .zip(&delta1)
        .map(|(d3, d1)| d3 - 3.0 * d1)
        .collect();
    let ratio = norm(&delta3) / norm(&delta1);
    assert!((ratio - 3.0).abs() < 0.03, "router step ratio {ratio}");
    assert!(
        norm(&off) < 0.01 * norm(&delta3),
        "not the same direction: {} of {}",
        norm(&off),
        norm(&delta3)
    );
    let drift = experts1
        .iter()
        .zip(&experts3)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        drift < 1e-6,
        "the experts moved with the router's rate: {drift}"
    );
}

/// Every batch norm's running statistics after one step of `method` at ε = 0 (the adversarial
/// examples are the clean images) and a learning rate too small to move the weights: every
/// train-mode pass then has the same batch statistics `s`, and a batch norm folded k times holds
/// `0.9^k · initial + (1 - 0.9^k) · s`.
fn running_after_one_step(method: MethodKind, passes: BnPasses) -> Vec<(String, Vec<f32>)> {
    let mut config = small_config(4, 2, 5);
    config.train.method = method;
    config.train.router_objective = RouterObjective::ClassPartition;
    config.train.batch_size = 8;
    config.train.lr = 1e-9;
    config.train.attack.eps = 0.0;
    config.train.bn_passes = passes;
    let mut run = Run::new(config, synthetic(64, 16), &cpu()).unwrap();
    run.advance(1, &mut |_| true).wait().unwrap();
    host_tensors(run.model())
        .wait()
        .unwrap()
        .into_iter()
        .filter(|t| t.name.contains("running_"))
        // Running variance starts at 1, running mean at 0: keep what the folds added.
        .map(|t| {
            let start = if t.name.ends_with("running_var") {
                1.0
            } else {
                0.0
            };
            let values = t.values.iter().map(|v| v - start).collect();
            (t.name, values)
        })
        .collect()
}

#[test]
fn advmoe_folds_the_batch_norm_passes_its_setting_names() {
    // Vanilla MoE AT folds its clean and adversarial passes into every batch norm: 1 - 0.9² of
    // the way to the batch statistics. AdvMoE's own passes: the experts' step folds its two
    // into the experts' batch norms, the router step its two into the routers'. The released
    // script's: the experts' batch norms 4 (a clean pass before the attacks, the experts'
    // step's two, the router step's clean pass), the routers' 6 (the router alone and the
    // whole model before the attacks, then both steps' two).
    let reference = running_after_one_step(MethodKind::MoeAt, BnPasses::Own);
    let own = running_after_one_step(MethodKind::Advmoe, BnPasses::Own);
    let released = running_after_one_step(MethodKind::Advmoe, BnPasses::Released);
    let folded = |k: i32| 1.0 - 0.9f64.powi(k);
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let (mut routers, mut experts) = (0, 0);
    for ((r, o), x) in reference.iter().zip(&own).zip(&released) {
        assert_eq!((&r.0, &r.0), (&o.0, &x.0));
        let router = is_router_path(&r.0);
        let (k_own, k_released) = if router { (2, 6) } else { (2, 4) };
        for (label, values, k) in [("own", &o.1, k_own), ("released", &x.1, k_released)] {
            let scale = (folded(k) / folded(2)) as f32;
            let off: Vec<f32> = values
                .iter()
                .zip(&r.1)
                .map(|(v, r)| v - scale * r)
                .collect();
            assert!(
                norm(&r.1) > 1e-3 && norm(&off) < 1e-4 * norm(values).max(1e-3),
                "{label}, {}: not {k} folds ({} off of {})",
                r.0,
                norm(&off),
                norm(values)
            );
        }
        if router {
            routers += 1;
        } else {
            experts += 1;
        }
    }
    assert!(routers >= 4 && experts >= 4, "{routers} / {experts}");
}

#[test]
fn nan_router_weights_stop_advmoe_naming_the_term_and_step() {
    let mut config = small_config(4, 2, 5);
    config.train.method = MethodKind::Advmoe;
    config.train.batch_size = 8;
    let mut run = Run::new(config, synthetic(64, 16), &cpu()).unwrap();
    run.advance(1, &mut |_| true).wait().unwrap();
    let poisoned = run.model().clone().map(&mut Poison::routers());
    run.set_model(poisoned);
    let err = run.advance(1, &mut |_| true).wait().unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, EngineError::NonFinite { step: 1, .. }),
        "{text}"
    );
    assert!(
        text.contains("expert TRADES loss") && text.contains("step 1"),
        "{text}"
    );
    assert_eq!(run.state(), RunState::Failed);
}

/// The released AdvMoE training differentiates its inner attacks through the straight-through
/// gates: with `through_gates` on the training attack, vanilla MoE AT and AdvMoE train on other
/// adversarial examples when an image router's scores reach the image, and on the same ones,
/// to the bit, with per-layer routers (whose input the gates' term does not reach).
#[test]
fn a_training_attack_through_the_gates_changes_training_only_with_an_image_router() {
    for method in [MethodKind::MoeAt, MethodKind::Advmoe] {
        for (router, changes) in [(RouterKind::Image, true), (RouterKind::PerLayer, false)] {
            let losses = |through_gates: bool| {
                let mut config = small_config(4, 2, 2);
                config.model.router = router;
                config.train.method = method;
                config.train.batch_size = 8;
                config.train.attack.through_gates = through_gates;
                config.validate().unwrap();
                let mut run = Run::new(config, synthetic(64, 16), &cpu()).unwrap();
                let mut losses = Vec::new();
                while run.state() == RunState::Running {
                    losses.extend(
                        run.advance(usize::MAX, &mut |_| true)
                            .wait()
                            .unwrap()
                            .losses,
                    );
                }
                losses
            };
            let (exact, gates) = (losses(false), losses(true));
            assert_eq!(exact.len(), 2);
            assert!(exact.iter().chain(&gates).all(|l| l.is_finite()));
            assert_eq!(
                exact != gates,
                changes,
                "{method} {router:?}: {exact:?} {gates:?}"
            );
        }
    }
}

#[test]
fn kl_terms_stay_finite_where_softmax_underflows() {
    let device = cpu().autodiff();
    let p = Tensor::<2>::from_data(TensorData::new(vec![200.0f32, -200.0], [1, 2]), &device)
        .require_grad();
    let q = Tensor::<2>::from_data(TensorData::new(vec![-200.0f32, 200.0], [1, 2]), &device)
        .require_grad();
    let kl = kl_div(p.clone(), q.clone());
    let grads = kl.clone().backward();
    let value = kl.into_data().try_to_vec::<f32>().unwrap()[0];
    // KL(p ‖ q) = Σ p (log p − log q) = 1 · (0 − (−400)) = 400 in exact arithmetic; a softmax in
    // probability space gives log(0) = −inf here.
    assert!((value - 400.0).abs() < 1e-2, "KL {value}");
    for g in [p.grad(&grads).unwrap(), q.grad(&grads).unwrap()] {
        let g = g.into_data().try_to_vec::<f32>().unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    }
}

#[test]
fn the_comparison_trains_and_measures_every_model() {
    let mut base = small_config(4, 2, 2);
    base.train.method = MethodKind::MoeAt;
    base.train.batch_size = 8;
    base.train.attack.steps = 1;
    // Curves: an evaluation after each step, robustness on 4 test images at each.
    base.train.eval_every = 1;
    base.train.robust_eval_size = 4;
    let data = synthetic(64, 16);
    let entries = compare_entries(&base);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "dense-full-trades",
            "dense-same-cost-trades",
            "moe-at",
            "moe-at-balanced",
            "advmoe"
        ]
    );
    let eval = RobustOptions {
        attack: AttackSpec {
            steps: 2,
            ..AttackSpec::paper_eval()
        },
        limit: 8,
        partition_routes: true,
        ..RobustOptions::default()
    };
    let dir = Scratch::new("compare");
    let rows = run_comparison(
        &entries,
        data,
        &cpu(),
        &eval,
        Some(&dir),
        &mut |_| {},
        &|| false,
    )
    .wait()
    .unwrap();
    assert_eq!(rows.len(), 5);
    let by = |name: &str| rows.iter().find(|r| r.name == name).unwrap();
    // Same cost means same cost: the narrow dense model and one MoE pathway cost the same MACs.
    assert_eq!(
        by("dense-same-cost-trades").macs_pathway,
        by("advmoe").macs_pathway
    );
    assert!(by("dense-full-trades").macs_pathway > 2 * by("advmoe").macs_pathway);
    assert!(by("advmoe").macs_pathway_with_router > by("advmoe").macs_pathway);
    for row in &rows {
        let r = &row.report;
        assert_eq!(r.images, 8);
        assert!((0.0..=1.0).contains(&r.clean_acc) && (0.0..=1.0).contains(&r.robust_acc));
        assert_eq!(
            r.router_robustness.is_some(),
            row.experts > 1,
            "{}",
            row.name
        );
        assert_eq!(
            r.expert_robustness.is_some(),
            row.experts > 1,
            "{}",
            row.name
        );
        assert!(dir.join(&row.name).join("model.safetensors").exists());
        assert_eq!(row.steps, 2);
        // The training curves: clean and robust at the same steps, the router measured on MoEs.
        let steps: Vec<usize> = row.history.iter().map(|e| e.step).collect();
        let robust_steps: Vec<usize> = row.robust_history.iter().map(|p| p.step).collect();
        assert_eq!(steps, [1, 2], "{}", row.name);
        assert_eq!(robust_steps, steps, "{}", row.name);
        for p in &row.robust_history {
            assert_eq!(p.images, 4);
            assert!((0.0..=1.0).contains(&p.robust_acc));
            assert_eq!(
                p.router_robustness.is_some(),
                row.experts > 1,
                "{}",
                row.name
            );
        }
    }
    let curves = markdown_curves(&rows);
    let lines: Vec<&str> = curves.lines().filter(|l| l.starts_with('|')).collect();
    // Header, rule, steps 1 and 2; per model SA and RA, and the load of the three MoEs.
    assert_eq!(lines.len(), 4, "{curves}");
    assert_eq!(lines[0].matches('|').count(), 1 + 1 + 5 * 2 + 3, "{curves}");
    assert!(lines[3].starts_with("| 2 |"), "{curves}");
    assert!(
        curves.contains("RA during training: PGD-10 at ε = 8/255 on the first 4 test images"),
        "{curves}"
    );
    let table = markdown_table(&rows);
    assert_eq!(table.lines().filter(|l| l.starts_with('|')).count(), 2 + 5);
    // Routes and classes: one line per MoE model; its split by the class partition covers all
    // eight images, and the experts' shares add up to 100%. The forced routes were measured on
    // every MoE model, and only there.
    for row in &rows {
        let forced = row.report.partition_routes;
        assert_eq!(forced.is_some(), row.experts > 1, "{}", row.name);
        assert!(forced.is_none_or(|f| f.all().images == 8), "{forced:?}");
    }
    let routes = markdown_routes(&rows);
    let lines: Vec<&str> = routes
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(2)
        .collect();
    assert_eq!(lines.len(), 3, "{routes}");
    assert!(
        routes.contains("routes forced to y mod N: SA % / RA % on all"),
        "{routes}"
    );
    assert!(routes.contains("a bound, not a classifier"), "{routes}");
    for line in &lines {
        assert!(line.contains(" of 8 |"), "{routes}");
        assert_eq!(line.matches('|').count(), 9, "{routes}");
        let shares: f64 = line
            .split(" | ")
            .nth(1)
            .unwrap()
            .split("; ")
            .map(|e| {
                e.split([':', ','])
                    .nth(1)
                    .unwrap()
                    .trim()
                    .parse::<f64>()
                    .unwrap()
            })
            .sum();
        assert!((shares - 100.0).abs() <= 1.0, "{routes}");
    }
    assert!(table.contains("| advmoe | advmoe | 2 | 0.5 |"), "{table}");
    // Below the table, the attacks measured, named.
    assert!(
        table.ends_with(
            "RA: PGD-2 at ε = 8.0/255 on 8 test images; router robustness: routes kept under \
             PGD-CW-20 × 2 starts, aimed at each router.\n"
        ),
        "{table}"
    );
    // compare.json as the CLI writes it reads back whole, and names its budget.
    let json = serde_json::to_vec(&Comparison {
        base: base.clone(),
        eval: eval.clone(),
        rows: rows.clone(),
    })
    .unwrap();
    let back = Comparison::from_json(&json).unwrap();
    // serde_json parses floats to within an ulp: compare what the report shows.
    assert_eq!(back.rows.len(), rows.len());
    for (a, b) in back.rows.iter().zip(&rows) {
        assert_eq!(
            (&a.name, a.method, a.experts, a.steps),
            (&b.name, b.method, b.experts, b.steps)
        );
        assert_eq!(a.report.robust_acc, b.report.robust_acc);
        assert_eq!(a.report.router_attack, b.report.router_attack);
        assert_eq!(a.robust_history, b.robust_history);
        assert_eq!(a.history.len(), b.history.len());
    }
    assert_eq!(back.eval.limit, 8);
    let budget = back.budget();
    assert!(
        budget.contains("data synthetic; resnet depth 1, base width 4, N = 2")
            && budget.contains("at lr 0.05 (cosine), batch 8, 2 steps; training attack 1 × ")
            && budget.ends_with("; seed 0"),
        "{budget}"
    );
    assert!(Comparison::from_json(b"{\"rows\": []}").is_err());

    // Run again with another evaluation: nothing is trained, every saved model is measured
    // again and keeps its training record; run once more with it: nothing is measured either.
    // This one also records each image's outcomes, so the rows can be compared image by image.
    // The CLI's `--eval-size` also sets the training curves' subset (`train.eval_size`), which
    // does not change the weights: asking for another subset does not train them again.
    let fewer = RobustOptions {
        limit: 6,
        partition_routes: false,
        per_image: true,
        ..eval.clone()
    };
    let resized: Vec<CompareEntry> = entries
        .iter()
        .map(|e| {
            let mut e = e.clone();
            e.config.train.eval_size = 6;
            e
        })
        .collect();
    assert_ne!(resized[0].config, entries[0].config);
    for measured in [true, false] {
        let (mut steps, mut evaluated) = (0, 0);
        let again = run_comparison(
            &resized,
            synthetic(64, 16),
            &cpu(),
            &fewer,
            Some(&dir),
            &mut |event| match event {
                CompareEvent::Step { .. } => steps += 1,
                CompareEvent::Evaluating { .. } => evaluated += 1,
                _ => {}
            },
            &|| false,
        )
        .wait()
        .unwrap();
        assert_eq!(steps, 0);
        assert_eq!(evaluated > 0, measured);
        for (a, b) in again.iter().zip(&rows) {
            assert_eq!(a.report.images, 6, "{}", a.name);
            assert_eq!(a.report.partition_routes, None, "{}", a.name);
            assert_eq!(a.steps, b.steps, "{}", a.name);
            // Read back from row.json: to within an ulp.
            assert!(
                (a.train_secs - b.train_secs).abs() <= 1e-9 * b.train_secs,
                "{}",
                a.name
            );
            assert_eq!(a.history.len(), b.history.len(), "{}", a.name);
            assert_eq!(a.robust_history, b.robust_history, "{}", a.name);
            let outcomes = a.report.per_image.as_ref().expect("per-image outcomes");
            assert_eq!(outcomes.len(), 6, "{}", a.name);
            assert_eq!(
                share_correct(&outcomes.clean),
                a.report.clean_acc,
                "{}",
                a.name
            );
            assert_eq!(
                share_correct(&outcomes.robust),
                a.report.robust_acc,
                "{}",
                a.name
            );
            assert!(outcomes.worst_case.is_empty(), "no worst case measured");
        }
        // AdvMoE against each other model, on SA and the RA attack, and the differences are
        // those of the recorded accuracies.
        let paired = markdown_paired(&again);
        assert_eq!(paired.lines().count(), 2 + 4 * 2, "{paired}");
        let advmoe = again.iter().find(|r| r.name == "advmoe").unwrap();
        let moe_at = again.iter().find(|r| r.name == "moe-at").unwrap();
        let gap = 100.0 * (advmoe.report.robust_acc - moe_at.report.robust_acc);
        assert!(
            paired.contains(&format!("| advmoe − moe-at | RA (PGD-2) | {gap:+.1} |")),
            "{paired}"
        );
    }
    released_eval_joins_saved_rows(&entries, &fewer, &dir);
}

/// The released evaluation's RA, asked for after the rows were measured, is added to them
/// without training or measuring them again; on a model without a router its attack is the RA
/// attack itself.
fn released_eval_joins_saved_rows(entries: &[CompareEntry], eval: &RobustOptions, dir: &Scratch) {
    let released = RobustOptions {
        released_eval: true,
        ..eval.clone()
    };
    let compare = |eval: &RobustOptions| {
        let (mut steps, mut evaluated) = (0, 0);
        let rows = run_comparison(
            entries,
            synthetic(64, 16),
            &cpu(),
            eval,
            Some(dir),
            &mut |event| match event {
                CompareEvent::Step { .. } => steps += 1,
                CompareEvent::Evaluating { done, .. } => evaluated = evaluated.max(done),
                _ => {}
            },
            &|| false,
        )
        .wait()
        .unwrap();
        (rows, steps, evaluated)
    };
    let (before, ..) = compare(eval);
    assert!(
        before
            .iter()
            .all(|r| r.report.released_robust_acc.is_none())
    );
    // Only the released attack runs, on every row's 6 images; the rest is as saved (the same
    // report, to its wall-clock seconds).
    let (rows, steps, evaluated) = compare(&released);
    assert_eq!((steps, evaluated), (0, 6));
    for (a, b) in rows.iter().zip(&before) {
        let acc = a.report.released_robust_acc.expect("measured");
        assert!((0.0..=1.0).contains(&acc), "{}: {acc}", a.name);
        let without = RobustReport {
            released_robust_acc: None,
            ..a.report.clone()
        };
        assert_eq!(without, b.report, "{}", a.name);
    }
    let table = markdown_table(&rows);
    assert!(table.contains("RA, paper code's eval %"), "{table}");
    assert!(
        table.contains("PGD-2 through the gates + 6 × router CE at the same ε"),
        "{table}"
    );
    // Saved with it: nothing runs the third time.
    let (again, _, evaluated) = compare(&released);
    assert_eq!(evaluated, 0);
    let figures = |rows: &[CompareRow]| -> Vec<_> {
        rows.iter().map(|r| r.report.released_robust_acc).collect()
    };
    assert_eq!(figures(&again), figures(&rows));

    // Without a router nothing passes through gates and there is no router term: with a
    // deterministic start the released attack gives the RA attack's figure exactly.
    let entry = &entries[1];
    assert_eq!(entry.name, "dense-same-cost-trades");
    let model = load_model(
        &dir.join(&entry.name).join("model.safetensors"),
        &entry.config.model,
        &cpu().autodiff(),
    )
    .unwrap();
    let fixed = RobustOptions {
        attack: AttackSpec {
            random_start: false,
            ..eval.attack.clone()
        },
        ..eval.clone()
    };
    let test = &synthetic(64, 16).test;
    let ra = evaluate_robust(&model, test, &fixed, &cpu(), &mut |_, _| {})
        .wait()
        .unwrap()
        .robust_acc;
    let released = released_robust_acc(&model, test, &fixed, &cpu(), &mut |_, _| true)
        .wait()
        .unwrap();
    assert_eq!(released, Some(ra));
    assert_eq!(released_attack(&fixed.attack).router_term, 6.0);
    assert!(released_attack(&fixed.attack).through_gates);
}

#[test]
fn a_cut_comparison_continues_from_its_checkpoint() {
    let mut base = small_config(4, 2, 4);
    base.train.batch_size = 8;
    base.train.attack.steps = 1;
    base.train.eval_every = 1;
    base.train.robust_eval_size = 4;
    // AdvMoE: the most state to carry over (two optimisers, the warm-up of α, the curves).
    let entries: Vec<_> = compare_entries(&base)
        .into_iter()
        .filter(|e| e.name == "advmoe")
        .collect();
    // Two batches of 4 images, the worst case and each image's outcomes too: a cut between them
    // must not change a count.
    let eval = RobustOptions {
        attack: AttackSpec {
            steps: 2,
            ..AttackSpec::paper_eval()
        },
        limit: 8,
        batch_size: 4,
        worst_case: NamedAttack::auto_attack(8.0 / 255.0, 2, 2),
        partition_routes: true,
        per_image: true,
        ..RobustOptions::default()
    };
    // Runs the comparison in `dir`, stopped after the event named `stop_after`.
    let compare = |dir: &Scratch, stop_after: &str| {
        let mut events = Vec::new();
        let stopped = std::cell::Cell::new(false);
        let rows = run_comparison(
            &entries,
            synthetic(64, 16),
            &cpu(),
            &eval,
            Some(dir),
            &mut |event| {
                let said = match event {
                    CompareEvent::Resumed { step } => format!("resumed {step}"),
                    CompareEvent::Step { done, .. } => format!("step {done}"),
                    CompareEvent::Evaluating { done, .. } => format!("eval {done}"),
                    _ => return,
                };
                stopped.set(said == stop_after);
                events.push(said);
            },
            &|| stopped.get(),
        )
        .wait()
        .unwrap();
        (rows, events)
    };
    let whole = Scratch::new("compare-whole");
    let (expected, _) = compare(&whole, "");
    let cut = Scratch::new("compare-cut");
    let checkpoint = cut.join("advmoe").join(CHECKPOINT_DIR);
    let (rows, events) = compare(&cut, "step 2");
    assert!(rows.is_empty());
    assert_eq!(events, ["step 1", "step 2"]);
    assert!(checkpoint.join("run.json").exists() && checkpoint.join("curves.json").exists());
    assert!(!cut.join("advmoe").join("row.json").exists());
    // Continued: only the two steps left are taken; cut again after the first batch measured.
    let (rows, events) = compare(&cut, "eval 4");
    assert!(rows.is_empty());
    assert_eq!(
        events,
        ["resumed 2", "step 3", "step 4", "eval 0", "eval 4"]
    );
    assert!(checkpoint.join("eval.json").exists());
    // Continued again: no step, the second batch only, and the model, its curves and every
    // count of its report are those of the comparison that was never cut.
    let (rows, events) = compare(&cut, "");
    assert_eq!(events, ["resumed 4", "eval 4", "eval 8"]);
    let (a, b) = (&rows[0], &expected[0]);
    assert_eq!(a.steps, 4);
    assert_eq!(a.robust_history, b.robust_history);
    let curve = |row: &CompareRow| {
        row.history
            .iter()
            .map(|e| (e.step, e.loss.to_bits(), e.clean_acc, e.expert_load.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(curve(a), curve(b));
    assert_eq!(a.history.len(), 4);
    let mut report = a.report.clone();
    report.secs = b.report.secs;
    assert_eq!(report, b.report);
    assert!(b.report.worst_case.is_some() && b.report.partition_routes.is_some());
    let outcomes = b.report.per_image.as_ref().expect("per-image outcomes");
    assert_eq!((outcomes.len(), outcomes.worst_case.len()), (8, 8));
    // The row holds it all now: the checkpoint is gone.
    assert!(!checkpoint.exists());
    assert!(cut.join("advmoe").join("row.json").exists());
}

/// The recorded 3,000-step CIFAR-10 comparison of seed `seed` (docs/results).
fn recorded_seed(seed: u64) -> Comparison {
    recorded_3000("paired", seed)
}

/// The recorded 3,000-step CIFAR-10 comparison `stem` of seed `seed`: `stem.json` for seed 0,
/// `stem-seed-<seed>.json` for the others (docs/results/cifar10-cpu-3000-steps-bn).
fn recorded_3000(stem: &str, seed: u64) -> Comparison {
    let name = match seed {
        0 => format!("{stem}.json"),
        s => format!("{stem}-seed-{s}.json"),
    };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/results/cifar10-cpu-3000-steps-bn")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Comparison::from_json(&bytes).unwrap()
}

/// The summary over seeds of the two recorded CIFAR-10 seeds: each model's mean and spread are
/// those of its recorded figures, AdvMoE's worst-case gap to vanilla MoE AT is each seed's paired
/// difference (+1.8 and −3.2 points, both significant on their images) with a standard error
/// over the seeds that dwarfs either seed's own, and comparisons that differ in more than their
/// seed are refused with the setting named.
#[test]
fn a_summary_over_seeds_holds_the_training_noise() {
    use advmoe_engine::seeds::{SeedSummary, student_t_975, summaries_over_seeds};

    let (zero, one) = (recorded_seed(0), recorded_seed(1));
    let summary = SeedSummary::of(&[&zero, &one]).unwrap();
    assert_eq!(summary.seeds, [0, 1]);
    assert!(summary.left_out.is_empty(), "{:?}", summary.left_out);
    assert!(!summary.budget.contains("seed"), "{}", summary.budget);
    let names: Vec<&str> = summary.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["advmoe", "moe-at", "dense-same-cost-trades"]);
    for m in &summary.models {
        for (i, c) in [&zero, &one].iter().enumerate() {
            let row = c.rows.iter().find(|r| r.name == m.name).unwrap();
            assert_eq!(m.clean_acc.values[i], row.report.clean_acc);
            assert_eq!(
                m.worst_case.as_ref().unwrap().values[i],
                row.report.worst_case.as_ref().unwrap().robust_acc
            );
        }
    }
    let advmoe = &summary.models[0];
    let worst = advmoe.worst_case.as_ref().unwrap();
    assert!((100.0 * worst.mean - 21.5).abs() < 0.05, "{worst:?}");
    // Vanilla MoE AT's router collapsed with both seeds (onto expert 1, then expert 0);
    // AdvMoE's busiest expert took 58-59% of the images.
    let busiest = |i: usize| summary.models[i].busiest_expert.clone().unwrap();
    assert_eq!(busiest(1).values, [1.0, 1.0]);
    assert!(
        busiest(0).values.iter().all(|&v| (0.55..0.62).contains(&v)),
        "{:?}",
        busiest(0)
    );
    assert!(summary.models[2].busiest_expert.is_none());

    let gap = summary
        .gaps
        .iter()
        .find(|g| g.b == "moe-at" && g.what == "worst-case RA")
        .unwrap();
    let each: Vec<f64> = gap.per_seed.iter().map(|p| 100.0 * p.difference).collect();
    assert!(
        (each[0] - 1.8).abs() < 0.05 && (each[1] + 3.2).abs() < 0.05,
        "{each:?}"
    );
    assert_eq!(gap.significant(), (1, 1));
    // Two seeds: the standard error is half their distance, and t(0.975, 1) = 12.706 widens it.
    let se = (gap.per_seed[0].difference - gap.per_seed[1].difference).abs() / 2.0;
    assert!((gap.std_error - se).abs() < 1e-12);
    assert!(gap.std_error > 2.0 * gap.per_seed[0].std_error.max(gap.per_seed[1].std_error));
    let (lo, hi) = gap.interval.unwrap();
    assert!((hi - lo - 2.0 * 12.706 * se).abs() < 1e-9 && lo < 0.0 && hi > 0.0);
    assert_eq!(
        summary.gaps.len(),
        2 * 3,
        "SA, PGD-10 and the worst case against 2 models"
    );

    let md = summary.markdown();
    assert!(
        md.contains("| moe-at |") && md.contains("100.0 ± 0.0 (100.0, 100.0)"),
        "{md}"
    );
    assert!(
        md.contains(
            "| advmoe − moe-at | worst-case RA | +1.8 (0.030), -3.2 (0.001) | -0.7 ± 2.5 |"
        ),
        "{md}"
    );

    // Refused: a seed twice, and another budget.
    let twice = SeedSummary::of(&[&zero, &zero]).unwrap_err();
    assert!(twice.contains("both trained with seed 0"), "{twice}");
    let mut longer = one.clone();
    longer.base.train.total_steps = 6000;
    let other = SeedSummary::of(&[&zero, &longer]).unwrap_err();
    assert!(other.contains("base.train.total_steps"), "{other}");
    // Grouped as the app's report groups what it holds: the other budget stands alone.
    let groups = summaries_over_seeds(&[&zero, &longer, &one]);
    assert_eq!(
        groups[0].as_ref().map(|g| g.seeds.clone()),
        Some(vec![0, 1])
    );
    assert!(groups[1].is_none());
    assert_eq!(groups[2], groups[0]);
    let mut attacked = one;
    attacked.eval.attack.steps = 20;
    let other = SeedSummary::of(&[&zero, &attacked]).unwrap_err();
    assert!(other.contains("eval.attack.steps"), "{other}");

    // Student's t: tabulated t(0.975, 30) = 2.042, t(0.975, 120) = 1.980.
    assert!((student_t_975(30) - 2.042).abs() < 1e-3);
    assert!((student_t_975(120) - 1.980).abs() < 1e-3);
}

/// AdvMoE trained with the robust router objective (recorded: one `compare --models advmoe`
/// run per seed) set beside the recorded seeds' models: it joins its own seed's models, pairs
/// image by image with them (seed 0: 2.9 points of worst-case RA under the class-partition
/// AdvMoE, 31 / 60 images; seed 1: 1.8 above, 48 / 30), names the one setting its training
/// changed, and is refused wherever the pairing would not hold.
#[test]
fn a_model_trained_another_way_pairs_with_its_seeds_models() {
    use advmoe_engine::seeds::{Added, SeedSummary};

    let robust = |seed: u64| recorded_3000("advmoe-robust-objective", seed);
    let (zero, one) = (recorded_seed(0), recorded_seed(1));
    let (r0, r1) = (robust(0), robust(1));
    let add = |c| Added {
        name: "robust-objective",
        comparison: c,
    };
    let summary = SeedSummary::with_added(&[&zero, &one], &[add(&r0), add(&r1)]).unwrap();
    let names: Vec<&str> = summary.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "advmoe",
            "moe-at",
            "dense-same-cost-trades",
            "robust-objective"
        ]
    );
    assert_eq!(summary.added.len(), 1);
    assert_eq!(summary.added[0].row, "advmoe");
    assert_eq!(summary.added[0].differs_in, ["base.train.router_objective"]);
    let added = &summary.models[3];
    for (i, c) in [&r0, &r1].iter().enumerate() {
        assert_eq!(added.clean_acc.values[i], c.rows[0].report.clean_acc);
    }
    // Its router collapsed with both seeds.
    assert_eq!(
        added
            .busiest_expert
            .as_ref()
            .unwrap()
            .values
            .iter()
            .map(|v| (100.0 * v).round())
            .collect::<Vec<_>>(),
        [100.0, 100.0]
    );
    let gap = |b: &str| {
        summary
            .gaps
            .iter()
            .find(|g| g.a == "robust-objective" && g.b == b && g.what == "worst-case RA")
            .unwrap()
    };
    let split = |g: &advmoe_engine::seeds::SeedGap| -> Vec<(usize, usize)> {
        g.per_seed.iter().map(|p| (p.only_a, p.only_b)).collect()
    };
    let partition = gap("advmoe");
    assert_eq!(split(partition), [(31, 60), (48, 30)]);
    assert!((partition.per_seed[0].p_value - 0.003).abs() < 0.0005);
    assert_eq!(partition.significant(), (0, 1));
    let vanilla = gap("moe-at");
    let each: Vec<f64> = vanilla
        .per_seed
        .iter()
        .map(|p| 100.0 * p.difference)
        .collect();
    assert!(
        (each[0] + 1.1).abs() < 0.05 && (each[1] + 1.4).abs() < 0.05,
        "{each:?}"
    );
    assert_eq!(
        summary.gaps.len(),
        2 * 3 + 3 * 3,
        "AdvMoE against 2 models and the added one against 3, each on SA, PGD-10 and the worst case"
    );
    let md = summary.markdown();
    assert!(
        md.contains("its settings differ in `base.train.router_objective`"),
        "{md}"
    );

    // One seed: each figure alone, and the test images' standard error beside the gap.
    let single = SeedSummary::with_added(&[&zero], &[add(&r0)]).unwrap();
    let md = single.markdown();
    assert!(md.starts_with("Seed 0 (one run"), "{md}");
    assert!(
        md.contains("| robust-objective | 39.2 | 23.8 | 19.4 |"),
        "{md}"
    );
    assert!(
        md.contains("| robust-objective − advmoe | worst-case RA | -2.9 (0.003) | -2.9 ± 0.9 |"),
        "{md}"
    );

    // A seed without it: left out, and no gap of it.
    let half = SeedSummary::with_added(&[&zero, &one], &[add(&r0)]).unwrap();
    assert_eq!(half.left_out, ["robust-objective"]);
    assert!(half.added.is_empty());
    assert!(half.gaps.iter().all(|g| g.a != "robust-objective"));

    // Refused where the pairing would not hold.
    let refused = |comparisons: &[&Comparison], added: &[Added]| {
        SeedSummary::with_added(comparisons, added).unwrap_err()
    };
    let e = refused(&[&zero], &[add(&zero)]);
    assert!(e.contains("holds 3 models"), "{e}");
    let e = refused(
        &[&zero],
        &[Added {
            name: "moe-at",
            comparison: &r0,
        }],
    );
    assert!(e.contains("name of one of the comparisons' models"), "{e}");
    let e = refused(&[&zero], &[add(&r1)]);
    assert!(
        e.contains("trained with seed 1, and no comparison was"),
        "{e}"
    );
    let e = refused(&[&zero], &[add(&r0), add(&r0)]);
    assert!(e.contains("given twice with seed 0"), "{e}");
    let mut fewer = r0.clone();
    fewer.eval.limit = 500;
    let e = refused(&[&zero], &[add(&fewer)]);
    assert!(e.contains("eval.limit differs"), "{e}");
    let mut swept = r0.clone();
    swept.eval.eps_sweep = vec![4.0 / 255.0];
    SeedSummary::with_added(&[&zero], &[add(&swept)])
        .expect("an ε-curve changes no image's outcome");
    let mut longer = r1.clone();
    longer.base.train.total_steps = 6000;
    let e = refused(&[&zero, &one], &[add(&r0), add(&longer)]);
    assert!(e.contains("differ in base.train.total_steps"), "{e}");

    // Grouped as the app's report groups what it holds: the one-model runs join the summary of
    // the comparisons of their seeds, named by what changed, and form their own group too.
    let groups = advmoe_engine::seeds::summaries_over_seeds(&[&zero, &r0, &one, &r1, &fewer]);
    let beside = groups[0].as_ref().expect("two seeds");
    assert_eq!(groups[2], groups[0]);
    let names: Vec<&str> = beside.added.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["advmoe, router objective robust"]);
    assert!(
        beside
            .gaps
            .iter()
            .any(|g| g.a == names[0] && g.b == "moe-at" && g.per_seed.len() == 2)
    );
    let own = groups[1].as_ref().expect("the one-model runs' own seeds");
    assert_eq!((own.models.len(), own.added.len()), (1, 0));
    assert_eq!(own.seeds, [0, 1]);
    // Measured on 500 images, it is no seed of them and pairs with nothing.
    assert!(groups[4].is_none());
}
