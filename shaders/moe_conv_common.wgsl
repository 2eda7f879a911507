// Shared by every shader, the MoE conv's and batch norm's: the launcher prepends this file to
// each of them (crates/advmoe-kernels/src/shaders.rs, `render`), so the parameter structs and
// the tile shape are written once.

// The convolution's geometry: thirteen u32 in this order, 52 bytes with no padding, mirrored by
// `Geometry` in crates/advmoe-kernels/src/cube.rs (a uniform's layout of a struct of scalars).
struct MoeConvParams {
    batch: u32,
    c_in: u32,
    h_in: u32,
    w_in: u32,
    c_out: u32,
    h_out: u32,
    w_out: u32,
    kernel: u32,
    stride: u32,
    padding: u32,
    num_experts: u32,
    splits: u32,
    // The forward kernels also write the ungated output z (1) or leave its binding alone (0).
    write_z: u32,
}

// The batch-norm kernels' shape (batch_norm_*.wgsl): six 4-byte scalars, 24 bytes, mirrored
// by `NormShape` in crates/advmoe-kernels/src/cube.rs.
struct BatchNormParams {
    batch: u32,
    channels: u32,
    // Pixels per channel plane (h * w).
    pixels: u32,
    // 1: a ReLU follows the normalisation (the forward applies it, the backward masks with it).
    relu: u32,
    // 1: batch statistics, whose gradient reaches the input through the mean and variance too;
    // 0: running statistics (constants).
    train: u32,
    epsilon: f32,
}

// The element-wise kernels' scalars (sgd_step.wgsl, adam_step.wgsl, running_stats.wgsl,
// add_relu.wgsl, relu_grad.wgsl, linf_step.wgsl): two u32 and fourteen f32, 64 bytes, mirrored by `UpdateParams`
// in crates/advmoe-kernels/src/cube.rs. Each kernel reads the fields it names.
struct UpdateParams {
    // Elements of each bound tensor.
    count: u32,
    // 1: the state (SGD's momentum buffer, Adam's moments) is bound; 0: it starts with this step
    // (its bindings are one-value stand-ins).
    has_state: u32,
    lr: f32,
    // SGD's momentum; the running statistics' weight of the batch.
    momentum: f32,
    // The running statistics' weight of their old value, 1 - momentum (rounded from f64).
    keep: f32,
    // Weight decay, added to the gradient as weight_decay * param when above zero.
    weight_decay: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    // Adam's bias corrections 1 - beta^t.
    bias1: f32,
    bias2: f32,
    eps: f32,
    // The batch variance's factor n / (n - 1) to the unbiased one.
    unbiased: f32,
    // An L-infinity attack step's size and the ball's radius.
    step_size: f32,
    radius: f32,
}

// The element a thread of a 256-wide workgroup on a (min(groups, 65535), ceil(groups / 65535))
// grid owns.
fn element_index(group: vec3<u32>, groups: vec3<u32>, lid: u32) -> u32 {
    return (group.y * groups.x + group.x) * 256u + lid;
}

// The batch-norm kernels' per-channel table, rows of `channels` values each: the mean, the
// inverse standard deviation 1 / sqrt(var + eps), the scale gamma / sqrt(var + eps) and the
// shift beta. The normalised value is (x - mean) * scale + beta.
const ROW_MEAN: u32 = 0u;
const ROW_INV_STD: u32 = 1u;
const ROW_SCALE: u32 = 2u;
const ROW_BETA: u32 = 3u;

// The batch norm's output before its ReLU, from the centred input (x - mean) and the channel's
// scale and shift. The forward and both backward kernels compute it with this one function, so
// the backward's ReLU cut is exactly where the forward cut.
fn batch_norm_value(centred: f32, scale: f32, shift: f32) -> f32 {
    return fma(centred, scale, shift);
}

// Whether the ReLU (when `relu` is 1) cut the value `v` to zero. A NaN is not cut: it stays NaN,
// as Burn's relu keeps it.
fn relu_cuts(relu: u32, v: f32) -> bool {
    return relu == 1u && v <= 0.0;
}

// Tile shape of the matrix-product shaders: the launcher rewrites these two lines. Each thread
// computes 4 x 4 outputs; the direct variants ignore TILE_K and the tiles below.
const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;

const TILE_K: u32 = 16u;
const THREADS_M: u32 = TILE_M / 4u;
const THREADS_N: u32 = TILE_N / 4u;
const THREADS: u32 = THREADS_M * THREADS_N;

// The tiled kernels' workgroup tiles: TILE_K reduction steps of TILE_M rows (A) and TILE_N
// columns (B). A kernel that never calls multiply_tiles does not allocate them.
var<workgroup> tile_a: array<f32, TILE_K * TILE_M>;
var<workgroup> tile_b: array<f32, TILE_K * TILE_N>;

// One thread's 4 x 4 outputs: rows tm + r * THREADS_M (r0..r3), columns tn + c * THREADS_N
// (the vec4 lanes). Four named vectors rather than an indexed array keep them in registers.
struct Block {
    r0: vec4<f32>,
    r1: vec4<f32>,
    r2: vec4<f32>,
    r3: vec4<f32>,
}

// Add the product of the staged tiles to this thread's block (between the barriers that fill
// and release the tiles).
fn multiply_tiles(block: Block, tm: u32, tn: u32) -> Block {
    var out = block;
    for (var kl = 0u; kl < TILE_K; kl++) {
        let row = kl * TILE_M + tm;
        let col = kl * TILE_N + tn;
        let a = vec4<f32>(tile_a[row], tile_a[row + THREADS_M], tile_a[row + 2u * THREADS_M], tile_a[row + 3u * THREADS_M]);
        let b = vec4<f32>(tile_b[col], tile_b[col + THREADS_N], tile_b[col + 2u * THREADS_N], tile_b[col + 3u * THREADS_N]);
        out.r0 = fma(vec4<f32>(a.x), b, out.r0);
        out.r1 = fma(vec4<f32>(a.y), b, out.r1);
        out.r2 = fma(vec4<f32>(a.z), b, out.r2);
        out.r3 = fma(vec4<f32>(a.w), b, out.r3);
    }
    return out;
}
