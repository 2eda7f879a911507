//! The training worker: one named native thread owns the engine's `Run` (all Burn work for a run
//! happens on it), takes [`Command`]s from the UI and sends back [`Event`]s. It never blocks
//! the frame: the UI drains events in `App::logic` and the worker wakes it with a callback.
//!
//! TODO(#6): on the web the same loop runs as a cooperative task instead of a thread.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use advmoe_core::EvalReport;
use advmoe_engine::{RobustOptions, RobustReport, Run, RunConfig, RunState, evaluate_robust};
use advmoe_model::MoeNet;
use burn::module::Module as _;
use burn::tensor::Device;
use web_time::Instant;

/// What the UI asks of the worker.
#[derive(Debug, Clone)]
pub enum Command {
    /// Build the dataset and the model and start training (replaces any current run).
    Start(Box<RunConfig>, RunOptions),
    /// Stop taking steps; the run stays in memory.
    Pause,
    /// Continue a paused run.
    Resume,
    /// End the run early; its model stays available.
    Stop,
    /// Load a run checkpoint (written by "Save checkpoint" or `advmoe train`) from a folder, in
    /// place of any current run, paused at its step.
    Load(PathBuf, RunOptions),
    /// Write a resumable checkpoint of the current run (model, optimiser state, metrics) into a
    /// folder; `advmoe train --resume DIR` and `advmoe eval --model DIR` read it.
    Save(PathBuf),
}

/// How the worker runs a training.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RunOptions {
    /// Train on Burn's CPU backend instead of the shared GPU device.
    pub on_cpu: bool,
    /// At each evaluation also measure robust accuracy and router robustness (PGD-10 at
    /// 8/255) on this many test images; 0 turns it off.
    pub robust_images: usize,
}

/// A model that training produced.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    /// Its run's configuration.
    pub config: RunConfig,
    /// The model (on the training device).
    pub model: MoeNet,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Training wall-clock seconds.
    pub train_secs: f64,
}

/// What the worker reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A run was built and is starting.
    Started {
        /// Steps it will take.
        total_steps: usize,
        /// Steps already taken (a loaded checkpoint's).
        step: usize,
        /// Evaluations already made (a loaded checkpoint's).
        history: Vec<EvalReport>,
        /// Names of the loss terms (the first is the training loss).
        loss_terms: Vec<&'static str>,
    },
    /// Steps were taken.
    Progress {
        /// Steps done so far.
        step: usize,
        /// Training loss of each new step, in order.
        losses: Vec<f64>,
        /// Training throughput over the last chunk.
        steps_per_sec: f64,
    },
    /// An evaluation finished.
    Eval(EvalReport),
    /// The robustness measured with an evaluation (see [`RunOptions::robust_images`]).
    Robust {
        /// Step of the evaluation.
        step: usize,
        /// What was measured.
        report: Box<RobustReport>,
    },
    /// The run changed state (paused, resumed, stopped, finished).
    State(RunState),
    /// A checkpoint was written into this folder.
    Saved(PathBuf),
    /// The run ended (finished or stopped) and this is its model, for the other views.
    Trained(Box<TrainedModel>),
    /// Something failed; the message is for the user.
    Error(String),
}

/// Steps per chunk between looks at the command queue.
const CHUNK_STEPS: usize = 5;

/// The UI's handle on a worker thread that takes commands `C` and reports events `E`.
pub struct Handle<C, E> {
    commands: Sender<C>,
    events: Receiver<E>,
}

/// A worker's way back to the UI: every event wakes the UI.
pub struct Outbox<E> {
    events: Sender<E>,
    wake: Box<dyn Fn() + Send>,
}

impl<E> Outbox<E> {
    /// Send an event and wake the UI; `false` when the UI is gone.
    pub fn send(&self, event: E) -> bool {
        let delivered = self.events.send(event).is_ok();
        (self.wake)();
        delivered
    }
}

impl<C: Send + 'static, E: Send + 'static> Handle<C, E> {
    /// Run `body` on a new thread called `name`. `wake` is called after every event (the app
    /// passes `egui::Context::request_repaint`).
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn spawn(
        name: &str,
        wake: impl Fn() + Send + 'static,
        body: impl FnOnce(Receiver<C>, Outbox<E>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (commands, command_rx) = channel();
        let (event_tx, events) = channel();
        let outbox = Outbox {
            events: event_tx,
            wake: Box::new(wake),
        };
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(command_rx, outbox))?;
        Ok(Self { commands, events })
    }

    /// Send a command; `false` when the worker is gone.
    pub fn send(&self, command: C) -> bool {
        self.commands.send(command).is_ok()
    }

    /// Every event that arrived since the last call.
    pub fn drain(&self) -> Vec<E> {
        self.events.try_iter().collect()
    }
}

/// Run `work`, turning a panic inside it (a failed or lost GPU device, a bug) into an error
/// message instead of a dead worker, so no panic reaches the user.
pub fn guarded<T>(what: &str, work: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match std::panic::catch_unwind(AssertUnwindSafe(work)) {
        Ok(result) => result,
        Err(payload) => {
            let detail = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("no detail");
            Err(format!(
                "{what} failed unexpectedly ({detail}). If the GPU device was lost, restart \
                 the app; saved models and checkpoints are unaffected"
            ))
        }
    }
}

/// The training worker.
pub type Worker = Handle<Command, Event>;

/// Spawn the training worker ("advmoe-engine") on `device`.
///
/// # Errors
/// If the thread cannot be spawned.
pub fn spawn_training(device: Device, wake: impl Fn() + Send + 'static) -> std::io::Result<Worker> {
    Handle::spawn("advmoe-engine", wake, move |commands, events| {
        worker_loop(&device, &commands, &events);
    })
}

fn worker_loop(device: &Device, commands: &Receiver<Command>, events: &Outbox<Event>) {
    let send = |event: Event| events.send(event);
    let cpu = Device::flex();
    let mut run: Option<Run> = None;
    let mut robust_images = 0;
    loop {
        let running = run.as_ref().is_some_and(|r| r.state() == RunState::Running);
        // Block while idle; poll between chunks while running.
        let command = if running {
            match commands.try_recv() {
                Ok(command) => Some(command),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => return,
            }
        } else {
            match commands.recv() {
                Ok(command) => Some(command),
                Err(_) => return,
            }
        };
        if let Some(command) = command {
            match command {
                Command::Start(_, options) | Command::Load(_, options) => {
                    // A run replaced mid-way still hands its model to the library.
                    if let Some(old) = run.take().filter(|r| {
                        r.progress().step > 0
                            && matches!(r.state(), RunState::Running | RunState::Paused)
                    }) {
                        send(Event::Trained(Box::new(trained(&old))));
                    }
                    robust_images = options.robust_images;
                    let device = if options.on_cpu { &cpu } else { device };
                    let built = match command {
                        Command::Start(config, _) => {
                            guarded("building the run", || build_run(*config, device))
                        }
                        Command::Load(dir, _) => {
                            guarded("loading the checkpoint", || load_run(&dir, device))
                        }
                        _ => continue,
                    };
                    match built {
                        Ok(new_run) => {
                            let started = Event::Started {
                                total_steps: new_run.progress().total_steps,
                                step: new_run.progress().step,
                                history: new_run.history().to_vec(),
                                loss_terms: new_run.loss_terms().to_vec(),
                            };
                            let state = new_run.state();
                            if !send(started) || !send(Event::State(state)) {
                                return;
                            }
                            if state == RunState::Finished {
                                send(Event::Trained(Box::new(trained(&new_run))));
                            }
                            run = Some(new_run);
                        }
                        Err(message) => {
                            send(Event::Error(message));
                        }
                    }
                }
                Command::Save(dir) => {
                    let event = match run.as_mut() {
                        Some(run) => match guarded("saving", || {
                            run.save_checkpoint(&dir)
                                .map_err(|e| format!("saving to {}: {e:#}", dir.display()))
                        }) {
                            Ok(()) => Event::Saved(dir),
                            Err(message) => Event::Error(message),
                        },
                        None => Event::Error("there is no trained model to save yet".into()),
                    };
                    send(event);
                }
                Command::Pause | Command::Resume | Command::Stop => {
                    if let Some(active) = run.as_mut() {
                        match command {
                            Command::Pause => active.pause(),
                            Command::Resume => active.resume(),
                            _ => active.stop(),
                        }
                        send(Event::State(active.state()));
                        if active.state() == RunState::Stopped {
                            send(Event::Trained(Box::new(trained(active))));
                        }
                    }
                }
            }
            continue;
        }
        let Some(active) = run.as_mut() else {
            continue;
        };
        if let Err(message) = guarded("training", || train_chunk(active, robust_images, &send)) {
            send(Event::Error(message));
            send(Event::State(RunState::Failed));
            run = None;
        }
    }
}

fn trained(run: &Run) -> TrainedModel {
    TrainedModel {
        config: run.config().clone(),
        model: run.model().clone(),
        steps: run.progress().step,
        train_secs: run.progress().train_secs,
    }
}

fn build_run(mut config: RunConfig, device: &Device) -> Result<Run, String> {
    let data = advmoe_data::load(&config.data).map_err(|e| format!("dataset: {e}"))?;
    config.fit_to(&data);
    config
        .validate()
        .map_err(|e| format!("invalid setup: {e}"))?;
    Run::new(config, Arc::new(data), device).map_err(|e| format!("{e:#}"))
}

fn load_run(dir: &std::path::Path, device: &Device) -> Result<Run, String> {
    let config_path = dir.join("config.json");
    let bytes = std::fs::read(&config_path)
        .map_err(|e| format!("reading {}: {e}", config_path.display()))?;
    let config: RunConfig = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a run configuration: {e}", config_path.display()))?;
    let data = advmoe_data::load(&config.data).map_err(|e| format!("dataset: {e}"))?;
    let mut run = Run::resume_from(dir, Arc::new(data), device)
        .map_err(|e| format!("loading the checkpoint in {}: {e:#}", dir.display()))?;
    run.pause();
    Ok(run)
}

/// Take one chunk of steps, report the losses, evaluate when due (with `robust_images` > 0,
/// the robustness too).
fn train_chunk(
    run: &mut Run,
    robust_images: usize,
    send: &dyn Fn(Event) -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    // Stop at the next evaluation step, so none is skipped.
    let eval_every = run.config().train.eval_every.max(1);
    let until_eval = eval_every - run.progress().step % eval_every;
    let taken = run
        .run_chunk(CHUNK_STEPS.min(until_eval))
        .map_err(|e| format!("{e:#}"))?;
    let losses = run.drain_losses().map_err(|e| format!("{e:#}"))?;
    let secs = start.elapsed().as_secs_f64().max(1e-9);
    send(Event::Progress {
        step: run.progress().step,
        losses,
        steps_per_sec: taken as f64 / secs,
    });
    if run.eval_due() {
        let report = run.evaluate().map_err(|e| format!("{e:#}"))?;
        let step = report.step;
        send(Event::Eval(report));
        if robust_images > 0 {
            let options = RobustOptions {
                limit: robust_images,
                ..RobustOptions::default()
            };
            let device = run
                .model()
                .devices()
                .first()
                .cloned()
                .ok_or("the model has no device")?;
            let report = evaluate_robust(
                run.model(),
                &run.dataset().test,
                &options,
                &device,
                &mut |_, _| {},
            )
            .map_err(|e| format!("measuring robustness: {e}"))?;
            send(Event::Robust {
                step,
                report: Box::new(report),
            });
        }
    }
    if run.state() != RunState::Running {
        send(Event::State(run.state()));
        if run.state() == RunState::Finished {
            send(Event::Trained(Box::new(trained(run))));
        }
    }
    Ok(())
}
