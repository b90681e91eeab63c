// RMSNorm. `rms_norm`: one workgroup over the whole vector, y = x / rms(x) * weight.
// `rms_norm_heads`: one workgroup per head of `p.width`, in place on y, same weight per head.
// `gated_rms_norm_heads`: the same, then times silu(x) (x = the gate z, as long as y).

struct Params {
    n: u32,      // elements normalised together
    eps: f32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

var<workgroup> red: array<f32, 256>;

// The sum over the workgroup of each invocation's `v`.
fn workgroup_sum(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let total = red[0];
    workgroupBarrier();
    return total;
}

@compute @workgroup_size(256)
fn rms_norm(@builtin(local_invocation_index) li: u32) {
    var ss = 0.0;
    for (var i = li; i < p.n; i += 256u) {
        ss += x[i] * x[i];
    }
    let inv = 1.0 / sqrt(workgroup_sum(li, ss) / f32(p.n) + p.eps);
    for (var i = li; i < p.n; i += 256u) {
        y[i] = x[i] * inv * weight[i];
    }
}

@compute @workgroup_size(256)
fn rms_norm_heads(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let base = wg.x * p.n;
    var ss = 0.0;
    for (var i = li; i < p.n; i += 256u) {
        ss += y[base + i] * y[base + i];
    }
    let inv = 1.0 / sqrt(workgroup_sum(li, ss) / f32(p.n) + p.eps);
    for (var i = li; i < p.n; i += 256u) {
        y[base + i] = y[base + i] * inv * weight[i];
    }
}

@compute @workgroup_size(256)
fn gated_rms_norm_heads(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let base = wg.x * p.n;
    var ss = 0.0;
    for (var i = li; i < p.n; i += 256u) {
        ss += y[base + i] * y[base + i];
    }
    let inv = 1.0 / sqrt(workgroup_sum(li, ss) / f32(p.n) + p.eps);
    for (var i = li; i < p.n; i += 256u) {
        let z = x[base + i];
        y[base + i] = y[base + i] * inv * weight[i] * (z / (1.0 + exp(-z)));
    }
}
