//! The training worker: one named native thread owns the engine's `Run` (all Burn work for a run
//! happens on it), takes [`Command`]s from the UI and sends back [`Event`]s. It never blocks
//! the frame: the UI drains events in `App::logic` and the worker wakes it with a callback.
//!
//! TODO(#6): on the web the same loop runs as a cooperative task instead of a thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use advmoe_core::EvalReport;
use advmoe_engine::{Run, RunConfig, RunState};
use burn::tensor::Device;
use web_time::Instant;

/// What the UI asks of the worker.
#[derive(Debug, Clone)]
pub enum Command {
    /// Build the dataset and the model and start training (replaces any current run).
    Start(Box<RunConfig>),
    /// Stop taking steps; the run stays in memory.
    Pause,
    /// Continue a paused run.
    Resume,
    /// End the run early; its model stays available.
    Stop,
    /// Write a resumable checkpoint of the current run (model, optimiser state, metrics) into a
    /// folder; `advmoe train --resume DIR` and `advmoe eval --model DIR` read it.
    Save(PathBuf),
}

/// What the worker reports.
#[derive(Debug, Clone)]
pub enum Event {
    /// A run was built and is starting.
    Started {
        /// Steps it will take.
        total_steps: usize,
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
    /// The run changed state (paused, resumed, stopped, finished).
    State(RunState),
    /// A checkpoint was written into this folder.
    Saved(PathBuf),
    /// Something failed; the message is for the user.
    Error(String),
}

/// Steps per chunk between looks at the command queue.
const CHUNK_STEPS: usize = 5;

/// The UI's handle on the worker thread.
pub struct Worker {
    commands: Sender<Command>,
    events: Receiver<Event>,
}

impl Worker {
    /// Spawn the worker on its own named thread. `wake` is called after every event (the app
    /// passes `egui::Context::request_repaint`).
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn spawn(device: Device, wake: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let (commands, command_rx) = channel();
        let (event_tx, events) = channel();
        std::thread::Builder::new()
            .name("advmoe-engine".into())
            .spawn(move || worker_loop(&device, &command_rx, &event_tx, &wake))?;
        Ok(Self { commands, events })
    }

    /// Send a command; `false` when the worker is gone.
    pub fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    /// Every event that arrived since the last call.
    pub fn drain(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }
}

fn worker_loop(
    device: &Device,
    commands: &Receiver<Command>,
    events: &Sender<Event>,
    wake: &dyn Fn(),
) {
    let send = |event: Event| {
        let delivered = events.send(event).is_ok();
        wake();
        delivered
    };
    let mut run: Option<Run> = None;
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
                Command::Start(config) => {
                    run = None;
                    match build_run(*config, device) {
                        Ok(new_run) => {
                            let total_steps = new_run.progress().total_steps;
                            let loss_terms = new_run.loss_terms().to_vec();
                            run = Some(new_run);
                            if !send(Event::Started {
                                total_steps,
                                loss_terms,
                            }) {
                                return;
                            }
                        }
                        Err(message) => {
                            send(Event::Error(message));
                        }
                    }
                }
                Command::Save(dir) => {
                    let event = match run.as_mut() {
                        Some(run) => match run.save_checkpoint(&dir) {
                            Ok(()) => Event::Saved(dir),
                            Err(e) => Event::Error(format!("saving to {}: {e:#}", dir.display())),
                        },
                        None => Event::Error("there is no trained model to save yet".into()),
                    };
                    send(event);
                }
                Command::Pause | Command::Resume | Command::Stop => {
                    if let Some(run) = run.as_mut() {
                        match command {
                            Command::Pause => run.pause(),
                            Command::Resume => run.resume(),
                            _ => run.stop(),
                        }
                        send(Event::State(run.state()));
                    }
                }
            }
            continue;
        }
        let Some(active) = run.as_mut() else {
            continue;
        };
        if let Err(message) = train_chunk(active, &send) {
            send(Event::Error(message));
            send(Event::State(RunState::Failed));
            run = None;
        }
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

/// Take one chunk of steps, report the losses, evaluate when due.
fn train_chunk(run: &mut Run, send: &dyn Fn(Event) -> bool) -> Result<(), String> {
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
        send(Event::Eval(report));
    }
    if run.state() != RunState::Running {
        send(Event::State(run.state()));
    }
    Ok(())
}
