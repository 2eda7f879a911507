// The end of a residual block: out = relu(a + b), its last batch norm's output plus the shortcut,
// in one launch where tensor operations take three (the sum, the comparison, the fill). A NaN
// passes the ReLU as NaN, as Burn's relu keeps it.
//
// Bindings (tensors read_write storage, contiguous f32, `count` elements each; the params a
// uniform):
//   0 a   1 b   2 out   3 params UpdateParams (moe_conv_common.wgsl; only `count` is read)
// Dispatch: 256 elements per workgroup, (min(groups, 65535), ceil(groups / 65535), 1).
// Launcher: crates/advmoe-kernels/src/cube.rs (`add_relu`).

@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
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
    let v = a[i] + b[i];
    out[i] = select(v, 0.0, relu_cuts(1u, v));
}
