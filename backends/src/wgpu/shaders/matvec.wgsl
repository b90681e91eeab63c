// y[y_off + row] = W[row] . x   over a packed matrix (format code appended by the host).
//
// A workgroup is 8 slices of 32 invocations; a slice computes R = 4 consecutive rows. Its 32
// lanes take every 32nd 16-byte chunk of the rows, so each row is read as contiguous 512-byte
// spans, and the x values of a chunk are loaded once (from a tile the workgroup staged in
// workgroup memory, `stage_x`) and used for all R rows. Partial sums
// meet in workgroup memory: no subgroup operations, so any subgroup size works (8 on
// lavapipe, 32 on Apple and NVIDIA).

struct Params {
    rows: u32,
    cols: u32,
    group: u32,
    gshift: u32,
    mat: vec4<u32>, // data, scales, biases, _
    x_off: u32,
    y_off: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(3) var<uniform> p: Params;

const R: u32 = 4u;

@compute @workgroup_size(256)
fn matvec(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let lane = li % LANES;
    let slice = li / LANES;
    let first = ((wg.x + wg.y * nwg.x) * SLICES + slice) * R;
    let m = mat(p.mat, p.cols, p.group, p.gshift, p.x_off);
    // Rows past the end repeat the last row (results discarded): the loop body has no branch
    // and four named accumulators, so it stays in registers on every compiler.
    let last = max(p.rows, 1u) - 1u;
    let r0 = min(first, last);
    let r1 = min(first + 1u, last);
    let r2 = min(first + 2u, last);
    let r3 = min(first + 3u, last);
    var a0 = 0.0; var a1 = 0.0; var a2 = 0.0; var a3 = 0.0;
    // Lane `l` takes chunks l, l + 32, .. of the rows, each tile's x staged first.
    for (var t0 = 0u; t0 < m.row_chunks; t0 += LANES) {
        stage_x(li, m.x, t0, m.row_chunks);
        let c = t0 + lane;
        if (c < m.row_chunks) {
            let xc = load_xt(lane);
            a0 += chunk_dot(m, r0, c, xc);
            a1 += chunk_dot(m, r1, c, xc);
            a2 += chunk_dot(m, r2, c, xc);
            a3 += chunk_dot(m, r3, c, xc);
        }
    }
    red[li] = a0;
    red[STRIDE + li] = a1;
    red[2u * STRIDE + li] = a2;
    red[3u * STRIDE + li] = a3;
    reduce_slices(li, R);
    if (lane == 0u) {
        for (var r = 0u; r < R; r++) {
            if (first + r < p.rows) {
                y[p.y_off + first + r] = red[r * STRIDE + li];
            }
        }
    }
}
