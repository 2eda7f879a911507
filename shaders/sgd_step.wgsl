// SGD with momentum (no dampening) and weight decay, one parameter tensor in one launch, as
// PyTorch defines it and the engine's optimiser computed it with six element-wise launches:
//   g   = grad + weight_decay * param          (when weight_decay > 0)
//   buf = momentum * buf + g                   (buf = g when the step starts the buffer)
//   param' = param - lr * buf
// Each product and sum is rounded as the element-wise launches rounded it.
//
// Bindings (tensors read_write storage, contiguous f32, `count` elements each; the params a
// uniform):
//   0 param   1 grad   2 buf (a one-value stand-in when has_state is 0)
//   3 param'  4 buf'   5 params UpdateParams (moe_conv_common.wgsl)
// Dispatch: 256 elements per workgroup, (min(groups, 65535), ceil(groups / 65535), 1).
// Launcher: crates/advmoe-kernels/src/cube.rs (`sgd_step`).

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read_write> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> buf: array<f32>;
@group(0) @binding(3) var<storage, read_write> param_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> buf_out: array<f32>;
@group(0) @binding(5) var<uniform> params: UpdateParams;

@compute @workgroup_size(256)
fn main(
    @builtin(workgroup_id) group: vec3<u32>,
    @builtin(num_workgroups) groups: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let i = element_index(group, groups, lid);
    if (i >= params.count) {
        return;
    }
    let p = param[i];
    var g = grad[i];
    if (params.weight_decay > 0.0) {
        g = g + p * params.weight_decay;
    }
    var b = g;
    if (params.has_state == 1u) {
        b = buf[i] * params.momentum + g;
    }
    buf_out[i] = b;
    param_out[i] = p - b * params.lr;
}
