//! The Square Attack in the L∞ ball (Andriushchenko, Croce, Flammarion and Hein 2020): a random
//! search over the vertices of the ball that reads only the objective's values, never its
//! gradient. AutoAttack runs it beside its gradient attacks as the check against gradient
//! masking: a model whose robust accuracy holds against APGD but falls against Square hides its
//! gradient rather than resisting.
//!
//! It starts from vertical stripes (each column of each channel at +ε or −ε) and, at every
//! query, redraws one square window of each image (a random position, one random sign per
//! channel), keeping the change where the objective prefers it ([`super::better`]). The windows
//! shrink on the paper's schedule ([`square_fraction`]). The reference code also redraws a
//! window until it differs from what it replaces; this one does not (that would need a readback
//! per query), so now and then a query repeats the current point.

use advmoe_core::Rng;
use burn::tensor::{Tensor, TensorData};

use super::{Ball, Best, Objective, better, evaluate_detached, mask4, merge};

/// The fraction of an image's pixels the first windows cover (AutoAttack's setting).
const P_INIT: f32 = 0.8;

/// Query counts, out of 10,000, after which the window's area halves.
const HALVINGS: [usize; 9] = [10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000];

/// The fraction of the pixels a window covers at query `query` of `queries`: [`P_INIT`],
/// halved after each of [`HALVINGS`] (scaled from 10,000 queries to `queries`).
pub fn square_fraction(query: usize, queries: usize) -> f32 {
    let at = (query as f64 / queries.max(1) as f64 * 10_000.0) as usize;
    let halvings = HALVINGS.iter().filter(|&&h| at > h).count();
    P_INIT / (1u32 << halvings) as f32
}

/// The side of the window at query `query` of `queries` on `h × w` images: the square root of
/// the fraction's area, at least 1 pixel and smaller than the image.
pub fn square_side(query: usize, queries: usize, h: usize, w: usize) -> usize {
    let area = square_fraction(query, queries) * (h * w) as f32;
    let largest = h.min(w).saturating_sub(1).max(1);
    (area.sqrt().round() as usize).clamp(1, largest)
}

/// `n` values, each `eps` or `-eps` at random.
fn random_signs(rng: &mut Rng, n: usize, eps: f32) -> Vec<f32> {
    (0..n)
        .map(|_| if rng.coin() { eps } else { -eps })
        .collect()
}

/// `queries` evaluations of the objective in `ball` (the first at the stripes), every one
/// offered to `best`.
pub(super) fn square(
    objective: &dyn Objective,
    ball: &Ball,
    queries: usize,
    best: &mut Best,
    rng: &mut Rng,
) {
    let shape = ball.center.dims();
    let [b, c, h, w] = shape;
    let device = ball.center.device();
    let eps = ball.eps;

    let mut stripes = Vec::with_capacity(b * c * h * w);
    for _ in 0..b * c {
        let columns = random_signs(rng, w, eps);
        for _ in 0..h {
            stripes.extend_from_slice(&columns);
        }
    }
    let mut delta = Tensor::<4>::from_data(TensorData::new(stripes, shape), &device);
    let x = ball.project(ball.center.clone() + delta.clone());
    let mut current = evaluate_detached(objective, x.clone());
    best.update(x, current.clone());

    let index = |n: usize, dims: [usize; 4]| {
        let values: Vec<f32> = (0..n).map(|v| v as f32).collect();
        Tensor::<4>::from_data(TensorData::new(values, dims), &device)
    };
    let rows = index(h, [1, 1, h, 1]);
    let columns = index(w, [1, 1, 1, w]);
    // 1 where `positions - start` is in [0, side), else 0.
    let inside = |positions: Tensor<4>, start: Vec<f32>, side: usize| {
        let start = Tensor::<4>::from_data(TensorData::new(start, [b, 1, 1, 1]), &device);
        let offset = positions - start;
        offset
            .clone()
            .greater_equal_elem(0.0)
            .bool_and(offset.lower_elem(side as f32))
            .float()
    };
    for query in 1..queries {
        let side = square_side(query, queries, h, w);
        let tops: Vec<f32> = (0..b).map(|_| rng.below(h - side + 1) as f32).collect();
        let lefts: Vec<f32> = (0..b).map(|_| rng.below(w - side + 1) as f32).collect();
        let signs = random_signs(rng, b * c, eps);
        let window = inside(rows.clone(), tops, side).expand([b, 1, h, w])
            * inside(columns.clone(), lefts, side).expand([b, 1, h, w]);
        let window = window.expand(shape);
        let values =
            Tensor::<4>::from_data(TensorData::new(signs, [b, c, 1, 1]), &device).expand(shape);
        let candidate = delta.clone() * window.clone().neg().add_scalar(1.0) + values * window;
        let x = ball.project(ball.center.clone() + candidate.clone());
        let eval = evaluate_detached(objective, x.clone());
        let take = better(&eval, &current);
        delta = delta.mask_where(mask4(take.clone(), shape), candidate);
        current = merge(current, eval.clone(), take);
        best.update(x, eval);
    }
}
