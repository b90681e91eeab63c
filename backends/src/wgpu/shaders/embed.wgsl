// y = row `p.rows` of a packed matrix, decoded to f32 (the format block is appended by the host).

struct Params {
    rows: u32,   // the row to gather (token id)
    cols: u32,
    group: u32,
    experts: u32,
    data: u32,
    scales: u32,
    biases: u32,
    x_off: u32,
    y_off: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

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

@compute @workgroup_size(256)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>) {
    let col = gid.x;
    if (col < p.cols) {
        let m = Mat(p.data, p.scales, p.biases, p.cols, p.group, 0u);
        y[p.y_off + col] = value_at(m, p.rows, col);
    }
}
