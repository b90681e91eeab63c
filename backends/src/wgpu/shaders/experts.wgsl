// The routed experts of one layer in two dispatches (format code appended by the host).
//
// gate_up:      h[e * inter + r] = silu(gate_e[r] . x) * (up_e[r] . x)      (workgroup y = e)
// down_combine: y[e * hidden + r] = weight_e * (down_e[r] . h[e * inter ..])  (workgroup y = e)
// and then `combine` (elementwise.wgsl) sums the experts' rows.
//
// The experts of one dispatch lie in one buffer of expert slots (a ring of several buffers
// takes a dispatch per buffer); `table` says where, and `gate.w` is the expert's index among
// the layer's experts, which places its rows in `y` (and, for down, its input in `x`). The work
// split is the one of matvec.wgsl (slices of 32 lanes, R rows per slice, x staged in tiles
// and loaded once per chunk); gate_up computes the same R rows of gate and up together,
// sharing the x loads.

struct Params {
    rows: u32,   // inter for gate_up, hidden for down_combine
    cols: u32,   // hidden for gate_up, inter for down_combine
    group: u32,
    gshift: u32,
    experts: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

struct ExpertDesc {
    gate: vec4<u32>,
    up: vec4<u32>,
    down: vec4<u32>,
    weight: vec4<f32>,
}

@group(0) @binding(3) var<uniform> p: Params;
@group(0) @binding(4) var<storage, read> table: array<ExpertDesc>;

const R_UP: u32 = 4u;
const R_DOWN: u32 = 8u;

@compute @workgroup_size(256)
fn gate_up(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let lane = li % LANES;
    let slice = li / LANES;
    let first = (wg.x * SLICES + slice) * R_UP;
    let d = table[wg.y];
    let e = d.gate.w;
    let g = mat(d.gate, p.cols, p.group, p.gshift, 0u);
    let u = mat(d.up, p.cols, p.group, p.gshift, 0u);
    let last = max(p.rows, 1u) - 1u;
    let r0 = min(first, last);
    let r1 = min(first + 1u, last);
    let r2 = min(first + 2u, last);
    let r3 = min(first + 3u, last);
    var g0 = 0.0; var g1 = 0.0; var g2 = 0.0; var g3 = 0.0;
    var u0 = 0.0; var u1 = 0.0; var u2 = 0.0; var u3 = 0.0;
    for (var t0 = 0u; t0 < g.row_chunks; t0 += LANES) {
        stage_x(li, 0u, t0, g.row_chunks);
        let c = t0 + lane;
        if (c < g.row_chunks) {
            let xc = load_xt(lane);
            g0 += chunk_dot(g, r0, c, xc);
            g1 += chunk_dot(g, r1, c, xc);
            g2 += chunk_dot(g, r2, c, xc);
            g3 += chunk_dot(g, r3, c, xc);
            u0 += chunk_dot(u, r0, c, xc);
            u1 += chunk_dot(u, r1, c, xc);
            u2 += chunk_dot(u, r2, c, xc);
            u3 += chunk_dot(u, r3, c, xc);
        }
    }
    red[li] = g0;
    red[STRIDE + li] = g1;
    red[2u * STRIDE + li] = g2;
    red[3u * STRIDE + li] = g3;
    red[4u * STRIDE + li] = u0;
    red[5u * STRIDE + li] = u1;
    red[6u * STRIDE + li] = u2;
    red[7u * STRIDE + li] = u3;
    reduce_slices(li, 2u * R_UP);
    if (lane == 0u) {
        for (var r = 0u; r < R_UP; r++) {
            if (first + r < p.rows) {
                let gs = red[r * STRIDE + li];
                let us = red[(R_UP + r) * STRIDE + li];
                y[e * p.rows + first + r] = gs / (1.0 + exp(-gs)) * us;
            }
        }
    }
}

@compute @workgroup_size(256)
fn down_combine(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let lane = li % LANES;
    let slice = li / LANES;
    let first = (wg.x * SLICES + slice) * R_DOWN;
    let d = table[wg.y];
    let e = d.gate.w;
    let m = mat(d.down, p.cols, p.group, p.gshift, e * (p.cols / 4u));
    let last = max(p.rows, 1u) - 1u;
    let r0 = min(first, last);
    let r1 = min(first + 1u, last);
    let r2 = min(first + 2u, last);
    let r3 = min(first + 3u, last);
    let r4 = min(first + 4u, last);
    let r5 = min(first + 5u, last);
    let r6 = min(first + 6u, last);
    let r7 = min(first + 7u, last);
    var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;
    var a4 = 0.0; var a5 = 0.0; var a6 = 0.0; var a7 = 0.0;
    for (var t0 = 0u; t0 < m.row_chunks; t0 += LANES) {
        stage_x(li, m.x, t0, m.row_chunks);
        let c = t0 + lane;
        if (c < m.row_chunks) {
            let xc = load_xt(lane);
            a0 += chunk_dot(m, r0, c, xc);
            a1 += chunk_dot(m, r1, c, xc);
            a2 += chunk_dot(m, r2, c, xc);
            a3 += chunk_dot(m, r3, c, xc);
            a4 += chunk_dot(m, r4, c, xc);
            a5 += chunk_dot(m, r5, c, xc);
            a6 += chunk_dot(m, r6, c, xc);
            a7 += chunk_dot(m, r7, c, xc);
        }
    }
    red[li] = a0;
    red[STRIDE + li] = a1;
    red[2u * STRIDE + li] = a2;
    red[3u * STRIDE + li] = a3;
    red[4u * STRIDE + li] = a4;
    red[5u * STRIDE + li] = a5;
    red[6u * STRIDE + li] = a6;
    red[7u * STRIDE + li] = a7;
    reduce_slices(li, R_DOWN);
    if (lane == 0u) {
        for (var r = 0u; r < R_DOWN; r++) {
            if (first + r < p.rows) {
                y[e * p.rows + first + r] = d.weight.x * red[r * STRIDE + li];
            }
        }
    }
}
