//! Q4/Q8 matvec rows with int8-quantized activations, as ggml does.
//!
//! `x` is quantized once per matvec ([`QuantizedX::quantize`]): per weight group of `g`
//! columns, `x_j ~ d * qx_j` with `d = max|x| / 127` and `qx_j = round(x_j / d)` in `-127..=127`.
//! A row's dot product is then, per group,
//! `scale * d * sum_j q_j qx_j + bias * sum_j x_j`: the code-times-activation sum is an exact
//! integer dot product (AVX2 `maddubs`+`madd`, or AVX-VNNI `dpbusd`), and the bias term uses the
//! exact f32 sum of `x` over the group, so only the scale term carries the activation rounding:
//! `|error| <= sum_g (d_g / 2) * sum_{j in g} |scale_g * q_j|` ([`error_bound`]).
//!
//! Every kernel (portable and SIMD) computes the same per-group integer sums and combines them
//! with the same scalar f32 operations in the same order ([`combine`]), so all are bit-exact.
//! For 4-bit codes the activations of each group are stored even columns first, then odd
//! columns, so low and high nibbles of a run of code bytes meet contiguous activations.

use crate::quant::f16_at;

/// Which integer-dot instructions the row kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Plain Rust (any CPU).
    Portable,
    /// AVX2 `vpmaddubsw` + `vpmaddwd` (x86_64).
    Avx2,
    /// AVX-VNNI `vpdpbusd` on 256-bit vectors (x86_64).
    AvxVnni,
    /// AVX-VNNI, plus AVX-512 VNNI for the one-vector Q4 block kernel (two groups per
    /// 512-bit step); every other kernel is [`Isa::AvxVnni`]'s.
    Avx512Vnni,
}

impl Isa {
    /// The best the running CPU supports.
    pub(crate) fn detect() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx2") && has!("f16c") {
                let avx512 =
                    has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vnni");
                return if has!("avxvnni") && avx512 {
                    Isa::Avx512Vnni
                } else if has!("avxvnni") {
                    Isa::AvxVnni
                } else {
                    Isa::Avx2
                };
            }
        }
        Isa::Portable
    }

    /// Every kernel set the running CPU can run (tests compare them).
    #[cfg(test)]
    pub(crate) fn all_available() -> Vec<Isa> {
        let best = Isa::detect();
        let mut v = vec![Isa::Portable];
        if best != Isa::Portable {
            v.push(Isa::Avx2);
        }
        if best.vnni() {
            v.push(Isa::AvxVnni);
        }
        if best == Isa::Avx512Vnni {
            v.push(Isa::Avx512Vnni);
        }
        v
    }

    /// Whether the 256-bit AVX-VNNI kernels run (both VNNI sets).
    pub(crate) fn vnni(self) -> bool {
        matches!(self, Isa::AvxVnni | Isa::Avx512Vnni)
    }
}

/// An activation vector quantized to int8 per group, with the exact f32 group sums.
#[derive(Clone, Debug, Default)]
pub(crate) struct QuantizedX {
    /// Codes, group after group (4-bit layout: each group's even columns, then its odd ones).
    pub(super) q: Vec<i8>,
    /// Scale `d` of each group.
    pub(super) d: Vec<f32>,
    /// Exact f32 sum of `x` over each group (the bias term).
    pub(super) sums: Vec<f32>,
    /// Integer sum of the codes of each group.
    pub(super) qsums: Vec<i32>,
    /// Columns per group.
    pub(super) group: usize,
}

impl QuantizedX {
    /// Groups held.
    pub(crate) fn groups(&self) -> usize {
        self.d.len()
    }
}

/// One group's contribution added to `acc`: the same scalar f32 operations in every kernel.
#[inline(always)]
pub(super) fn combine(acc: f32, scale: f32, bias: f32, d: f32, isum: i32, xsum: f32) -> f32 {
    acc + (scale * d) * isum as f32 + bias * xsum
}

/// A row of a quantized matrix: its codes and its f16 scales and biases.
#[derive(Clone, Copy)]
pub(crate) struct QRow<'a> {
    /// `cols` bytes (Q8) or `cols / 2` bytes (Q4).
    pub codes: &'a [u8],
    /// `cols / group` f16 scales.
    pub scales: &'a [u8],
    /// `cols / group` f16 biases.
    pub biases: &'a [u8],
}

/// `row . x` for a Q4 row.
pub(crate) fn q4_row(isa: Isa, row: QRow<'_>, x: &QuantizedX) -> f32 {
    let g = x.group;
    assert!(row.codes.len() * 2 == x.q.len() && row.scales.len() == 2 * x.groups());
    assert!(row.biases.len() == row.scales.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and the VNNI variants come only from `Isa::detect`, which checked
        // the CPU has these features; the lengths the loads rely on are asserted above.
        Isa::Avx2 if g.is_multiple_of(64) => unsafe { x86::q4_row_avx2(row, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::AvxVnni | Isa::Avx512Vnni if g.is_multiple_of(64) => unsafe {
            x86::q4_row_vnni(row, x)
        },
        _ => q4_row_portable(row, x),
    }
}

/// `row . x` for a Q8 row.
pub(crate) fn q8_row(isa: Isa, row: QRow<'_>, x: &QuantizedX) -> f32 {
    let g = x.group;
    assert!(row.codes.len() == x.q.len() && row.scales.len() == 2 * x.groups());
    assert!(row.biases.len() == row.scales.len());
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: see `q4_row`.
        Isa::Avx2 if g.is_multiple_of(32) => unsafe { x86::q8_row_avx2(row, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: see `q4_row`.
        Isa::AvxVnni | Isa::Avx512Vnni if g.is_multiple_of(32) => unsafe {
            x86::q8_row_vnni(row, x)
        },
        _ => q8_row_portable(row, x),
    }
}

/// Integer sum of group `k` of a Q4 row against `x`.
pub(super) fn q4_isum(row: QRow<'_>, x: &QuantizedX, k: usize) -> i32 {
    let (g, half) = (x.group, x.group / 2);
    let codes = &row.codes[k * half..(k + 1) * half];
    let (qe, qo) = x.q[k * g..(k + 1) * g].split_at(half);
    codes
        .iter()
        .zip(qe.iter().zip(qo))
        .map(|(&c, (&e, &o))| i32::from(c & 15) * i32::from(e) + i32::from(c >> 4) * i32::from(o))
        .sum()
}

/// Integer sum of group `k` of a Q8 row against `x`.
pub(super) fn q8_isum(row: QRow<'_>, x: &QuantizedX, k: usize) -> i32 {
    let g = x.group;
    row.codes[k * g..(k + 1) * g]
        .iter()
        .zip(&x.q[k * g..(k + 1) * g])
        .map(|(&c, &q)| i32::from(c) * i32::from(q))
        .sum()
}

/// Combines per-group integer sums into the row's value in the order the SIMD kernels use:
/// group `k` accumulates in lane `k % 8` (`lane + (scale d) isum + bias xsum`), then the lanes
/// are summed as `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`.
fn combine_row(row: QRow<'_>, x: &QuantizedX, isum: impl Fn(usize) -> i32) -> f32 {
    let mut l = [0f32; 8];
    for k in 0..x.groups() {
        l[k % 8] = combine(
            l[k % 8],
            f16_at(row.scales, k),
            f16_at(row.biases, k),
            x.d[k],
            isum(k),
            x.sums[k],
        );
    }
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}

pub(super) fn q4_row_portable(row: QRow<'_>, x: &QuantizedX) -> f32 {
    combine_row(row, x, |k| q4_isum(row, x, k))
}

pub(super) fn q8_row_portable(row: QRow<'_>, x: &QuantizedX) -> f32 {
    combine_row(row, x, |k| q8_isum(row, x, k))
}

/// The bound on `|row . x_quantized - row . x|` from rounding `x` to int8 (see the module doc);
/// `w` is the row's dequantized weights without bias, i.e. `scale * q`.
#[cfg(test)]
pub(crate) fn error_bound(scaled_codes: &[f32], x: &QuantizedX) -> f64 {
    scaled_codes
        .chunks_exact(x.group)
        .zip(&x.d)
        .map(|(w, &d)| f64::from(d) / 2.0 * w.iter().map(|v| f64::from(v.abs())).sum::<f64>())
        .sum()
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::{QRow, QuantizedX};
    use core::arch::x86_64::*;

    /// The 8 lane sums of `a[0..8]`, in order, as one vector.
    #[target_feature(enable = "avx2")]
    pub(in crate::cpu) fn hsum8_i32(a: &[__m256i; 8]) -> __m256i {
        let t0 = _mm256_hadd_epi32(a[0], a[1]);
        let t1 = _mm256_hadd_epi32(a[2], a[3]);
        let t2 = _mm256_hadd_epi32(a[4], a[5]);
        let t3 = _mm256_hadd_epi32(a[6], a[7]);
        // u0 = [a0 a1 a2 a3 (low 128 halves) | a0 a1 a2 a3 (high halves)], u1 likewise a4..a7.
        let u0 = _mm256_hadd_epi32(t0, t1);
        let u1 = _mm256_hadd_epi32(t2, t3);
        _mm256_add_epi32(
            _mm256_permute2x128_si256(u0, u1, 0x20),
            _mm256_permute2x128_si256(u0, u1, 0x31),
        )
    }

    /// `lanes + (scale d) isum + bias xsum` for 8 groups, from 16 bytes of f16 scales and of
    /// biases and 8 floats of `d` and of sums (the order of `combine_row`; mul and add kept
    /// apart, no FMA, so it rounds as the scalar code). A lane whose inputs are all zero is
    /// left unchanged (`lane + 0 + 0`; lanes are never -0).
    ///
    /// # Safety
    /// Each pointer is valid for its 16 or 32 bytes.
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn combine8(
        lanes: __m256,
        isums: __m256i,
        scales: *const u8,
        biases: *const u8,
        d: *const f32,
        sums: *const f32,
    ) -> __m256 {
        // SAFETY: the caller guarantees the 16- and 32-byte reads.
        unsafe {
            let s = _mm256_cvtph_ps(_mm_loadu_si128(scales.cast()));
            let b = _mm256_cvtph_ps(_mm_loadu_si128(biases.cast()));
            let d = _mm256_loadu_ps(d);
            let xs = _mm256_loadu_ps(sums);
            let t1 = _mm256_mul_ps(_mm256_mul_ps(s, d), _mm256_cvtepi32_ps(isums));
            _mm256_add_ps(_mm256_add_ps(lanes, t1), _mm256_mul_ps(b, xs))
        }
    }

    /// `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`, as `combine_row`.
    #[target_feature(enable = "avx2")]
    pub(in crate::cpu) fn hsum_ps(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Generates a Q4 and a Q8 row kernel for one instruction set: `$q4` folds 32 code bytes
    /// (low nibbles against `qe`, high against `qo`) into i32 lanes, `$q8` folds 32 codes.
    macro_rules! kernels {
        ($feat:literal, $q4name:ident, $q8name:ident,
         |$a4:ident, $lo:ident, $hi:ident, $qe:ident, $qo:ident| $q4:expr,
         |$a8:ident, $c:ident, $qx:ident| $q8:expr, $q8_offset:expr) => {
            /// # Safety
            /// The CPU must have the kernel's features; `q4_row` checked the lengths
            /// (`codes.len() * 2 == x.q.len()`, scales and biases of `x.groups()`) and the
            /// group (a multiple of 64).
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $q4name(row: QRow<'_>, x: &QuantizedX) -> f32 {
                let (g, half) = (x.group, x.group / 2);
                let m = _mm256_set1_epi8(15);
                let group = |k: usize| {
                    let mut $a4 = _mm256_setzero_si256();
                    let mut i = 0;
                    while i < half {
                        // SAFETY: k * half + i + 32 <= groups * half = codes.len(), and the
                        // activations of group k span k * g..(k + 1) * g of x.q, whose even
                        // and odd halves hold `half` codes each (i + 32 <= half).
                        unsafe {
                            let c = _mm256_loadu_si256(row.codes.as_ptr().add(k * half + i).cast());
                            let $lo = _mm256_and_si256(c, m);
                            let $hi = _mm256_and_si256(_mm256_srli_epi16(c, 4), m);
                            let q = x.q.as_ptr().add(k * g + i);
                            let $qe = _mm256_loadu_si256(q.cast());
                            let $qo = _mm256_loadu_si256(q.add(half).cast());
                            $a4 = $q4;
                        }
                        i += 32;
                    }
                    $a4
                };
                // SAFETY: same features; the lengths are as `drive` requires.
                unsafe { drive(row, x, group, 0) }
            }

            /// # Safety
            /// As for the Q4 kernel, with `codes.len() == x.q.len()` and the group a multiple
            /// of 32.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $q8name(row: QRow<'_>, x: &QuantizedX) -> f32 {
                let g = x.group;
                let group = |k: usize| {
                    let mut $a8 = _mm256_setzero_si256();
                    let mut i = 0;
                    while i < g {
                        // SAFETY: k * g + i + 32 <= groups * g = codes.len() = x.q.len().
                        unsafe {
                            let $c = _mm256_loadu_si256(row.codes.as_ptr().add(k * g + i).cast());
                            let $qx = _mm256_loadu_si256(x.q.as_ptr().add(k * g + i).cast());
                            $a8 = $q8;
                        }
                        i += 32;
                    }
                    $a8
                };
                // SAFETY: same features; the lengths are as `drive` requires.
                unsafe { drive(row, x, group, $q8_offset) }
            }
        };
    }

    /// `lanes` combined with the integer sums `isums` of groups `k0..k0 + n` (`n <= 8`) of
    /// `row` against `x` ([`combine8`] on the row's scales and biases, or on zero-padded copies
    /// for a last, partial block: padded lanes add exactly 0).
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; `row.scales`/`row.biases` hold `x.groups()` f16 each and
    /// `k0 + n <= x.groups()`.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    pub(in crate::cpu) unsafe fn combine_block(
        lanes: __m256,
        isums: __m256i,
        row: QRow<'_>,
        x: &QuantizedX,
        k0: usize,
        n: usize,
    ) -> __m256 {
        if n == 8 {
            // SAFETY: groups k0..k0 + 8 exist: 16 bytes of scales and biases (2 per group)
            // and 8 floats of d and sums from k0.
            unsafe {
                combine8(
                    lanes,
                    isums,
                    row.scales.as_ptr().add(2 * k0),
                    row.biases.as_ptr().add(2 * k0),
                    x.d.as_ptr().add(k0),
                    x.sums.as_ptr().add(k0),
                )
            }
        } else {
            let (mut sc, mut bi) = ([0u8; 16], [0u8; 16]);
            sc[..2 * n].copy_from_slice(&row.scales[2 * k0..2 * (k0 + n)]);
            bi[..2 * n].copy_from_slice(&row.biases[2 * k0..2 * (k0 + n)]);
            let (mut d, mut sums) = ([0f32; 8], [0f32; 8]);
            d[..n].copy_from_slice(&x.d[k0..k0 + n]);
            sums[..n].copy_from_slice(&x.sums[k0..k0 + n]);
            // SAFETY: the four arrays hold 16 bytes and 8 floats.
            unsafe {
                combine8(
                    lanes,
                    isums,
                    sc.as_ptr(),
                    bi.as_ptr(),
                    d.as_ptr(),
                    sums.as_ptr(),
                )
            }
        }
    }

    /// `isums + offset * qsums[k0..k0 + n]` (lanes past `n` unchanged): the AVX2 Q8 kernels'
    /// shift of the codes by 128, added back in integers.
    #[target_feature(enable = "avx2")]
    #[inline]
    pub(in crate::cpu) fn with_offset(
        isums: __m256i,
        x: &QuantizedX,
        k0: usize,
        n: usize,
        offset: i32,
    ) -> __m256i {
        if offset == 0 {
            return isums;
        }
        let mut qs = [0i32; 8];
        qs[..n].copy_from_slice(&x.qsums[k0..k0 + n]);
        // SAFETY: `qs` holds 8 i32.
        let qs = unsafe { _mm256_loadu_si256(qs.as_ptr().cast()) };
        _mm256_add_epi32(isums, _mm256_mullo_epi32(qs, _mm256_set1_epi32(offset)))
    }

    /// Runs `group(k)` (a group's i32 lanes) over a row and combines as `combine_row`;
    /// `offset * qsums[k]` is added to each group's integer sum.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; `row.scales`/`row.biases` hold `x.groups()` f16 each;
    /// `group` reads only inside the row.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    unsafe fn drive(
        row: QRow<'_>,
        x: &QuantizedX,
        group: impl Fn(usize) -> __m256i,
        offset: i32,
    ) -> f32 {
        let groups = x.groups();
        let mut lanes = _mm256_setzero_ps();
        let mut k0 = 0;
        while k0 < groups {
            let n = (groups - k0).min(8);
            let a: [__m256i; 8] = std::array::from_fn(|j| {
                if j < n {
                    group(k0 + j)
                } else {
                    _mm256_setzero_si256()
                }
            });
            let isums = with_offset(hsum8_i32(&a), x, k0, n, offset);
            // SAFETY: the caller's lengths are those `combine_block` requires.
            lanes = unsafe { combine_block(lanes, isums, row, x, k0, n) };
            k0 += 8;
        }
        hsum_ps(lanes)
    }

    // AVX2: u8 x i8 pairs to i16 (`maddubs`, at most 2 * 15 * 127 for nibbles), then to i32.
    // Q8 codes go up to 255, which could saturate `maddubs`: they are shifted to `q - 128`
    // (signed) and multiplied as |q - 128| x sign(qx, q - 128) (at most 2 * 128 * 127), and
    // 128 * sum(qx) is added back in integers.
    kernels!(
        "avx2,f16c",
        q4_row_avx2,
        q8_row_avx2,
        |a, lo, hi, qe, qo| _mm256_add_epi32(
            a,
            _mm256_madd_epi16(
                _mm256_add_epi16(_mm256_maddubs_epi16(lo, qe), _mm256_maddubs_epi16(hi, qo)),
                _mm256_set1_epi16(1)
            )
        ),
        |a, c, qx| {
            let s = _mm256_xor_si256(c, _mm256_set1_epi8(-128));
            let p = _mm256_maddubs_epi16(_mm256_abs_epi8(s), _mm256_sign_epi8(qx, s));
            _mm256_add_epi32(a, _mm256_madd_epi16(p, _mm256_set1_epi16(1)))
        },
        128
    );

    // AVX-VNNI: u8 x i8 quadruples accumulated straight into i32 lanes, no saturation.
    kernels!(
        "avx2,f16c,avxvnni",
        q4_row_vnni,
        q8_row_vnni,
        |a, lo, hi, qe, qo| _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(a, lo, qe), hi, qo),
        |a, c, qx| _mm256_dpbusd_avx_epi32(a, c, qx),
        0
    );
}
