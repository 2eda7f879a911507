//! What the user (or a test hook) asks the app to do: every view returns [`AppCommand`]s and
//! [`LabApp::handle`] carries them out, in the one place that talks to the workers.

use std::path::PathBuf;

use crate::LabApp;
use crate::analysis::Request;
use crate::gpu::ComputeDevice;
use crate::platform;
use crate::worker::{CheckpointSource, Command, SaveTarget};

/// A request from a view, a hook or a dropped file.
#[derive(Debug, Clone)]
pub enum AppCommand {
    /// Start training with the setup view's configuration.
    StartTraining,
    /// Pause the run.
    Pause,
    /// Resume it.
    Resume,
    /// Stop it.
    Stop,
    /// Save the run: natively a checkpoint into the train view's folder, on the web the model
    /// as downloads.
    SaveCheckpoint,
    /// Load a checkpoint: natively from the train view's folder (paused), on the web from
    /// files picked in the browser.
    LoadCheckpoint,
    /// Load the checkpoint these files (or this folder) hold, paused.
    LoadCheckpointFiles(CheckpointSource),
    /// Continue a failed run from the copy the worker kept in memory, on the CPU or on a GPU
    /// ([`Command::Recover`]).
    Recover {
        /// Continue on the CPU.
        on_cpu: bool,
    },
    /// The training worker moved to this device, in place of a lost one: the app (its title
    /// bar, the analysis worker's models) moves too.
    Moved(Box<ComputeDevice>),
    /// The lesson "attack the router only": the attack lab on the bundled MoE trained with
    /// vanilla MoE AT, aimed at its routers.
    RouterOnlyLesson,
    /// Run the attack lab's attack with its current settings.
    RunAttack,
    /// Open card `.1` of lesson `.0` (indices into the lesson list).
    ShowCard(usize, usize),
    /// Close the lesson.
    LeaveLesson,
    /// The class committed to the prediction picked on the open card: mark it committed and run
    /// the card's attack (or judge on the recorded figures).
    RevealPrediction,
    /// Copy the link to what is shown.
    CopyLink,
    /// Export the attack lab's figure (PNG at 2× with a caption, and JSON).
    ExportFigure,
    /// Send a request to the analysis worker (an atlas, a report measurement, a model to open).
    /// Boxed: a request carries attack specs, many times the size of the other commands.
    Ask(Box<Request>),
    /// Open the browser's file picker.
    PickFiles,
    /// Show a tab.
    ShowTab(Tab),
    /// Show an error until dismissed.
    ShowError(String),
}

impl AppCommand {
    /// [`AppCommand::Ask`] with `request`.
    pub fn ask(request: Request) -> Self {
        AppCommand::Ask(Box::new(request))
    }
}

impl LabApp {
    /// Carry out `command`.
    pub fn handle(&mut self, command: AppCommand) {
        match command {
            AppCommand::StartTraining => {
                let config = Box::new(self.state.setup.config.clone());
                self.send(Command::Start(config, self.state.setup.run_options()));
                self.state.tab = Tab::Train;
            }
            AppCommand::Pause => self.send(Command::Pause),
            AppCommand::Resume => self.send(Command::Resume),
            AppCommand::Stop => self.send(Command::Stop),
            AppCommand::SaveCheckpoint => {
                let target = if platform::WEB {
                    SaveTarget::Download
                } else {
                    SaveTarget::Folder(PathBuf::from(self.state.train.save_dir.trim()))
                };
                self.send(Command::Save(target));
            }
            AppCommand::LoadCheckpoint if platform::WEB => self.handle(AppCommand::PickFiles),
            AppCommand::LoadCheckpoint => self.handle(AppCommand::LoadCheckpointFiles(
                CheckpointSource::Folder(self.state.train.save_dir.trim().into()),
            )),
            AppCommand::LoadCheckpointFiles(source) => {
                self.send(Command::Load(source, self.state.setup.run_options()));
            }
            AppCommand::Recover { on_cpu } => {
                self.state.train.lost = None;
                self.send(Command::Recover { on_cpu });
            }
            AppCommand::Moved(compute) => {
                self.compute = *compute;
                self.ask(Request::UseDevice(self.compute.device.clone()));
            }
            AppCommand::RouterOnlyLesson => {
                if self.state.router_only_lesson() {
                    self.handle(AppCommand::RunAttack);
                }
            }
            AppCommand::RunAttack => match self.state.attack.request(&self.state.models) {
                Ok(request) => self.ask(request),
                Err(error) => self.state.error = Some(error.to_string()),
            },
            AppCommand::ShowCard(lesson, card) => self.state.show_card(lesson, card),
            AppCommand::LeaveLesson => {
                self.state.lesson.open = None;
                self.state.lesson.reset_prediction();
            }
            AppCommand::RevealPrediction => {
                self.state.lesson.committed = true;
                let live = self
                    .state
                    .lesson
                    .current()
                    .and_then(|(_, c)| c.predict.as_ref())
                    .is_some_and(|p| p.choices.iter().any(|c| c.when.needs_attack()));
                if live {
                    match self.state.attack.request(&self.state.models) {
                        Ok(request) => {
                            self.state.lesson.awaiting = Some(self.state.attack.sent);
                            self.ask(request);
                        }
                        Err(error) => {
                            self.state.lesson.committed = false;
                            self.state.error = Some(error.to_string());
                        }
                    }
                }
            }
            AppCommand::CopyLink => self.ctx.copy_text(self.link()),
            AppCommand::ExportFigure => self.export_figure(),
            AppCommand::Ask(request) => self.ask(*request),
            AppCommand::PickFiles => {
                if !platform::pick_files(&self.ctx) {
                    self.state.error = Some("there is no file picker in the desktop app".into());
                }
            }
            AppCommand::ShowTab(tab) => self.state.tab = tab,
            AppCommand::ShowError(message) => self.state.error = Some(message),
        }
    }
}

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
    /// Every tab and its title, in the order the tab bar shows them.
    pub const ALL: [(Tab, &'static str); 5] = [
        (Tab::Setup, "Setup"),
        (Tab::Train, "Train"),
        (Tab::Attack, "Attack lab"),
        (Tab::Atlas, "Routing atlas"),
        (Tab::Report, "Report"),
    ];

    /// The tab whose title starts with `name` (any case).
    pub fn named(name: &str) -> Option<Tab> {
        let name = name.to_lowercase();
        Self::ALL
            .iter()
            .find(|(_, title)| title.to_lowercase().starts_with(&name))
            .map(|(tab, _)| *tab)
    }
}
