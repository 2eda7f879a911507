//! Train: start / pause / resume / stop, live plots of the loss, clean and robust accuracy,
//! router robustness and expert load, progress, throughput and ETA; save and load checkpoints.

use advmoe_core::EvalReport;
use advmoe_engine::{RobustReport, RunState};
use eframe::egui;
use egui_plot::{Legend, Line, Plot, PlotPoints};

use crate::command::AppCommand;
use crate::platform;
use crate::views::series;
use crate::worker::DataLoad;

/// What the train view shows, filled from the worker's events.
#[derive(Debug, Default, Clone)]
pub struct TrainState {
    /// Steps of the current run.
    pub total_steps: usize,
    /// Steps done.
    pub step: usize,
    /// `[step, training loss]` of every step.
    pub losses: Vec<[f64; 2]>,
    /// Every evaluation, in order.
    pub evals: Vec<EvalReport>,
    /// `(step, report)` of every robustness measurement, in order.
    pub robust: Vec<(usize, RobustReport)>,
    /// Training throughput of the last chunk.
    pub steps_per_sec: f64,
    /// Steps taken in this session of the run (a resumed run counts from where it resumed)
    /// and the seconds they took, loss readbacks included, evaluations not: what
    /// `bench/browser.sh` compares with the native CLI.
    pub timed_steps: usize,
    /// See [`TrainState::timed_steps`].
    pub timed_secs: f64,
    /// The run's state; `None` before the first run.
    pub state: Option<RunState>,
    /// Where "Save checkpoint" writes.
    pub save_dir: String,
    /// The folder the last checkpoint went to, if any since the run changed.
    pub saved_to: Option<String>,
    /// Steps were taken since the last checkpoint was saved.
    pub unsaved: bool,
    /// How the current run's dataset loaded.
    pub data: Option<DataLoad>,
    /// Recoveries from NaN or infinite losses, in words, in order.
    pub recoveries: Vec<String>,
    /// Training failed (a lost GPU device, say): why, and the step of the copy kept in memory.
    pub lost: Option<(String, usize)>,
    /// The step of the newest copy of the run kept in memory.
    pub kept_step: Option<usize>,
}

impl TrainState {
    /// Forget the previous run.
    pub fn reset(&mut self, total_steps: usize) {
        *self = Self {
            total_steps,
            state: Some(RunState::Running),
            save_dir: std::mem::take(&mut self.save_dir),
            ..Self::default()
        };
    }
}

/// Draw the train view.
pub fn train_ui(ui: &mut egui::Ui, state: &mut TrainState) -> Vec<AppCommand> {
    let mut action = None;
    ui.heading("Train");
    ui.horizontal(|ui| {
        let label = ui.label("Checkpoint folder");
        ui.add(egui::TextEdit::singleline(&mut state.save_dir).hint_text("runs/lab"))
            .labelled_by(label.id);
        let folder = !state.save_dir.trim().is_empty();
        let can_save = folder && state.state.is_some_and(|s| s != RunState::Failed);
        if ui
            .add_enabled(can_save, egui::Button::new("Save checkpoint"))
            .clicked()
        {
            action = Some(AppCommand::SaveCheckpoint);
        }
        if ui
            .add_enabled(folder, egui::Button::new("Load checkpoint"))
            .on_hover_text("Load a run checkpoint from the folder, paused; Resume continues it")
            .clicked()
        {
            action = Some(AppCommand::LoadCheckpoint);
        }
        if let Some(dir) = &state.saved_to {
            ui.label(format!("Saved to {dir}"));
        }
    });
    let Some(run_state) = state.state else {
        ui.label("No run yet: choose a setup and press \"Start training\", or load a checkpoint.");
        return action.into_iter().collect();
    };
    if let Some((reason, kept_step)) = &state.lost {
        ui.colored_label(
            ui.visuals().error_fg_color,
            format!(
                "Training failed: {reason}. A copy of the run at step {kept_step} (its last \
                 evaluation) is kept in memory."
            ),
        );
        ui.horizontal(|ui| {
            if ui
                .button(format!("Continue on the CPU from step {kept_step}"))
                .clicked()
            {
                action = Some(AppCommand::Recover { on_cpu: true });
            }
            let gpu = if platform::WEB {
                "Continue on a new WebGPU device"
            } else {
                "Try the same device again"
            };
            if ui.button(format!("{gpu} from step {kept_step}")).clicked() {
                action = Some(AppCommand::Recover { on_cpu: false });
            }
        });
    }
    for recovery in &state.recoveries {
        ui.colored_label(ui.visuals().warn_fg_color, format!("Recovered: {recovery}"));
    }
    ui.horizontal(|ui| {
        let running = run_state == RunState::Running;
        let paused = run_state == RunState::Paused;
        if ui
            .add_enabled(running, egui::Button::new("Pause"))
            .clicked()
        {
            action = Some(AppCommand::Pause);
        }
        if ui
            .add_enabled(paused, egui::Button::new("Resume"))
            .clicked()
        {
            action = Some(AppCommand::Resume);
        }
        if ui
            .add_enabled(running || paused, egui::Button::new("Stop"))
            .clicked()
        {
            action = Some(AppCommand::Stop);
        }
        ui.label(format!("State: {run_state:?}"));
    });
    let fraction = state.step as f32 / state.total_steps.max(1) as f32;
    let remaining = state.total_steps.saturating_sub(state.step) as f64;
    let eta = if state.steps_per_sec > 0.0 && run_state == RunState::Running {
        format!(", ETA {:.0} s", remaining / state.steps_per_sec)
    } else {
        String::new()
    };
    ui.add(egui::ProgressBar::new(fraction).text(format!(
        "step {} / {} · {:.2} steps/s{eta}",
        state.step, state.total_steps, state.steps_per_sec
    )));
    if let Some(data) = state.data {
        ui.label(format!(
            "Dataset: {} images, read and decoded in {:.2} s",
            data.images, data.secs
        ));
    }
    if let Some(last) = state.evals.last() {
        ui.label(format!(
            "Clean accuracy: {:.1}% (step {}, {} test images)",
            100.0 * last.clean_acc,
            last.step,
            last.images
        ));
    }
    let height = (ui.available_height() / 3.0 - 12.0).max(90.0);
    ui.label("Training loss");
    Plot::new("loss plot")
        .height(height)
        .legend(Legend::default())
        .show(ui, |plot| {
            plot.line(Line::new("loss", PlotPoints::from(state.losses.clone())));
        });
    if let Some((step, r)) = state.robust.last() {
        let router = r.router_robustness.map_or(String::new(), |v| {
            format!(", router robustness {:.1}%", 100.0 * v)
        });
        ui.label(format!(
            "Robust accuracy (PGD-10, 8/255): {:.1}%{router} (step {step}, {} test images)",
            100.0 * r.robust_acc,
            r.images
        ));
    }
    ui.label("Accuracy and router robustness (%)");
    Plot::new("accuracy plot")
        .height(height)
        .include_y(0.0)
        .include_y(100.0)
        .legend(Legend::default())
        .show(ui, |plot| {
            let clean: Vec<[f64; 2]> = state
                .evals
                .iter()
                .map(|e| [e.step as f64, 100.0 * e.clean_acc])
                .collect();
            let robust: Vec<[f64; 2]> = state
                .robust
                .iter()
                .map(|(step, r)| [*step as f64, 100.0 * r.robust_acc])
                .collect();
            let router: Vec<[f64; 2]> = state
                .robust
                .iter()
                .filter_map(|(step, r)| Some([*step as f64, 100.0 * r.router_robustness?]))
                .collect();
            for (i, (name, points)) in [
                ("clean accuracy (SA)", clean),
                ("robust accuracy (RA)", robust),
                ("router robustness", router),
            ]
            .into_iter()
            .enumerate()
            {
                series(plot, name, points, i);
            }
        });
    ui.label("Expert load of the first MoE layer (%)");
    Plot::new("load plot")
        .height(height)
        .include_y(0.0)
        .include_y(100.0)
        .legend(Legend::default())
        .show(ui, |plot| {
            let experts = state
                .evals
                .last()
                .and_then(|e| e.expert_load.first())
                .map_or(0, Vec::len);
            for expert in 0..experts {
                let points: Vec<[f64; 2]> = state
                    .evals
                    .iter()
                    .filter_map(|e| {
                        let load = e.expert_load.first()?.get(expert)?;
                        Some([e.step as f64, 100.0 * load])
                    })
                    .collect();
                series(plot, &format!("expert {expert}"), points, expert);
            }
        });
    action.into_iter().collect()
}
