// Eval-mode batch norm, forward, first launch: the table (moe_conv_common.wgsl: ROW_*) from the
// running statistics, for batch_norm_apply.wgsl and the backward.
//
// Bindings (as in the MoE conv shaders: tensors read_write storage, f32; the params a uniform):
//   0 gamma    [channels]
//   1 beta     [channels]
//   2 mean     [channels] (running)
//   3 variance [channels] (running)
//   4 table    [4, channels]
//   5 params   BatchNormParams (moe_conv_common.wgsl)
// Dispatch: (ceil(channels / 64), 1, 1).
// Launcher: crates/advmoe-kernels/src/cube.rs (`batch_norm_table_eval`).

@group(0) @binding(0) var<storage, read_write> gamma: array<f32>;
@group(0) @binding(1) var<storage, read_write> beta: array<f32>;
@group(0) @binding(2) var<storage, read_write> mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> variance: array<f32>;
@group(0) @binding(4) var<storage, read_write> table: array<f32>;
@group(0) @binding(5) var<uniform> params: BatchNormParams;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    let c = id.x;
    let channels = params.channels;
    if (c >= channels) {
        return;
    }
    let inv_std = inverseSqrt(variance[c] + params.epsilon);
    table[ROW_MEAN * channels + c] = mean[c];
    table[ROW_INV_STD * channels + c] = inv_std;
    table[ROW_SCALE * channels + c] = gamma[c] * inv_std;
    table[ROW_BETA * channels + c] = beta[c];
}
