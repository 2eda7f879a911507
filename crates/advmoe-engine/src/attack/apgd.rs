//! Auto-PGD in the L∞ ball (Croce & Hein 2020).

use burn::tensor::{Bool, Tensor};

use super::{Ball, Best, Objective, evaluate_detached, mask4, value_and_grad};

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
pub(super) fn apgd(
    objective: &dyn Objective,
    ball: &Ball,
    x0: Tensor<4>,
    steps: usize,
    best: &mut Best,
) {
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
