//! The MoE convolution: channel-group experts with hard top-1 routing.
//!
//! The convolution itself is `advmoe_kernels::moe_conv`: sparse WGSL kernels on `wgpu` devices
//! (only the selected expert runs), the reference elsewhere (one dense conv over all experts'
//! filters, then each sample keeps the `width_out` channels of its own expert). The router
//! receives gradient through the straight-through estimator: the selected expert's output is
//! multiplied by a gate whose value is exactly 1 and whose derivative with respect to the
//! selected score is 1, so `dL/ds[b, e_b] = sum(dL/dy_b * y_b)` and unselected scores get zero.
//!
//! A NaN score makes its sample's gate NaN (its output is poisoned, never silently expert 0), and
//! [`check_routes`] turns it into an error wherever routes are read back.

use advmoe_core::Rng;
use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor};

use crate::layers::{Fc, kaiming_std, normal_tensor};
use crate::readback::{ReadbackError, read_f32, read_i64};

/// The routing decision of one MoE layer for a batch.
#[derive(Debug, Clone)]
pub struct LayerRoute {
    /// Router scores (logits), `[batch, num_experts]`.
    pub scores: Tensor<2>,
    /// Selected expert per sample, `[batch]`.
    pub experts: Tensor<1, Int>,
    /// Straight-through gate, `[batch, num_experts]`: one-hot in value.
    pub gate: Tensor<2>,
}

/// `[batch, n]` one-hot rows of `indices` (each in `0..n`), computed on the device. Burn's own
/// `Tensor::one_hot` checks its input with a synchronous readback, which panics in a browser and
/// costs a GPU round trip per call natively; this never reads back.
pub fn one_hot_rows(indices: Tensor<1, Int>, n: usize) -> Tensor<2> {
    let [b] = indices.dims();
    let device = indices.device();
    let classes = Tensor::<1, Int>::arange(0..n as i64, &device)
        .reshape([1, n])
        .repeat_dim(0, b);
    indices
        .reshape([b, 1])
        .repeat_dim(1, n)
        .equal(classes)
        .float()
}

/// Top-1 selection (ties go to the lowest index) and the straight-through gate.
///
/// # Shapes
/// - scores `[batch, num_experts]`
pub fn gate_from_scores(scores: Tensor<2>) -> LayerRoute {
    let [batch, num_experts] = scores.dims();
    let experts = scores.clone().detach().argmax(1).reshape([batch]);
    let one_hot = one_hot_rows(experts.clone(), num_experts);
    let straight_through = scores.clone() - scores.clone().detach() + 1.0;
    let gate = one_hot * straight_through;
    LayerRoute {
        scores,
        experts,
        gate,
    }
}

/// Top-1 selection with a constant gate: the routers decide, but no gradient passes through the
/// decision (`scores` stay as given, so objectives on them remain differentiable). With hard
/// routing the network is piecewise smooth in its input and the routes are piecewise constant,
/// so this gives the exact gradient almost everywhere; the straight-through gate's extra term is
/// a training device, and in an attack it swamps the signed gradient (measured on `synthetic`:
/// PGD-10 at 8/255 through the straight-through gate left 88% accuracy where the same attack
/// with routes held constant left 6%).
///
/// # Shapes
/// - scores `[batch, num_experts]`
pub fn hard_route(scores: Tensor<2>) -> LayerRoute {
    let [batch, num_experts] = scores.dims();
    let experts = scores.clone().detach().argmax(1).reshape([batch]);
    let gate = one_hot_rows(experts.clone(), num_experts);
    LayerRoute {
        scores,
        experts,
        gate,
    }
}

/// A route fixed in advance (e.g. the clean image's route while attacking the experts alone):
/// the gate is the constant one-hot of `experts`, and the scores are that one-hot too (no router
/// runs, no gradient reaches a router).
///
/// # Shapes
/// - experts `[batch]`
pub fn fixed_route(experts: Tensor<1, Int>, num_experts: usize) -> LayerRoute {
    let gate = one_hot_rows(experts.clone(), num_experts);
    LayerRoute {
        scores: gate.clone(),
        experts,
        gate,
    }
}

/// Routes that cannot be trusted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    /// A router produced NaN or infinite scores.
    #[error("router of MoE layer {layer} produced a non-finite score for sample {sample}")]
    NonFinite {
        /// MoE layer index.
        layer: usize,
        /// Sample index in the batch.
        sample: usize,
    },
    /// The routes could not be read back from the device.
    #[error("reading the routes of MoE layer {layer} back failed: {reason}")]
    Readback {
        /// MoE layer index.
        layer: usize,
        /// Why.
        reason: String,
    },
}

/// Read the routes back and return the selected experts, `[layer][sample]`, or an error for a
/// non-finite score. Reads back: for evaluation and inspection, not the training loop.
pub async fn check_routes(routes: &[LayerRoute]) -> Result<Vec<Vec<usize>>, RouteError> {
    let mut all = Vec::with_capacity(routes.len());
    for (layer, route) in routes.iter().enumerate() {
        let [_, n] = route.scores.dims();
        let readback = |e: ReadbackError| RouteError::Readback {
            layer,
            reason: e.to_string(),
        };
        let scores = read_f32(route.scores.clone(), "router scores")
            .await
            .map_err(readback)?;
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(RouteError::NonFinite {
                layer,
                sample: i / n.max(1),
            });
        }
        let experts = read_i64(route.experts.clone(), "routes")
            .await
            .map_err(readback)?;
        all.push(experts.into_iter().map(|e| e as usize).collect());
    }
    Ok(all)
}

/// Per-layer router: global average pool of the layer's input, then linear(w_in → N).
#[derive(Module, Debug)]
pub struct LayerRouter {
    /// The linear scorer.
    pub fc: Fc,
}

impl LayerRouter {
    /// # Shapes
    /// - input `[batch, channels_in, h, w]`, output scores `[batch, num_experts]`
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let [b, c, _, _] = x.dims();
        let pooled = x.mean_dims(&[2, 3]).reshape([b, c]);
        self.fc.forward(pooled)
    }
}

/// An MoE conv with `num_experts` experts of `width_out` filters each (a plain conv when
/// `num_experts == 1`). Weight layout: `[num_experts * width_out, channels_in, k, k]`, expert `e`
/// owning filters `e * width_out .. (e + 1) * width_out`.
#[derive(Module, Debug)]
pub struct MoeConv2d {
    /// All experts' filters.
    pub weight: Param<Tensor<4>>,
    /// Its own router, for `per-layer` routing.
    pub router: Option<LayerRouter>,
    /// Number of experts.
    pub num_experts: usize,
    /// Filters per expert (the output width).
    pub width_out: usize,
    /// Stride.
    pub stride: usize,
}

impl MoeConv2d {
    /// Create with Kaiming-normal weights (fan-out of one expert).
    #[expect(
        clippy::too_many_arguments,
        reason = "a layer has this many hyper-parameters"
    )]
    pub fn new(
        channels_in: usize,
        width_out: usize,
        kernel: usize,
        stride: usize,
        num_experts: usize,
        per_layer_router: bool,
        rng: &mut Rng,
        device: &Device,
    ) -> Self {
        let std = kaiming_std(width_out, kernel);
        let weight = normal_tensor(
            [num_experts * width_out, channels_in, kernel, kernel],
            std,
            rng,
            device,
        );
        let router = (per_layer_router && num_experts > 1).then(|| LayerRouter {
            fc: Fc::new(channels_in, num_experts, rng, device),
        });
        Self {
            weight: Param::from_tensor(weight),
            router,
            num_experts,
            width_out,
            stride,
        }
    }

    /// Kernel size.
    pub fn kernel(&self) -> usize {
        self.weight.shape().dims::<4>()[2]
    }

    /// All experts' outputs, `[batch, num_experts * width_out, h', w']`.
    pub fn forward_all(&self, x: Tensor<4>) -> Tensor<4> {
        advmoe_kernels::conv2d(x, self.weight.val(), self.stride, self.kernel() / 2)
    }

    /// Apply the layer with the given route (ignored when dense). Per-layer routers compute their
    /// own route when `route` is `None`: in training (`exact == false`) from a detached copy of
    /// the input with the straight-through gate (the router learns, the backbone gets no router
    /// gradient); with `exact` from the attached input with a constant gate ([`hard_route`]), as
    /// attacks need. The route used is returned.
    ///
    /// # Shapes
    /// - input `[batch, channels_in, h, w]`
    /// - output `[batch, width_out, ceil(h / stride), ceil(w / stride)]`
    pub fn forward(
        &self,
        x: Tensor<4>,
        route: Option<LayerRoute>,
        exact: bool,
    ) -> (Tensor<4>, Option<LayerRoute>) {
        if self.num_experts == 1 {
            return (self.forward_all(x), None);
        }
        let route = match (route, &self.router) {
            (Some(route), _) => route,
            (None, Some(router)) if exact => hard_route(router.forward(x.clone())),
            (None, Some(router)) => gate_from_scores(router.forward(x.clone().detach())),
            (None, None) => {
                panic!("MoE conv without a route: the model must pass the image router's route")
            }
        };
        let y = advmoe_kernels::moe_conv(
            x,
            self.weight.val(),
            route.gate.clone(),
            route.experts.clone(),
            self.stride,
            self.kernel() / 2,
        );
        (y, Some(route))
    }

    /// The dense weight of expert `e`, `[width_out, channels_in, k, k]`.
    pub fn expert_weight(&self, expert: usize) -> Tensor<4> {
        let w = self.width_out;
        self.weight.val().narrow(0, expert * w, w)
    }
}
