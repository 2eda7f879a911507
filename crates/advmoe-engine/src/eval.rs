//! Clean evaluation: accuracy, test loss and expert load per MoE layer.

use advmoe_core::{AttackSpec, Rng};
use advmoe_data::ImageSet;
use advmoe_model::{Mode, MoeNet, RouteError, check_routes};
use burn::module::Module;
use burn::tensor::{Device, Tensor};

use crate::loss::cross_entropy;
use crate::tensors::{read_f32, read_i64, to_device};

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Images per forward pass.
    pub batch_size: usize,
    /// Evaluate only the first this many test images (0: all).
    pub limit: usize,
    /// Also measure accuracy under this PGD attack.
    pub attack: Option<AttackSpec>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            batch_size: 250,
            limit: 0,
            attack: None,
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
    /// Accuracy under the attack, if one was asked for.
    pub robust_acc: Option<f64>,
    /// Images evaluated.
    pub images: usize,
    /// `[moe layer][expert]` fraction of images routed there.
    pub expert_load: Vec<Vec<f64>>,
}

/// Evaluate `model` (on any device; autodiff is only used when an attack is requested) on `set`.
/// Reads back logits and routes synchronously: not for the training hot loop.
pub fn evaluate(
    model: &MoeNet,
    set: &ImageSet,
    options: &EvalOptions,
    device: &Device,
) -> Result<EvalResult, RouteError> {
    let total = if options.limit == 0 {
        set.len()
    } else {
        options.limit.min(set.len())
    };
    let plain = model.valid();
    let plain_device = device.clone().without_autodiff();
    let num_experts = model.moe_convs().first().map_or(0, |c| c.num_experts);
    let layers = model.moe_convs().len();
    let mut load = vec![vec![0usize; num_experts]; layers];
    let (mut correct, mut robust_correct, mut loss_sum) = (0usize, 0usize, 0.0f64);
    let mut rng = Rng::seed(0x6576_616c);
    let mut start = 0;
    while start < total {
        let end = (start + options.batch_size.max(1)).min(total);
        let host = set.batch(start, end);
        let batch = to_device(&host, model.num_classes, &plain_device);
        let out = plain.forward(batch.images.clone(), Mode::Eval);
        let routes = check_routes(&out.routes).map_err(|e| match e {
            RouteError::NonFinite { layer, sample } => RouteError::NonFinite {
                layer,
                sample: sample + start,
            },
        })?;
        for (layer, experts) in routes.iter().enumerate() {
            for &e in experts {
                load[layer][e] += 1;
            }
        }
        let n = host.len() as f64;
        loss_sum +=
            read_f32(cross_entropy(out.logits.clone(), batch.one_hot.clone()))[0] as f64 * n;
        correct += count_correct(out.logits, &host.labels);
        if let Some(attack) = &options.attack {
            let ad = device.clone().autodiff();
            let batch = to_device(&host, model.num_classes, &ad);
            let model_ad = model.clone().fork(&ad);
            let adv =
                crate::attack::pgd_linf(&model_ad, batch.images, batch.one_hot, attack, &mut rng);
            let logits = plain.forward(adv.inner(), Mode::Eval).logits;
            robust_correct += count_correct(logits, &host.labels);
        }
        start = end;
    }
    let denom = total.max(1) as f64;
    Ok(EvalResult {
        clean_acc: correct as f64 / denom,
        test_loss: loss_sum / denom,
        robust_acc: options
            .attack
            .as_ref()
            .map(|_| robust_correct as f64 / denom),
        images: total,
        expert_load: load
            .into_iter()
            .map(|l| l.into_iter().map(|c| c as f64 / denom).collect())
            .collect(),
    })
}

fn count_correct(logits: Tensor<2>, labels: &[u16]) -> usize {
    let [b, _] = logits.dims();
    read_i64(logits.argmax(1).reshape([b]))
        .iter()
        .zip(labels)
        .filter(|(p, l)| **p == **l as i64)
        .count()
}
