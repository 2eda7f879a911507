//! FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018), L∞ or L2 by the ball.

use burn::tensor::Tensor;

use super::{Ball, Best, Objective, evaluate_detached, value_and_grad};

/// One step of size ε along the sign of the gradient (Goodfellow et al. 2015).
pub(super) fn fgsm(objective: &dyn Objective, ball: &Ball) -> Tensor<4> {
    let x = ball.center.clone();
    let (_, grad) = value_and_grad(objective, x.clone());
    ball.step(x, grad, ball.eps)
}

/// Projected gradient ascent (Madry et al. 2018) from `x`; returns the last iterate. With
/// `best`, every iterate including the last is also offered to the worst-case tracker.
pub(super) fn pgd(
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
        x = ball.step(x, grad, step_size);
    }
    if let Some(best) = best {
        best.update(x.clone(), evaluate_detached(objective, x.clone()));
    }
    x
}
