// Sparse MoE convolution, forward pass, direct variant (no workgroup memory, no barriers).
//
// Computes the same as moe_conv_forward.wgsl:
//   z[b, co, oy, ox] = sum over (ci, ky, kx) of
//       weight[e * c_out + co, ci, ky, kx] * input[b, ci, oy * stride - padding + ky, ox * stride - padding + kx]
//   output[b, co, oy, ox] = gate[b, e] * z[b, co, oy, ox]
// with e = experts[b]; only that expert's filters are read, and an expert index outside
// [0, num_experts) writes NaN. Each thread computes 4 output channels x 4 output pixels straight
// from global memory. The launcher picks this variant on software adapters (lavapipe,
// SwiftShader), where workgroup memory is ordinary memory and barriers only cost; GPUs get the
// tiled kernel.
//
// Bindings (the tensors read_write storage, because the allocator may place several tensors in
// one wgpu buffer and a dispatch may not bind one buffer both read-only and writable; contiguous
// row-major f32 unless noted; the params a uniform):
//   0 input   [batch, c_in, h_in, w_in]
//   1 weight  [num_experts * c_out, c_in, kernel, kernel]
//   2 experts [batch] i32
//   3 gate    [batch, num_experts] (the output is scaled by each sample's gate at its expert)
//   4 output  [batch, c_out, h_out, w_out]
//   5 z       [batch, c_out, h_out, w_out], the ungated output, written when params.write_z
//             is 1 (else a stand-in the kernel leaves alone)
//   6 params  MoeConvParams (13 x u32, moe_conv_common.wgsl)
// Dispatch: (ceil(h_out * w_out / TILE_N), ceil(c_out / TILE_M), batch).
// Launcher: crates/advmoe-kernels/src/cube.rs (`sparse_moe_conv_forward`).

@group(0) @binding(0) var<storage, read_write> input: array<f32>;
@group(0) @binding(1) var<storage, read_write> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> experts: array<i32>;
@group(0) @binding(3) var<storage, read_write> gate: array<f32>;
@group(0) @binding(4) var<storage, read_write> output: array<f32>;
@group(0) @binding(5) var<storage, read_write> z: array<f32>;
@group(0) @binding(6) var<uniform> params: MoeConvParams;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = group.z;
    let m0 = group.y * TILE_M + lid / THREADS_N;
    let n0 = group.x * TILE_N + lid % THREADS_N;
    let pixels = params.h_out * params.w_out;
    let taps = params.kernel * params.kernel;
    let reduce = params.c_in * taps;
    let expert_raw = experts[b];
    let expert_ok = expert_raw >= 0 && u32(expert_raw) < params.num_experts;
    let expert = select(0u, u32(expert_raw), expert_ok);
    let plane = params.h_in * params.w_in;
    let h_in = vec4<i32>(i32(params.h_in));
    let w_in = i32(params.w_in);

    // The four filters this thread uses (rows past c_out read the last one and are not written).
    let last = params.c_out - 1u;
    let base = expert * params.c_out;
    let filters = vec4<u32>(
        (base + min(m0, last)) * reduce,
        (base + min(m0 + THREADS_M, last)) * reduce,
        (base + min(m0 + 2u * THREADS_M, last)) * reduce,
        (base + min(m0 + 3u * THREADS_M, last)) * reduce,
    );
    // The four output pixels' top-left input corners.
    let n = vec4<u32>(n0, n0 + THREADS_N, n0 + 2u * THREADS_N, n0 + 3u * THREADS_N);
    let corner_y = vec4<i32>((n / params.w_out) * params.stride) - vec4<i32>(i32(params.padding));
    let corner_x = vec4<i32>((n % params.w_out) * params.stride) - vec4<i32>(i32(params.padding));
    let w_in4 = vec4<i32>(w_in);

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var k = 0u;
    for (var ci = 0u; ci < params.c_in; ci++) {
        let channel = vec4<i32>(i32(b * params.c_in * plane + ci * plane));
        for (var ky = 0u; ky < params.kernel; ky++) {
            let iy = corner_y + vec4<i32>(i32(ky));
            let row_ok = (iy >= vec4<i32>(0)) & (iy < h_in);
            for (var kx = 0u; kx < params.kernel; kx++) {
                let ix = corner_x + vec4<i32>(i32(kx));
                let ok = row_ok & (ix >= vec4<i32>(0)) & (ix < w_in4);
                let index = select(vec4<i32>(0), channel + iy * w_in4 + ix, ok);
                let v = select(
                    vec4<f32>(0.0),
                    vec4<f32>(input[index.x], input[index.y], input[index.z], input[index.w]),
                    ok,
                );
                let w = vec4<f32>(
                    weight[filters.x + k],
                    weight[filters.y + k],
                    weight[filters.z + k],
                    weight[filters.w + k],
                );
                acc0 = fma(vec4<f32>(w.x), v, acc0);
                acc1 = fma(vec4<f32>(w.y), v, acc1);
                acc2 = fma(vec4<f32>(w.z), v, acc2);
                acc3 = fma(vec4<f32>(w.w), v, acc3);
                k++;
            }
        }
    }

    // A NaN made at run time: a constant NaN fails shader creation in browsers (Tint).
    let poison = bitcast<f32>(0x7fc00000u + min(params.c_out, 0u));
    let scale = gate[b * params.num_experts + expert];
    let rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var r = 0u; r < 4u; r++) {
        let m = m0 + r * THREADS_M;
        for (var c = 0u; c < 4u; c++) {
            if (m < params.c_out && n[c] < pixels) {
                let at = (b * params.c_out + m) * pixels + n[c];
                output[at] = select(poison, scale * rows[r][c], expert_ok);
                if (params.write_z != 0u) {
                    z[at] = select(poison, rows[r][c], expert_ok);
                }
            }
        }
    }
}
