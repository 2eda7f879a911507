//! Losses, all computed in log space.

use burn::tensor::{
    Tensor,
    activation::{log_softmax, softmax},
};

use advmoe_model::LayerRoute;

/// Mean cross-entropy of `logits` `[batch, classes]` against one-hot targets `[batch, classes]`.
pub fn cross_entropy(logits: Tensor<2>, one_hot: Tensor<2>) -> Tensor<1> {
    (log_softmax(logits, 1) * one_hot).sum_dim(1).mean().neg()
}

/// Switch-Transformer load balancing, `N · Σ_e f_e · p_e` averaged over the distinct routes
/// (`f_e`: fraction of the batch routed to `e`, `p_e`: mean router probability of `e`). Equals 1
/// for a perfectly balanced router and grows towards `N` as routing collapses.
pub fn load_balance(routes: &[LayerRoute], image_router: bool) -> Option<Tensor<1>> {
    let routes = if image_router {
        &routes[..routes.len().min(1)]
    } else {
        routes
    };
    let terms: Vec<Tensor<1>> = routes
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
