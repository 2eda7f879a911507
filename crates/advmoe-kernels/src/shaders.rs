//! The registry of WGSL shaders: the only module that names files under `shaders/`.
//!
//! Every kernel file starts from [`COMMON`] (the parameter structs and the tile shape, written
//! once): [`render`] prepends it and rewrites its two tile lines for the shape a launch needs.
//! The naga test validates every kernel so rendered, in every tile shape.

/// What every kernel shares: the `MoeConvParams`, `BatchNormParams` and `UpdateParams` structs,
/// the batch-norm table's rows and the tile-shape constants (defaults 64 × 64).
pub const COMMON: &str = include_str!("../../../shaders/moe_conv_common.wgsl");
/// The forward pass: each sample's output from its own expert's filters only.
pub const FORWARD: &str = include_str!("../../../shaders/moe_conv_forward.wgsl");
/// The gradient with respect to the input.
pub const INPUT_GRAD: &str = include_str!("../../../shaders/moe_conv_input_grad.wgsl");
/// The gradient with respect to the weight (per-expert slices, split over the batch).
pub const WEIGHT_GRAD: &str = include_str!("../../../shaders/moe_conv_weight_grad.wgsl");
/// The forward pass, direct variant (no workgroup memory), for software adapters.
pub const FORWARD_DIRECT: &str = include_str!("../../../shaders/moe_conv_forward_direct.wgsl");
/// The input gradient, direct variant.
pub const INPUT_GRAD_DIRECT: &str =
    include_str!("../../../shaders/moe_conv_input_grad_direct.wgsl");
/// The weight gradient, direct variant.
pub const WEIGHT_GRAD_DIRECT: &str =
    include_str!("../../../shaders/moe_conv_weight_grad_direct.wgsl");
/// The straight-through router gradient.
pub const GATE_GRAD: &str = include_str!("../../../shaders/moe_gate_grad.wgsl");
/// Batch norm, train mode: each channel's batch mean and variance and the table.
pub const BATCH_NORM_STATS: &str = include_str!("../../../shaders/batch_norm_stats.wgsl");
/// Batch norm, eval mode: the table from the running statistics.
pub const BATCH_NORM_TABLE: &str = include_str!("../../../shaders/batch_norm_table.wgsl");
/// Batch norm, forward: normalise (and the ReLU after it, when asked) from the table.
pub const BATCH_NORM_APPLY: &str = include_str!("../../../shaders/batch_norm_apply.wgsl");
/// Batch norm, backward: the per-channel sums (the gradients of gamma and beta).
pub const BATCH_NORM_GRAD_SUMS: &str = include_str!("../../../shaders/batch_norm_grad_sums.wgsl");
/// Batch norm, backward: the input's gradient.
pub const BATCH_NORM_GRAD_INPUT: &str = include_str!("../../../shaders/batch_norm_grad_input.wgsl");
/// A residual block's end: relu(a + b).
pub const ADD_RELU: &str = include_str!("../../../shaders/add_relu.wgsl");
/// The gradient through a ReLU from its output.
pub const RELU_GRAD: &str = include_str!("../../../shaders/relu_grad.wgsl");
/// One step of an L∞ attack: the sign step and the projection.
pub const LINF_STEP: &str = include_str!("../../../shaders/linf_step.wgsl");
/// SGD with momentum and weight decay: one parameter's step.
pub const SGD_STEP: &str = include_str!("../../../shaders/sgd_step.wgsl");
/// Adam: one parameter's step.
pub const ADAM_STEP: &str = include_str!("../../../shaders/adam_step.wgsl");
/// A batch norm's running statistics after one train-mode pass.
pub const RUNNING_STATS: &str = include_str!("../../../shaders/running_stats.wgsl");

/// Every kernel with its file name, for validation ([`COMMON`] is prepended to each).
pub const ALL: [(&str, &str); 18] = [
    ("moe_conv_forward.wgsl", FORWARD),
    ("moe_conv_input_grad.wgsl", INPUT_GRAD),
    ("moe_conv_weight_grad.wgsl", WEIGHT_GRAD),
    ("moe_conv_forward_direct.wgsl", FORWARD_DIRECT),
    ("moe_conv_input_grad_direct.wgsl", INPUT_GRAD_DIRECT),
    ("moe_conv_weight_grad_direct.wgsl", WEIGHT_GRAD_DIRECT),
    ("moe_gate_grad.wgsl", GATE_GRAD),
    ("batch_norm_stats.wgsl", BATCH_NORM_STATS),
    ("batch_norm_table.wgsl", BATCH_NORM_TABLE),
    ("batch_norm_apply.wgsl", BATCH_NORM_APPLY),
    ("batch_norm_grad_sums.wgsl", BATCH_NORM_GRAD_SUMS),
    ("batch_norm_grad_input.wgsl", BATCH_NORM_GRAD_INPUT),
    ("add_relu.wgsl", ADD_RELU),
    ("relu_grad.wgsl", RELU_GRAD),
    ("linf_step.wgsl", LINF_STEP),
    ("sgd_step.wgsl", SGD_STEP),
    ("adam_step.wgsl", ADAM_STEP),
    ("running_stats.wgsl", RUNNING_STATS),
];

/// How the matrix-product shaders compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// Tiles staged in workgroup memory (16-deep steps between barriers): for GPUs.
    Tiled,
    /// Every thread reads global memory directly; no workgroup memory, no barriers: for
    /// software adapters (lavapipe, SwiftShader), where workgroup memory is ordinary memory
    /// and a barrier only costs.
    Direct,
}

/// The block of a matrix product one workgroup computes. Each thread computes 4 × 4 outputs, so
/// a workgroup has `tile_m * tile_n / 16` threads; every choice keeps that a multiple of
/// `tile_n` (each thread loads one fixed column) and at least 16 (the index tables), and keeps
/// the two 16-deep tiles plus tables within WebGPU's default 16 KiB of workgroup memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tile {
    /// Rows (output channels) per workgroup.
    pub tile_m: u32,
    /// Columns (pixels or filter entries) per workgroup.
    pub tile_n: u32,
}

impl Tile {
    const fn new(tile_m: u32, tile_n: u32) -> Self {
        Self { tile_m, tile_n }
    }

    /// Threads per workgroup.
    pub const fn threads(self) -> u32 {
        self.tile_m * self.tile_n / 16
    }

    /// The shapes the direct variant chooses from (64 threads each).
    pub const DIRECT_CHOICES: [Tile; 6] = [
        Tile::new(4, 256),
        Tile::new(8, 128),
        Tile::new(16, 64),
        Tile::new(32, 32),
        Tile::new(64, 16),
        Tile::new(128, 8),
    ];

    /// The shapes the tiled variant chooses from.
    pub const CHOICES: [Tile; 7] = [
        Tile::new(64, 64),
        Tile::new(32, 128),
        Tile::new(128, 32),
        Tile::new(16, 128),
        Tile::new(32, 32),
        Tile::new(16, 64),
        Tile::new(64, 16),
    ];

    /// The tile of `variant` that wastes the least work on a `rows × cols` product: padded
    /// area, with a penalty for small workgroups (fewer threads share each tile loaded).
    pub fn for_product(variant: Variant, rows: usize, cols: usize) -> Tile {
        let cost = |tile: &Tile| {
            let padded = |len: usize, block: u32| len.div_ceil(block as usize) * block as usize;
            let area = (padded(rows, tile.tile_m) * padded(cols, tile.tile_n)) as f64;
            area * (1.0 + 16.0 / f64::from(tile.threads()))
        };
        let choices: &[Tile] = match variant {
            Variant::Tiled => &Tile::CHOICES,
            Variant::Direct => &Tile::DIRECT_CHOICES,
        };
        choices
            .iter()
            .copied()
            .min_by(|a, b| cost(a).total_cmp(&cost(b)))
            .expect("the tile list is not empty")
    }
}

/// The full text of a kernel for a tile shape: [`COMMON`] with its tile lines set, then the
/// kernel's own text.
///
/// # Panics
/// If [`COMMON`] lost one of its two tile lines (a bug the shader test catches).
pub fn render(kernel: &str, tile: Tile) -> String {
    let mut common = COMMON.to_owned();
    for (name, value) in [("TILE_M", tile.tile_m), ("TILE_N", tile.tile_n)] {
        let line = format!("const {name}: u32 = 64u;");
        assert!(common.contains(&line), "moe_conv_common.wgsl lost `{line}`");
        common = common.replacen(&line, &format!("const {name}: u32 = {value}u;"), 1);
    }
    common + "\n" + kernel
}
