// Batch norm, backward, the input's gradient, element-wise. With g the output's gradient, zeroed
// where the ReLU (params.relu) cut the output (recomputed as batch_norm_apply.wgsl computed it),
// and x_hat = (x - mean[c]) * inv_std[c]:
//   train mode: grad_x = scale[c] * (g - (grad_beta[c] + x_hat * grad_gamma[c]) / n)
//               (the batch's mean and variance depend on x), n = batch * pixels
//   eval mode:  grad_x = scale[c] * g (running statistics are constants; the two sums are
//               stand-ins the kernel does not read)
// with grad_beta and grad_gamma the sums of batch_norm_grad_sums.wgsl.
//
// Bindings (as in the MoE conv shaders: tensors read_write storage, contiguous row-major f32;
// the params a uniform):
//   0 grad       [batch, channels, h, w] (the output's gradient)
//   1 x          [batch, channels, h, w]
//   2 table      [4, channels]
//   3 grad_gamma [channels]
//   4 grad_beta  [channels]
//   5 grad_x     [batch, channels, h, w]
//   6 params     BatchNormParams (moe_conv_common.wgsl)
// Dispatch: 256 elements per workgroup, (min(groups, 65535), ceil(groups / 65535), 1).
// Launcher: crates/advmoe-kernels/src/cube.rs (`batch_norm_grad_input`).

@group(0) @binding(0) var<storage, read_write> grad: array<f32>;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> table: array<f32>;
@group(0) @binding(3) var<storage, read_write> grad_gamma: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad_beta: array<f32>;
@group(0) @binding(5) var<storage, read_write> grad_x: array<f32>;
@group(0) @binding(6) var<uniform> params: BatchNormParams;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = (group.y * groups.x + group.x) * 256u + lid;
    let channels = params.channels;
    let n = params.batch * params.pixels;
    if (i >= n * channels) {
        return;
    }
    let c = (i / params.pixels) % channels;
    let centred = x[i] - table[ROW_MEAN * channels + c];
    let scale = table[ROW_SCALE * channels + c];
    let cut = relu_cuts(params.relu, batch_norm_value(centred, scale, table[ROW_BETA * channels + c]));
    var g = select(grad[i], 0.0, cut);
    if (params.train == 1u) {
        let x_hat = centred * table[ROW_INV_STD * channels + c];
        g -= (grad_beta[c] + x_hat * grad_gamma[c]) / f32(n);
    }
    grad_x[i] = scale * g;
}
