//! One image, looked at closely: its prediction, confidences and routes, and one attack on it
//! with the clean and adversarial views side by side. The CLI's `attack` command and the app's
//! attack lab both use this.

use advmoe_core::{AttackSpec, AttackTarget, Rng};
use advmoe_model::{Mode, MoeNet, Routing, check_routes};
use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::attack::{LogitObjective, RouterObjective, attack, frozen};
use crate::eval::EvalError;
use crate::tensors::read_f32;

/// What a model makes of one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The predicted class.
    pub prediction: usize,
    /// Its probability.
    pub confidence: f32,
    /// The probability of the true label.
    pub label_probability: f32,
    /// Every class's probability.
    pub probabilities: Vec<f32>,
    /// The expert chosen in each MoE layer (empty for a dense model).
    pub routes: Vec<usize>,
}

impl Prediction {
    /// The `k` most probable classes with their probabilities, most probable first.
    pub fn top_k(&self, k: usize) -> Vec<(usize, f32)> {
        let mut ranked: Vec<(usize, f32)> =
            self.probabilities.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(k);
        ranked
    }
}

/// Run `model` on one image `[1, c, h, w]` with `routing` and read back what it predicts.
///
/// # Errors
/// A NaN router score or a failed readback.
pub async fn predict(
    model: &MoeNet,
    image: Tensor<4>,
    routing: &Routing,
    label: usize,
) -> Result<Prediction, EvalError> {
    let out = frozen(model).forward_with(image, Mode::Eval, routing);
    let routes: Vec<usize> = check_routes(&out.routes)
        .await?
        .into_iter()
        .filter_map(|r| r.first().copied())
        .collect();
    let probabilities = read_f32(softmax(out.logits, 1), "probabilities").await?;
    let (prediction, confidence) =
        probabilities
            .iter()
            .copied()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, p)| {
                if p > best.1 { (i, p) } else { best }
            });
    Ok(Prediction {
        prediction,
        confidence,
        label_probability: probabilities.get(label).copied().unwrap_or(f32::NAN),
        probabilities,
        routes,
    })
}

/// One attack on one image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageAttack {
    /// The attack run (its target says which part of the MoE it aimed at).
    pub spec: AttackSpec,
    /// The true label.
    pub label: usize,
    /// `[channels, height, width]` of the images.
    pub shape: [usize; 3],
    /// The clean image, channel-major, in [0, 1].
    pub clean_pixels: Vec<f32>,
    /// The adversarial image, channel-major, in [0, 1].
    pub adversarial_pixels: Vec<f32>,
    /// Largest |δ|.
    pub linf: f32,
    /// ‖δ‖₂.
    pub l2: f32,
    /// The model on the clean image.
    pub clean: Prediction,
    /// The model on the adversarial image (routes recomputed).
    pub adversarial: Prediction,
    /// For the `expert` target: the model on the adversarial image with the clean routes, the
    /// pathway the attack aimed at.
    pub adversarial_with_clean_routes: Option<Prediction>,
}

impl ImageAttack {
    /// The perturbation made visible: 0.5 + 0.5·δ/ε per pixel (gray = unchanged); for an L2
    /// attack the scale is the largest |δ| instead of ε.
    pub fn perturbation_pixels(&self) -> Vec<f32> {
        let scale = if self.spec.kind.is_l2() {
            self.linf
        } else {
            self.spec.eps
        }
        .max(1e-12);
        self.adversarial_pixels
            .iter()
            .zip(&self.clean_pixels)
            .map(|(a, c)| (0.5 + 0.5 * (a - c) / scale).clamp(0.0, 1.0))
            .collect()
    }

    /// Per MoE layer, the clean and the adversarial route.
    pub fn route_pairs(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.clean
            .routes
            .iter()
            .copied()
            .zip(self.adversarial.routes.iter().copied())
    }

    /// Per MoE layer, whether the attack changed the route.
    pub fn flipped(&self) -> Vec<bool> {
        self.route_pairs().map(|(a, b)| a != b).collect()
    }
}

/// Attack one image `[1, c, h, w]` (pixels in [0, 1], on `model`'s autodiff device) with
/// `spec`, whose target picks the objective: `full` and `expert` maximise the loss on the
/// logits (`expert` with routes frozen to the clean ones), `router` moves the routers away from
/// their clean distributions. `seed` fixes the random start.
///
/// # Errors
/// A target only an MoE has ([`AttackTarget::needs_moe`]) on a dense model, a NaN router
/// score or a failed readback.
pub async fn attack_image(
    model: &MoeNet,
    image: Tensor<4>,
    label: usize,
    spec: &AttackSpec,
    seed: u64,
) -> Result<ImageAttack, EvalError> {
    if spec.target.needs_moe() && model.moe_convs().is_empty() {
        return Err(EvalError::NeedsMoe(spec.target));
    }
    let model = &frozen(model);
    let [_, c, h, w] = image.dims();
    let device = image.device();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![label as i64], [1]), &device);
    let mut rng = Rng::stream(seed, 0x6174_7461_636b);
    let (adv, clean_routes) = if spec.target == AttackTarget::Router {
        let objective = RouterObjective::new(model, image.clone(), spec.loss);
        (attack(&objective, image.clone(), spec, &mut rng), None)
    } else {
        let objective = LogitObjective::from_spec(model, image.clone(), labels, spec);
        let adv = attack(&objective, image.clone(), spec, &mut rng);
        let clean_routes =
            (spec.target == AttackTarget::Expert).then(|| objective.routing().clone());
        (adv, clean_routes)
    };
    let clean_pixels = read_f32(image.clone(), "clean image").await?;
    let adversarial_pixels = read_f32(adv.clone(), "adversarial image").await?;
    let (linf, l2sq) =
        adversarial_pixels
            .iter()
            .zip(&clean_pixels)
            .fold((0.0f32, 0.0f32), |(m, s), (a, c)| {
                let d = a - c;
                (m.max(d.abs()), s + d * d)
            });
    let clean = predict(model, image, &Routing::Free, label).await?;
    let adversarial = predict(model, adv.clone(), &Routing::Free, label).await?;
    let adversarial_with_clean_routes = match &clean_routes {
        Some(routing) => Some(predict(model, adv, routing, label).await?),
        None => None,
    };
    Ok(ImageAttack {
        spec: spec.clone(),
        label,
        shape: [c, h, w],
        clean_pixels,
        adversarial_pixels,
        linf,
        l2: l2sq.sqrt(),
        clean,
        adversarial,
        adversarial_with_clean_routes,
    })
}
