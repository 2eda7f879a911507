// Adam with bias correction and weight decay added to the gradient (PyTorch's Adam), one
// parameter tensor in one launch where element-wise launches took fourteen:
//   g  = grad + weight_decay * param                       (when weight_decay > 0)
//   m' = beta1 * m + (1 - beta1) * g,   v' = beta2 * v + (1 - beta2) * g * g
//   param' = param - lr * (m' / bias1) / (sqrt(v' / bias2) + eps)
// with m = v = 0 when the step starts the moments, bias_k = 1 - beta_k^t.
//
// Bindings (tensors read_write storage, contiguous f32, `count` elements each; the params a
// uniform):
//   0 param   1 grad   2 m   3 v (one-value stand-ins when has_state is 0)
//   4 param'  5 m'     6 v'  7 params UpdateParams (moe_conv_common.wgsl)
// Dispatch: 256 elements per workgroup, (min(groups, 65535), ceil(groups / 65535), 1).
// Launcher: crates/advmoe-kernels/src/cube.rs (`adam_step`).

@group(0) @binding(0) var<storage, read_write> param: array<f32>;
@group(0) @binding(1) var<storage, read_write> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> m: array<f32>;
@group(0) @binding(3) var<storage, read_write> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> param_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> m_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> v_out: array<f32>;
@group(0) @binding(7) var<uniform> params: UpdateParams;

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
    let p = param[i];
    var g = grad[i];
    if (params.weight_decay > 0.0) {
        g = g + p * params.weight_decay;
    }
    var m_new = g * params.one_minus_beta1;
    var v_new = (g * g) * params.one_minus_beta2;
    if (params.has_state == 1u) {
        m_new = m[i] * params.beta1 + m_new;
        v_new = v[i] * params.beta2 + v_new;
    }
    m_out[i] = m_new;
    v_out[i] = v_new;
    let m_hat = m_new / params.bias1;
    let v_hat = v_new / params.bias2;
    param_out[i] = p - (m_hat / (sqrt(v_hat) + params.eps)) * params.lr;
}
