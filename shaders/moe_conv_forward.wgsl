// Sparse MoE convolution, forward pass.
//
// Computes, for every sample b with expert e = experts[b]:
//   z[b, co, oy, ox] = sum over (ci, ky, kx) of
//       weight[e * c_out + co, ci, ky, kx] * input[b, ci, oy * stride - padding + ky, ox * stride - padding + kx]
//   output[b, co, oy, ox] = gate[b, e] * z[b, co, oy, ox]
// (zero outside the input): the gate's gather and scale cost no launch of their own. Only the selected expert's filters are read: the other experts cost
// nothing. An expert index outside [0, num_experts) writes NaN, so a routing bug cannot pass as
// expert 0.
//
// Implicit GEMM per sample: rows = output channels (c_out), columns = output pixels, reduction =
// c_in * kernel * kernel. A workgroup computes one TILE_M x TILE_N block of one sample; each
// thread 4 x 4 outputs in four vec4 accumulators, interleaved so neighbouring threads touch
// neighbouring pixels.
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

// Per reduction index of the current step: offset of (ci, ky, kx) in one sample's input, ky, kx.
var<workgroup> tap_offset: array<i32, TILE_K>;
var<workgroup> tap_y: array<i32, TILE_K>;
var<workgroup> tap_x: array<i32, TILE_K>;

@compute @workgroup_size(THREADS)
fn main(@builtin(workgroup_id) group: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let b = group.z;
    let m0 = group.y * TILE_M;
    let n0 = group.x * TILE_N;
    let pixels = params.h_out * params.w_out;
    let taps = params.kernel * params.kernel;
    let reduce = params.c_in * taps;
    let expert_raw = experts[b];
    let expert_ok = expert_raw >= 0 && u32(expert_raw) < params.num_experts;
    let expert = select(0u, u32(expert_raw), expert_ok);
    let weight_base = expert * params.c_out * reduce;
    let input_base = i32(b * params.c_in * params.h_in * params.w_in);
    let plane = params.h_in * params.w_in;
    let h_in = i32(params.h_in);
    let w_in = i32(params.w_in);

    // This thread always loads the same output pixel column of tile_b (THREADS % TILE_N == 0):
    // its top-left input corner is computed once.
    let b_col = lid % TILE_N;
    let b_row = lid / TILE_N;
    let n_load = n0 + b_col;
    let n_ok = n_load < pixels;
    let corner_y = i32((n_load / params.w_out) * params.stride) - i32(params.padding);
    let corner_x = i32((n_load % params.w_out) * params.stride) - i32(params.padding);

    let tm = lid / THREADS_N;
    let tn = lid % THREADS_N;
    var acc = Block();

    for (var k0 = 0u; k0 < reduce; k0 += TILE_K) {
        if (lid < TILE_K) {
            let k = min(k0 + lid, reduce - 1u);
            let ci = k / taps;
            let tap = k % taps;
            let ky = tap / params.kernel;
            let kx = tap % params.kernel;
            tap_offset[lid] = i32(ci * plane + ky * params.w_in + kx);
            tap_y[lid] = i32(ky);
            tap_x[lid] = i32(kx);
        }
        // Weights: consecutive threads read consecutive reduction indices of one filter.
        for (var i = lid; i < TILE_K * TILE_M; i += THREADS) {
            let kl = i % TILE_K;
            let ml = i / TILE_K;
            let k = k0 + kl;
            let m = m0 + ml;
            var value = 0.0;
            if (k < reduce && m < params.c_out) {
                value = weight[weight_base + m * reduce + k];
            }
            tile_a[kl * TILE_M + ml] = value;
        }
        workgroupBarrier();
        // Input patches: consecutive threads read consecutive output pixels of one tap.
        for (var kl = b_row; kl < TILE_K; kl += THREADS / TILE_N) {
            let iy = corner_y + tap_y[kl];
            let ix = corner_x + tap_x[kl];
            var value = 0.0;
            if (n_ok && k0 + kl < reduce && iy >= 0 && ix >= 0 && iy < h_in && ix < w_in) {
                value = input[input_base + tap_offset[kl] + corner_y * w_in + corner_x];
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
            if (m < params.c_out && n < pixels) {
                let at = (b * params.c_out + m) * pixels + n;
                output[at] = select(poison, scale * rows[r][c], expert_ok);
                if (params.write_z != 0u) {
                    z[at] = select(poison, rows[r][c], expert_ok);
                }
            }
        }
    }
}
