//! Test hooks: a small command language for driving the app as its buttons would, and a JSON
//! snapshot of what the app shows. The web build exposes both to the page as
//! `window.advmoeLab.send(json)` / `window.advmoeLab.status()` (see `web.rs`), which is how the
//! headless-Chromium end-to-end test works the real page; native tests use them directly.
//!
//! On the web, commands wait in the platform's queue and the app carries them out at the start
//! of its next frame, on the UI thread, as the same [`AppCommand`]s clicks give
//! ([`LabApp::run_hook`]).

use advmoe_core::{AttackKind, AttackTarget, DatasetKind, MethodKind};
use serde::Deserialize;
use serde_json::json;

use crate::LabApp;
use crate::command::AppCommand;
use crate::command::Tab;

/// What a hook can ask.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum HookCommand {
    /// Show a tab: `setup`, `train`, `attack`, `atlas` or `report`.
    Tab {
        /// The tab.
        tab: String,
    },
    /// Start a training from the setup view's configuration (the quick-start preset on
    /// `synthetic` unless changed) with these changes, as its Start button does.
    Train {
        /// Optimiser steps.
        steps: usize,
        /// Steps between evaluations.
        eval_every: usize,
        /// Images per batch.
        batch_size: usize,
        /// Test images per evaluation.
        #[serde(default)]
        eval_size: Option<usize>,
        /// Training method (`standard`, `moe-at`, `trades`, `advmoe`).
        #[serde(default)]
        method: Option<MethodKind>,
        /// Augment the training images (default: the preset's choice).
        #[serde(default)]
        augment: Option<bool>,
        /// Robustness images per evaluation (default 0).
        #[serde(default)]
        robust_images: usize,
        /// Train on the CPU backend.
        #[serde(default)]
        on_cpu: bool,
        /// Dataset (default: the setup's; files handed over by the picker are its folder).
        #[serde(default)]
        dataset: Option<DatasetKind>,
    },
    /// Attack a test image, as the attack lab's Attack button does.
    Attack {
        /// Library index of the model; `None`: the newest model.
        #[serde(default)]
        model: Option<usize>,
        /// Test image index.
        image: usize,
        /// Radius in 1/255 units.
        eps_255: f32,
        /// Attack steps.
        steps: usize,
        /// Attack algorithm.
        #[serde(default = "default_kind")]
        kind: AttackKind,
        /// Objective target.
        #[serde(default = "default_target")]
        target: AttackTarget,
    },
    /// "Save checkpoint": on the web, download the trained model's file pair.
    Save,
    /// Open card `card` (1-based) of the lesson `id`, as its menu entry and "Next" do.
    Lesson {
        /// The lesson's id (its file name without `.lesson`).
        id: String,
        /// The card, 1-based.
        card: usize,
    },
    /// Pick answer `choice` (0-based) of the open card's "predict first" step and press
    /// "Commit and show".
    Predict {
        /// The answer.
        choice: usize,
    },
    /// "Export figure": the attack lab's figure (PNG and JSON; downloads on the web).
    ExportFigure,
    /// Open the browser's file picker.
    Pick,
    /// Destroy the GPU device training runs on, as a driver reset or an unplugged GPU would
    /// lose it (a forced device loss, for the reliability tests).
    LoseDevice,
    /// After a lost device, continue the run from the copy kept in memory, as the train view's
    /// buttons do.
    Recover {
        /// On the CPU (else on a GPU: natively the same device, on the web a new one).
        on_cpu: bool,
    },
}

fn default_kind() -> AttackKind {
    AttackKind::Pgd
}

fn default_target() -> AttackTarget {
    AttackTarget::Full
}

impl HookCommand {
    /// Parse a command from its JSON.
    ///
    /// # Errors
    /// If `json` is not a command.
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }
}

impl LabApp {
    /// Carry out a test-hook command, as the matching clicks would.
    pub fn run_hook(&mut self, command: HookCommand) {
        let state = &mut self.state;
        let command = match command {
            HookCommand::Tab { tab } => match Tab::named(&tab) {
                Some(tab) => AppCommand::ShowTab(tab),
                None => AppCommand::ShowError(format!("no tab {tab:?}")),
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
                let config = &mut state.setup.config;
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
                state.setup.robust_images = robust_images;
                state.setup.on_cpu = on_cpu;
                AppCommand::StartTraining
            }
            HookCommand::Attack {
                model,
                image,
                eps_255,
                steps,
                kind,
                target,
            } => {
                let attack = &mut state.attack;
                attack.model = model.or_else(|| state.models.last().map(|m| m.id));
                attack.use_own = false;
                attack.test_index = image;
                attack.eps_255 = eps_255;
                attack.steps = steps;
                attack.kind = kind;
                attack.target = target;
                state.tab = Tab::Attack;
                AppCommand::RunAttack
            }
            HookCommand::Save => AppCommand::SaveCheckpoint,
            HookCommand::Lesson { id, card } => match state.lesson.find(&id) {
                Some(l) => AppCommand::ShowCard(l, card.saturating_sub(1)),
                None => AppCommand::ShowError(format!("no lesson {id:?}")),
            },
            HookCommand::Predict { choice } => {
                state.lesson.choice = Some(choice);
                AppCommand::RevealPrediction
            }
            HookCommand::ExportFigure => AppCommand::ExportFigure,
            HookCommand::Pick => AppCommand::PickFiles,
            HookCommand::Recover { on_cpu } => AppCommand::Recover { on_cpu },
            HookCommand::LoseDevice => {
                if !self.lose_device() {
                    self.state.error = Some("training does not run on a GPU device".into());
                }
                return;
            }
        };
        self.handle(command);
    }

    /// What the app shows, as JSON (published for the test hooks every frame on the web).
    pub fn status(&self) -> serde_json::Value {
        let state = &self.state;
        let prediction = |p: &advmoe_engine::Prediction| {
            json!({
                "prediction": p.prediction,
                "confidence": p.confidence,
                "routes": p.routes,
            })
        };
        let attack = state.attack.result.as_ref().map(|r| {
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
        let train = &state.train;
        json!({
            "frames": self.frames.count,
            "first_frame_ms": self.frames.first_frame_ms,
            "compute": self.compute.label,
            "on_gpu": self.compute.fallback_reason.is_none(),
            "fallback_reason": self.compute.fallback_reason,
            "tab": format!("{:?}", state.tab),
            "models": state.models.iter().map(|m| json!({
                "id": m.id, "name": m.name, "origin": m.origin,
            })).collect::<Vec<_>>(),
            "analysis_busy": state.analysis_busy(),
            "train": {
                "state": train.state.map(|s| format!("{s:?}")),
                "step": train.step,
                "total_steps": train.total_steps,
                "steps_per_sec": train.steps_per_sec,
                "timed_steps": train.timed_steps,
                "timed_secs": train.timed_secs,
                "evals": train.evals.iter().map(|e| json!({
                    "step": e.step, "clean_acc": e.clean_acc, "loss": e.loss,
                })).collect::<Vec<_>>(),
                "saved_to": train.saved_to,
                "data_dir": state.setup.config.data.data_dir,
                "data_images": train.data.map(|d| d.images),
                "data_load_s": train.data.map(|d| d.secs),
                "kept_step": train.kept_step,
                "lost": train.lost.as_ref().map(|(reason, step)| json!({
                    "reason": reason, "kept_step": step,
                })),
            },
            "attack": attack,
            "link": state.link().fragment(),
            "link_pending": state.pending_link.is_some(),
            "projector": state.projector,
            "lesson": state.lesson.current().map(|(l, _)| l.id.clone()),
            "card": state.lesson.open.map(|(_, c)| c + 1),
            "lesson_hidden": state.lesson.hides_result(),
            "lesson_revealed": state.lesson.revealed.as_ref().map(|r| json!({
                "right": r.right, "expected": r.expected, "what": r.what,
            })),
            "exported": state.attack.exported,
            "error": state.error,
        })
    }
}
