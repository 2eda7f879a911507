// Shared by every MoE conv shader: the launcher prepends this file to each of them
// (crates/advmoe-kernels/src/shaders.rs, `render`), so the geometry struct and the tile shape
// are written once.

// The convolution's geometry: twelve u32 in this order, 48 bytes with no padding, mirrored by
// `Geometry` in crates/advmoe-kernels/src/cube.rs (WGSL storage layout of a struct of scalars).
struct MoeConvParams {
    batch: u32,
    c_in: u32,
    h_in: u32,
    w_in: u32,
    c_out: u32,
    h_out: u32,
    w_out: u32,
    kernel: u32,
    stride: u32,
    padding: u32,
    num_experts: u32,
    splits: u32,
}

// Tile shape of the matrix-product shaders: the launcher rewrites these two lines. Each thread
// computes 4 x 4 outputs; the direct variants ignore TILE_K.
const TILE_M: u32 = 64u;
const TILE_N: u32 = 64u;

const TILE_K: u32 = 16u;
const THREADS_M: u32 = TILE_M / 4u;
const THREADS_N: u32 = TILE_N / 4u;
const THREADS: u32 = THREADS_M * THREADS_N;
