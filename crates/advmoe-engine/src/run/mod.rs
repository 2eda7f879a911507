//! A training run, the one lifecycle every driver shares (the CLI, the app's worker, the
//! comparison, the benchmark, the tests): build it from a config ([`Run::from_config`]: load
//! the data, fit the model to it, validate, build) or from a checkpoint
//! ([`Run::from_checkpoint`]), then [`Run::advance`] it to the next evaluation, which returns
//! the losses, the clean evaluation and, when the config asks, the robust one. Pause, resume,
//! stop, checkpoint and resume exactly.

mod config;
mod files;

use std::path::PathBuf;
use std::sync::Arc;

use advmoe_core::{AttackSpec, DatasetSpec, EvalReport, MethodKind, Rng, RouterKind, SpecError};
use advmoe_data::{DataError, DataFiles, Dataset, Loader};
use advmoe_model::MoeNet;
use advmoe_model::checkpoint::CheckpointError;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use config::{RunConfig, ShapeMismatch};
pub use files::{
    COMMIT_FILE, CheckpointSource, NamedFiles, load_model_bytes, load_model_dir, load_model_path,
    write_files,
};

use crate::eval::{EvalError, EvalOptions, evaluate};
use crate::method::{Method, MethodConfig, Optimizers, StepInput, make_method};
use crate::optim::{Optimizer, OptimizerStateError};
use crate::robust::{RobustOptions, RobustReport, evaluate_robust};
use crate::tensors::{ReadbackError, read_f32, to_device};

/// Why a run cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Bad configuration.
    #[error("invalid config: {0}")]
    Spec(#[from] SpecError),
    /// The dataset could not be loaded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The model and dataset disagree.
    #[error("model and dataset disagree: {0}")]
    Shape(#[from] ShapeMismatch),
    /// A split of the dataset has no images.
    #[error("{0} has no images")]
    EmptySplit(String),
    /// A loss became NaN or infinite.
    #[error(
        "training diverged: {term} is {value} at step {step}; lower the learning rate or check the data"
    )]
    NonFinite {
        /// Which loss term.
        term: &'static str,
        /// The value.
        value: f64,
        /// The step (0-based) that produced it.
        step: usize,
    },
    /// Evaluation failed (routing or readback).
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// Reading training losses back failed.
    #[error(transparent)]
    Readback(#[from] ReadbackError),
    /// Reading or writing a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Saved optimiser state does not fit the run's optimiser.
    #[error("bad optimizer state in {path:?}: {source}")]
    OptimizerState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: OptimizerStateError,
    },
    /// A run checkpoint is inconsistent.
    #[error("bad run checkpoint {path:?}: {reason}")]
    BadCheckpoint {
        /// The folder or file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The run is not in a state that allows this.
    #[error("the run is {0:?}")]
    NotRunnable(RunState),
}

impl EngineError {
    /// Whether the device failed under the run (a readback that did not complete, as when a GPU
    /// device is lost), rather than the run itself (a diverged loss, a bad file or setting): a
    /// copy of the run taken earlier can continue on another device.
    pub fn is_device_failure(&self) -> bool {
        match self {
            Self::Readback(_) | Self::Checkpoint(CheckpointError::Readback { .. }) => true,
            Self::Eval(e) => e.is_device_failure(),
            _ => false,
        }
    }
}

/// Lifecycle of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunState {
    /// Steps may be taken.
    Running,
    /// Paused by its driver; [`Run::resume`] continues.
    Paused,
    /// Stopped early by its driver; final.
    Stopped,
    /// All steps done.
    Finished,
    /// Stopped by an error (NaN loss, routing failure).
    Failed,
}

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Steps done.
    pub step: usize,
    /// Steps in the run.
    pub total_steps: usize,
    /// Epochs over the training split.
    pub epochs: f64,
    /// Learning rate of the next step.
    pub lr: f64,
    /// Training seconds so far (excluding evaluations).
    pub train_secs: f64,
    /// Lifecycle state.
    pub state: RunState,
}

/// How a run's dataset loaded: its images (train and test) and the time reading and decoding
/// them took (on the web, in the page's one thread). Zero when the dataset was handed in.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct DataLoad {
    /// Train and test images.
    pub images: usize,
    /// Seconds to read and decode them.
    pub secs: f64,
}

/// Read and decode the dataset `spec` names, from `files` (handed over in memory, e.g. picked
/// in a browser) or the disk, timed (what [`Run::from_config`] does first; [`Run::fitted`]
/// takes its result when a driver needs the dataset before the config is final, as `advmoe
/// train --epochs` does to count steps).
///
/// # Errors
/// A dataset that cannot be read.
pub fn load_data(
    spec: &DatasetSpec,
    files: &DataFiles,
) -> Result<(Dataset, DataLoad), EngineError> {
    spec.validate()?;
    let start = now_secs();
    let data = advmoe_data::load_from(spec, files)?;
    let load = DataLoad {
        images: data.train.len() + data.test.len(),
        secs: now_secs() - start,
    };
    Ok((data, load))
}

/// What one [`Run::advance`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    /// Steps taken.
    pub steps: usize,
    /// The training loss of each, in order.
    pub losses: Vec<f64>,
    /// Seconds the steps took, loss readback included (throughput = `steps / secs`).
    pub secs: f64,
    /// The evaluation, when one was due after the last step.
    pub eval: Option<EvalReport>,
    /// With the evaluation, robustness on [`advmoe_core::TrainSpec::robust_eval_size`] test
    /// images (PGD-10 at 8/255), when that is above 0.
    pub robust: Option<RobustReport>,
    /// A NaN or infinite loss this call recovered from (its steps were undone).
    pub recovered: Option<Recovery>,
}

/// The state after the last step whose losses were read back finite: what a NaN or infinite
/// loss rolls the run back to. Tensors are shared handles, so keeping it costs one copy of the
/// weights and optimiser state at most (while a step replaces them).
#[derive(Clone)]
struct Checked {
    model: MoeNet,
    optimizers: Optimizers,
    rng: Rng,
    step: usize,
    losses_since_eval: Vec<f64>,
}

/// One recovery from a NaN or infinite loss ([`advmoe_core::TrainSpec::nan_recoveries`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recovery {
    /// The step (0-based) whose loss was not finite.
    pub step: usize,
    /// Which loss term.
    pub term: String,
    /// Its value, as text (`NaN`, `inf`).
    pub value: String,
    /// The step the run went back to (its next step is this one again, on the next batch).
    pub rolled_back_to: usize,
    /// The learning rate's factor from now on (halved at each recovery).
    pub lr_scale: f64,
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} was {} at step {}: rolled back to step {}, skipped those batches, learning rate \
             now ×{}",
            self.term, self.value, self.step, self.rolled_back_to, self.lr_scale
        )
    }
}

/// A training run.
pub struct Run {
    config: RunConfig,
    dataset: Arc<Dataset>,
    device: Device,
    model: Option<MoeNet>,
    optimizers: Optimizers,
    method: Box<dyn Method>,
    loader: Loader,
    rng: Rng,
    step: usize,
    pending: Vec<Tensor<1>>,
    pending_first_step: usize,
    losses_since_eval: Vec<f64>,
    history: Vec<EvalReport>,
    train_secs: f64,
    state: RunState,
    data_load: DataLoad,
    /// The state after the last checked steps ([`Run::drain_losses`]).
    checked: Checked,
    /// The state at the last evaluation that was finite.
    evaluated: Checked,
    lr_scale: f64,
    recoveries: Vec<Recovery>,
    /// Fault injection: the step whose batch is multiplied by NaN ([`Run::poison_batch_at`]).
    poison_at: Option<usize>,
}

/// Wall-clock seconds; `web-time` maps to `performance.now()` in a browser, where
/// `std::time` panics.
pub(crate) fn now_secs() -> f64 {
    web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Run {
    /// Build a run from its config: load the dataset it names from `files` (handed over in
    /// memory; empty for the disk alone) or the disk (timed, see [`Run::data_load`]), fit the
    /// model's input shape and classes to it, validate, build on `device` (a plain device; the
    /// run adds autodiff).
    ///
    /// # Errors
    /// A dataset that cannot be loaded, or an invalid config.
    pub fn from_config(
        config: RunConfig,
        files: &DataFiles,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let (dataset, load) = load_data(&config.data, files)?;
        Self::fitted(config, Arc::new(dataset), load, device)
    }

    /// [`Run::from_config`] with the dataset already loaded by [`load_data`]: fit the model to
    /// it, validate, build.
    ///
    /// # Errors
    /// An invalid config.
    pub fn fitted(
        mut config: RunConfig,
        dataset: Arc<Dataset>,
        load: DataLoad,
        device: &Device,
    ) -> Result<Self, EngineError> {
        config.fit_to(&dataset);
        let mut run = Self::new(config, dataset, device)?;
        run.data_load = load;
        Ok(run)
    }

    /// Start a run on `device` (a plain device; the run adds autodiff) with an already loaded
    /// dataset. The model's input shape and classes must match the dataset
    /// ([`RunConfig::fit_to`] makes them).
    ///
    /// # Errors
    /// An invalid config, a dataset that does not fit, an empty split.
    pub fn new(
        config: RunConfig,
        dataset: Arc<Dataset>,
        device: &Device,
    ) -> Result<Self, EngineError> {
        config.validate()?;
        config.check_dataset(&dataset)?;
        let m = &config.model;
        let t = &dataset.train;
        for split in [t, &dataset.test] {
            if split.is_empty() {
                return Err(EngineError::EmptySplit(split.name.clone()));
            }
        }
        let device = device.clone().autodiff();
        let model = MoeNet::new(m, config.train.seed, &device)?;
        let train = &config.train;
        let optimizer = Optimizer::new(train.optimizer, train.momentum, train.weight_decay);
        let optimizers = Optimizers {
            main: optimizer.clone(),
            router: optimizer,
        };
        let method = make_method(MethodConfig {
            kind: train.method,
            attack: train.attack.clone(),
            balance_weight: if m.is_moe() {
                config.balance_weight
            } else {
                0.0
            },
            beta: train.beta,
            alpha: train.alpha,
            router_kl_warmup: train.router_kl_warmup,
            router_lr_scale: train.router_lr_scale,
            bn_passes: train.bn_passes,
            router_objective: train.router_objective,
            image_router: m.router == RouterKind::Image,
            num_experts: m.num_experts,
        });
        let loader = Loader::new(
            t.len(),
            train.batch_size,
            train.seed,
            dataset.augmentation(config.data.augment),
        );
        let rng = Rng::stream(train.seed, 0x0072_756e);
        let checked = Checked {
            model: model.clone(),
            optimizers: optimizers.clone(),
            rng: rng.clone(),
            step: 0,
            losses_since_eval: Vec::new(),
        };
        Ok(Self {
            rng,
            config,
            dataset,
            device,
            model: Some(model),
            optimizers,
            method,
            loader,
            step: 0,
            pending: Vec::new(),
            pending_first_step: 0,
            losses_since_eval: Vec::new(),
            history: Vec::new(),
            train_secs: 0.0,
            state: RunState::Running,
            data_load: DataLoad::default(),
            evaluated: checked.clone(),
            checked,
            lr_scale: 1.0,
            recoveries: Vec::new(),
            poison_at: None,
        })
    }

    /// Measure robustness at each evaluation on this many test images from now on (0: off);
    /// the training itself does not change, so a loaded checkpoint may take another setting.
    pub fn set_robust_eval_size(&mut self, images: usize) {
        self.config.train.robust_eval_size = images;
    }

    /// How the run's dataset loaded (zero when it was handed in).
    pub fn data_load(&self) -> DataLoad {
        self.data_load
    }

    /// The config.
    pub fn config(&self) -> &RunConfig {
        &self.config
    }

    /// The dataset.
    pub fn dataset(&self) -> &Arc<Dataset> {
        &self.dataset
    }

    /// The current model (on the run's autodiff device).
    pub fn model(&self) -> &MoeNet {
        self.model
            .as_ref()
            .expect("the model is only taken during a step")
    }

    /// Replace the model, e.g. by weights loaded from a file. It must have been built for this
    /// run's spec; it is moved to the run's device.
    pub fn set_model(&mut self, model: MoeNet) {
        use burn::module::Module as _;
        self.model = Some(model.fork(&self.device));
    }

    /// Which method trains.
    pub fn method(&self) -> MethodKind {
        self.method.kind()
    }

    /// Steps done.
    pub fn step_index(&self) -> usize {
        self.step
    }

    /// Evaluations so far.
    pub fn history(&self) -> &[EvalReport] {
        &self.history
    }

    /// Lifecycle state.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// Where the run stands.
    pub fn progress(&self) -> Progress {
        Progress {
            step: self.step,
            total_steps: self.config.train.total_steps,
            epochs: self.loader.epochs(),
            lr: self.config.train.lr_at(self.step),
            train_secs: self.train_secs,
            state: self.state,
        }
    }

    /// Pause: steps are refused until [`Run::resume`].
    pub fn pause(&mut self) {
        if self.state == RunState::Running {
            self.state = RunState::Paused;
        }
    }

    /// Continue after [`Run::pause`].
    pub fn resume(&mut self) {
        if self.state == RunState::Paused {
            self.state = RunState::Running;
        }
    }

    /// Stop for good (the model stays available and can be saved).
    pub fn stop(&mut self) {
        if matches!(self.state, RunState::Running | RunState::Paused) {
            self.state = RunState::Stopped;
        }
    }

    /// Take one optimisation step. The loss stays on the device until [`Run::drain_losses`].
    pub fn step(&mut self) -> Result<(), EngineError> {
        if self.state != RunState::Running {
            return Err(EngineError::NotRunnable(self.state));
        }
        let started = now_secs();
        let host = self.loader.next_batch(&self.dataset.train);
        let mut batch = to_device(&host, self.config.model.num_classes, &self.device);
        if self.poison_at == Some(self.step) {
            self.poison_at = None;
            batch.images = batch.images * f32::NAN;
        }
        let lr = self.config.train.lr_at(self.step) * self.lr_scale;
        let model = self
            .model
            .take()
            .expect("the model is present between steps");
        let (model, loss) = self.method.step(StepInput {
            model,
            batch,
            lr,
            progress: self.step as f64 / self.config.train.total_steps.max(1) as f64,
            optimizers: &mut self.optimizers,
            rng: &mut self.rng,
        });
        self.model = Some(model);
        if self.pending.is_empty() {
            self.pending_first_step = self.step;
        }
        self.pending.push(loss);
        self.step += 1;
        if self.step >= self.config.train.total_steps {
            self.state = RunState::Finished;
        }
        self.train_secs += now_secs() - started;
        Ok(())
    }

    /// Drive the run to its next stop: take steps until an evaluation is due, the run ends or
    /// is paused, `max_steps` are taken, or `keep_going` (asked after every step with the steps
    /// taken so far in this call) says no; then read the losses back (one readback, checked for
    /// NaN/Inf) and, when an evaluation is due, evaluate on the test subset and, with
    /// [`advmoe_core::TrainSpec::robust_eval_size`] above 0, measure robustness too. A run that
    /// is not running returns at once with nothing done (and any due evaluation made).
    ///
    /// # Errors
    /// A non-finite loss (the run fails, naming the term and the step), a failed readback or
    /// evaluation.
    pub async fn advance(
        &mut self,
        max_steps: usize,
        keep_going: &mut dyn FnMut(usize) -> bool,
    ) -> Result<Advance, EngineError> {
        let started = now_secs();
        let recoveries = self.recoveries.len();
        let mut steps = 0;
        while steps < max_steps && self.state == RunState::Running {
            self.step()?;
            steps += 1;
            let go_on = keep_going(steps);
            if !go_on || self.eval_due() {
                break;
            }
        }
        let losses = self.drain_losses().await?;
        let secs = now_secs() - started;
        let (mut eval, mut robust) = (None, None);
        if self.eval_due() {
            // Training mode normalises with batch statistics, so weights can blow up with
            // finite training losses; evaluation (running statistics) is where that shows. Such
            // a state goes back to the last evaluated one.
            let diverged = match self.evaluate().await {
                Ok(report) if report.test_loss.is_finite() => {
                    self.evaluated = self.checked.clone();
                    eval = Some(report);
                    None
                }
                Ok(report) => Some(("test loss", report.test_loss)),
                Err(EngineError::Eval(EvalError::Route(_))) => Some(("router score", f64::NAN)),
                Err(e) => return Err(e),
            };
            if let Some((term, value)) = diverged {
                let evaluated = self.evaluated.clone();
                let step = self.step;
                self.roll_back(evaluated, term, value, step)?;
            }
        }
        if eval.is_some() {
            let images = self.config.train.robust_eval_size;
            if images > 0 {
                // Progress during training: a quick router attack; final figures use the
                // converged default.
                let options = RobustOptions {
                    limit: images,
                    router_attack: AttackSpec::router_progress(),
                    ..RobustOptions::default()
                };
                let model = self.model();
                let report = evaluate_robust(
                    model,
                    &self.dataset.test,
                    &options,
                    &self.device,
                    &mut |_, _| {},
                )
                .await?;
                robust = Some(report);
            }
        }
        Ok(Advance {
            steps,
            losses,
            secs,
            eval,
            robust,
            recovered: self.recoveries.get(recoveries).cloned(),
        })
    }

    /// Whether an evaluation is due (every `eval_every` steps and at the end).
    pub fn eval_due(&self) -> bool {
        self.step > 0
            && (self.step.is_multiple_of(self.config.train.eval_every)
                || self.state == RunState::Finished)
            && self.history.last().is_none_or(|h| h.step != self.step)
    }

    /// Names of the loss terms each step records (the first is the training loss).
    pub fn loss_terms(&self) -> &'static [&'static str] {
        self.method.terms()
    }

    /// Read back the losses of the steps taken since the last drain (one readback) and check
    /// every loss term. A NaN or infinite term fails the run, naming the term and the step that
    /// produced it. Returns the training loss (first term) of each step.
    pub async fn drain_losses(&mut self) -> Result<Vec<f64>, EngineError> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let terms = self.method.terms();
        let values: Vec<f64> = read_f32(
            Tensor::cat(std::mem::take(&mut self.pending), 0),
            "training losses",
        )
        .await?
        .into_iter()
        .map(f64::from)
        .collect();
        if let Some(i) = values.iter().position(|l| !l.is_finite()) {
            let (term, value) = (terms[i % terms.len()], values[i]);
            let step = self.pending_first_step + i / terms.len();
            let checked = self.checked.clone();
            self.roll_back(checked, term, value, step)?;
            return Ok(Vec::new());
        }
        let losses: Vec<f64> = values.chunks(terms.len()).map(|c| c[0]).collect();
        self.losses_since_eval.extend(&losses);
        self.checked = self.snapshot();
        Ok(losses)
    }

    /// The state to roll back to, as it is now.
    fn snapshot(&self) -> Checked {
        Checked {
            model: self.model().clone(),
            optimizers: self.optimizers.clone(),
            rng: self.rng.clone(),
            step: self.step,
            losses_since_eval: self.losses_since_eval.clone(),
        }
    }

    /// Remember the current state as checked and evaluated (a run just built or restored).
    pub(crate) fn check_point(&mut self) {
        self.checked = self.snapshot();
        self.evaluated = self.checked.clone();
    }

    /// A NaN or infinite `term` at `step`: no state that it produced is kept. Back to `to`
    /// (the loader is not rolled back, so the batches that diverged are skipped); then, with
    /// recoveries left ([`advmoe_core::TrainSpec::nan_recoveries`]), halve the learning rate,
    /// log it and go on, else fail naming the term and the step.
    fn roll_back(
        &mut self,
        to: Checked,
        term: &'static str,
        value: f64,
        step: usize,
    ) -> Result<(), EngineError> {
        self.model = Some(to.model);
        self.optimizers = to.optimizers;
        self.rng = to.rng;
        self.step = to.step;
        self.losses_since_eval = to.losses_since_eval;
        self.pending.clear();
        self.history.retain(|e| e.step <= self.step);
        self.checked = self.snapshot();
        if self.recoveries.len() < self.config.train.nan_recoveries {
            self.lr_scale *= 0.5;
            self.recoveries.push(Recovery {
                step,
                term: term.to_string(),
                value: value.to_string(),
                rolled_back_to: self.step,
                lr_scale: self.lr_scale,
            });
            self.state = RunState::Running;
            return Ok(());
        }
        self.state = RunState::Failed;
        Err(EngineError::NonFinite { term, value, step })
    }

    /// The recoveries from NaN or infinite losses so far ([`advmoe_core::TrainSpec::nan_recoveries`]).
    pub fn recoveries(&self) -> &[Recovery] {
        &self.recoveries
    }

    /// The learning rate's factor after recoveries (1 without any).
    pub fn lr_scale(&self) -> f64 {
        self.lr_scale
    }

    /// Fault injection for tests and demonstrations: the batch of step `step` is multiplied by
    /// NaN (a poisoned batch, which real data in 8-bit pixels cannot be).
    pub fn poison_batch_at(&mut self, step: usize) {
        self.poison_at = Some(step);
    }

    /// Evaluate on (the first `eval_size` images of) the test split and record the result.
    pub async fn evaluate(&mut self) -> Result<EvalReport, EngineError> {
        self.drain_losses().await?;
        let options = EvalOptions {
            limit: self.config.train.eval_size,
            ..EvalOptions::default()
        };
        let result = evaluate(self.model(), &self.dataset.test, &options, &self.device).await?;
        let loss = if self.losses_since_eval.is_empty() {
            f64::NAN
        } else {
            self.losses_since_eval.iter().sum::<f64>() / self.losses_since_eval.len() as f64
        };
        self.losses_since_eval.clear();
        let report = EvalReport {
            step: self.step,
            loss,
            test_loss: result.test_loss,
            clean_acc: result.clean_acc,
            images: result.images,
            expert_load: result.expert_load,
            elapsed_secs: self.train_secs,
        };
        self.history.push(report.clone());
        // The losses just averaged must not come back with a rollback.
        self.checked.losses_since_eval.clear();
        Ok(report)
    }
}
