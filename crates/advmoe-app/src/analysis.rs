//! The analysis worker: a second named thread ("advmoe-analysis") that owns every model the lab
//! can attack or inspect (the bundled demo models, models opened from disk, models that training
//! produced) and runs the attack lab's attacks, the routing atlas and the robustness report's
//! evaluations on them. It runs beside the training worker, so a student can attack the demo
//! models while a training runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use advmoe_core::AttackSpec;
use advmoe_data::{DataFiles, Dataset};
use advmoe_engine::compare::CompareRow;
use advmoe_engine::eval::{EvalOptions, EvalResult, evaluate};
use advmoe_engine::tensors::to_device;
use advmoe_engine::{
    EngineError, ImageAttack, RobustOptions, RunConfig, attack_image, evaluate_robust,
    load_model_bytes, load_model_path, predict,
};
use advmoe_model::{MoeNet, Routing};
use burn::module::Module as _;
use burn::tensor::{Device, Tensor, TensorData};

use crate::demo::{self, Demo};
use crate::error::{AppError, AppResult, Context as _};
use crate::platform::{guarded, yield_now};
use crate::task::{Handle, Inbox, Outbox};
use crate::worker::TrainedModel;

/// A model in the lab's library, as the views see it (the weights stay on the worker).
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Its index in the library.
    pub id: usize,
    /// Display name.
    pub name: String,
    /// Where it came from ("bundled demo", a folder, "trained in this session").
    pub origin: String,
    /// Its run configuration (model, data, training).
    pub config: RunConfig,
    /// Class names of its dataset.
    pub class_names: Vec<String>,
    /// Test images available.
    pub test_len: usize,
    /// Measurements recorded with it (a bundled model's), shown in the report until re-measured.
    pub recorded: Option<CompareRow>,
    /// Training wall-clock seconds, when known.
    pub train_secs: Option<f64>,
}

impl ModelInfo {
    /// The name of class `c` (`class c` when its dataset names none).
    pub fn class_name(&self, c: usize) -> String {
        self.class_names
            .get(c)
            .cloned()
            .unwrap_or_else(|| format!("class {c}"))
    }
}

/// Which image the attack lab attacks.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// A test image of the model's dataset.
    Test(usize),
    /// The user's own image, already fitted to the model's input (`[c, h, w]`, channel-major,
    /// in [0, 1]); its label is taken to be the model's clean prediction.
    Own {
        /// File name, for display.
        name: String,
        /// `[channels, height, width]`.
        shape: [usize; 3],
        /// Pixels.
        pixels: Vec<f32>,
    },
}

/// What the views ask of the analysis worker.
#[derive(Debug, Clone)]
pub enum Request {
    /// Load the bundled demo models.
    LoadDemos,
    /// The dataset files the user handed over (picked or dropped): datasets are read from
    /// them before the disk from now on.
    DataFiles(DataFiles),
    /// Load a model folder (`config.json` + `model.safetensors`), or a downloaded
    /// `<stem>.safetensors` + `<stem>.json` pair given by either file.
    Open(PathBuf),
    /// Load a model from the bytes of its two files (picked or dropped in a browser).
    OpenBytes {
        /// Display name.
        name: String,
        /// The run configuration (`config.json` or `<stem>.json`).
        config_json: Vec<u8>,
        /// The weights (`model.safetensors` or `<stem>.safetensors`).
        safetensors: Vec<u8>,
    },
    /// Add a model that training produced.
    Adopt(Box<TrainedModel>),
    /// Attack one image.
    Attack {
        /// Sequence number, echoed in the reply (the lab shows only its latest request).
        seq: u64,
        /// Library index.
        model: usize,
        /// The image.
        image: ImageSource,
        /// The attack.
        spec: AttackSpec,
        /// Seed of the random start.
        seed: u64,
    },
    /// Routing atlas of a model on its test split.
    Atlas {
        /// Library index.
        model: usize,
        /// Test images (0: all).
        limit: usize,
    },
    /// Measure a model for the report.
    Evaluate {
        /// Library index.
        model: usize,
        /// What to measure.
        options: RobustOptions,
    },
    /// Work on this device from now on, in place of one that was lost: every model that can be
    /// read again (bundled, opened from a path or from picked files) is loaded there.
    UseDevice(Device),
}

/// One attack, with what the lab needs to draw it.
#[derive(Debug, Clone)]
pub struct AttackOutcome {
    /// The request's sequence number.
    pub seq: u64,
    /// Library index of the model attacked.
    pub model: usize,
    /// The image attacked, in words.
    pub source: String,
    /// Everything measured.
    pub attack: ImageAttack,
}

/// The routing atlas of one model.
#[derive(Debug, Clone)]
pub struct Atlas {
    /// Library index.
    pub model: usize,
    /// Clean evaluation with class × expert counts and example indices.
    pub eval: EvalResult,
    /// `[layer][expert]`: example images routed there (`[c, h, w]` bytes each).
    pub examples: Vec<Vec<Vec<Vec<u8>>>>,
    /// `[layer][expert]`: the true class of each example.
    pub example_labels: Vec<Vec<Vec<usize>>>,
    /// `[c, h, w]` of the images.
    pub shape: [usize; 3],
}

/// What the analysis worker reports.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A model joined the library.
    Loaded(Box<ModelInfo>),
    /// An attack finished.
    Attacked(Box<AttackOutcome>),
    /// An atlas finished.
    Atlas(Box<Atlas>),
    /// A model was measured for the report.
    Evaluated {
        /// Library index.
        model: usize,
        /// The measurements, as a comparison row.
        row: Box<CompareRow>,
    },
    /// Long work progressed.
    Progress {
        /// What is being done.
        what: String,
        /// Done so far.
        done: usize,
        /// In all.
        of: usize,
    },
    /// The worker finished every request it received so far: this many since it started.
    /// (Superseded attacks count as finished.)
    Idle(u64),
    /// Something failed; the message is for the user.
    Error(String),
}

/// The UI's handle on the analysis worker.
pub type Analysis = Handle<Request, Reply>;

/// Spawn the analysis worker on `device`.
///
/// # Errors
/// If the thread cannot be spawned.
pub fn spawn_analysis(
    device: Device,
    wake: impl Fn() + Send + 'static,
) -> std::io::Result<Analysis> {
    Handle::spawn(
        "advmoe-analysis",
        wake,
        move |requests, replies| async move {
            Library::new(device).serve(&requests, &replies).await;
        },
    )
}

struct Entry {
    info: ModelInfo,
    /// Where it came from, to load it again on another device.
    source: Source,
    /// On the autodiff device (attacks need gradients); `None` once the device that held it was
    /// lost, if nothing else held its weights.
    model: Option<MoeNet>,
}

impl Entry {
    fn model(&self) -> AppResult<&MoeNet> {
        self.model.as_ref().ok_or_else(|| {
            AppError::Refused(format!(
                "{} went with the GPU device that was lost (it held the only copy, or reading \
                 the model again failed); a continued run's model joins the library when it ends",
                self.info.name
            ))
        })
    }
}

/// Where a library model came from.
enum Source {
    /// A bundled demo model.
    Demo(Demo),
    /// A model folder or file.
    Path(PathBuf),
    /// A model's two files' bytes (picked or dropped in a browser).
    Bytes {
        config_json: Vec<u8>,
        safetensors: Vec<u8>,
    },
    /// Trained in this session: its weights are on the device only.
    Trained,
}

impl Source {
    /// [`ModelInfo::origin`] of a model from here.
    fn origin(&self) -> String {
        match self {
            Source::Demo(_) => ORIGIN_DEMO.into(),
            Source::Path(path) => path.display().to_string(),
            Source::Bytes { .. } => ORIGIN_FILES.into(),
            Source::Trained => ORIGIN_TRAINED.into(),
        }
    }

    /// The model's configuration and weights from here, on `device` (`name` names picked bytes
    /// in errors). A model trained in this session has no source but the device it is on.
    async fn read(&self, name: &str, device: &Device) -> AppResult<(RunConfig, MoeNet)> {
        Ok(match self {
            Source::Demo(demo) => {
                let (config_json, safetensors) = demo.files().await?;
                load_model_bytes(&config_json, &safetensors, Path::new(demo.name), device)?
            }
            Source::Path(path) => load_model_path(path, device)?,
            Source::Bytes {
                config_json,
                safetensors,
            } => load_model_bytes(config_json, safetensors, Path::new(name), device)?,
            Source::Trained => {
                return Err(AppError::Refused(format!(
                    "{name} is only on the device it was trained on"
                )));
            }
        })
    }
}

struct Library {
    device: Device,
    entries: Vec<Entry>,
    datasets: HashMap<String, Arc<Dataset>>,
    /// Dataset files the user handed over.
    data_files: DataFiles,
}

impl Library {
    fn new(device: Device) -> Self {
        Self {
            device: device.autodiff(),
            entries: Vec::new(),
            datasets: HashMap::new(),
            data_files: DataFiles::default(),
        }
    }

    async fn serve(&mut self, requests: &Inbox<Request>, replies: &Outbox<Reply>) {
        let mut handled = 0u64;
        while let Some(first) = requests.next().await {
            // Of queued attacks only the newest matters (the ε slider sends many).
            let mut queue = vec![first];
            queue.extend(requests.drain());
            handled += queue.len() as u64;
            let last_attack = queue
                .iter()
                .rposition(|r| matches!(r, Request::Attack { .. }));
            for (i, request) in queue.into_iter().enumerate() {
                if matches!(request, Request::Attack { .. }) && Some(i) != last_attack {
                    continue;
                }
                let result = guarded("the analysis", self.handle(request, replies)).await;
                yield_now().await;
                let reply = match result {
                    Ok(Some(reply)) => reply,
                    Ok(None) => continue,
                    Err(error) => Reply::Error(error.to_string()),
                };
                if !replies.send(reply) {
                    return;
                }
            }
            if !replies.send(Reply::Idle(handled)) {
                return;
            }
        }
    }

    async fn handle(
        &mut self,
        request: Request,
        replies: &Outbox<Reply>,
    ) -> AppResult<Option<Reply>> {
        let device = self.device.clone();
        match request {
            Request::UseDevice(new) => {
                self.device = new.autodiff();
                let mut failed = Vec::new();
                for entry in &mut self.entries {
                    let name = &entry.info.name;
                    entry.model = match &entry.source {
                        // Its weights were on the lost device only.
                        Source::Trained => None,
                        source => match source.read(name, &self.device).await {
                            Ok((_, model)) => Some(model),
                            Err(error) => {
                                failed.push(format!("loading {name} again: {error}"));
                                None
                            }
                        },
                    };
                }
                if failed.is_empty() {
                    Ok(None)
                } else {
                    Err(AppError::Refused(failed.join("; ")))
                }
            }
            Request::DataFiles(files) => {
                // Datasets read from the old files may differ from the new ones.
                self.datasets.clear();
                self.data_files = files;
                Ok(None)
            }
            Request::LoadDemos => {
                for demo in demo::DEMOS {
                    let source = Source::Demo(demo);
                    let (config, model) = source
                        .read(demo.name, &device)
                        .await
                        .context(|| format!("bundled model {}", demo.name))?;
                    let recorded = demo::recorded_row(demo.name)?;
                    let train_secs = recorded.as_ref().map(|r| r.train_secs);
                    let info = self.add(
                        demo.title.to_string(),
                        source,
                        config,
                        model,
                        recorded,
                        train_secs,
                    )?;
                    replies.send(Reply::Loaded(Box::new(info)));
                }
                Ok(None)
            }
            Request::Open(path) => {
                let name = path.file_stem().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into(),
                );
                let source = Source::Path(path);
                let (config, model) = source
                    .read(&name, &device)
                    .await
                    .context(|| format!("opening {}", source.origin()))?;
                let info = self.add(name, source, config, model, None, None)?;
                Ok(Some(Reply::Loaded(Box::new(info))))
            }
            Request::OpenBytes {
                name,
                config_json,
                safetensors,
            } => {
                let source = Source::Bytes {
                    config_json,
                    safetensors,
                };
                let (config, model) = source
                    .read(&name, &device)
                    .await
                    .context(|| format!("opening {name}"))?;
                let info = self.add(name, source, config, model, None, None)?;
                Ok(Some(Reply::Loaded(Box::new(info))))
            }
            Request::Adopt(trained) => {
                let TrainedModel {
                    config,
                    model,
                    steps,
                    train_secs,
                } = *trained;
                let name = format!(
                    "{} N={} ({} steps)",
                    config.train.method, config.model.num_experts, steps
                );
                let model = model.fork(&device);
                let info =
                    self.add(name, Source::Trained, config, model, None, Some(train_secs))?;
                Ok(Some(Reply::Loaded(Box::new(info))))
            }
            Request::Attack {
                seq,
                model,
                image,
                spec,
                seed,
            } => {
                let (entry, dataset) = self.with_data(model)?;
                let num_classes = entry.info.config.model.num_classes;
                let (images, label, source) = match image {
                    ImageSource::Test(index) => {
                        if index >= dataset.test.len() {
                            return Err(AppError::Refused(format!(
                                "test image {index} does not exist: the test split has {} images",
                                dataset.test.len()
                            )));
                        }
                        let host = dataset.test.batch(index, index + 1);
                        let label = usize::from(host.labels[0]);
                        let batch = to_device(&host, num_classes, &device);
                        (batch.images, label, format!("test image {index}"))
                    }
                    ImageSource::Own {
                        name,
                        shape,
                        pixels,
                    } => {
                        let [c, h, w] = shape;
                        let expected = [
                            entry.info.config.model.in_channels,
                            entry.info.config.model.image_size[0],
                            entry.info.config.model.image_size[1],
                        ];
                        if shape != expected {
                            return Err(AppError::Image {
                                name,
                                reason: format!(
                                    "fitted to {shape:?} but the model takes {expected:?}"
                                ),
                            });
                        }
                        let images =
                            Tensor::<4>::from_data(TensorData::new(pixels, [1, c, h, w]), &device);
                        let clean =
                            predict(entry.model()?, images.clone(), &Routing::Free, 0).await?;
                        (images, clean.prediction, name)
                    }
                };
                if label >= num_classes {
                    return Err(AppError::Refused(format!(
                        "label {label} is outside the model's {num_classes} classes"
                    )));
                }
                let attack = attack_image(entry.model()?, images, label, &spec, seed)
                    .await
                    .context(|| format!("attacking {}", entry.info.name))?;
                Ok(Some(Reply::Attacked(Box::new(AttackOutcome {
                    seq,
                    model,
                    source,
                    attack,
                }))))
            }
            Request::Atlas { model, limit } => {
                let (entry, dataset) = self.with_data(model)?;
                let eval = evaluate(
                    entry.model()?,
                    &dataset.test,
                    &EvalOptions {
                        limit,
                        examples_per_expert: ATLAS_EXAMPLES,
                        ..EvalOptions::default()
                    },
                    &device,
                )
                .await
                .context(|| "the atlas".to_string())?;
                let test = &dataset.test;
                let examples = per_example(&eval.examples, |i| test.image(i).to_vec());
                let example_labels = per_example(&eval.examples, |i| usize::from(test.labels[i]));
                let [h, w] = dataset.test.size;
                Ok(Some(Reply::Atlas(Box::new(Atlas {
                    model,
                    eval,
                    examples,
                    example_labels,
                    shape: [dataset.test.channels, h, w],
                }))))
            }
            Request::Evaluate { model, options } => {
                let (entry, dataset) = self.with_data(model)?;
                let what = format!("measuring {}", entry.info.name);
                let report = evaluate_robust(
                    entry.model()?,
                    &dataset.test,
                    &options,
                    &device,
                    &mut |done, of| {
                        replies.send(Reply::Progress {
                            what: what.clone(),
                            done,
                            of,
                        });
                    },
                )
                .await
                .context(|| format!("evaluating {}", entry.info.name))?;
                let config = &entry.info.config;
                let row = CompareRow::new(
                    &entry.info.name,
                    config,
                    config.train.total_steps,
                    entry.info.train_secs.unwrap_or(f64::NAN),
                    report,
                    Vec::new(),
                );
                Ok(Some(Reply::Evaluated {
                    model,
                    row: Box::new(row),
                }))
            }
        }
    }

    fn entry(&self, id: usize) -> AppResult<&Entry> {
        self.entries
            .get(id)
            .ok_or_else(|| AppError::Refused(format!("there is no model number {id}")))
    }

    /// A model and its dataset.
    fn with_data(&mut self, id: usize) -> AppResult<(&Entry, Arc<Dataset>)> {
        let config = self.entry(id)?.info.config.clone();
        let data = self.dataset(&config)?;
        Ok((self.entry(id)?, data))
    }

    fn dataset(&mut self, config: &RunConfig) -> AppResult<Arc<Dataset>> {
        // The library attacks and measures test images only: the synthetic training split (10,000
        // generated images, most of a demo model's load time in a browser) is not made.
        let mut spec = config.data.clone();
        if spec.kind == advmoe_core::DatasetKind::Synthetic {
            spec.synthetic_train_size = 0;
        }
        // Datasets are cached by their spec (the same spec always reads the same images).
        let key = format!("{spec:?}");
        if let Some(data) = self.datasets.get(&key) {
            return Ok(data.clone());
        }
        let data = Arc::new(advmoe_data::load_from(&spec, &self.data_files)?);
        self.datasets.insert(key, data.clone());
        Ok(data)
    }

    fn add(
        &mut self,
        name: String,
        source: Source,
        config: RunConfig,
        model: MoeNet,
        recorded: Option<CompareRow>,
        train_secs: Option<f64>,
    ) -> AppResult<ModelInfo> {
        let data = self.dataset(&config)?;
        config
            .check_dataset(&data)
            .map_err(EngineError::from)
            .context(|| name.clone())?;
        let info = ModelInfo {
            id: self.entries.len(),
            name,
            origin: source.origin(),
            class_names: data.test.class_names.clone(),
            test_len: data.test.len(),
            config,
            recorded,
            train_secs,
        };
        self.entries.push(Entry {
            info: info.clone(),
            source,
            model: Some(model),
        });
        Ok(info)
    }
}

/// [`ModelInfo::origin`] of the bundled demo models.
pub const ORIGIN_DEMO: &str = "bundled demo";

/// [`ModelInfo::origin`] of models opened from files picked or dropped in a browser.
pub const ORIGIN_FILES: &str = "opened files";

/// [`ModelInfo::origin`] of models trained in this session.
pub const ORIGIN_TRAINED: &str = "trained in this session";

/// Example images per expert in the atlas.
pub const ATLAS_EXAMPLES: usize = 8;

/// `f` of each `[layer][expert]` example index.
fn per_example<T>(indices: &[Vec<Vec<usize>>], f: impl Fn(usize) -> T) -> Vec<Vec<Vec<T>>> {
    indices
        .iter()
        .map(|layer| {
            layer
                .iter()
                .map(|ids| ids.iter().map(|&i| f(i)).collect())
                .collect()
        })
        .collect()
}
