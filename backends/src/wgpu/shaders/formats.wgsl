// Weight formats, one block per format; the host keeps exactly one block (each starts with a
// marker line naming the format) and drops the others. Every format defines:
//   VALS           values per 16-byte chunk (one vec4<u32> load);
//   XC, load_x     the x values one chunk multiplies, loaded once and reused for many rows;
//   load_xt        the same from the tile of x staged in workgroup memory (`stage_x`);
//   chunk_dot      the dot product of chunk `c` of row `row` of matrix `m` with those x;
//   value_at       one weight, for gathers (embedding rows);
//   WC, load_w     chunk `c` of row `row` decoded once (with its scale and bias), and
//   wc_dot         its dot product with the x values of one chunk: chunk_dot split in two, so
//                  the batched kernels decode a weight chunk once for several tokens.
// f16 values (scales, biases, F16 weights) are decoded from their bits with integer ops:
// neither SHADER_F16 nor naga's f16-in-f32 capability (which `unpack2x16float` needs) is used.
// Quantized formats read scales and biases through `ws`, the weight buffer bound as u32s.

// The f32 value of the f16 whose bits are the low 16 bits of `h` (exact, subnormals, infinities
// and NaNs included), without branches.
fn f16_bits(h: u32) -> f32 {
    let em = (h & 0x7fffu) << 13u;
    let normal = bitcast<f32>(em + 0x38000000u); // rebias the exponent: (127 - 15) << 23
    let sub = f32(h & 0x3ffu) * 5.9604645e-8;
    let e = h & 0x7c00u;
    let v = select(select(normal, sub, e == 0u), bitcast<f32>(0x7f800000u | em), e == 0x7c00u);
    return select(v, -v, (h & 0x8000u) != 0u);
}

// The two f16 of a word, low half first.
fn f16_pair(word: u32) -> vec2<f32> {
    return vec2<f32>(f16_bits(word & 0xffffu), f16_bits(word >> 16u));
}

// The 32-bit word at word index `i` of the weight buffer.
fn word_at(i: u32) -> u32 {
    return w[i >> 2u][i & 3u];
}

//! format q4
const VALS: u32 = 32u;

// x of one chunk split into even and odd columns (low and high nibbles), and its sum.
struct XC {
    e0: vec4<f32>, e1: vec4<f32>, e2: vec4<f32>, e3: vec4<f32>,
    o0: vec4<f32>, o1: vec4<f32>, o2: vec4<f32>, o3: vec4<f32>,
    sum: f32,
}

fn load_x(xi: u32) -> XC {
    return xc_of(x[xi], x[xi + 1u], x[xi + 2u], x[xi + 3u],
                 x[xi + 4u], x[xi + 5u], x[xi + 6u], x[xi + 7u]);
}

fn load_xt(c: u32) -> XC {
    return xc_of(xr(c, 0u), xr(c, 1u), xr(c, 2u), xr(c, 3u),
                 xr(c, 4u), xr(c, 5u), xr(c, 6u), xr(c, 7u));
}

fn xc_of(a0: vec4<f32>, b0: vec4<f32>, a1: vec4<f32>, b1: vec4<f32>,
         a2: vec4<f32>, b2: vec4<f32>, a3: vec4<f32>, b3: vec4<f32>) -> XC {
    let all = a0 + b0 + a1 + b1 + a2 + b2 + a3 + b3;
    return XC(
        vec4<f32>(a0.x, a0.z, b0.x, b0.z), vec4<f32>(a1.x, a1.z, b1.x, b1.z),
        vec4<f32>(a2.x, a2.z, b2.x, b2.z), vec4<f32>(a3.x, a3.z, b3.x, b3.z),
        vec4<f32>(a0.y, a0.w, b0.y, b0.w), vec4<f32>(a1.y, a1.w, b1.y, b1.w),
        vec4<f32>(a2.y, a2.w, b2.y, b2.w), vec4<f32>(a3.y, a3.w, b3.y, b3.w),
        dot(all, vec4<f32>(1.0)));
}

// Small integers to f32 without conversion instructions (a quarter-rate op on many GPUs):
// `0x4b000000 | q` is the float 2^23 + q, exactly, for q < 2^23.
const MAGIC: u32 = 0x4b000000u;
const MAGIC_F: f32 = 8388608.0;

fn nib_lo(word: u32) -> vec4<f32> {
    let v = (vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u) & vec4<u32>(15u)) | vec4<u32>(MAGIC);
    return bitcast<vec4<f32>>(v) - vec4<f32>(MAGIC_F);
}

fn nib_hi(word: u32) -> vec4<f32> {
    let v = (vec4<u32>(word >> 4u, word >> 12u, word >> 20u, word >> 28u) & vec4<u32>(15u)) | vec4<u32>(MAGIC);
    return bitcast<vec4<f32>>(v) - vec4<f32>(MAGIC_F);
}

fn chunk_dot(m: Mat, row: u32, c: u32, xc: XC) -> f32 {
    let q = w[m.data + row * m.row_chunks + c];
    let sb = scale_bias(m, group_of(m, row, c));
    let qx = dot(nib_lo(q.x), xc.e0) + dot(nib_hi(q.x), xc.o0)
           + dot(nib_lo(q.y), xc.e1) + dot(nib_hi(q.y), xc.o1)
           + dot(nib_lo(q.z), xc.e2) + dot(nib_hi(q.z), xc.o2)
           + dot(nib_lo(q.w), xc.e3) + dot(nib_hi(q.w), xc.o3);
    return sb.x * qx + sb.y * xc.sum;
}

fn value_at(m: Mat, row: u32, col: u32) -> f32 {
    let idx = row * m.cols + col;
    let word = word_at(m.data * 4u + idx / 8u);
    let q = f32((word >> (4u * (idx % 8u))) & 15u);
    let sb = scale_bias(m, row * m.gpr + col / m.group);
    return q * sb.x + sb.y;
}

struct WC {
    l0: vec4<f32>, h0: vec4<f32>, l1: vec4<f32>, h1: vec4<f32>,
    l2: vec4<f32>, h2: vec4<f32>, l3: vec4<f32>, h3: vec4<f32>,
    sb: vec2<f32>,
}

fn load_w(m: Mat, row: u32, c: u32) -> WC {
    let q = w[m.data + row * m.row_chunks + c];
    return WC(nib_lo(q.x), nib_hi(q.x), nib_lo(q.y), nib_hi(q.y),
              nib_lo(q.z), nib_hi(q.z), nib_lo(q.w), nib_hi(q.w),
              scale_bias(m, group_of(m, row, c)));
}

fn wc_dot(a: WC, xc: XC) -> f32 {
    let qx = dot(a.l0, xc.e0) + dot(a.h0, xc.o0)
           + dot(a.l1, xc.e1) + dot(a.h1, xc.o1)
           + dot(a.l2, xc.e2) + dot(a.h2, xc.o2)
           + dot(a.l3, xc.e3) + dot(a.h3, xc.o3);
    return a.sb.x * qx + a.sb.y * xc.sum;
}

//! format q8
const VALS: u32 = 16u;

struct XC {
    v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
    sum: f32,
}

fn load_x(xi: u32) -> XC {
    return xc_of(x[xi], x[xi + 1u], x[xi + 2u], x[xi + 3u]);
}

fn load_xt(c: u32) -> XC {
    return xc_of(xr(c, 0u), xr(c, 1u), xr(c, 2u), xr(c, 3u));
}

fn xc_of(v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>) -> XC {
    return XC(v0, v1, v2, v3, dot(v0 + v1 + v2 + v3, vec4<f32>(1.0)));
}

// As nib_lo: 2^23 + byte, minus 2^23, with no conversion instruction.
fn bytes4(word: u32) -> vec4<f32> {
    let v = (vec4<u32>(word, word >> 8u, word >> 16u, word >> 24u) & vec4<u32>(255u)) | vec4<u32>(0x4b000000u);
    return bitcast<vec4<f32>>(v) - vec4<f32>(8388608.0);
}

fn chunk_dot(m: Mat, row: u32, c: u32, xc: XC) -> f32 {
    let q = w[m.data + row * m.row_chunks + c];
    let sb = scale_bias(m, group_of(m, row, c));
    let qx = dot(bytes4(q.x), xc.v0) + dot(bytes4(q.y), xc.v1)
           + dot(bytes4(q.z), xc.v2) + dot(bytes4(q.w), xc.v3);
    return sb.x * qx + sb.y * xc.sum;
}

fn value_at(m: Mat, row: u32, col: u32) -> f32 {
    let idx = row * m.cols + col;
    let word = word_at(m.data * 4u + idx / 4u);
    let q = f32((word >> (8u * (idx % 4u))) & 255u);
    let sb = scale_bias(m, row * m.gpr + col / m.group);
    return q * sb.x + sb.y;
}

struct WC {
    v0: vec4<f32>, v1: vec4<f32>, v2: vec4<f32>, v3: vec4<f32>,
    sb: vec2<f32>,
}

fn load_w(m: Mat, row: u32, c: u32) -> WC {
    let q = w[m.data + row * m.row_chunks + c];
    return WC(bytes4(q.x), bytes4(q.y), bytes4(q.z), bytes4(q.w),
              scale_bias(m, group_of(m, row, c)));
}

fn wc_dot(a: WC, xc: XC) -> f32 {
    let qx = dot(a.v0, xc.v0) + dot(a.v1, xc.v1) + dot(a.v2, xc.v2) + dot(a.v3, xc.v3);
    return a.sb.x * qx + a.sb.y * xc.sum;
}

//! format bf16
const VALS: u32 = 8u;

struct XC {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn load_x(xi: u32) -> XC {
    return XC(x[xi], x[xi + 1u]);
}

fn load_xt(c: u32) -> XC {
    return XC(xr(c, 0u), xr(c, 1u));
}

fn bf16_pair(word: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}

fn chunk_dot(m: Mat, row: u32, c: u32, xc: XC) -> f32 {
    let q = w[m.data + row * m.row_chunks + c];
    let a = vec4<f32>(bf16_pair(q.x), bf16_pair(q.y));
    let b = vec4<f32>(bf16_pair(q.z), bf16_pair(q.w));
    return dot(a, xc.a) + dot(b, xc.b);
}

fn value_at(m: Mat, row: u32, col: u32) -> f32 {
    let idx = row * m.cols + col;
    let pair = bf16_pair(word_at(m.data * 4u + idx / 2u));
    return select(pair.x, pair.y, (idx & 1u) == 1u);
}

struct WC {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn load_w(m: Mat, row: u32, c: u32) -> WC {
    let q = w[m.data + row * m.row_chunks + c];
    return WC(vec4<f32>(bf16_pair(q.x), bf16_pair(q.y)), vec4<f32>(bf16_pair(q.z), bf16_pair(q.w)));
}

fn wc_dot(a: WC, xc: XC) -> f32 {
    return dot(a.a, xc.a) + dot(a.b, xc.b);
}

//! format f16
const VALS: u32 = 8u;

struct XC {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn load_x(xi: u32) -> XC {
    return XC(x[xi], x[xi + 1u]);
}

fn load_xt(c: u32) -> XC {
    return XC(xr(c, 0u), xr(c, 1u));
}

fn chunk_dot(m: Mat, row: u32, c: u32, xc: XC) -> f32 {
    let q = w[m.data + row * m.row_chunks + c];
    let a = vec4<f32>(f16_pair(q.x), f16_pair(q.y));
    let b = vec4<f32>(f16_pair(q.z), f16_pair(q.w));
    return dot(a, xc.a) + dot(b, xc.b);
}

fn value_at(m: Mat, row: u32, col: u32) -> f32 {
    let idx = row * m.cols + col;
    let pair = f16_pair(word_at(m.data * 4u + idx / 2u));
    return select(pair.x, pair.y, (idx & 1u) == 1u);
}

struct WC {
    a: vec4<f32>,
    b: vec4<f32>,
}

fn load_w(m: Mat, row: u32, c: u32) -> WC {
    let q = w[m.data + row * m.row_chunks + c];
    return WC(vec4<f32>(f16_pair(q.x), f16_pair(q.y)), vec4<f32>(f16_pair(q.z), f16_pair(q.w)));
}

fn wc_dot(a: WC, xc: XC) -> f32 {
    return dot(a.a, xc.a) + dot(a.b, xc.b);
}

//! format f32
const VALS: u32 = 4u;

struct XC {
    a: vec4<f32>,
}

fn load_x(xi: u32) -> XC {
    return XC(x[xi]);
}

fn load_xt(c: u32) -> XC {
    return XC(xr(c, 0u));
}

fn chunk_dot(m: Mat, row: u32, c: u32, xc: XC) -> f32 {
    let q = w[m.data + row * m.row_chunks + c];
    return dot(bitcast<vec4<f32>>(q), xc.a);
}

fn value_at(m: Mat, row: u32, col: u32) -> f32 {
    return bitcast<f32>(word_at(m.data * 4u + row * m.cols + col));
}

struct WC {
    a: vec4<f32>,
}

fn load_w(m: Mat, row: u32, c: u32) -> WC {
    return WC(bitcast<vec4<f32>>(w[m.data + row * m.row_chunks + c]));
}

fn wc_dot(a: WC, xc: XC) -> f32 {
    return dot(a.a, xc.a);
}
