//! Analytic inference cost in multiply-accumulates (MACs) of conv and linear layers.
//!
//! The counts follow the layer plan of `advmoe-model` exactly (see [`resnet_plan`] and
//! [`vgg_plan`], which the model builder also uses), so cost and model cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::spec::{Arch, ModelSpec, RouterKind};

/// One convolution of a backbone, in the order the model runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvPlan {
    /// Input channels.
    pub channels_in: usize,
    /// Output channels of the pathway (one expert's width for MoE convs).
    pub channels_out: usize,
    /// Kernel size (square).
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Whether this is an MoE conv (one weight slice per expert, chosen by a router).
    pub moe: bool,
    /// Input height and width.
    pub size_in: [usize; 2],
}

impl ConvPlan {
    /// Output height and width (padding `kernel / 2`).
    pub fn size_out(&self) -> [usize; 2] {
        let pad = self.kernel / 2;
        self.size_in
            .map(|s| (s + 2 * pad - self.kernel) / self.stride + 1)
    }

    /// MACs of one image through this conv (one expert for MoE convs).
    pub fn macs(&self) -> u64 {
        let [h, w] = self.size_out();
        (self.channels_out * self.channels_in * self.kernel * self.kernel * h * w) as u64
    }
}

/// The convs of one ResNet BasicBlock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPlan {
    /// First 3×3 conv (strided in the first block of stages 2–4).
    pub conv1: ConvPlan,
    /// Second 3×3 conv.
    pub conv2: ConvPlan,
    /// 1×1 projection shortcut, when stride or width change.
    pub shortcut: Option<ConvPlan>,
}

/// Layer plan of a ResNet: the stem conv, the blocks in order, and the classifier's input width.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResnetPlan {
    /// Dense stem conv.
    pub stem: ConvPlan,
    /// Every block, stage by stage.
    pub blocks: Vec<BlockPlan>,
    /// Channels entering global average pool and the linear classifier.
    pub features: usize,
}

/// ResNet layer plan. In MoE mode (and for same-cost dense models) the residual stream of each
/// stage has `r * planes` channels, so a 1×1 shortcut also appears wherever the width changes.
/// For the paper-scale model this gives the paper's 0.152 GMACs pathway.
pub fn resnet_plan(spec: &ModelSpec) -> ResnetPlan {
    let moe = spec.is_moe();
    let stem = ConvPlan {
        channels_in: spec.in_channels,
        channels_out: spec.width,
        kernel: 3,
        stride: 1,
        moe: false,
        size_in: spec.image_size,
    };
    let mut size = stem.size_out();
    let mut in_planes = spec.width;
    let mut blocks = Vec::new();
    for stage in 0..4 {
        let planes = spec.width << stage;
        let width = spec.expert_width(planes);
        for block in 0..spec.depth {
            let stride = if stage > 0 && block == 0 { 2 } else { 1 };
            let conv1 = ConvPlan {
                channels_in: in_planes,
                channels_out: width,
                kernel: 3,
                stride,
                moe,
                size_in: size,
            };
            let conv2 = ConvPlan {
                channels_in: width,
                channels_out: width,
                kernel: 3,
                stride: 1,
                moe,
                size_in: conv1.size_out(),
            };
            let shortcut = (stride != 1 || in_planes != width).then_some(ConvPlan {
                channels_in: in_planes,
                channels_out: width,
                kernel: 1,
                stride,
                moe: false,
                size_in: size,
            });
            size = conv2.size_out();
            in_planes = width;
            blocks.push(BlockPlan {
                conv1,
                conv2,
                shortcut,
            });
        }
    }
    ResnetPlan {
        stem,
        blocks,
        features: in_planes,
    }
}

/// One entry of the VGG stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VggItem {
    /// conv3×3 + BN + ReLU.
    Conv(ConvPlan),
    /// 2×2 max pool, stride 2.
    MaxPool,
}

/// VGG-11-shaped plan `[b, M, 2b, M, 4b, 4b, M, 8b, 8b, M]`; every conv but the first is an MoE
/// conv of width `r * channels`. Returns the items and the classifier's input width.
pub fn vgg_plan(spec: &ModelSpec) -> (Vec<VggItem>, usize) {
    const CFG: [usize; 10] = [1, 0, 2, 0, 4, 4, 0, 8, 8, 0];
    let mut items = Vec::new();
    let mut size = spec.image_size;
    let mut channels = spec.in_channels;
    let mut first = true;
    for mult in CFG {
        if mult == 0 {
            items.push(VggItem::MaxPool);
            size = size.map(|s| s / 2);
            continue;
        }
        let full = spec.width * mult;
        let out = if first { full } else { spec.expert_width(full) };
        let conv = ConvPlan {
            channels_in: channels,
            channels_out: out,
            kernel: 3,
            stride: 1,
            moe: !first && spec.is_moe(),
            size_in: size,
        };
        items.push(VggItem::Conv(conv));
        channels = out;
        first = false;
    }
    (items, channels)
}

/// Every conv of a model in execution order (shortcuts after their block's convs).
pub fn conv_plans(spec: &ModelSpec) -> Vec<ConvPlan> {
    match spec.arch {
        Arch::Resnet => {
            let plan = resnet_plan(spec);
            let mut convs = vec![plan.stem];
            for b in &plan.blocks {
                convs.push(b.conv1);
                convs.push(b.conv2);
                convs.extend(b.shortcut);
            }
            convs
        }
        Arch::Vgg => vgg_plan(spec)
            .0
            .into_iter()
            .filter_map(|item| match item {
                VggItem::Conv(c) => Some(c),
                VggItem::MaxPool => None,
            })
            .collect(),
    }
}

/// Weights of every backbone conv (all experts of MoE convs): a lower bound on the parameters
/// of a model built from `spec`, which a checkpoint is checked against before the model is built.
pub fn conv_weight_count(spec: &ModelSpec) -> u64 {
    conv_plans(spec)
        .iter()
        .map(|c| {
            let experts = if c.moe { spec.num_experts } else { 1 };
            (c.channels_out * c.channels_in * c.kernel * c.kernel * experts) as u64
        })
        .sum()
}

/// Channels entering the classifier.
pub fn feature_width(spec: &ModelSpec) -> usize {
    match spec.arch {
        Arch::Resnet => resnet_plan(spec).features,
        Arch::Vgg => vgg_plan(spec).1,
    }
}

/// The image router's convs: conv3×3(c_in→16), conv3×3(16→32, s2), conv3×3(32→64, s2).
pub fn image_router_plan(spec: &ModelSpec) -> [ConvPlan; 3] {
    let c1 = ConvPlan {
        channels_in: spec.in_channels,
        channels_out: 16,
        kernel: 3,
        stride: 1,
        moe: false,
        size_in: spec.image_size,
    };
    let c2 = ConvPlan {
        channels_in: 16,
        channels_out: 32,
        kernel: 3,
        stride: 2,
        moe: false,
        size_in: c1.size_out(),
    };
    let c3 = ConvPlan {
        channels_in: 32,
        channels_out: 64,
        kernel: 3,
        stride: 2,
        moe: false,
        size_in: c2.size_out(),
    };
    [c1, c2, c3]
}

/// Inference cost of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacReport {
    /// The experts actually run (one per MoE conv), plus dense layers and classifier.
    pub pathway: u64,
    /// `pathway` plus the router(s).
    pub pathway_with_router: u64,
    /// What the reference implementation computes: every expert of every MoE conv, plus routers.
    pub all_experts: u64,
    /// The dense baseline of the same backbone at full width (`N = 1`, `r = 1`).
    pub dense: u64,
    /// Number of MoE convs.
    pub moe_layers: usize,
}

fn backbone_macs(spec: &ModelSpec) -> (u64, u64, usize) {
    let convs = conv_plans(spec);
    let mut pathway = 0;
    let mut all = 0;
    let mut moe_layers = 0;
    for c in &convs {
        pathway += c.macs();
        if c.moe {
            all += c.macs() * spec.num_experts as u64;
            moe_layers += 1;
        } else {
            all += c.macs();
        }
    }
    let linear = (feature_width(spec) * spec.num_classes) as u64;
    (pathway + linear, all + linear, moe_layers)
}

/// Router MACs of a spec (0 for dense models).
pub fn router_macs(spec: &ModelSpec) -> u64 {
    if !spec.is_moe() {
        return 0;
    }
    match spec.router {
        RouterKind::Image => {
            image_router_plan(spec)
                .iter()
                .map(ConvPlan::macs)
                .sum::<u64>()
                + 64 * spec.num_experts as u64
        }
        RouterKind::PerLayer => conv_plans(spec)
            .iter()
            .filter(|c| c.moe)
            .map(|c| (c.channels_in * spec.num_experts) as u64)
            .sum(),
    }
}

/// Count the MACs of one image through a model built from `spec`.
pub fn count_macs(spec: &ModelSpec) -> MacReport {
    let (pathway, all, moe_layers) = backbone_macs(spec);
    let router = router_macs(spec);
    let dense_spec = ModelSpec {
        num_experts: 1,
        ratio: 1.0,
        ..spec.clone()
    };
    MacReport {
        pathway,
        pathway_with_router: pathway + router,
        all_experts: all + router,
        dense: backbone_macs(&dense_spec).0,
        moe_layers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gmacs(x: u64) -> f64 {
        x as f64 / 1e9
    }

    #[test]
    fn paper_scale_resnet18_matches_the_paper() {
        let dense = ModelSpec::resnet(64, 2, 1, 1.0);
        let d = count_macs(&dense);
        assert!(
            (gmacs(d.pathway) - 0.555).abs() < 0.0015,
            "{}",
            gmacs(d.pathway)
        );
        assert_eq!(d.pathway, d.dense);
        assert_eq!(d.moe_layers, 0);

        let moe = ModelSpec::resnet(64, 2, 2, 0.5);
        let m = count_macs(&moe);
        assert!(
            (gmacs(m.pathway) - 0.152).abs() < 0.0015,
            "{}",
            gmacs(m.pathway)
        );
        assert_eq!(m.dense, d.pathway);
        assert_eq!(m.moe_layers, 16);
        // The image router adds its three convs and a linear layer.
        assert_eq!(m.pathway_with_router - m.pathway, 2_801_792);
        // Same-cost dense baseline (N = 1, r = 0.5) has exactly the MoE pathway's cost.
        let same_cost = count_macs(&ModelSpec::resnet(64, 2, 1, 0.5));
        assert_eq!(same_cost.pathway, m.pathway);
        assert!(m.all_experts > 2 * m.pathway - d.pathway / 10);
    }

    #[test]
    fn vgg_and_per_layer_routers_count() {
        let mut spec = ModelSpec::resnet(16, 1, 4, 0.5);
        spec.arch = Arch::Vgg;
        let (items, features) = vgg_plan(&spec);
        assert_eq!(items.len(), 10);
        assert_eq!(features, 64);
        let r = count_macs(&spec);
        assert_eq!(r.moe_layers, 5);
        spec.router = RouterKind::PerLayer;
        let per_layer = count_macs(&spec);
        // One linear(w_in -> N) per MoE conv.
        let expected: u64 = conv_plans(&spec)
            .iter()
            .filter(|c| c.moe)
            .map(|c| c.channels_in as u64 * 4)
            .sum();
        assert_eq!(per_layer.pathway_with_router - per_layer.pathway, expected);
    }
}
