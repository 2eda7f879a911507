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

pub mod objective;
mod square;

use advmoe_core::{AttackKind, AttackSpec, Rng};
use burn::tensor::{Bool, Tensor, TensorData};

pub use objective::{Evaluation, LogitObjective, Objective, RouterObjective, SumObjective};
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

/// One step of size ε along the sign of the gradient (Goodfellow et al. 2015).
fn fgsm(objective: &dyn Objective, ball: &Ball) -> Tensor<4> {
    let x = ball.center.clone();
    let (_, grad) = value_and_grad(objective, x.clone());
    ball.project(x + ball.direction(grad).mul_scalar(ball.eps as f64))
        .detach()
}

/// Projected gradient ascent (Madry et al. 2018) from `x`; returns the last iterate. With
/// `best`, every iterate including the last is also offered to the worst-case tracker.
fn pgd(
    objective: &dyn Objective,
    ball: &Ball,
    mut x: Tensor<4>,
    steps: usize,
    step_size: f32,
    mut best: Option<&mut Best>,
) -> Tensor<4> {
    for _ in 0..steps {
        let (eval, grad) = value_and_grad(objective, x.clone());
        if let Some(best) = best.as_deref_mut() {
            best.update(x.clone(), eval);
        }
        x = ball
            .project(x + ball.direction(grad).mul_scalar(step_size as f64))
            .detach();
    }
    if let Some(best) = best {
        best.update(x.clone(), evaluate_detached(objective, x.clone()));
    }
    x
}

/// APGD's momentum.
const APGD_ALPHA: f64 = 0.75;
/// APGD halves the step size when fewer than this fraction of the steps since the last
/// checkpoint increased the objective.
const APGD_RHO: f32 = 0.75;

/// The iterations at which APGD checks its step size: period `ceil(0.22 n)`, shrinking by
/// `ceil(0.03 n)` per checkpoint down to `ceil(0.06 n)` (Croce & Hein 2020, §3.2).
pub fn apgd_checkpoints(steps: usize) -> Vec<usize> {
    let frac = |f: f64| ((f * steps as f64).ceil() as usize).max(1);
    let (mut period, decrease, min_period) = (frac(0.22), frac(0.03), frac(0.06));
    let mut points = Vec::new();
    let mut at = period;
    while at < steps {
        points.push(at);
        period = period.saturating_sub(decrease).max(min_period);
        at += period;
    }
    points
}

/// Auto-PGD in the L∞ ball (Croce & Hein 2020): step size 2ε per image, halved at a checkpoint
/// when the objective rose in fewer than ρ = 0.75 of the steps since the previous checkpoint, or
/// when neither the step size nor the best value changed since then; a halving restarts from
/// the best point. Momentum 0.75 after the first step.
fn apgd(objective: &dyn Objective, ball: &Ball, x0: Tensor<4>, steps: usize, best: &mut Best) {
    let shape = x0.dims();
    let [b, ..] = shape;
    let device = x0.device();
    if steps == 0 {
        best.update(x0.clone(), evaluate_detached(objective, x0));
        return;
    }
    let checkpoints = apgd_checkpoints(steps);
    let mut eta: Tensor<1> = Tensor::full([b], 2.0 * ball.eps, &device);
    let (f0, mut grad) = value_and_grad(objective, x0.clone());
    best.update(x0.clone(), f0.clone());
    let mut x_max = x0.clone();
    let mut grad_max = grad.clone();
    let mut f_max = f0.value.clone();
    let mut f_prev = f0.value;
    let mut increases: Tensor<1> = Tensor::zeros([b], &device);
    let mut reduced_at_last: Tensor<1, Bool> = Tensor::<1>::zeros([b], &device).greater_elem(0.0);
    let mut f_max_at_last = f_max.clone();
    let mut last_checkpoint = 0usize;
    let mut x_prev = x0.clone();
    let mut x = x0;
    for k in 0..steps {
        // Move.
        let eta4 = eta.clone().reshape([b, 1, 1, 1]);
        let z = ball.project(x.clone() + ball.direction(grad.clone()) * eta4);
        let next = if k == 0 {
            z
        } else {
            let momentum = x.clone() - x_prev.clone();
            ball.project(
                x.clone()
                    + (z - x.clone()).mul_scalar(APGD_ALPHA)
                    + momentum.mul_scalar(1.0 - APGD_ALPHA),
            )
        };
        x_prev = x;
        x = next.detach();
        let is_last = k + 1 == steps;
        // Evaluate the new point (its gradient is needed unless this is the last step).
        let eval = if is_last {
            evaluate_detached(objective, x.clone())
        } else {
            let (eval, g) = value_and_grad(objective, x.clone());
            grad = g;
            eval
        };
        best.update(x.clone(), eval.clone());
        if is_last {
            break;
        }
        increases = increases + eval.value.clone().greater(f_prev.clone()).float();
        f_prev = eval.value.clone();
        let improved = eval.value.clone().greater(f_max.clone());
        x_max = x_max.mask_where(mask4(improved.clone(), shape), x.clone());
        grad_max = grad_max.mask_where(mask4(improved.clone(), shape), grad.clone());
        f_max = f_max.mask_where(improved, eval.value);
        let iteration = k + 1;
        if checkpoints.contains(&iteration) {
            let span = (iteration - last_checkpoint) as f32;
            let oscillating = increases.clone().lower_equal_elem(APGD_RHO * span);
            let stalled = reduced_at_last
                .clone()
                .bool_not()
                .bool_and(f_max_at_last.clone().greater_equal(f_max.clone()));
            let halve = oscillating.bool_or(stalled);
            eta = eta.clone().mask_where(halve.clone(), eta.mul_scalar(0.5));
            x = x.mask_where(mask4(halve.clone(), shape), x_max.clone());
            grad = grad.mask_where(mask4(halve.clone(), shape), grad_max.clone());
            reduced_at_last = halve;
            f_max_at_last = f_max.clone();
            increases = increases.zeros_like();
            last_checkpoint = iteration;
        }
    }
}
