// Batch norm, backward, first launch: each channel's two sums, which are the gradients of beta
// and gamma and which the input's gradient needs in train mode:
//   grad_beta[c]  = sum over (b, p) of g[b, c, p]
//   grad_gamma[c] = sum over (b, p) of g[b, c, p] * (x[b, c, p] - mean[c]) * inv_std[c]
// with g the output's gradient, zeroed where the ReLU (params.relu) cut the output: the output
// is recomputed from x and the table with the forward's function (batch_norm_value).
//
// One workgroup per channel, a strided partial sum per thread, then a tree reduction in
// workgroup memory.
//
// Bindings (as in the MoE conv shaders: tensors read_write storage, contiguous row-major f32;
// the params a uniform):
//   0 grad       [batch, channels, h, w] (the output's gradient)
//   1 x          [batch, channels, h, w]
//   2 table      [4, channels]
//   3 grad_gamma [channels]
//   4 grad_beta  [channels]
//   5 params     BatchNormParams (moe_conv_common.wgsl)
// Dispatch: (channels, 1, 1).
// Launcher: crates/advmoe-kernels/src/cube.rs (`batch_norm_grad_sums`).

@group(0) @binding(0) var<storage, read_write> grad: array<f32>;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad_gamma: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad_beta: array<f32>;
@group(0) @binding(5) var<uniform> params: BatchNormParams;

const REDUCE_THREADS: u32 = 256u;

var<workgroup> partial_g: array<f32, REDUCE_THREADS>;
var<workgroup> partial_gx: array<f32, REDUCE_THREADS>;

@compute @workgroup_size(REDUCE_THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = group.x;
    let channels = params.channels;
    let pixels = params.pixels;
    let n = params.batch * pixels;
    let mu = table[ROW_MEAN * channels + c];
    let inv_std = table[ROW_INV_STD * channels + c];
    let scale = table[ROW_SCALE * channels + c];
    let shift = table[ROW_BETA * channels + c];
    var sum_g = 0.0;
    var sum_gx = 0.0;
    for (var i = lid; i < n; i += REDUCE_THREADS) {
        let b = i / pixels;
        let index = (b * channels + c) * pixels + (i - b * pixels);
        let centred = x[index] - mu;
        let cut = relu_cuts(params.relu, batch_norm_value(centred, scale, shift));
        let g = select(grad[index], 0.0, cut);
        sum_g += g;
        sum_gx = fma(g, centred * inv_std, sum_gx);
    }
    partial_g[lid] = sum_g;
    partial_gx[lid] = sum_gx;
    workgroupBarrier();
    for (var width = REDUCE_THREADS / 2u; width > 0u; width /= 2u) {
        if (lid < width) {
            partial_g[lid] += partial_g[lid + width];
            partial_gx[lid] += partial_gx[lid + width];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        grad_beta[c] = partial_g[0];
        grad_gamma[c] = partial_gx[0];
    }
}
