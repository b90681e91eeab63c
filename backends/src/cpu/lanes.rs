//! The Q4/Q8 matmul kernel for 8 tokens at a time with the tokens in the lanes (AVX-VNNI).
//!
//! [`super::block`] puts 8 weight rows in the lanes, so each group of each token ends in a
//! horizontal sum of 8 accumulators. Here a block's 8 tokens are interleaved four codes at a
//! time (`[group][4-code chunk][token]`), so `vpdpbusd` of one broadcast 4-byte run of a row's
//! codes against one 32-byte load of the interleaved activations adds that run's products to
//! all 8 tokens at once: lane `t` is token `t`'s integer sum, with no horizontal sum at all.
//! Per group and row, the 8 tokens' sums are combined with the row's scale and bias in one
//! vector: `F = (F + (s d) isum) + b xsum`, the f32 operations of the single-row kernel in its
//! order (`F` kept per `group % 8` as there), so every (row, token) value has exactly the bits
//! of that token's matvec.

use super::block::ROWS;
use super::int8::QuantizedX;

/// Tokens per block of the AVX-VNNI kernel (the lanes of a 256-bit vector of i32).
pub(crate) const TOKENS: usize = 8;
/// Tokens per block of the AVX-512 VNNI kernel.
pub(crate) const TOKENS_512: usize = 16;

/// A block of up to `width` ([`TOKENS`] or [`TOKENS_512`]) quantized tokens, interleaved for
/// the lanes kernels (a short block repeats its last token; those lanes are not stored).
#[derive(Default)]
pub(crate) struct TokenBlock {
    /// `[group][chunk][lane][4]` codes: chunk `j` of a group pairs with bytes `4j..4j + 4`
    /// of a row's (unpacked) codes in that group.
    q: Vec<i8>,
    /// `[group][lane]` scales `d`.
    d: Vec<f32>,
    /// `[group][lane]` exact group sums.
    sums: Vec<f32>,
    /// Tokens held (the rest of the lanes repeat the last).
    pub(crate) tokens: usize,
    /// Lanes: tokens per block.
    width: usize,
}

impl TokenBlock {
    /// Interleaves `xs` (1 to `width` vectors of one group size) for `width` lanes. `q4`: the rows' codes
    /// will be unpacked per 32-byte run into 32 low then 32 high nibbles ([`super::block`]'s
    /// unpacked layout), so byte `p` of a group pairs with the activation that layout puts
    /// there.
    pub(crate) fn fill(&mut self, xs: &[QuantizedX], q4: bool, width: usize) {
        let x0 = &xs[0];
        let (g, groups) = (x0.group, x0.groups());
        assert!(!xs.is_empty() && xs.len() <= width);
        self.tokens = xs.len();
        self.width = width;
        self.q.resize(groups * g * width, 0);
        self.d.resize(groups * width, 0.0);
        self.sums.resize(groups * width, 0.0);
        let half = g / 2;
        // The activation index of byte `p` of a group's codes as the kernel reads them (runs
        // of 4 stay contiguous: the layouts move whole 32-byte runs).
        let source = |p: usize| {
            if !q4 {
                return p;
            }
            let (run, within) = (p / 64, p % 64);
            if within < 32 {
                run * 32 + within
            } else {
                half + run * 32 + within - 32
            }
        };
        let chunks = g / 4;
        for t in 0..width {
            let x = &xs[t.min(xs.len() - 1)];
            for k in 0..groups {
                self.d[k * width + t] = x.d[k];
                self.sums[k * width + t] = x.sums[k];
                let qk = &x.q[k * g..(k + 1) * g];
                let dst = &mut self.q[k * g * width..(k + 1) * g * width];
                for j in 0..chunks {
                    let at = (j * width + t) * 4;
                    let from = source(4 * j);
                    dst[at..at + 4].copy_from_slice(&qk[from..from + 4]);
                }
            }
        }
    }
}

/// The block width the lanes kernels take for this matmul, if any: AVX-VNNI, a group that is
/// a multiple of 64 (Q4: whole 32-byte runs per group) or 32 (Q8), and a full block of tokens
/// to use it on; [`TOKENS_512`] where the CPU also has AVX-512 VNNI and the tokens fill it.
pub(crate) fn width(isa: super::int8::Isa, q4: bool, group: usize, n: usize) -> Option<usize> {
    if !isa.vnni() || !group.is_multiple_of(if q4 { 64 } else { 32 }) {
        return None;
    }
    if n >= TOKENS_512 && has_avx512() {
        Some(TOKENS_512)
    } else {
        (n >= TOKENS).then_some(TOKENS)
    }
}

/// Whether the CPU runs the AVX-512 VNNI kernel.
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f") && has!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// [`rows_tokens`] or [`rows_tokens_512`], as the block was filled.
///
/// # Safety
/// As for those: the CPU has what [`width`] found when it chose the block's width.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn rows_block(
    codes: [&[u8]; ROWS],
    sb: (&[f32], &[f32]),
    shape: (usize, usize),
    x: &TokenBlock,
    valid: usize,
    at: (usize, usize),
    o: &mut [f32],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        if x.width == TOKENS_512 {
            rows_tokens_512(codes, sb, shape, x, valid, at, o)
        } else {
            rows_tokens(codes, sb, shape, x, valid, at, o)
        }
    }
}

/// Generates a lanes kernel for one vector width: `$w` tokens per block, `$f` the f32 vector
/// type and `$i` the i32 one, and the width's intrinsics (each kernel runs the same code).
#[cfg(target_arch = "x86_64")]
macro_rules! lanes_kernel {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $w:expr, $f:ty, $i:ty,
     zero: $zps:ident / $zsi:ident, load: $ldps:ident / $ldsi:ident, store: $stps:ident,
     set1: $s1ps:ident / $s1epi:ident, $add:ident, $mul:ident, $cvt:ident, $dpbusd:ident) => {
        $(#[$doc])*
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $feat)]
        unsafe fn $name(
            codes: [&[u8]; ROWS],
            (s, b): (&[f32], &[f32]),
            (groups, group): (usize, usize),
            x: &TokenBlock,
            valid: usize,
            (n, t0): (usize, usize),
            o: &mut [f32],
        ) {
            use core::arch::x86_64::*;
            const W: usize = $w;
            assert!(x.width == W && s.len() >= groups * ROWS && b.len() >= groups * ROWS);
            assert!(x.q.len() >= groups * group * W && x.d.len() >= groups * W);
            assert!(codes.iter().all(|c| c.len() >= groups * group));
            assert!(valid <= ROWS && (valid == 0 || o.len() >= (valid - 1) * n + t0 + x.tokens));
            let chunks = group / 4;
            let mut f: [[$f; 8]; ROWS] = [[$zps(); 8]; ROWS];
            for k in 0..groups {
                let mut acc: [$i; ROWS] = [$zsi(); ROWS];
                let xq = x.q.as_ptr().wrapping_add(k * group * W);
                for j in 0..chunks {
                    // SAFETY: chunk j of group k: 4 * W bytes inside `x.q` (asserted above).
                    let xv = unsafe { $ldsi(xq.add(j * 4 * W).cast()) };
                    for r in 0..ROWS {
                        // SAFETY: k * group + 4j + 4 <= groups * group <= the row's length.
                        let c = unsafe {
                            std::ptr::read_unaligned(
                                codes[r].as_ptr().add(k * group + 4 * j).cast::<i32>(),
                            )
                        };
                        acc[r] = $dpbusd(acc[r], $s1epi(c), xv);
                    }
                }
                // SAFETY: k < groups: W floats from k * W in `x.d` and `x.sums`.
                let (dv, xs) = unsafe {
                    ($ldps(x.d.as_ptr().add(k * W)), $ldps(x.sums.as_ptr().add(k * W)))
                };
                for r in 0..ROWS {
                    let (sr, br) = (s[k * ROWS + r], b[k * ROWS + r]);
                    let t1 = $mul($mul($s1ps(sr), dv), $cvt(acc[r]));
                    let fr = &mut f[r][k % 8];
                    *fr = $add($add(*fr, t1), $mul($s1ps(br), xs));
                }
            }
            for (r, fr) in f.iter().enumerate().take(valid) {
                let v = $add(
                    $add($add(fr[0], fr[4]), $add(fr[2], fr[6])),
                    $add($add(fr[1], fr[5]), $add(fr[3], fr[7])),
                );
                let mut lanes = [0f32; W];
                // SAFETY: `lanes` holds W floats.
                unsafe { $stps(lanes.as_mut_ptr(), v) };
                o[r * n + t0..r * n + t0 + x.tokens].copy_from_slice(&lanes[..x.tokens]);
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
lanes_kernel!(
    /// `o[r * n + t0 + t] = row r . token t` for rows `0..valid` of a block whose byte rows
    /// (`codes[r]`, `groups * group` bytes: Q8 codes, or Q4 codes unpacked) and scales and
    /// biases (`s`, `b`: `[group][row]` f32) are given, and the [`TOKENS`] tokens of `x`.
    ///
    /// # Safety
    /// The CPU has AVX2, F16C and AVX-VNNI; `group` is a multiple of 4; the lengths are
    /// asserted.
    rows_tokens, "avx2,f16c,avxvnni", TOKENS, __m256, __m256i,
    zero: _mm256_setzero_ps / _mm256_setzero_si256,
    load: _mm256_loadu_ps / _mm256_loadu_si256, store: _mm256_storeu_ps,
    set1: _mm256_set1_ps / _mm256_set1_epi32,
    _mm256_add_ps, _mm256_mul_ps, _mm256_cvtepi32_ps, _mm256_dpbusd_avx_epi32
);

#[cfg(target_arch = "x86_64")]
lanes_kernel!(
    /// [`rows_tokens`] on [`TOKENS_512`] tokens per block with 512-bit vectors (the same f32
    /// operations per lane, so the same bits).
    ///
    /// # Safety
    /// As for [`rows_tokens`], with AVX-512F and AVX-512 VNNI.
    rows_tokens_512, "avx2,f16c,avxvnni,avx512f,avx512vnni", TOKENS_512, __m512, __m512i,
    zero: _mm512_setzero_ps / _mm512_setzero_si512,
    load: _mm512_loadu_ps / _mm512_loadu_si512, store: _mm512_storeu_ps,
    set1: _mm512_set1_ps / _mm512_set1_epi32,
    _mm512_add_ps, _mm512_mul_ps, _mm512_cvtepi32_ps, _mm512_dpbusd_epi32
);
