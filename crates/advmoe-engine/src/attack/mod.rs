//! Adversarial attacks: FGSM, PGD-L∞, PGD-L2, APGD (Croce & Hein 2020) and the Square Attack
//! (Andriushchenko et al. 2020, [`square`]), each with restarts, against any [`Objective`] (the
//! three MoE targets live in [`objective`]).
//!
//! Every attack returns detached images inside the ε-ball around its input (L∞, or L2 for
//! `pgd-l2`) and inside [0, 1]. PGD, APGD and Square keep, per image, the worst case over every
//! iterate and restart: an iterate that succeeded (see [`Evaluation::success`]) beats one that
//! did not, and otherwise the higher objective value wins. So more steps or more restarts from
//! the same random stream can only make an attack stronger on the same images.
//!
//! Everything stays on the device: no readback happens inside an attack.
//!
//! One file per algorithm (`pgd` with FGSM, `apgd`, `square`); [`run_attack`] is the one
//! registration, an exhaustive `match` on [`AttackKind`], so a new kind does not compile until
//! it is handled there.

mod apgd;
pub mod objective;
mod pgd;
mod square;

use advmoe_core::{AttackKind, AttackSpec, Rng};
use burn::tensor::{Bool, Tensor, TensorData};

use apgd::apgd;
pub use apgd::apgd_checkpoints;
pub use objective::{Evaluation, LogitObjective, Objective, RouterObjective, SumObjective, frozen};
use pgd::{fgsm, pgd};
pub use square::{square_fraction, square_side};

use crate::tensors::uniform_noise;

/// Where an attack starts inside the ball.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Start {
    /// At the clean image.
    Clean,
    /// Uniformly at random in the L∞ ball; for L2, a random direction at a uniformly random
    /// radius.
    Uniform,
    /// Clean image plus Gaussian noise of this standard deviation (TRADES: 0.001).
    Gaussian(f32),
}

impl Start {
    /// The start an attack spec asks for.
    pub fn from_spec(spec: &AttackSpec) -> Self {
        if spec.random_start {
            Start::Uniform
        } else {
            Start::Clean
        }
    }
}

/// [`run_attack`] from the start `spec` asks for ([`Start::from_spec`]).
pub fn attack(
    objective: &dyn Objective,
    images: Tensor<4>,
    spec: &AttackSpec,
    rng: &mut Rng,
) -> Tensor<4> {
    run_attack(objective, images, spec, Start::from_spec(spec), rng)
}

/// Run the attack `spec` describes (its `kind`, `eps`, `steps`, `step_size`, `restarts`; its
/// loss and target are the objective's business) from `start`.
///
/// # Shapes
/// - images `[batch, channels, h, w]`, pixels in [0, 1], on an autodiff device
pub fn run_attack(
    objective: &dyn Objective,
    images: Tensor<4>,
    spec: &AttackSpec,
    start: Start,
    rng: &mut Rng,
) -> Tensor<4> {
    let images = images.detach();
    if spec.eps <= 0.0 {
        return images;
    }
    let ball = Ball::new(images.clone(), spec);
    let mut best = Best::default();
    for _ in 0..spec.restarts.max(1) {
        match spec.kind {
            AttackKind::Fgsm => return fgsm(objective, &ball),
            AttackKind::Pgd | AttackKind::PgdL2 => {
                let x = ball.start(start, rng);
                pgd(
                    objective,
                    &ball,
                    x,
                    spec.steps,
                    spec.step_size,
                    Some(&mut best),
                );
            }
            AttackKind::Apgd => {
                let x = ball.start(start, rng);
                apgd(objective, &ball, x, spec.steps, &mut best);
            }
            // Square starts from its own stripes, whatever `start` says.
            AttackKind::Square => square::square(objective, &ball, spec.steps, &mut best, rng),
        }
    }
    best.into_images(images)
}

/// PGD (L∞ or L2, by `spec.kind`) returning the last iterate of a single run, without the
/// worst-case bookkeeping: the inner maximisation of adversarial training, as in the reference
/// implementations (and one forward pass cheaper). Other kinds fall back to [`run_attack`].
pub fn run_attack_last(
    objective: &dyn Objective,
    images: Tensor<4>,
    spec: &AttackSpec,
    start: Start,
    rng: &mut Rng,
) -> Tensor<4> {
    if !matches!(spec.kind, AttackKind::Pgd | AttackKind::PgdL2) || spec.eps <= 0.0 {
        return run_attack(objective, images, spec, start, rng);
    }
    let ball = Ball::new(images.detach(), spec);
    let x = ball.start(start, rng);
    pgd(objective, &ball, x, spec.steps, spec.step_size, None)
}

/// The constraint set: the ε-ball around `center` intersected with [0, 1].
struct Ball {
    center: Tensor<4>,
    eps: f32,
    l2: bool,
}

impl Ball {
    fn new(center: Tensor<4>, spec: &AttackSpec) -> Self {
        Self {
            center,
            eps: spec.eps,
            l2: spec.kind.is_l2(),
        }
    }

    fn project(&self, x: Tensor<4>) -> Tensor<4> {
        let delta = x - self.center.clone();
        let delta = if self.l2 {
            let norm = l2_norm(delta.clone());
            let scale = norm
                .add_scalar(1e-12)
                .recip()
                .mul_scalar(self.eps as f64)
                .clamp_max(1.0);
            delta * scale
        } else {
            let eps = self.eps as f64;
            delta.clamp(-eps, eps)
        };
        // Clamping into [0, 1] only shrinks each coordinate of delta (the center is in [0, 1]),
        // so the result stays in the ball.
        (self.center.clone() + delta).clamp(0.0, 1.0)
    }

    fn start(&self, start: Start, rng: &mut Rng) -> Tensor<4> {
        let shape = self.center.dims();
        let device = self.center.device();
        match start {
            Start::Clean => self.center.clone(),
            Start::Uniform if self.l2 => {
                let n: usize = shape.iter().product();
                let per_image = n / shape[0].max(1);
                let mut values = Vec::with_capacity(n);
                for _ in 0..shape[0] {
                    let dir: Vec<f32> = (0..per_image).map(|_| rng.normal()).collect();
                    let norm = dir.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                    let radius = self.eps * rng.uniform();
                    values.extend(dir.iter().map(|v| v / norm * radius));
                }
                let noise = Tensor::from_data(TensorData::new(values, shape), &device);
                self.project(self.center.clone() + noise)
            }
            Start::Uniform => {
                self.project(self.center.clone() + uniform_noise(shape, self.eps, rng, &device))
            }
            Start::Gaussian(std) => {
                let n: usize = shape.iter().product();
                let values: Vec<f32> = (0..n).map(|_| std * rng.normal()).collect();
                let noise = Tensor::from_data(TensorData::new(values, shape), &device);
                self.project(self.center.clone() + noise)
            }
        }
    }

    /// One step of `step_size` from `x` along the steepest-ascent direction of the gradient, then
    /// the projection onto the ball (detached): for L∞ one launch on `wgpu`
    /// ([`advmoe_kernels::linf_step`]).
    fn step(&self, x: Tensor<4>, grad: Tensor<4>, step_size: f32) -> Tensor<4> {
        if self.l2 {
            self.project(x + self.direction(grad).mul_scalar(f64::from(step_size)))
                .detach()
        } else {
            advmoe_kernels::linf_step(
                x,
                grad,
                self.center.clone(),
                f64::from(step_size),
                f64::from(self.eps),
            )
        }
    }

    /// The steepest-ascent direction of the norm: `sign(g)` for L∞, `g / ‖g‖₂` for L2.
    fn direction(&self, grad: Tensor<4>) -> Tensor<4> {
        if self.l2 {
            let norm = l2_norm(grad.clone()).add_scalar(1e-12);
            grad / norm
        } else {
            grad.sign()
        }
    }
}

/// Per-image L2 norm, `[batch, 1, 1, 1]`.
fn l2_norm(x: Tensor<4>) -> Tensor<4> {
    x.square().sum_dim(1).sum_dim(2).sum_dim(3).sqrt()
}

/// The objective and its gradient with respect to the images at `x` (values detached).
fn value_and_grad(objective: &dyn Objective, x: Tensor<4>) -> (Evaluation, Tensor<4>) {
    let x = x.detach().require_grad();
    let eval = objective.evaluate(x.clone());
    let grads = eval.value.clone().sum().backward();
    let grad = x
        .grad(&grads)
        .map_or_else(|| x.zeros_like().detach(), Tensor::from_inner);
    (
        Evaluation {
            value: eval.value.detach(),
            success: eval.success,
        },
        grad,
    )
}

fn evaluate_detached(objective: &dyn Objective, x: Tensor<4>) -> Evaluation {
    let eval = objective.evaluate(x.detach());
    Evaluation {
        value: eval.value.detach(),
        success: eval.success,
    }
}

/// Expand a per-image mask `[batch]` to the image shape.
fn mask4(mask: Tensor<1, Bool>, shape: [usize; 4]) -> Tensor<4, Bool> {
    mask.reshape([shape[0], 1, 1, 1]).expand(shape)
}

/// The worst case so far, per image.
#[derive(Default)]
struct Best {
    state: Option<(Tensor<4>, Evaluation)>,
}

/// Per image, whether `new` is worse for the model than `old`: it succeeded where `old` did
/// not, or both agree on success and its value is higher.
fn better(new: &Evaluation, old: &Evaluation) -> Tensor<1, Bool> {
    let s_new = new.success.clone().int();
    let s_old = old.success.clone().int();
    s_new.clone().greater(s_old.clone()).bool_or(
        s_new
            .equal(s_old)
            .bool_and(new.value.clone().greater(old.value.clone())),
    )
}

/// Per image, `new` where `take` (from [`better`]) holds, else `old`. (Success is their `or`:
/// where `new` succeeded and `old` did not, `take` holds.)
fn merge(old: Evaluation, new: Evaluation, take: Tensor<1, Bool>) -> Evaluation {
    Evaluation {
        value: old.value.mask_where(take, new.value),
        success: old.success.bool_or(new.success),
    }
}

impl Best {
    fn update(&mut self, x: Tensor<4>, eval: Evaluation) {
        let Some((best_x, best)) = self.state.take() else {
            self.state = Some((x.detach(), eval));
            return;
        };
        let take = better(&eval, &best);
        let images = best_x.mask_where(mask4(take.clone(), x.dims()), x.detach());
        self.state = Some((images, merge(best, eval, take)));
    }

    fn into_images(self, fallback: Tensor<4>) -> Tensor<4> {
        self.state.map_or(fallback, |(x, _)| x)
    }
}
