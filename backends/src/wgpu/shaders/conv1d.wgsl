// One step of a causal depthwise conv1d followed by SiLU, in place on x (one invocation per
// channel). `state` holds the previous kernel - 1 inputs, oldest first, [kernel - 1][channels];
// weight is [channels][kernel]. The state shifts by one and keeps this step's input.

struct Params {
    channels: u32,
    kernel: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> state: array<f32>;
@group(0) @binding(2) var<storage, read> weight: array<f32>;
@group(0) @binding(3) var<uniform> p: Params;

@compute @workgroup_size(256)
fn conv1d_silu_step(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    if (c >= p.channels) {
        return;
    }
    let hist = p.kernel - 1u;
    let w0 = c * p.kernel;
    let input = x[c];
    var y = weight[w0 + hist] * input;
    for (var j = 0u; j < hist; j++) {
        y += weight[w0 + j] * state[j * p.channels + c];
    }
    for (var j = 0u; j + 1u < hist; j++) {
        state[j * p.channels + c] = state[(j + 1u) * p.channels + c];
    }
    if (hist > 0u) {
        state[(hist - 1u) * p.channels + c] = input;
    }
    x[c] = y / (1.0 + exp(-y));
}
