//! Attacks: known answers on a linear model, the ε-ball on every attack and target (CPU and
//! wgpu), strength ordering and the three targets on trained models.

use advmoe_core::{
    AttackKind, AttackLoss, AttackSpec, AttackTarget, ModelSpec, Rng, RouterKind, TargetClass,
};
use advmoe_engine::attack::{
    Evaluation, LogitObjective, Objective, RouterObjective, Start, apgd_checkpoints, attack,
    run_attack, square_fraction, square_side,
};
use advmoe_engine::eval::count_correct;
use advmoe_engine::loss::cross_entropy_each;
use advmoe_engine::paired::{format_p, mcnemar_exact};
use advmoe_engine::robust::{
    LadderOptions, NamedAttack, Paired, RobustOptions, evaluate_robust, router_ladder,
};
use advmoe_engine::tensors::{DeviceBatch, to_device};
use advmoe_model::{Mode, MoeNet, Routing, check_routes};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use crate::common::Wait as _;
use crate::common::{
    cpu, gpu, max_abs_diff, read, read2, share_correct, synthetic, tensor4, trained,
};

/// `value = -w·x` per image: the L∞ worst case is `x - ε·sign(w)`, the L2 one `x - ε·w/‖w‖`.
struct Linear {
    w: Tensor<4>,
}

impl Objective for Linear {
    fn evaluate(&self, images: Tensor<4>) -> Evaluation {
        let [b, ..] = images.dims();
        let value = (images * self.w.clone())
            .sum_dim(1)
            .sum_dim(2)
            .sum_dim(3)
            .reshape([b])
            .neg();
        let success = value.clone().detach().lower_elem(f32::NEG_INFINITY);
        Evaluation { value, success }
    }
}

fn spec(
    kind: AttackKind,
    eps: f32,
    steps: usize,
    step_size: f32,
    random_start: bool,
) -> AttackSpec {
    AttackSpec {
        kind,
        eps,
        steps,
        step_size,
        random_start,
        ..AttackSpec::paper_eval()
    }
}

#[test]
fn attacks_find_the_known_worst_case_of_a_linear_model() {
    let device = cpu().autodiff();
    let mut rng = Rng::seed(3);
    let shape = [2, 3, 4, 4];
    let n = 2 * 3 * 16;
    // Pixels in [0.3, 0.7] and ε = 0.1: the box [0, 1] never binds.
    let x: Vec<f32> = (0..n).map(|_| rng.uniform_range(0.3, 0.7)).collect();
    let w: Vec<f32> = (0..n / 2)
        .map(|_| {
            let v = rng.uniform_range(0.1, 1.0);
            if rng.coin() { v } else { -v }
        })
        .collect();
    let eps = 0.1f32;
    let linf: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, xi)| xi - eps * w[i % (n / 2)].signum())
        .collect();
    let norm = w.iter().map(|v| v * v).sum::<f32>().sqrt();
    let l2: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, xi)| xi - eps * w[i % (n / 2)] / norm)
        .collect();
    let objective = Linear {
        w: tensor4(w.clone(), [1, 3, 4, 4], &device),
    };
    let images = tensor4(x.clone(), shape, &device);
    let cases = [
        (spec(AttackKind::Fgsm, eps, 1, 0.0, false), &linf, 1e-6),
        (
            spec(AttackKind::Pgd, eps, 10, eps / 4.0, false),
            &linf,
            1e-6,
        ),
        (spec(AttackKind::Pgd, eps, 10, eps / 4.0, true), &linf, 1e-6),
        (spec(AttackKind::Apgd, eps, 10, 0.0, true), &linf, 1e-6),
        (
            spec(AttackKind::PgdL2, eps, 20, eps / 2.0, false),
            &l2,
            1e-5,
        ),
        // Random search without a gradient: on 4×4 images its windows shrink to single pixels,
        // and each pixel's 8 sign patterns are tried until the best one is kept.
        (spec(AttackKind::Square, eps, 2000, 0.0, false), &linf, 1e-6),
    ];
    for (spec, expected, tol) in cases {
        let adv = attack(&objective, images.clone(), &spec, &mut rng);
        let diff = max_abs_diff(&read(adv), expected);
        assert!(diff < tol, "{:?}: off the worst case by {diff}", spec.kind);
    }
    // ε = 0 returns the input unchanged, random start or not.
    for kind in AttackKind::ALL {
        let s = spec(*kind, 0.0, 5, 0.01, true);
        let adv = run_attack(&objective, images.clone(), &s, Start::Uniform, &mut rng);
        assert_eq!(read(adv), x, "{kind}");
    }
    // APGD's step-size checkpoints follow Croce & Hein: p = 0.22, 0.41, 0.57, ...
    assert_eq!(apgd_checkpoints(100), vec![22, 41, 57, 70, 80, 87, 93, 99]);
    // Square's windows on CIFAR-10 over AutoAttack's 5,000 queries: 80% of the pixels first
    // (29 × 29), the area halved after 0.1%, 0.5%, 2%, 5%, 10%, 20%, 40%, 60% and 80% of them.
    let sides: Vec<usize> = [0, 5, 6, 25, 26, 100, 101, 4000, 4001, 4999]
        .iter()
        .map(|&q| square_side(q, 5000, 32, 32))
        .collect();
    assert_eq!(sides, [29, 29, 20, 20, 14, 14, 10, 2, 1, 1]);
    assert_eq!(square_fraction(4001, 5000), 0.8 / 512.0);
}

/// Runs every attack on every target and checks the ε-ball and the pixel range.
fn attacks_stay_in_the_ball(device: &Device, router: RouterKind, restarts: usize) {
    let device = device.clone().autodiff();
    let mut spec_model = ModelSpec::resnet(4, 1, 2, 0.5);
    spec_model.router = router;
    let model = MoeNet::new(&spec_model, 1, &device).unwrap();
    let data = synthetic(64, 16);
    let host = data.test.batch(0, 4);
    let batch = to_device(&host, 10, &device);
    let clean = read(batch.images.clone());
    let mut rng = Rng::seed(5);
    for kind in AttackKind::ALL {
        for target in AttackTarget::ALL {
            let targeted = match target {
                AttackTarget::Router => vec![None],
                _ => vec![None, Some(TargetClass::Next)],
            };
            for aim in targeted {
                let eps = if kind.is_l2() { 0.5 } else { 8.0 / 255.0 };
                let s = AttackSpec {
                    kind: *kind,
                    eps,
                    steps: 3,
                    step_size: if kind.is_l2() { 0.2 } else { 3.0 / 255.0 },
                    random_start: true,
                    restarts,
                    loss: if *target == AttackTarget::Router {
                        AttackLoss::Kl
                    } else {
                        AttackLoss::Cw
                    },
                    target: *target,
                    targeted: aim,
                    through_gates: false,
                    // The released evaluation's router term rides along where it may.
                    router_term: if *target == AttackTarget::Full && aim.is_none() {
                        1.0
                    } else {
                        0.0
                    },
                };
                s.validate().unwrap();
                let adv = match target {
                    AttackTarget::Router => {
                        let o = RouterObjective::new(&model, batch.images.clone(), s.loss);
                        attack(&o, batch.images.clone(), &s, &mut rng)
                    }
                    _ => {
                        let o = LogitObjective::from_spec(
                            &model,
                            batch.images.clone(),
                            batch.labels.clone(),
                            &s,
                        );
                        attack(&o, batch.images.clone(), &s, &mut rng)
                    }
                };
                let adv = read(adv);
                let label = format!("{kind} on {target} ({aim:?}, {router})");
                assert!(
                    adv.iter().all(|v| (0.0..=1.0).contains(v)),
                    "{label}: out of [0, 1]"
                );
                let per_image = clean.len() / 4;
                let mut moved = 0.0f32;
                for i in 0..4 {
                    let range = i * per_image..(i + 1) * per_image;
                    let d: Vec<f32> = adv[range.clone()]
                        .iter()
                        .zip(&clean[range])
                        .map(|(a, c)| a - c)
                        .collect();
                    let size = if kind.is_l2() {
                        d.iter().map(|v| v * v).sum::<f32>().sqrt()
                    } else {
                        d.iter().fold(0.0f32, |m, v| m.max(v.abs()))
                    };
                    assert!(
                        size <= eps * (1.0 + 1e-5) + 1e-6,
                        "{label}: size {size} > {eps}"
                    );
                    moved = moved.max(size);
                }
                assert!(
                    moved > 0.1 * eps,
                    "{label}: the attack did not move ({moved})"
                );
            }
        }
    }
}

#[test]
fn every_attack_and_target_stays_in_the_ball_on_cpu() {
    attacks_stay_in_the_ball(&cpu(), RouterKind::Image, 2);
    attacks_stay_in_the_ball(&cpu(), RouterKind::PerLayer, 1);
}

#[test]
fn every_attack_and_target_stays_in_the_ball_on_wgpu() {
    attacks_stay_in_the_ball(&gpu(), RouterKind::PerLayer, 1);
}

/// Robust accuracy of `model` on the first `n` test images under `spec` (full target).
fn robust_acc(model: &MoeNet, n: usize, spec: &AttackSpec) -> f64 {
    let device = cpu().autodiff();
    let data = synthetic(4000, 500);
    let host = data.test.batch(0, n);
    let batch = to_device(&host, 10, &device);
    let objective =
        LogitObjective::from_spec(model, batch.images.clone(), batch.labels.clone(), spec);
    let mut rng = Rng::seed(11);
    let adv = attack(&objective, batch.images.clone(), spec, &mut rng);
    let logits = model.forward(adv, Mode::Eval).logits;
    count_correct(logits, &host.labels).wait().unwrap() as f64 / n as f64
}

/// The DLR objective against its definition computed on the host from the model's logits, its
/// ranked targets, and the worst-case robust accuracy over PGD-10 and AutoAttack's pair on the
/// trained model at a radius where not every attack reaches zero; with the routes forced to the
/// class partition, the images whose own route is that one score clean exactly as without.
#[test]
fn dlr_matches_its_definition_and_the_worst_case_is_below_every_attack() {
    let trained = trained(RouterKind::Image);
    let model = &trained.model();
    let device = cpu().autodiff();
    let data = synthetic(4000, 500);
    let n = 8;
    let host = data.test.batch(0, n);
    let batch = to_device(&host, 10, &device);
    let logits = read2(model.forward(batch.images.clone(), Mode::Eval).logits);
    let row = |i: usize| &logits[i * 10..(i + 1) * 10];
    // The class with the k-th highest logit among those other than the label (ties: lower first).
    let ranked = |i: usize, k: usize| {
        let y = usize::from(host.labels[i]);
        let mut others: Vec<usize> = (0..10).filter(|&c| c != y).collect();
        others.sort_by(|&a, &b| row(i)[b].total_cmp(&row(i)[a]).then(a.cmp(&b)));
        others[k - 1]
    };
    for targeted in [
        None,
        Some(TargetClass::Ranked(1)),
        Some(TargetClass::Ranked(3)),
    ] {
        let s = AttackSpec {
            loss: AttackLoss::Dlr,
            targeted,
            ..AttackSpec::paper_eval()
        };
        let objective =
            LogitObjective::from_spec(model, batch.images.clone(), batch.labels.clone(), &s);
        let value = read2(
            objective
                .evaluate(batch.images.clone())
                .value
                .unsqueeze_dim(1),
        );
        for (i, &got) in value.iter().enumerate() {
            let z = row(i);
            let y = usize::from(host.labels[i]);
            let mut sorted = z.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let expected = match targeted {
                None => {
                    let other = (0..10)
                        .filter(|&c| c != y)
                        .map(|c| z[c])
                        .fold(f32::MIN, f32::max);
                    -(z[y] - other) / (sorted[0] - sorted[2] + 1e-12)
                }
                Some(TargetClass::Ranked(k)) => {
                    let t = ranked(i, k);
                    -(z[y] - z[t]) / (sorted[0] - 0.5 * (sorted[2] + sorted[3]) + 1e-12)
                }
                Some(other) => unreachable!("{other}"),
            };
            assert!(
                (got - expected).abs() <= 1e-4 * (1.0 + expected.abs()),
                "image {i}, {targeted:?}: DLR {got} but {expected} by its definition"
            );
        }
    }

    let eps = 2.0 / 255.0;
    let report = evaluate_robust(
        model,
        &data.test,
        &RobustOptions {
            attack: AttackSpec {
                eps,
                step_size: eps / 4.0,
                ..AttackSpec::paper_eval()
            },
            limit: 40,
            batch_size: 40,
            worst_case: [
                NamedAttack::auto_attack(eps, 10, 2),
                vec![NamedAttack::square(eps, 200)],
            ]
            .concat(),
            partition_routes: true,
            per_image: true,
            ..RobustOptions::default()
        },
        &device,
        &mut |_, _| {},
    )
    .wait()
    .unwrap();
    // Forced routes: the image router's one decision is every layer's route, so on the images it
    // already sends to y mod 2 the forced model is the model itself; each group is counted once,
    // and APGD (starting from the clean image) keeps every clean mistake.
    let forced = report.partition_routes.expect("forced routes asked for");
    println!("forced routes: {forced:?}");
    let on_partition = |cells: &Vec<Vec<Vec<usize>>>| -> usize {
        cells[0].iter().enumerate().map(|(y, row)| row[y % 2]).sum()
    };
    assert_eq!(forced.all().images, 40);
    assert_eq!(forced.follows.images, on_partition(&report.class_expert));
    assert_eq!(
        forced.follows.clean,
        on_partition(&report.class_expert_correct)
    );
    assert!(
        forced.follows.images > 0 && forced.rest.images > 0,
        "{forced:?}"
    );
    for group in [forced.follows, forced.rest] {
        assert!(group.robust <= group.clean, "{group:?}");
    }
    let worst = report.worst_case.expect("worst case asked for");
    println!("at 2/255: {worst:?}");
    let names: Vec<&str> = worst.each.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "PGD-10",
            "APGD-CE-10",
            "APGD-T-10 (2 targets)",
            "Square-200"
        ]
    );
    assert_eq!(worst.each[0].1, report.robust_acc);
    for (name, acc) in &worst.each {
        assert!(
            worst.robust_acc <= *acc,
            "worst case {} above {name} {acc}",
            worst.robust_acc
        );
    }
    assert!(worst.robust_acc < report.clean_acc, "{worst:?}");

    // Each image's outcomes add up to the accuracies, and the worst case keeps an image only
    // where the RA attack did: image by image, the RA attack is never behind it.
    let each = report.per_image.expect("per-image outcomes asked for");
    assert_eq!(each.len(), 40);
    assert_eq!(share_correct(&each.clean), report.clean_acc);
    assert_eq!(share_correct(&each.robust), report.robust_acc);
    assert_eq!(share_correct(&each.worst_case), worst.robust_acc);
    assert_eq!(each.headline(), each.worst_case);
    let paired = Paired::of(&each.robust, &each.worst_case).unwrap();
    assert_eq!(paired.only_b, 0, "{paired:?}");
    assert!(
        (paired.difference - (report.robust_acc - worst.robust_acc)).abs() < 1e-12,
        "{paired:?}"
    );
}

/// The paired difference of two models on the same images: its standard error from the
/// per-image differences, and McNemar's exact test, against values worked out by hand.
#[test]
fn paired_differences_match_their_definitions() {
    // One image each way out of four: no difference, and a p-value of 1.
    let p = Paired::of("1100", "1010").unwrap();
    assert_eq!((p.images, p.only_a, p.only_b), (4, 1, 1));
    assert_eq!(p.difference, 0.0);
    // Per-image differences +1, −1, 0, 0: variance of their mean (0.5 − 0) / 4.
    assert!((p.std_error - 0.125f64.sqrt()).abs() < 1e-12);
    assert_eq!(p.p_value, 1.0);
    // Three of ten images only the first got right: 0.3 ± √((0.3 − 0.09) / 10).
    let p = Paired::of("1111111111", "1110101011").unwrap();
    assert_eq!((p.only_a, p.only_b), (3, 0));
    assert!((p.difference - 0.3).abs() < 1e-12);
    assert!((p.std_error - 0.021f64.sqrt()).abs() < 1e-12);
    // Exact binomial tails: 2 × 1/2⁵, and 2 × (1 + 10 + 45) / 2¹⁰.
    assert!((mcnemar_exact(0, 5) - 0.0625).abs() < 1e-12);
    assert!((mcnemar_exact(8, 2) - 0.109_375).abs() < 1e-12);
    assert_eq!(mcnemar_exact(0, 0), 1.0);
    assert_eq!(format_p(0.0629), "0.063");
    assert_eq!(format_p(0.0004), "< 0.001");
    // Thousands of disagreements: finite, and near the normal approximation with continuity
    // correction (z = 99 / √8100 = 1.1, two-sided p = 0.271).
    let p = mcnemar_exact(4000, 4100);
    assert!((p - 0.271).abs() < 0.003, "{p}");
    // Outcomes of different images, or of none, are not compared.
    assert!(Paired::of("101", "10").is_none());
    assert!(Paired::of("", "").is_none());
}

#[test]
fn pgd_breaks_a_standard_model_and_stronger_attacks_are_stronger() {
    let trained = trained(RouterKind::Image);
    let model = &trained.model();
    let n = 100;
    let clean = robust_acc(model, n, &spec(AttackKind::Pgd, 0.0, 0, 0.0, false));
    let pgd10 = robust_acc(model, n, &AttackSpec::paper_eval());
    println!("standard model: clean {clean}, PGD-10 at 8/255 {pgd10}");
    assert!(clean > 0.9, "clean accuracy {clean}");
    assert!(pgd10 < 0.3 * clean, "PGD-10 left {pgd10} of {clean}");

    // At a small radius the attacks are not all at zero, so their order is visible.
    let eps = 2.0 / 255.0;
    let fgsm = robust_acc(model, n, &spec(AttackKind::Fgsm, eps, 1, 0.0, false));
    let pgd = |steps, restarts| {
        let s = AttackSpec {
            restarts,
            ..spec(AttackKind::Pgd, eps, steps, eps / 4.0, true)
        };
        robust_acc(model, n, &s)
    };
    let (p5, p10, p20, p10r3) = (pgd(5, 1), pgd(10, 1), pgd(20, 1), pgd(10, 3));
    let apgd = robust_acc(model, n, &spec(AttackKind::Apgd, eps, 20, 0.0, true));
    println!(
        "ε = 2/255: FGSM {fgsm}, PGD-5 {p5}, PGD-10 {p10}, PGD-20 {p20}, PGD-10×3 {p10r3}, APGD-20 {apgd}"
    );
    assert!(p10 < clean, "PGD-10 at 2/255 changed nothing");
    assert!(p10 <= fgsm, "PGD-10 {p10} weaker than FGSM {fgsm}");
    assert!(
        p10 <= p5 && p20 <= p10,
        "more steps weaker: {p5} {p10} {p20}"
    );
    assert!(p10r3 <= p10, "restarts weaker: {p10r3} > {p10}");
    assert!(apgd <= p10, "APGD-20 {apgd} weaker than PGD-10 {p10}");
}

/// The router attacks the product runs pass the validation every command applies to the
/// attacks it is given (a refusal of the margin loss on the router target stopped `advmoe
/// compare` and `advmoe eval --attack` before they started), and the router target still
/// refuses the DLR loss, which has no meaning for routes.
#[test]
fn the_products_router_attacks_pass_validation_and_dlr_on_routers_does_not() {
    let mut specs = vec![AttackSpec::router_eval(), AttackSpec::router_progress()];
    specs.extend(AttackSpec::router_ladder(8.0 / 255.0));
    for spec in &specs {
        assert_eq!(spec.target, AttackTarget::Router);
        spec.validate().unwrap();
    }
    let dlr = AttackSpec {
        loss: AttackLoss::Dlr,
        ..AttackSpec::router_eval()
    };
    let err = dlr.validate().unwrap_err().to_string();
    assert!(err.contains("router target"), "{err}");
}

#[test]
fn the_router_target_flips_routes_and_the_expert_target_keeps_them() {
    let trained = trained(RouterKind::PerLayer);
    let model = &trained.model();
    let device = cpu().autodiff();
    let data = synthetic(4000, 500);
    let n = 100;
    let host = data.test.batch(0, n);
    let batch = to_device(&host, 10, &device);
    let eps = 8.0 / 255.0;
    let mut rng = Rng::seed(2);
    let clean_routes = check_routes(&model.forward(batch.images.clone(), Mode::Eval).routes)
        .wait()
        .unwrap();
    let flips = |images: Tensor<4>| {
        let routes = check_routes(&model.forward(images, Mode::Eval).routes)
            .wait()
            .unwrap();
        let mut flipped = 0;
        for (a, b) in clean_routes.iter().zip(&routes) {
            flipped += a.iter().zip(b).filter(|(x, y)| x != y).count();
        }
        flipped
    };

    // Router attack versus random corners of the same L∞ ball.
    let s = AttackSpec {
        target: AttackTarget::Router,
        loss: AttackLoss::Kl,
        ..AttackSpec::paper_eval()
    };
    let objective = RouterObjective::new(model, batch.images.clone(), AttackLoss::Kl);
    let adv = attack(&objective, batch.images.clone(), &s, &mut rng);
    let attacked = flips(adv.clone());
    let signs: Vec<f32> = (0..host.images.len())
        .map(|_| if rng.coin() { eps } else { -eps })
        .collect();
    let noise = tensor4(signs, host.shape, &device);
    let noisy_images = (batch.images.clone() + noise).clamp(0.0, 1.0);
    let noisy = flips(noisy_images.clone());
    let total = n * clean_routes.len();
    println!("router attack flipped {attacked} of {total} routes; random noise {noisy}");
    assert!(
        attacked > noisy,
        "router attack {attacked} vs noise {noisy}"
    );
    assert!(
        attacked > total / 20,
        "router attack flipped only {attacked} of {total}"
    );

    // The margin loss and the per-route worst case. At the clean images every router's margin
    // is minus the gap between its two scores; a recording objective keeps exactly the routes
    // that some point it evaluated flipped: the union of each point's flipped routes.
    let recording =
        RouterObjective::new(model, batch.images.clone(), AttackLoss::Cw).recording_flips();
    assert!(recording.flips().is_none());
    let at_clean = recording.evaluate(batch.images.clone());
    let scores: Vec<Vec<f32>> = model
        .route_scores(batch.images.clone())
        .into_iter()
        .map(read2)
        .collect();
    let value = at_clean.value.into_data().try_to_vec::<f32>().unwrap();
    for (i, v) in value.iter().enumerate() {
        let expected: f32 = scores
            .iter()
            .map(|s| -(s[2 * i] - s[2 * i + 1]).abs())
            .sum();
        assert!((v - expected).abs() < 1e-4, "image {i}: {v} vs {expected}");
    }
    recording.evaluate(noisy_images.clone());
    recording.evaluate(adv.clone());
    let recorded: Vec<Vec<bool>> = recording
        .flips()
        .unwrap()
        .into_iter()
        .map(|f| f.into_data().try_to_vec::<bool>().unwrap())
        .collect();
    let routes_of = |images: Tensor<4>| {
        check_routes(&model.forward(images, Mode::Eval).routes)
            .wait()
            .unwrap()
    };
    let (noisy_routes, adv_routes) = (routes_of(noisy_images), routes_of(adv));
    let mut union = 0;
    for (layer, clean) in clean_routes.iter().enumerate() {
        for (i, &c) in clean.iter().enumerate() {
            let flipped = noisy_routes[layer][i] != c || adv_routes[layer][i] != c;
            assert_eq!(recorded[layer][i], flipped, "layer {layer}, image {i}");
            union += usize::from(flipped);
        }
    }
    assert!(union >= attacked.max(noisy));

    // Expert attack: every forward pass runs the clean routes, and the pathway alone still
    // breaks.
    let s = AttackSpec {
        target: AttackTarget::Expert,
        ..AttackSpec::paper_eval()
    };
    let objective =
        LogitObjective::from_spec(model, batch.images.clone(), batch.labels.clone(), &s);
    let Routing::Fixed(fixed) = objective.routing().clone() else {
        panic!("the expert target must fix the routes");
    };
    let adv = attack(&objective, batch.images.clone(), &s, &mut rng);
    let out = model.forward_with(adv, Mode::Eval, &Routing::Fixed(fixed));
    assert_eq!(check_routes(&out.routes).wait().unwrap(), clean_routes);
    let clean_correct = count_correct(
        model.forward(batch.images.clone(), Mode::Eval).logits,
        &host.labels,
    )
    .wait()
    .unwrap();
    let expert_correct = count_correct(out.logits, &host.labels).wait().unwrap();
    assert!(
        expert_correct < clean_correct / 2,
        "expert attack: {expert_correct} of {clean_correct} still correct"
    );

    // The dissection agrees: robust numbers are fractions, routes are counted per layer. (The
    // quick 10-step router attack here, aimed at each of the 8 routers in turn.)
    let quick_router = AttackSpec {
        steps: 10,
        restarts: 1,
        ..AttackSpec::router_eval()
    };
    let report = evaluate_robust(
        model,
        &data.test,
        &RobustOptions {
            limit: 50,
            eps_sweep: vec![2.0 / 255.0],
            router_attack: quick_router.clone(),
            ..RobustOptions::default()
        },
        &device,
        &mut |_, _| {},
    )
    .wait()
    .unwrap();
    println!("{report:?}");
    let router_robustness = report.router_robustness.unwrap();
    assert!(router_robustness < 1.0 && report.route_flip_rate.unwrap() > 0.0);
    assert!(report.robust_acc < report.clean_acc);
    assert_eq!(report.class_expert.len(), clean_routes.len());
    let routed: usize = report.class_expert[0].iter().flatten().sum();
    assert_eq!(routed, 50);
    // Per layer, the images correct clean and under the attack, by class and clean route: they
    // add up to the accuracies, and no cell holds more than the images routed there.
    let count = |fraction: f64| (fraction * 50.0).round() as usize;
    for (layer, routed) in report.class_expert.iter().enumerate() {
        for (cells, of_all) in [
            (&report.class_expert_correct[layer], count(report.clean_acc)),
            (&report.class_expert_robust[layer], count(report.robust_acc)),
        ] {
            assert_eq!(
                cells.iter().flatten().sum::<usize>(),
                of_all,
                "layer {layer}"
            );
            for (row, of) in cells.iter().flatten().zip(routed.iter().flatten()) {
                assert!(row <= of, "layer {layer}: {cells:?} against {routed:?}");
            }
        }
    }
    // Router robustness at 2/255 is at least that at 8/255 (same attack, smaller ball)... is not
    // guaranteed image by image, but the flip rate of a weaker attack on average is lower.
    assert!(report.sweep[0].router_robustness.unwrap() >= router_robustness - 0.05);
    assert_eq!(report.router_attack.as_ref(), Some(&quick_router));

    // The router ladder: a rung that adds random starts to another repeats its starts first, so
    // it keeps no more routes; every rung is named with its steps and starts.
    let rungs: Vec<AttackSpec> = [(10, 1), (10, 3)]
        .into_iter()
        .map(|(steps, restarts)| AttackSpec {
            steps,
            restarts,
            ..quick_router.clone()
        })
        .collect();
    let options = LadderOptions {
        rungs,
        limit: 30,
        batch_size: 30,
        seed: 0,
    };
    let ladder = router_ladder(model, &data.test, &options, &device, &mut |_, _| {})
        .wait()
        .unwrap();
    println!("{ladder:?}");
    assert_eq!(ladder.len(), 2);
    assert_eq!(ladder[1].attack.restarts, 3);
    assert!(ladder[0].router_robustness < 1.0);
    assert!(ladder[1].router_robustness <= ladder[0].router_robustness);
    assert_eq!(
        advmoe_engine::robust::attack_name(&ladder[1].attack),
        "PGD-CW-10 × 3 starts"
    );
}

/// `attack_image` (the attack lab's and `advmoe attack`'s one-image attack): what it reports
/// matches the model run again on its pixels, it stays in the ball, the perturbation image is
/// 0.5 + 0.5·δ/ε, and the expert target reports the pathway with the clean routes.
#[test]
fn attack_image_reports_what_the_model_does_on_its_pixels() {
    use advmoe_engine::{attack_image, predict};
    let trained = trained(RouterKind::PerLayer);
    let model = &trained.model();
    let device = cpu().autodiff();
    let data = synthetic(4000, 500);
    for (index, target) in [
        (0, AttackTarget::Full),
        (1, AttackTarget::Router),
        (2, AttackTarget::Expert),
    ] {
        let host = data.test.batch(index, index + 1);
        let label = usize::from(host.labels[0]);
        let image = to_device(&host, 10, &device).images;
        let spec = AttackSpec {
            target,
            loss: if target == AttackTarget::Router {
                AttackLoss::Kl
            } else {
                AttackLoss::Ce
            },
            ..AttackSpec::paper_eval()
        };
        let a = attack_image(model, image.clone(), label, &spec, 7)
            .wait()
            .unwrap();
        assert_eq!(a.shape, [3, 32, 32]);
        assert_eq!(a.label, label);
        assert_eq!(a.clean_pixels, host.images);
        assert!(a.linf <= spec.eps + 1e-6, "{target}: {}", a.linf);
        assert!(a.adversarial_pixels.iter().all(|v| (0.0..=1.0).contains(v)));
        let again = tensor4(a.adversarial_pixels.clone(), [1, 3, 32, 32], &device);
        let rerun = predict(model, again, &Routing::Free, label).wait().unwrap();
        assert_eq!(rerun.prediction, a.adversarial.prediction, "{target}");
        assert_eq!(rerun.routes, a.adversarial.routes, "{target}");
        assert_eq!(
            a.clean,
            predict(model, image, &Routing::Free, label).wait().unwrap()
        );
        assert_eq!(a.flipped().len(), a.clean.routes.len());
        assert_eq!(a.clean.routes.len(), model.moe_convs().len());
        for ((p, adv), clean) in a
            .perturbation_pixels()
            .iter()
            .zip(&a.adversarial_pixels)
            .zip(&a.clean_pixels)
        {
            assert!((p - (0.5 + 0.5 * (adv - clean) / spec.eps)).abs() < 1e-5);
        }
        let frozen = a.adversarial_with_clean_routes.as_ref();
        assert_eq!(frozen.is_some(), target == AttackTarget::Expert, "{target}");
        if let Some(frozen) = frozen {
            assert_eq!(frozen.routes, a.clean.routes);
        }
        let top = a.clean.top_k(3);
        assert_eq!(top[0], (a.clean.prediction, a.clean.confidence));
        assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
    }
}

/// The full-target objective of `spec` on `batch` (clean images): its per-image values and their
/// gradient with respect to the images, on the host.
fn full_objective_and_gradient(
    model: &MoeNet,
    batch: &DeviceBatch,
    spec: &AttackSpec,
) -> (Vec<f32>, Vec<f32>) {
    let objective =
        LogitObjective::from_spec(model, batch.images.clone(), batch.labels.clone(), spec);
    let x = batch.images.clone().detach().require_grad();
    let value = objective.evaluate(x.clone()).value;
    let grads = value.clone().sum().backward();
    let grad: Tensor<4> = Tensor::from_inner(x.grad(&grads).unwrap());
    (read2(value.unsqueeze_dim(1)), read(grad))
}

/// `through_gates` (the AdvMoE paper's released code attacks through its straight-through gates)
/// adds the gates' term to the attack's gradient exactly where the image reaches a gate through
/// a router: with an image router the gradient changes, with per-layer routers (which read a
/// detached input) it does not. The value is the same either way (the gates are 1 in value), the
/// attack's name says which gradient it followed, and the spec refuses it off the full target.
#[test]
fn through_gates_changes_the_gradient_only_through_an_image_router() {
    let device = cpu().autodiff();
    let data = synthetic(4000, 500);
    let host = data.test.batch(0, 8);
    let batch = to_device(&host, 10, &device);
    for (router, changes) in [(RouterKind::Image, true), (RouterKind::PerLayer, false)] {
        let model = &trained(router).model();
        let value_and_grad = |through_gates: bool| {
            let s = AttackSpec {
                through_gates,
                ..AttackSpec::paper_eval()
            };
            full_objective_and_gradient(model, &batch, &s)
        };
        let (exact_value, exact_grad) = value_and_grad(false);
        let (gates_value, gates_grad) = value_and_grad(true);
        assert_eq!(exact_value, gates_value, "{router:?}");
        assert!(exact_grad.iter().any(|g| *g != 0.0), "{router:?}");
        assert_eq!(exact_grad != gates_grad, changes, "{router:?}");
    }
    let gates = AttackSpec {
        through_gates: true,
        ..AttackSpec::paper_eval()
    };
    assert_eq!(
        advmoe_engine::robust::attack_name(&gates),
        "PGD-10 through the gates"
    );
    assert!(gates.validate().is_ok());
    let on_experts = AttackSpec {
        target: AttackTarget::Expert,
        ..gates
    };
    assert!(on_experts.validate().is_err());
}

/// Every objective attacks a copy of the model whose parameters take no gradient, so an attack's
/// backward pass computes the images' gradient and no weight's (the weight gradients are a third
/// of a convolution's backward work, and an attack throws them away). The images' gradient is the
/// one the tracked model gives: the cross-entropy's, through the exact routes, agrees with a
/// backward pass through the model itself, which does produce weight gradients.
#[test]
fn attacks_differentiate_the_images_and_no_weight() {
    let device = cpu().autodiff();
    let data = synthetic(4000, 500);
    let batch = to_device(&data.test.batch(0, 8), 10, &device);
    for router in [RouterKind::Image, RouterKind::PerLayer] {
        let model = &trained(router).model();
        let images = || batch.images.clone();
        let labels = || batch.labels.clone();
        let exact = AttackSpec::paper_eval();
        let objectives: Vec<(&str, Box<dyn Objective>)> = vec![
            (
                "full",
                Box::new(LogitObjective::from_spec(model, images(), labels(), &exact)),
            ),
            (
                "through the gates, with the router term",
                Box::new(LogitObjective::from_spec(
                    model,
                    images(),
                    labels(),
                    &AttackSpec {
                        through_gates: router == RouterKind::Image,
                        router_term: 6.0,
                        ..exact.clone()
                    },
                )),
            ),
            (
                "expert, kl",
                Box::new(LogitObjective::new(
                    model,
                    images(),
                    labels(),
                    AttackLoss::Kl,
                    AttackTarget::Expert,
                    None,
                )),
            ),
            (
                "router, cw",
                Box::new(RouterObjective::new(model, images(), AttackLoss::Cw)),
            ),
        ];
        let x = images().detach().require_grad();
        let mut full_grad = Vec::new();
        for (name, objective) in objectives {
            let value = objective.evaluate(x.clone()).value;
            let mut grads = value.sum().backward();
            let grad: Tensor<4> = Tensor::from_inner(x.grad_remove(&mut grads).unwrap());
            let grad = read(grad);
            assert!(grad.iter().any(|g| *g != 0.0), "{router:?}, {name}");
            let weights = GradientsParams::from_grads(grads, model);
            assert!(
                weights.is_empty(),
                "{router:?}, {name}: {} weight gradients",
                weights.len()
            );
            if full_grad.is_empty() {
                full_grad = grad;
            }
        }
        // The same cross-entropy through the tracked model itself.
        let logits = model
            .forward_with(x.clone(), Mode::Eval, &Routing::Exact)
            .logits;
        let hot = advmoe_model::one_hot_rows(labels(), model.num_classes);
        let mut grads = cross_entropy_each(logits, hot).sum().backward();
        let grad = read(Tensor::from_inner(x.grad_remove(&mut grads).unwrap()));
        assert!(max_abs_diff(&grad, &full_grad) <= 1e-6, "{router:?}");
        assert!(!GradientsParams::from_grads(grads, model).is_empty());
    }
}

/// The released evaluation's router term: with β the objective's value is the loss plus β times
/// the cross-entropy of the routers' scores against the class partition (label mod N, averaged
/// over per-layer routers), computed here on the host from the routers' scores; it moves the
/// gradient, adds nothing on a dense model, and the spec takes it only on an untargeted attack
/// on the full target.
#[test]
fn the_router_term_adds_the_routers_partition_cross_entropy() {
    let device = cpu().autodiff();
    let data = synthetic(4000, 500);
    let host = data.test.batch(0, 8);
    let batch = to_device(&host, 10, &device);
    let beta = 6.0;
    let value_and_grad = |model: &MoeNet, router_term: f32| {
        let s = AttackSpec {
            router_term,
            ..AttackSpec::paper_eval()
        };
        full_objective_and_gradient(model, &batch, &s)
    };
    for router in [RouterKind::Image, RouterKind::PerLayer] {
        let model = &trained(router).model();
        let (plain, plain_grad) = value_and_grad(model, 0.0);
        let (with_term, term_grad) = value_and_grad(model, beta);
        let scores: Vec<Vec<f32>> = model
            .route_scores(batch.images.clone())
            .into_iter()
            .map(read2)
            .collect();
        let n = model.moe_convs()[0].num_experts;
        for (i, label) in host.labels.iter().enumerate() {
            let part = *label as usize % n;
            let ce: f32 = scores
                .iter()
                .map(|s| {
                    let row = &s[i * n..(i + 1) * n];
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let log_sum = row.iter().map(|v| (v - max).exp()).sum::<f32>().ln() + max;
                    log_sum - row[part]
                })
                .sum::<f32>()
                / scores.len() as f32;
            let added = with_term[i] - plain[i];
            assert!(
                (added - beta * ce).abs() <= 1e-3 * (1.0 + beta * ce),
                "{router:?} image {i}: added {added}, expected {}",
                beta * ce
            );
        }
        assert!(max_abs_diff(&plain_grad, &term_grad) > 0.0, "{router:?}");
    }
    let dense = MoeNet::new(&ModelSpec::resnet(4, 1, 1, 1.0), 2, &device).unwrap();
    assert_eq!(value_and_grad(&dense, 0.0), value_and_grad(&dense, beta));

    let released = AttackSpec {
        through_gates: true,
        router_term: beta,
        ..AttackSpec::paper_eval()
    };
    assert!(released.validate().is_ok());
    assert_eq!(
        advmoe_engine::robust::attack_name(&released),
        "PGD-10 through the gates + 6 × router CE"
    );
    for refused in [
        AttackSpec {
            target: AttackTarget::Router,
            through_gates: false,
            ..released.clone()
        },
        AttackSpec {
            targeted: Some(TargetClass::Next),
            ..released.clone()
        },
        AttackSpec {
            router_term: -1.0,
            ..released.clone()
        },
        AttackSpec {
            router_term: f32::NAN,
            ..released.clone()
        },
    ] {
        assert!(refused.validate().is_err(), "{refused:?}");
    }
    // Left out of the JSON when off, so saved specs read and write as before.
    let json = serde_json::to_string(&AttackSpec::paper_eval()).unwrap();
    assert!(!json.contains("router_term"), "{json}");
    let back: AttackSpec =
        serde_json::from_str(&serde_json::to_string(&released).unwrap()).unwrap();
    assert_eq!(back, released);
}

/// An L∞ attack step on its one kernel (`advmoe_kernels::linf_step`, what FGSM and PGD run on
/// `wgpu`) computes what the tensor operations compute (the CPU's path), bit for bit: the sign
/// step (zero gradients stay put), the clamp to the ε-ball and to [0, 1]; every result lies in
/// both; also from the center itself (one tensor as both). A NaN gradient gives a NaN pixel.
#[test]
fn the_linf_step_kernel_matches_the_tensor_operations() {
    let device = gpu();
    let mut rng = Rng::seed(23);
    let shape = [3, 3, 9, 11];
    let n: usize = shape.iter().product();
    let center: Vec<f32> = (0..n).map(|_| rng.uniform()).collect();
    // Start anywhere within 0.05 of the center (outside the ball too), clamped into [0, 1].
    let x: Vec<f32> = center
        .iter()
        .map(|c| (c + 0.1 * (rng.uniform() - 0.5)).clamp(0.0, 1.0))
        .collect();
    let grad: Vec<f32> = (0..n)
        .map(|i| if i % 7 == 0 { 0.0 } else { rng.normal() })
        .collect();
    let (eps, step) = (8.0 / 255.0, 2.0 / 255.0);
    let t = |v: &Vec<f32>| tensor4(v.clone(), shape, &device);
    let ours = read(advmoe_kernels::linf_step(
        t(&x),
        t(&grad),
        t(&center),
        f64::from(step),
        f64::from(eps),
    ));
    let tensors = read(advmoe_kernels::reference::linf_step(
        t(&x),
        t(&grad),
        t(&center),
        f64::from(step),
        f64::from(eps),
    ));
    let differ = ours.iter().zip(&tensors).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "the kernel and the tensor operations differ");
    for i in 0..n {
        assert!((0.0..=1.0).contains(&ours[i]));
        assert!(
            (ours[i] - center[i]).abs() <= eps + 1e-7,
            "pixel {i} outside the ball"
        );
        let moved = (x[i] + grad[i].signum() * step - center[i]).clamp(-eps, eps);
        let expected = if grad[i] == 0.0 {
            (x[i] - center[i]).clamp(-eps, eps)
        } else {
            moved
        };
        assert!((ours[i] - (center[i] + expected).clamp(0.0, 1.0)).abs() <= 1e-6);
    }
    // The first step from the clean image binds one tensor as iterate and center (copied first:
    // WebGPU rejects one buffer in two writable bindings).
    let clean = t(&center);
    let from_clean = read(advmoe_kernels::linf_step(
        clean.clone(),
        t(&grad),
        clean,
        f64::from(step),
        f64::from(eps),
    ));
    let expected = read(advmoe_kernels::reference::linf_step(
        t(&center),
        t(&grad),
        t(&center),
        f64::from(step),
        f64::from(eps),
    ));
    assert_eq!(
        max_abs_diff(&from_clean, &expected),
        0.0,
        "a step from the center"
    );
    let mut with_nan = grad.clone();
    with_nan[3] = f32::NAN;
    let out = read(advmoe_kernels::linf_step(
        t(&x),
        t(&with_nan),
        t(&center),
        f64::from(step),
        f64::from(eps),
    ));
    assert!(out[3].is_nan(), "a NaN gradient shows");
}
