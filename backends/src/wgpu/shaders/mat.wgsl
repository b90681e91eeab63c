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

// A tile of x: the x values of `LANES` consecutive chunks, staged in workgroup memory by the
// whole workgroup (`stage_x`), so the matvec and expert kernels read them from there instead
// of from the x binding, where each lane's `VALS / 4` loads of one chunk lie 16 bytes apart
// from the next lane's (strided: 8 loads of 32 distinct lines per slice for q4). Chunk `c`'s
// vec4 `k` lies at `c * XV + (k ^ (c % XV))`: the xor spreads the lanes of one load over every
// bank. 256 vec4 (4 KiB) hold q4's 32 chunks of 8; the other formats use less.
const XV: u32 = VALS / 4u;
var<workgroup> xt: array<vec4<f32>, 256>;

// Stages chunks `t0..t0 + LANES` (at most `row_chunks`) of the x row starting at vec4 `x0`,
// each invocation copying every 256th vec4 (coalesced). Barriers before (the last tile's
// readers) and after: call from uniform control flow, every invocation of the workgroup.
fn stage_x(li: u32, x0: u32, t0: u32, row_chunks: u32) {
    workgroupBarrier();
    let n = min(LANES, row_chunks - t0) * XV;
    for (var i = li; i < n; i += LANES * SLICES) {
        let c = i / XV;
        xt[c * XV + ((i % XV) ^ (c % XV))] = x[x0 + t0 * XV + i];
    }
    workgroupBarrier();
}

// Vec4 `k` of tile chunk `c`.
fn xr(c: u32, k: u32) -> vec4<f32> {
    return xt[c * XV + (k ^ (c % XV))];
}

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
