// Sparse MoE convolution, gradient with respect to the input.
//
// For every sample b with expert e = experts[b]:
//   grad_input[b, ci, iy, ix] = gate[b, e] * sum over (co, ky, kx) of
//       weight[e * c_out + co, ci, ky, kx] * grad_output[b, co, oy, ox]
// where oy = (iy + padding - ky) / stride and ox likewise, taken only where the division is exact
// and (oy, ox) lies inside the output. Only the selected expert's filters are read. An expert
// index outside [0, num_experts) writes NaN.
//
// Implicit GEMM per sample and stride phase: rows = input channels (c_in), columns = the input
// pixels of one phase (iy mod stride, ix mod stride), reduction = c_out times the taps that
// reach an output from that phase (ky = (iy + padding) mod stride, then every stride-th; a
// quarter of the taps for stride 2). Same tiling as the forward kernel.
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

// Per reduction index k = (co, ky, kx) of the current step: offset of channel co in one
// sample's output gradient, offset of (co, tap) in one expert's filters, ky, kx.
var<workgroup> tap_grad: array<i32, TILE_K>;
var<workgroup> tap_weight: array<u32, TILE_K>;
var<workgroup> tap_y: array<i32, TILE_K>;
var<workgroup> tap_x: array<i32, TILE_K>;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let phases = params.stride * params.stride;
    let b = group.z / phases;
    let phase_y = (group.z % phases) / params.stride;
    let phase_x = group.z % params.stride;
    // This phase's pixels: iy = py * stride + phase_y for py < phase_h, likewise x; its taps:
    // ky = first_ky + j * stride for j < taps_y, likewise x.
    let phase_h = (params.h_in + params.stride - 1u - phase_y) / params.stride;
    let phase_w = (params.w_in + params.stride - 1u - phase_x) / params.stride;
    let first_ky = (phase_y + params.padding) % params.stride;
    let first_kx = (phase_x + params.padding) % params.stride;
    let taps_y = (params.kernel + params.stride - 1u - min(first_ky, params.kernel)) / params.stride;
    let taps_x = (params.kernel + params.stride - 1u - min(first_kx, params.kernel)) / params.stride;
    let phase_taps = taps_y * taps_x;
    let m0 = group.y * TILE_M;
    let n0 = group.x * TILE_N;
    let pixels_in = params.h_in * params.w_in;
    let pixels_out = params.h_out * params.w_out;
    let taps = params.kernel * params.kernel;
    let filter_len = params.c_in * taps;
    let reduce = params.c_out * phase_taps;
    let expert_raw = experts[b];
    let expert_ok = expert_raw >= 0 && u32(expert_raw) < params.num_experts;
    let expert = select(0u, u32(expert_raw), expert_ok);
    let weight_base = expert * params.c_out * filter_len;
    let grad_base = i32(b * params.c_out * pixels_out);
    let stride = i32(params.stride);
    let h_out = i32(params.h_out);
    let w_out = i32(params.w_out);

    // This thread always loads the same input pixel column of tile_b (THREADS % TILE_N == 0).
    let b_col = lid % TILE_N;
    let b_row = lid / TILE_N;
    let n_load = n0 + b_col;
    let n_ok = n_load < phase_h * phase_w;
    let shifted_y = i32((n_load / max(phase_w, 1u)) * params.stride + phase_y + params.padding);
    let shifted_x = i32((n_load % max(phase_w, 1u)) * params.stride + phase_x + params.padding);

    let tm = lid / THREADS_N;
    let tn = lid % THREADS_N;
    var acc = Block();

    for (var k0 = 0u; k0 < reduce; k0 += TILE_K) {
        if (lid < TILE_K) {
            let k = min(k0 + lid, reduce - 1u);
            let co = k / phase_taps;
            let tap = k % phase_taps;
            let ky = first_ky + (tap / taps_x) * params.stride;
            let kx = first_kx + (tap % taps_x) * params.stride;
            tap_grad[lid] = i32(co * pixels_out);
            tap_weight[lid] = co * filter_len + ky * params.kernel + kx;
            tap_y[lid] = i32(ky);
            tap_x[lid] = i32(kx);
        }
        workgroupBarrier();
        // Weights: row m = ci of filter (co, tap).
        for (var i = lid; i < TILE_K * TILE_M; i += THREADS) {
            let kl = i % TILE_K;
            let ml = i / TILE_K;
            let m = m0 + ml;
            var value = 0.0;
            if (k0 + kl < reduce && m < params.c_in) {
                value = weight[weight_base + tap_weight[kl] + m * taps];
            }
            tile_a[kl * TILE_M + ml] = value;
        }
        // Output-gradient taps that reach this input pixel through tap (ky, kx); within the
        // phase the divisions are exact.
        for (var kl = b_row; kl < TILE_K; kl += THREADS / TILE_N) {
            let ty = shifted_y - tap_y[kl];
            let tx = shifted_x - tap_x[kl];
            let oy = ty / stride;
            let ox = tx / stride;
            var value = 0.0;
            if (n_ok && k0 + kl < reduce && ty >= 0 && tx >= 0 && oy < h_out && ox < w_out) {
                value = grad_output[grad_base + tap_grad[kl] + oy * w_out + ox];
            }
            tile_b[kl * TILE_N + b_col] = value;
        }
        workgroupBarrier();
        acc = multiply_tiles(acc, tm, tn);
        workgroupBarrier();
    }

    // A NaN made at run time: a constant NaN fails shader creation in browsers (Tint).
    let poison = bitcast<f32>(0x7fc00000u + min(params.c_out, 0u));
    let scale = gate[b * params.num_experts + expert];
    let rows = array<vec4<f32>, 4>(acc.r0, acc.r1, acc.r2, acc.r3);
    for (var r = 0u; r < 4u; r++) {
        let m = m0 + tm + r * THREADS_M;
        for (var c = 0u; c < 4u; c++) {
            let n = n0 + tn + c * THREADS_N;
            if (m < params.c_in && n < phase_h * phase_w) {
                let iy = (n / phase_w) * params.stride + phase_y;
                let ix = (n % phase_w) * params.stride + phase_x;
                let pixel = iy * params.w_in + ix;
                grad_input[(b * params.c_in + m) * pixels_in + pixel] = select(poison, scale * rows[r][c], expert_ok);
            }
        }
    }
}
