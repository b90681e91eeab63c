// The routed experts of one layer in two dispatches (the format block is appended by the host).
//
// gate_up:      h[e * inter + r] = silu(gate_e[r] . x) * (up_e[r] . x)   (workgroup row y = e)
// down_combine: y[r] = sum_e weight_e * (down_e[r] . h[e * inter ..])
//
// Every expert's matrices lie in one buffer of expert slots; `table` says where.

struct Params {
    rows: u32,    // inter for gate_up, hidden for down_combine
    cols: u32,    // hidden for gate_up, inter for down_combine
    group: u32,
    experts: u32,
    _pad: vec4<u32>,
    _pad2: vec4<u32>,
}

struct Mat {
    data: u32,
    scales: u32,
    biases: u32,
    cols: u32,
    group: u32,
    x: u32,
}

struct ExpertDesc {
    gate: vec4<u32>,
    up: vec4<u32>,
    down: vec4<u32>,
    weight: vec4<f32>,
}

@group(0) @binding(0) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> table: array<ExpertDesc>;

const LANES: u32 = 32u;
const ROWS_PER_GROUP: u32 = 8u;

var<workgroup> red: array<f32, 256>;
var<workgroup> red2: array<f32, 256>;

fn mat_of(r: vec4<u32>, x_off: u32) -> Mat {
    return Mat(r.x, r.y, r.z, p.cols, p.group, x_off);
}

fn sums(li: u32) -> vec2<f32> {
    var s = vec2<f32>(0.0);
    let base = li & ~(LANES - 1u);
    for (var j = 0u; j < LANES; j++) {
        s += vec2<f32>(red[base + j], red2[base + j]);
    }
    return s;
}

@compute @workgroup_size(256)
fn gate_up(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let lane = li % LANES;
    let row = wg.x * ROWS_PER_GROUP + li / LANES;
    let e = wg.y;
    let d = table[e];
    let g = mat_of(d.gate, 0u);
    let u = mat_of(d.up, 0u);
    var ag = 0.0;
    var au = 0.0;
    if (row < p.rows) {
        let chunks = p.cols / VALS;
        for (var c = lane; c < chunks; c += LANES) {
            ag += chunk_dot(g, row, c);
            au += chunk_dot(u, row, c);
        }
    }
    red[li] = ag;
    red2[li] = au;
    workgroupBarrier();
    if (lane == 0u && row < p.rows) {
        let s = sums(li);
        y[e * p.rows + row] = s.x / (1.0 + exp(-s.x)) * s.y;
    }
}

@compute @workgroup_size(256)
fn down_combine(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let lane = li % LANES;
    let row = wg.x * ROWS_PER_GROUP + li / LANES;
    var acc = 0.0;
    if (row < p.rows) {
        let chunks = p.cols / VALS;
        for (var e = 0u; e < p.experts; e++) {
            let d = table[e];
            let m = mat_of(d.down, e * (p.cols / 4u));
            var part = 0.0;
            for (var c = lane; c < chunks; c += LANES) {
                part += chunk_dot(m, row, c);
            }
            acc += d.weight.x * part;
        }
    }
    red[li] = acc;
    red2[li] = 0.0;
    workgroupBarrier();
    if (lane == 0u && row < p.rows) {
        y[row] = sums(li).x;
    }
}
