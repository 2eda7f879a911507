// One step of an L-infinity attack (FGSM, PGD) in one launch where tensor operations take seven:
//   x' = clamp(center + clamp(x + step_size * sign(grad) - center, -radius, radius), 0, 1)
// the step along the gradient's sign, then the projection onto the ball around the clean image
// and into the valid pixel range, each sum rounded as the tensor operations round it. A NaN
// gradient gives a NaN pixel (the clamps would turn it into a bound), so a diverged attack
// shows.
//
// Bindings (tensors read_write storage, contiguous f32, `count` elements each; the params a
// uniform):
//   0 x   1 grad   2 center   3 x'   4 params UpdateParams (moe_conv_common.wgsl)
// Dispatch: 256 elements per workgroup, (min(groups, 65535), ceil(groups / 65535), 1).
// Launcher: crates/advmoe-kernels/src/cube.rs (`linf_step`).

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> center: array<f32>;
@group(0) @binding(3) var<storage, read_write> x_out: array<f32>;
@group(0) @binding(4) var<uniform> params: UpdateParams;

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
    let g = grad[i];
    if ((bitcast<u32>(g) & 0x7fffffffu) > 0x7f800000u) {
        // A NaN gradient (tested on its bits: a compiler may assume g == g): the clamps below
        // would hide it.
        x_out[i] = g;
        return;
    }
    var direction = 0.0;
    if (g > 0.0) {
        direction = 1.0;
    } else if (g < 0.0) {
        direction = -1.0;
    }
    let moved = x[i] + direction * params.step_size;
    let delta = clamp(moved - center[i], -params.radius, params.radius);
    x_out[i] = clamp(center[i] + delta, 0.0, 1.0);
}
