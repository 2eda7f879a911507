//! AdvMoE Lab's application: eframe views over the training engine.
//!
//! One GPU device serves drawing and training ([`gpu`]); training runs on a named worker
//! thread ([`worker`]) that the views talk to through commands and events, so a running
//! training survives switching views and never blocks a frame. Views live in [`views`], one
//! module each; platform glue stays in `main.rs` (and the web entry point, TODO(#6)).

pub mod gpu;
pub mod views;
pub mod worker;

use eframe::egui;

use crate::gpu::ComputeDevice;
use crate::views::setup::SetupState;
use crate::views::train::{TrainAction, TrainState};
use crate::worker::{Command, Event, Worker};

/// The views, as tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Choose what to train.
    Setup,
    /// Watch it train.
    Train,
}

/// The application.
pub struct LabApp {
    compute: ComputeDevice,
    worker: Option<Worker>,
    tab: Tab,
    setup: SetupState,
    train: TrainState,
    /// The last error, shown until dismissed.
    error: Option<String>,
}

impl LabApp {
    /// Build the app in eframe's creation context: register eframe's wgpu device with Burn (or
    /// fall back to the CPU) and start the worker.
    pub fn new(cc: &eframe::CreationContext<'_>) -> Self {
        let compute = gpu::compute_device(cc.wgpu_render_state.as_ref());
        // Said once at start, so a terminal shows where training will run and why.
        eprintln!("advmoe-lab: training on {}", compute.label);
        if let Some(reason) = &compute.fallback_reason {
            eprintln!("advmoe-lab: {reason}");
        }
        Self::with_device(compute, cc.egui_ctx.clone())
    }

    /// Build the app on a given device (tests use this with a device of their choosing).
    pub fn with_device(compute: ComputeDevice, ctx: egui::Context) -> Self {
        let (worker, error) = match Worker::spawn(compute.device.clone(), move || {
            ctx.request_repaint();
        }) {
            Ok(worker) => (Some(worker), compute.fallback_reason.clone()),
            Err(e) => (
                None,
                Some(format!("could not start the training thread: {e}")),
            ),
        };
        Self {
            compute,
            worker,
            tab: Tab::Setup,
            setup: SetupState::default(),
            train: TrainState::default(),
            error,
        }
    }

    /// What the train view shows (for tests and snapshots).
    pub fn train_state(&self) -> &TrainState {
        &self.train
    }

    /// The setup being edited (tests set a tiny configuration through it).
    pub fn setup_mut(&mut self) -> &mut SetupState {
        &mut self.setup
    }

    /// The setup being edited.
    pub fn setup(&self) -> &SetupState {
        &self.setup
    }

    /// Where training runs, as shown in the title bar.
    pub fn compute_label(&self) -> &str {
        &self.compute.label
    }

    fn send(&mut self, command: Command) {
        let delivered = self.worker.as_ref().is_some_and(|w| w.send(command));
        if !delivered {
            self.error = Some("the training thread is not running".into());
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Started { total_steps, .. } => self.train.reset(total_steps),
            Event::Progress {
                step,
                losses,
                steps_per_sec,
            } => {
                let first = step + 1 - losses.len().min(step + 1);
                for (i, loss) in losses.into_iter().enumerate() {
                    self.train.losses.push([(first + i) as f64, loss]);
                }
                self.train.step = step;
                self.train.steps_per_sec = steps_per_sec;
            }
            Event::Eval(report) => self.train.evals.push(report),
            Event::State(state) => self.train.state = Some(state),
            Event::Saved(dir) => self.train.saved_to = Some(dir.display().to_string()),
            Event::Error(message) => self.error = Some(message),
        }
    }
}

impl eframe::App for LabApp {
    fn logic(&mut self, _ctx: &egui::Context, _frame: &mut eframe::Frame) {
        let events = self.worker.as_ref().map(Worker::drain).unwrap_or_default();
        for event in events {
            self.apply(event);
        }
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        egui::Panel::top("tabs").show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.selectable_value(&mut self.tab, Tab::Setup, "Setup");
                ui.selectable_value(&mut self.tab, Tab::Train, "Train");
                ui.separator();
                ui.label(&self.compute.label);
            });
        });
        if let Some(message) = self.error.clone() {
            egui::Panel::bottom("error").show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.colored_label(ui.visuals().error_fg_color, &message);
                    if ui.button("Dismiss").clicked() {
                        self.error = None;
                    }
                });
            });
        }
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| match self.tab {
                Tab::Setup => {
                    let busy = matches!(
                        self.train.state,
                        Some(advmoe_engine::RunState::Running | advmoe_engine::RunState::Paused)
                    );
                    if views::setup::setup_ui(ui, &mut self.setup, busy) {
                        let config = Box::new(self.setup.config.clone());
                        self.send(Command::Start(config));
                        self.tab = Tab::Train;
                    }
                }
                Tab::Train => {
                    if let Some(action) = views::train::train_ui(ui, &mut self.train) {
                        self.send(match action {
                            TrainAction::Pause => Command::Pause,
                            TrainAction::Resume => Command::Resume,
                            TrainAction::Stop => Command::Stop,
                            TrainAction::Save => Command::Save(self.train.save_dir.trim().into()),
                        });
                    }
                }
            });
        });
    }
}
