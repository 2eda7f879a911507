//! AdvMoE Lab's application: eframe views over the training engine.
//!
//! Natively one GPU device serves drawing and training ([`gpu`]). Two workers do all Burn
//! work, so a frame never waits on the GPU: the training worker ([`worker`]) owns the current
//! run, and the analysis worker ([`analysis`]) owns the model library (bundled demo models,
//! opened models, models training produced) and runs attacks, the routing atlas and the
//! report's measurements. Natively each is a thread; in the browser each is a cooperative
//! task. Views live in [`views`], one module each; files in and out in [`files`]; the test
//! hooks in [`hooks`]; browser glue in `web` (wasm32 only); the native entry point is
//! `main.rs`.

pub mod analysis;
pub mod demo;
pub mod files;
pub mod gpu;
pub mod hooks;
pub mod picture;
pub mod views;
#[cfg(target_arch = "wasm32")]
pub mod web;
pub mod worker;

use std::path::PathBuf;

use eframe::egui;

use crate::analysis::{Analysis, ModelInfo, Reply, Request, spawn_analysis};
use crate::files::FileKind;
use crate::gpu::ComputeDevice;
use crate::hooks::HookCommand;
use crate::views::atlas::AtlasState;
use crate::views::attack::AttackState;
use crate::views::report::{ReportAction, ReportState};
use crate::views::setup::{SetupAction, SetupState};
use crate::views::train::{TrainAction, TrainState};
use crate::worker::{CheckpointSource, Command, Event, Files, SaveTarget, Worker, spawn_training};

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
    ctx: egui::Context,
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
    /// Frames drawn so far.
    frames: u64,
    /// When the first frame was drawn, in milliseconds since the page started loading (web).
    first_frame_ms: Option<f64>,
}

impl LabApp {
    /// Build the app in eframe's creation context: register eframe's wgpu device with Burn (or
    /// fall back to the CPU), start the workers and load the demo models.
    #[cfg(not(target_arch = "wasm32"))]
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
            ctx,
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
            frames: 0,
            first_frame_ms: None,
        };
        app.ask(Request::LoadDemos);
        app
    }

    /// What the train view shows (for tests and snapshots).
    pub fn train_state(&self) -> &TrainState {
        &self.train
    }

    /// What the train view shows, to set its checkpoint folder.
    pub fn train_state_mut(&mut self) -> &mut TrainState {
        &mut self.train
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
                data,
                ..
            } => {
                self.train.reset(total_steps);
                self.train.step = step;
                self.train.evals = history;
                self.train.data = Some(data);
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
            Event::Saved(place) => {
                self.train.saved_to = Some(place);
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

    /// Files dropped on the window: images go to the attack lab, models (a folder, or a file
    /// of one, or a downloaded `.safetensors` + `.json` pair) to the library. On the web the
    /// browser reads them first and they arrive through [`files::take_incoming`].
    fn take_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        if dropped.is_empty() {
            return;
        }
        #[cfg(target_arch = "wasm32")]
        web::read_dropped(dropped, ctx.clone());
        #[cfg(not(target_arch = "wasm32"))]
        for file in dropped {
            let path = file.path().to_path_buf();
            match files::classify(&path.to_string_lossy()) {
                FileKind::Image => match file.bytes() {
                    Ok(bytes) => {
                        let name = path
                            .file_name()
                            .map_or_else(|| "image".into(), |n| n.to_string_lossy().into());
                        self.accept_files(vec![(name, bytes)]);
                    }
                    Err(e) => self.error = Some(format!("reading {}: {e}", path.display())),
                },
                FileKind::ModelConfig | FileKind::ModelWeights => self.ask(Request::Open(path)),
                _ if path.is_dir() => self.ask(Request::Open(path)),
                _ => {
                    self.error = Some(format!(
                        "{} is neither a PNG/JPEG image nor a model",
                        path.display()
                    ));
                }
            }
        }
    }

    /// Files that arrived as bytes (the browser's picker or a drop; a dropped image natively):
    /// a checkpoint's files resume its run, model pairs join the library, dataset files become
    /// the setup's data folder, an image goes to the attack lab.
    pub fn accept_files(&mut self, files: Files) {
        let names = |kind: FileKind| -> Vec<&String> {
            files
                .iter()
                .filter(|(n, _)| files::classify(n) == kind)
                .map(|(n, _)| n)
                .collect()
        };
        let unknown: Vec<String> = names(FileKind::Unknown).into_iter().cloned().collect();
        if files.iter().any(|(n, _)| n == "run.json") {
            self.send(Command::Load(
                CheckpointSource::Files(files.clone()),
                self.setup.run_options(),
            ));
            self.tab = Tab::Train;
        } else {
            let pairs = files::model_pairs(&files);
            let loose = names(FileKind::ModelConfig).len() + names(FileKind::ModelWeights).len();
            if loose > 2 * pairs.len() {
                self.error = Some(
                    "a model needs both files: <name>.safetensors with <name>.json (or \
                     model.safetensors with config.json)"
                        .into(),
                );
            }
            for (name, config_json, safetensors) in pairs {
                self.ask(Request::OpenBytes {
                    name,
                    config_json,
                    safetensors,
                });
            }
        }
        let mut data_dir = None;
        for (name, bytes) in &files {
            match files::classify(name) {
                FileKind::Dataset => {
                    let dir = advmoe_data::files::add_memory_file(name, bytes.clone());
                    if files::is_image_folder_archive(name) {
                        // An image folder is read from its archive, not from a folder of files.
                        self.setup.config.data.kind = advmoe_core::DatasetKind::ImageFolder;
                        data_dir = Some(dir.join(name));
                    } else {
                        data_dir = Some(dir);
                    }
                }
                FileKind::Image => {
                    self.attack.set_own(name.clone(), bytes.clone());
                    self.tab = Tab::Attack;
                }
                _ => {}
            }
        }
        if let Some(dir) = data_dir {
            self.setup.config.data.data_dir = Some(dir.to_string_lossy().into_owned());
            self.tab = Tab::Setup;
        }
        if self.attack.use_own && self.tab == Tab::Attack {
            self.run_attack();
        }
        if !unknown.is_empty() {
            self.error = Some(format!(
                "not a model, image or dataset file: {}",
                unknown.join(", ")
            ));
        }
    }

    /// Carry out a test-hook command, as the matching clicks would.
    pub fn run_hook(&mut self, command: HookCommand) {
        match command {
            HookCommand::Tab { tab } => match Tab::ALL
                .iter()
                .find(|(_, name)| name.to_lowercase().starts_with(&tab.to_lowercase()))
            {
                Some((t, _)) => self.tab = *t,
                None => self.error = Some(format!("no tab {tab:?}")),
            },
            HookCommand::Train {
                steps,
                eval_every,
                batch_size,
                eval_size,
                method,
                augment,
                robust_images,
                on_cpu,
                dataset,
            } => {
                let config = &mut self.setup.config;
                if let Some(dataset) = dataset {
                    config.data.kind = dataset;
                }
                config.train.total_steps = steps;
                config.train.eval_every = eval_every;
                config.train.batch_size = batch_size;
                if let Some(size) = eval_size {
                    config.train.eval_size = size;
                }
                if let Some(method) = method {
                    config.train.method = method;
                }
                if let Some(augment) = augment {
                    config.data.augment = augment;
                }
                self.setup.robust_images = robust_images;
                self.setup.on_cpu = on_cpu;
                self.start_training();
            }
            HookCommand::Attack {
                model,
                image,
                eps_255,
                steps,
                kind,
                target,
            } => {
                self.attack.model = model.or_else(|| self.models.last().map(|m| m.id));
                self.attack.use_own = false;
                self.attack.test_index = image;
                self.attack.eps_255 = eps_255;
                self.attack.steps = steps;
                self.attack.kind = kind;
                self.attack.target = target;
                self.tab = Tab::Attack;
                self.run_attack();
            }
            HookCommand::Save => self.save_checkpoint(),
            HookCommand::Pick => {
                if !files::pick_files(&self.ctx) {
                    self.error = Some("there is no file picker in the desktop app".into());
                }
            }
        }
    }

    fn start_training(&mut self) {
        let config = Box::new(self.setup.config.clone());
        self.send(Command::Start(config, self.setup.run_options()));
        self.tab = Tab::Train;
    }

    fn save_checkpoint(&mut self) {
        let target = if cfg!(target_arch = "wasm32") {
            SaveTarget::Download
        } else {
            SaveTarget::Folder(PathBuf::from(self.train.save_dir.trim()))
        };
        self.send(Command::Save(target));
    }

    /// What the app shows, as JSON (published for the test hooks every frame).
    pub fn status(&self) -> serde_json::Value {
        use serde_json::json;
        let prediction = |p: &advmoe_engine::Prediction| {
            json!({
                "prediction": p.prediction,
                "confidence": p.confidence,
                "routes": p.routes,
            })
        };
        let attack = self.attack.result.as_ref().map(|r| {
            json!({
                "seq": r.seq,
                "model": r.model,
                "source": r.source,
                "label": r.attack.label,
                "linf": r.attack.linf,
                "eps": r.attack.spec.eps,
                "clean": prediction(&r.attack.clean),
                "adversarial": prediction(&r.attack.adversarial),
                "flipped_layers": r.attack.flipped().iter().filter(|f| **f).count(),
            })
        });
        json!({
            "frames": self.frames,
            "first_frame_ms": self.first_frame_ms,
            "compute": self.compute.label,
            "on_gpu": self.compute.fallback_reason.is_none(),
            "fallback_reason": self.compute.fallback_reason,
            "tab": format!("{:?}", self.tab),
            "models": self.models.iter().map(|m| json!({
                "id": m.id, "name": m.name, "origin": m.origin,
            })).collect::<Vec<_>>(),
            "analysis_busy": self.analysis_busy(),
            "train": {
                "state": self.train.state.map(|s| format!("{s:?}")),
                "step": self.train.step,
                "total_steps": self.train.total_steps,
                "steps_per_sec": self.train.steps_per_sec,
                "evals": self.train.evals.iter().map(|e| json!({
                    "step": e.step, "clean_acc": e.clean_acc, "loss": e.loss,
                })).collect::<Vec<_>>(),
                "saved_to": self.train.saved_to,
                "data_dir": self.setup.config.data.data_dir,
                "data_images": self.train.data.map(|d| d.images),
                "data_load_s": self.train.data.map(|d| d.secs),
            },
            "attack": attack,
            "error": self.error,
        })
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
        for batch in files::take_incoming() {
            self.accept_files(batch);
        }
        for command in hooks::take_commands() {
            self.run_hook(command);
        }
        if let Some(message) = hooks::take_errors().pop() {
            self.error = Some(message);
        }
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
        self.frames += 1;
        #[cfg(target_arch = "wasm32")]
        if self.first_frame_ms.is_none() {
            self.first_frame_ms = web::now_ms();
        }
        let cpu_ms = self.frame_ms();
        let interval_ms = self.frame_interval_ms();
        egui::Panel::top("tabs").show(ui, |ui| {
            ui.horizontal(|ui| {
                for (tab, name) in Tab::ALL {
                    ui.selectable_value(&mut self.tab, tab, name);
                }
                ui.separator();
                if cfg!(target_arch = "wasm32")
                    && ui
                        .button("Open files…")
                        .on_hover_text(
                            "A model (.safetensors + .json), a checkpoint's files, dataset \
                             files or a PNG/JPEG image; dropping them on the page works too",
                        )
                        .clicked()
                {
                    files::pick_files(ui.ctx());
                }
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
                        Some(SetupAction::Start) => self.start_training(),
                        Some(SetupAction::RouterOnlyLesson) => self.router_only_lesson(),
                        None => {}
                    }
                }
                Tab::Train => match views::train::train_ui(ui, &mut self.train) {
                    Some(TrainAction::Pause) => self.send(Command::Pause),
                    Some(TrainAction::Resume) => self.send(Command::Resume),
                    Some(TrainAction::Stop) => self.send(Command::Stop),
                    Some(TrainAction::Save) => self.save_checkpoint(),
                    Some(TrainAction::Load) if cfg!(target_arch = "wasm32") => {
                        files::pick_files(ui.ctx());
                    }
                    Some(TrainAction::Load) => self.send(Command::Load(
                        CheckpointSource::Folder(self.train.save_dir.trim().into()),
                        self.setup.run_options(),
                    )),
                    None => {}
                },
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
        // Only the page reads it (window.advmoeLab); native tests call `status()` directly.
        #[cfg(target_arch = "wasm32")]
        hooks::publish(self.status().to_string());
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
