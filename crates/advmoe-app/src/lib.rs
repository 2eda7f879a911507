//! AdvMoE Lab's application: eframe views over the training engine.
//!
//! One GPU device serves drawing and training ([`gpu`]). Two named worker threads do all Burn
//! work, so a frame never waits on the GPU: the training worker ([`worker`]) owns the current
//! run, and the analysis worker ([`analysis`]) owns the model library (bundled demo models,
//! opened folders, models training produced) and runs attacks, the routing atlas and the
//! report's measurements. Views live in [`views`], one module each; platform glue stays in
//! `main.rs` (and the web entry point, TODO(#6)).

pub mod analysis;
pub mod demo;
pub mod gpu;
pub mod picture;
pub mod views;
pub mod worker;

use eframe::egui;

use crate::analysis::{Analysis, ModelInfo, Reply, Request, spawn_analysis};
use crate::gpu::ComputeDevice;
use crate::views::atlas::AtlasState;
use crate::views::attack::AttackState;
use crate::views::report::{ReportAction, ReportState};
use crate::views::setup::{SetupAction, SetupState};
use crate::views::train::{TrainAction, TrainState};
use crate::worker::{Command, Event, Worker, spawn_training};

/// The views, as tabs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Choose what to train.
    Setup,
    /// Watch it train.
    Train,
    /// Attack one image.
    Attack,
    /// Which classes go to which expert.
    Atlas,
    /// Models side by side.
    Report,
}

impl Tab {
    const ALL: [(Tab, &'static str); 5] = [
        (Tab::Setup, "Setup"),
        (Tab::Train, "Train"),
        (Tab::Attack, "Attack lab"),
        (Tab::Atlas, "Routing atlas"),
        (Tab::Report, "Report"),
    ];
}

/// The application.
pub struct LabApp {
    compute: ComputeDevice,
    worker: Option<Worker>,
    analysis: Option<Analysis>,
    tab: Tab,
    setup: SetupState,
    train: TrainState,
    attack: AttackState,
    atlas: AtlasState,
    report: ReportState,
    /// The model library, as the analysis worker reported it.
    models: Vec<ModelInfo>,
    /// Requests sent to the analysis worker.
    requests_sent: u64,
    /// Requests it reported finished.
    requests_done: u64,
    /// The last error, shown until dismissed.
    error: Option<String>,
    /// The window was asked to close while a trained model was unsaved.
    confirm_close: bool,
    /// The user chose to close without saving.
    allow_close: bool,
    /// CPU seconds of recent frames, for the status line and [`LabApp::frame_ms`].
    frame_times: Vec<f32>,
    /// Seconds between recent consecutive frames drawn back to back (input or animation
    /// pending), for [`LabApp::frame_interval_ms`].
    frame_intervals: Vec<f32>,
}

impl LabApp {
    /// Build the app in eframe's creation context: register eframe's wgpu device with Burn (or
    /// fall back to the CPU), start the workers and load the demo models.
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
        let mut errors = Vec::new();
        errors.extend(compute.fallback_reason.clone());
        let wake = {
            let ctx = ctx.clone();
            move || ctx.request_repaint()
        };
        let worker = spawn_training(compute.device.clone(), wake.clone())
            .map_err(|e| errors.push(format!("could not start the training thread: {e}")))
            .ok();
        let analysis = spawn_analysis(compute.device.clone(), wake)
            .map_err(|e| errors.push(format!("could not start the analysis thread: {e}")))
            .ok();
        let mut app = Self {
            compute,
            worker,
            analysis,
            tab: Tab::Setup,
            setup: SetupState::default(),
            train: TrainState::default(),
            attack: AttackState::default(),
            atlas: AtlasState::default(),
            report: ReportState::default(),
            models: Vec::new(),
            requests_sent: 0,
            requests_done: 0,
            error: (!errors.is_empty()).then(|| errors.join("; ")),
            confirm_close: false,
            allow_close: false,
            frame_times: Vec::new(),
            frame_intervals: Vec::new(),
        };
        app.ask(Request::LoadDemos);
        app
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

    /// The attack lab's state (tests read its results).
    pub fn attack_state(&self) -> &AttackState {
        &self.attack
    }

    /// The attack lab's state, to set an image or a model.
    pub fn attack_state_mut(&mut self) -> &mut AttackState {
        &mut self.attack
    }

    /// The routing atlas's state.
    pub fn atlas_state(&self) -> &AtlasState {
        &self.atlas
    }

    /// The routing atlas's state, to set how many images it counts.
    pub fn atlas_state_mut(&mut self) -> &mut AtlasState {
        &mut self.atlas
    }

    /// The report's state.
    pub fn report_state(&self) -> &ReportState {
        &self.report
    }

    /// The report's state, to set its options.
    pub fn report_state_mut(&mut self) -> &mut ReportState {
        &mut self.report
    }

    /// The model library.
    pub fn models(&self) -> &[ModelInfo] {
        &self.models
    }

    /// The close dialog is showing.
    pub fn confirming_close(&self) -> bool {
        self.confirm_close
    }

    /// The current error message, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Whether the analysis worker has work in flight.
    pub fn analysis_busy(&self) -> bool {
        self.requests_done < self.requests_sent
    }

    /// Where training runs, as shown in the title bar.
    pub fn compute_label(&self) -> &str {
        &self.compute.label
    }

    /// Median CPU time of the last 120 frames (building and tessellating the UI, as eframe
    /// measures it), in milliseconds.
    pub fn frame_ms(&self) -> Option<f32> {
        median_ms(&self.frame_times)
    }

    /// Median wall time between the last 120 frames drawn back to back (while the pointer moves
    /// or something animates), in milliseconds: the frame time the user sees, GPU work
    /// included.
    pub fn frame_interval_ms(&self) -> Option<f32> {
        median_ms(&self.frame_intervals)
    }

    /// A trained model exists that was never saved since it last changed.
    pub fn has_unsaved_model(&self) -> bool {
        self.train.unsaved
    }

    fn send(&mut self, command: Command) {
        let delivered = self.worker.as_ref().is_some_and(|w| w.send(command));
        if !delivered {
            self.error = Some("the training thread is not running".into());
        }
    }

    fn ask(&mut self, request: Request) {
        let delivered = self.analysis.as_ref().is_some_and(|a| a.send(request));
        if delivered {
            self.requests_sent += 1;
        } else {
            self.error = Some("the analysis thread is not running".into());
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::Started {
                total_steps,
                step,
                history,
                ..
            } => {
                self.train.reset(total_steps);
                self.train.step = step;
                self.train.evals = history;
            }
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
                self.train.unsaved = true;
            }
            Event::Eval(report) => self.train.evals.push(report),
            Event::Robust { step, report } => self.train.robust.push((step, *report)),
            Event::State(state) => self.train.state = Some(state),
            Event::Saved(dir) => {
                self.train.saved_to = Some(dir.display().to_string());
                self.train.unsaved = false;
            }
            Event::Trained(model) => self.ask(Request::Adopt(model)),
            Event::Error(message) => self.error = Some(message),
        }
    }

    fn reply(&mut self, ctx: &egui::Context, reply: Reply) {
        match reply {
            Reply::Loaded(info) => {
                let id = info.id;
                let trained = info.origin == analysis::ORIGIN_TRAINED;
                self.models.push(*info);
                if trained {
                    // The model just trained is what the class wants to attack next.
                    self.attack.model = Some(id);
                }
            }
            Reply::Attacked(outcome) => self.attack.accept(ctx, *outcome),
            Reply::Atlas(atlas) => self.atlas.accept(ctx, *atlas),
            Reply::Evaluated { model, row } => {
                self.report.measured.insert(model, *row);
                self.report.progress = None;
            }
            Reply::Progress { what, done, of } => self.report.progress = Some((what, done, of)),
            Reply::Idle(done) => {
                self.requests_done = done;
                if !self.analysis_busy() {
                    self.attack.busy = false;
                    self.atlas.busy = false;
                    self.report.progress = None;
                }
            }
            Reply::Error(message) => self.error = Some(message),
        }
    }

    /// Files dropped on the window: images go to the attack lab, model folders (or a file in
    /// one) to the library.
    fn take_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        for file in dropped {
            let path = file.path().to_path_buf();
            let ext = path
                .extension()
                .map(|e| e.to_string_lossy().to_lowercase())
                .unwrap_or_default();
            if matches!(ext.as_str(), "png" | "jpg" | "jpeg") {
                match file.bytes() {
                    Ok(bytes) => {
                        let name = path
                            .file_name()
                            .map_or_else(|| "image".into(), |n| n.to_string_lossy().into());
                        self.attack.set_own(name, bytes);
                        self.tab = Tab::Attack;
                        self.run_attack();
                    }
                    Err(e) => self.error = Some(format!("reading {}: {e}", path.display())),
                }
            } else if path.is_dir() {
                self.ask(Request::Open(path));
            } else if let Some(parent) = path
                .parent()
                .filter(|_| matches!(ext.as_str(), "json" | "safetensors"))
            {
                self.ask(Request::Open(parent.to_path_buf()));
            } else {
                self.error = Some(format!(
                    "{} is neither a PNG/JPEG image nor a model folder",
                    path.display()
                ));
            }
        }
    }

    fn run_attack(&mut self) {
        match self.attack.request(&self.models) {
            Ok(request) => self.ask(request),
            Err(message) => self.error = Some(message),
        }
    }

    /// The lesson "attack the router only": the bundled MoE trained with vanilla MoE AT, its
    /// routers attacked with PGD-10 at 8/255.
    fn router_only_lesson(&mut self) {
        let Some(model) = self.models.iter().find(|m| {
            m.origin == analysis::ORIGIN_DEMO
                && m.config.train.method == advmoe_core::MethodKind::MoeAt
        }) else {
            self.error = Some("the demo models are not loaded yet".into());
            return;
        };
        self.attack.model = Some(model.id);
        self.attack.target = advmoe_core::AttackTarget::Router;
        self.attack.kind = advmoe_core::AttackKind::Pgd;
        self.attack.eps_255 = 8.0;
        self.attack.steps = 10;
        self.attack.use_own = false;
        self.tab = Tab::Attack;
        self.run_attack();
    }

    fn close_dialog(&mut self, ctx: &egui::Context) {
        if ctx.input(|i| i.viewport().close_requested())
            && self.has_unsaved_model()
            && !self.allow_close
        {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.confirm_close = true;
        }
    }

    fn close_dialog_ui(&mut self, ui: &mut egui::Ui) {
        if !self.confirm_close {
            return;
        }
        egui::Modal::new(egui::Id::unique("confirm close")).show(ui.ctx(), |ui| {
            ui.heading("Discard the trained model?");
            ui.label("The model trained in this session has not been saved since its last step.");
            ui.horizontal(|ui| {
                if ui.button("Save first").clicked() {
                    self.confirm_close = false;
                    self.tab = Tab::Train;
                }
                if ui.button("Quit without saving").clicked() {
                    self.allow_close = true;
                    self.confirm_close = false;
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
                if ui.button("Cancel").clicked() {
                    self.confirm_close = false;
                }
            });
        });
    }
}

impl eframe::App for LabApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        let events = self.worker.as_ref().map(Worker::drain).unwrap_or_default();
        for event in events {
            self.apply(event);
        }
        let replies = self
            .analysis
            .as_ref()
            .map(Analysis::drain)
            .unwrap_or_default();
        for reply in replies {
            self.reply(ctx, reply);
        }
        self.take_dropped_files(ctx);
        self.close_dialog(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        // eframe's CPU time of the previous frame: building the UI and tessellating it.
        if let Some(secs) = frame.info().cpu_usage {
            push_recent(&mut self.frame_times, secs);
        }
        // Frames less than 0.25 s apart were drawn back to back; longer gaps are idle time.
        let dt = ui.input(|i| i.unstable_dt);
        if dt < 0.25 {
            push_recent(&mut self.frame_intervals, dt);
        }
        let cpu_ms = self.frame_ms();
        let interval_ms = self.frame_interval_ms();
        egui::Panel::top("tabs").show(ui, |ui| {
            ui.horizontal(|ui| {
                for (tab, name) in Tab::ALL {
                    ui.selectable_value(&mut self.tab, tab, name);
                }
                ui.separator();
                ui.label(&self.compute.label);
                if let (Some(cpu), Some(interval)) = (cpu_ms, interval_ms) {
                    ui.label(format!("· frame {interval:.1} ms (UI CPU {cpu:.1} ms)"));
                }
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
        self.close_dialog_ui(ui);
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| match self.tab {
                Tab::Setup => {
                    let busy = matches!(
                        self.train.state,
                        Some(advmoe_engine::RunState::Running | advmoe_engine::RunState::Paused)
                    );
                    match views::setup::setup_ui(ui, &mut self.setup, busy, &self.compute.label) {
                        Some(SetupAction::Start) => {
                            let config = Box::new(self.setup.config.clone());
                            self.send(Command::Start(config, self.setup.run_options()));
                            self.tab = Tab::Train;
                        }
                        Some(SetupAction::RouterOnlyLesson) => self.router_only_lesson(),
                        None => {}
                    }
                }
                Tab::Train => {
                    if let Some(action) = views::train::train_ui(ui, &mut self.train) {
                        self.send(match action {
                            TrainAction::Pause => Command::Pause,
                            TrainAction::Resume => Command::Resume,
                            TrainAction::Stop => Command::Stop,
                            TrainAction::Save => Command::Save(self.train.save_dir.trim().into()),
                            TrainAction::Load => Command::Load(
                                self.train.save_dir.trim().into(),
                                self.setup.run_options(),
                            ),
                        });
                    }
                }
                Tab::Attack => {
                    let (run, error) = views::attack::attack_ui(ui, &mut self.attack, &self.models);
                    if let Some(error) = error {
                        self.error = Some(error);
                    }
                    if run {
                        self.run_attack();
                    }
                }
                Tab::Atlas => {
                    if let Some(model) = views::atlas::atlas_ui(ui, &mut self.atlas, &self.models) {
                        let limit = self.atlas.limit;
                        self.ask(Request::Atlas { model, limit });
                    }
                }
                Tab::Report => {
                    let (actions, error) =
                        views::report::report_ui(ui, &mut self.report, &self.models);
                    if let Some(error) = error {
                        self.error = Some(error);
                    }
                    for ReportAction::Request(request) in actions {
                        self.ask(request);
                    }
                }
            });
        });
    }
}

/// Keep the last 120 samples.
fn push_recent(samples: &mut Vec<f32>, value: f32) {
    samples.push(value);
    if samples.len() > 120 {
        samples.remove(0);
    }
}

/// Median of seconds, in milliseconds.
fn median_ms(samples: &[f32]) -> Option<f32> {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f32::total_cmp);
    sorted.get(sorted.len() / 2).map(|s| 1000.0 * s)
}
