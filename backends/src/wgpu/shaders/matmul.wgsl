// y[t * out_stride + y_off + row] = W[row] . x[t]   for the n rows x[t] of a chunk tensor
// (x is [n][cols] row-major), over a packed matrix (format code appended by the host).
//
// Tiled as the matvec, with tokens added: a workgroup is 8 slices of 32 invocations; a slice
// computes R = 4 consecutive rows for T = 4 consecutive tokens (workgroup z picks the tokens).
// Its 32 lanes take every 32nd 16-byte chunk of the rows; each weight chunk is loaded and
// decoded once (`load_w`) and dotted with the 4 tokens' x values of that chunk (`wc_dot`), so
// the weights are read once per 4 tokens and decoded once per 4 tokens. Accumulators are one
// vec4 per row (a component per token). Partial sums meet in workgroup memory (no subgroup
// operations), 8 values at a time: rows 0-1, then rows 2-3.

struct Params {
    rows: u32,
    cols: u32,
    group: u32,
    gshift: u32,
    mat: vec4<u32>, // data, scales, biases, _
    n: u32,          // tokens
    y_off: u32,      // first output row (a row block of a resident weight)
    out_stride: u32, // output elements per token (the whole weight's rows)
    _pad: u32,
}

@group(0) @binding(3) var<uniform> p: Params;

const R: u32 = 4u;
const T: u32 = 4u;

// The 4 tokens' dot products with chunk c of row `row`.
fn row_tokens(m: Mat, row: u32, c: u32, x0: u32, x1: u32, x2: u32, x3: u32) -> vec4<f32> {
    let wc = load_w(m, row, c);
    let xo = c * (VALS / 4u);
    return vec4<f32>(wc_dot(wc, load_x(x0 + xo)), wc_dot(wc, load_x(x1 + xo)),
                     wc_dot(wc, load_x(x2 + xo)), wc_dot(wc, load_x(x3 + xo)));
}

// Lane 0 of each slice writes the reduced rows `first + r0` and `first + r0 + 1` (red rows
// 0..4 and 4..8 are their 4 tokens).
fn write_rows(li: u32, first: u32, r0: u32, t0: u32) {
    if (li % LANES == 0u) {
        for (var r = 0u; r < 2u; r++) {
            let row = first + r0 + r;
            for (var t = 0u; t < T; t++) {
                if (row < p.rows && t0 + t < p.n) {
                    y[(t0 + t) * p.out_stride + p.y_off + row] = red[(r * T + t) * STRIDE + li];
                }
            }
        }
    }
}

@compute @workgroup_size(256)
fn matmul(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let lane = li % LANES;
    let slice = li / LANES;
    let first = ((wg.x + wg.y * nwg.x) * SLICES + slice) * R;
    let t0 = wg.z * T;
    let m = mat(p.mat, p.cols, p.group, p.gshift, 0u);
    // Rows and tokens past the end repeat the last one (results discarded): no branch in the
    // loop body.
    let last = max(p.rows, 1u) - 1u;
    let r0 = min(first, last);
    let r1 = min(first + 1u, last);
    let r2 = min(first + 2u, last);
    let r3 = min(first + 3u, last);
    let tl = max(p.n, 1u) - 1u;
    let xs = p.cols / 4u; // vec4s per token row
    let x0 = min(t0, tl) * xs;
    let x1 = min(t0 + 1u, tl) * xs;
    let x2 = min(t0 + 2u, tl) * xs;
    let x3 = min(t0 + 3u, tl) * xs;
    var a0 = vec4<f32>(0.0); var a1 = vec4<f32>(0.0);
    var a2 = vec4<f32>(0.0); var a3 = vec4<f32>(0.0);
    for (var c = lane; c < m.row_chunks; c += LANES) {
        a0 += row_tokens(m, r0, c, x0, x1, x2, x3);
        a1 += row_tokens(m, r1, c, x0, x1, x2, x3);
        a2 += row_tokens(m, r2, c, x0, x1, x2, x3);
        a3 += row_tokens(m, r3, c, x0, x1, x2, x3);
    }
    for (var t = 0u; t < T; t++) {
        red[t * STRIDE + li] = a0[t];
        red[(T + t) * STRIDE + li] = a1[t];
    }
    reduce_slices(li, 2u * T);
    write_rows(li, first, 0u, t0);
    workgroupBarrier();
    for (var t = 0u; t < T; t++) {
        red[t * STRIDE + li] = a2[t];
        red[(T + t) * STRIDE + li] = a3[t];
    }
    reduce_slices(li, 2u * T);
    write_rows(li, first, 2u, t0);
}
