//! The desktop app driven through its accessible labels with egui_kittest: presets, a short
//! training started from the setup view, and the metrics the train view shows.

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

#[test]
fn a_training_started_from_the_setup_view_reports_progress_and_accuracy() {
    let mut harness = harness();
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
}
