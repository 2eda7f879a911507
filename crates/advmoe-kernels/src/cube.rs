//! Launchers of the WGSL shaders on Burn's CubeCL backend (`wgpu` devices).
//!
//! Every MoE conv launch reads the expert indices from a device buffer: nothing is read back to
//! the CPU and there is no loop over experts on the host. The batch-norm launches pass a
//! per-channel table between them on the device. Inputs are made contiguous f32 (indices i32)
//! first, because the shaders index flat row-major arrays.

use std::cell::RefCell;

use burn::backend::TensorMetadata;
use burn::backend::ops::{FloatTensorOps, IntTensorOps};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::wgpu::{CubeBackend, CubeTensor, into_contiguous};
use burn::cubecl::Device as CubeDevice;
use burn::cubecl::ir::UIntKind;
use burn::cubecl::ir::metadata::Info;
use burn::cubecl::prelude::*;
use burn::cubecl::server::{KernelArguments, MetadataBindingInfo};
use burn::cubecl::{CubeKernel, PrecompiledSource};
use burn::tensor::{DType, FloatDType, IntDType, Scalar, Shape};

use crate::ops::{AdamHyper, BatchNormOps, SparseMoeOps, UpdateOps};
use crate::shaders::{self, Tile, Variant};

/// Workgroups per grid dimension that every WebGPU device supports.
const MAX_GROUPS: usize = 65_535;

/// Mirrors `struct MoeConvParams` in every shader: thirteen `u32` in declaration order, 52
/// bytes, no padding (WGSL storage layout of a struct of scalars).
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    c_in: usize,
    h_in: usize,
    w_in: usize,
    c_out: usize,
    h_out: usize,
    w_out: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    num_experts: usize,
    splits: usize,
    /// The forward kernel also writes the ungated output (1) or not (0).
    write_z: usize,
}

impl Geometry {
    /// The geometry from the input and weight shapes.
    fn new(
        input: [usize; 4],
        weight: [usize; 4],
        num_experts: usize,
        stride: usize,
        padding: usize,
    ) -> Self {
        let [batch, c_in, h_in, w_in] = input;
        let [rows, weight_c_in, kernel, kernel_w] = weight;
        assert!(
            num_experts > 0 && rows % num_experts == 0,
            "weight rows {rows} do not split into {num_experts} experts"
        );
        assert_eq!(
            c_in, weight_c_in,
            "input channels {c_in} but weight expects {weight_c_in}"
        );
        assert_eq!(kernel, kernel_w, "square kernels only");
        assert!(stride > 0, "stride must be positive");
        let out = |len: usize| (len + 2 * padding).saturating_sub(kernel) / stride + 1;
        Self {
            batch,
            c_in,
            h_in,
            w_in,
            c_out: rows / num_experts,
            h_out: out(h_in),
            w_out: out(w_in),
            kernel,
            stride,
            padding,
            num_experts,
            splits: 1,
            write_z: 0,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        [
            self.batch,
            self.c_in,
            self.h_in,
            self.w_in,
            self.c_out,
            self.h_out,
            self.w_out,
            self.kernel,
            self.stride,
            self.padding,
            self.num_experts,
            self.splits,
            self.write_z,
        ]
        .into_iter()
        .flat_map(|v| {
            u32::try_from(v)
                .expect("conv geometry fits in u32")
                .to_le_bytes()
        })
        .collect()
    }
}

/// Which shader a kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Shader {
    Forward(Variant),
    InputGrad(Variant),
    WeightGrad(Variant),
    GateGrad,
    BatchNormStats,
    BatchNormTable,
    BatchNormApply,
    BatchNormGradSums,
    BatchNormGradInput,
    AddRelu,
    ReluGrad,
    LinfStep,
    SgdStep,
    AdamStep,
    RunningStats,
}

impl Shader {
    fn source(self) -> &'static str {
        match self {
            Self::Forward(Variant::Tiled) => shaders::FORWARD,
            Self::Forward(Variant::Direct) => shaders::FORWARD_DIRECT,
            Self::InputGrad(Variant::Tiled) => shaders::INPUT_GRAD,
            Self::InputGrad(Variant::Direct) => shaders::INPUT_GRAD_DIRECT,
            Self::WeightGrad(Variant::Tiled) => shaders::WEIGHT_GRAD,
            Self::WeightGrad(Variant::Direct) => shaders::WEIGHT_GRAD_DIRECT,
            Self::GateGrad => shaders::GATE_GRAD,
            Self::BatchNormStats => shaders::BATCH_NORM_STATS,
            Self::BatchNormTable => shaders::BATCH_NORM_TABLE,
            Self::BatchNormApply => shaders::BATCH_NORM_APPLY,
            Self::BatchNormGradSums => shaders::BATCH_NORM_GRAD_SUMS,
            Self::BatchNormGradInput => shaders::BATCH_NORM_GRAD_INPUT,
            Self::AddRelu => shaders::ADD_RELU,
            Self::ReluGrad => shaders::RELU_GRAD,
            Self::LinfStep => shaders::LINF_STEP,
            Self::SgdStep => shaders::SGD_STEP,
            Self::AdamStep => shaders::ADAM_STEP,
            Self::RunningStats => shaders::RUNNING_STATS,
        }
    }
}

/// The variant for the device `tensor` lives on: [`crate::kernel_variant`]'s override, else
/// direct on a software adapter (no physical card behind it) and tiled on a GPU.
fn variant_for(tensor: &CubeTensor) -> Variant {
    crate::kernel_variant().unwrap_or_else(|| {
        if tensor.client.properties().identity.physical.is_none() {
            Variant::Direct
        } else {
            Variant::Tiled
        }
    })
}

/// A hand-written WGSL kernel; its id covers everything that changes the text (shader, tile).
struct WgslKernel {
    shader: Shader,
    tile: Tile,
}

impl KernelMetadata for WgslKernel {
    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info((self.shader, self.tile))
    }

    fn address_type(&self) -> ElemType {
        UIntKind::U32.into()
    }
}

impl CubeKernel for WgslKernel {
    fn define(&self) -> KernelDefinition {
        // The text is the kernel; the definition only keys caches (as burn's `SourceKernel`).
        let settings = KernelSettings::new(
            CubeDim::new_1d(256).into(),
            ExecutionMode::Checked,
            AddressType::U32,
        );
        KernelDefinition {
            body: Scope::root(settings.clone()),
            settings,
            info: Info::default(),
        }
    }

    fn source(&self) -> Option<PrecompiledSource> {
        Some(PrecompiledSource {
            source: shaders::render(self.shader.source(), self.tile),
            entrypoint_name: "main".to_string(),
            lang: "wgsl",
        })
    }
}

fn f32_contiguous(tensor: CubeTensor) -> CubeTensor {
    let tensor = match tensor.dtype {
        DType::F32 => tensor,
        _ => CubeBackend::float_cast(tensor, FloatDType::F32),
    };
    into_contiguous(tensor)
}

fn i32_contiguous(tensor: CubeTensor) -> CubeTensor {
    let tensor = match tensor.dtype {
        DType::I32 => tensor,
        _ => CubeBackend::int_cast(tensor, IntDType::I32),
    };
    into_contiguous(tensor)
}

/// The operands of a kernel that reads two float tensors, the gate and the expert indices, as
/// the shaders bind them (f32 and i32, contiguous), and the number of experts (the gate's
/// columns).
fn operands(
    a: CubeTensor,
    b: CubeTensor,
    gate: CubeTensor,
    experts: CubeTensor,
) -> (CubeTensor, CubeTensor, CubeTensor, CubeTensor, usize) {
    let gate = f32_contiguous(gate);
    let [_, num_experts] = gate.shape().dims::<2>();
    (
        f32_contiguous(a),
        f32_contiguous(b),
        gate,
        i32_contiguous(experts),
        num_experts,
    )
}

fn dims4(tensor: &CubeTensor) -> [usize; 4] {
    tensor.shape().dims::<4>()
}

fn grid(x: usize, y: usize, z: usize) -> CubeCount {
    for (axis, len) in [("x", x), ("y", y), ("z", z)] {
        assert!(
            len <= MAX_GROUPS,
            "sparse MoE conv needs {len} workgroups along {axis}, above the portable limit {MAX_GROUPS}"
        );
    }
    let groups = |len: usize| u32::try_from(len.max(1)).expect("checked above");
    CubeCount::Static(groups(x), groups(y), groups(z))
}

/// A new contiguous f32 tensor of `shape` on `like`'s device, its values unset.
fn empty_f32(like: &CubeTensor, shape: Shape) -> CubeTensor {
    let client = like.client.clone();
    let bytes = shape.num_elements() * DType::F32.size();
    CubeTensor::new_contiguous(
        client.clone(),
        like.device.clone(),
        shape,
        client.empty(bytes),
        DType::F32,
    )
}

/// Zeros on `like`'s device (an empty batch's outputs, with nothing to bind).
fn zeros_f32(like: &CubeTensor, shape: Shape) -> CubeTensor {
    CubeBackend::float_zeros(shape, &like.device, FloatDType::F32)
}

/// Whether two tensors live in the same allocation (a view, a clone, or the tensor itself).
fn same_memory(a: &CubeTensor, b: &CubeTensor) -> bool {
    std::ptr::eq(a.handle.memory.descriptor(), b.handle.memory.descriptor())
}

/// One workgroup of 256 per 256 of `elements`, in rows of at most [`MAX_GROUPS`] (the shaders
/// flatten the grid with `num_workgroups`).
fn element_grid(elements: usize) -> CubeCount {
    let groups = elements.div_ceil(256);
    grid(groups.min(MAX_GROUPS), groups.div_ceil(MAX_GROUPS), 1)
}

/// Launch `shader` over `[inputs.., outputs.., params]`: every buffer is bound in that order.
fn launch_into(
    shader: Shader,
    tile: Tile,
    count: CubeCount,
    inputs: &[&CubeTensor],
    outputs: &[&CubeTensor],
    params: &[u8],
) {
    debug_assert!(
        {
            let bound: Vec<_> = inputs.iter().chain(outputs).collect();
            bound
                .iter()
                .enumerate()
                .all(|(i, a)| !bound[..i].iter().any(|b| same_memory(a, b)))
        },
        "{shader:?}: one tensor bound twice (WebGPU rejects writable bindings that alias)"
    );
    let client = inputs[0].client.clone();
    let buffers = inputs
        .iter()
        .chain(outputs)
        .map(|tensor| tensor.handle.clone().binding())
        .collect();
    client.launch(
        Box::new(WgslKernel { shader, tile }),
        count,
        KernelArguments::new()
            .with_buffers(buffers)
            .with_info(MetadataBindingInfo::custom(uniform_words(params))),
    );
}

/// A kernel's scalars as CubeCL's metadata words, zero-padded to whole 16-byte rows. CubeCL binds
/// them after the buffers as a uniform (the shaders' `var<uniform> params`) from its pool of
/// uniforms, as it does for Burn's own kernels. Uploading them as a buffer of their own instead
/// (`create_from_slice`) is a queue write, and CubeCL submits everything queued before each write:
/// one submit per launch of ours.
fn uniform_words(params: &[u8]) -> Vec<u64> {
    let mut words: Vec<u64> = params
        .chunks(8)
        .map(|chunk| {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            // CubeCL writes the words back as native-endian bytes: the same bytes again.
            u64::from_ne_bytes(word)
        })
        .collect();
    words.resize(words.len().next_multiple_of(2), 0);
    words
}

/// Allocate an f32 output, launch `shader` over `[inputs.., output, params]`, return output.
fn launch(
    shader: Shader,
    tile: Tile,
    count: CubeCount,
    inputs: &[&CubeTensor],
    output_shape: Shape,
    geometry: &Geometry,
) -> CubeTensor {
    let first = inputs[0];
    if geometry.batch == 0 {
        // Nothing to bind (an empty batch has no expert indices); an empty batch adds nothing
        // to any expert's weight gradient.
        return zeros_f32(first, output_shape);
    }
    let output = empty_f32(first, output_shape);
    launch_into(shader, tile, count, inputs, &[&output], &geometry.bytes());
    output
}

/// The forward kernel: the gated output and, when `keep_ungated`, the ungated one (else a
/// one-value stand-in for its binding, which the kernel leaves alone).
fn forward(
    input: CubeTensor,
    weight: CubeTensor,
    gate: CubeTensor,
    experts: CubeTensor,
    stride: usize,
    padding: usize,
    keep_ungated: bool,
) -> (CubeTensor, CubeTensor) {
    let (input, weight, gate, experts, num_experts) = operands(input, weight, gate, experts);
    let mut geometry = Geometry::new(dims4(&input), dims4(&weight), num_experts, stride, padding);
    let shape = Shape::from([
        geometry.batch,
        geometry.c_out,
        geometry.h_out,
        geometry.w_out,
    ]);
    if geometry.batch == 0 {
        return (zeros_f32(&input, shape.clone()), zeros_f32(&input, shape));
    }
    let pixels = geometry.h_out * geometry.w_out;
    let variant = variant_for(&input);
    let tile = Tile::for_product(variant, geometry.c_out, pixels);
    let output = empty_f32(&input, shape.clone());
    // Without `z` the kernel leaves its binding alone: a one-value stand-in fills it (the
    // output itself may not be bound twice: browsers refuse aliased writable bindings).
    let z = if keep_ungated {
        empty_f32(&input, shape)
    } else {
        empty_f32(&input, Shape::from([1]))
    };
    geometry.write_z = usize::from(keep_ungated);
    launch_into(
        Shader::Forward(variant),
        tile,
        grid(
            pixels.div_ceil(tile.tile_n as usize),
            geometry.c_out.div_ceil(tile.tile_m as usize),
            geometry.batch,
        ),
        &[&input, &weight, &experts, &gate],
        &[&output, &z],
        &geometry.bytes(),
    );
    (output, z)
}

impl SparseMoeOps for CubeBackend {
    fn sparse_moe_conv(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        forward(input, weight, gate, experts, stride, padding, false).0
    }

    fn sparse_moe_conv_with_ungated(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        forward(input, weight, gate, experts, stride, padding, true)
    }

    fn sparse_moe_conv_input_grad(
        grad_output: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
        input_size: [usize; 2],
    ) -> FloatTensor<Self> {
        let (grad_output, weight, gate, experts, num_experts) =
            operands(grad_output, weight, gate, experts);
        let [height, width] = input_size;
        let [batch, _, h_out, w_out] = dims4(&grad_output);
        let weight_dims = dims4(&weight);
        let geometry = Geometry::new(
            [batch, weight_dims[1], height, width],
            weight_dims,
            num_experts,
            stride,
            padding,
        );
        assert_eq!(
            [geometry.h_out, geometry.w_out],
            [h_out, w_out],
            "output gradient does not match the convolution geometry"
        );
        let variant = variant_for(&grad_output);
        // One stride × stride phase of the input pixels per workgroup (see the shaders'
        // headers): only the taps that reach an output are visited.
        let pixels = height.div_ceil(stride) * width.div_ceil(stride);
        let phases = stride * stride;
        let tile = Tile::for_product(variant, geometry.c_in, pixels);
        launch(
            Shader::InputGrad(variant),
            tile,
            grid(
                pixels.div_ceil(tile.tile_n as usize),
                geometry.c_in.div_ceil(tile.tile_m as usize),
                batch * phases,
            ),
            &[&grad_output, &weight, &experts, &gate],
            Shape::from([batch, geometry.c_in, height, width]),
            &geometry,
        )
    }

    fn sparse_moe_conv_weight_grad(
        grad_output: FloatTensor<Self>,
        input: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
        kernel: usize,
    ) -> FloatTensor<Self> {
        let (grad_output, input, gate, experts, num_experts) =
            operands(grad_output, input, gate, experts);
        let input_dims = dims4(&input);
        let [_, c_out, ..] = dims4(&grad_output);
        let weight_dims = [num_experts * c_out, input_dims[1], kernel, kernel];
        let mut geometry = Geometry::new(input_dims, weight_dims, num_experts, stride, padding);
        let filter = geometry.c_in * kernel * kernel;
        let variant = variant_for(&input);
        let tile = Tile::for_product(variant, c_out, filter);
        let tiles = filter.div_ceil(tile.tile_n as usize) * c_out.div_ceil(tile.tile_m as usize);
        // Split the batch until the grid has enough workgroups to fill a GPU; each split writes
        // its own partial sum (no float atomics, which WebGPU lacks).
        let wanted = 512usize.div_ceil(tiles * num_experts);
        geometry.splits = wanted.clamp(1, geometry.batch.clamp(1, 64));
        let splits = geometry.splits;
        let partial = launch(
            Shader::WeightGrad(variant),
            tile,
            grid(
                filter.div_ceil(tile.tile_n as usize),
                c_out.div_ceil(tile.tile_m as usize),
                num_experts * splits,
            ),
            &[&grad_output, &input, &experts, &gate],
            Shape::from([splits, num_experts * c_out * filter]),
            &geometry,
        );
        let summed = if splits == 1 {
            partial
        } else {
            CubeBackend::float_sum_dim(partial, 0)
        };
        CubeBackend::float_reshape(summed, Shape::from(weight_dims))
    }

    fn sparse_moe_gate_grad(
        grad_output: FloatTensor<Self>,
        z: FloatTensor<Self>,
        experts: IntTensor<Self>,
        num_experts: usize,
    ) -> FloatTensor<Self> {
        let (grad_output, z, experts) = (
            f32_contiguous(grad_output),
            f32_contiguous(z),
            i32_contiguous(experts),
        );
        let [batch, c_out, h_out, w_out] = dims4(&z);
        let geometry = Geometry {
            batch,
            c_in: 0,
            h_in: 0,
            w_in: 0,
            c_out,
            h_out,
            w_out,
            kernel: 0,
            stride: 1,
            padding: 0,
            num_experts,
            splits: 1,
            write_z: 0,
        };
        launch(
            Shader::GateGrad,
            Tile::CHOICES[0],
            grid(batch, 1, 1),
            &[&grad_output, &z, &experts],
            Shape::from([batch, num_experts]),
            &geometry,
        )
    }

    fn expert_conv(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        // One expert that every sample takes, with a gate of 1; the gradients run the same way.
        let (experts, gate) = one_expert(&input);
        Self::sparse_moe_conv(input, weight, gate, experts, stride, padding)
    }

    fn expert_conv_input_grad(
        grad_output: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        input_size: [usize; 2],
    ) -> FloatTensor<Self> {
        let (experts, gate) = one_expert(&grad_output);
        Self::sparse_moe_conv_input_grad(
            grad_output,
            weight,
            gate,
            experts,
            stride,
            padding,
            input_size,
        )
    }

    fn expert_conv_weight_grad(
        grad_output: FloatTensor<Self>,
        input: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        kernel: usize,
    ) -> FloatTensor<Self> {
        let (experts, gate) = one_expert(&input);
        Self::sparse_moe_conv_weight_grad(
            grad_output,
            input,
            gate,
            experts,
            stride,
            padding,
            kernel,
        )
    }
}

thread_local! {
    /// [`one_expert`]'s operands by device and batch size.
    static ONE_EXPERT: RefCell<Vec<(CubeDevice, usize, CubeTensor, CubeTensor)>> =
        const { RefCell::new(Vec::new()) };
}

/// The operands that make the MoE kernels a plain convolution for a batch of `like`'s size on
/// its device: every sample on expert 0 (i32 zeros `[batch]`) with a gate of 1 (`[batch, 1]`).
/// Kept per thread, device and batch size, since the kernels only read them: creating them at
/// every call launched two fill kernels per plain convolution forward and two backward, about a
/// tenth of an AdvMoE step's launches. At most a few entries (a run uses one or two batch
/// sizes); the oldest go when there are more.
fn one_expert(like: &CubeTensor) -> (CubeTensor, CubeTensor) {
    const KEPT: usize = 8;
    let [batch, ..] = dims4(like);
    ONE_EXPERT.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some((.., experts, gate)) = cache
            .iter()
            .find(|(device, size, ..)| *size == batch && *device == like.device)
        {
            return (experts.clone(), gate.clone());
        }
        let experts = CubeBackend::int_zeros(Shape::from([batch]), &like.device, IntDType::I32);
        let gate = CubeBackend::float_ones(Shape::from([batch, 1]), &like.device, FloatDType::F32);
        if cache.len() == KEPT {
            cache.remove(0);
        }
        cache.push((like.device.clone(), batch, experts.clone(), gate.clone()));
        (experts, gate)
    })
}

/// Mirrors `struct BatchNormParams` in `shaders/moe_conv_common.wgsl`: six 4-byte scalars in
/// declaration order, 24 bytes.
#[derive(Debug, Clone, Copy)]
struct NormShape {
    batch: usize,
    channels: usize,
    pixels: usize,
    relu: bool,
    train: bool,
    epsilon: f64,
}

impl NormShape {
    /// The shape of `x` (`[batch, channels, h, w]`).
    fn of(x: &CubeTensor, relu: bool, train: bool, epsilon: f64) -> Self {
        let [batch, channels, h, w] = dims4(x);
        Self {
            batch,
            channels,
            pixels: h * w,
            relu,
            train,
            epsilon,
        }
    }

    fn elements(&self) -> usize {
        self.batch * self.channels * self.pixels
    }

    fn bytes(&self) -> Vec<u8> {
        let count = |v: usize| u32::try_from(v).expect("batch-norm shape fits in u32");
        [
            count(self.batch),
            count(self.channels),
            count(self.pixels),
            u32::from(self.relu),
            u32::from(self.train),
            (self.epsilon as f32).to_bits(),
        ]
        .into_iter()
        .flat_map(u32::to_le_bytes)
        .collect()
    }

    fn element_grid(&self) -> CubeCount {
        element_grid(self.elements())
    }
}

/// Launch a batch-norm shader over `[inputs.., outputs.., params]`.
fn launch_norm(
    shader: Shader,
    count: CubeCount,
    inputs: &[&CubeTensor],
    outputs: &[&CubeTensor],
    shape: &NormShape,
) {
    launch_into(
        shader,
        Tile::CHOICES[0],
        count,
        inputs,
        outputs,
        &shape.bytes(),
    );
}

impl BatchNormOps for CubeBackend {
    fn fused_batch_norm_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let x = f32_contiguous(x);
        let (table, mean, variance) = Self::batch_norm_table_train(x.clone(), gamma, beta, epsilon);
        (Self::batch_norm_apply(x, table, relu), mean, variance)
    }

    fn fused_batch_norm_eval(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        relu: bool,
    ) -> FloatTensor<Self> {
        let table = Self::batch_norm_table_eval(gamma, beta, mean, variance, epsilon);
        Self::batch_norm_apply(x, table, relu)
    }

    fn batch_norm_table_train(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (x, gamma, beta) = (
            f32_contiguous(x),
            f32_contiguous(gamma),
            f32_contiguous(beta),
        );
        let shape = NormShape::of(&x, false, true, epsilon);
        let channels = Shape::from([shape.channels]);
        let table_shape = Shape::from([4, shape.channels]);
        if shape.elements() == 0 {
            return (
                zeros_f32(&x, table_shape),
                zeros_f32(&x, channels.clone()),
                zeros_f32(&x, channels),
            );
        }
        let table = empty_f32(&x, table_shape);
        let mean = empty_f32(&x, channels.clone());
        let variance = empty_f32(&x, channels);
        launch_norm(
            Shader::BatchNormStats,
            grid(shape.channels, 1, 1),
            &[&x, &gamma, &beta],
            &[&table, &mean, &variance],
            &shape,
        );
        (table, mean, variance)
    }

    fn batch_norm_table_eval(
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let [channels] = gamma.shape().dims::<1>();
        let table_shape = Shape::from([4, channels]);
        if channels == 0 {
            return zeros_f32(&gamma, table_shape);
        }
        let operands = [gamma, beta, mean, variance].map(f32_contiguous);
        let table = empty_f32(&operands[0], table_shape);
        let shape = NormShape {
            batch: 0,
            channels,
            pixels: 0,
            relu: false,
            train: false,
            epsilon,
        };
        let [gamma, beta, mean, variance] = &operands;
        launch_norm(
            Shader::BatchNormTable,
            grid(channels.div_ceil(64), 1, 1),
            &[gamma, beta, mean, variance],
            &[&table],
            &shape,
        );
        table
    }

    fn batch_norm_apply(
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        let (x, table) = (f32_contiguous(x), f32_contiguous(table));
        let shape = NormShape::of(&x, relu, false, 0.0);
        if shape.elements() == 0 {
            return zeros_f32(&x, x.shape());
        }
        let output = empty_f32(&x, x.shape());
        launch_norm(
            Shader::BatchNormApply,
            shape.element_grid(),
            &[&x, &table],
            &[&output],
            &shape,
        );
        output
    }

    fn batch_norm_grad_sums(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        relu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (grad, x, table) = (
            f32_contiguous(grad),
            f32_contiguous(x),
            f32_contiguous(table),
        );
        let shape = NormShape::of(&x, relu, true, 0.0);
        let channels = Shape::from([shape.channels]);
        if shape.elements() == 0 {
            return (zeros_f32(&x, channels.clone()), zeros_f32(&x, channels));
        }
        let grad_gamma = empty_f32(&x, channels.clone());
        let grad_beta = empty_f32(&x, channels);
        launch_norm(
            Shader::BatchNormGradSums,
            grid(shape.channels, 1, 1),
            &[&grad, &x, &table],
            &[&grad_gamma, &grad_beta],
            &shape,
        );
        (grad_gamma, grad_beta)
    }

    fn batch_norm_grad_input(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        grad_gamma: FloatTensor<Self>,
        grad_beta: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        grad_input(grad, x, table, Some((grad_gamma, grad_beta)), relu)
    }

    fn batch_norm_grad_input_eval(
        grad: FloatTensor<Self>,
        x: FloatTensor<Self>,
        table: FloatTensor<Self>,
        relu: bool,
    ) -> FloatTensor<Self> {
        grad_input(grad, x, table, None, relu)
    }

    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let params = UpdateParams {
            count: a.shape().num_elements(),
            ..UpdateParams::default()
        };
        let [out] = launch_update(Shader::AddRelu, vec![a, b], Vec::new(), &params);
        out
    }

    fn relu_grad(grad: FloatTensor<Self>, output: FloatTensor<Self>) -> FloatTensor<Self> {
        let params = UpdateParams {
            count: grad.shape().num_elements(),
            ..UpdateParams::default()
        };
        let [out] = launch_update(Shader::ReluGrad, vec![grad, output], Vec::new(), &params);
        out
    }
}

/// The input's gradient: train mode with the two sums, eval mode without (one-value stand-ins
/// fill their bindings; one buffer may not be bound twice).
fn grad_input(
    grad: CubeTensor,
    x: CubeTensor,
    table: CubeTensor,
    sums: Option<(CubeTensor, CubeTensor)>,
    relu: bool,
) -> CubeTensor {
    let (grad, x, table) = (
        f32_contiguous(grad),
        f32_contiguous(x),
        f32_contiguous(table),
    );
    let shape = NormShape::of(&x, relu, sums.is_some(), 0.0);
    if shape.elements() == 0 {
        return zeros_f32(&x, x.shape());
    }
    let output = empty_f32(&x, x.shape());
    let (grad_gamma, grad_beta) = match sums {
        Some((gamma, beta)) => (f32_contiguous(gamma), f32_contiguous(beta)),
        None => (
            empty_f32(&x, Shape::from([1])),
            empty_f32(&x, Shape::from([1])),
        ),
    };
    launch_norm(
        Shader::BatchNormGradInput,
        shape.element_grid(),
        &[&grad, &x, &table, &grad_gamma, &grad_beta],
        &[&output],
        &shape,
    );
    output
}

/// Mirrors `struct UpdateParams` in `shaders/moe_conv_common.wgsl`: two `u32` and fourteen `f32`
/// in declaration order, 64 bytes. The f64 scalars are rounded to f32 as Burn rounds a scalar
/// operand, so the kernels compute what the tensor operations computed.
#[derive(Debug, Clone, Copy, Default)]
struct UpdateParams {
    count: usize,
    has_state: bool,
    lr: f64,
    momentum: f64,
    keep: f64,
    weight_decay: f64,
    beta1: f64,
    one_minus_beta1: f64,
    beta2: f64,
    one_minus_beta2: f64,
    bias1: f64,
    bias2: f64,
    eps: f64,
    unbiased: f64,
    step_size: f64,
    radius: f64,
}

impl UpdateParams {
    fn bytes(&self) -> Vec<u8> {
        let count = u32::try_from(self.count).expect("a parameter's size fits in u32");
        [count, u32::from(self.has_state)]
            .into_iter()
            .chain(
                [
                    self.lr,
                    self.momentum,
                    self.keep,
                    self.weight_decay,
                    self.beta1,
                    self.one_minus_beta1,
                    self.beta2,
                    self.one_minus_beta2,
                    self.bias1,
                    self.bias2,
                    self.eps,
                    self.unbiased,
                    self.step_size,
                    self.radius,
                ]
                .map(|v| (v as f32).to_bits()),
            )
            .flat_map(u32::to_le_bytes)
            .collect()
    }
}

/// `tensors`, each that shares its memory with an earlier one replaced by a copy (one more
/// launch). Every binding of these kernels is writable, and WebGPU rejects a dispatch that binds
/// one buffer range twice so (native wgpu does not check): the first step of an attack from the
/// clean image passes the image as both the iterate and the ball's center.
fn unaliased(tensors: Vec<CubeTensor>) -> Vec<CubeTensor> {
    let mut out: Vec<CubeTensor> = Vec::with_capacity(tensors.len());
    for tensor in tensors {
        let shared = out.iter().any(|earlier| same_memory(earlier, &tensor));
        out.push(if shared {
            CubeBackend::float_mul_scalar(tensor, Scalar::Float(1.0))
        } else {
            tensor
        });
    }
    out
}

/// Launch an element-wise shader over `inputs`, then `state` (replaced by one-value stand-ins when
/// `params.has_state` is false: one buffer may not be bound twice), then `OUT` new tensors of
/// the first input's shape, which it returns.
fn launch_update<const OUT: usize>(
    shader: Shader,
    inputs: Vec<CubeTensor>,
    state: Vec<CubeTensor>,
    params: &UpdateParams,
) -> [CubeTensor; OUT] {
    let inputs: Vec<CubeTensor> = inputs.into_iter().map(f32_contiguous).collect();
    let first = &inputs[0];
    let shape = first.shape();
    if params.count == 0 {
        return std::array::from_fn(|_| zeros_f32(first, shape.clone()));
    }
    let state = state.into_iter().map(|t| {
        if params.has_state {
            f32_contiguous(t)
        } else {
            empty_f32(first, Shape::from([1]))
        }
    });
    let bound = unaliased(inputs.iter().cloned().chain(state).collect());
    let outputs: [CubeTensor; OUT] = std::array::from_fn(|_| empty_f32(first, shape.clone()));
    launch_into(
        shader,
        Tile::CHOICES[0],
        element_grid(params.count),
        &bound.iter().collect::<Vec<_>>(),
        &outputs.iter().collect::<Vec<_>>(),
        &params.bytes(),
    );
    outputs
}

impl UpdateOps for CubeBackend {
    fn sgd_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        buf: FloatTensor<Self>,
        has_buf: bool,
        lr: f64,
        momentum: f64,
        weight_decay: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let params = UpdateParams {
            count: param.shape().num_elements(),
            has_state: has_buf,
            lr,
            momentum,
            weight_decay,
            ..UpdateParams::default()
        };
        let [param, buf] = launch_update(Shader::SgdStep, vec![param, grad], vec![buf], &params);
        (param, buf)
    }

    fn adam_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        has_state: bool,
        hyper: AdamHyper,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let params = UpdateParams {
            count: param.shape().num_elements(),
            has_state,
            lr: hyper.lr,
            weight_decay: hyper.weight_decay,
            beta1: hyper.beta1,
            one_minus_beta1: 1.0 - hyper.beta1,
            beta2: hyper.beta2,
            one_minus_beta2: 1.0 - hyper.beta2,
            bias1: 1.0 - hyper.beta1.powi(hyper.step),
            bias2: 1.0 - hyper.beta2.powi(hyper.step),
            eps: hyper.eps,
            ..UpdateParams::default()
        };
        let [param, m, v] = launch_update(Shader::AdamStep, vec![param, grad], vec![m, v], &params);
        (param, m, v)
    }

    fn running_stats_step(
        running_mean: FloatTensor<Self>,
        running_var: FloatTensor<Self>,
        batch_mean: FloatTensor<Self>,
        batch_var: FloatTensor<Self>,
        momentum: f64,
        unbiased: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let params = UpdateParams {
            count: running_mean.shape().num_elements(),
            momentum,
            keep: 1.0 - momentum,
            unbiased,
            ..UpdateParams::default()
        };
        let [mean, var] = launch_update(
            Shader::RunningStats,
            vec![running_mean, running_var, batch_mean, batch_var],
            Vec::new(),
            &params,
        );
        (mean, var)
    }

    fn linf_step(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        center: FloatTensor<Self>,
        step_size: f64,
        radius: f64,
    ) -> FloatTensor<Self> {
        let params = UpdateParams {
            count: x.shape().num_elements(),
            step_size,
            radius,
            ..UpdateParams::default()
        };
        let [out] = launch_update(Shader::LinfStep, vec![x, grad, center], Vec::new(), &params);
        out
    }
}
