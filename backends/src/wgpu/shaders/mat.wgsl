// One matrix as the format code sees it (shared by the matvec, experts and embed kernels).
struct Mat {
    data: u32,       // vec4 index of the codes or floats
    scales: u32,     // f16 index of the scales
    biases: u32,     // f16 index of the biases
    cols: u32,
    group: u32,      // quantization group (values)
    x: u32,          // vec4 index of x[0] in the x binding
    row_chunks: u32, // 16-byte chunks per row
    gpr: u32,        // groups per row
    gshift: u32,     // log2(chunks per group)
}

@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
// The weight buffer again, as u32s: scales and biases (quantized formats only).
@group(0) @binding(5) var<storage, read> ws: array<u32>;

// Matrix `r` = (data, scales, biases, _) of `cols` columns; x starts at vec4 `x_off`.
fn mat(r: vec4<u32>, cols: u32, group: u32, gshift: u32, x_off: u32) -> Mat {
    let g = max(group, 1u);
    return Mat(r.x, r.y, r.z, cols, g, x_off, cols / VALS, cols / g, gshift);
}

const LANES: u32 = 32u;
const SLICES: u32 = 8u;
const STRIDE: u32 = 257u; // 256 + 1: the rows of `red` fall in different banks

// Partial sums: `red[r * STRIDE + li]` is invocation li's part of its slice's row r.
var<workgroup> red: array<f32, 2056>; // 8 * STRIDE

// Sums each slice's 32 lanes of rows 0..rows of `red` (a tree: every lane adds, 5 steps);
// afterwards lane 0 of a slice holds the totals. Call from uniform control flow.
fn reduce_slices(li: u32, rows: u32) {
    let lane = li % LANES;
    workgroupBarrier();
    for (var s = LANES / 2u; s > 0u; s >>= 1u) {
        if (lane < s) {
            for (var r = 0u; r < rows; r++) {
                red[r * STRIDE + li] += red[r * STRIDE + li + s];
            }
        }
        workgroupBarrier();
    }
}
