//! Clean evaluation: accuracy, test loss and expert load per MoE layer.

use advmoe_data::ImageSet;
use advmoe_model::{Mode, MoeNet, RouteError, check_routes};
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::loss::cross_entropy;
use crate::tensors::{ReadbackError, read_f32, read_i64, to_device};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Images per forward pass.
    pub batch_size: usize,
    /// Evaluate only the first this many test images (0: all).
    pub limit: usize,
    /// Per MoE layer and expert, keep the indices of up to this many images routed there.
    pub examples_per_expert: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            batch_size: 250,
            limit: 0,
            examples_per_expert: 0,
        }
    }
}

/// Measured on a test set.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalResult {
    /// Clean accuracy.
    pub clean_acc: f64,
    /// Mean clean cross-entropy.
    pub test_loss: f64,
    /// Images evaluated.
    pub images: usize,
    /// `[moe layer][expert]` fraction of images routed there.
    pub expert_load: Vec<Vec<f64>>,
    /// `[moe layer][class][expert]`: images of each class routed to each expert.
    pub class_expert: Vec<Vec<Vec<usize>>>,
    /// `[moe layer][expert]`: indices (into the set) of the first images routed there, up to
    /// `EvalOptions::examples_per_expert` each.
    pub examples: Vec<Vec<Vec<usize>>>,
}

/// Why an evaluation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// An attack target that only an MoE has, asked of a dense model.
    #[error("the {0} target needs an MoE model; this one is dense")]
    NeedsMoe(advmoe_core::AttackTarget),
    /// Routing failed (e.g. a NaN router score).
    #[error(transparent)]
    Route(#[from] RouteError),
    /// A readback failed.
    #[error(transparent)]
    Readback(#[from] ReadbackError),
    /// A saved evaluation in progress that does not belong to this model and these attacks.
    #[error("cannot continue the saved evaluation: {0}")]
    Resume(String),
}

impl EvalError {
    /// Whether the device failed (a readback that did not complete, as when a GPU device is
    /// lost), rather than the model or the request.
    pub fn is_device_failure(&self) -> bool {
        matches!(self, Self::Readback(_))
    }
}

/// How many of a test set's `len` images an evaluation limited to `limit` measures (0: all).
pub fn images_to_evaluate(limit: usize, len: usize) -> usize {
    if limit == 0 { len } else { limit.min(len) }
}

/// Evaluate `model` (on any device, in eval mode without autodiff) on `set`.
/// Reads back logits and routes: not for the training hot loop.
pub async fn evaluate(
    model: &MoeNet,
    set: &ImageSet,
    options: &EvalOptions,
    device: &Device,
) -> Result<EvalResult, EvalError> {
    let total = images_to_evaluate(options.limit, set.len());
    let plain = model.valid();
    let plain_device = device.clone().without_autodiff();
    let moe_convs = model.moe_convs();
    let num_experts = moe_convs.first().map_or(0, |c| c.num_experts);
    let mut load = vec![vec![0usize; num_experts]; moe_convs.len()];
    let mut class_expert =
        vec![vec![vec![0usize; num_experts]; model.num_classes]; moe_convs.len()];
    let mut examples = vec![vec![Vec::new(); num_experts]; moe_convs.len()];
    let (mut correct, mut loss_sum) = (0usize, 0.0f64);
    let mut start = 0;
    while start < total {
        let end = (start + options.batch_size.max(1)).min(total);
        let host = set.batch(start, end);
        let batch = to_device(&host, model.num_classes, &plain_device);
        let out = plain.forward(batch.images.clone(), Mode::Eval);
        let routes = check_routes(&out.routes).await.map_err(|e| match e {
            RouteError::NonFinite { layer, sample } => RouteError::NonFinite {
                layer,
                sample: sample + start,
            },
            other => other,
        })?;
        for (layer, experts) in routes.iter().enumerate() {
            for (i, (&e, &y)) in experts.iter().zip(&host.labels).enumerate() {
                load[layer][e] += 1;
                class_expert[layer][usize::from(y)][e] += 1;
                if examples[layer][e].len() < options.examples_per_expert {
                    examples[layer][e].push(start + i);
                }
            }
        }
        let n = host.len() as f64;
        let loss = read_f32(
            cross_entropy(out.logits.clone(), batch.one_hot.clone()),
            "test loss",
        )
        .await?;
        loss_sum += f64::from(loss.first().copied().unwrap_or(f32::NAN)) * n;
        correct += count_correct(out.logits, &host.labels).await?;
        start = end;
    }
    let denom = total.max(1) as f64;
    Ok(EvalResult {
        clean_acc: correct as f64 / denom,
        test_loss: loss_sum / denom,
        images: total,
        expert_load: load
            .into_iter()
            .map(|l| l.into_iter().map(|c| c as f64 / denom).collect())
            .collect(),
        class_expert,
        examples,
    })
}

/// Correct predictions of `logits` `[batch, classes]` against `labels`.
pub async fn count_correct(logits: Tensor<2>, labels: &[u16]) -> Result<usize, EvalError> {
    Ok(correct_each(logits, labels)
        .await?
        .iter()
        .filter(|c| **c)
        .count())
}

/// Per image, whether `logits` `[batch, classes]` predict its label.
pub(crate) async fn correct_each(
    logits: Tensor<2>,
    labels: &[u16],
) -> Result<Vec<bool>, EvalError> {
    let [b, _] = logits.dims();
    Ok(read_i64(logits.argmax(1).reshape([b]), "predictions")
        .await?
        .iter()
        .zip(labels)
        .map(|(p, l)| *p == i64::from(*l))
        .collect())
}
