//! Losses, all computed in log space (log-softmax on both sides of every KL term, so that no
//! probability underflows to zero and turns a gradient into NaN).

use burn::tensor::{
    Tensor,
    activation::{log_softmax, softmax},
};

use advmoe_model::LayerRoute;

/// Per-sample cross-entropy of `logits` `[batch, classes]` against one-hot targets, `[batch]`.
pub fn cross_entropy_each(logits: Tensor<2>, one_hot: Tensor<2>) -> Tensor<1> {
    let [b, _] = logits.dims();
    (log_softmax(logits, 1) * one_hot)
        .sum_dim(1)
        .reshape([b])
        .neg()
}

/// Mean cross-entropy of `logits` `[batch, classes]` against one-hot targets `[batch, classes]`.
pub fn cross_entropy(logits: Tensor<2>, one_hot: Tensor<2>) -> Tensor<1> {
    cross_entropy_each(logits, one_hot).mean()
}

/// Per-sample `KL(p ‖ q)` from log-probabilities `[batch, classes]`, `[batch]`.
pub fn kl_each_from_log(log_p: Tensor<2>, log_q: Tensor<2>) -> Tensor<1> {
    let [b, _] = log_p.dims();
    (log_p.clone().exp() * (log_p - log_q))
        .sum_dim(1)
        .reshape([b])
}

/// `KL(softmax(p_logits) ‖ softmax(q_logits))` averaged over the batch (PyTorch's
/// `batchmean`), as in TRADES. Gradient flows into both sides.
pub fn kl_div(p_logits: Tensor<2>, q_logits: Tensor<2>) -> Tensor<1> {
    kl_each_from_log(log_softmax(p_logits, 1), log_softmax(q_logits, 1)).mean()
}

/// The routes that carry distinct decisions: the image router's one route, or every per-layer
/// route.
pub fn distinct_routes(routes: &[LayerRoute], image_router: bool) -> &[LayerRoute] {
    if image_router {
        &routes[..routes.len().min(1)]
    } else {
        routes
    }
}

/// Switch-Transformer load balancing, `N · Σ_e f_e · p_e` averaged over the distinct routes
/// (`f_e`: fraction of the batch routed to `e`, `p_e`: mean router probability of `e`). Equals 1
/// for a perfectly balanced router and grows towards `N` as routing collapses.
pub fn load_balance(routes: &[LayerRoute], image_router: bool) -> Option<Tensor<1>> {
    let terms: Vec<Tensor<1>> = distinct_routes(routes, image_router)
        .iter()
        .map(|r| {
            let [_, n] = r.scores.dims();
            let fraction = r.gate.clone().detach().mean_dim(0);
            let prob = softmax(r.scores.clone(), 1).mean_dim(0);
            (fraction * prob).sum().mul_scalar(n as f64)
        })
        .collect();
    let count = terms.len();
    (count > 0).then(|| Tensor::cat(terms, 0).sum().div_scalar(count as f64))
}
