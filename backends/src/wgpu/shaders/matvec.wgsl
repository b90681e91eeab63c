// y[y_off + row] = W[row] . x   over a packed matrix (format code appended by the host).
//
// A workgroup is 8 slices of 32 invocations; a slice computes R consecutive rows. Its 32
// lanes take every 32nd 16-byte chunk of the rows, so each row is read as contiguous 512-byte
// spans, and the x values of a chunk are loaded once and used for all R rows. Partial sums
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

const LANES: u32 = 32u;
const SLICES: u32 = 8u;
const R: u32 = 8u;
const STRIDE: u32 = 257u; // 256 + 1: rows of `red` fall in different banks

var<workgroup> red: array<f32, 2056>; // R * STRIDE

@compute @workgroup_size(256)
fn matvec(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>,
          @builtin(num_workgroups) nwg: vec3<u32>) {
    let lane = li % LANES;
    let slice = li / LANES;
    let first = ((wg.x + wg.y * nwg.x) * SLICES + slice) * R;
    let m = mat(p.mat, p.cols, p.group, p.gshift, p.x_off);
    // Rows past the end repeat the last row (results discarded): the loop body has no branch
    // and eight named accumulators, so it stays in registers on every compiler.
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
    for (var c = lane; c < m.row_chunks; c += LANES) {
        let xc = load_x(m.x + c * (VALS / 4u));
        a0 += chunk_dot(m, r0, c, xc);
        a1 += chunk_dot(m, r1, c, xc);
        a2 += chunk_dot(m, r2, c, xc);
        a3 += chunk_dot(m, r3, c, xc);
        a4 += chunk_dot(m, r4, c, xc);
        a5 += chunk_dot(m, r5, c, xc);
        a6 += chunk_dot(m, r6, c, xc);
        a7 += chunk_dot(m, r7, c, xc);
    }
    red[li] = a0;
    red[STRIDE + li] = a1;
    red[2u * STRIDE + li] = a2;
    red[3u * STRIDE + li] = a3;
    red[4u * STRIDE + li] = a4;
    red[5u * STRIDE + li] = a5;
    red[6u * STRIDE + li] = a6;
    red[7u * STRIDE + li] = a7;
    workgroupBarrier();
    if (li < SLICES * R) {
        let s = li / R;
        let r = li % R;
        let row = ((wg.x + wg.y * nwg.x) * SLICES + s) * R + r;
        if (row < p.rows) {
            var sum = 0.0;
            for (var j = 0u; j < LANES; j++) {
                sum += red[r * STRIDE + s * LANES + j];
            }
            y[p.y_off + row] = sum;
        }
    }
}
