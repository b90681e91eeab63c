// Weight formats, one block per format; the host keeps exactly one block (each starts with a
// marker line naming the format) and drops the others. Every format defines:
//   VALS           values per 16-byte chunk (one vec4<u32> load);
//   chunk_dot      the dot product of chunk `c` of row `row` of matrix `m` with x;
//   value_at       one weight, for gathers (embedding rows).
// f16 values (scales, biases, F16 weights) are decoded from their bits with integer ops:
// neither SHADER_F16 nor naga's f16-in-f32 capability (which `unpack2x16float` needs) is used.

// The f32 value of the f16 whose bits are the low 16 bits of `h` (exact, subnormals included).
fn f16_bits(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1fu;
    let man = h & 0x3ffu;
    if (e == 0u) {
        let v = f32(man) * 5.9604645e-8;
        return select(v, -v, sign != 0u);
    }
    if (e == 31u) {
        return bitcast<f32>(sign | 0x7f800000u | (man << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (man << 13u));
}

// The two f16 of a word, low half first.
fn f16_pair(word: u32) -> vec2<f32> {
    return vec2<f32>(f16_bits(word & 0xffffu), f16_bits(word >> 16u));
}

// An f16 stored at half-word index `i` of the weight buffer.
fn half_at(i: u32) -> f32 {
    let word = w[(i >> 1u) >> 2u][(i >> 1u) & 3u];
    return f16_bits(select(word & 0xffffu, word >> 16u, (i & 1u) == 1u));
}

// The 32-bit word at word index `i` of the weight buffer.
fn word_at(i: u32) -> u32 {
    return w[i >> 2u][i & 3u];
}

// Scale and bias of the group holding column `col` of row `row`.
fn scale_bias(m: Mat, row: u32, col: u32) -> vec2<f32> {
    let g = row * (m.cols / m.group) + col / m.group;
    return vec2<f32>(half_at(m.scales + g), half_at(m.biases + g));
}

//! format q4
const VALS: u32 = 32u;

fn chunk_dot(m: Mat, row: u32, c: u32) -> f32 {
    let q = w[m.data + row * (m.cols / VALS) + c];
    let col = c * VALS;
    let sb = scale_bias(m, row, col);
    let xi = m.x + (col >> 2u);
    var qx = 0.0;
    var xs = 0.0;
    for (var i = 0u; i < 4u; i++) {
        let word = q[i];
        let xa = x[xi + 2u * i];
        let xb = x[xi + 2u * i + 1u];
        let lo = vec4<f32>(vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u) & vec4<u32>(15u));
        let hi = vec4<f32>(vec4<u32>(word >> 4u, word >> 12u, word >> 20u, word >> 28u) & vec4<u32>(15u));
        qx += dot(lo, vec4<f32>(xa.x, xa.z, xb.x, xb.z)) + dot(hi, vec4<f32>(xa.y, xa.w, xb.y, xb.w));
        xs += dot(xa + xb, vec4<f32>(1.0));
    }
    return sb.x * qx + sb.y * xs;
}

fn value_at(m: Mat, row: u32, col: u32) -> f32 {
    let idx = row * m.cols + col;
    let word = word_at(m.data * 4u + idx / 8u);
    let q = f32((word >> (4u * (idx % 8u))) & 15u);
    let sb = scale_bias(m, row, col);
    return q * sb.x + sb.y;
}

//! format q8
const VALS: u32 = 16u;

fn chunk_dot(m: Mat, row: u32, c: u32) -> f32 {
    let q = w[m.data + row * (m.cols / VALS) + c];
    let col = c * VALS;
    let sb = scale_bias(m, row, col);
    let xi = m.x + (col >> 2u);
    var qx = 0.0;
    var xs = 0.0;
    for (var i = 0u; i < 4u; i++) {
        let word = q[i];
        let xv = x[xi + i];
        let codes = vec4<f32>(vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u) & vec4<u32>(255u));
        qx += dot(codes, xv);
        xs += dot(xv, vec4<f32>(1.0));
    }
    return sb.x * qx + sb.y * xs;
}

fn value_at(m: Mat, row: u32, col: u32) -> f32 {
    let idx = row * m.cols + col;
    let word = word_at(m.data * 4u + idx / 4u);
    let q = f32((word >> (8u * (idx % 4u))) & 255u);
    let sb = scale_bias(m, row, col);
    return q * sb.x + sb.y;
}

//! format bf16
const VALS: u32 = 8u;

fn bf16_pair(word: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}

fn chunk_dot(m: Mat, row: u32, c: u32) -> f32 {
    let q = w[m.data + row * (m.cols / VALS) + c];
    let xi = m.x + ((c * VALS) >> 2u);
    let xa = x[xi];
    let xb = x[xi + 1u];
    let a = vec4<f32>(bf16_pair(q.x), bf16_pair(q.y));
    let b = vec4<f32>(bf16_pair(q.z), bf16_pair(q.w));
    return dot(a, xa) + dot(b, xb);
}

fn value_at(m: Mat, row: u32, col: u32) -> f32 {
    let idx = row * m.cols + col;
    let pair = bf16_pair(word_at(m.data * 4u + idx / 2u));
    return select(pair.x, pair.y, (idx & 1u) == 1u);
}

//! format f16
const VALS: u32 = 8u;

fn chunk_dot(m: Mat, row: u32, c: u32) -> f32 {
    let q = w[m.data + row * (m.cols / VALS) + c];
    let xi = m.x + ((c * VALS) >> 2u);
    let a = vec4<f32>(f16_pair(q.x), f16_pair(q.y));
    let b = vec4<f32>(f16_pair(q.z), f16_pair(q.w));
    return dot(a, x[xi]) + dot(b, x[xi + 1u]);
}

fn value_at(m: Mat, row: u32, col: u32) -> f32 {
    let idx = row * m.cols + col;
    let pair = f16_pair(word_at(m.data * 4u + idx / 2u));
    return select(pair.x, pair.y, (idx & 1u) == 1u);
}

//! format f32
const VALS: u32 = 4u;

fn chunk_dot(m: Mat, row: u32, c: u32) -> f32 {
    let q = w[m.data + row * (m.cols / VALS) + c];
    return dot(bitcast<vec4<f32>>(q), x[m.x + c]);
}

fn value_at(m: Mat, row: u32, col: u32) -> f32 {
    return bitcast<f32>(word_at(m.data * 4u + row * m.cols + col));
}
