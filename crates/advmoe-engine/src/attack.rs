//! The L∞ PGD attack used by `pgd-at` training and by evaluation.
//!
//! Attacks run the model in [`Mode::Eval`] (running batch-norm statistics, as in the TRADES and
//! AdvMoE reference code) and return detached images inside the ε-ball and [0, 1].

use advmoe_core::{AttackSpec, Rng};
use advmoe_model::{Mode, MoeNet};
use burn::tensor::Tensor;

use crate::loss::cross_entropy;
use crate::tensors::uniform_noise;

/// PGD-K on the cross-entropy with an optional uniform random start. `images` and `one_hot` must
/// be on an autodiff device (the model's).
pub fn pgd_linf(
    model: &MoeNet,
    images: Tensor<4>,
    one_hot: Tensor<2>,
    spec: &AttackSpec,
    rng: &mut Rng,
) -> Tensor<4> {
    let images = images.detach();
    let eps = spec.eps as f64;
    let mut adv = if spec.random_start && spec.eps > 0.0 {
        let noise = uniform_noise(images.dims(), spec.eps, rng, &images.device());
        (images.clone() + noise).clamp(0.0, 1.0)
    } else {
        images.clone()
    };
    for _ in 0..spec.steps {
        let x = adv.clone().detach().require_grad();
        let logits = model.forward(x.clone(), Mode::Eval).logits;
        let grads = cross_entropy(logits, one_hot.clone()).backward();
        let Some(grad) = x.grad(&grads) else {
            break;
        };
        let step = Tensor::from_inner(grad.sign()).mul_scalar(spec.step_size as f64);
        let moved = x.detach() + step;
        let delta = (moved - images.clone()).clamp(-eps, eps);
        adv = (images.clone() + delta).clamp(0.0, 1.0);
    }
    adv.detach()
}
