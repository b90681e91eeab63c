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
