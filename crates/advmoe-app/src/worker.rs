//! The training worker and the task machinery both workers share.
//!
//! A worker owns all Burn work of its kind, takes commands from the UI and sends back events;
//! it never blocks the frame (the UI drains events in `App::logic` and the worker wakes it).
//! Its body is one `async` function, because the engine's readbacks are async:
//! - natively it runs on a named thread of its own, driven by `block_on` (Burn's streams are
//!   per thread, so all of a worker's work stays on that thread);
//! - on the web it runs as a cooperative task on the page's event loop (`spawn_local`): it
//!   yields at every readback and between chunks of steps, so the page keeps drawing.

use std::future::Future;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};

use advmoe_core::EvalReport;
pub use advmoe_engine::{CheckpointSource, DataLoad, NamedFiles as Files};
use advmoe_engine::{RobustReport, Run, RunConfig, RunState};
use advmoe_model::MoeNet;
use burn::tensor::Device;

/// Where "Save checkpoint" writes.
#[derive(Debug, Clone)]
pub enum SaveTarget {
    /// Into this folder (native).
    Folder(PathBuf),
    /// As browser downloads: the model as a `<stem>.safetensors` + `<stem>.json` pair, which
    /// the app (web or native) and `advmoe eval --model` open.
    Download,
}

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
    /// Load a run checkpoint (written by "Save checkpoint" or `advmoe train`), in place of any
    /// current run, paused at its step.
    Load(CheckpointSource, RunOptions),
    /// Save the current run: natively a resumable checkpoint (model, optimiser state, metrics)
    /// that `advmoe train --resume DIR` and `advmoe eval --model DIR` read; on the web the
    /// model as a download.
    Save(SaveTarget),
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
        /// How its dataset loaded.
        data: DataLoad,
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
    /// A checkpoint was saved; where, in words.
    Saved(String),
    /// The run ended (finished or stopped) and this is its model, for the other views.
    Trained(Box<TrainedModel>),
    /// Something failed; the message is for the user.
    Error(String),
}

/// Steps per chunk between looks at the command queue.
const CHUNK_STEPS: usize = 5;

/// The UI's handle on a worker that takes commands `C` and reports events `E`.
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

/// A worker's command queue.
pub struct Inbox<C> {
    commands: Receiver<C>,
}

/// The UI dropped its handle: the worker should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl<C> Inbox<C> {
    /// The next command, waiting for one (natively by blocking the worker's own thread, on the
    /// web by sleeping between looks); `None` when the UI is gone.
    pub async fn next(&self) -> Option<C> {
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.commands.recv().ok()
        }
        #[cfg(target_arch = "wasm32")]
        loop {
            match self.commands.try_recv() {
                Ok(command) => return Some(command),
                Err(TryRecvError::Empty) => crate::web::sleep_ms(15).await,
                Err(TryRecvError::Disconnected) => return None,
            }
        }
    }

    /// A command if one is queued.
    ///
    /// # Errors
    /// [`Gone`] when the UI is gone.
    pub fn try_next(&self) -> Result<Option<C>, Gone> {
        match self.commands.try_recv() {
            Ok(command) => Ok(Some(command)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(Gone),
        }
    }

    /// Every command queued now.
    pub fn drain(&self) -> Vec<C> {
        self.commands.try_iter().collect()
    }
}

/// Let the page draw: on the web, return to the browser's event loop once; natively nothing
/// (the worker has its own thread).
pub async fn yield_now() {
    #[cfg(target_arch = "wasm32")]
    crate::web::sleep_ms(0).await;
}

impl<C: Send + 'static, E: Send + 'static> Handle<C, E> {
    /// Start `body` as a worker called `name`: natively on a new thread of that name, on the
    /// web as a task on the page's event loop. `wake` is called after every event (the app
    /// passes `egui::Context::request_repaint`).
    ///
    /// # Errors
    /// If the thread cannot be spawned.
    pub fn spawn<F>(
        name: &str,
        wake: impl Fn() + Send + 'static,
        body: impl FnOnce(Inbox<C>, Outbox<E>) -> F + Send + 'static,
    ) -> std::io::Result<Self>
    where
        F: Future<Output = ()> + 'static,
    {
        let (commands, command_rx) = channel();
        let (event_tx, events) = channel();
        let outbox = Outbox {
            events: event_tx,
            wake: Box::new(wake),
        };
        let inbox = Inbox {
            commands: command_rx,
        };
        #[cfg(not(target_arch = "wasm32"))]
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || advmoe_engine::block_on(body(inbox, outbox)))?;
        #[cfg(target_arch = "wasm32")]
        {
            let _ = name;
            wasm_bindgen_futures::spawn_local(body(inbox, outbox));
        }
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
/// message instead of a dead worker, so no panic reaches the user. On the web a panic aborts
/// the module instead (wasm has no unwinding); the page's panic hook then shows it.
pub async fn guarded<T>(
    what: &str,
    work: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    #[cfg(not(target_arch = "wasm32"))]
    {
        use futures_lite::FutureExt as _;
        match std::panic::AssertUnwindSafe(work).catch_unwind().await {
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
    #[cfg(target_arch = "wasm32")]
    {
        let _ = what;
        work.await
    }
}

/// The training worker.
pub type Worker = Handle<Command, Event>;

/// Spawn the training worker ("advmoe-engine") on `device`.
///
/// # Errors
/// If the thread cannot be spawned.
pub fn spawn_training(device: Device, wake: impl Fn() + Send + 'static) -> std::io::Result<Worker> {
    Handle::spawn("advmoe-engine", wake, move |commands, events| async move {
        worker_loop(&device, &commands, &events).await;
    })
}

async fn worker_loop(device: &Device, commands: &Inbox<Command>, events: &Outbox<Event>) {
    let send = |event: Event| events.send(event);
    let cpu = Device::flex();
    let mut run: Option<Run> = None;
    loop {
        let running = run.as_ref().is_some_and(|r| r.state() == RunState::Running);
        // Wait while idle; look between chunks while running.
        let command = if running {
            match commands.try_next() {
                Ok(command) => command,
                Err(Gone) => return,
            }
        } else {
            match commands.next().await {
                Some(command) => Some(command),
                None => return,
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
                    let device = if options.on_cpu { &cpu } else { device };
                    let built = match command {
                        Command::Start(config, _) => {
                            guarded("building the run", async {
                                build_run(*config, options, device)
                            })
                            .await
                        }
                        Command::Load(source, _) => {
                            guarded("loading the checkpoint", async {
                                load_run(&source, options, device)
                            })
                            .await
                        }
                        _ => continue,
                    };
                    match built {
                        Ok((new_run, data)) => {
                            let started = Event::Started {
                                total_steps: new_run.progress().total_steps,
                                step: new_run.progress().step,
                                history: new_run.history().to_vec(),
                                loss_terms: new_run.loss_terms().to_vec(),
                                data,
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
                Command::Save(target) => {
                    let event = match run.as_mut() {
                        Some(run) => match guarded("saving", save(run, &target)).await {
                            Ok(saved) => Event::Saved(saved),
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
        if let Err(message) = guarded("training", train_chunk(active, &send)).await {
            send(Event::Error(message));
            send(Event::State(RunState::Failed));
            run = None;
        }
        yield_now().await;
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

/// Build a run from its config (the engine loads and fits the data), measuring robustness at
/// each evaluation as the options ask.
fn build_run(
    mut config: RunConfig,
    options: RunOptions,
    device: &Device,
) -> Result<(Run, DataLoad), String> {
    config.train.robust_eval_size = options.robust_images;
    let run = Run::from_config(config, device).map_err(|e| format!("{e:#}"))?;
    let load = run.data_load();
    Ok((run, load))
}

/// Load a run checkpoint, paused at its step.
fn load_run(
    source: &CheckpointSource,
    options: RunOptions,
    device: &Device,
) -> Result<(Run, DataLoad), String> {
    let mut run = Run::from_checkpoint(source, device).map_err(|e| {
        format!(
            "loading the checkpoint in {}: {e:#}",
            source.origin().display()
        )
    })?;
    run.set_robust_eval_size(options.robust_images);
    run.pause();
    let load = run.data_load();
    Ok((run, load))
}

/// Save `run` to `target`; returns where, in words.
async fn save(run: &mut Run, target: &SaveTarget) -> Result<String, String> {
    match target {
        SaveTarget::Folder(dir) => {
            run.save_checkpoint(dir)
                .await
                .map_err(|e| format!("saving to {}: {e:#}", dir.display()))?;
            Ok(dir.display().to_string())
        }
        SaveTarget::Download => {
            let files = run
                .model_files()
                .await
                .map_err(|e| format!("saving the model: {e:#}"))?;
            let stem = download_stem(run.config(), run.progress().step);
            let named: Files = files
                .into_iter()
                .map(|(name, bytes)| {
                    let ext = if name.ends_with(".json") {
                        "json"
                    } else {
                        "safetensors"
                    };
                    (format!("{stem}.{ext}"), bytes)
                })
                .collect();
            crate::files::offer_downloads(&named)?;
            Ok(format!("downloads {stem}.safetensors and {stem}.json"))
        }
    }
}

/// File stem of a downloaded model, e.g. `advmoe-lab-advmoe-n2-step200`.
pub fn download_stem(config: &RunConfig, step: usize) -> String {
    format!(
        "advmoe-lab-{}-n{}-step{step}",
        config.train.method, config.model.num_experts
    )
}

/// Take one chunk of steps (the engine stops at the next evaluation), report the losses,
/// the evaluation and the robustness measured with it.
async fn train_chunk(run: &mut Run, send: &dyn Fn(Event) -> bool) -> Result<(), String> {
    let advance = run
        .advance(CHUNK_STEPS, &mut |_| true)
        .await
        .map_err(|e| format!("{e:#}"))?;
    send(Event::Progress {
        step: run.progress().step,
        losses: advance.losses,
        steps_per_sec: advance.steps as f64 / advance.secs.max(1e-9),
    });
    if let Some(report) = advance.eval {
        let step = report.step;
        send(Event::Eval(report));
        if let Some(report) = advance.robust {
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
