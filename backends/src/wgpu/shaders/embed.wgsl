// y = row `p.row` of a packed matrix, decoded to f32 (format code appended by the host).

struct Params {
    row: u32,
    cols: u32,
    group: u32,
    gshift: u32,
    mat: vec4<u32>,
}

@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    if (col < p.cols) {
        y[col] = value_at(mat(p.mat, p.cols, p.group, p.gshift, 0u), p.row, col);
    }
}
