// Sparse MoE convolution, gradient with respect to the weight, direct variant (no workgroup
// memory, no barriers).
//
// Computes the same as moe_conv_weight_grad.wgsl: for every expert e and split s (a contiguous
// chunk of the batch),
//   partial[s, e * c_out + co, ci, ky, kx] = sum over samples b of chunk s with experts[b] == e,
//       and output pixels (oy, ox), of
//       gate[b, e] * grad_output[b, co, oy, ox] * input[b, ci, oy * stride - padding + ky, ox * stride - padding + kx]
// Each sample adds only into its own expert's slice; an expert no sample chose gets zeros. Each
// thread computes 4 output channels x 4 filter entries straight from global memory (the
// launcher picks this variant on software adapters).
//
// Bindings (the tensors read_write storage, because the allocator may place several tensors in
// one wgpu buffer and a dispatch may not bind one buffer both read-only and writable; contiguous
// row-major f32 unless noted; the params a uniform):
//   0 grad_output [batch, c_out, h_out, w_out]
//   1 input       [batch, c_in, h_in, w_in]
//   2 experts     [batch] i32
//   3 gate        [batch, num_experts] (each sample's share is scaled by its gate at its
//                 expert, as the gated forward scaled its output)
//   4 partial     [splits, num_experts * c_out, c_in, kernel, kernel]
//   5 params      MoeConvParams (13 x u32, moe_conv_common.wgsl)
// Dispatch: (ceil(c_in * kernel * kernel / TILE_N), ceil(c_out / TILE_M), num_experts * splits).
// Launcher: crates/advmoe-kernels/src/cube.rs (`sparse_moe_conv_weight_grad`).

@group(0) @binding(0) var<storage, read_write> grad_output: array<f32>;
@group(0) @binding(1) var<storage, read_write> input: array<f32>;
@group(0) @binding(2) var<storage, read_write> experts: array<i32>;
@group(0) @binding(3) var<storage, read_write> gate: array<f32>;
@group(0) @binding(4) var<storage, read_write> partial: array<f32>;
@group(0) @binding(5) var<uniform> params: MoeConvParams;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let expert = group.z % params.num_experts;
    let split = group.z / params.num_experts;
    let m0 = group.y * TILE_M + lid / THREADS_N;
    let n0 = group.x * TILE_N + lid % THREADS_N;
    let pixels = params.h_out * params.w_out;
    let taps = params.kernel * params.kernel;
    let filter_len = params.c_in * taps;
    let plane = params.h_in * params.w_in;
    let chunk = (params.batch + params.splits - 1u) / params.splits;
    let b_start = split * chunk;
    let b_end = min(b_start + chunk, params.batch);
    let h_in = vec4<i32>(i32(params.h_in));
    let w_in = vec4<i32>(i32(params.w_in));

    // The four output channels (rows past c_out read the last one and are not written).
    let last_row = params.c_out - 1u;
    let rows_at = vec4<u32>(
        min(m0, last_row) * pixels,
        min(m0 + THREADS_M, last_row) * pixels,
        min(m0 + 2u * THREADS_M, last_row) * pixels,
        min(m0 + 3u * THREADS_M, last_row) * pixels,
    );
    // The four filter entries (ci, ky, kx) (columns past the filter are not written).
    let n = vec4<u32>(n0, n0 + THREADS_N, n0 + 2u * THREADS_N, n0 + 3u * THREADS_N);
    let entry = min(n, vec4<u32>(filter_len - 1u));
    let tap = entry % taps;
    let col_y = vec4<i32>(tap / params.kernel);
    let col_x = vec4<i32>(tap % params.kernel);
    let col_offset = vec4<i32>((entry / taps) * plane) + col_y * w_in + col_x;
    let padding = i32(params.padding);
    let stride = i32(params.stride);

    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    for (var b = b_start; b < b_end; b++) {
        if (experts[b] != i32(expert)) {
            continue;
        }
        let grad_base = rows_at + vec4<u32>(b * params.c_out * pixels);
        let input_base = vec4<i32>(i32(b * params.c_in * plane)) + col_offset;
        // This sample's share, scaled by its gate once it is summed.
        var own0 = vec4<f32>(0.0);
        var own1 = vec4<f32>(0.0);
        var own2 = vec4<f32>(0.0);
        var own3 = vec4<f32>(0.0);
        var p = 0u;
        for (var oy = 0u; oy < params.h_out; oy++) {
            let corner_y = i32(oy) * stride - padding;
            let iy = vec4<i32>(corner_y) + col_y;
            let row_ok = (iy >= vec4<i32>(0)) & (iy < h_in);
            for (var ox = 0u; ox < params.w_out; ox++) {
                let corner_x = i32(ox) * stride - padding;
                let ix = vec4<i32>(corner_x) + col_x;
                let ok = row_ok & (ix >= vec4<i32>(0)) & (ix < w_in);
                let index = select(vec4<i32>(0), input_base + vec4<i32>(corner_y * i32(params.w_in) + corner_x), ok);
                let v = select(
                    vec4<f32>(0.0),
                    vec4<f32>(input[index.x], input[index.y], input[index.z], input[index.w]),
                    ok,
                );
                let g = vec4<f32>(
                    grad_output[grad_base.x + p],
                    grad_output[grad_base.y + p],
                    grad_output[grad_base.z + p],
                    grad_output[grad_base.w + p],
                );
                own0 = fma(vec4<f32>(g.x), v, own0);
                own1 = fma(vec4<f32>(g.y), v, own1);
                own2 = fma(vec4<f32>(g.z), v, own2);
                own3 = fma(vec4<f32>(g.w), v, own3);
                p++;
            }
        }
        let scale = vec4<f32>(gate[b * params.num_experts + expert]);
        acc0 = fma(scale, own0, acc0);
        acc1 = fma(scale, own1, acc1);
        acc2 = fma(scale, own2, acc2);
        acc3 = fma(scale, own3, acc3);
    }

    let weight_rows = params.num_experts * params.c_out;
    let rows = array<vec4<f32>, 4>(acc0, acc1, acc2, acc3);
    for (var r = 0u; r < 4u; r++) {
        let m = m0 + r * THREADS_M;
        for (var c = 0u; c < 4u; c++) {
            if (m < params.c_out && n[c] < filter_len) {
                partial[(split * weight_rows + expert * params.c_out + m) * filter_len + n[c]] = rows[r][c];
            }
        }
    }
}
