// Batch norm, forward, second launch (train and eval mode alike), with the ReLU that follows it
// when params.relu is 1:
//   y = (x - mean[c]) * scale[c] + beta[c],  then  y = 0 where y <= 0
// from the table (moe_conv_common.wgsl: ROW_*, batch_norm_value, relu_cuts). A NaN passes the
// ReLU as NaN, as Burn's relu keeps it, so a diverged run is still seen as one.
//
// Bindings (as in the MoE conv shaders: tensors read_write storage, contiguous row-major f32;
// the params a uniform):
//   0 x      [batch, channels, h, w]
//   1 table  [4, channels]
//   2 y      [batch, channels, h, w]
//   3 params BatchNormParams (moe_conv_common.wgsl)
// Dispatch: 256 elements per workgroup, (min(groups, 65535), ceil(groups / 65535), 1).
// Launcher: crates/advmoe-kernels/src/cube.rs (`batch_norm_apply`).

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> table: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> params: BatchNormParams;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (group.y * groups.x + group.x) * 256u + lid;
    let channels = params.channels;
    if (i >= params.batch * channels * params.pixels) {
        return;
    }
    let c = (i / params.pixels) % channels;
    let v = batch_norm_value(x[i] - table[ROW_MEAN * channels + c], table[ROW_SCALE * channels + c], table[ROW_BETA * channels + c]);
    y[i] = select(v, 0.0, relu_cuts(params.relu, v));
}
