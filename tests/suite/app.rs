//! The desktop app driven through its accessible labels with egui_kittest: presets, a short
//! training started from the setup view, the metrics the train view shows, and a checkpoint
//! saved from it.

use std::time::{Duration, Instant};

use advmoe_app::LabApp;
use advmoe_app::gpu::ComputeDevice;
use advmoe_core::MethodKind;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable as _;

use crate::common::cpu;

fn harness() -> Harness<'static, LabApp> {
    Harness::builder()
        .with_size([1100.0, 900.0])
        .build_eframe(|cc| {
            let compute = ComputeDevice {
                device: cpu(),
                label: "CPU (test)".into(),
                fallback_reason: None,
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
        harness.state().setup().config.train.method,
        MethodKind::Advmoe
    );
    harness
        .get_by_label("Dense TRADES baseline (same cost)")
        .click();
    harness.run_steps(2);
    let config = &harness.state().setup().config;
    assert_eq!(config.train.method, MethodKind::Trades);
    assert_eq!(config.model.num_experts, 1);
}

/// Set a tiny run, press "Start training" and wait until both evaluations arrived.
fn train_tiny(harness: &mut Harness<'static, LabApp>) {
    {
        let config = &mut harness.state_mut().setup_mut().config;
        config.model.width = 4;
        config.train.total_steps = 20;
        config.train.batch_size = 8;
        config.train.eval_every = 10;
        config.train.eval_size = 50;
        config.data.synthetic_train_size = 200;
        config.data.synthetic_test_size = 50;
    }
    harness.run_steps(2);
    harness.get_by_label("Start training").click();
    let deadline = Instant::now() + Duration::from_secs(300);
    while harness.state().train_state().evals.len() < 2 {
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
    train_tiny(&mut harness);
    let state = harness.state().train_state().clone();
    assert_eq!(state.step, 20);
    assert_eq!(state.losses.len(), 20);
    assert!(state.losses.iter().all(|[_, loss]| loss.is_finite()));
    assert_eq!(
        state.evals.iter().map(|e| e.step).collect::<Vec<_>>(),
        [10, 20]
    );
    // The train view (opened by the start button) shows the figures it was sent.
    harness.get_by_label_contains("step 20 / 20");
    let accuracy = format!("Clean accuracy: {:.1}%", 100.0 * state.evals[1].clean_acc);
    harness.get_by_label_contains(&accuracy);

    // Save a checkpoint through the train view; the CLI's files appear in the folder.
    let dir = std::env::temp_dir().join(format!("advmoe-app-test-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    harness.get_by_label("Checkpoint folder").focus();
    harness.run_steps(1);
    harness
        .get_by_label("Checkpoint folder")
        .type_text(dir.to_str().unwrap());
    harness.run_steps(2);
    harness.get_by_label("Save checkpoint").click();
    let deadline = Instant::now() + Duration::from_secs(60);
    while harness.state().train_state().saved_to.is_none() {
        assert!(
            Instant::now() < deadline,
            "the checkpoint was not saved in 60 s"
        );
        harness.step();
        std::thread::sleep(Duration::from_millis(20));
    }
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
    std::fs::remove_dir_all(&dir).ok();
}

/// With a wgpu renderer (lavapipe in CI) the app registers the renderer's own device with Burn
/// and trains on it: one device for drawing and training.
#[test]
fn the_app_trains_on_the_device_it_draws_with() {
    let mut setup = egui_kittest::wgpu::default_wgpu_setup();
    if let eframe::egui_wgpu::WgpuSetup::CreateNew(create) = &mut setup {
        create.device_descriptor = advmoe_app::gpu::device_descriptor();
    }
    let mut harness = Harness::builder()
        .with_size([1100.0, 900.0])
        .renderer(egui_kittest::wgpu::WgpuTestRenderer::from_setup(setup))
        .build_eframe(|cc| LabApp::new(cc));
    let label = harness.state().compute_label().to_owned();
    assert!(
        label.starts_with("GPU: "),
        "not on the renderer's device: {label}"
    );
    train_tiny(&mut harness);
    let state = harness.state().train_state();
    assert_eq!(state.step, 20);
    assert!(state.losses.iter().all(|[_, loss]| loss.is_finite()));
    harness.get_by_label_contains("step 20 / 20");
}
