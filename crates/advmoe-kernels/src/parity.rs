//! The sparse kernels against the reference on one MoE convolution: what the parity tests
//! assert and what the benchmark checks before it times anything (a benchmark of a kernel that
//! computes something else would measure nothing). One path runs the convolution through
//! [`crate::sparse_moe_conv`] or [`crate::reference::moe_conv`]; both see the same inputs and
//! the same upstream gradient, and [`relative_difference`] compares what they return.

use burn::tensor::{Int, Tensor};

/// The inputs of one checked convolution.
pub struct ParityCase<'a> {
    /// Input `[batch, c_in, h, w]`, requiring a gradient.
    pub input: &'a Tensor<4>,
    /// Expert filters `[num_experts · c_out, c_in, k, k]`, requiring a gradient.
    pub weight: &'a Tensor<4>,
    /// Router scores `[batch, num_experts]`, a leaf requiring a gradient.
    pub scores: &'a Tensor<2>,
    /// The route the model takes from the scores: the gate (whose gradient reaches the scores
    /// through the straight-through estimator) and each sample's expert.
    pub route: &'a dyn Fn(Tensor<2>) -> (Tensor<2>, Tensor<1, Int>),
    /// Convolution stride (padding is `k / 2`).
    pub stride: usize,
    /// The gradient flowing into the output, made for the output's shape; `None`: only the
    /// forward pass is checked.
    pub upstream: Option<&'a dyn Fn([usize; 4]) -> Tensor<4>>,
}

/// Why a path could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {0} got no gradient")]
pub struct MissingGradient(pub &'static str);

/// Run `case` through the device's own path (`sparse`: the sparse kernels on wgpu, the split by
/// expert on the CPU, see [`crate::moe_conv`]) or the reference: the output and, with an
/// upstream gradient, the gradients of the input, the weight and the router scores, each
/// flattened and detached (not read back).
///
/// # Errors
/// An input that got no gradient.
pub fn run_path(sparse: bool, case: &ParityCase<'_>) -> Result<Vec<Tensor<1>>, MissingGradient> {
    let padding = case.weight.dims()[2] / 2;
    let (gate, experts) = (case.route)(case.scores.clone());
    let y = if sparse {
        crate::moe_conv(
            case.input.clone(),
            case.weight.clone(),
            gate,
            experts,
            case.stride,
            padding,
        )
    } else {
        crate::reference::moe_conv(
            case.input.clone(),
            case.weight.clone(),
            gate,
            case.stride,
            padding,
        )
    };
    let mut out = vec![y.clone().detach().flatten(0, 3)];
    if let Some(upstream) = case.upstream {
        let grads = (y.clone() * upstream(y.dims())).sum().backward();
        let grad4 = |t: &Tensor<4>, what| {
            t.grad(&grads)
                .map(|g| Tensor::<4>::from_inner(g).flatten(0, 3))
                .ok_or(MissingGradient(what))
        };
        out.push(grad4(case.input, "input")?);
        out.push(grad4(case.weight, "weight")?);
        let scores = case
            .scores
            .grad(&grads)
            .map(|g| Tensor::<2>::from_inner(g).flatten(0, 1))
            .ok_or(MissingGradient("router scores"))?;
        out.push(scores);
    }
    Ok(out)
}

/// The largest `|got - want|` relative to the largest `|want|` (at least 1): the measure both
/// the tests (bound 2e-5) and the benchmark (bound 1e-3) hold the sparse path to. A NaN or an
/// infinity anywhere, or lengths that differ, count as total disagreement (infinity).
pub fn relative_difference(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() || got.iter().chain(want).any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    f64::from(diff / scale)
}
