// The gradient through a ReLU from the ReLU's output, as Burn's relu_backward: the incoming
// gradient, zero where the output is <= 0 (a NaN output passes it). One launch where tensor
// operations take two (the comparison, the fill). The backward of add_relu.wgsl.
//
// Bindings (tensors read_write storage, contiguous f32, `count` elements each; the params a
// uniform):
//   0 grad   1 output   2 grad_in   3 params UpdateParams (moe_conv_common.wgsl; only `count`)
// Dispatch: 256 elements per workgroup, (min(groups, 65535), ceil(groups / 65535), 1).
// Launcher: crates/advmoe-kernels/src/cube.rs (`relu_grad`).

@group(0) @binding(0) var<storage, read_write> grad: array<f32>;
@group(0) @binding(1) var<storage, read_write> output: array<f32>;
@group(0) @binding(2) var<storage, read_write> grad_in: array<f32>;
@group(0) @binding(3) var<uniform> params: UpdateParams;

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
    grad_in[i] = select(grad[i], 0.0, relu_cuts(1u, output[i]));
}
