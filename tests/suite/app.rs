//! The desktop app driven through its accessible labels with egui_kittest: presets, a short
//! training started from the setup view, the metrics the train view shows, a checkpoint saved
//! from it, the close dialog, the bundled demo models, the attack lab, the routing atlas and the
//! report; on the wgpu renderer (lavapipe in CI) the same flow with snapshot images of each view.

use std::time::{Duration, Instant};

use advmoe_app::LabApp;
use advmoe_app::analysis::AttackOutcome;
use advmoe_app::demo::{DEMOS, recorded_row};
use advmoe_app::gpu::ComputeDevice;
use advmoe_core::MethodKind;
use advmoe_engine::eval::{EvalOptions, evaluate};
use advmoe_engine::load_model_bytes;
use eframe::egui;
use egui_kittest::kittest::Queryable as _;
use egui_kittest::{Harness, SnapshotOptions};

use crate::common::Wait as _;
use crate::common::{Scratch, cpu, share_correct};

/// Step the app until `done` holds, failing after `secs` with `what`.
fn wait_for(
    harness: &mut Harness<'static, LabApp>,
    what: &str,
    secs: u64,
    done: impl Fn(&LabApp) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done(harness.state()) {
        assert!(
            Instant::now() < deadline,
            "{what}: not done in {secs} s (error shown: {:?})",
            harness.state().state.error.as_deref()
        );
        harness.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    harness.run_steps(2);
}

fn temp_dir(name: &str) -> Scratch {
    Scratch::new(name)
}

/// Press the report's "Export CSV and JSON" into a new scratch folder `name`: the folder and
/// the `report.csv` written there.
fn export_report(harness: &mut Harness<'static, LabApp>, name: &str) -> (Scratch, String) {
    let dir = temp_dir(name);
    type_into(harness, "Export folder", dir.to_str().expect("utf-8 path"));
    harness.get_by_label("Export CSV and JSON").click();
    harness.run_steps(2);
    let csv = std::fs::read_to_string(dir.join("report.csv")).expect("report.csv");
    (dir, csv)
}

/// The app on a wgpu renderer (lavapipe in CI) whose device it shares with Burn, as eframe
/// sets it up natively.
fn gpu_harness(size: [f32; 2]) -> Harness<'static, LabApp> {
    let mut setup = egui_kittest::wgpu::default_wgpu_setup();
    if let eframe::egui_wgpu::WgpuSetup::CreateNew(create) = &mut setup {
        create.device_descriptor = advmoe_app::gpu::device_descriptor();
    }
    Harness::builder()
        .with_size(size)
        .renderer(egui_kittest::wgpu::WgpuTestRenderer::from_setup(setup))
        .build_eframe(|cc| LabApp::new(cc))
}

/// Wait until the three bundled demo models are in the library.
fn wait_for_demos(harness: &mut Harness<'static, LabApp>) {
    wait_for(harness, "loading the demo models", 120, |app| {
        app.state.models.len() == DEMOS.len() && !app.state.analysis_busy()
    });
}

/// Open the combo box labelled `combo` and pick `item`.
fn choose(harness: &mut Harness<'static, LabApp>, combo: &str, item: &str) {
    harness.get_by_label(combo).click();
    harness.run_steps(2);
    harness.get_by_label(item).click();
    harness.run_steps(2);
}

/// Press "Attack" in the attack lab and wait for that attack's result.
fn attack_now(harness: &mut Harness<'static, LabApp>, what: &str) -> AttackOutcome {
    let before = harness.state().state.attack.sent;
    harness.get_by_label("Attack").click();
    wait_for(harness, what, 300, |app| {
        let state = &app.state.attack;
        state.sent > before
            && state.result.as_ref().is_some_and(|r| r.seq == state.sent)
            && !app.state.analysis_busy()
    });
    harness
        .state()
        .state
        .attack
        .result
        .clone()
        .expect("an attack result")
}

/// Type into the text field labelled `label`, replacing what it held.
fn type_into(harness: &mut Harness<'static, LabApp>, label: &str, text: &str) {
    harness.get_by_label(label).focus();
    harness.run_steps(1);
    harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    harness.key_press(egui::Key::Backspace);
    harness.get_by_label(label).type_text(text);
    harness.run_steps(2);
}

fn harness() -> Harness<'static, LabApp> {
    Harness::builder()
        .with_size([1100.0, 900.0])
        .build_eframe(|cc| {
            let compute = ComputeDevice {
                device: cpu(),
                label: "CPU (test)".into(),
                fallback_reason: None,
                wgpu: None,
            };
            LabApp::with_device(compute, cc.egui_ctx.clone())
        })
}

#[test]
fn presets_fill_the_setup() {
    let mut harness = harness();
    harness.run_steps(2);
    harness.get_by_label("AdvMoE fixes the routers").click();
    harness.run_steps(2);
    assert_eq!(
        harness.state().state.setup.config.train.method,
        MethodKind::Advmoe
    );
    // Vanilla MoE AT as the paper's baseline: no balance term, which would hide the collapse.
    harness
        .get_by_label("Dense vs MoE: MoE under vanilla AT")
        .click();
    harness.run_steps(2);
    let config = &harness.state().state.setup.config;
    assert_eq!(config.train.method, MethodKind::MoeAt);
    assert_eq!(config.balance_weight, 0.0);
    // Given the term anyway, the setup says what it does to vanilla MoE AT.
    let slows = "Vanilla MoE AT with the balance term is not the paper's baseline";
    assert!(harness.query_by_label_contains(slows).is_none());
    harness.state_mut().state.setup.config.balance_weight = 0.1;
    harness.run_steps(2);
    harness.get_by_label_contains(slows);
    harness
        .get_by_label("Dense TRADES baseline (same cost)")
        .click();
    harness.run_steps(2);
    let config = &harness.state().state.setup.config;
    assert_eq!(config.train.method, MethodKind::Trades);
    assert_eq!(config.model.num_experts, 1);

    // Per-layer routers with the balance term hurt training (measured): the setup says so, and
    // stops saying it at 0.
    let warning = "With per-layer routers the balance term hurt training";
    harness.get_by_label("AdvMoE fixes the routers").click();
    harness.run_steps(2);
    assert!(harness.query_by_label_contains(warning).is_none());
    harness.state_mut().state.setup.config.model.router = advmoe_core::RouterKind::PerLayer;
    harness.run_steps(2);
    harness.get_by_label_contains(warning);
    harness.state_mut().state.setup.config.balance_weight = 0.0;
    harness.run_steps(2);
    assert!(harness.query_by_label_contains(warning).is_none());
    // AdvMoE's class-partition objective has no balance term: no warning, whatever the weight.
    harness.state_mut().state.setup.config.balance_weight = 1.0;
    harness
        .state_mut()
        .state
        .setup
        .config
        .train
        .router_objective = advmoe_core::RouterObjective::ClassPartition;
    harness.run_steps(2);
    assert!(harness.query_by_label_contains(warning).is_none());

    // The lesson "attack the router only" opens the attack lab on the vanilla MoE AT demo
    // model with the router target, and attacks.
    wait_for_demos(&mut harness);
    harness.get_by_label("Attack the router only").click();
    wait_for(&mut harness, "the router-only lesson", 120, |app| {
        app.state.attack.result.is_some() && !app.state.analysis_busy()
    });
    let outcome = harness.state().state.attack.result.clone().expect("result");
    assert_eq!(
        outcome.attack.spec.target,
        advmoe_core::AttackTarget::Router
    );
    let model = &harness.state().state.models[outcome.model];
    assert_eq!(model.config.train.method, MethodKind::MoeAt);
    harness.get_by_label_contains("Routing map: routes flipped in");
}

/// Set a tiny run (20 steps, an evaluation every 10 with the robustness measured on
/// `robust_images` test images), press "Start training" and wait until both evaluations arrived.
fn train_tiny(harness: &mut Harness<'static, LabApp>, robust_images: usize) {
    {
        let config = &mut harness.state_mut().state.setup.config;
        config.model.width = 4;
        config.train.total_steps = 20;
        config.train.batch_size = 8;
        config.train.eval_every = 10;
        config.train.eval_size = 50;
        config.data.synthetic_train_size = 200;
        config.data.synthetic_test_size = 50;
    }
    harness.state_mut().state.setup.robust_images = robust_images;
    harness.run_steps(2);
    harness.get_by_label("Start training").click();
    let deadline = Instant::now() + Duration::from_secs(300);
    while harness.state().state.train.robust.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "training did not finish in 300 s"
        );
        harness.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    harness.run_steps(2);
}

#[test]
fn a_training_started_from_the_setup_view_reports_progress_and_saves_a_checkpoint() {
    let mut harness = harness();
    train_tiny(&mut harness, 16);
    let state = harness.state().state.train.clone();
    assert_eq!(state.step, 20);
    assert_eq!(state.losses.len(), 20);
    assert!(state.losses.iter().all(|[_, loss]| loss.is_finite()));
    assert_eq!(
        state.evals.iter().map(|e| e.step).collect::<Vec<_>>(),
        [10, 20]
    );
    // Each evaluation also measured the robustness on 16 test images.
    assert_eq!(
        state
            .robust
            .iter()
            .map(|(step, _)| *step)
            .collect::<Vec<_>>(),
        [10, 20]
    );
    for (_, r) in &state.robust {
        assert_eq!(r.images, 16);
        assert!(r.robust_acc <= 1.0 && r.router_robustness.is_some_and(|v| v <= 1.0));
    }
    harness.get_by_label_contains("Robust accuracy (PGD-10, 8/255)");
    // The train view (opened by the start button) shows the figures it was sent.
    harness.get_by_label_contains("step 20 / 20");
    let accuracy = format!("Clean accuracy: {:.1}%", 100.0 * state.evals[1].clean_acc);
    harness.get_by_label_contains(&accuracy);

    // The finished run's model joins the library (after the three demo models).
    wait_for(&mut harness, "adopting the trained model", 60, |app| {
        app.state.models.len() == DEMOS.len() + 1
    });
    assert_eq!(
        harness.state().state.models[DEMOS.len()].origin,
        advmoe_app::analysis::ORIGIN_TRAINED
    );

    // Closing the window with the model unsaved asks first; "Cancel" keeps the app open.
    assert!(harness.state().state.has_unsaved_model());
    harness
        .input_mut()
        .viewports
        .entry(egui::ViewportId::ROOT)
        .or_default()
        .events
        .push(egui::ViewportEvent::Close);
    harness.step();
    // The harness keeps raw input between frames: the close request was one event.
    for info in harness.input_mut().viewports.values_mut() {
        info.events.clear();
    }
    harness.run_steps(2);
    assert!(harness.state().state.confirm_close);
    harness.get_by_label_contains("Discard the trained model?");
    harness.get_by_label("Cancel").click();
    harness.run_steps(2);
    assert!(!harness.state().state.confirm_close);

    // Save a checkpoint through the train view; the CLI's files appear in the folder.
    let dir = temp_dir("app-checkpoint");
    harness.get_by_label("Checkpoint folder").click();
    harness.run_steps(2);
    type_into(&mut harness, "Checkpoint folder", dir.to_str().unwrap());
    harness.get_by_label("Save checkpoint").click();
    wait_for(&mut harness, "saving the checkpoint", 60, |app| {
        app.state.train.saved_to.is_some()
    });
    for file in [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "run.json",
    ] {
        assert!(
            dir.join(file).is_file(),
            "{file} missing in {}",
            dir.display()
        );
    }
    assert!(!harness.state().state.has_unsaved_model());

    // A fresh app loads that checkpoint from the train view: same step and evaluations, and
    // the finished run's model joins the library.
    let saved = harness.state().state.train.clone();
    let mut fresh = self::harness();
    wait_for_demos(&mut fresh);
    fresh.get_by_label("Train").click();
    fresh.run_steps(2);
    fresh.get_by_label("Checkpoint folder").click();
    fresh.run_steps(2);
    type_into(&mut fresh, "Checkpoint folder", dir.to_str().unwrap());
    fresh.get_by_label("Load checkpoint").click();
    wait_for(&mut fresh, "loading the checkpoint", 60, |app| {
        app.state.models.len() == DEMOS.len() + 1
    });
    let loaded = &fresh.state().state.train;
    assert_eq!(loaded.step, 20);
    // run.json keeps the evaluations; JSON may round a float in its last bit.
    assert_eq!(loaded.evals.len(), saved.evals.len());
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * y.abs().max(1.0);
    for (a, b) in loaded.evals.iter().zip(&saved.evals) {
        assert_eq!((a.step, a.images), (b.step, b.images));
        for (x, y) in [
            (a.loss, b.loss),
            (a.test_loss, b.test_loss),
            (a.clean_acc, b.clean_acc),
            (a.elapsed_secs, b.elapsed_secs),
        ] {
            assert!(close(x, y), "{a:?} vs {b:?}");
        }
        let loads = a
            .expert_load
            .iter()
            .flatten()
            .zip(b.expert_load.iter().flatten());
        assert!(loads.clone().all(|(x, y)| close(*x, *y)));
        assert_eq!(loads.count(), b.expert_load.iter().flatten().count());
    }
    assert_eq!(loaded.state, Some(advmoe_engine::RunState::Finished));

    // A folder that holds a model but no run checkpoint: a message naming the missing file.
    std::fs::remove_file(dir.join("run.json")).expect("remove run.json");
    fresh.get_by_label("Load checkpoint").click();
    wait_for(&mut fresh, "the load error", 60, |app| {
        app.state.error.as_deref().is_some()
    });
    let error = fresh
        .state()
        .state
        .error
        .as_deref()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("run.json"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

/// With a wgpu renderer (lavapipe in CI) the app registers the renderer's own device with Burn
/// and trains on it: one device for drawing and training.
#[test]
fn the_app_trains_on_the_device_it_draws_with() {
    let mut harness = gpu_harness([1100.0, 900.0]);
    let label = harness.state().compute_label().to_owned();
    assert!(
        label.starts_with("GPU: "),
        "not on the renderer's device: {label}"
    );
    // Few robustness images: on lavapipe the attacks' sparse-kernel passes are slow.
    train_tiny(&mut harness, 4);
    let state = &harness.state().state.train;
    assert_eq!(state.step, 20);
    assert!(state.losses.iter().all(|[_, loss]| loss.is_finite()));
    harness.get_by_label_contains("step 20 / 20");
}

/// Every bundled demo model loads and measures, on the CPU, the clean accuracy recorded when
/// `advmoe compare` trained it, on the same test images.
#[test]
fn the_demo_models_load_and_reach_their_recorded_accuracy() {
    let device = cpu();
    for demo in DEMOS {
        let (config_json, safetensors) = demo.files().wait().expect("compiled in");
        let (config, model) = load_model_bytes(
            &config_json,
            &safetensors,
            std::path::Path::new(demo.name),
            &device,
        )
        .unwrap_or_else(|e| panic!("{}: {e:#}", demo.name));
        let recorded = recorded_row(demo.name)
            .expect("compare.json")
            .unwrap_or_else(|| panic!("no recorded row for {}", demo.name));
        assert_eq!(config.train.method, recorded.method, "{}", demo.name);
        assert_eq!(config.model.num_experts, recorded.experts, "{}", demo.name);
        let data = advmoe_data::load(&config.data).expect("synthetic data");
        let result = evaluate(
            &model,
            &data.test,
            &EvalOptions {
                limit: recorded.report.images,
                ..EvalOptions::default()
            },
            &device,
        )
        .wait()
        .expect("evaluation");
        assert_eq!(result.images, recorded.report.images);
        assert!(
            (result.clean_acc - recorded.report.clean_acc).abs() <= 0.5 / result.images as f64,
            "{}: clean accuracy {} but {} was recorded",
            demo.name,
            result.clean_acc,
            recorded.report.clean_acc
        );
        // A demo worth showing: far above chance (10 classes).
        assert!(
            result.clean_acc > 0.6,
            "{}: {}",
            demo.name,
            result.clean_acc
        );
    }
}

/// Wait for the demo models, open the attack lab and attack an MoE demo model: the result stays
/// in the ε-ball, the view shows its predictions and routing map; ε = 0 changes nothing; the
/// user's own PNG can be attacked too.
#[test]
fn the_attack_lab_attacks_a_demo_model_and_shows_the_routing_map() {
    let mut harness = harness();
    wait_for_demos(&mut harness);
    harness.get_by_label("Attack lab").click();
    harness.run_steps(2);
    choose(&mut harness, "Model to attack", "Demo: MoE, vanilla MoE AT");
    let outcome = attack_now(&mut harness, "attacking");
    let a = &outcome.attack;
    assert_eq!(outcome.model, 1);
    assert!((a.spec.eps - 8.0 / 255.0).abs() < 1e-7);
    assert!(a.linf <= a.spec.eps + 1e-6, "left the ε-ball: {}", a.linf);
    assert!(a.adversarial_pixels.iter().all(|v| (0.0..=1.0).contains(v)));
    let layers = a.clean.routes.len();
    assert!(
        layers > 1,
        "per-layer routers expected, got {layers} routes"
    );
    let flips = a.flipped().iter().filter(|f| **f).count();
    harness.get_by_label_contains(&format!(
        "Routing map: routes flipped in {flips} of {layers} MoE layers"
    ));
    let names = &harness.state().state.models[1].class_names;
    harness.get_by_label_contains(&format!(
        "Adversarial prediction: {}",
        names[a.adversarial.prediction]
    ));
    let probs: f32 = a.adversarial.probabilities.iter().sum();
    assert!((probs - 1.0).abs() < 1e-4);

    // ε = 0: the adversarial image is the clean image and no route moves.
    harness.state_mut().state.attack.eps_255 = 0.0;
    let outcome = attack_now(&mut harness, "attacking at ε = 0");
    assert_eq!(outcome.attack.spec.eps, 0.0);
    assert_eq!(
        outcome.attack.adversarial_pixels,
        outcome.attack.clean_pixels
    );
    assert_eq!(outcome.attack.clean, outcome.attack.adversarial);
    harness.get_by_label_contains(&format!(
        "Routing map: routes flipped in 0 of {layers} MoE layers"
    ));

    // The user's own PNG, opened by path: fitted to 32×32 RGB and attacked.
    let dir = temp_dir("own-image");
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("stripes.png");
    let stripes = egui::ColorImage::new(
        [48, 40],
        (0..48 * 40)
            .map(|i| {
                let v = if (i % 48) / 4 % 2 == 0 { 230 } else { 20 };
                egui::Color32::from_rgb(v, v / 2, 255 - v)
            })
            .collect(),
    );
    advmoe_app::picture::save_png(&stripes, &path).expect("png");
    harness.state_mut().state.attack.eps_255 = 8.0;
    type_into(
        &mut harness,
        "Image file",
        path.to_str().expect("utf-8 path"),
    );
    harness.get_by_label("Open image").click();
    wait_for(&mut harness, "attacking the own image", 120, |app| {
        app.state
            .attack
            .result
            .as_ref()
            .is_some_and(|r| r.source == "stripes.png")
            && !app.state.analysis_busy()
    });
    let outcome = harness.state().state.attack.result.clone().expect("result");
    assert_eq!(outcome.attack.shape, [3, 32, 32]);
    assert_eq!(outcome.attack.label, outcome.attack.clean.prediction);
    assert!(outcome.attack.linf <= 8.0 / 255.0 + 1e-6);
    harness.get_by_label_contains("Label taken as the clean prediction");
    std::fs::remove_dir_all(&dir).ok();

    // A file that is not an image: a readable message, nothing else changes.
    let bad = temp_dir("bad-image");
    std::fs::create_dir_all(&bad).expect("temp dir");
    std::fs::write(bad.join("notes.png"), b"not a png").expect("write");
    type_into(
        &mut harness,
        "Image file",
        bad.join("notes.png").to_str().expect("utf-8"),
    );
    harness.get_by_label("Open image").click();
    harness.run_steps(3);
    let error = harness
        .state()
        .state
        .error
        .as_deref()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("notes.png") && error.contains("PNG or JPEG"),
        "{error}"
    );
    std::fs::remove_dir_all(&bad).ok();
}

/// A recorded row holds the outcomes of its `images` test images, and they add up to its recorded
/// SA and worst-case RA.
fn assert_outcomes_add_up(row: &advmoe_engine::compare::CompareRow, images: usize) {
    let each = row.report.per_image.as_ref().expect(&row.name);
    assert_eq!(
        (each.len(), row.report.images),
        (images, images),
        "{}",
        row.name
    );
    assert_eq!(
        share_correct(&each.clean),
        row.report.clean_acc,
        "{}",
        row.name
    );
    let worst = row.report.worst_case.as_ref().expect(&row.name);
    assert_eq!(
        share_correct(&each.worst_case),
        worst.robust_acc,
        "{}",
        row.name
    );
}

/// The report shows recorded comparisons: the bundled CIFAR-10 run with its budget and attacks
/// named under its table, its training curves plotted and its rows exported; a `compare.json`
/// handed over as bytes (the browser's picker, a drop) or typed as a folder joins them and is
/// shown; a broken one is refused with a message, and what was shown stays.
#[test]
fn the_report_shows_recorded_comparisons() {
    use advmoe_app::files::{FileKind, classify};
    use advmoe_app::views::report::{BUNDLED_COMPARISONS, RecordedComparison};
    let mut harness = harness();
    harness.run_steps(2);
    let bundled = RecordedComparison::parse("bundled", BUNDLED_COMPARISONS[0].1.as_bytes())
        .expect("the bundled comparison parses");
    assert_eq!(
        harness.state().state.report.comparisons.len(),
        BUNDLED_COMPARISONS.len()
    );
    // The 3,000-step run: its four models at 3,000 steps, vanilla MoE AT's router collapsed
    // onto one expert at the end, AdvMoE's not.
    let longer = RecordedComparison::parse("3000", BUNDLED_COMPARISONS[1].1.as_bytes())
        .expect("the 3,000-step comparison parses");
    let rows = &longer.comparison.rows;
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let four = [
        "advmoe",
        "moe-at",
        "dense-same-cost-trades",
        "moe-at-balanced",
    ];
    assert_eq!(names, four);
    assert!(rows.iter().all(|r| r.steps == 3000));
    assert!(longer.comparison.budget().contains("3000 steps"));
    let first_layer = |name: &str| {
        let row = rows.iter().find(|r| r.name == name).expect(name);
        row.report.expert_load[0].clone()
    };
    assert!(first_layer("moe-at").iter().any(|&share| share > 0.99));
    assert!(first_layer("advmoe").iter().all(|&share| share > 0.2));
    // The 6,000-step run on 2,000 test images: the same four models and the full-width dense
    // one; both vanilla routers collapsed, AdvMoE's live, PGD-20 and the worst case named.
    let twice = RecordedComparison::parse("6000", BUNDLED_COMPARISONS[3].1.as_bytes())
        .expect("the 6,000-step comparison parses");
    let rows6000 = &twice.comparison.rows;
    let names: Vec<&str> = rows6000.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names[..4], four);
    assert_eq!(names[4..], ["dense-full-trades"]);
    // AdvMoE's pathway, its router included, costs under half the full-width dense model.
    let macs = |name: &str| {
        let row = rows6000.iter().find(|r| r.name == name).expect(name);
        row.macs_pathway_with_router
    };
    assert!(2 * macs("advmoe") < macs("dense-full-trades"));
    assert!(rows6000.iter().all(|r| r.steps == 6000));
    assert!(rows6000.iter().all(|r| r.report.images == 2000));
    assert!(twice.comparison.budget().contains("6000 steps"));
    let released: Vec<_> = rows6000
        .iter()
        .map(|r| r.report.released_robust_acc)
        .collect();
    assert_eq!(
        released,
        [
            Some(0.374),
            Some(0.2995),
            Some(0.2945),
            Some(0.289),
            Some(0.3275)
        ]
    );
    for row in rows6000.iter().filter(|r| r.experts > 1) {
        let load = &row.report.expert_load[0];
        let collapsed = load.iter().any(|&share| share > 0.99);
        assert_eq!(
            collapsed,
            row.name.starts_with("moe-at"),
            "{}: {load:?}",
            row.name
        );
    }
    harness.get_by_label("Report").click();
    harness.run_steps(2);
    choose(&mut harness, "Show", BUNDLED_COMPARISONS[0].0);
    assert_eq!(harness.state().state.report.shown, Some(0));
    for named in [
        "data image-folder (cifar10-jpg.tar.gz); resnet depth 1, base width 16, N = 2, r = 0.5",
        "batch 64, 1200 steps; training attack 2 × 5.0/255 within ε = 8.0/255, β = 6; \
         AdvMoE's router objective class-partition (α = 6, warm-up 0.5), balance weight 0.1; \
         seed 0",
        "RA: PGD-10 at ε = 8.0/255 on 1000 test images; worst-case RA: per image, over PGD-10, \
         APGD-CE-100, APGD-T-100 (9 targets); router robustness: routes kept under PGD-CW-20",
    ] {
        harness.get_by_label_contains(named);
    }
    // The collapse is drawn: the curves of expert load over the steps.
    harness.get_by_label("Expert load during training: first MoE layer, share of expert 0");
    // These rows were recorded before reports counted accuracy by route: no routes table.
    let routes = "Routes and classes (first MoE layer, by the clean route)";
    assert!(harness.query_by_label(routes).is_none());
    let (dir, csv) = export_report(&mut harness, "recorded-report");
    let rows = &bundled.comparison.rows;
    assert_eq!(csv.lines().count(), 1 + rows.len(), "{csv}");
    for (line, row) in csv.lines().skip(1).zip(rows) {
        assert!(
            line.starts_with(&format!(
                "\"{}\",{},{},{},1000,{:.6},",
                row.name, row.method, row.experts, row.ratio, row.report.clean_acc
            )),
            "{line}"
        );
    }

    // The AdvMoE run that counted them: its router follows the partition on 715 of 1,000 test
    // images, which it classifies far better than the rest; forced onto their partition's
    // expert, the rest score as they did on their own route.
    choose(&mut harness, "Show", BUNDLED_COMPARISONS[2].0);
    harness.get_by_label("715 of 1000");
    harness.get_by_label("58.2 / 27.1");
    harness.get_by_label("24.2 / 7.4");
    harness.get_by_label("forced to class mod N: SA % / worst-case RA %");
    harness.get_by_label("48.5 / 22.2");
    harness.get_by_label("24.2 / 7.0");
    choose(&mut harness, "Show", BUNDLED_COMPARISONS[3].0);
    harness.get_by_label_contains("batch 64, 6000 steps");
    // The released evaluation's column: AdvMoE ahead under it, behind under the exact attack.
    harness.get_by_label("RA, paper code's eval %");
    harness.get_by_label("37.4");
    harness.get_by_label("29.9");
    harness.get_by_label("29.4");
    harness.get_by_label_contains("RA: PGD-20 at ε = 8.0/255 on 2000 test images");
    harness.get_by_label_contains("PGD-20 through the gates + 6 × router CE at the same ε");
    harness.get_by_label("Expert load during training: first MoE layer, share of expert 0");

    // The 3,000-step models with every batch-norm pass folded, measured image by image with three
    // seeds: the paired differences of AdvMoE against vanilla MoE AT and the same-cost dense
    // model, on SA, PGD-10 and the worst case, from outcomes that add up to the recorded
    // accuracies. AdvMoE's worst-case gap to vanilla MoE AT changes sign between the seeds
    // (40 / 22 images with seed 0, 32 / 64 with seed 1, 29 / 64 with seed 2:
    // docs/results/cifar10-cpu-3000-steps.md).
    for (index, seed, only) in [(4, 0, (40, 22)), (5, 1, (32, 64)), (6, 2, (29, 64))] {
        let paired = RecordedComparison::parse("paired", BUNDLED_COMPARISONS[index].1.as_bytes())
            .expect("the paired comparison parses");
        assert_eq!(paired.comparison.base.train.seed, seed);
        let rows = &paired.comparison.rows;
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["advmoe", "moe-at", "dense-same-cost-trades"]);
        for row in rows {
            assert_outcomes_add_up(row, 1000);
        }
        let differences = advmoe_engine::compare::paired_rows(rows);
        assert_eq!(differences.len(), 2 * 3);
        assert!(differences.iter().all(|d| d.a == "advmoe"));
        choose(&mut harness, "Show", BUNDLED_COMPARISONS[index].0);
        harness.get_by_label("Paired differences (the same test images, image by image)");
        harness.get_by_label("McNemar p");
        let worst = &differences[2];
        assert_eq!(
            (worst.b.as_str(), worst.what.as_str()),
            ("moe-at", "worst-case RA")
        );
        assert_eq!(
            (worst.paired.only_a, worst.paired.only_b),
            only,
            "seed {seed}"
        );
        harness.get_by_label(&format!("{} / {}", only.0, only.1));
        let p = advmoe_engine::paired::format_p(worst.paired.p_value);
        assert!(harness.query_all_by_label(&p).next().is_some(), "{p}");
        // Every seed is in the report, so each shows the summary over them: AdvMoE's
        // worst-case gap to vanilla MoE AT per seed, and its mean ± SE over the seeds.
        harness.get_by_label("Over seeds 0, 1, 2: the same comparison trained 3 times");
        harness.get_by_label("+1.8 (0.030), -3.2 (0.001), -3.5 (< 0.001)");
        harness.get_by_label("-1.6 ± 1.7");
        // AdvMoE trained with the robust router objective (one-model runs of the same seeds,
        // bundled too) joins the summary: its router collapsed with every seed, and it scores
        // like vanilla MoE AT, −1.1, −1.4 and +0.5 points of worst-case RA by seed.
        harness.get_by_label("advmoe, router objective robust");
        harness.get_by_label("-1.1 (0.242), -1.4 (0.103), +0.5 (0.625)");
        harness.get_by_label("-0.7 ± 0.6");
    }
    // Shown itself, a robust-objective run has the summary over its own three seeds.
    for (title, _) in &BUNDLED_COMPARISONS[8..11] {
        choose(&mut harness, "Show", title);
        harness.get_by_label("Over seeds 0, 1, 2: the same comparison trained 3 times");
    }
    // All five models at 6,000 steps with every batch-norm pass folded, image by image. Vanilla
    // MoE AT's router sends every image to one expert from the first curve point on; with the
    // balance term it did so too, onto each expert in turn, then spread them from step 3,000 on
    // (26 / 74 at the end); AdvMoE's stayed live throughout. AdvMoE trails the balanced one in
    // the worst case, 17 against 47 images (docs/results/cifar10-cpu-6000-steps.md).
    let folded = RecordedComparison::parse("6000 folded", BUNDLED_COMPARISONS[7].1.as_bytes())
        .expect("the folded 6,000-step comparison parses");
    let rows = &folded.comparison.rows;
    // Every model `compare` trains, in its order (the comparison test pins the names).
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    let entries = advmoe_engine::compare::compare_entries(&folded.comparison.base);
    let all: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!((names.len(), names), (5, all));
    assert!(
        rows.iter()
            .all(|r| r.steps == 6000 && r.report.images == 1000)
    );
    let busiest = |name: &str| -> Vec<f64> {
        let row = rows.iter().find(|r| r.name == name).expect(name);
        let each = row.report.per_image.as_ref().expect(name);
        assert_eq!(share_correct(&each.clean), row.report.clean_acc, "{name}");
        row.history
            .iter()
            .map(|h| h.expert_load[0].iter().cloned().fold(0.0, f64::max))
            .collect()
    };
    assert!(busiest("moe-at").iter().all(|&share| share > 0.99));
    let balanced = busiest("moe-at-balanced");
    assert!(
        balanced[..3].iter().all(|&share| share > 0.97),
        "{balanced:?}"
    );
    assert!(
        balanced[3..].iter().all(|&share| share < 0.8),
        "{balanced:?}"
    );
    assert!(busiest("advmoe").iter().all(|&share| share < 0.8));
    let differences = advmoe_engine::compare::paired_rows(rows);
    let worst = differences
        .iter()
        .find(|d| d.b == "moe-at-balanced" && d.what == "worst-case RA")
        .expect("AdvMoE against the balanced vanilla MoE AT");
    assert_eq!((worst.paired.only_a, worst.paired.only_b), (17, 47));
    choose(&mut harness, "Show", BUNDLED_COMPARISONS[7].0);
    harness.get_by_label_contains("batch 64, 6000 steps");
    harness.get_by_label("17 / 47");
    harness.get_by_label("Expert load during training: first MoE layer, share of expert 0");

    // The reference's budget (width 32, batch 128, 3,000 steps, PGD-20 and the worst case on
    // 2,000 test images): vanilla MoE AT's router collapsed, AdvMoE's live and on the class
    // partition for 1,462 images, AdvMoE behind both others image by image under the exact
    // attacks and ahead under the released evaluation
    // (docs/results/cifar10-cpu-reference-budget.md).
    let reference = RecordedComparison::parse("reference", BUNDLED_COMPARISONS[11].1.as_bytes())
        .expect("the reference-budget comparison parses");
    let base = &reference.comparison.base;
    assert_eq!((base.model.width, base.train.batch_size), (32, 128));
    let rows = &reference.comparison.rows;
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["advmoe", "moe-at", "dense-same-cost-trades"]);
    for row in rows {
        assert_eq!(row.steps, 3000, "{}", row.name);
        assert_outcomes_add_up(row, 2000);
    }
    let load = |name: &str| {
        let row = rows.iter().find(|r| r.name == name).expect(name);
        row.report.expert_load[0].clone()
    };
    assert!(load("moe-at").iter().any(|&share| share > 0.99));
    assert!(load("advmoe").iter().all(|&share| share > 0.3));
    let differences = advmoe_engine::compare::paired_rows(rows);
    let only = |b: &str, what: &str| {
        let d = differences
            .iter()
            .find(|d| d.a == "advmoe" && d.b == b && d.what == what)
            .expect(what);
        (d.paired.only_a, d.paired.only_b)
    };
    assert_eq!(only("moe-at", "worst-case RA"), (44, 94));
    assert_eq!(only("dense-same-cost-trades", "worst-case RA"), (48, 111));
    assert_eq!(
        rows.iter()
            .map(|r| r.report.released_robust_acc)
            .collect::<Vec<_>>(),
        [Some(0.3855), Some(0.2995), Some(0.3055)]
    );
    choose(&mut harness, "Show", BUNDLED_COMPARISONS[11].0);
    assert_eq!(harness.state().state.report.shown, Some(11));
    harness.get_by_label_contains("base width 32");
    harness.get_by_label_contains("batch 128, 3000 steps");
    harness.get_by_label_contains("RA: PGD-20 at ε = 8.0/255 on 2000 test images");
    harness.get_by_label("1462 of 2000");
    harness.get_by_label("44 / 94");
    harness.get_by_label("48 / 111");
    assert!(
        harness
            .query_by_label_contains("the same comparison trained")
            .is_none()
    );

    // The comparisons of another budget have no other seed beside them.
    choose(&mut harness, "Show", BUNDLED_COMPARISONS[3].0);
    assert!(
        harness
            .query_by_label_contains("the same comparison trained")
            .is_none()
    );

    // Bytes, as the browser hands them over: two of the bundled rows.
    for (name, kind) in [
        ("runs/two/compare.json", FileKind::Comparison),
        ("config.json", FileKind::ModelConfig),
    ] {
        assert_eq!(classify(name), kind, "{name}");
    }
    let mut two: serde_json::Value = serde_json::from_str(BUNDLED_COMPARISONS[0].1).expect("json");
    two["rows"].as_array_mut().expect("rows").truncate(2);
    let bytes = serde_json::to_vec(&two).expect("json");
    harness
        .state_mut()
        .accept_files(vec![("runs/two/compare.json".into(), bytes.clone())]);
    harness.run_steps(2);
    let report = &harness.state().state.report;
    assert_eq!(report.comparisons.len(), BUNDLED_COMPARISONS.len() + 1);
    assert_eq!(report.shown, Some(BUNDLED_COMPARISONS.len()));
    assert_eq!(
        report.shown_comparison().map(|c| c.comparison.rows.len()),
        Some(2)
    );
    assert!(harness.state().state.error.is_none());

    // A broken one: a message, and the comparison shown stays.
    harness.state_mut().accept_files(vec![(
        "broken compare.json".into(),
        b"{\"rows\": [".to_vec(),
    )]);
    harness.run_steps(2);
    let error = harness.state_mut().state.error.take().expect("an error");
    assert!(
        error.contains("broken compare.json is not a compare.json written by `advmoe compare`"),
        "{error}"
    );
    assert_eq!(
        harness.state().state.report.shown,
        Some(BUNDLED_COMPARISONS.len())
    );

    // Natively, a folder typed in: its compare.json. One with no finished model is refused.
    std::fs::write(dir.join("compare.json"), &bytes).expect("write");
    choose(&mut harness, "Show", "The library's models (measured here)");
    type_into(
        &mut harness,
        "compare.json",
        dir.to_str().expect("utf-8 path"),
    );
    harness.get_by_label("Open comparison").click();
    harness.run_steps(2);
    let report = &harness.state().state.report;
    assert_eq!(report.comparisons.len(), BUNDLED_COMPARISONS.len() + 2);
    assert_eq!(report.shown, Some(BUNDLED_COMPARISONS.len() + 1));
    // Titled by its folder and file name, not its full path.
    let folder = dir.file_name().expect("a folder name").to_string_lossy();
    assert_eq!(
        report.shown_comparison().map(|c| c.title.as_str()),
        Some(format!("{folder}/compare.json").as_str())
    );
    two["rows"].as_array_mut().expect("rows").clear();
    std::fs::write(
        dir.join("compare.json"),
        serde_json::to_vec(&two).expect("json"),
    )
    .expect("write");
    harness.get_by_label("Open comparison").click();
    harness.run_steps(2);
    let error = harness.state_mut().state.error.take().expect("an error");
    assert!(error.contains("holds no finished model yet"), "{error}");
    std::fs::remove_dir_all(&dir).ok();
}

/// The routing atlas of an MoE demo model: class × expert counts that add up, per layer, to the
/// images routed; and the report: the demo models' recorded rows, exported as CSV and JSON, and
/// one model measured again in the app.
#[test]
fn the_atlas_and_the_report_show_the_demo_models() {
    let mut harness = harness();
    wait_for_demos(&mut harness);
    harness.get_by_label("Routing atlas").click();
    harness.state_mut().state.atlas.limit = 300;
    harness.run_steps(2);
    choose(&mut harness, "Model", "Demo: MoE, AdvMoE");
    wait_for(&mut harness, "computing the atlas", 300, |app| {
        app.state.atlas.atlas.is_some() && !app.state.analysis_busy()
    });
    let atlas = harness.state().state.atlas.atlas.clone().expect("atlas");
    assert_eq!(atlas.model, 2);
    assert_eq!(atlas.eval.images, 300);
    for (layer, matrix) in atlas.eval.class_expert.iter().enumerate() {
        let total: usize = matrix.iter().flatten().sum();
        assert_eq!(total, 300, "layer {layer}");
        for (e, load) in atlas.eval.expert_load[layer].iter().enumerate() {
            let routed: usize = matrix.iter().map(|c| c[e]).sum();
            assert!((load - routed as f64 / 300.0).abs() < 1e-12);
            assert_eq!(
                atlas.examples[layer][e].len(),
                routed.min(advmoe_app::analysis::ATLAS_EXAMPLES)
            );
        }
    }
    harness.get_by_label_contains("Layer 1: expert load");

    harness.get_by_label("Report").click();
    harness.run_steps(2);
    let (dir, csv) = export_report(&mut harness, "report");
    assert_eq!(csv.lines().count(), 1 + DEMOS.len(), "{csv}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("report.json")).expect("report.json"))
            .expect("json");
    let rows = json["rows"].as_array().expect("rows");
    for (row, demo) in rows.iter().zip(DEMOS) {
        let recorded = recorded_row(demo.name).expect("json").expect("row");
        assert_eq!(
            row["report"]["clean_acc"].as_f64(),
            Some(recorded.report.clean_acc)
        );
    }
    std::fs::remove_dir_all(&dir).ok();

    {
        let report = &mut harness.state_mut().state.report;
        report.eval_size = 20;
        report.sweep = "4/255".into();
        report.worst_case = true;
        report.worst_case_steps = 2;
        report.worst_case_square = 20;
    }
    harness.run_steps(1);
    harness
        .get_all_by_label("Re-measure")
        .next()
        .expect("a button")
        .click();
    wait_for(&mut harness, "measuring", 300, |app| {
        !app.state.report.measured.is_empty() && !app.state.analysis_busy()
    });
    let row = harness.state().state.report.measured[&0].clone();
    assert_eq!(row.report.images, 20);
    assert_eq!(row.report.sweep.len(), 1);
    assert!((row.report.sweep[0].eps - 4.0 / 255.0).abs() < 1e-7);
    assert!(
        row.report.router_robustness.is_none(),
        "the dense model has no routers"
    );
    // The worst case over PGD-10, APGD-CE, APGD-T and Square, never above any of them.
    let worst = row
        .report
        .worst_case
        .as_ref()
        .expect("worst case asked for");
    let names: Vec<&str> = worst.each.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["PGD-10", "APGD-CE-2", "APGD-T-2 (9 targets)", "Square-20"]
    );
    assert!(worst.each.iter().all(|(_, acc)| worst.robust_acc <= *acc));

    // "Open model folder": a model folder joins the library under its folder name; a folder
    // whose weights are cut short gives a message naming the file, and nothing joins.
    let scratch = temp_dir("opened");
    let folder = scratch.join("my-model");
    std::fs::create_dir_all(&folder).expect("temp dir");
    let (config_json, safetensors) = DEMOS[2].files().wait().expect("compiled in");
    std::fs::write(folder.join("config.json"), &config_json).expect("write");
    std::fs::write(folder.join("model.safetensors"), &safetensors).expect("write");
    type_into(
        &mut harness,
        "Model folder",
        folder.to_str().expect("utf-8 path"),
    );
    harness.get_by_label("Open model folder").click();
    wait_for(&mut harness, "opening the folder", 60, |app| {
        app.state.models.len() == DEMOS.len() + 1 && !app.state.analysis_busy()
    });
    assert_eq!(harness.state().state.models[DEMOS.len()].name, "my-model");
    let half = safetensors.len() / 2;
    std::fs::write(folder.join("model.safetensors"), &safetensors[..half]).expect("write");
    harness.get_by_label("Open model folder").click();
    wait_for(&mut harness, "the open error", 60, |app| {
        app.state.error.as_deref().is_some() && !app.state.analysis_busy()
    });
    let error = harness
        .state()
        .state
        .error
        .as_deref()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("model.safetensors"), "{error}");
    assert_eq!(harness.state().state.models.len(), DEMOS.len() + 1);
}

/// A shared link: the attack lab's state → its link → pasted into a fresh app (before that
/// app has loaded its models) → the same settings and, on the CPU, the same adversarial image
/// bit for bit; a link from another version opens what it can and says what it dropped.
#[test]
fn a_shared_link_reopens_the_same_attack_in_a_fresh_app() {
    let mut first = harness();
    wait_for_demos(&mut first);
    first.get_by_label("Attack the router only").click();
    first.run_steps(2);
    {
        let attack = &mut first.state_mut().state.attack;
        attack.test_index = 7;
        attack.eps_255 = 6.5;
        attack.steps = 7;
        attack.seed = 3;
    }
    let shown = attack_now(&mut first, "the attack to share");
    let link = first.state().link();
    assert_eq!(
        link,
        "#v=1&view=attack&model=moe-at&image=7&attack=pgd&target=router&eps=6.5&steps=7&seed=3&projector=0"
    );

    let mut second = harness();
    second.run_steps(1);
    second.get_by_label("Link").click();
    // The menu's popup shows in the frames after the click.
    second.run_steps(3);
    type_into(&mut second, "Link to open", &link);
    second.get_by_label("Open link").click();
    wait_for(&mut second, "the linked attack", 300, |app| {
        app.state.pending_link.is_none()
            && app.state.attack.result.is_some()
            && !app.state.analysis_busy()
    });
    let state = &second.state().state;
    assert_eq!(state.link().fragment(), link.trim_start_matches('#'));
    let reopened = state.attack.result.as_ref().expect("an attack result");
    assert_eq!(reopened.source, shown.source);
    assert_eq!(reopened.attack.spec, shown.attack.spec);
    assert_eq!(
        reopened.attack.adversarial_pixels, shown.attack.adversarial_pixels,
        "the same adversarial image"
    );
    assert_eq!(
        reopened.attack.adversarial.routes,
        shown.attack.adversarial.routes
    );
    assert_eq!(second.state().link(), link);

    // A link from another version: an unknown key, an unreadable ε and a model this library
    // lacks are dropped and named; the view and the steps are taken.
    second.state_mut().open_link(
        "https://example.org/lab/#v=2&view=atlas&model=gone&eps=big&steps=12&colour=red",
    );
    second.run_steps(3);
    let state = &second.state().state;
    assert_eq!(state.tab, advmoe_app::command::Tab::Atlas);
    assert_eq!(state.attack.steps, 12);
    assert_eq!(state.attack.eps_255, 6.5);
    let error = state.error.as_deref().unwrap_or_default();
    for named in ["colour", "eps = \"big\"", "\"gone\""] {
        assert!(error.contains(named), "{named} not named in: {error}");
    }
    assert!(state.pending_link.is_none());

    // The paper code's attack options travel in a link (written only when on) and reach the
    // attack's spec on the full target alone; a router term out of range is dropped.
    assert!(!link.contains("gates") && !link.contains("rterm"));
    second
        .state_mut()
        .open_link("#v=1&view=attack&target=full&gates=1&rterm=6");
    second.run_steps(3);
    let state = &second.state().state;
    let spec = state.attack.spec();
    assert!(spec.through_gates && spec.router_term == 6.0, "{spec:?}");
    spec.validate().unwrap();
    assert!(
        state.link().fragment().contains("&gates=1&rterm=6&"),
        "{}",
        state.link().fragment()
    );
    second.state_mut().open_link("#v=1&target=router&rterm=99");
    second.run_steps(3);
    let state = &second.state().state;
    let spec = state.attack.spec();
    assert!(!spec.through_gates && spec.router_term == 0.0, "{spec:?}");
    spec.validate().unwrap();
    assert_eq!(state.attack.router_term, 6.0);
    let error = state.error.as_deref().unwrap_or_default();
    assert!(error.contains("rterm = \"99\""), "{error}");
}

/// "Export figure": the attack lab's figure as one PNG at 2× (the clean image in it pixel for
/// pixel, a caption drawn in text) and its numbers as JSON, written into the export folder.
#[test]
fn the_attack_lab_exports_its_figure_at_2x() {
    let mut harness = harness();
    wait_for_demos(&mut harness);
    let dir = temp_dir("figure");
    harness.state_mut().state.attack.export_dir = dir.to_str().unwrap().into();
    harness.get_by_label("Attack lab").click();
    harness.run_steps(2);
    choose(&mut harness, "Model to attack", "Demo: MoE, vanilla MoE AT");
    harness.state_mut().state.attack.test_index = 18;
    harness.state_mut().state.attack.target = advmoe_core::AttackTarget::Router;
    let outcome = attack_now(&mut harness, "attacking");
    harness.get_by_label("Export figure").click();
    harness.run_steps(2);
    let app = harness.state();
    assert!(app.state.error.is_none(), "{:?}", app.state.error);
    let model = &app.state.models[outcome.model];
    let (_, layout) = advmoe_app::figure::render(&outcome, model);
    let stem = advmoe_app::figure::file_stem(&outcome, model);
    assert_eq!(stem, "moe-at-test-image-18-pgd-router-eps8");
    let png = image::open(dir.join(format!("{stem}.png")))
        .unwrap()
        .to_rgb8();
    let scale = advmoe_app::figure::SCALE;
    assert_eq!(
        [png.width(), png.height()],
        [
            (layout.size.x * scale).ceil() as u32,
            (layout.size.y * scale).ceil() as u32
        ]
    );
    assert!(png.width() >= 1400, "{} px wide", png.width());
    // The clean image, each of its pixels a square block of the figure.
    let a = &outcome.attack;
    let clean = advmoe_app::picture::color_image(&a.clean_pixels, a.shape);
    let rect = layout.images[0];
    let [w, h] = clean.size;
    let block = rect.width() * scale / w as f32;
    assert!(block >= 9.0, "{block} px per image pixel");
    for v in 0..h {
        for u in 0..w {
            let x = (rect.min.x * scale + (u as f32 + 0.5) * block) as u32;
            let y = (rect.min.y * scale + (v as f32 + 0.5) * block) as u32;
            let p = png.get_pixel(x, y).0;
            let q = clean.pixels[v * w + u];
            assert_eq!(p, [q.r(), q.g(), q.b()], "pixel ({u}, {v})");
        }
    }
    // The caption is text: dark strokes on white, a few thousand pixels of them.
    let c = layout.caption;
    let mut ink = 0;
    for y in (c.min.y * scale) as u32..(c.max.y * scale) as u32 {
        for x in (c.min.x * scale) as u32..(c.max.x * scale) as u32 {
            ink += usize::from(png.get_pixel(x, y).0.iter().all(|v| *v < 100));
        }
    }
    assert!(ink > 2000, "only {ink} dark pixels in the caption");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(format!("{stem}.json"))).unwrap()).unwrap();
    assert_eq!(json["clean"]["class"], a.clean.prediction);
    assert_eq!(
        json["adversarial"]["routes"].as_array().unwrap().len(),
        a.adversarial.routes.len()
    );
    assert_eq!(json["attack"]["target"], "router");
    assert!(json["caption"].as_str().unwrap().contains("ε = 8.0/255"));
    assert!(
        json["link"].as_str().unwrap().contains("image=18"),
        "{}",
        json["link"]
    );
    harness.get_by_label_contains("Saved ");
}

/// Every bundled lesson, driven through the app on the CPU from its menu entry to "Finish":
/// each card sets up its view and points at a part of it that is on screen; a "predict first"
/// card hides the result until a choice is committed, then judges it on the live attack (or
/// the recorded figures) as the lesson's text expects. A link to a card reopens it.
#[test]
fn each_lesson_runs_start_to_finish() {
    use advmoe_app::views::lesson::marked;
    let mut harness = harness();
    wait_for_demos(&mut harness);
    harness.state_mut().state.atlas.limit = 300;
    let lessons = harness.state().state.lesson.lessons.clone();
    assert!(lessons.len() >= 4);
    let settled = |app: &LabApp| app.state.pending_link.is_none() && !app.state.analysis_busy();
    for (l, lesson) in lessons.iter().enumerate() {
        harness.get_by_label("Lessons").click();
        harness.run_steps(3);
        harness.get_by_label(&lesson.title).click();
        harness.run_steps(3);
        for (c, card) in lesson.cards.iter().enumerate() {
            let what = format!("{}, card {}", lesson.id, c + 1);
            assert_eq!(harness.state().state.lesson.open, Some((l, c)), "{what}");
            wait_for(&mut harness, &what, 300, settled);
            // The view asks for what it shows (an atlas) when it first draws it.
            harness.run_steps(2);
            wait_for(&mut harness, &what, 300, settled);
            if let Some(predict) = &card.predict {
                let sent = harness.state().state.attack.sent;
                assert!(harness.state().state.lesson.hides_result(), "{what}");
                harness.get_by_label(&predict.choices[0].text).click();
                harness.run_steps(2);
                harness.get_by_label("Commit and show").click();
                wait_for(&mut harness, &what, 300, |app| {
                    app.state.lesson.revealed.is_some() && settled(app)
                });
                let app = harness.state();
                let reveal = app.state.lesson.revealed.clone().unwrap();
                eprintln!("{what}: {}", reveal.what);
                let live = predict.choices.iter().any(|c| c.when.needs_attack());
                assert_eq!(app.state.attack.sent > sent, live, "{what}: attacked");
                assert_eq!(reveal.expected, Some(true), "{what}: {}", reveal.what);
                assert_eq!(
                    reveal.right.iter().filter(|r| **r == Some(true)).count(),
                    1,
                    "{what}: {reveal:?}"
                );
                harness.run_steps(3);
                wait_for(&mut harness, &what, 300, settled);
            } else if card.set.as_ref().and_then(|s| s.tab)
                == Some(advmoe_app::command::Tab::Attack)
            {
                // An attack card runs its attack as it opens.
                let app = harness.state();
                let result = app.state.attack.result.as_ref().expect("an attack result");
                assert_eq!(result.seq, app.state.attack.sent, "{what}");
            }
            if let Some(area) = card.look {
                assert!(
                    marked(&harness.ctx, area).is_some(),
                    "{what}: {area:?} not on screen"
                );
            }
            if card.keep {
                assert!(harness.query_by_label("Copy link").is_some(), "{what}");
            }
            let next = if c + 1 == lesson.cards.len() {
                "Finish"
            } else {
                "Next"
            };
            harness.get_by_label(next).click();
            harness.run_steps(3);
        }
        assert_eq!(harness.state().state.lesson.open, None);
    }

    // A link to a "predict first" card opens that card with its result hidden, and runs nothing
    // until the class commits.
    let (l, c) = lessons
        .iter()
        .enumerate()
        .find_map(|(l, lesson)| {
            let c = lesson.cards.iter().position(|c| {
                c.predict
                    .as_ref()
                    .is_some_and(|p| p.choices.iter().any(|c| c.when.needs_attack()))
            })?;
            Some((l, c))
        })
        .expect("a lesson predicting an attack");
    harness
        .state_mut()
        .handle(advmoe_app::command::AppCommand::ShowCard(l, c));
    harness.run_steps(3);
    let link = harness.state().link();
    assert!(
        link.contains(&format!("lesson={}&card={}", lessons[l].id, c + 1)),
        "{link}"
    );
    harness
        .state_mut()
        .handle(advmoe_app::command::AppCommand::LeaveLesson);
    harness.state_mut().state.attack.result = None;
    let sent = harness.state().state.attack.sent;
    harness.state_mut().open_link(&link);
    wait_for(&mut harness, "opening the card's link", 60, settled);
    harness.run_steps(3);
    let app = harness.state();
    assert_eq!(app.state.lesson.open, Some((l, c)));
    assert!(app.state.lesson.hides_result());
    assert_eq!(
        app.state.attack.sent, sent,
        "the link ran the attack before the guess"
    );
    assert!(app.state.error.is_none(), "{:?}", app.state.error);
}

/// On the wgpu renderer (lavapipe in CI): the demo models attacked on the GPU device, and a
/// snapshot image of each view (kept under tests/snapshots/, shown in the README).
#[test]
fn snapshots_of_every_view_on_the_gpu() {
    let mut harness = gpu_harness([1200.0, 860.0]);
    let options = SnapshotOptions::new().output_path("snapshots");
    wait_for_demos(&mut harness);
    harness.get_by_label("AdvMoE fixes the routers").click();
    harness.run_steps(2);
    harness.snapshot_options("setup", &options);

    // The router-only lesson on the vanilla MoE AT model, at the first test image whose
    // routes the attack flips (the routing map is the point of the view).
    harness.get_by_label("Attack the router only").click();
    harness.run_steps(2);
    let mut flipped = None;
    for index in 0..20 {
        harness.state_mut().state.attack.test_index = index;
        let a = attack_now(&mut harness, "attacking on the GPU").attack;
        assert!(a.linf <= a.spec.eps + 1e-6);
        assert_eq!(a.spec.target, advmoe_core::AttackTarget::Router);
        if a.flipped().contains(&true) {
            flipped = Some(index);
            break;
        }
    }
    assert!(
        flipped.is_some(),
        "the router attack flipped no route in 20 test images"
    );
    harness.snapshot_options("attack_lab", &options);

    // Projector mode, on a 1600 × 900 screen: 1.5× zoom, 256-point images, full-contrast text
    // in both themes, and the keyboard-only controls gone (then back when it is switched off).
    harness.set_size(egui::vec2(1600.0, 900.0));
    harness.get_by_label("Projector").click();
    harness.run_steps(3);
    assert_eq!(
        harness.ctx.zoom_factor(),
        advmoe_app::views::projector::ZOOM
    );
    for hidden in ["Update as ε moves", "Image file"] {
        assert!(harness.query_by_label(hidden).is_none(), "{hidden} shown");
    }
    harness.snapshot_options("attack_lab_projector", &options);
    harness.ctx.set_theme(egui::Theme::Light);
    harness.run_steps(3);
    assert_eq!(
        harness.ctx.global_style().visuals.override_text_color,
        Some(egui::Color32::BLACK)
    );
    harness.snapshot_options("attack_lab_projector_light", &options);
    harness.ctx.set_theme(egui::Theme::Dark);
    harness.get_by_label("Projector").click();
    harness.set_size(egui::vec2(1200.0, 860.0));
    harness.run_steps(3);
    assert_eq!(harness.ctx.zoom_factor(), 1.0);
    assert_eq!(harness.ctx.global_style().visuals, egui::Visuals::dark());
    assert!(harness.query_by_label("Update as ε moves").is_some());

    harness.get_by_label("Routing atlas").click();
    harness.state_mut().state.atlas.limit = 200;
    harness.run_steps(2);
    choose(&mut harness, "Model", "Demo: MoE, AdvMoE");
    wait_for(&mut harness, "computing the atlas on the GPU", 300, |app| {
        app.state.atlas.atlas.is_some() && !app.state.analysis_busy()
    });
    harness.snapshot_options("routing_atlas", &options);

    harness.get_by_label("Report").click();
    harness.run_steps(3);
    harness.snapshot_options("report", &options);

    // "Save plots as PNG" cuts each plot out of a screenshot of the window.
    let dir = temp_dir("report-png");
    type_into(
        &mut harness,
        "Export folder",
        dir.to_str().expect("utf-8 path"),
    );
    harness.get_by_label("Save plots as PNG").click();
    let files = [
        "robust_accuracy_vs_eps",
        "route_flips_vs_eps",
        "accuracy_vs_cost",
    ]
    .map(|name| dir.join(format!("{name}.png")));
    wait_for(&mut harness, "saving the plots", 60, |_| {
        files.iter().all(|f| f.is_file())
    });
    for file in &files {
        let bytes = std::fs::read(file).expect("png");
        assert_eq!(&bytes[1..4], b"PNG", "{}", file.display());
        assert!(bytes.len() > 2000, "{} is nearly empty", file.display());
    }
    std::fs::remove_dir_all(&dir).ok();

    // A lesson's "predict first" card beside the attack lab, after the class committed: the
    // verdict, the text that follows it and the outline around the routing map.
    let lesson = harness
        .state()
        .state
        .lesson
        .find("router-only")
        .expect("the lesson");
    harness
        .state_mut()
        .handle(advmoe_app::command::AppCommand::ShowCard(lesson, 1));
    harness.run_steps(3);
    wait_for(&mut harness, "opening the card", 60, |app| {
        app.state.pending_link.is_none() && !app.state.analysis_busy()
    });
    harness.get_by_label("It holds: the same class").click();
    harness.run_steps(2);
    harness.get_by_label("Commit and show").click();
    wait_for(&mut harness, "the card's attack on the GPU", 300, |app| {
        app.state.lesson.revealed.is_some() && !app.state.analysis_busy()
    });
    harness.run_steps(3);
    assert!(
        advmoe_app::views::lesson::marked(&harness.ctx, advmoe_app::lesson::Area::RoutingMap)
            .is_some()
    );
    harness.snapshot_options("lesson", &options);

    // Rows with training curves (what `advmoe compare --eval-every --curve-robust` records) add
    // the two plots of the curves: accuracy and the first layer's expert load over the steps. The
    // bundled CIFAR-10 comparison has them: vanilla MoE AT's router collapsing beside AdvMoE's.
    harness.get_by_label("Leave lesson").click();
    harness.run_steps(2);
    harness.get_by_label("Report").click();
    harness.run_steps(3);
    choose(
        &mut harness,
        "Show",
        advmoe_app::views::report::BUNDLED_COMPARISONS[0].0,
    );
    // A window tall enough for every plot, for the export below (a plot scrolled out of the
    // window is not saved).
    harness.set_size(egui::vec2(1200.0, 1400.0));
    {
        // No scratch paths of this run in the image.
        let report = &mut harness.state_mut().state.report;
        report.exported = None;
        report.export_dir = "runs/report".into();
    }
    harness.run_steps(3);
    harness.snapshot_options("report_cifar10", &options);

    let dir = temp_dir("report-curves-png");
    type_into(
        &mut harness,
        "Export folder",
        dir.to_str().expect("utf-8 path"),
    );
    harness.get_by_label("Save plots as PNG").click();
    let files = ["accuracy_during_training", "expert_load_during_training"]
        .map(|name| dir.join(format!("{name}.png")));
    wait_for(&mut harness, "saving the training-curve plots", 60, |_| {
        files.iter().all(|f| f.is_file())
    });
    for file in &files {
        let bytes = std::fs::read(file).expect("png");
        assert!(bytes.len() > 2000, "{} is nearly empty", file.display());
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// What the web build does, natively: the test hooks the browser test uses (a training, an
/// attack, the JSON status) and files arriving as bytes (a downloaded model pair, a checkpoint's
/// files, dataset files, an unknown file).
#[test]
fn hooks_and_files_as_bytes_work_the_app_as_the_web_build_does() {
    use advmoe_app::hooks::HookCommand;
    let mut harness = harness();
    wait_for_demos(&mut harness);
    let hook = |json: &str| serde_json::from_str::<HookCommand>(json).expect(json);
    harness.state_mut().run_hook(hook(
        r#"{"action":"train","steps":20,"eval_every":10,"batch_size":16,"eval_size":50,"method":"moe-at"}"#,
    ));
    wait_for(&mut harness, "the hook's training", 300, |app| {
        app.state.models.len() == DEMOS.len() + 1
    });
    let status = harness.state().status();
    assert_eq!(status["train"]["state"], "Finished");
    assert_eq!(status["train"]["step"], 20);
    // The timing bench/browser.sh reads: every step of the run, and the seconds they took.
    assert_eq!(status["train"]["timed_steps"], 20);
    let secs = status["train"]["timed_secs"].as_f64().unwrap();
    assert!(secs > 0.0 && secs.is_finite(), "timed_secs {secs}");
    let evals = status["train"]["evals"].as_array().unwrap();
    assert_eq!(evals.len(), 2);
    assert_eq!(evals[1]["step"], 20);
    let trained = DEMOS.len();
    assert_eq!(
        status["models"][trained]["origin"],
        "trained in this session"
    );

    harness.state_mut().run_hook(hook(
        r#"{"action":"attack","image":3,"eps_255":16,"steps":5}"#,
    ));
    wait_for(&mut harness, "the hook's attack", 120, |app| {
        app.state.attack.result.is_some() && !app.state.analysis_busy()
    });
    let status = harness.state().status();
    let attack = &status["attack"];
    assert_eq!(attack["model"], trained);
    assert_eq!(attack["source"], "test image 3");
    assert!(attack["linf"].as_f64().unwrap() <= attack["eps"].as_f64().unwrap() + 1e-6);
    let routes = attack["clean"]["routes"].as_array().unwrap();
    assert_eq!(routes.len(), 8, "one route per MoE layer of ResNet-10");
    let flips = routes
        .iter()
        .zip(attack["adversarial"]["routes"].as_array().unwrap())
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(attack["flipped_layers"], flips);
    assert!(harness.state().state.error.as_deref().is_none());

    // "Save" natively writes the checkpoint folder; its files, handed over as bytes the way a
    // browser's picker does, resume the run (run.json present) ...
    let dir = temp_dir("hook-checkpoint");
    harness.state_mut().state.train.save_dir = dir.display().to_string();
    harness.state_mut().run_hook(hook(r#"{"action":"save"}"#));
    wait_for(&mut harness, "saving", 60, |app| {
        app.state.train.saved_to.is_some()
    });
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let checkpoint: Vec<(String, Vec<u8>)> = [
        "config.json",
        "model.safetensors",
        "optimizer.safetensors",
        "run.json",
    ]
    .iter()
    .map(|n| (n.to_string(), read(n)))
    .collect();
    let mut fresh = self::harness();
    wait_for_demos(&mut fresh);
    fresh.state_mut().accept_files(checkpoint);
    wait_for(&mut fresh, "resuming from files", 60, |app| {
        app.state.models.len() == DEMOS.len() + 1
    });
    assert_eq!(fresh.state().state.train.step, 20);
    assert_eq!(fresh.state().state.train.evals.len(), 2);

    // ... a model pair as the web build downloads it joins the library under its stem, and
    // the same pair on disk opens by either file (as `advmoe eval --model` does) ...
    let stem = "advmoe-lab-moe-at-n2-step20";
    fresh.state_mut().accept_files(vec![
        (format!("{stem}.safetensors"), read("model.safetensors")),
        (format!("{stem}.json"), read("config.json")),
    ]);
    wait_for(&mut fresh, "opening the pair", 60, |app| {
        app.state.models.len() == DEMOS.len() + 2
    });
    assert_eq!(fresh.state().state.models[DEMOS.len() + 1].name, stem);
    std::fs::write(
        dir.join(format!("{stem}.safetensors")),
        read("model.safetensors"),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{stem}.json")), read("config.json")).unwrap();
    let (_, from_pair) =
        advmoe_engine::load_model_path(&dir.join(format!("{stem}.json")), &cpu()).unwrap();
    let (_, from_dir) = advmoe_engine::load_model_path(&dir, &cpu()).unwrap();
    let weights = |m: &advmoe_model::MoeNet| {
        advmoe_model::checkpoint::host_tensors(m)
            .wait()
            .unwrap()
            .into_iter()
            .map(|t| t.values)
            .collect::<Vec<_>>()
    };
    assert_eq!(weights(&from_pair), weights(&from_dir));

    // ... one file of a pair alone is refused, dataset files become the setup's data folder,
    // and an unknown file is named in the error.
    fresh.state_mut().accept_files(vec![(
        "lonely.safetensors".into(),
        read("model.safetensors"),
    )]);
    assert!(
        fresh
            .state()
            .state
            .error
            .as_deref()
            .unwrap()
            .contains("needs both files")
    );
    fresh.state_mut().accept_files(vec![
        ("t10k-labels-idx1-ubyte.gz".into(), vec![0x1f, 0x8b]),
        ("notes.txt".into(), b"hello".to_vec()),
    ]);
    assert_eq!(
        fresh.state().state.setup.config.data.data_dir.as_deref(),
        Some(advmoe_data::files::MEMORY_DIR)
    );
    assert!(
        fresh
            .state()
            .state
            .error
            .as_deref()
            .unwrap()
            .contains("notes.txt")
    );

    // An image folder's archive, picked or dropped, selects the image-folder kind and is read
    // from memory: the same bytes as the file on disk give the same dataset.
    let archive = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/cifar10-jpg.tar.gz");
    fresh.state_mut().accept_files(vec![(
        "cifar10-jpg.tar.gz".into(),
        std::fs::read(&archive).unwrap(),
    )]);
    let data = fresh.state().state.setup.config.data.clone();
    assert_eq!(data.kind, advmoe_core::DatasetKind::ImageFolder);
    // The picked files live in the setup (handed to the workers with each run), not in a
    // global store: without them the same spec finds nothing.
    assert!(advmoe_data::load(&data).is_err());
    let picked = advmoe_data::load_from(&data, &fresh.state().state.setup.data_files).unwrap();
    assert_eq!((picked.train.len(), picked.test.len()), (50_000, 10_000));
    assert_eq!(picked.test.class_names[3], "cat");
}

/// A training whose GPU device is lost (destroyed, as a driver reset or an unplugged GPU loses
/// it) is kept in memory at its last evaluation: the train view says so, and "Continue on the
/// CPU" carries it on from there to its end.
#[test]
fn a_lost_device_keeps_the_run_and_it_continues_on_the_cpu() {
    use advmoe_app::hooks::HookCommand;
    let hook = |json: &str| serde_json::from_str::<HookCommand>(json).expect(json);
    // A GPU device of its own (lavapipe in CI), registered with Burn as the app's: destroying it
    // is a real device loss, which nothing else in the suite shares.
    let compute = advmoe_model::readback::block_on(advmoe_app::gpu::acquire()).expect("a GPU");
    let mut harness = Harness::builder()
        .with_size([1100.0, 900.0])
        .build_eframe(move |cc| LabApp::with_device(compute, cc.egui_ctx.clone()));
    harness.state_mut().state.setup.config.model.width = 4;
    harness.state_mut().run_hook(hook(
        r#"{"action":"train","steps":100,"eval_every":10,"batch_size":8,"eval_size":32}"#,
    ));
    wait_for(
        &mut harness,
        "the copy made at the first evaluation",
        120,
        |app| app.state.train.kept_step == Some(10),
    );
    harness
        .state_mut()
        .run_hook(hook(r#"{"action":"lose_device"}"#));
    wait_for(&mut harness, "the failure", 60, |app| {
        app.state.train.lost.is_some()
    });
    let (reason, kept) = harness.state().state.train.lost.clone().unwrap();
    // Burn reports the loss on the next readback ("... the device failed: ... The device is
    // poisoned ... Destroyed").
    assert!(reason.contains("device"), "{reason}");
    // The newest copy: the first evaluation's, or a later one's if one came before the loss.
    assert!(
        kept >= 10 && kept % 10 == 0 && kept < 100,
        "kept at step {kept} ({reason})"
    );
    assert_eq!(
        harness.state().state.train.state,
        Some(advmoe_engine::RunState::Failed)
    );
    // What the user reads in the train view, and the button they press.
    harness.get_by_label_contains(&format!("Training failed: {reason}"));
    harness
        .get_by_label(&format!("Continue on the CPU from step {kept}"))
        .click();
    wait_for(&mut harness, "the continued run's end", 240, |app| {
        app.state.train.state == Some(advmoe_engine::RunState::Finished)
    });
    let train = &harness.state().state.train;
    assert_eq!(train.step, 100);
    assert!(train.lost.is_none());
    let steps: Vec<usize> = train.evals.iter().map(|e| e.step).collect();
    assert_eq!(steps, (1..=10).map(|i| i * 10).collect::<Vec<_>>());
    assert!(harness.state().state.error.is_none());
}

/// Saving, attacking and switching the attacked model while a training runs, for a bounded
/// number of rounds: nothing deadlocks (every wait has a deadline), no error is shown, the last
/// attack shown is the last one asked for, and the checkpoints saved mid-run load.
#[test]
fn saving_and_attacking_while_training_never_deadlock_or_mix_up_state() {
    use advmoe_app::hooks::HookCommand;
    let hook = |json: String| serde_json::from_str::<HookCommand>(&json).expect(&json);
    let mut harness = harness();
    wait_for_demos(&mut harness);
    let dir = temp_dir("stress-checkpoint");
    harness.state_mut().state.train.save_dir = dir.display().to_string();
    harness.state_mut().state.setup.config.model.width = 4;
    harness.state_mut().run_hook(hook(
        r#"{"action":"train","steps":120,"eval_every":10,"batch_size":8,"eval_size":32}"#.into(),
    ));
    wait_for(&mut harness, "the training's start", 60, |app| {
        app.state.train.step > 0
    });
    let ids: Vec<usize> = harness.state().state.models.iter().map(|m| m.id).collect();
    let mut last = (0, 0);
    for round in 0..24 {
        if round % 4 == 0 {
            harness
                .state_mut()
                .run_hook(hook(r#"{"action":"save"}"#.into()));
        }
        // Two attacks back to back: the second switches the model while the first may run.
        for k in 0..2 {
            let model = ids[(round + k) % ids.len()];
            let image = (3 * round + k) % 40;
            harness.state_mut().run_hook(hook(format!(
                r#"{{"action":"attack","model":{model},"image":{image},"eps_255":8,"steps":2}}"#
            )));
            last = (model, image);
        }
        for _ in 0..3 {
            harness.step();
        }
    }
    wait_for(&mut harness, "the training's end", 300, |app| {
        app.state.train.state == Some(advmoe_engine::RunState::Finished)
    });
    wait_for(&mut harness, "the attacks", 300, |app| {
        !app.state.analysis_busy() && app.state.attack.result.is_some()
    });
    let state = &harness.state().state;
    assert!(state.error.is_none(), "{:?}", state.error);
    assert_eq!(state.train.step, 120);
    let status = harness.state().status();
    let attack = &status["attack"];
    assert_eq!(attack["model"], last.0);
    assert_eq!(attack["source"], format!("test image {}", last.1));
    assert!(attack["linf"].as_f64().unwrap() <= attack["eps"].as_f64().unwrap() + 1e-6);
    // The last checkpoint saved mid-run is whole: it loads, and its history ends at its step.
    let source = advmoe_engine::CheckpointSource::Folder(dir.to_path_buf());
    let run =
        advmoe_engine::Run::from_checkpoint(&source, &advmoe_data::DataFiles::default(), &cpu())
            .unwrap();
    assert!(run.step_index() <= 120);
    assert!(run.history().iter().all(|e| e.step <= run.step_index()));
}

/// Resident memory of this process in MiB (Linux).
fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("Linux's /proc");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb / 1024.0
}

/// Growth of the last sample over the first sample at or after `from`, as a fraction.
fn growth(samples: &[[f64; 2]], from: f64) -> f64 {
    let start = samples
        .iter()
        .find(|s| s[0] >= from)
        .map_or(f64::NAN, |s| s[1]);
    let end = samples.last().map_or(f64::NAN, |s| s[1]);
    end / start - 1.0
}

/// Draw the soak's two memory curves with egui_plot on the wgpu renderer and save them.
fn plot_soak(path: &std::path::Path, training: &[[f64; 2]], attacks: &[[f64; 2]]) {
    let (training, attacks) = (training.to_vec(), attacks.to_vec());
    let mut harness = Harness::builder()
        .with_size([1000.0, 420.0])
        .renderer(egui_kittest::wgpu::WgpuTestRenderer::new())
        .build_ui(move |ui| {
            ui.columns(2, |columns| {
                for (ui, (title, x, points)) in columns.iter_mut().zip([
                    ("Training in the app", "minutes", &training),
                    ("Attack-lab re-runs", "attacks", &attacks),
                ]) {
                    ui.heading(title);
                    egui_plot::Plot::new(title)
                        .height(360.0)
                        .x_axis_label(x)
                        .y_axis_label("resident memory (MiB)")
                        .include_y(0.0)
                        .show(ui, |plot| {
                            plot.line(egui_plot::Line::new(
                                title,
                                egui_plot::PlotPoints::from(points.clone()),
                            ));
                        });
                }
            });
        });
    harness.run_steps(2);
    harness.render().unwrap().save(path).unwrap();
}

/// The soak: `ADVMOE_SOAK_MINUTES` (60 unless set) of training in the app (the quick-start
/// model, on the CPU backend, the train view shown), resident memory sampled every minute; then
/// `ADVMOE_SOAK_ATTACKS` (1,000) consecutive attack-lab runs (PGD-10 on a demo model), sampled
/// every 50. Writes `soak.json` and `soak.png` into `ADVMOE_SOAK_OUT` (`target/soak` unless set)
/// before it checks that memory grew under 5% after the first 5 minutes and after the first 100
/// attacks.
#[test]
#[ignore = "an hour: run it by name (docs/reliability.md)"]
fn soak_training_and_the_attack_lab() {
    use advmoe_app::hooks::HookCommand;
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let minutes = env("ADVMOE_SOAK_MINUTES", 60);
    let attacks = env("ADVMOE_SOAK_ATTACKS", 1000);
    let out = std::path::PathBuf::from(
        std::env::var("ADVMOE_SOAK_OUT").unwrap_or_else(|_| "../target/soak".into()),
    );
    std::fs::create_dir_all(&out).unwrap();
    let hook = |json: String| serde_json::from_str::<HookCommand>(&json).expect(&json);
    let mut harness = harness();
    wait_for_demos(&mut harness);
    let demo = harness.state().state.models[0].id;
    harness.state_mut().run_hook(hook(
        r#"{"action":"train","steps":100000000,"eval_every":100,"batch_size":32,"eval_size":200}"#
            .into(),
    ));
    let started = Instant::now();
    let mut training = vec![[0.0, resident_mib()]];
    while started.elapsed().as_secs() < minutes * 60 {
        harness.step();
        std::thread::sleep(Duration::from_millis(100));
        let minute = (started.elapsed().as_secs() / 60) as f64;
        if minute > training.last().unwrap()[0] {
            training.push([minute, resident_mib()]);
            eprintln!(
                "soak: minute {minute}, {:.1} MiB, step {}",
                training.last().unwrap()[1],
                harness.state().state.train.step
            );
        }
    }
    let steps = harness.state().state.train.step;
    harness
        .state_mut()
        .handle(advmoe_app::command::AppCommand::Stop);
    let mut attack_samples = Vec::new();
    for i in 0..attacks {
        harness.state_mut().run_hook(hook(format!(
            r#"{{"action":"attack","model":{demo},"image":{},"eps_255":8,"steps":10}}"#,
            i % 100
        )));
        wait_for(&mut harness, "an attack", 120, |app| {
            !app.state.analysis_busy() && app.state.attack.result.is_some()
        });
        if i % 50 == 0 || i + 1 == attacks {
            attack_samples.push([(i + 1) as f64, resident_mib()]);
        }
    }
    assert!(harness.state().state.error.is_none());
    let (train_growth, attack_growth) = (growth(&training, 5.0), growth(&attack_samples, 100.0));
    let json = serde_json::json!({
        "minutes": minutes,
        "steps": steps,
        "training_mib": training,
        "attacks": attacks,
        "attack_mib": attack_samples,
        "growth_after_5_minutes": train_growth,
        "growth_after_100_attacks": attack_growth,
    });
    std::fs::write(
        out.join("soak.json"),
        serde_json::to_vec_pretty(&json).unwrap(),
    )
    .unwrap();
    plot_soak(&out.join("soak.png"), &training, &attack_samples);
    eprintln!(
        "soak: {steps} steps in {minutes} min; growth {train_growth:.4} (training), {attack_growth:.4} (attacks)"
    );
    assert!(train_growth < 0.05, "training memory grew {train_growth}");
    assert!(
        attack_growth < 0.05,
        "attack-lab memory grew {attack_growth}"
    );
}
