//! The training worker ("advmoe-engine"): owns the current [`Run`], takes [`Command`]s from
//! the UI and reports [`Event`]s. It drives the run with the engine's `advance` in chunks of a
//! few steps and looks at its command queue between chunks; on the web it yields to the page
//! there too, so the page keeps drawing. The task machinery is in `task`, the platform's side
//! in `platform`.

use std::path::PathBuf;

use advmoe_core::EvalReport;
use advmoe_data::DataFiles;
pub use advmoe_engine::{CheckpointSource, DataLoad, NamedFiles as Files};
use advmoe_engine::{Recovery, RobustReport, Run, RunConfig, RunState};
use advmoe_model::MoeNet;
use advmoe_model::readback::read_f32;
use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{AppResult, Context as _};
use crate::gpu::{self, ComputeDevice};
use crate::platform::{self, guarded, yield_now};
use crate::task::{Gone, Handle, Inbox, Outbox};

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
    /// Continue the run that failed ([`Event::Lost`]) from the copy kept in memory: on the CPU
    /// backend, or on a GPU: natively the device it trained on again (the window draws with
    /// it, so had it been lost the app could not draw), on the web a new WebGPU device (a lost
    /// one cannot be used again). On the web the whole app moves to the device chosen
    /// ([`Event::Moved`]).
    Recover {
        /// Continue on the CPU.
        on_cpu: bool,
    },
}

/// How the worker runs a training.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunOptions {
    /// Train on Burn's CPU backend instead of the shared GPU device.
    pub on_cpu: bool,
    /// At each evaluation also measure robust accuracy and router robustness (PGD-10 at
    /// 8/255) on this many test images; 0 turns it off.
    pub robust_images: usize,
    /// Dataset files the user handed over (picked or dropped), read before the disk.
    pub files: DataFiles,
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
        /// Steps taken in this chunk.
        chunk_steps: usize,
        /// Seconds this chunk's steps took, their loss readback included (its evaluation not).
        chunk_secs: f64,
    },
    /// A NaN or infinite loss was recovered from: the run went back to an earlier step.
    Recovered(Recovery),
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
    /// Something failed; the message is for the user (an [`crate::error::AppError`],
    /// formatted).
    Error(String),
    /// Training failed (a lost GPU device, say) and the run is gone from its device; a copy of
    /// it made at its last evaluation is kept in memory ([`Command::Recover`]).
    Lost {
        /// What failed, for the user.
        reason: String,
        /// The step the kept copy is at.
        kept_step: usize,
    },
    /// A copy of the run at this step is kept in memory, to continue from if its device fails.
    Kept(usize),
    /// The worker now trains on this device, in place of one that was lost (web): the app's
    /// other work should move there too.
    Moved(Box<ComputeDevice>),
}

/// A run's checkpoint files, kept in memory at each evaluation (and when it starts), to continue
/// from when its device fails (a lost device fails the next readback; natively a wgpu error
/// inside Burn may panic instead, which the worker catches); and the options it ran with.
struct Kept {
    files: Files,
    step: usize,
    options: RunOptions,
}

/// Read `run`'s checkpoint back to the host (one readback of weights and optimiser state).
async fn keep(run: &mut Run, options: &RunOptions) -> AppResult<Kept> {
    let files = run
        .checkpoint_files()
        .await
        .context(|| "keeping a copy of the run in memory".to_string())?;
    Ok(Kept {
        files: files
            .into_iter()
            .map(|(name, bytes)| (name.to_string(), bytes))
            .collect(),
        step: run.progress().step,
        options: options.clone(),
    })
}

/// Steps per chunk between looks at the command queue.
const CHUNK_STEPS: usize = 5;

/// The training worker.
pub type Worker = Handle<Command, Event>;

/// Spawn the training worker ("advmoe-engine") on `device`.
///
/// # Errors
/// If the thread cannot be spawned.
pub fn spawn_training(device: Device, wake: impl Fn() + Send + 'static) -> std::io::Result<Worker> {
    Handle::spawn("advmoe-engine", wake, move |commands, events| async move {
        worker_loop(device, &commands, &events).await;
    })
}

async fn worker_loop(mut device: Device, commands: &Inbox<Command>, events: &Outbox<Event>) {
    let send = |event: Event| events.send(event);
    let cpu = Device::flex();
    let mut run: Option<Run> = None;
    let mut kept: Option<Kept> = None;
    let mut options = RunOptions::default();
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
            let (command, recovering) = match command {
                Command::Recover { on_cpu } => match &kept {
                    Some(copy) => {
                        if platform::WEB {
                            match replacement(on_cpu).await {
                                Ok(compute) => {
                                    device = compute.device.clone();
                                    send(Event::Moved(Box::new(compute)));
                                }
                                Err(reason) => {
                                    send(Event::Error(reason));
                                    // The copy is still there: offer it again.
                                    send(Event::Lost {
                                        reason: "no new device".into(),
                                        kept_step: copy.step,
                                    });
                                    continue;
                                }
                            }
                        }
                        (
                            Command::Load(
                                CheckpointSource::Files(copy.files.clone()),
                                RunOptions {
                                    on_cpu,
                                    ..copy.options.clone()
                                },
                            ),
                            true,
                        )
                    }
                    None => {
                        send(Event::Error("there is no copy of a run to continue".into()));
                        continue;
                    }
                },
                command => (command, false),
            };
            match command {
                Command::Start(..) | Command::Load(..) => {
                    // A run replaced mid-way still hands its model to the library.
                    if let Some(old) = run.take().filter(|r| {
                        r.progress().step > 0
                            && matches!(r.state(), RunState::Running | RunState::Paused)
                    }) {
                        send(Event::Trained(Box::new(trained(&old))));
                    }
                    let pick = |options: &RunOptions| if options.on_cpu { &cpu } else { &device };
                    let built = match command {
                        Command::Start(config, new_options) => {
                            options = new_options;
                            guarded("building the run", async {
                                build_run(*config, &options, pick(&options))
                            })
                            .await
                        }
                        Command::Load(source, new_options) => {
                            options = new_options;
                            guarded("loading the checkpoint", async {
                                load_run(&source, &options, pick(&options))
                            })
                            .await
                        }
                        _ => continue,
                    };
                    match built {
                        Ok(mut new_run) => {
                            if recovering {
                                // The user asked to continue: no need to press Resume too.
                                new_run.resume();
                            }
                            kept = guarded("keeping a copy", keep(&mut new_run, &options))
                                .await
                                .ok();
                            let started = Event::Started {
                                total_steps: new_run.progress().total_steps,
                                step: new_run.progress().step,
                                history: new_run.history().to_vec(),
                                loss_terms: new_run.loss_terms().to_vec(),
                                data: new_run.data_load(),
                            };
                            let state = new_run.state();
                            if !send(started) || !send(Event::State(state)) {
                                return;
                            }
                            if let Some(copy) = &kept {
                                send(Event::Kept(copy.step));
                            }
                            if state == RunState::Finished {
                                send(Event::Trained(Box::new(trained(&new_run))));
                            }
                            run = Some(new_run);
                        }
                        Err(error) => {
                            send(Event::Error(error.to_string()));
                        }
                    }
                }
                Command::Save(target) => {
                    let event = match run.as_mut() {
                        Some(run) => match guarded("saving", save(run, &target)).await {
                            Ok(saved) => Event::Saved(saved),
                            Err(error) => Event::Error(error.to_string()),
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
                // Turned into a load above.
                Command::Recover { .. } => {}
            }
            continue;
        }
        let Some(active) = run.as_mut() else {
            continue;
        };
        let chunk = guarded("training", train_chunk(active, &send)).await;
        match chunk {
            Ok(true) => {
                if let Ok(copy) = guarded("keeping a copy", keep(active, &options)).await {
                    send(Event::Kept(copy.step));
                    kept = Some(copy);
                }
            }
            Ok(_) => {}
            Err(error) => {
                // The device (or a bug) failing under the run: offer the copy. An error the run
                // reports itself (NaN, say) is shown as one, unless the device it ran on no longer
                // computes: a lost WebGPU device can hand back NaN before it reports the loss.
                let reason = if error.is_device_failure() {
                    Some(error.to_string())
                } else if !options.on_cpu && !device_works(&device).await {
                    Some(format!("the GPU device stopped working ({error})"))
                } else {
                    None
                };
                match (&kept, reason) {
                    (Some(copy), Some(reason)) => send(Event::Lost {
                        reason,
                        kept_step: copy.step,
                    }),
                    _ => send(Event::Error(error.to_string())),
                };
                send(Event::State(RunState::Failed));
                run = None;
            }
        }
        yield_now().await;
    }
}

/// Whether `device` still computes: a few values written to it read back the same. (A lost
/// device fails the readback, or, in a browser before it reports the loss, returns other values.)
async fn device_works(device: &Device) -> bool {
    let values = vec![1.0f32, 2.0, 3.0, 4.0];
    let check = async {
        let t = Tensor::<1>::from_data(TensorData::new(values.clone(), [values.len()]), device);
        Ok(read_f32(t, "a device check").await.ok())
    };
    matches!(guarded("checking the device", check).await, Ok(Some(read)) if read == values)
}

/// Where a run continues on the web after its WebGPU device was lost: Burn's CPU backend, or a
/// new WebGPU device.
async fn replacement(on_cpu: bool) -> Result<ComputeDevice, String> {
    if on_cpu {
        Ok(ComputeDevice::cpu(
            platform::CPU_LABEL,
            "the WebGPU device was lost, and training and attacks continue on Burn's CPU \
             backend compiled to WebAssembly",
        ))
    } else {
        gpu::acquire()
            .await
            .map_err(|e| format!("could not get a new WebGPU device: {e}"))
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
fn build_run(mut config: RunConfig, options: &RunOptions, device: &Device) -> AppResult<Run> {
    config.train.robust_eval_size = options.robust_images;
    Ok(Run::from_config(config, &options.files, device)?)
}

/// Load a run checkpoint, paused at its step.
fn load_run(source: &CheckpointSource, options: &RunOptions, device: &Device) -> AppResult<Run> {
    let mut run = Run::from_checkpoint(source, &options.files, device)
        .context(|| format!("loading the checkpoint in {}", source.origin().display()))?;
    run.set_robust_eval_size(options.robust_images);
    run.pause();
    Ok(run)
}

/// Save `run` to `target`; returns where, in words.
async fn save(run: &mut Run, target: &SaveTarget) -> AppResult<String> {
    match target {
        SaveTarget::Folder(dir) => {
            run.save_checkpoint(dir)
                .await
                .context(|| format!("saving to {}", dir.display()))?;
            Ok(dir.display().to_string())
        }
        SaveTarget::Download => {
            let files = run
                .model_files()
                .await
                .context(|| "saving the model".to_string())?;
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
            platform::offer_downloads(&named)?;
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
/// the evaluation and the robustness measured with it. Returns whether it evaluated.
async fn train_chunk(run: &mut Run, send: &dyn Fn(Event) -> bool) -> AppResult<bool> {
    let advance = run.advance(CHUNK_STEPS, &mut |_| true).await?;
    if let Some(recovery) = advance.recovered {
        send(Event::Recovered(recovery));
    }
    send(Event::Progress {
        step: run.progress().step,
        losses: advance.losses,
        chunk_steps: advance.steps,
        chunk_secs: advance.secs,
    });
    let evaluated = advance.eval.is_some();
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
    Ok(evaluated)
}
