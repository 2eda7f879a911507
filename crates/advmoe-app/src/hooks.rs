//! Test hooks: a small command language for driving the app as its buttons would, and a JSON
//! snapshot of what the app shows. The web build exposes both to the page as
//! `window.advmoeLab.send(json)` / `window.advmoeLab.status()` (see `web.rs`), which is how the
//! headless-Chromium end-to-end test works the real page; native tests use them directly.
//!
//! Commands queue here and the app carries them out at the start of its next frame, on the UI
//! thread, through the same paths as clicks (`LabApp::run_hook`).

use std::sync::{Mutex, PoisonError};

use advmoe_core::{AttackKind, AttackTarget, DatasetKind, MethodKind};
use serde::Deserialize;

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
    /// Open the browser's file picker.
    Pick,
}

fn default_kind() -> AttackKind {
    AttackKind::Pgd
}

fn default_target() -> AttackTarget {
    AttackTarget::Full
}

static QUEUE: Mutex<Vec<HookCommand>> = Mutex::new(Vec::new());
static STATUS: Mutex<String> = Mutex::new(String::new());
static ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Parse and queue a command.
///
/// # Errors
/// If `json` is not a command.
pub fn queue(json: &str) -> Result<(), String> {
    let command: HookCommand =
        serde_json::from_str(json).map_err(|e| format!("not a hook command: {e}"))?;
    QUEUE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(command);
    Ok(())
}

/// Every command queued since the last call.
pub fn take_commands() -> Vec<HookCommand> {
    std::mem::take(&mut *QUEUE.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Publish the app's state (the web build does this every frame).
pub fn publish(status: String) {
    *STATUS.lock().unwrap_or_else(PoisonError::into_inner) = status;
}

/// The state last published, as JSON (`{}` before the first frame).
pub fn status_json() -> String {
    let status = STATUS.lock().unwrap_or_else(PoisonError::into_inner);
    if status.is_empty() {
        "{}".into()
    } else {
        status.clone()
    }
}

/// Report an error from outside the frame (a file that could not be read); the app shows it on
/// its next frame.
pub fn report_error(message: String) {
    ERRORS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(message);
}

/// Errors reported since the last call.
pub fn take_errors() -> Vec<String> {
    std::mem::take(&mut *ERRORS.lock().unwrap_or_else(PoisonError::into_inner))
}
