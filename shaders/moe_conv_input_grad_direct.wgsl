// Sparse MoE convolution, gradient with respect to the input, direct variant (no workgroup
// memory, no barriers).
//
// Computes the same as moe_conv_input_grad.wgsl: for every sample b with e = experts[b],
//   grad_input[b, ci, iy, ix] = gate[b, e] * sum over (co, ky, kx) of
//       weight[e * c_out + co, ci, ky, kx] * grad_output[b, co, oy, ox]
// where oy = (iy + padding - ky) / stride and ox likewise, taken only where the division is exact
// and (oy, ox) lies inside the output; an expert index outside [0, num_experts) writes NaN. Each
// thread computes 4 input channels x 4 input pixels straight from global memory (the launcher
// picks this variant on software adapters).
//
// Input pixels are split into stride x stride phases (iy mod stride, ix mod stride), one phase
// per workgroup: within a phase only the taps with ky = (iy + padding) mod stride (mod stride)
// reach an output, so a stride-2 layer visits a quarter of the taps instead of testing all.
//
// Bindings (the tensors read_write storage, because the allocator may place several tensors in
// one wgpu buffer and a dispatch may not bind one buffer both read-only and writable; contiguous
// row-major f32 unless noted; the params a uniform):
//   0 grad_output [batch, c_out, h_out, w_out]
//   1 weight      [num_experts * c_out, c_in, kernel, kernel]
//   2 experts     [batch] i32
//   3 gate        [batch, num_experts] (each sample's gradient is scaled by its gate at its
//                 expert, as the gated forward scaled its output)
//   4 grad_input  [batch, c_in, h_in, w_in]
//   5 params      MoeConvParams (13 x u32, moe_conv_common.wgsl)
// Dispatch: (ceil(ceil(h_in / stride) * ceil(w_in / stride) / TILE_N), ceil(c_in / TILE_M),
//            batch * stride * stride).
// Launcher: crates/advmoe-kernels/src/cube.rs (`sparse_moe_conv_input_grad`).

@group(0) @binding(0) var<storage, read_write> grad_output: array<f32>;
@group(0) @binding(1) var<storage, read_write> weight: array<f32>;
@group(0) @binding(2) var<storage, read_write> experts: array<i32>;
@group(0) @binding(3) var<storage, read_write> gate: array<f32>;
@group(0) @binding(4) var<storage, read_write> grad_input: array<f32>;
@group(0) @binding(5) var<uniform> params: MoeConvParams;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let phases = params.stride * params.stride;
    let b = group.z / phases;
    let phase_y = (group.z % phases) / params.stride;
    let phase_x = group.z % params.stride;
    // This phase's pixels: iy = py * stride + phase_y for py < phase_h, likewise x.
    let phase_h = (params.h_in + params.stride - 1u - phase_y) / params.stride;
    let phase_w = (params.w_in + params.stride - 1u - phase_x) / params.stride;
    let m0 = group.y * TILE_M + lid / THREADS_N;
    let n0 = group.x * TILE_N + lid % THREADS_N;
    let pixels_in = params.h_in * params.w_in;
    let pixels_out = params.h_out * params.w_out;
    let taps = params.kernel * params.kernel;
    let filter_len = params.c_in * taps;
    let expert_raw = experts[b];
    let expert_ok = expert_raw >= 0 && u32(expert_raw) < params.num_experts;
    let expert = select(0u, u32(expert_raw), expert_ok);
    let stride = i32(params.stride);
    let h_out = vec4<i32>(i32(params.h_out));
    let w_out = vec4<i32>(i32(params.w_out));

    // Offsets of the four input channels inside one filter (rows past c_in are not written).
    let last = params.c_in - 1u;
    let channels = vec4<u32>(
        min(m0, last) * taps,
        min(m0 + THREADS_M, last) * taps,
        min(m0 + 2u * THREADS_M, last) * taps,
        min(m0 + 3u * THREADS_M, last) * taps,
    );
    let n = vec4<u32>(n0, n0 + THREADS_N, n0 + 2u * THREADS_N, n0 + 3u * THREADS_N);
    let in_phase = n < vec4<u32>(phase_h * phase_w);
    let iy = (n / max(phase_w, 1u)) * params.stride + phase_y;
    let ix = (n % max(phase_w, 1u)) * params.stride + phase_x;
    let shifted_y = vec4<i32>(iy) + vec4<i32>(i32(params.padding));
    let shifted_x = vec4<i32>(ix) + vec4<i32>(i32(params.padding));
    // The first tap of this phase in each direction; the next ones are `stride` apart.
    let first_ky = (phase_y + params.padding) % params.stride;
    let first_kx = (phase_x + params.padding) % params.stride;
    let expert_base = expert * params.c_out * filter_len;

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var co = 0u; co < params.c_out; co++) {
        let plane = vec4<i32>(i32((b * params.c_out + co) * pixels_out));
        let filter_base = expert_base + co * filter_len;
        for (var ky = first_ky; ky < params.kernel; ky += params.stride) {
            // Exact division: shifted_y - ky is a multiple of the stride in this phase.
            let ty = shifted_y - vec4<i32>(i32(ky));
            let oy = ty / vec4<i32>(stride);
            let row_ok = in_phase & (ty >= vec4<i32>(0)) & (oy < h_out);
            for (var kx = first_kx; kx < params.kernel; kx += params.stride) {
                let tx = shifted_x - vec4<i32>(i32(kx));
                let ox = tx / vec4<i32>(stride);
                let ok = row_ok & (tx >= vec4<i32>(0)) & (ox < w_out);
                let index = select(vec4<i32>(0), plane + oy * w_out + ox, ok);
                let g = select(
                    vec4<f32>(0.0),
                    vec4<f32>(
                        grad_output[index.x],
                        grad_output[index.y],
                        grad_output[index.z],
                        grad_output[index.w],
                    ),
                    ok,
                );
                let tap = filter_base + ky * params.kernel + kx;
                let w = vec4<f32>(
                    weight[tap + channels.x],
                    weight[tap + channels.y],
                    weight[tap + channels.z],
                    weight[tap + channels.w],
                );
                acc0 = fma(vec4<f32>(w.x), g, acc0);
                acc1 = fma(vec4<f32>(w.y), g, acc1);
                acc2 = fma(vec4<f32>(w.z), g, acc2);
                acc3 = fma(vec4<f32>(w.w), g, acc3);
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
            if (m < params.c_in && in_phase[c]) {
                let pixel = iy[c] * params.w_in + ix[c];
                grad_input[(b * params.c_in + m) * pixels_in + pixel] = select(poison, scale * rows[r][c], expert_ok);
            }
        }
    }
}
