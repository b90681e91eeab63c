// An f16 stored at half-word index `i` of the weight buffer.
fn half_at(i: u32) -> f32 {
    let word = ws[i >> 1u];
    return f16_bits(select(word & 0xffffu, word >> 16u, (i & 1u) == 1u));
}

// Scale and bias of group `g` (counted over the whole matrix).
fn scale_bias(m: Mat, g: u32) -> vec2<f32> {
    return vec2<f32>(half_at(m.scales + g), half_at(m.biases + g));
}

// The group of chunk `c` of `row`.
fn group_of(m: Mat, row: u32, c: u32) -> u32 {
    return row * m.gpr + (c >> m.gshift);
}
