// Rotate-half RoPE in place over the first `rot` dims of each head (all of them for full RoPE;
// partial rotary leaves dims rot..head_dim unchanged). The host computes cos and sin of every frequency exactly as the
// CPU backend does (f32, like HF transformers), so both backends rotate by the same angles:
// `table` = cos[0..half] then sin[0..half], half = rot / 2.

struct Params {
    heads: u32,
    head_dim: u32,
    rot: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@group(0) @binding(1) var<storage, read> table: array<f32>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.rot / 2u;
    let i = gid.x;
    if (i < p.heads * half) {
        let h = i / half;
        let j = i % half;
        let a = h * p.head_dim + j;
        let b = a + half;
        let c = table[j];
        let s = table[half + j];
        let x1 = y[a];
        let x2 = y[b];
        y[a] = x1 * c - x2 * s;
        y[b] = x2 * c + x1 * s;
    }
}
