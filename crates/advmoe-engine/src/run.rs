//! A training run: create from a config, advance by steps, read progress and metrics, pause,
//! resume, stop, checkpoint and resume from a checkpoint exactly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use advmoe_core::{
    DatasetSpec, EvalReport, MethodKind, ModelSpec, Rng, RouterKind, SpecError, TrainSpec,
};
use advmoe_data::{DataError, Dataset, Loader, LoaderState};
use advmoe_model::checkpoint::{
    CheckpointError, model_from_bytes, parse_safetensors, safetensors_bytes, write_atomic,
};
use advmoe_model::{MoeNet, checkpoint::model_bytes};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::eval::{EvalError, EvalOptions, evaluate};
use crate::method::{Method, MethodConfig, Optimizers, StepInput, make_method};
use crate::optim::Optimizer;
use crate::tensors::{ReadbackError, read_f32, to_device};

/// Everything that defines a run. Stored as `config.json` beside every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// The model.
    pub model: ModelSpec,
    /// The data.
    pub data: DatasetSpec,
    /// The training procedure.
    pub train: TrainSpec,
    /// Weight of the load-balancing term for MoE models (0: off).
    pub balance_weight: f64,
}

impl RunConfig {
    /// Check every part.
    pub fn validate(&self) -> Result<(), SpecError> {
        self.model.validate()?;
        self.train.validate()?;
        if !(self.balance_weight.is_finite() && self.balance_weight >= 0.0) {
            return Err(SpecError {
                field: "balance_weight",
                reason: format!("{} is not >= 0", self.balance_weight),
            });
        }
        if self.train.method == MethodKind::Advmoe && !self.model.is_moe() {
            return Err(SpecError {
                field: "method",
                reason: "advmoe trains routers and needs an MoE model (experts >= 2)".into(),
            });
        }
        Ok(())
    }

    /// Check that `dataset` fits this run's model: channels, image size and classes of both
    /// splits.
    ///
    /// # Errors
    /// A message naming both shapes.
    pub fn check_dataset(&self, dataset: &Dataset) -> Result<(), String> {
        let m = &self.model;
        for t in [&dataset.train, &dataset.test] {
            if m.in_channels != t.channels
                || m.image_size != t.size
                || m.num_classes != t.num_classes
            {
                return Err(format!(
                    "the model expects {} channels, {:?} pixels and {} classes, but {} has {}, {:?}, {}",
                    m.in_channels,
                    m.image_size,
                    m.num_classes,
                    t.name,
                    t.channels,
                    t.size,
                    t.num_classes
                ));
            }
        }
        Ok(())
    }

    /// Set the model's input shape and class count from a dataset.
    pub fn fit_to(&mut self, dataset: &Dataset) {
        self.model.in_channels = dataset.train.channels;
        self.model.image_size = dataset.train.size;
        self.model.num_classes = dataset.train.num_classes;
    }
}

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
    Shape(String),
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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RunRecord {
    format: String,
    step: usize,
    rng: Rng,
    loader: LoaderState,
    optimizer_steps: u64,
    #[serde(default)]
    router_optimizer_steps: u64,
    losses_since_eval: Vec<f64>,
    history: Vec<EvalReport>,
    train_secs: f64,
}

const RUN_FORMAT: &str = "advmoe-run/1";

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
}

/// Wall-clock seconds; `web-time` maps to `performance.now()` in a browser, where
/// `std::time` panics.
fn now_secs() -> f64 {
    web_time::SystemTime::now()
        .duration_since(web_time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Run {
    /// Start a run on `device` (a plain device; the run adds autodiff) with an already loaded
    /// dataset. The model's input shape and classes must match the dataset.
    pub fn new(
        config: RunConfig,
        dataset: Arc<Dataset>,
        device: &Device,
    ) -> Result<Self, EngineError> {
        config.validate()?;
        config.check_dataset(&dataset).map_err(EngineError::Shape)?;
        let m = &config.model;
        let t = &dataset.train;
        if t.is_empty() || dataset.test.is_empty() {
            return Err(EngineError::Shape(format!(
                "{} or its test split is empty",
                t.name
            )));
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
        Ok(Self {
            rng: Rng::stream(train.seed, 0x0072_756e),
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
        })
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
        let batch = to_device(&host, self.config.model.num_classes, &self.device);
        let lr = self.config.train.lr_at(self.step);
        let model = self
            .model
            .take()
            .expect("the model is present between steps");
        let (model, loss) = self.method.step(StepInput {
            model,
            batch,
            lr,
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

    /// Take up to `steps` steps (fewer if the run ends or is paused).
    pub fn run_chunk(&mut self, steps: usize) -> Result<usize, EngineError> {
        let mut done = 0;
        while done < steps && self.state == RunState::Running {
            self.step()?;
            done += 1;
        }
        Ok(done)
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
            self.state = RunState::Failed;
            return Err(EngineError::NonFinite {
                term: terms[i % terms.len()],
                value: values[i],
                step: self.pending_first_step + i / terms.len(),
            });
        }
        let losses: Vec<f64> = values.chunks(terms.len()).map(|c| c[0]).collect();
        self.losses_since_eval.extend(&losses);
        Ok(losses)
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
        Ok(report)
    }

    /// The model alone as files: `config.json` and `model.safetensors` (what
    /// [`load_model_bytes`] reads).
    pub async fn model_files(&self) -> Result<Vec<(&'static str, Vec<u8>)>, EngineError> {
        let config = serde_json::to_vec_pretty(&self.config).unwrap_or_default();
        let model = model_bytes(self.model(), &self.config.model).await?;
        Ok(vec![("config.json", config), ("model.safetensors", model)])
    }

    /// Write the model alone: `config.json` and `model.safetensors` in `dir`.
    pub async fn save_model(&self, dir: &Path) -> Result<(), EngineError> {
        write_files(dir, &self.model_files().await?)
    }

    /// A full run checkpoint as files: the model files plus `optimizer.safetensors` (and
    /// `router_optimizer.safetensors` for AdvMoE) and `run.json` (step, RNG, loader position,
    /// metrics). Pending losses are drained first. The browser offers these as downloads.
    pub async fn checkpoint_files(&mut self) -> Result<Vec<(&'static str, Vec<u8>)>, EngineError> {
        self.drain_losses().await?;
        let mut files = self.model_files().await?;
        let mut metadata = BTreeMap::new();
        metadata.insert("format".to_string(), "advmoe-optimizer/1".to_string());
        files.push((
            "optimizer.safetensors",
            safetensors_bytes(&self.optimizers.main.export().await?, metadata.clone())?,
        ));
        if self.method.kind() == MethodKind::Advmoe {
            files.push((
                "router_optimizer.safetensors",
                safetensors_bytes(&self.optimizers.router.export().await?, metadata)?,
            ));
        }
        let record = RunRecord {
            format: RUN_FORMAT.to_string(),
            step: self.step,
            rng: self.rng.clone(),
            loader: self.loader.state(),
            optimizer_steps: self.optimizers.main.steps(),
            router_optimizer_steps: self.optimizers.router.steps(),
            losses_since_eval: self.losses_since_eval.clone(),
            history: self.history.clone(),
            train_secs: self.train_secs,
        };
        files.push((
            "run.json",
            serde_json::to_vec_pretty(&record).unwrap_or_default(),
        ));
        Ok(files)
    }

    /// Write a full run checkpoint ([`Run::checkpoint_files`]) into `dir`.
    pub async fn save_checkpoint(&mut self, dir: &Path) -> Result<(), EngineError> {
        let files = self.checkpoint_files().await?;
        write_files(dir, &files)
    }

    /// Continue a run from a checkpoint written by [`Run::save_checkpoint`], with a dataset loaded
    /// from its config. The resumed run takes exactly the steps the uninterrupted run would have.
    pub fn resume_from(
        dir: &Path,
        dataset: Arc<Dataset>,
        device: &Device,
    ) -> Result<Self, EngineError> {
        Self::resume_from_files(&read_in(dir), dir, dataset, device)
    }

    /// [`Run::resume_from`] with the checkpoint's files given by name (`read("run.json")`), as a
    /// browser's file picker provides them; `origin` names them in error messages.
    pub fn resume_from_files(
        read: &dyn Fn(&str) -> Result<Vec<u8>, EngineError>,
        origin: &Path,
        dataset: Arc<Dataset>,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let bad = |path: &str, reason: String| EngineError::BadCheckpoint {
            path: origin.join(path),
            reason,
        };
        let config: RunConfig = serde_json::from_slice(&read("config.json")?)
            .map_err(|e| bad("config.json", e.to_string()))?;
        let record: RunRecord = serde_json::from_slice(&read("run.json")?)
            .map_err(|e| bad("run.json", e.to_string()))?;
        if record.format != RUN_FORMAT {
            return Err(bad(
                "run.json",
                format!("format {:?}, expected {RUN_FORMAT:?}", record.format),
            ));
        }
        let mut run = Self::new(config, dataset, device)?;
        let model_path = origin.join("model.safetensors");
        run.model = Some(model_from_bytes(
            &read("model.safetensors")?,
            &run.config.model,
            &run.device,
            &model_path,
        )?);
        let opt_path = origin.join("optimizer.safetensors");
        let (tensors, _) = parse_safetensors(&opt_path, &read("optimizer.safetensors")?)?;
        let inner = run.device.clone().without_autodiff();
        run.optimizers
            .main
            .import(record.optimizer_steps, tensors, &inner)
            .map_err(|reason| bad("optimizer.safetensors", reason))?;
        if run.method.kind() == MethodKind::Advmoe {
            let path = origin.join("router_optimizer.safetensors");
            let (tensors, _) = parse_safetensors(&path, &read("router_optimizer.safetensors")?)?;
            run.optimizers
                .router
                .import(record.router_optimizer_steps, tensors, &inner)
                .map_err(|reason| bad("router_optimizer.safetensors", reason))?;
        }
        run.loader.restore(record.loader);
        run.rng = record.rng;
        run.step = record.step;
        run.losses_since_eval = record.losses_since_eval;
        run.history = record.history;
        run.train_secs = record.train_secs;
        if run.step >= run.config.train.total_steps {
            run.state = RunState::Finished;
        }
        Ok(run)
    }
}

/// Reads a checkpoint's files by name from `dir` (for [`Run::resume_from_files`]).
pub fn read_in(dir: &Path) -> impl Fn(&str) -> Result<Vec<u8>, EngineError> + '_ {
    move |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path)
            .map_err(|source| EngineError::Checkpoint(CheckpointError::Io { path, source }))
    }
}

/// Write named files into `dir` (created if needed), each atomically.
pub fn write_files(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<(), EngineError> {
    std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for (name, bytes) in files {
        write_atomic(&dir.join(name), bytes)?;
    }
    Ok(())
}

/// Load a model from a path: a folder written by [`Run::save_model`] (or a checkpoint), one of
/// its two files, or either file of a downloaded `<stem>.safetensors` + `<stem>.json` pair (what
/// the web app's "Save checkpoint" downloads).
pub fn load_model_path(path: &Path, device: &Device) -> Result<(RunConfig, MoeNet), EngineError> {
    if path.is_dir() {
        return load_model_dir(path, device);
    }
    let name = path.file_name().map(|n| n.to_string_lossy().to_string());
    let parent = path.parent().unwrap_or(Path::new("."));
    if matches!(name.as_deref(), Some("config.json" | "model.safetensors")) {
        return load_model_dir(parent, device);
    }
    let read =
        |path: PathBuf| std::fs::read(&path).map_err(|source| CheckpointError::Io { path, source });
    match path.extension().and_then(|e| e.to_str()) {
        Some("json" | "safetensors") => load_model_bytes(
            &read(path.with_extension("json"))?,
            &read(path.with_extension("safetensors"))?,
            parent,
            device,
        ),
        _ => Err(EngineError::BadCheckpoint {
            path: path.to_path_buf(),
            reason: "expected a model folder, or a .safetensors + .json pair".into(),
        }),
    }
}

/// Load a model saved by [`Run::save_model`] (or a checkpoint) from `dir` onto `device`.
pub fn load_model_dir(dir: &Path, device: &Device) -> Result<(RunConfig, MoeNet), EngineError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| CheckpointError::Io { path, source })
    };
    load_model_bytes(
        &read("config.json")?,
        &read("model.safetensors")?,
        dir,
        device,
    )
}

/// Load a model from the bytes of its `config.json` and `model.safetensors` (a bundled model,
/// or files the user picked in a browser). `origin` names them in error messages.
pub fn load_model_bytes(
    config_json: &[u8],
    model_safetensors: &[u8],
    origin: &Path,
    device: &Device,
) -> Result<(RunConfig, MoeNet), EngineError> {
    let config: RunConfig =
        serde_json::from_slice(config_json).map_err(|e| EngineError::BadCheckpoint {
            path: origin.join("config.json"),
            reason: e.to_string(),
        })?;
    config.model.validate()?;
    let model = advmoe_model::model_from_bytes(
        model_safetensors,
        &config.model,
        device,
        &origin.join("model.safetensors"),
    )?;
    Ok((config, model))
}
