// Element-wise ops on f32 vectors.

struct Params {
    n: u32,
    alpha: f32,
    parts: u32,  // combine: rows of x summed into y; sigmoid_mul: elements per gate
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

// y += alpha * x
@compute @workgroup_size(256)
fn axpy(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < p.n) {
        y[i] = y[i] + p.alpha * x[i];
    }
}

// y = silu(y) * x   (y = gate, x = up)
@compute @workgroup_size(256)
fn swiglu(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < p.n) {
        let g = y[i];
        y[i] = g / (1.0 + exp(-g)) * x[i];
    }
}

// y = sum over p.parts of x[part * n ..]: the experts' weighted outputs summed.
@compute @workgroup_size(256)
fn combine(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < p.n) {
        var s = 0.0;
        for (var e = 0u; e < p.parts; e++) {
            s += x[e * p.n + i];
        }
        y[i] = s;
    }
}

// y *= sigmoid(x[i / parts]): an output gate per element (parts 1) or per group of parts.
@compute @workgroup_size(256)
fn sigmoid_mul(@builtin(global_invocation_id) gid: vec3<u32>) {
    let i = gid.x;
    if (i < p.n) {
        y[i] = y[i] / (1.0 + exp(-x[i / p.parts]));
    }
}
