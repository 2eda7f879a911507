// A batch norm's running statistics after one train-mode pass, both in one launch where
// element-wise launches took seven:
//   mean' = keep * mean + momentum * batch_mean
//   var'  = keep * var  + momentum * (unbiased * batch_var)
// (batch_var biased, unbiased = n / (n - 1), keep = 1 - momentum.)
//
// Bindings (tensors read_write storage, contiguous f32, `count` = channels elements each; the
// params a uniform):
//   0 running_mean   1 running_var   2 batch_mean   3 batch_var
//   4 mean'          5 var'  6 params UpdateParams (moe_conv_common.wgsl)
// Dispatch: 256 channels per workgroup, (min(groups, 65535), ceil(groups / 65535), 1).
// Launcher: crates/advmoe-kernels/src/cube.rs (`running_stats_step`).

@group(0) @binding(0) var<storage, read_write> running_mean: array<f32>;
@group(0) @binding(1) var<storage, read_write> running_var: array<f32>;
@group(0) @binding(2) var<storage, read_write> batch_mean: array<f32>;
@group(0) @binding(3) var<storage, read_write> batch_var: array<f32>;
@group(0) @binding(4) var<storage, read_write> mean_out: array<f32>;
@group(0) @binding(5) var<storage, read_write> var_out: array<f32>;
@group(0) @binding(6) var<uniform> params: UpdateParams;

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
    mean_out[i] = running_mean[i] * params.keep + batch_mean[i] * params.momentum;
    var_out[i] = running_var[i] * params.keep + (batch_var[i] * params.unbiased) * params.momentum;
}
