//! The MoE convolution on Burn's CPU backend (`flex`): the backend extension's operations as
//! im2col and matrix products, each image through its own expert only, the images spread over
//! the cores. Burn's own CPU conv2d builds an im2col per tile of 512 output pixels and calls a
//! matrix product per tile; at this project's channel counts (8–128) that costs several times
//! the arithmetic. Here each image's patch matrix (`[c_in·k·k, pixels]`, whole rows or whole
//! shifted planes copied from the NCHW input) is built once and multiplied by its expert's
//! filters in one call of the `gemm` crate (the one Burn's CPU backend links), so the output
//! lands in NCHW with no reordering. The backward reuses the same pieces: the input gradient is
//! the filters' transpose times the output gradient, added back onto the planes (col2im); the
//! weight gradient is the output gradient times the patch matrix's transpose, summed over the
//! images in a fixed order (so the same batch gives the same bits however many threads run it).
//! Taking several small images into one product instead (to pack the filters once for the deep
//! layers' 4×4 and 8×8 images) measured no faster and was dropped.
//!
//! The functions on slices are public for the tests; [`SparseMoeOps`] for [`Flex`] wraps them.

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Flex, TensorMetadata};
use burn::tensor::{DType, TensorData};

use crate::ops::SparseMoeOps;

/// The shape of one (MoE) convolution with square kernels and equal padding on every side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Images.
    pub batch: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h_in: usize,
    /// Input width.
    pub w_in: usize,
    /// Output channels of one expert.
    pub c_out: usize,
    /// Kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on each side.
    pub padding: usize,
    /// Experts (weight rows over `c_out`).
    pub num_experts: usize,
    /// Output height.
    pub h_out: usize,
    /// Output width.
    pub w_out: usize,
}

impl Geometry {
    /// The geometry from the input and weight shapes.
    ///
    /// # Panics
    /// Weight rows that do not split into `num_experts`, channels that disagree, a kernel that is
    /// not square or larger than the padded input, or a zero stride.
    pub fn new(
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
        assert!(stride > 0, "stride 0");
        assert!(
            kernel <= h_in + 2 * padding && kernel <= w_in + 2 * padding,
            "kernel {kernel} larger than the padded input {h_in}×{w_in} (padding {padding})"
        );
        Self {
            batch,
            c_in,
            h_in,
            w_in,
            c_out: rows / num_experts,
            kernel,
            stride,
            padding,
            num_experts,
            h_out: (h_in + 2 * padding - kernel) / stride + 1,
            w_out: (w_in + 2 * padding - kernel) / stride + 1,
        }
    }

    /// Output pixels of one channel.
    fn pixels(&self) -> usize {
        self.h_out * self.w_out
    }

    /// Rows of the patch matrix: `c_in · k · k`.
    fn patch(&self) -> usize {
        self.c_in * self.kernel * self.kernel
    }

    /// Values of one input image.
    fn input_len(&self) -> usize {
        self.c_in * self.h_in * self.w_in
    }

    /// Values of one output image.
    fn output_len(&self) -> usize {
        self.c_out * self.pixels()
    }

    /// Values of one expert's filters.
    fn expert_len(&self) -> usize {
        self.c_out * self.patch()
    }

    /// Stride 1 and an output the size of the input (`kernel = 2 · padding + 1`): every
    /// patch-matrix row is the input plane shifted.
    fn same_size(&self) -> bool {
        self.stride == 1 && self.h_out == self.h_in && self.w_out == self.w_in
    }

    /// A 1×1 convolution with stride 1: the input image is its own patch matrix.
    fn pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.padding == 0
    }

    /// The range of output columns `ow` whose input column `ow · stride + kw − padding` lies
    /// inside the image, as `start..end` (empty when none does).
    fn valid_columns(&self, kw: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        // ow·s + kw ≥ p  ⇔  ow ≥ ceil((p − kw) / s)
        let start = p.saturating_sub(kw).div_ceil(s).min(self.w_out);
        // ow·s + kw − p < w_in  ⇔  ow·s < w_in + p − kw
        let end = (self.w_in + p)
            .checked_sub(kw)
            .map_or(0, |limit| limit.div_ceil(s))
            .min(self.w_out)
            .max(start);
        (start, end)
    }

    /// The input row of output row `oh` at kernel row `kh`, if inside the image.
    fn input_row(&self, oh: usize, kh: usize) -> Option<usize> {
        (oh * self.stride + kh)
            .checked_sub(self.padding)
            .filter(|&ih| ih < self.h_in)
    }
}

/// Fill `col` (`[c_in·k·k, h_out·w_out]`, row `(ci, kh, kw)`) with the patches of one image
/// `x` (`[c_in, h_in, w_in]`); outside the image the patches read zero.
fn im2col(x: &[f32], g: &Geometry, col: &mut [f32]) {
    let (pixels, k, s) = (g.pixels(), g.kernel, g.stride);
    let plane = g.h_in * g.w_in;
    for ci in 0..g.c_in {
        let x_c = &x[ci * plane..][..plane];
        for kh in 0..k {
            for kw in 0..k {
                let row = &mut col[((ci * k + kh) * k + kw) * pixels..][..pixels];
                if g.same_size() {
                    shifted_plane(x_c, g, kh, kw, row);
                    continue;
                }
                let (start, end) = g.valid_columns(kw);
                for oh in 0..g.h_out {
                    let out = &mut row[oh * g.w_out..][..g.w_out];
                    let Some(ih) = g.input_row(oh, kh) else {
                        out.fill(0.0);
                        continue;
                    };
                    let src = &x_c[ih * g.w_in..][..g.w_in];
                    out[..start].fill(0.0);
                    out[end..].fill(0.0);
                    let first = start * s + kw - g.padding;
                    for (o, &v) in out[start..end]
                        .iter_mut()
                        .zip(src[first..].iter().step_by(s))
                    {
                        *o = v;
                    }
                }
            }
        }
    }
}

/// Where patch-matrix row `(kh, kw)` of a [`Geometry::same_size`] convolution meets the plane:
/// the output rows `top..bottom` read inside the image, and within them `row[i]` is
/// `plane[i + shift]` for `i` in `lo..hi`. The other values of those rows lie in columns whose
/// input column is outside the image (the shift wraps them onto the neighbouring row).
struct Window {
    top: usize,
    bottom: usize,
    lo: usize,
    hi: usize,
    shift: isize,
}

impl Window {
    fn new(g: &Geometry, kh: usize, kw: usize) -> Self {
        let (w, plane) = (g.w_in, g.h_in * g.w_in);
        let top = g.padding.saturating_sub(kh).min(g.h_in);
        let bottom = (g.h_in + g.padding).saturating_sub(kh).min(g.h_in).max(top);
        let shift = (kh * w + kw) as isize - (g.padding * w + g.padding) as isize;
        let lo = (top * w)
            .max(usize::try_from(-shift).unwrap_or(0))
            .min(bottom * w);
        let hi = (bottom * w)
            .min(usize::try_from(plane as isize - shift).unwrap_or(0))
            .max(lo);
        Self {
            top,
            bottom,
            lo,
            hi,
            shift,
        }
    }

    /// The plane's values `row[lo..hi]` map to (`None` when none does).
    fn source(&self) -> Option<std::ops::Range<usize>> {
        let from = self.lo.wrapping_add_signed(self.shift);
        (self.lo < self.hi).then(|| from..from + (self.hi - self.lo))
    }

    /// Zero, in the valid rows of `row`, the columns whose input column is outside the image.
    fn clear_wrapped_columns(&self, g: &Geometry, kw: usize, row: &mut [f32]) {
        let (start, end) = g.valid_columns(kw);
        if start > 0 || end < g.w_in {
            for r in row[self.top * g.w_in..self.bottom * g.w_in].chunks_exact_mut(g.w_in) {
                r[..start].fill(0.0);
                r[end..].fill(0.0);
            }
        }
    }
}

/// One patch-matrix row of a [`Geometry::same_size`] convolution: the plane `x_c` shifted by
/// `(kh − padding, kw − padding)`, zero outside it. Copied as one block, then the few columns
/// that wrapped around a row's edge are zeroed, where a row-by-row copy would make calls per
/// output row.
fn shifted_plane(x_c: &[f32], g: &Geometry, kh: usize, kw: usize, row: &mut [f32]) {
    let w = g.w_in;
    let window = Window::new(g, kh, kw);
    let Window {
        top,
        bottom,
        lo,
        hi,
        ..
    } = window;
    row[..top * w].fill(0.0);
    row[bottom * w..].fill(0.0);
    row[top * w..lo.min(bottom * w)].fill(0.0);
    row[hi..bottom * w].fill(0.0);
    if let Some(source) = window.source() {
        row[lo..hi].copy_from_slice(&x_c[source]);
    }
    window.clear_wrapped_columns(g, kw, row);
}

/// Add the patch-matrix gradient `col` (laid out as [`im2col`] writes it) back onto the image
/// gradient `dx` (`[c_in, h_in, w_in]`): the transpose of [`im2col`]. `col` is scratch: a
/// [`Geometry::same_size`] convolution zeroes the values that fall outside the image, so that
/// each row adds onto the plane as one shifted block.
fn col2im(col: &mut [f32], g: &Geometry, dx: &mut [f32]) {
    let (pixels, k, s) = (g.pixels(), g.kernel, g.stride);
    let plane = g.h_in * g.w_in;
    for ci in 0..g.c_in {
        let dx_c = &mut dx[ci * plane..][..plane];
        for kh in 0..k {
            for kw in 0..k {
                let row = &mut col[((ci * k + kh) * k + kw) * pixels..][..pixels];
                if g.same_size() {
                    let window = Window::new(g, kh, kw);
                    window.clear_wrapped_columns(g, kw, row);
                    if let Some(source) = window.source() {
                        for (d, &v) in dx_c[source].iter_mut().zip(&row[window.lo..window.hi]) {
                            *d += v;
                        }
                    }
                    continue;
                }
                let (start, end) = g.valid_columns(kw);
                if start == end {
                    continue;
                }
                for oh in 0..g.h_out {
                    let Some(ih) = g.input_row(oh, kh) else {
                        continue;
                    };
                    let grad = &row[oh * g.w_out..][start..end];
                    let dst = &mut dx_c[ih * g.w_in..][..g.w_in];
                    let first = start * s + kw - g.padding;
                    for (d, &v) in dst[first..].iter_mut().step_by(s).zip(grad) {
                        *d += v;
                    }
                }
            }
        }
    }
}

/// A read-only matrix: element `(i, j)` at `data[i · row + j · col]`.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    row: usize,
    col: usize,
}

impl View<'_> {
    /// Panics unless every element of a `rows × cols` matrix lies inside `data`.
    fn check(&self, rows: usize, cols: usize) {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * self.row + (cols - 1) * self.col;
            assert!(
                last < self.data.len(),
                "matrix {rows}×{cols} (strides {}, {}) outside its {} values",
                self.row,
                self.col,
                self.data.len()
            );
        }
    }
}

/// `dst = scale · a · b` (or `dst += scale · a · b` with `accumulate`), `dst` an `m × n`
/// row-major matrix, `a` `m × k`, `b` `k × n`; single-threaded (callers spread images over the
/// cores).
#[expect(
    unsafe_code,
    reason = "gemm's entry point takes raw pointers and strides; the bounds are checked here"
)]
#[expect(
    clippy::too_many_arguments,
    reason = "a strided matrix product's whole description"
)]
fn matmul(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    a: View<'_>,
    b: View<'_>,
    accumulate: bool,
    scale: f32,
) {
    assert!(dst.len() >= m * n, "destination too small for {m}×{n}");
    a.check(m, k);
    b.check(k, n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: `check` keeps every element gemm reads of `a` and `b` inside their slices, and the
    // assertion above every element it writes of `dst` (row stride n, column stride 1) inside
    // `dst`; `dst` is borrowed mutably, so it aliases neither operand. Strides fit in isize
    // because they index slices that exist.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col as isize,
            a.row as isize,
            b.data.as_ptr(),
            b.col as isize,
            b.row as isize,
            1.0,
            scale,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// Call `f(scratch, image, out_image)` for every image's chunk of `out`, spread over the cores
/// natively (each thread with its own scratch of `scratch` values).
fn each_image<F>(out: &mut [f32], chunk: usize, scratch: usize, f: F)
where
    F: Fn(&mut [f32], usize, &mut [f32]) + Send + Sync,
{
    if chunk == 0 {
        return;
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk).enumerate().for_each_init(
            || vec![0.0f32; scratch],
            |buffer, (b, out_b)| f(buffer, b, out_b),
        );
    }
    #[cfg(target_arch = "wasm32")]
    {
        let mut buffer = vec![0.0f32; scratch];
        for (b, out_b) in out.chunks_mut(chunk).enumerate() {
            f(&mut buffer, b, out_b);
        }
    }
}

impl Geometry {
    /// The expert of image `b`, if in range.
    fn expert_of(&self, experts: &[usize], b: usize) -> Option<usize> {
        experts.get(b).copied().filter(|&e| e < self.num_experts)
    }

    /// Image `b`'s gate value (1 without gates).
    fn scale_of(scales: Option<&[f32]>, b: usize) -> f32 {
        scales.map_or(1.0, |s| s[b])
    }

    /// The filters of `expert`, `[c_out, c_in·k·k]`.
    fn filters<'a>(&self, weight: &'a [f32], expert: usize) -> &'a [f32] {
        &weight[expert * self.expert_len()..][..self.expert_len()]
    }

    /// Values of one image's patch matrix (none for a pointwise convolution).
    fn scratch_len(&self) -> usize {
        if self.pointwise() {
            0
        } else {
            self.patch() * self.pixels()
        }
    }

    /// Image `b`'s patch matrix, `[c_in·k·k, pixels]`: the image itself for a pointwise
    /// convolution, else built in `col`.
    fn patches<'a>(&self, x: &'a [f32], b: usize, col: &'a mut [f32]) -> &'a [f32] {
        let x_b = &x[b * self.input_len()..][..self.input_len()];
        if self.pointwise() {
            x_b
        } else {
            im2col(x_b, self, col);
            col
        }
    }
}

/// `scales[b] · conv(x[b], expert experts[b])` for every image (`scales` `None`: 1):
/// `[batch, c_out, h_out, w_out]`. An image whose expert is out of range gets NaN (as the WGSL
/// kernels give).
///
/// # Panics
/// Slices shorter than the geometry says.
pub fn forward(
    x: &[f32],
    weight: &[f32],
    experts: &[usize],
    scales: Option<&[f32]>,
    g: &Geometry,
) -> Vec<f32> {
    assert!(x.len() >= g.batch * g.input_len() && weight.len() >= g.num_experts * g.expert_len());
    assert!(scales.is_none_or(|s| s.len() >= g.batch));
    let (patch, pixels) = (g.patch(), g.pixels());
    let mut out = vec![0.0f32; g.batch * g.output_len()];
    each_image(
        &mut out,
        g.output_len(),
        g.scratch_len(),
        |col, b, out_b| {
            let Some(e) = g.expert_of(experts, b) else {
                out_b.fill(f32::NAN);
                return;
            };
            let filters = View {
                data: g.filters(weight, e),
                row: patch,
                col: 1,
            };
            let patches = View {
                data: g.patches(x, b, col),
                row: pixels,
                col: 1,
            };
            let scale = Geometry::scale_of(scales, b);
            matmul(
                out_b, g.c_out, pixels, patch, filters, patches, false, scale,
            );
        },
    );
    out
}

/// The gradient of [`forward`] (with the same `scales`) with respect to its input,
/// `[batch, c_in, h_in, w_in]` (zero for an image whose expert is out of range).
///
/// # Panics
/// Slices shorter than the geometry says.
pub fn input_grad(
    grad: &[f32],
    weight: &[f32],
    experts: &[usize],
    scales: Option<&[f32]>,
    g: &Geometry,
) -> Vec<f32> {
    assert!(
        grad.len() >= g.batch * g.output_len() && weight.len() >= g.num_experts * g.expert_len()
    );
    assert!(scales.is_none_or(|s| s.len() >= g.batch));
    let (patch, pixels) = (g.patch(), g.pixels());
    let mut dx = vec![0.0f32; g.batch * g.input_len()];
    each_image(&mut dx, g.input_len(), g.scratch_len(), |dcol, b, dx_b| {
        let Some(e) = g.expert_of(experts, b) else {
            return;
        };
        // The filters' transpose, `[c_in·k·k, c_out]`.
        let filters_t = View {
            data: g.filters(weight, e),
            row: 1,
            col: patch,
        };
        let dy = View {
            data: &grad[b * g.output_len()..][..g.output_len()],
            row: pixels,
            col: 1,
        };
        let scale = Geometry::scale_of(scales, b);
        if g.pointwise() {
            matmul(dx_b, patch, pixels, g.c_out, filters_t, dy, false, scale);
        } else {
            matmul(dcol, patch, pixels, g.c_out, filters_t, dy, false, scale);
            col2im(dcol, g, dx_b);
        }
    });
    dx
}

/// Images whose weight-gradient shares are summed together (in image order) before the groups'
/// sums are added in group order: the result does not depend on the number of threads.
const WEIGHT_GRAD_GROUP: usize = 8;

/// The gradient of [`forward`] (with the same `scales`) with respect to the weight,
/// `[num_experts · c_out, c_in, k, k]`: each image adds into its own expert's filters.
///
/// # Panics
/// Slices shorter than the geometry says.
pub fn weight_grad(
    grad: &[f32],
    x: &[f32],
    experts: &[usize],
    scales: Option<&[f32]>,
    g: &Geometry,
) -> Vec<f32> {
    assert!(grad.len() >= g.batch * g.output_len() && x.len() >= g.batch * g.input_len());
    assert!(scales.is_none_or(|s| s.len() >= g.batch));
    let (patch, pixels) = (g.patch(), g.pixels());
    let total = g.num_experts * g.expert_len();
    let group = |images: std::ops::Range<usize>| {
        let mut sum = vec![0.0f32; total];
        let mut col = vec![0.0f32; g.scratch_len()];
        for b in images {
            let Some(e) = g.expert_of(experts, b) else {
                continue;
            };
            let dy = View {
                data: &grad[b * g.output_len()..][..g.output_len()],
                row: pixels,
                col: 1,
            };
            // The patch matrix's transpose, `[pixels, c_in·k·k]`.
            let patches_t = View {
                data: g.patches(x, b, &mut col),
                row: 1,
                col: pixels,
            };
            let dst = &mut sum[e * g.expert_len()..][..g.expert_len()];
            let scale = Geometry::scale_of(scales, b);
            matmul(dst, g.c_out, patch, pixels, dy, patches_t, true, scale);
        }
        sum
    };
    let ranges: Vec<_> = (0..g.batch)
        .step_by(WEIGHT_GRAD_GROUP)
        .map(|start| start..(start + WEIGHT_GRAD_GROUP).min(g.batch))
        .collect();
    #[cfg(not(target_arch = "wasm32"))]
    let sums: Vec<Vec<f32>> = {
        use rayon::prelude::*;
        ranges.into_par_iter().map(group).collect()
    };
    #[cfg(target_arch = "wasm32")]
    let sums: Vec<Vec<f32>> = ranges.into_iter().map(group).collect();
    let mut sums = sums.into_iter();
    let mut total_sum = sums.next().unwrap_or_else(|| vec![0.0; total]);
    for sum in sums {
        for (t, s) in total_sum.iter_mut().zip(&sum) {
            *t += s;
        }
    }
    total_sum
}

/// The straight-through gate gradient `[batch, num_experts]`: `Σ grad[b] · z[b]` at each image's
/// expert, zero elsewhere (`z` the ungated output, `[batch, per_image]` flattened).
pub fn gate_grad(
    grad: &[f32],
    z: &[f32],
    experts: &[usize],
    batch: usize,
    num_experts: usize,
) -> Vec<f32> {
    let mut out = vec![0.0f32; batch * num_experts];
    if batch == 0 {
        return out;
    }
    let per_image = grad.len() / batch;
    for b in 0..batch {
        if let Some(&e) = experts.get(b).filter(|&&e| e < num_experts) {
            let range = b * per_image..(b + 1) * per_image;
            out[b * num_experts + e] = grad[range.clone()]
                .iter()
                .zip(&z[range])
                .map(|(g, v)| g * v)
                .sum();
        }
    }
    out
}

/// The tensor made contiguous (copied only when it was not), checked to hold f32.
fn f32_contiguous(tensor: FlexTensor) -> FlexTensor {
    assert_eq!(
        tensor.dtype(),
        DType::F32,
        "the CPU MoE conv computes in f32"
    );
    tensor.to_contiguous()
}

/// The values of a tensor made by [`f32_contiguous`].
fn values(tensor: &FlexTensor) -> &[f32] {
    tensor
        .as_slice::<f32>()
        .expect("an f32 tensor made contiguous")
}

fn dims4(tensor: &FlexTensor) -> [usize; 4] {
    tensor.shape().dims::<4>()
}

/// Expert indices on the host (a negative index becomes out of range).
fn host_experts(experts: FlexTensor) -> Vec<usize> {
    experts
        .into_data()
        .iter::<i64>()
        .map(|e| usize::try_from(e).unwrap_or(usize::MAX))
        .collect()
}

fn tensor(values: Vec<f32>, shape: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// Each image's gate at its own expert, `gate[b, experts[b]]` (NaN for an expert out of range,
/// whose output is NaN anyway), from a `[batch, num_experts]` gate.
fn gate_scales(gate: FlexTensor, experts: &[usize]) -> Vec<f32> {
    let gate = f32_contiguous(gate);
    let [_, num_experts] = gate.shape().dims::<2>();
    let values = values(&gate);
    experts
        .iter()
        .enumerate()
        .map(|(b, &e)| {
            if e < num_experts {
                values[b * num_experts + e]
            } else {
                f32::NAN
            }
        })
        .collect()
}

/// A forward's operands on the host: the input and weights made contiguous, the geometry, each
/// sample's expert and its gate value.
struct ForwardInputs {
    input: FlexTensor,
    weight: FlexTensor,
    g: Geometry,
    experts: Vec<usize>,
    scales: Vec<f32>,
}

impl ForwardInputs {
    fn new(
        input: FlexTensor,
        weight: FlexTensor,
        gate: FlexTensor,
        experts: FlexTensor,
        stride: usize,
        padding: usize,
    ) -> Self {
        let (input, weight) = (f32_contiguous(input), f32_contiguous(weight));
        let [_, num_experts] = gate.shape().dims::<2>();
        let g = Geometry::new(dims4(&input), dims4(&weight), num_experts, stride, padding);
        let experts = host_experts(experts);
        let scales = gate_scales(gate, &experts);
        Self {
            input,
            weight,
            g,
            experts,
            scales,
        }
    }

    fn output_shape(&self) -> [usize; 4] {
        [self.g.batch, self.g.c_out, self.g.h_out, self.g.w_out]
    }
}

impl SparseMoeOps for Flex {
    fn sparse_moe_conv(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        let f = ForwardInputs::new(input, weight, gate, experts, stride, padding);
        let out = forward(
            values(&f.input),
            values(&f.weight),
            &f.experts,
            Some(&f.scales),
            &f.g,
        );
        tensor(out, f.output_shape())
    }

    fn sparse_moe_conv_with_ungated(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        experts: IntTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let f = ForwardInputs::new(input, weight, gate, experts, stride, padding);
        let z = forward(values(&f.input), values(&f.weight), &f.experts, None, &f.g);
        let mut out = z.clone();
        if f.g.output_len() > 0 {
            for (out_b, scale) in out.chunks_mut(f.g.output_len()).zip(&f.scales) {
                out_b.iter_mut().for_each(|v| *v *= scale);
            }
        }
        (tensor(out, f.output_shape()), tensor(z, f.output_shape()))
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
        let [_, num_experts] = gate.shape().dims::<2>();
        let experts = host_experts(experts);
        let scales = gate_scales(gate, &experts);
        let routed = Routed {
            experts: &experts,
            scales: Some(&scales),
            num_experts,
        };
        grad_of_input(grad_output, weight, routed, stride, padding, input_size)
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
        let [_, num_experts] = gate.shape().dims::<2>();
        let experts = host_experts(experts);
        let scales = gate_scales(gate, &experts);
        let routed = Routed {
            experts: &experts,
            scales: Some(&scales),
            num_experts,
        };
        grad_of_weight(grad_output, input, routed, stride, padding, kernel)
    }

    fn sparse_moe_gate_grad(
        grad_output: FloatTensor<Self>,
        z: FloatTensor<Self>,
        experts: IntTensor<Self>,
        num_experts: usize,
    ) -> FloatTensor<Self> {
        let (grad_output, z) = (f32_contiguous(grad_output), f32_contiguous(z));
        let [batch, ..] = dims4(&z);
        let out = gate_grad(
            values(&grad_output),
            values(&z),
            &host_experts(experts),
            batch,
            num_experts,
        );
        FlexTensor::from_data(TensorData::new(out, [batch, num_experts]))
    }

    fn expert_conv(
        input: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        let (input, weight) = (f32_contiguous(input), f32_contiguous(weight));
        let g = Geometry::new(dims4(&input), dims4(&weight), 1, stride, padding);
        let out = forward(values(&input), values(&weight), &vec![0; g.batch], None, &g);
        tensor(out, [g.batch, g.c_out, g.h_out, g.w_out])
    }

    fn expert_conv_input_grad(
        grad_output: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        input_size: [usize; 2],
    ) -> FloatTensor<Self> {
        let [batch, ..] = dims4(&grad_output);
        let routed = Routed {
            experts: &vec![0; batch],
            scales: None,
            num_experts: 1,
        };
        grad_of_input(grad_output, weight, routed, stride, padding, input_size)
    }

    fn expert_conv_weight_grad(
        grad_output: FloatTensor<Self>,
        input: FloatTensor<Self>,
        stride: usize,
        padding: usize,
        kernel: usize,
    ) -> FloatTensor<Self> {
        let [batch, ..] = dims4(&input);
        let routed = Routed {
            experts: &vec![0; batch],
            scales: None,
            num_experts: 1,
        };
        grad_of_weight(grad_output, input, routed, stride, padding, kernel)
    }
}

/// Each image's expert, its gate's value there (none: 1) and the number of experts.
struct Routed<'a> {
    experts: &'a [usize],
    scales: Option<&'a [f32]>,
    num_experts: usize,
}

/// The gated convolution's gradient with respect to its input, `[batch, c_in, height, width]`.
fn grad_of_input(
    grad_output: FlexTensor,
    weight: FlexTensor,
    routed: Routed<'_>,
    stride: usize,
    padding: usize,
    [height, width]: [usize; 2],
) -> FlexTensor {
    let (grad_output, weight) = (f32_contiguous(grad_output), f32_contiguous(weight));
    let [batch, ..] = dims4(&grad_output);
    let [_, c_in, ..] = dims4(&weight);
    let input = [batch, c_in, height, width];
    let g = Geometry::new(input, dims4(&weight), routed.num_experts, stride, padding);
    let dx = input_grad(
        values(&grad_output),
        values(&weight),
        routed.experts,
        routed.scales,
        &g,
    );
    tensor(dx, input)
}

/// The gated convolution's gradient with respect to its weight,
/// `[num_experts * c_out, c_in, kernel, kernel]`.
fn grad_of_weight(
    grad_output: FlexTensor,
    input: FlexTensor,
    routed: Routed<'_>,
    stride: usize,
    padding: usize,
    kernel: usize,
) -> FlexTensor {
    let (grad_output, input) = (f32_contiguous(grad_output), f32_contiguous(input));
    let [_, c_out, ..] = dims4(&grad_output);
    let [_, c_in, ..] = dims4(&input);
    let shape = [routed.num_experts * c_out, c_in, kernel, kernel];
    let g = Geometry::new(dims4(&input), shape, routed.num_experts, stride, padding);
    let dw = weight_grad(
        values(&grad_output),
        values(&input),
        routed.experts,
        routed.scales,
        &g,
    );
    tensor(dw, shape)
}
