// Causal grouped-query attention of one query over `seq` cached positions, one workgroup per
// query head. Scores go to a per-head scratch row in `scores` (max_seq long), so any sequence
// length fits without large workgroup memory.

struct Params {
    seq: u32,
    head_dim: u32,
    kv_dim: u32,
    group: u32,     // query heads per KV head
    max_seq: u32,
    kv_base: u32,   // f32 index of this layer's first position in k and v
    scale: f32,
    _pad0: u32,
}

@group(0) @binding(0) var<storage, read> q: array<f32>;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> scores: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@group(0) @binding(5) var<uniform> p: Params;

var<workgroup> red: array<f32, 256>;

fn workgroup_reduce(li: u32, v: f32, is_max: bool) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) {
            if (is_max) {
                red[li] = max(red[li], red[li + s]);
            } else {
                red[li] += red[li + s];
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn attention(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let h = wg.x;
    let kvh = h / p.group;
    let qo = h * p.head_dim;
    let so = h * p.max_seq;
    var m = -3.4028235e38;
    for (var t = li; t < p.seq; t += 256u) {
        let ko = p.kv_base + t * p.kv_dim + kvh * p.head_dim;
        var s = 0.0;
        for (var d = 0u; d < p.head_dim; d++) {
            s += q[qo + d] * k[ko + d];
        }
        s *= p.scale;
        scores[so + t] = s;
        m = max(m, s);
    }
    m = workgroup_reduce(li, m, true);
    var z = 0.0;
    for (var t = li; t < p.seq; t += 256u) {
        let e = exp(scores[so + t] - m);
        scores[so + t] = e;
        z += e;
    }
    z = workgroup_reduce(li, z, false);
    storageBarrier();
    workgroupBarrier();
    for (var d = li; d < p.head_dim; d += 256u) {
        var o = 0.0;
        for (var t = 0u; t < p.seq; t++) {
            o += scores[so + t] * v[p.kv_base + t * p.kv_dim + kvh * p.head_dim + d];
        }
        out[qo + d] = o / z;
    }
}
