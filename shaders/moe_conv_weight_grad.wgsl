// Sparse MoE convolution, gradient with respect to the weight.
//
// For every expert e and split s (a contiguous chunk of the batch):
//   partial[s, e * c_out + co, ci, ky, kx] = sum over samples b of chunk s with experts[b] == e,
//       and output pixels (oy, ox), of
//       gate[b, e] * grad_output[b, co, oy, ox] * input[b, ci, oy * stride - padding + ky, ox * stride - padding + kx]
// Each sample adds only into its own expert's slice; an expert no sample chose gets zeros. The
// launcher sums the partials over s (one split needs no sum).
//
// GEMM per (expert, split): rows = output channels (c_out), columns = filter_len entries
// (c_in * kernel * kernel), reduction = (sample, output pixel). Skipping a sample is uniform
// across the workgroup (the expert index is read from a buffer, never from the CPU).
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

// Per output pixel of the current step: the top-left input corner of its receptive field.
var<workgroup> corner_y: array<i32, TILE_K>;
var<workgroup> corner_x: array<i32, TILE_K>;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let expert = group.z % params.num_experts;
    let split = group.z / params.num_experts;
    let m0 = group.y * TILE_M;
    let n0 = group.x * TILE_N;
    let pixels = params.h_out * params.w_out;
    let taps = params.kernel * params.kernel;
    let filter_len = params.c_in * taps;
    let plane = params.h_in * params.w_in;
    let chunk = (params.batch + params.splits - 1u) / params.splits;
    let b_start = split * chunk;
    let b_end = min(b_start + chunk, params.batch);
    let h_in = i32(params.h_in);
    let w_in = i32(params.w_in);

    // This thread always loads the same filter entry column (ci, ky, kx) of tile_b
    // (THREADS % TILE_N == 0).
    let b_col = lid % TILE_N;
    let b_row = lid / TILE_N;
    let n_load = n0 + b_col;
    let n_ok = n_load < filter_len;
    let tap = n_load % taps;
    let col_y = i32(tap / params.kernel);
    let col_x = i32(tap % params.kernel);
    let col_offset = i32((n_load / taps) * plane) + col_y * w_in + col_x;

    let tm = lid / THREADS_N;
    let tn = lid % THREADS_N;
    var acc = Block();

    for (var b = b_start; b < b_end; b++) {
        if (experts[b] != i32(expert)) {
            continue;
        }
        let grad_base = b * params.c_out * pixels;
        let input_base = i32(b * params.c_in * plane);
        let scale = gate[b * params.num_experts + expert];
        for (var p0 = 0u; p0 < pixels; p0 += TILE_K) {
            if (lid < TILE_K) {
                let p = min(p0 + lid, pixels - 1u);
                corner_y[lid] = i32((p / params.w_out) * params.stride) - i32(params.padding);
                corner_x[lid] = i32((p % params.w_out) * params.stride) - i32(params.padding);
            }
            // Output gradient: consecutive threads read consecutive pixels of one channel.
            for (var i = lid; i < TILE_K * TILE_M; i += THREADS) {
                let kl = i % TILE_K;
                let ml = i / TILE_K;
                let p = p0 + kl;
                let m = m0 + ml;
                var value = 0.0;
                if (p < pixels && m < params.c_out) {
                    value = scale * grad_output[grad_base + m * pixels + p];
                }
                tile_a[kl * TILE_M + ml] = value;
            }
            workgroupBarrier();
            // Input patches: pixel p through this thread's filter entry.
            for (var kl = b_row; kl < TILE_K; kl += THREADS / TILE_N) {
                let iy = corner_y[kl] + col_y;
                let ix = corner_x[kl] + col_x;
                var value = 0.0;
                if (n_ok && p0 + kl < pixels && iy >= 0 && ix >= 0 && iy < h_in && ix < w_in) {
                    value = input[input_base + col_offset + corner_y[kl] * w_in + corner_x[kl]];
                }
                tile_b[kl * TILE_N + b_col] = value;
            }
            workgroupBarrier();
            acc = multiply_tiles(acc, tm, tn);
            workgroupBarrier();
        }
    }

    let weight_rows = params.num_experts * params.c_out;
    let rows = array<vec4<f32>, 4>(acc.r0, acc.r1, acc.r2, acc.r3);
    for (var r = 0u; r < 4u; r++) {
        let m = m0 + tm + r * THREADS_M;
        for (var c = 0u; c < 4u; c++) {
            let n = n0 + tn + c * THREADS_N;
            if (m < params.c_out && n < filter_len) {
                partial[(split * weight_rows + expert * params.c_out + m) * filter_len + n] = rows[r][c];
            }
        }
    }
}
