// Straight-through router gradient of the sparse MoE convolution.
//
// The layer's output is gate[b, e_b] * z[b] with z the selected expert's convolution. Its
// gradient with respect to the gate matrix is
//   grad_gate[b, e] = (e == experts[b]) * sum over (c, y, x) of grad_output[b, c, y, x] * z[b, c, y, x]
// and zero for every expert the sample did not select. The router's scores receive it through
// the straight-through gate (value 1, derivative 1 at the selected score).
//
// One workgroup per sample: a strided partial sum per thread, then a tree reduction in
// workgroup memory.
//
// Bindings (the tensors read_write storage, because the allocator may place several tensors in
// one wgpu buffer and a dispatch may not bind one buffer both read-only and writable; contiguous
// row-major f32 unless noted; the params a uniform):
//   0 grad_output [batch, c_out, h_out, w_out]
//   1 z           [batch, c_out, h_out, w_out] (the ungated expert output)
//   2 experts     [batch] i32
//   3 grad_gate   [batch, num_experts]
//   4 params      MoeConvParams (13 x u32, moe_conv_common.wgsl)
// Dispatch: (batch, 1, 1).
// Launcher: crates/advmoe-kernels/src/cube.rs (`sparse_moe_gate_grad`).

@group(0) @binding(0) var<storage, read_write> grad_output: array<f32>;
@group(0) @binding(1) var<storage, read_write> z: array<f32>;
@group(0) @binding(2) var<storage, read_write> experts: array<i32>;
@group(0) @binding(3) var<storage, read_write> grad_gate: array<f32>;
@group(0) @binding(4) var<uniform> params: MoeConvParams;

const REDUCE_THREADS: u32 = 256u;

var<workgroup> sums: array<f32, REDUCE_THREADS>;

@compute @workgroup_size(REDUCE_THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = group.x;
    let count = params.c_out * params.h_out * params.w_out;
    let base = b * count;
    var sum = 0.0;
    for (var i = lid; i < count; i += REDUCE_THREADS) {
        sum = fma(grad_output[base + i], z[base + i], sum);
    }
    sums[lid] = sum;
    workgroupBarrier();
    for (var width = REDUCE_THREADS / 2u; width > 0u; width /= 2u) {
        if (lid < width) {
            sums[lid] += sums[lid + width];
        }
        workgroupBarrier();
    }
    if (lid < params.num_experts) {
        let selected = experts[b] == i32(lid);
        grad_gate[b * params.num_experts + lid] = select(0.0, sums[0], selected);
    }
}
