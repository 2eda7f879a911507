//! Everything the app shows and edits, in one struct ([`AppState`]), and how worker events and
//! analysis replies change it. Views get their part of it; [`crate::LabApp::handle`] turns
//! [`AppCommand`]s into worker messages.

use eframe::egui;

use crate::analysis::{self, ModelInfo, Reply, Request};
use crate::command::{AppCommand, Tab};
use crate::files::{self, FileKind};
use crate::link::{self, Link, Parsed};
use crate::views::atlas::AtlasState;
use crate::views::attack::AttackState;
use crate::views::lesson::LessonState;
use crate::views::report::ReportState;
use crate::views::setup::SetupState;
use crate::views::train::TrainState;
use crate::worker::{CheckpointSource, Event, Files};

/// What the app shows and edits.
pub struct AppState {
    /// The tab shown.
    pub tab: Tab,
    /// The setup view.
    pub setup: SetupState,
    /// The train view.
    pub train: TrainState,
    /// The attack lab.
    pub attack: AttackState,
    /// The routing atlas.
    pub atlas: AtlasState,
    /// The report.
    pub report: ReportState,
    /// The model library, as the analysis worker reported it.
    pub models: Vec<ModelInfo>,
    /// The last error, shown until dismissed.
    pub error: Option<String>,
    /// The window was asked to close while a trained model was unsaved.
    pub confirm_close: bool,
    /// The user chose to close without saving.
    pub allow_close: bool,
    /// Requests sent to the analysis worker.
    pub requests_sent: u64,
    /// Requests it reported finished.
    pub requests_done: u64,
    /// Projector mode ([`crate::views::projector`]).
    pub projector: bool,
    /// A link being opened, until the model it names is in the library
    /// ([`AppState::settle_link`]).
    pub pending_link: Option<Parsed>,
    /// Whether the pending link's attack runs once it settles (not on a lesson's "predict
    /// first" card, whose result waits for the class's guess).
    pub pending_run: bool,
    /// The lessons and the open card.
    pub lesson: LessonState,
}

impl AppState {
    /// The state of a freshly started app; `error` says what failed while starting.
    pub fn new(error: Option<String>) -> Self {
        let (lesson, lesson_error) = LessonState::bundled();
        let error = match (error, lesson_error) {
            (Some(a), Some(b)) => Some(format!("{a}; {b}")),
            (a, b) => a.or(b),
        };
        Self {
            tab: Tab::Setup,
            setup: SetupState::default(),
            train: TrainState::default(),
            attack: AttackState::default(),
            atlas: AtlasState::default(),
            report: ReportState::default(),
            models: Vec::new(),
            error,
            confirm_close: false,
            allow_close: false,
            requests_sent: 0,
            requests_done: 0,
            projector: false,
            pending_link: None,
            pending_run: false,
            lesson,
        }
    }

    /// Whether the analysis worker has work in flight.
    pub fn analysis_busy(&self) -> bool {
        self.requests_done < self.requests_sent
    }

    /// A trained model exists that was never saved since it last changed.
    pub fn has_unsaved_model(&self) -> bool {
        self.train.unsaved
    }

    /// Take a training worker's event; returns what it asks of the app.
    pub fn apply(&mut self, event: Event) -> Option<AppCommand> {
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
                chunk_steps,
                chunk_secs,
            } => {
                let first = step + 1 - losses.len().min(step + 1);
                for (i, loss) in losses.into_iter().enumerate() {
                    self.train.losses.push([(first + i) as f64, loss]);
                }
                self.train.step = step;
                self.train.steps_per_sec = chunk_steps as f64 / chunk_secs.max(1e-9);
                self.train.timed_steps += chunk_steps;
                self.train.timed_secs += chunk_secs;
                self.train.unsaved = true;
            }
            Event::Recovered(recovery) => {
                // The steps after the rollback are undone: so are their points.
                let back = recovery.rolled_back_to;
                self.train.losses.retain(|[x, _]| *x <= back as f64);
                self.train.evals.retain(|e| e.step <= back);
                self.train.robust.retain(|(step, _)| *step <= back);
                self.train.step = back;
                self.train.recoveries.push(recovery.to_string());
            }
            Event::Eval(report) => self.train.evals.push(report),
            Event::Robust { step, report } => self.train.robust.push((step, *report)),
            Event::State(state) => self.train.state = Some(state),
            Event::Saved(place) => {
                self.train.saved_to = Some(place);
                self.train.unsaved = false;
            }
            Event::Trained(model) => return Some(AppCommand::ask(Request::Adopt(model))),
            Event::Error(message) => self.error = Some(message),
            Event::Lost { reason, kept_step } => self.train.lost = Some((reason, kept_step)),
            Event::Moved(compute) => return Some(AppCommand::Moved(compute)),
            Event::Kept(step) => self.train.kept_step = Some(step),
        }
        None
    }

    /// Take an analysis worker's reply.
    pub fn reply(&mut self, ctx: &egui::Context, reply: Reply) {
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
            Reply::Evaluated { model, mut row } => {
                // Measuring again does not retrain: the training curves stay the recorded ones.
                if row.history.is_empty()
                    && let Some(recorded) = self
                        .models
                        .iter()
                        .find(|m| m.id == model)
                        .and_then(|m| m.recorded.as_ref())
                {
                    row.history.clone_from(&recorded.history);
                    row.robust_history.clone_from(&recorded.robust_history);
                }
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

    /// Files that arrived as bytes (the browser's picker or a drop; a dropped image natively):
    /// a checkpoint's files resume its run, model pairs join the library, dataset files become
    /// the setup's data folder, an image goes to the attack lab. Returns what that asks of the
    /// workers.
    pub fn accept_files(&mut self, files: Files) -> Vec<AppCommand> {
        let mut commands = Vec::new();
        let names = |kind: FileKind| -> Vec<&String> {
            files
                .iter()
                .filter(|(n, _)| files::classify(n) == kind)
                .map(|(n, _)| n)
                .collect()
        };
        let unknown: Vec<String> = names(FileKind::Unknown).into_iter().cloned().collect();
        if files.iter().any(|(n, _)| n == "run.json") {
            commands.push(AppCommand::LoadCheckpointFiles(CheckpointSource::Files(
                files.clone(),
            )));
            // Files that arrive later in this batch (an image, dataset files) may move on.
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
                commands.push(AppCommand::ask(Request::OpenBytes {
                    name,
                    config_json,
                    safetensors,
                }));
            }
        }
        let mut data_dir = None;
        for (name, bytes) in &files {
            match files::classify(name) {
                FileKind::Dataset => {
                    let dir = self.setup.data_files.add(name, bytes.clone());
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
                FileKind::Comparison => match self.report.open_comparison(name, bytes) {
                    Ok(()) => self.tab = Tab::Report,
                    Err(e) => self.error = Some(e.to_string()),
                },
                FileKind::Lesson => match std::str::from_utf8(bytes)
                    .map_err(|_| format!("{name} is not UTF-8 text"))
                    .and_then(|text| crate::lesson::Lesson::parse(name, text))
                {
                    Ok(lesson) => {
                        // A lesson opened again replaces the one of the same name.
                        let index = match self.lesson.find(&lesson.id) {
                            Some(i) => {
                                self.lesson.lessons[i] = lesson;
                                i
                            }
                            None => {
                                self.lesson.lessons.push(lesson);
                                self.lesson.lessons.len() - 1
                            }
                        };
                        commands.push(AppCommand::ShowCard(index, 0));
                    }
                    Err(e) => self.error = Some(format!("the lesson cannot be read: {e}")),
                },
                _ => {}
            }
        }
        if let Some(dir) = data_dir {
            self.setup.config.data.data_dir = Some(dir.to_string_lossy().into_owned());
            self.tab = Tab::Setup;
            // The library reads a trained model's dataset from the same files.
            commands.push(AppCommand::ask(Request::DataFiles(
                self.setup.data_files.clone(),
            )));
        }
        if self.attack.use_own && self.tab == Tab::Attack {
            commands.push(AppCommand::RunAttack);
        }
        if !unknown.is_empty() {
            self.error = Some(format!(
                "not a model, image, dataset, lesson or comparison file: {}",
                unknown.join(", ")
            ));
        }
        commands
    }

    /// Set the attack lab up for the lesson "attack the router only": the bundled MoE trained
    /// with vanilla MoE AT, its routers attacked with PGD-10 at 8/255. `false` (with an error)
    /// while the demo models are not loaded.
    pub fn router_only_lesson(&mut self) -> bool {
        let Some(model) = self.models.iter().find(|m| {
            m.origin == analysis::ORIGIN_DEMO
                && m.config.train.method == advmoe_core::MethodKind::MoeAt
        }) else {
            self.error = Some("the demo models are not loaded yet".into());
            return false;
        };
        self.attack.model = Some(model.id);
        self.attack.target = advmoe_core::AttackTarget::Router;
        self.attack.kind = advmoe_core::AttackKind::Pgd;
        self.attack.eps_255 = 8.0;
        self.attack.steps = 10;
        self.attack.use_own = false;
        self.tab = Tab::Attack;
        true
    }

    /// The link to what is shown now: the view, the attack lab's model, test image and attack,
    /// and projector mode.
    pub fn link(&self) -> Link {
        let a = &self.attack;
        let atlas = self.tab == Tab::Atlas;
        let model = if atlas { self.atlas.model } else { a.model };
        let model = model.and_then(|m| self.models.get(m));
        let lesson = self
            .lesson
            .open
            .and_then(|(l, c)| Some((self.lesson.lessons.get(l)?.id.clone(), c + 1)));
        Link {
            tab: Some(self.tab),
            model: model.map(link::model_key),
            image: (!a.use_own).then_some(a.test_index),
            kind: Some(a.kind),
            target: Some(a.target),
            eps_255: Some(a.eps_255),
            steps: Some(a.steps),
            seed: Some(a.seed),
            through_gates: a.through_gates.then_some(true),
            router_term: (a.router_term > 0.0).then_some(a.router_term),
            projector: Some(self.projector),
            layer: atlas.then_some(self.atlas.layer + 1),
            card: lesson.as_ref().map(|(_, c)| *c),
            lesson: lesson.map(|(id, _)| id),
        }
    }

    /// Open a link (a whole address or its fragment): everything it sets but the model at once,
    /// the model (and, in the attack lab, its attack) once the library has it
    /// ([`AppState::settle_link`]), which also says in the error bar what it could not use.
    pub fn open_link(&mut self, text: &str) {
        let mut parsed = Link::parse(text);
        let mut run = true;
        self.lesson.reset_prediction();
        self.lesson.open = None;
        if let Some(id) = &parsed.link.lesson {
            match self.lesson.find(id) {
                Some(l) => {
                    let cards = &self.lesson.lessons[l].cards;
                    let card = parsed.link.card.unwrap_or(1).clamp(1, cards.len());
                    // What the card sets, with what the link itself says over it.
                    if let Some(set) = &cards[card - 1].set {
                        parsed.link = set.overlaid(&parsed.link);
                    }
                    self.lesson.open = Some((l, card - 1));
                    run = !self.lesson.hides_result();
                }
                None => parsed
                    .dropped
                    .push(format!("lesson \"{id}\" (not in this version)")),
            }
        }
        self.apply_link(parsed, run);
    }

    /// Show card `card` of lesson `lesson`: what it sets, and its attack unless the class has
    /// to predict first.
    pub fn show_card(&mut self, lesson: usize, card: usize) {
        let Some(set) = self
            .lesson
            .lessons
            .get(lesson)
            .and_then(|l| l.cards.get(card))
            .map(|c| c.set.clone())
        else {
            return;
        };
        self.lesson.open = Some((lesson, card));
        self.lesson.reset_prediction();
        let hidden = self.lesson.hides_result();
        if let Some(link) = set {
            self.apply_link(
                Parsed {
                    link,
                    dropped: Vec::new(),
                },
                !hidden,
            );
        }
    }

    /// Apply what a link sets (see [`AppState::open_link`]); `run`: run its attack once it
    /// settles.
    fn apply_link(&mut self, parsed: Parsed, run: bool) {
        let l = &parsed.link;
        if let Some(layer) = l.layer {
            self.atlas.layer = layer - 1;
        }
        if let Some(tab) = l.tab {
            self.tab = tab;
        }
        if let Some(on) = l.projector {
            self.projector = on;
        }
        let a = &mut self.attack;
        if let Some(image) = l.image {
            a.test_index = image;
            a.use_own = false;
        }
        a.kind = l.kind.unwrap_or(a.kind);
        a.target = l.target.unwrap_or(a.target);
        a.eps_255 = l.eps_255.unwrap_or(a.eps_255);
        a.steps = l.steps.unwrap_or(a.steps);
        a.seed = l.seed.unwrap_or(a.seed);
        a.through_gates = l.through_gates.unwrap_or(a.through_gates);
        a.router_term = l.router_term.unwrap_or(a.router_term);
        self.pending_link = Some(parsed);
        self.pending_run = run;
    }

    /// Finish opening a link once its model is in the library (or once loading is over and it
    /// is not: then the link opens without it, and says so). Returns the attack to run when the
    /// link shows the attack lab.
    pub fn settle_link(&mut self) -> Option<AppCommand> {
        let pending = self.pending_link.as_ref()?;
        let found = match &pending.link.model {
            Some(key) => match link::find_model(&self.models, key) {
                Some(model) => Some(model.id),
                // Still loading: the model may yet come.
                None if self.analysis_busy() || self.requests_done == 0 => return None,
                None => None,
            },
            None => None,
        };
        let Parsed { link, mut dropped } = self.pending_link.take()?;
        if found.is_some() {
            self.attack.model = found;
            if link.tab == Some(Tab::Atlas) {
                self.atlas.model = found;
            }
        } else if let Some(key) = &link.model {
            dropped.push(format!("model \"{key}\" (not in this library)"));
        }
        if !dropped.is_empty() {
            self.error = Some(format!(
                "the link opened without what this version cannot use: {}",
                dropped.join(", ")
            ));
        }
        let run = std::mem::take(&mut self.pending_run);
        (run && link.tab == Some(Tab::Attack) && self.tab == Tab::Attack && !self.models.is_empty())
            .then_some(AppCommand::RunAttack)
    }
}
