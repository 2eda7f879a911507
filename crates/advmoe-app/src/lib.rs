//! AdvMoE Lab's application: eframe views over the training engine.
//!
//! Natively one GPU device serves drawing and training ([`gpu`]). Two workers do all Burn
//! work, so a frame never waits on the GPU: the training worker ([`worker`]) owns the current
//! run, and the analysis worker ([`analysis`]) owns the model library (bundled demo models,
//! opened models, models training produced) and runs attacks, the routing atlas and the
//! report's measurements; both are built on [`task`]. The app shell is split by job: what the
//! app shows and edits is [`state::AppState`]; the views ([`views`], one module each) draw their
//! part of it and return [`command::AppCommand`]s, which [`LabApp::handle`] carries out; the test
//! hooks and the JSON status are in [`hooks`]; what differs between the desktop and the web is
//! behind [`platform`]; files are classified in [`files`]. The native entry point is `main.rs`.

pub mod analysis;
pub mod command;
pub mod demo;
pub mod error;
pub mod figure;
pub mod files;
pub mod gpu;
pub mod hooks;
pub mod lesson;
pub mod link;
pub mod picture;
pub mod platform;
pub mod state;
pub mod task;
pub mod views;
pub mod worker;

use eframe::egui;

use crate::analysis::{Analysis, Request, spawn_analysis};
use crate::command::AppCommand;
use crate::command::Tab;
use crate::files::FileKind;
use crate::gpu::ComputeDevice;
use crate::platform::{Dropped, Incoming};
use crate::state::AppState;
use crate::worker::{Command, Worker, spawn_training};

/// Frame timing, for the status line and the performance figures.
#[derive(Debug, Default)]
pub struct FrameStats {
    /// CPU seconds of recent frames (building and tessellating the UI, as eframe measures it).
    times: Vec<f32>,
    /// Seconds between recent consecutive frames drawn back to back (input or animation
    /// pending).
    intervals: Vec<f32>,
    /// Frames drawn so far.
    pub count: u64,
    /// When the first frame was drawn, in milliseconds since the page started loading (web).
    pub first_frame_ms: Option<f64>,
}

impl FrameStats {
    /// Median CPU time of the last 120 frames, in milliseconds.
    pub fn cpu_ms(&self) -> Option<f32> {
        median_ms(&self.times)
    }

    /// Median wall time between the last 120 frames drawn back to back (while the pointer
    /// moves or something animates), in milliseconds: the frame time the user sees, GPU work
    /// included.
    pub fn interval_ms(&self) -> Option<f32> {
        median_ms(&self.intervals)
    }

    fn record(&mut self, cpu_secs: Option<f32>, dt: f32) {
        if let Some(secs) = cpu_secs {
            push_recent(&mut self.times, secs);
        }
        // Frames less than 0.25 s apart were drawn back to back; longer gaps are idle time.
        if dt < 0.25 {
            push_recent(&mut self.intervals, dt);
        }
        self.count += 1;
        if self.first_frame_ms.is_none() {
            self.first_frame_ms = platform::now_ms();
        }
    }
}

/// The application.
pub struct LabApp {
    ctx: egui::Context,
    compute: ComputeDevice,
    worker: Option<Worker>,
    analysis: Option<Analysis>,
    /// What the app shows and edits.
    pub state: AppState,
    /// Frame timing.
    pub frames: FrameStats,
    /// Whether the context is in projector mode now (it follows `state.projector`).
    projector_applied: bool,
    /// The link last shown in the page's address (see [`platform::show_link`]; natively
    /// always empty).
    shown_link: String,
    /// The "Link" menu's text field (a link to open).
    link_text: String,
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
            state: AppState::new((!errors.is_empty()).then(|| errors.join("; "))),
            frames: FrameStats::default(),
            projector_applied: false,
            shown_link: String::new(),
            link_text: String::new(),
        };
        app.ask(Request::LoadDemos);
        app
    }

    /// Where training runs, as shown in the title bar.
    pub fn compute_label(&self) -> &str {
        &self.compute.label
    }

    /// Files that arrived as bytes (see [`AppState::accept_files`]); what they ask is done.
    pub fn accept_files(&mut self, files: worker::Files) {
        for command in self.state.accept_files(files) {
            self.handle(command);
        }
    }

    /// Forced device loss, for tests: destroy the wgpu device training runs on, as a driver
    /// reset or an unplugged GPU would lose it. Returns whether there was one.
    pub fn lose_device(&mut self) -> bool {
        match &self.compute.wgpu {
            Some(device) => {
                device.destroy();
                true
            }
            None => false,
        }
    }

    fn send(&mut self, command: Command) {
        let delivered = self.worker.as_ref().is_some_and(|w| w.send(command));
        if !delivered {
            self.state.error = Some("the training thread is not running".into());
        }
    }

    fn ask(&mut self, request: Request) {
        let delivered = self.analysis.as_ref().is_some_and(|a| a.send(request));
        if delivered {
            self.state.requests_sent += 1;
        } else {
            self.state.error = Some("the analysis thread is not running".into());
        }
    }

    /// Files dropped on the window: images go to the attack lab, models (a folder, or a file
    /// of one, or a downloaded `.safetensors` + `.json` pair) to the library, a `compare.json`
    /// to the report. On the web the browser reads them first and they arrive with
    /// [`platform::take_incoming`].
    fn take_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped = ctx.input(|i| i.raw.dropped_files.clone());
        if dropped.is_empty() {
            return;
        }
        for Dropped::Path(path) in platform::dropped(dropped, ctx) {
            let command = match files::classify(&path.to_string_lossy()) {
                kind @ (FileKind::Image | FileKind::Comparison) => match std::fs::read(&path) {
                    Ok(bytes) => {
                        let name = match (kind, path.file_name()) {
                            (FileKind::Image, Some(n)) => n.to_string_lossy().into(),
                            _ => views::report::comparison_title(&path),
                        };
                        self.accept_files(vec![(name, bytes)]);
                        continue;
                    }
                    Err(e) => AppCommand::ShowError(format!("reading {}: {e}", path.display())),
                },
                FileKind::ModelConfig | FileKind::ModelWeights => {
                    AppCommand::ask(Request::Open(path))
                }
                _ if path.is_dir() => AppCommand::ask(Request::Open(path)),
                _ => AppCommand::ShowError(format!(
                    "{} is neither a PNG/JPEG image, a model nor a compare.json",
                    path.display()
                )),
            };
            self.handle(command);
        }
    }

    fn close_dialog(&mut self, ctx: &egui::Context) {
        if ctx.input(|i| i.viewport().close_requested())
            && self.state.has_unsaved_model()
            && !self.state.allow_close
        {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.state.confirm_close = true;
        }
    }

    fn close_dialog_ui(&mut self, ui: &mut egui::Ui) {
        if !self.state.confirm_close {
            return;
        }
        let state = &mut self.state;
        egui::Modal::new(egui::Id::unique("confirm close")).show(ui.ctx(), |ui| {
            ui.heading("Discard the trained model?");
            ui.label("The model trained in this session has not been saved since its last step.");
            ui.horizontal(|ui| {
                if ui.button("Save first").clicked() {
                    state.confirm_close = false;
                    state.tab = Tab::Train;
                }
                if ui.button("Quit without saving").clicked() {
                    state.allow_close = true;
                    state.confirm_close = false;
                    ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
                }
                if ui.button("Cancel").clicked() {
                    state.confirm_close = false;
                }
            });
        });
    }

    /// The tab bar: tabs, the web build's file picker, the device and the frame time.
    fn tab_bar(&mut self, ui: &mut egui::Ui) -> Vec<AppCommand> {
        let mut commands = Vec::new();
        ui.horizontal(|ui| {
            for (tab, name) in Tab::ALL {
                ui.selectable_value(&mut self.state.tab, tab, name);
            }
            ui.separator();
            if platform::WEB
                && ui
                    .button("Open files…")
                    .on_hover_text(
                        "A model (.safetensors + .json), a checkpoint's files, dataset files \
                         or a PNG/JPEG image; dropping them on the page works too",
                    )
                    .clicked()
            {
                commands.push(AppCommand::PickFiles);
            }
            commands.extend(views::lesson::menu_ui(ui, &self.state.lesson));
            self.link_menu(ui);
            ui.toggle_value(&mut self.state.projector, "Projector")
                .on_hover_text(
                    "For a class: larger text and images, full contrast, fewer controls",
                );
            views::projector::theme_buttons(ui);
            if self.state.projector {
                return;
            }
            ui.label(&self.compute.label);
            if let (Some(cpu), Some(interval)) = (self.frames.cpu_ms(), self.frames.interval_ms()) {
                ui.label(format!("· frame {interval:.1} ms (UI CPU {cpu:.1} ms)"));
            }
        });
        commands
    }

    /// Open a shared link (an address or its fragment), as the page does with its own address
    /// and `advmoe-lab --open` with its argument.
    pub fn open_link(&mut self, text: &str) {
        // The page reports its own address back after each change: nothing new to open.
        if text.trim_start_matches('#') != self.shown_link {
            self.state.open_link(text);
        }
    }

    /// The link to what is shown now, as copied: the page's address with the state's fragment.
    pub fn link(&self) -> String {
        format!("{}#{}", platform::link_base(), self.state.link().fragment())
    }

    /// "Link": copy the link to what is shown, or open one pasted.
    fn link_menu(&mut self, ui: &mut egui::Ui) {
        ui.menu_button("Link", |ui| {
            if ui
                .button("Copy link")
                .on_hover_text("The view, model, image, attack, ε, target, steps and seed")
                .clicked()
            {
                ui.ctx().copy_text(self.link());
                ui.close();
            }
            ui.separator();
            let label = ui.label("Link to open");
            ui.add(
                egui::TextEdit::singleline(&mut self.link_text)
                    .hint_text("https://…#v=1&view=attack&…")
                    .desired_width(360.0),
            )
            .labelled_by(label.id);
            if ui.button("Open link").clicked() {
                let text = std::mem::take(&mut self.link_text);
                self.state.open_link(&text);
                ui.close();
            }
        });
    }

    /// Export the attack lab's figure ([`figure`]): a PNG at 2× and its numbers as JSON, into
    /// the lab's export folder natively, as downloads on the web.
    fn export_figure(&mut self) {
        match self.figure_files().and_then(|files| {
            if platform::WEB {
                platform::offer_downloads(&files)?;
                return Ok(format!(
                    "Downloaded {}",
                    files
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let dir = std::path::PathBuf::from(self.state.attack.export_dir.trim());
            let io = |path: &std::path::Path| {
                let path = path.to_path_buf();
                move |source| error::AppError::Io { path, source }
            };
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let mut written = Vec::new();
            for (name, bytes) in &files {
                let path = dir.join(name);
                std::fs::write(&path, bytes).map_err(io(&path))?;
                written.push(path.display().to_string());
            }
            Ok(format!("Saved {}", written.join(", ")))
        }) {
            Ok(message) => self.state.attack.exported = Some(message),
            Err(e) => self.state.error = Some(e.to_string()),
        }
    }

    /// The attack lab's figure as files: `<stem>.png` (2×) and `<stem>.json`.
    ///
    /// # Errors
    /// When there is no result to export, or the PNG cannot be encoded.
    pub fn figure_files(&self) -> error::AppResult<worker::Files> {
        let outcome = self.state.attack.result.as_ref().ok_or_else(|| {
            error::AppError::Refused("attack first: there is no figure yet".into())
        })?;
        let model = self.state.models.get(outcome.model).ok_or_else(|| {
            error::AppError::Refused("the attacked model is no longer in the library".into())
        })?;
        let (image, _) = figure::render(outcome, model);
        let stem = figure::file_stem(outcome, model);
        let json = serde_json::to_vec_pretty(&figure::numbers(outcome, model, &self.link()))
            .unwrap_or_default();
        Ok(vec![
            (format!("{stem}.png"), figure::png(&image)?),
            (format!("{stem}.json"), json),
        ])
    }

    /// Judge the open card's committed prediction once its result is in.
    fn judge_prediction(&mut self) {
        let state = &mut self.state;
        let models = &state.models;
        let rows = |key: &str| link::find_model(models, key).and_then(|m| m.recorded.as_ref());
        let attacked = state.attack.result.as_ref();
        let names = |c: usize| {
            attacked
                .and_then(|o| models.get(o.model))
                .map_or_else(|| format!("class {c}"), |m| m.class_name(c))
        };
        state.lesson.judge(attacked, &rows, &names);
    }

    /// The current tab's view.
    fn view(&mut self, ui: &mut egui::Ui) -> Vec<AppCommand> {
        let state = &mut self.state;
        if state.lesson.hides_result() && state.tab != Tab::Attack {
            ui.heading(
                "Predict first: this view appears once the class has committed to a guess in \
                 the lesson card.",
            );
            return Vec::new();
        }
        match state.tab {
            Tab::Setup => {
                let busy = matches!(
                    state.train.state,
                    Some(advmoe_engine::RunState::Running | advmoe_engine::RunState::Paused)
                );
                views::setup::setup_ui(ui, &mut state.setup, busy, &self.compute.label)
            }
            Tab::Train => views::train::train_ui(ui, &mut state.train),
            Tab::Attack => views::attack::attack_ui(
                ui,
                &mut state.attack,
                &state.models,
                state.projector,
                state.lesson.hides_result(),
            ),
            Tab::Atlas => {
                views::atlas::atlas_ui(ui, &mut state.atlas, &state.models, state.projector)
            }
            Tab::Report => views::report::report_ui(ui, &mut state.report, &state.models),
        }
    }
}

impl eframe::App for LabApp {
    fn logic(&mut self, ctx: &egui::Context, _frame: &mut eframe::Frame) {
        let events = self.worker.as_ref().map(Worker::drain).unwrap_or_default();
        for event in events {
            if let Some(command) = self.state.apply(event) {
                self.handle(command);
            }
        }
        let replies = self
            .analysis
            .as_ref()
            .map(Analysis::drain)
            .unwrap_or_default();
        for reply in replies {
            self.state.reply(ctx, reply);
        }
        if let Some(command) = self.state.settle_link() {
            self.handle(command);
        }
        self.judge_prediction();
        self.take_dropped_files(ctx);
        for incoming in platform::take_incoming() {
            match incoming {
                Incoming::Files(files) => self.accept_files(files),
                Incoming::Hook(command) => self.run_hook(command),
                Incoming::Error(message) => self.state.error = Some(message),
                Incoming::Link(text) => self.open_link(&text),
            }
        }
        self.close_dialog(ctx);
    }

    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let dt = ui.input(|i| i.unstable_dt);
        self.frames.record(frame.info().cpu_usage, dt);
        if self.state.projector != self.projector_applied {
            views::projector::apply(ui.ctx(), self.state.projector);
            self.projector_applied = self.state.projector;
        }
        let mut commands = Vec::new();
        egui::Panel::top("tabs").show(ui, |ui| commands.extend(self.tab_bar(ui)));
        if let Some(message) = self.state.error.clone() {
            egui::Panel::bottom("error").show(ui, |ui| {
                ui.horizontal(|ui| {
                    ui.colored_label(ui.visuals().error_fg_color, &message);
                    if ui.button("Dismiss").clicked() {
                        self.state.error = None;
                    }
                });
            });
        }
        self.close_dialog_ui(ui);
        if self.state.lesson.open.is_some() {
            let busy = self.state.attack.busy;
            egui::Panel::right("lesson")
                .default_size(360.0)
                .resizable(true)
                .show(ui, |ui| {
                    egui::ScrollArea::vertical().show(ui, |ui| {
                        commands.extend(views::lesson::panel_ui(
                            ui,
                            &mut self.state.lesson,
                            &self.state.models,
                            busy,
                        ));
                    });
                });
        }
        views::lesson::clear_marks(ui.ctx());
        egui::CentralPanel::default().show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| commands.extend(self.view(ui)));
        });
        if let Some(area) = self.state.lesson.current().and_then(|(_, c)| c.look) {
            views::lesson::outline(ui.ctx(), area);
        }
        for command in commands {
            self.handle(command);
        }
        // Only the page reads it (window.advmoeLab); native tests call `status()` directly.
        platform::publish_status(|| self.status().to_string());
        // Only the page has an address to keep equal to the link (natively nothing shows it).
        if platform::WEB && self.state.pending_link.is_none() {
            let fragment = self.state.link().fragment();
            if fragment != self.shown_link {
                platform::show_link(&fragment);
                self.shown_link = fragment;
            }
        }
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
