//! Shared helpers.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use advmoe_core::{DatasetSpec, EvalReport, ModelSpec, RouterKind, TrainSpec};
use advmoe_data::Dataset;
use advmoe_engine::{Run, RunConfig, RunState};
use advmoe_model::checkpoint::{model_bytes, model_from_bytes};
use advmoe_model::{MoeNet, is_router_path};
use burn::module::{ModuleMapper, Param};
use burn::tensor::{Device, DeviceKind, Tensor, TensorData};

/// `.wait()` on any of the engine's futures: drive it to completion here, as the CLI and the
/// desktop app's worker threads do.
pub trait Wait: std::future::Future + Sized {
    fn wait(self) -> Self::Output {
        advmoe_engine::block_on(self)
    }
}

impl<F: std::future::Future> Wait for F {}

/// A fresh folder under the system's temporary directory, removed (with what the test wrote
/// there) when dropped, so test runs leave nothing behind.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    /// `advmoe-<tag>-<pid>`, emptied if an earlier run left it; not created.
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("advmoe-{tag}-{}", std::process::id()));
        std::fs::remove_dir_all(&dir).ok();
        Self(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = std::path::Path;
    fn deref(&self) -> &std::path::Path {
        &self.0
    }
}

impl AsRef<std::path::Path> for Scratch {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.0).ok();
    }
}

pub fn cpu() -> Device {
    Device::flex()
}

/// The wgpu device (lavapipe on CI). Panics with a clear message when no adapter exists.
pub fn gpu() -> Device {
    Device::wgpu(DeviceKind::DefaultDevice)
}

pub fn tensor4(values: Vec<f32>, shape: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

pub fn read(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

pub fn read2(t: Tensor<2>) -> Vec<f32> {
    t.into_data().try_into_vec_as::<f32>().unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The share of images that a per-image outcome string ([`advmoe_engine::paired::PerImage`])
/// marks correct (`'1'`), counted here from the bytes rather than by the engine.
pub fn share_correct(outcomes: &str) -> f64 {
    outcomes.bytes().filter(|&c| c == b'1').count() as f64 / outcomes.len() as f64
}

/// A small synthetic dataset shared by the tests (generated once).
pub fn synthetic(train: usize, test: usize) -> Arc<Dataset> {
    type Cache = std::sync::Mutex<Vec<((usize, usize), Arc<Dataset>)>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap();
    if let Some((_, d)) = cache.iter().find(|(k, _)| *k == (train, test)) {
        return d.clone();
    }
    let spec = DatasetSpec {
        synthetic_train_size: train,
        synthetic_test_size: test,
        ..DatasetSpec::default()
    };
    let d = Arc::new(advmoe_data::load(&spec).unwrap());
    cache.push(((train, test), d.clone()));
    d
}

/// A classroom-sized config on `synthetic`.
pub fn small_config(width: usize, experts: usize, steps: usize) -> RunConfig {
    RunConfig {
        model: ModelSpec::resnet(width, 1, experts, 0.5),
        data: DatasetSpec::default(),
        train: TrainSpec {
            total_steps: steps,
            batch_size: 32,
            lr: 0.05,
            eval_every: steps,
            eval_size: 500,
            ..TrainSpec::default()
        },
        balance_weight: 1.0,
    }
}

/// A model trained with `standard` and its final evaluation.
pub struct Trained {
    /// The model's `model.safetensors` bytes.
    bytes: Vec<u8>,
    spec: ModelSpec,
    pub report: EvalReport,
}

impl Trained {
    /// A copy of the model of its own, read from its checkpoint bytes on the CPU autodiff
    /// device. Tests do not share one model: its parameters would be nodes of Burn's autodiff
    /// graph shared between threads, and two threads attacking through the same nodes can
    /// deadlock in burn-autodiff 0.22.1 (one registering an operation waits for a graph lock
    /// that the other holds while it cleans up after `backward`, and the other way round; seen
    /// as a CI run that hung with two attack tests on one shared model).
    pub fn model(&self) -> MoeNet {
        model_from_bytes(
            &self.bytes,
            &self.spec,
            &cpu().autodiff(),
            Path::new("trained.safetensors"),
        )
        .expect("the trained model's own checkpoint")
    }
}

/// Drive `run` to its end with the engine's [`Run::advance`]: every step's loss, in order, and
/// the last evaluation (the run evaluates at its end).
pub fn finish(run: &mut Run) -> (Vec<f64>, EvalReport) {
    let mut losses = Vec::new();
    let mut last = None;
    while run.state() == RunState::Running {
        let advance = run.advance(usize::MAX, &mut |_| true).wait().unwrap();
        losses.extend(advance.losses);
        last = advance.eval.or(last);
    }
    (losses, last.expect("a finished run evaluates at its end"))
}

/// [`finish`], returning the run's error instead of panicking on it.
pub fn try_finish(run: &mut Run) -> Result<(), advmoe_engine::EngineError> {
    while run.state() == RunState::Running {
        run.advance(usize::MAX, &mut |_| true).wait()?;
    }
    Ok(())
}

/// Train `config` on CPU on `train_images` synthetic images to the end (and its final
/// evaluation).
pub fn train_run(config: RunConfig, train_images: usize) -> Run {
    let data = synthetic(train_images, 500);
    let mut run = Run::new(config, data, &cpu()).unwrap();
    finish(&mut run);
    run
}

/// The classroom ResNet-10 (b = 16, N = 2, r = 0.5) trained with `standard` for 250 steps on
/// 4000 synthetic images, once per router kind for the whole test binary.
pub fn trained(router: RouterKind) -> Arc<Trained> {
    static IMAGE: OnceLock<Arc<Trained>> = OnceLock::new();
    static PER_LAYER: OnceLock<Arc<Trained>> = OnceLock::new();
    let cell = match router {
        RouterKind::Image => &IMAGE,
        RouterKind::PerLayer => &PER_LAYER,
    };
    cell.get_or_init(|| {
        let mut config = small_config(16, 2, 250);
        config.model.router = router;
        if router == RouterKind::PerLayer {
            // With the load-balancing term at full weight, per-layer routing did not learn in
            // 250 steps on an AVX-512 CPU or on lavapipe (13% and 11% clean accuracy, the loss
            // flat at ln 10), while it reached 37.6% on the CPU the test was written on: each of
            // the 8 routers flips its layer's expert as it trains. At 0.3 it learned (29.4%, every
            // layer using both experts); at 0 it learned fast but most layers collapsed onto one
            // expert.
            config.balance_weight = 0.3;
        }
        let config_spec = config.model.clone();
        let run = train_run(config, 4000);
        Arc::new(Trained {
            bytes: model_bytes(run.model(), &config_spec).wait().unwrap(),
            spec: config_spec,
            report: run.history().last().unwrap().clone(),
        })
    })
    .clone()
}

/// Multiplies parameters by NaN: every one, or only the routers'.
pub struct Poison {
    only_routers: bool,
    path: Vec<String>,
}

impl Poison {
    pub fn all() -> Self {
        Self {
            only_routers: false,
            path: Vec::new(),
        }
    }

    pub fn routers() -> Self {
        Self {
            only_routers: true,
            path: Vec::new(),
        }
    }
}

impl ModuleMapper for Poison {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if self.only_routers && !is_router_path(&self.path.join(".")) {
            return param;
        }
        param.map(|t| {
            let grad = t.is_require_grad();
            let t = Tensor::from_inner(t.inner().mul_scalar(f32::NAN));
            if grad { t.require_grad() } else { t }
        })
    }
}
