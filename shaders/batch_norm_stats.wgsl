// Train-mode batch norm, forward, first launch: each channel's batch statistics and table.
//
//   mean[c]     = sum over (b, p) of x[b, c, p] / n
//   variance[c] = sum over (b, p) of (x[b, c, p] - mean[c])^2 / n   (biased), n = batch * pixels
// and the table (moe_conv_common.wgsl: ROW_*) that batch_norm_apply.wgsl and the backward read.
//
// One workgroup per channel: each thread sums a strided share of the channel's n values, then a
// tree reduction in workgroup memory; the variance is a second pass over the centred values
// (two reads of x, no cancellation of a one-pass sum of squares). Every thread of the GPU
// works, unlike a reduction that gives each channel's whole row to one invocation.
//
// Bindings (as in the MoE conv shaders: tensors read_write storage, contiguous row-major f32;
// the params a uniform):
//   0 x        [batch, channels, h, w]
//   1 gamma    [channels]
//   2 beta     [channels]
//   3 table    [4, channels]
//   4 mean     [channels]
//   5 variance [channels]
//   6 params   BatchNormParams (moe_conv_common.wgsl)
// Dispatch: (channels, 1, 1).
// Launcher: crates/advmoe-kernels/src/cube.rs (`batch_norm_table_train`).

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> gamma: array<f32>;
@group(0) @binding(2) var<storage, read_write> beta: array<f32>;
@group(0) @binding(3) var<storage, read_write> table: array<f32>;
@group(0) @binding(4) var<storage, read_write> mean: array<f32>;
@group(0) @binding(5) var<storage, read_write> variance: array<f32>;
@group(0) @binding(6) var<uniform> params: BatchNormParams;

const REDUCE_THREADS: u32 = 256u;

var<workgroup> partial: array<f32, REDUCE_THREADS>;

// The workgroup's sum of every thread's `value`, returned to every thread.
fn workgroup_sum(lid: u32, value: f32) -> f32 {
    partial[lid] = value;
    workgroupBarrier();
    for (var width = REDUCE_THREADS / 2u; width > 0u; width /= 2u) {
        if (lid < width) {
            partial[lid] += partial[lid + width];
        }
        workgroupBarrier();
    }
    let total = partial[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(REDUCE_THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let c = group.x;
    let channels = params.channels;
    let pixels = params.pixels;
    let n = params.batch * pixels;
    var sum = 0.0;
    for (var i = lid; i < n; i += REDUCE_THREADS) {
        let b = i / pixels;
        sum += x[(b * channels + c) * pixels + (i - b * pixels)];
    }
    let mu = workgroup_sum(lid, sum) / f32(n);
    var squares = 0.0;
    for (var i = lid; i < n; i += REDUCE_THREADS) {
        let b = i / pixels;
        let d = x[(b * channels + c) * pixels + (i - b * pixels)] - mu;
        squares = fma(d, d, squares);
    }
    let var_c = workgroup_sum(lid, squares) / f32(n);
    if (lid == 0u) {
        let inv_std = inverseSqrt(var_c + params.epsilon);
        mean[c] = mu;
        variance[c] = var_c;
        table[ROW_MEAN * channels + c] = mu;
        table[ROW_INV_STD * channels + c] = inv_std;
        table[ROW_SCALE * channels + c] = gamma[c] * inv_std;
        table[ROW_BETA * channels + c] = beta[c];
    }
}
