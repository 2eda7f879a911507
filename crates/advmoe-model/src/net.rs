//! Whole models: ResNet and VGG backbones with MoE convs, an optional image router, and the
//! classifier. Built from a validated [`ModelSpec`] following the layer plans of
//! `advmoe_core::macs`, so the MAC counter describes exactly this network.

use std::collections::HashMap;

use advmoe_core::macs::{VggItem, resnet_plan, vgg_plan};
use advmoe_core::{Arch, ModelSpec, Rng, RouterKind, SpecError};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Device, Int, Tensor, module::max_pool2d, ops::MaxPoolOptions};

use crate::layers::{BN_MOMENTUM, Bn, Conv, Fc};
use crate::moe::{LayerRoute, MoeConv2d, fixed_route, gate_from_scores, hard_route};
use crate::router::ImageRouter;

/// Pixel normalisation applied inside the model: inputs live in [0, 1].
pub const INPUT_MEAN: f32 = 0.5;
/// See [`INPUT_MEAN`].
pub const INPUT_STD: f32 = 0.25;

/// Batch-norm mode of a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Batch statistics; updates of the running statistics are returned in [`Output`].
    Train,
    /// Running statistics.
    Eval,
}

/// Batch statistics of one batch norm, to be folded into its running statistics.
#[derive(Debug, Clone)]
pub struct BnUpdate {
    /// The batch norm's module path.
    pub path: String,
    /// Batch mean, `[channels]` (detached).
    pub mean: Tensor<1>,
    /// Biased batch variance, `[channels]` (detached).
    pub var: Tensor<1>,
    /// The factor `n / (n - 1)` from the biased variance to the unbiased one (`n` the values
    /// per channel; 1 when `n` is 1), which the running variance folds in.
    pub unbiased: f64,
}

impl BnUpdate {
    /// The unbiased batch variance, `[channels]`.
    pub fn unbiased_var(&self) -> Tensor<1> {
        self.var.clone().mul_scalar(self.unbiased)
    }
}

/// How a forward pass routes.
#[derive(Debug, Clone, Default)]
pub enum Routing {
    /// The routers decide; per-layer routers read a detached copy of their input (training).
    #[default]
    Free,
    /// The routers decide on the current input, with constant gates and attached router inputs
    /// (see [`crate::moe::hard_route`]): the exact gradient of the hard-routed network, and
    /// router scores differentiable in the image (attacks).
    Exact,
    /// Routes fixed in advance: the selected expert per sample for every MoE layer, in execution
    /// order. No router runs.
    Fixed(Vec<Tensor<1, Int>>),
}

/// What a forward pass produces.
#[derive(Debug, Clone)]
pub struct Output {
    /// `[batch, num_classes]`.
    pub logits: Tensor<2>,
    /// One route per MoE conv, in execution order (empty for dense models).
    pub routes: Vec<LayerRoute>,
    /// Batch-norm statistics (empty in [`Mode::Eval`]).
    pub bn_updates: Vec<BnUpdate>,
}

/// The 1×1 projection shortcut of a block.
#[derive(Module, Debug)]
pub struct Shortcut {
    /// 1×1 conv.
    pub conv: Conv,
    /// Its batch norm.
    pub bn: Bn,
}

/// A ResNet BasicBlock with MoE convs.
#[derive(Module, Debug)]
pub struct Block {
    /// First 3×3 (MoE) conv.
    pub conv1: MoeConv2d,
    /// Batch norm after it (shared by all experts).
    pub bn1: Bn,
    /// Second 3×3 (MoE) conv.
    pub conv2: MoeConv2d,
    /// Batch norm after it.
    pub bn2: Bn,
    /// Projection shortcut where stride or width change.
    pub shortcut: Option<Shortcut>,
}

/// ResNet backbone: dense stem, then blocks.
#[derive(Module, Debug)]
pub struct ResNet {
    /// Stem conv (dense).
    pub stem: Conv,
    /// Stem batch norm.
    pub stem_bn: Bn,
    /// All blocks, stage by stage.
    pub blocks: Vec<Block>,
}

/// One VGG conv layer.
#[derive(Module, Debug)]
pub struct VggLayer {
    /// The conv (dense for the first layer).
    pub conv: MoeConv2d,
    /// Its batch norm.
    pub bn: Bn,
    /// Whether a 2×2 max pool follows.
    pub pool_after: bool,
}

/// VGG backbone.
#[derive(Module, Debug)]
pub struct Vgg {
    /// Conv layers in order.
    pub layers: Vec<VggLayer>,
}

/// An MoE-CNN (or its dense baseline when `num_experts == 1`).
#[derive(Module, Debug)]
pub struct MoeNet {
    /// ResNet backbone (for `arch = resnet`).
    pub resnet: Option<ResNet>,
    /// VGG backbone (for `arch = vgg`).
    pub vgg: Option<Vgg>,
    /// Image router (for MoE models with `router = image`).
    pub router: Option<ImageRouter>,
    /// Classifier after global average pooling.
    pub classifier: Fc,
    /// Number of classes.
    pub num_classes: usize,
}

impl MoeNet {
    /// Build a freshly initialised model. The same `(spec, seed)` gives the same weights on every
    /// device.
    pub fn new(spec: &ModelSpec, seed: u64, device: &Device) -> Result<Self, SpecError> {
        spec.validate()?;
        let mut rng = Rng::stream(seed, 0x006d_6f64_656c);
        let n = spec.num_experts;
        let per_layer = spec.router == RouterKind::PerLayer;
        let moe =
            |ci, co, k, s, rng: &mut Rng| MoeConv2d::new(ci, co, k, s, n, per_layer, rng, device);
        let (resnet, vgg, features) = match spec.arch {
            Arch::Resnet => {
                let plan = resnet_plan(spec);
                let stem = Conv::new(spec.in_channels, spec.width, 3, 1, &mut rng, device);
                let stem_bn = Bn::new(spec.width, "resnet.stem_bn".into(), device);
                let blocks = plan
                    .blocks
                    .iter()
                    .enumerate()
                    .map(|(i, b)| {
                        let p = format!("resnet.blocks.{i}");
                        Block {
                            conv1: moe(
                                b.conv1.channels_in,
                                b.conv1.channels_out,
                                3,
                                b.conv1.stride,
                                &mut rng,
                            ),
                            bn1: Bn::new(b.conv1.channels_out, format!("{p}.bn1"), device),
                            conv2: moe(b.conv2.channels_in, b.conv2.channels_out, 3, 1, &mut rng),
                            bn2: Bn::new(b.conv2.channels_out, format!("{p}.bn2"), device),
                            shortcut: b.shortcut.map(|s| Shortcut {
                                conv: Conv::new(
                                    s.channels_in,
                                    s.channels_out,
                                    1,
                                    s.stride,
                                    &mut rng,
                                    device,
                                ),
                                bn: Bn::new(s.channels_out, format!("{p}.shortcut.bn"), device),
                            }),
                        }
                    })
                    .collect();
                (
                    Some(ResNet {
                        stem,
                        stem_bn,
                        blocks,
                    }),
                    None,
                    plan.features,
                )
            }
            Arch::Vgg => {
                let (items, features) = vgg_plan(spec);
                let mut layers: Vec<VggLayer> = Vec::new();
                for item in items {
                    match item {
                        VggItem::Conv(c) => {
                            let experts = if c.moe { n } else { 1 };
                            let i = layers.len();
                            layers.push(VggLayer {
                                conv: MoeConv2d::new(
                                    c.channels_in,
                                    c.channels_out,
                                    3,
                                    1,
                                    experts,
                                    per_layer,
                                    &mut rng,
                                    device,
                                ),
                                bn: Bn::new(c.channels_out, format!("vgg.layers.{i}.bn"), device),
                                pool_after: false,
                            });
                        }
                        VggItem::MaxPool => {
                            if let Some(last) = layers.last_mut() {
                                last.pool_after = true;
                            }
                        }
                    }
                }
                (None, Some(Vgg { layers }), features)
            }
        };
        let router = (spec.is_moe() && spec.router == RouterKind::Image)
            .then(|| ImageRouter::new(spec.in_channels, n, "router", &mut rng, device));
        let classifier = Fc::new(features, spec.num_classes, &mut rng, device);
        Ok(Self {
            resnet,
            vgg,
            router,
            classifier,
            num_classes: spec.num_classes,
        })
    }

    /// Run the model.
    ///
    /// # Shapes
    /// - images `[batch, channels, h, w]` with pixels in [0, 1]
    /// - output logits `[batch, num_classes]`
    pub fn forward(&self, images: Tensor<4>, mode: Mode) -> Output {
        self.forward_with(images, mode, &Routing::Free)
    }

    /// Run the model with explicit routing (see [`Routing`]). With [`Routing::Fixed`], `routing`
    /// must hold one route per MoE conv.
    ///
    /// # Shapes
    /// - images `[batch, channels, h, w]` with pixels in [0, 1]
    /// - fixed routes `[batch]` each
    /// - output logits `[batch, num_classes]`
    pub fn forward_with(&self, images: Tensor<4>, mode: Mode, routing: &Routing) -> Output {
        let train = mode == Mode::Train;
        let mut updates = Vec::new();
        let mut routes = Vec::new();
        let x = (images - INPUT_MEAN) / INPUT_STD;
        let fixed = match routing {
            Routing::Fixed(r) => Some(r.as_slice()),
            _ => None,
        };
        let exact = matches!(routing, Routing::Exact);
        let image_route = match (&self.router, fixed) {
            (Some(r), None) => {
                let scores = r.forward(x.clone(), train, &mut updates);
                Some(if exact {
                    hard_route(scores)
                } else {
                    gate_from_scores(scores)
                })
            }
            _ => None,
        };
        let mut moe_index = 0;
        let mut moe = |conv: &MoeConv2d, x: Tensor<4>| {
            let route = match fixed {
                Some(fixed) if conv.num_experts > 1 => {
                    let experts = fixed
                        .get(moe_index)
                        .expect("Routing::Fixed holds one route per MoE conv")
                        .clone();
                    moe_index += 1;
                    Some(fixed_route(experts, conv.num_experts))
                }
                _ => image_route.clone(),
            };
            let (y, route) = conv.forward(x, route, exact);
            routes.extend(route);
            y
        };
        let features = if let Some(net) = &self.resnet {
            let mut x = net
                .stem_bn
                .forward_relu(net.stem.forward(x), train, &mut updates);
            for block in &net.blocks {
                let identity = match &block.shortcut {
                    Some(s) => s.bn.forward(s.conv.forward(x.clone()), train, &mut updates),
                    None => x.clone(),
                };
                let y = block
                    .bn1
                    .forward_relu(moe(&block.conv1, x), train, &mut updates);
                let y = block.bn2.forward(moe(&block.conv2, y), train, &mut updates);
                x = crate::layers::residual_relu(y, identity);
            }
            x
        } else if let Some(net) = &self.vgg {
            let mut x = x;
            for layer in &net.layers {
                x = layer
                    .bn
                    .forward_relu(moe(&layer.conv, x), train, &mut updates);
                if layer.pool_after {
                    x = max_pool2d(x, MaxPoolOptions::new([2, 2]));
                }
            }
            x
        } else {
            unreachable!("a model has a backbone by construction")
        };
        let [b, c, _, _] = features.dims();
        let logits = self
            .classifier
            .forward(features.mean_dims(&[2, 3]).reshape([b, c]));
        Output {
            logits,
            routes,
            bn_updates: updates,
        }
    }

    /// The distinct router decisions for `images` in `mode`: the image router's one set of
    /// scores (only the router runs), or every per-layer router's (the whole network runs),
    /// `[batch, num_experts]` each, with the batch norms' updates in train mode.
    pub fn router_decisions(
        &self,
        images: Tensor<4>,
        mode: Mode,
    ) -> (Vec<Tensor<2>>, Vec<BnUpdate>) {
        if let Some(router) = &self.router {
            let mut updates = Vec::new();
            let x = (images - INPUT_MEAN) / INPUT_STD;
            let scores = router.forward(x, mode == Mode::Train, &mut updates);
            return (vec![scores], updates);
        }
        let out = self.forward(images, mode);
        (
            out.routes.into_iter().map(|r| r.scores).collect(),
            out.bn_updates,
        )
    }

    /// Router scores of every MoE layer for `images`, `[batch, num_experts]` each, in execution
    /// order, with the gradient reaching the images (eval-mode batch norm). For the image router
    /// only the router runs and its scores are returned once.
    pub fn route_scores(&self, images: Tensor<4>) -> Vec<Tensor<2>> {
        if let Some(router) = &self.router {
            let x = (images - INPUT_MEAN) / INPUT_STD;
            return vec![router.forward(x, false, &mut Vec::new())];
        }
        self.forward_with(images, Mode::Eval, &Routing::Exact)
            .routes
            .into_iter()
            .map(|r| r.scores)
            .collect()
    }

    /// Whether one image router drives every MoE layer.
    pub fn has_image_router(&self) -> bool {
        self.router.is_some()
    }

    /// Every MoE conv in execution order.
    pub fn moe_convs(&self) -> Vec<&MoeConv2d> {
        let mut convs = Vec::new();
        if let Some(net) = &self.resnet {
            for b in &net.blocks {
                convs.push(&b.conv1);
                convs.push(&b.conv2);
            }
        }
        if let Some(net) = &self.vgg {
            convs.extend(net.layers.iter().map(|l| &l.conv));
        }
        convs.retain(|c| c.num_experts > 1);
        convs
    }

    /// Fold the batch statistics of [`Mode::Train`] passes into the running statistics
    /// (`running = (1 - m) * running + m * batch`, `m = 0.1`), one fold per pass in the order
    /// given: a step with a clean and an adversarial pass (TRADES) folds both, clean first, as
    /// PyTorch's train mode does in the TRADES and AdvMoE reference code. (Until 2026-12-03 a
    /// batch norm seen by several passes kept only the last one's statistics.)
    ///
    /// On `wgpu` each pass of each batch norm is one launch for both statistics
    /// ([`advmoe_kernels::running_stats_step`]).
    pub fn apply_bn_updates(self, updates: Vec<BnUpdate>) -> Self {
        let mut by_path: HashMap<String, Vec<BnUpdate>> = HashMap::new();
        for u in updates {
            by_path.entry(u.path.clone()).or_default().push(u);
        }
        // The mapper meets each running mean before its variance and folds both at once.
        let mut variances = RunningVariances {
            path: Vec::new(),
            wanted: &by_path,
            found: HashMap::new(),
        };
        self.visit(&mut variances);
        let mut mapper = BnMapper {
            path: Vec::new(),
            running_vars: variances.found,
            updates: by_path,
            folded_vars: HashMap::new(),
        };
        let model = self.map(&mut mapper);
        debug_assert!(
            mapper.updates.is_empty() && mapper.folded_vars.is_empty(),
            "unmatched batch norms: {:?} {:?}",
            mapper.updates.keys(),
            mapper.folded_vars.keys()
        );
        model
    }
}

/// Whether the parameter (or batch norm) at module `path` belongs to a router: the image router
/// (`router.…`) or a per-layer router (`….router.…`). AdvMoE's two optimisers split on this.
pub fn is_router_path(path: &str) -> bool {
    path.starts_with("router.") || path.contains(".router.")
}

/// The running variances of the batch norms in `wanted`, by module path.
struct RunningVariances<'a> {
    path: Vec<String>,
    wanted: &'a HashMap<String, Vec<BnUpdate>>,
    found: HashMap<String, Tensor<1>>,
}

impl ModuleVisitor for RunningVariances<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some((field, module)) = self.path.split_last() else {
            return;
        };
        let key = module.join(".");
        if field == "running_var" && self.wanted.contains_key(&key) {
            let value = param.val();
            let n = value.shape().num_elements();
            self.found.insert(key, value.reshape([n]));
        }
    }
}

struct BnMapper {
    path: Vec<String>,
    /// Per batch norm to update, its running variance before the step.
    running_vars: HashMap<String, Tensor<1>>,
    /// Per batch norm, the passes' statistics in the order they are folded.
    updates: HashMap<String, Vec<BnUpdate>>,
    /// Per batch norm whose mean was folded, its folded variance.
    folded_vars: HashMap<String, Tensor<1>>,
}

impl ModuleMapper for BnMapper {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some((field, module)) = self.path.split_last() else {
            return param;
        };
        let key = module.join(".");
        match field.as_str() {
            "running_mean" => {
                let (Some(passes), Some(running_var)) =
                    (self.updates.remove(&key), self.running_vars.remove(&key))
                else {
                    return param;
                };
                let mut folded_var = None;
                let param = param.map(|running_mean| {
                    let device = running_mean.device();
                    let shape = running_mean.shape();
                    let n = shape.num_elements();
                    let start = (running_mean.reshape([n]), running_var);
                    let (mean, var) = passes.iter().fold(start, |(mean, var), pass| {
                        advmoe_kernels::running_stats_step(
                            mean,
                            var,
                            pass.mean.clone().to_device(&device),
                            pass.var.clone().to_device(&device),
                            BN_MOMENTUM,
                            pass.unbiased,
                        )
                    });
                    folded_var = Some(var);
                    mean.reshape(shape)
                });
                if let Some(var) = folded_var {
                    self.folded_vars.insert(key, var);
                }
                param
            }
            "running_var" => match self.folded_vars.remove(&key) {
                Some(var) => param.map(|running| var.reshape(running.shape())),
                None => param,
            },
            _ => param,
        }
    }
}
