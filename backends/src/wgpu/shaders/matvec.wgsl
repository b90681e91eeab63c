// Matrix-vector products over packed weights (the format block is appended by the host).
//
// A workgroup of 256 invocations computes 8 rows; the 32 invocations of a row each take every
// 32nd 16-byte chunk of it, so a row is read as contiguous 512-byte spans. Partial sums meet in
// workgroup memory: no subgroup operations, so this runs on any adapter whatever its subgroup
// size (8 on lavapipe, 32 on Apple and NVIDIA).

struct Params {
    rows: u32,
    cols: u32,
    group: u32,
    experts: u32,
    data: u32,   // vec4 index of the matrix data
    scales: u32, // f16 index of the scales
    biases: u32, // f16 index of the biases
    x_off: u32,  // vec4 index into x
    y_off: u32,  // f32 index into y
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// One matrix as the format code sees it.
struct Mat {
    data: u32,
    scales: u32,
    biases: u32,
    cols: u32,
    group: u32,
    x: u32,
}

@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

const LANES: u32 = 32u;
const ROWS_PER_GROUP: u32 = 8u;

var<workgroup> red: array<f32, 256>;

// The sum of `red` over the 32 lanes of the row that invocation `i` belongs to.
fn row_sum(i: u32) -> f32 {
    var s = 0.0;
    let base = i & ~(LANES - 1u);
    for (var j = 0u; j < LANES; j++) {
        s += red[base + j];
    }
    return s;
}

fn row_dot(m: Mat, row: u32, lane: u32) -> f32 {
    var acc = 0.0;
    let chunks = m.cols / VALS;
    for (var c = lane; c < chunks; c += LANES) {
        acc += chunk_dot(m, row, c);
    }
    return acc;
}

// y[y_off + row] = W[row] . x[x_off..]
@compute @workgroup_size(256)
fn matvec(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let lane = li % LANES;
    let row = (wg.x + wg.y * nwg.x) * ROWS_PER_GROUP + li / LANES;
    let m = Mat(p.data, p.scales, p.biases, p.cols, p.group, p.x_off);
    var acc = 0.0;
    if (row < p.rows) {
        acc = row_dot(m, row, lane);
    }
    red[li] = acc;
    workgroupBarrier();
    if (lane == 0u && row < p.rows) {
        y[p.y_off + row] = row_sum(li);
    }
}
