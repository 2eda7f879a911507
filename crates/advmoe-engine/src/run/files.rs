//! A run's files: the model alone (`config.json`, `model.safetensors`), a full run checkpoint
//! (plus `optimizer.safetensors`, `router_optimizer.safetensors` for AdvMoE, `run.json`), where
//! they come from (a folder, or files picked in a browser) and how they are written (all files
//! as one commit that a crash cannot tear, [`write_files`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use advmoe_core::{EvalReport, Rng};
use advmoe_data::{DataFiles, LoaderState};
use advmoe_model::MoeNet;
use advmoe_model::checkpoint::{
    CheckpointError, model_bytes, model_from_bytes, parse_safetensors, safetensors_bytes,
    write_atomic,
};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{EngineError, Recovery, Run, RunConfig, RunState, load_data};

/// Named files, as a browser's file picker hands them over or a download takes them.
pub type NamedFiles = Vec<(String, Vec<u8>)>;

/// Where a run checkpoint's (or a model's) files come from.
#[derive(Debug, Clone)]
pub enum CheckpointSource {
    /// A folder written by `advmoe train` or the app's "Save checkpoint".
    Folder(PathBuf),
    /// The same files by name (`config.json`, `model.safetensors`, `optimizer.safetensors`,
    /// `run.json`), picked in a browser.
    Files(NamedFiles),
}

impl CheckpointSource {
    /// Where the files come from, for messages.
    pub fn origin(&self) -> PathBuf {
        match self {
            CheckpointSource::Folder(dir) => dir.clone(),
            CheckpointSource::Files(_) => PathBuf::from("the chosen files"),
        }
    }

    /// The bytes of the file called `name`.
    ///
    /// # Errors
    /// A folder's file that cannot be read, or a name that is not among the picked files.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, EngineError> {
        match self {
            CheckpointSource::Folder(dir) => {
                // A write that committed but was cut before its renames: its files are the
                // checkpoint ([`write_files`]).
                let committed =
                    committed_names(dir)?.is_some_and(|names| names.iter().any(|n| n == name));
                let partial = dir.join(partial_name(name));
                let path = if committed && partial.exists() {
                    partial
                } else {
                    dir.join(name)
                };
                std::fs::read(&path)
                    .map_err(|source| EngineError::Checkpoint(CheckpointError::Io { path, source }))
            }
            CheckpointSource::Files(files) => files
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, bytes)| bytes.clone())
                .ok_or_else(|| EngineError::BadCheckpoint {
                    path: PathBuf::from(name),
                    reason: "not among the chosen files".into(),
                }),
        }
    }

    /// The JSON file called `name`, parsed as a `T`.
    ///
    /// # Errors
    /// A file that cannot be read, or one that is not a `T` (naming the file and serde's
    /// description of where).
    pub fn read_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<T, EngineError> {
        serde_json::from_slice(&self.read(name)?).map_err(|e| EngineError::BadCheckpoint {
            path: self.origin().join(name),
            reason: e.to_string(),
        })
    }

    /// Its `config.json`, parsed and validated.
    ///
    /// # Errors
    /// A missing file, one that is not a run configuration, or an invalid one.
    pub fn config(&self) -> Result<RunConfig, EngineError> {
        let bad = |reason: String| EngineError::BadCheckpoint {
            path: self.origin().join("config.json"),
            reason,
        };
        let config: RunConfig = serde_json::from_slice(&self.read("config.json")?)
            .map_err(|e| bad(format!("not a run configuration: {e}")))?;
        config.validate().map_err(|e| bad(e.to_string()))?;
        Ok(config)
    }
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
    #[serde(default = "one")]
    lr_scale: f64,
    #[serde(default)]
    recoveries: Vec<Recovery>,
}

fn one() -> f64 {
    1.0
}

const RUN_FORMAT: &str = "advmoe-run/1";

impl Run {
    /// Continue a run from its checkpoint: reads `config.json` once, loads the dataset it
    /// names (from `files` or the disk, as [`Run::from_config`]), restores model, optimiser
    /// state, data order and RNG. The resumed run takes exactly the steps the uninterrupted run
    /// would have.
    ///
    /// # Errors
    /// Missing or inconsistent files, a dataset that cannot be loaded or does not fit.
    pub fn from_checkpoint(
        source: &CheckpointSource,
        files: &DataFiles,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let config = source.config()?;
        let (dataset, load) = load_data(&config.data, files)?;
        let mut run = Self::restore(config, source, Arc::new(dataset), device)?;
        run.data_load = load;
        Ok(run)
    }

    /// [`Run::from_checkpoint`] with the dataset already loaded (it must be the one the
    /// checkpoint's config names).
    ///
    /// # Errors
    /// As [`Run::from_checkpoint`].
    pub fn from_checkpoint_with(
        source: &CheckpointSource,
        dataset: Arc<advmoe_data::Dataset>,
        device: &Device,
    ) -> Result<Self, EngineError> {
        Self::restore(source.config()?, source, dataset, device)
    }

    fn restore(
        config: RunConfig,
        source: &CheckpointSource,
        dataset: Arc<advmoe_data::Dataset>,
        device: &Device,
    ) -> Result<Self, EngineError> {
        let origin = source.origin();
        let bad = |path: &str, reason: String| EngineError::BadCheckpoint {
            path: origin.join(path),
            reason,
        };
        let record: RunRecord = source.read_json("run.json")?;
        if record.format != RUN_FORMAT {
            return Err(bad(
                "run.json",
                format!("format {:?}, expected {RUN_FORMAT:?}", record.format),
            ));
        }
        let counts = [
            ("step", record.step as u64, config.train.total_steps as u64),
            (
                "optimizer_steps",
                record.optimizer_steps,
                record.step as u64,
            ),
            (
                "router_optimizer_steps",
                record.router_optimizer_steps,
                record.step as u64,
            ),
            (
                "loader.position",
                record.loader.position as u64,
                dataset.train.len() as u64,
            ),
            (
                "loader.epoch",
                record.loader.epoch as u64,
                record.step as u64,
            ),
        ];
        if let Some((field, value, most)) = counts.iter().find(|(_, value, most)| value > most) {
            return Err(bad(
                "run.json",
                format!("{field} is {value}, more than the {most} this run allows"),
            ));
        }
        config
            .check_dataset(&dataset)
            .map_err(|e| bad("config.json", format!("the dataset does not fit: {e}")))?;
        let mut run = Self::new(config, dataset, device)?;
        run.model = Some(model_from_bytes(
            &source.read("model.safetensors")?,
            &run.config.model,
            &run.device,
            &origin.join("model.safetensors"),
        )?);
        let inner = run.device.clone().without_autodiff();
        let mut optimizers = vec![(
            "optimizer.safetensors",
            &mut run.optimizers.main,
            record.optimizer_steps,
        )];
        if run.method.kind().has_router_optimizer() {
            optimizers.push((
                "router_optimizer.safetensors",
                &mut run.optimizers.router,
                record.router_optimizer_steps,
            ));
        }
        for (name, optimizer, steps) in optimizers {
            let path = origin.join(name);
            let (tensors, _) = parse_safetensors(&path, &source.read(name)?)?;
            optimizer
                .import(steps, tensors, &inner)
                .map_err(|source| EngineError::OptimizerState { path, source })?;
        }
        run.loader.restore(record.loader);
        run.rng = record.rng;
        run.step = record.step;
        run.losses_since_eval = record.losses_since_eval;
        run.history = record.history;
        run.train_secs = record.train_secs;
        if !(record.lr_scale.is_finite() && record.lr_scale > 0.0 && record.lr_scale <= 1.0) {
            return Err(bad(
                "run.json",
                format!("lr_scale {} is not in (0, 1]", record.lr_scale),
            ));
        }
        run.lr_scale = record.lr_scale;
        run.recoveries = record.recoveries;
        run.check_point();
        if run.step >= run.config.train.total_steps {
            run.state = RunState::Finished;
        }
        Ok(run)
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
        if self.method.kind().has_router_optimizer() {
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
            lr_scale: self.lr_scale,
            recoveries: self.recoveries.clone(),
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
}

/// The commit record of [`write_files`]: the names of the files that make up one checkpoint.
pub const COMMIT_FILE: &str = "commit.json";

/// The name a file is written under before its commit.
fn partial_name(name: &str) -> String {
    format!("{name}.partial")
}

/// Write named files into `dir` (created if needed) as one commit, so that a crash at any
/// instant leaves either the previous set of files or the new one, never a mix:
///
/// 1. every file is written as `<name>.partial` and flushed to disk;
/// 2. the commit record [`COMMIT_FILE`] (the names) is written and renamed into place: from
///    this instant the new set is the checkpoint;
/// 3. each `<name>.partial` is renamed to `<name>`, then the commit record is removed.
///
/// A crash before step 2 leaves the old files untouched (the `.partial` files are ignored and
/// replaced by the next write); a crash after it is finished by [`CheckpointSource::read`],
/// which reads a committed `.partial` file in place of its target, and by the next write.
///
/// # Errors
/// A file that cannot be written (a full disk, say): the previous checkpoint is left as it was.
pub fn write_files(dir: &Path, files: &[(&str, Vec<u8>)]) -> Result<(), EngineError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EngineError::Checkpoint(CheckpointError::Io { path, source })
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    finish_commit(dir)?;
    // With no commit record left, any `.partial` file is from a write that never committed.
    for entry in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".partial") {
            std::fs::remove_file(entry.path()).ok();
        }
    }
    let names: Vec<&str> = files.iter().map(|(name, _)| *name).collect();
    let record = dir.join(COMMIT_FILE);
    let written = files
        .iter()
        .try_for_each(|(name, bytes)| {
            let path = dir.join(partial_name(name));
            write_synced(&path, bytes).map_err(io(&path))
        })
        .and_then(|()| {
            Ok(write_atomic(
                &record,
                &serde_json::to_vec(&names).unwrap_or_default(),
            )?)
        });
    if let Err(e) = written {
        // Uncommitted: the previous checkpoint stands; free the space this write took.
        for name in names {
            std::fs::remove_file(dir.join(partial_name(name))).ok();
        }
        return Err(e);
    }
    sync_dir(dir);
    finish_commit(dir)
}

/// Write and flush a file.
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Flush a folder's entries (renames) to disk, where the platform allows it.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        d.sync_all().ok();
    }
}

/// The names a commit record in `dir` lists, if there is one.
fn committed_names(dir: &Path) -> Result<Option<Vec<String>>, EngineError> {
    let path = dir.join(COMMIT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| EngineError::BadCheckpoint {
                    path,
                    reason: format!("not a commit record: {e}"),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(EngineError::Checkpoint(CheckpointError::Io {
            path,
            source,
        })),
    }
}

/// Step 3 of [`write_files`]: move a committed write's files into place and drop its record.
fn finish_commit(dir: &Path) -> Result<(), EngineError> {
    let Some(names) = committed_names(dir)? else {
        return Ok(());
    };
    for name in &names {
        let partial = dir.join(partial_name(name));
        if partial.exists() {
            std::fs::rename(&partial, dir.join(name)).map_err(|source| {
                EngineError::Checkpoint(CheckpointError::Io {
                    path: partial.clone(),
                    source,
                })
            })?;
        }
    }
    sync_dir(dir);
    let record = dir.join(COMMIT_FILE);
    std::fs::remove_file(&record).map_err(|source| {
        EngineError::Checkpoint(CheckpointError::Io {
            path: record,
            source,
        })
    })
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
    let source = CheckpointSource::Folder(dir.to_path_buf());
    load_model_bytes(
        &source.read("config.json")?,
        &source.read("model.safetensors")?,
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
    config
        .model
        .validate()
        .map_err(|e| EngineError::BadCheckpoint {
            path: origin.join("config.json"),
            reason: e.to_string(),
        })?;
    let model = model_from_bytes(
        model_safetensors,
        &config.model,
        device,
        &origin.join("model.safetensors"),
    )?;
    Ok((config, model))
}
