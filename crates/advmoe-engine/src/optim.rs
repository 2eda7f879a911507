//! SGD with momentum and Adam, written for exact checkpoints.
//!
//! State tensors are keyed by the parameter's module path (stable across save and load, unlike
//! parameter ids) and can be exported and restored as named host tensors. Semantics follow
//! PyTorch: weight decay is added to the gradient; SGD momentum has no dampening; Adam corrects
//! both moments for bias.

use std::collections::HashMap;

use advmoe_core::OptimizerKind;
use advmoe_kernels::AdamHyper;
use advmoe_model::checkpoint::NamedTensor;
use burn::module::{Module, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

use crate::tensors::{ReadbackError, read_f32};

const ADAM_BETA1: f64 = 0.9;
const ADAM_BETA2: f64 = 0.999;
const ADAM_EPS: f64 = 1e-8;

/// Why saved optimiser state does not fit an optimiser.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptimizerStateError {
    /// A tensor's name lacks the `.<state>` suffix.
    #[error("optimizer tensor {0} has no state suffix")]
    NoSuffix(String),
    /// A tensor holds state of another optimiser kind.
    #[error("optimizer tensor {name} does not belong to {kind:?}")]
    WrongKind {
        /// The tensor.
        name: String,
        /// The optimiser it was offered to.
        kind: OptimizerKind,
    },
    /// A parameter has some of its state tensors but not all (Adam needs `m` and `v`).
    #[error("incomplete optimizer state for {0}")]
    Incomplete(String),
}

/// An optimiser with path-keyed state.
#[derive(Debug, Clone)]
pub struct Optimizer {
    kind: OptimizerKind,
    momentum: f64,
    weight_decay: f64,
    /// Steps taken (Adam's bias correction).
    steps: u64,
    /// Per path: SGD `[momentum]` or Adam `[m, v]`, flattened, on the inner (non-autodiff) device.
    state: HashMap<String, Vec<Tensor<1>>>,
}

impl Optimizer {
    /// A fresh optimiser.
    pub fn new(kind: OptimizerKind, momentum: f64, weight_decay: f64) -> Self {
        Self {
            kind,
            momentum,
            weight_decay,
            steps: 0,
            state: HashMap::new(),
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Apply one update with learning rate `lr` to every parameter that has a gradient.
    pub fn step<M: Module>(&mut self, model: M, grads: GradientsParams, lr: f64) -> M {
        self.step_where(model, grads, lr, &|_| true)
    }

    /// Apply one update to the parameters whose module path satisfies `owns` (and that have a
    /// gradient); every other parameter keeps its value. AdvMoE's expert and router optimisers
    /// split a model this way.
    pub fn step_where<M: Module>(
        &mut self,
        model: M,
        grads: GradientsParams,
        lr: f64,
        owns: &dyn Fn(&str) -> bool,
    ) -> M {
        self.steps = self.steps.saturating_add(1);
        let mut stepper = Stepper {
            path: Vec::new(),
            grads,
            opt: self,
            lr,
            owns,
        };
        model.map(&mut stepper)
    }

    /// The state as named host tensors (`{path}.momentum`, `{path}.adam_m`, `{path}.adam_v`),
    /// sorted by name (reads back).
    pub async fn export(&self) -> Result<Vec<NamedTensor>, ReadbackError> {
        let names: &[&str] = match self.kind {
            OptimizerKind::Sgd => &["momentum"],
            OptimizerKind::Adam => &["adam_m", "adam_v"],
        };
        let mut out = Vec::new();
        for (path, tensors) in &self.state {
            for (t, suffix) in tensors.iter().zip(names) {
                out.push(NamedTensor {
                    name: format!("{path}.{suffix}"),
                    shape: t.dims().to_vec(),
                    values: read_f32(t.clone(), "optimizer state").await?,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Restore state exported by [`Optimizer::export`] onto `device` (the inner device of the
    /// model's parameters).
    pub fn import(
        &mut self,
        steps: u64,
        tensors: HashMap<String, NamedTensor>,
        device: &Device,
    ) -> Result<(), OptimizerStateError> {
        let suffixes: &[&str] = match self.kind {
            OptimizerKind::Sgd => &["momentum"],
            OptimizerKind::Adam => &["adam_m", "adam_v"],
        };
        let mut state: HashMap<String, Vec<Option<Tensor<1>>>> = HashMap::new();
        for (name, t) in tensors {
            let Some((path, suffix)) = name.rsplit_once('.') else {
                return Err(OptimizerStateError::NoSuffix(name));
            };
            let Some(slot) = suffixes.iter().position(|s| *s == suffix) else {
                return Err(OptimizerStateError::WrongKind {
                    name,
                    kind: self.kind,
                });
            };
            let n = t.values.len();
            let tensor = Tensor::from_data(TensorData::new(t.values, [n]), device);
            state
                .entry(path.to_string())
                .or_insert_with(|| vec![None; suffixes.len()])[slot] = Some(tensor);
        }
        self.state = state
            .into_iter()
            .map(|(path, slots)| {
                let tensors: Option<Vec<Tensor<1>>> = slots.into_iter().collect();
                tensors
                    .map(|t| (path.clone(), t))
                    .ok_or_else(|| OptimizerStateError::Incomplete(path.clone()))
            })
            .collect::<Result<_, _>>()?;
        self.steps = steps;
        Ok(())
    }

    /// One parameter's step: on `wgpu` one kernel launch ([`advmoe_kernels::sgd_step`],
    /// [`advmoe_kernels::adam_step`]), elsewhere the same arithmetic in tensor operations.
    fn update(&mut self, path: &str, param: Tensor<1>, grad: Tensor<1>, lr: f64) -> Tensor<1> {
        let state = self.state.remove(path);
        match self.kind {
            OptimizerKind::Sgd => {
                let buf = state
                    .filter(|_| self.momentum > 0.0)
                    .and_then(|mut s| s.pop());
                let (out, buf) = advmoe_kernels::sgd_step(
                    param,
                    grad,
                    buf,
                    lr,
                    self.momentum,
                    self.weight_decay,
                );
                if self.momentum > 0.0 {
                    self.state.insert(path.to_string(), vec![buf]);
                }
                out
            }
            OptimizerKind::Adam => {
                let moments = state.filter(|s| s.len() == 2).map(|mut s| {
                    let v = s.pop().expect("two moments");
                    let m = s.pop().expect("two moments");
                    (m, v)
                });
                let hyper = AdamHyper {
                    lr,
                    weight_decay: self.weight_decay,
                    beta1: ADAM_BETA1,
                    beta2: ADAM_BETA2,
                    eps: ADAM_EPS,
                    step: i32::try_from(self.steps).unwrap_or(i32::MAX),
                };
                let (out, m, v) = advmoe_kernels::adam_step(param, grad, moments, hyper);
                self.state.insert(path.to_string(), vec![m, v]);
                out
            }
        }
    }
}

/// `model` with the parameters whose module path satisfies `frozen` untracked (values shared,
/// not copied; parameter ids kept, so gradients taken through the copy still find the others in
/// `model`). A backward pass through the copy then takes no gradient of those parameters, nor
/// of anything only they depend on: AdvMoE's expert step, which updates no router, takes none
/// through its routers.
pub fn freeze_where<M: Module>(model: M, frozen: &dyn Fn(&str) -> bool) -> M {
    model.map(&mut Freezer {
        path: Vec::new(),
        frozen,
    })
}

struct Freezer<'a> {
    path: Vec<String>,
    frozen: &'a dyn Fn(&str) -> bool,
}

impl ModuleMapper for Freezer<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        if !(self.frozen)(&self.path.join(".")) {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.set_require_grad(false), mapper)
    }
}

struct Stepper<'a> {
    path: Vec<String>,
    grads: GradientsParams,
    opt: &'a mut Optimizer,
    lr: f64,
    owns: &'a dyn Fn(&str) -> bool,
}

impl ModuleMapper for Stepper<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.path.join(".");
        let (id, tensor, mapper) = param.consume();
        if !(self.owns)(&path) {
            return Param::from_mapped_value(id, tensor, mapper);
        }
        let Some(grad) = self.grads.remove::<D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let shape = tensor.shape();
        let n = shape.num_elements();
        let inner = tensor.inner().reshape([n]);
        let grad = grad.reshape([n]);
        let updated = self.opt.update(&path, inner, grad, self.lr);
        let updated = Tensor::<D>::from_inner(updated.reshape(shape)).require_grad();
        Param::from_mapped_value(id, updated, mapper)
    }
}
