//! Model checkpoints: a safetensors file plus the model spec.
//!
//! Tensor names are the module paths of [`crate::MoeNet`], joined with `.`; all tensors are `F32`
//! in PyTorch layout:
//!
//! | name | shape |
//! |---|---|
//! | `resnet.stem.weight` | `[b, c_in, 3, 3]` |
//! | `resnet.stem_bn.{gamma,beta,running_mean,running_var}` | `[b]` |
//! | `resnet.blocks.{i}.conv{1,2}.weight` | `[N * w, w_in, 3, 3]` (expert `e` owns rows `e*w .. (e+1)*w`) |
//! | `resnet.blocks.{i}.conv{1,2}.router.fc.{weight,bias}` | `[N, w_in]`, `[N]` (per-layer routers) |
//! | `resnet.blocks.{i}.bn{1,2}.*`, `resnet.blocks.{i}.shortcut.{conv.weight,bn.*}` | as above |
//! | `vgg.layers.{i}.conv.weight`, `vgg.layers.{i}.bn.*` | as above |
//! | `router.convs.{0,1,2}.weight`, `router.bns.{0,1,2}.*`, `router.fc.{weight,bias}` | image router |
//! | `classifier.{weight,bias}` | `[classes, features]`, `[classes]` |
//!
//! The header metadata holds `format = "advmoe-model/1"` and `spec` (the [`ModelSpec`] as JSON),
//! so a file is self-describing; loading checks every name and shape against the spec.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use advmoe_core::{ModelSpec, SpecError};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::MoeNet;
use crate::readback::read_f32;

/// Format tag stored in the safetensors metadata.
pub const MODEL_FORMAT: &str = "advmoe-model/1";

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// File system error.
    #[error("{path:?}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a valid safetensors file.
    #[error("{path:?} is not a valid safetensors file: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file does not match the model its config describes.
    #[error("{path:?} does not match its model config: {reason}")]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Which tensor and how.
        reason: String,
    },
    /// The config is invalid.
    #[error("invalid model config: {0}")]
    Spec(#[from] SpecError),
    /// A tensor could not be read back from the device.
    #[error("reading {name} from the device failed: {reason}")]
    Readback {
        /// The tensor.
        name: String,
        /// Why.
        reason: String,
    },
}

/// A named host copy of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Module path.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub values: Vec<f32>,
}

struct Collector {
    path: Vec<String>,
    tensors: Vec<(String, Tensor<1>, Vec<usize>)>,
}

impl ModuleVisitor for Collector {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let shape = t.dims().to_vec();
        let n = shape.iter().product::<usize>();
        self.tensors
            .push((self.path.join("."), t.reshape([n]), shape));
    }
}

/// Every float tensor of a module with its path, still on the device (no readback).
pub fn device_tensors<M: Module>(module: &M) -> Vec<(String, Tensor<1>, Vec<usize>)> {
    let mut c = Collector {
        path: Vec::new(),
        tensors: Vec::new(),
    };
    module.visit(&mut c);
    c.tensors
}

/// Read every float tensor of a module back to the host. Burn's own `Module::into_record`
/// reads synchronously, which panics in a browser; this awaits each read.
pub async fn host_tensors<M: Module>(module: &M) -> Result<Vec<NamedTensor>, CheckpointError> {
    let mut out = Vec::new();
    for (name, t, shape) in device_tensors(module) {
        let values = read_f32(t, "a parameter")
            .await
            .map_err(|e| CheckpointError::Readback {
                name: name.clone(),
                reason: e.to_string(),
            })?;
        out.push(NamedTensor {
            name,
            shape,
            values,
        });
    }
    Ok(out)
}

/// Serialise named tensors (and string metadata) as safetensors bytes.
pub fn safetensors_bytes(
    tensors: &[NamedTensor],
    metadata: BTreeMap<String, String>,
) -> Result<Vec<u8>, CheckpointError> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.values.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            TensorView::new(Dtype::F32, t.shape.clone(), b)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| CheckpointError::Format {
                    path: PathBuf::from(&t.name),
                    reason: e.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let metadata: HashMap<String, String> = metadata.into_iter().collect();
    safetensors::serialize(views, Some(metadata)).map_err(|e| CheckpointError::Format {
        path: PathBuf::new(),
        reason: e.to_string(),
    })
}

/// Tensors by name, and the string metadata, of a parsed safetensors file.
pub type ParsedSafetensors = (HashMap<String, NamedTensor>, HashMap<String, String>);

/// Parse safetensors bytes into host tensors and metadata. `path` names the source in errors.
pub fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<ParsedSafetensors, CheckpointError> {
    let format_err = |reason: String| CheckpointError::Format {
        path: path.to_path_buf(),
        reason,
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| format_err(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes).map_err(|e| format_err(e.to_string()))?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(format_err(format!(
                "tensor {name} has dtype {:?}, expected F32",
                view.dtype()
            )));
        }
        let values: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        // A batch norm's running variance may be +inf: a router whose pre-norm activations
        // overflowed (vanilla MoE AT's collapsed image router did, on CIFAR-10) normalises to
        // its shift, and the model computes with it as it did in training. Nothing else may be
        // infinite, and nothing may be NaN.
        let saturated_variance = name.ends_with("running_var");
        let bad = |v: &f32| !(v.is_finite() || saturated_variance && *v == f32::INFINITY);
        if let Some(i) = values.iter().position(bad) {
            return Err(format_err(format!(
                "tensor {name} holds {} at index {i}: a model or optimiser state must be finite",
                values[i]
            )));
        }
        out.insert(
            name.clone(),
            NamedTensor {
                name,
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    Ok((out, metadata))
}

struct Loader<'a> {
    path: Vec<String>,
    tensors: &'a mut HashMap<String, NamedTensor>,
    errors: Vec<String>,
}

impl ModuleMapper for Loader<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.path.join(".");
        let Some(stored) = self.tensors.remove(&name) else {
            self.errors.push(format!("tensor {name} is missing"));
            return param;
        };
        param.map(|current| {
            let shape: Vec<usize> = current.dims().to_vec();
            if shape != stored.shape {
                self.errors.push(format!(
                    "tensor {name} has shape {:?}, the config needs {shape:?}",
                    stored.shape
                ));
                return current;
            }
            let grad = current.is_require_grad();
            let device = current.device();
            let loaded =
                Tensor::<D>::from_data(TensorData::new(stored.values, stored.shape), &device);
            if grad { loaded.require_grad() } else { loaded }
        })
    }
}

/// Replace every float tensor of `module` by the stored one of the same path, checking that
/// every tensor is present with the right shape and that nothing is left over.
pub fn load_tensors<M: Module>(
    module: M,
    mut tensors: HashMap<String, NamedTensor>,
    path: &Path,
) -> Result<M, CheckpointError> {
    let mut loader = Loader {
        path: Vec::new(),
        tensors: &mut tensors,
        errors: Vec::new(),
    };
    let module = module.map(&mut loader);
    let mut errors = loader.errors;
    let mut extra: Vec<&String> = tensors.keys().collect();
    extra.sort();
    errors.extend(
        extra
            .into_iter()
            .map(|name| format!("unexpected tensor {name}")),
    );
    if errors.is_empty() {
        Ok(module)
    } else {
        let shown = errors.len().min(5);
        let more = if errors.len() > shown {
            format!(" (and {} more)", errors.len() - shown)
        } else {
            String::new()
        };
        Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason: format!("{}{more}", errors[..shown].join("; ")),
        })
    }
}

/// Serialise a model (reading it back) with its spec in the metadata.
pub async fn model_bytes(model: &MoeNet, spec: &ModelSpec) -> Result<Vec<u8>, CheckpointError> {
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), MODEL_FORMAT.to_string());
    metadata.insert(
        "spec".to_string(),
        serde_json::to_string(spec).unwrap_or_default(),
    );
    safetensors_bytes(&host_tensors(model).await?, metadata)
}

/// Write `model` to a safetensors file.
pub async fn save_model(
    model: &MoeNet,
    spec: &ModelSpec,
    path: &Path,
) -> Result<(), CheckpointError> {
    let bytes = model_bytes(model, spec).await?;
    write_atomic(path, &bytes)
}

/// Write a file through a temporary sibling, flushed to disk, and a rename, so a crash never
/// leaves half a file (and a failed write, a full disk say, leaves the old file as it was).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    use std::io::Write as _;
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let io = |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    };
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    if let Err(e) = written {
        std::fs::remove_file(&tmp).ok();
        return Err(io(e));
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Build the model `spec` describes on `device` from safetensors bytes.
pub fn model_from_bytes(
    bytes: &[u8],
    spec: &ModelSpec,
    device: &Device,
    path: &Path,
) -> Result<MoeNet, CheckpointError> {
    // The file holds every weight, so a spec that needs far more than the file holds is refused
    // before its model is built: a hostile config.json cannot make this allocate more than twice
    // the file plus 64 MiB. (Below that, building the model and comparing tensor by tensor
    // names what differs.)
    let weights = advmoe_core::macs::conv_weight_count(spec);
    if weights.saturating_mul(4) > 2 * bytes.len() as u64 + (64 << 20) {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason: format!(
                "the model's config needs at least {weights} weights ({} bytes), but the file \
                 holds {} bytes",
                weights.saturating_mul(4),
                bytes.len()
            ),
        });
    }
    let (tensors, metadata) = parse_safetensors(path, bytes)?;
    if let Some(format) = metadata.get("format")
        && format != MODEL_FORMAT
    {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            reason: format!("format {format:?}, expected {MODEL_FORMAT:?}"),
        });
    }
    let model = MoeNet::new(spec, 0, device)?;
    load_tensors(model, tensors, path)
}

/// Read a model written by [`save_model`] for `spec`.
pub fn load_model(
    path: &Path,
    spec: &ModelSpec,
    device: &Device,
) -> Result<MoeNet, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    model_from_bytes(&bytes, spec, device, path)
}
