//! Register-blocked Q4/Q8 kernels with int8 activations: `R` weight rows against `T` quantized
//! activation vectors at once, each weight chunk loaded once for the `T` vectors and each
//! activation chunk once for the `R` rows.
//!
//! Bit-exact with the single-row kernels of [`super::int8`] on every (row, vector) pair: the
//! per-group integer sums are exact whatever the order they are formed in, and each pair's
//! groups are combined into their 8 f32 lanes ([`super::int8`]'s `combine`, lane `k % 8`) and
//! the lanes summed in the same order as there. So a prompt chunk run through
//! [`super::matmul`] gives the same bits as its tokens run one by one through the matvec, and a
//! matvec run through this kernel with `T = 1` the same as one row at a time.

use super::int8::{Isa, QRow, QuantizedX, q4_row_portable, q8_row_portable};

/// Weight rows per block.
pub(crate) const ROWS: usize = 4;
/// Most activation vectors per block.
pub(crate) const TOKENS: usize = 4;

/// `out[r][t] = rows[r] . xs[t]` for `R` rows of one Q4 (`q4`) or Q8 matrix and `T` vectors
/// quantized for it (all of one group size and length).
pub(crate) fn q_block<const R: usize, const T: usize>(
    isa: Isa,
    q4: bool,
    rows: &[QRow<'_>; R],
    xs: &[&QuantizedX; T],
    out: &mut [[f32; T]; R],
) {
    let Some(x0) = xs.first() else { return };
    let (len, group) = (x0.q.len(), x0.group);
    let code_len = if q4 { len / 2 } else { len };
    for x in xs {
        assert!(x.q.len() == len && x.group == group && x.groups() == x0.groups());
    }
    for row in rows {
        assert!(row.codes.len() == code_len && row.scales.len() == 2 * x0.groups());
        assert!(row.biases.len() == row.scales.len());
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` and `Isa::AvxVnni` come only from `Isa::detect`, which checked
        // the CPU has these features; every length the loads rely on is asserted above, and
        // the group is a multiple of 64 (Q4) or 32 (Q8) as the kernels step in 32 bytes.
        Isa::Avx2 if q4 && group.is_multiple_of(64) => unsafe { x86::q4_avx2(rows, xs, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::AvxVnni if q4 && group.is_multiple_of(64) => unsafe { x86::q4_vnni(rows, xs, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 if !q4 && group.is_multiple_of(32) => unsafe { x86::q8_avx2(rows, xs, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::AvxVnni if !q4 && group.is_multiple_of(32) => unsafe {
            x86::q8_vnni(rows, xs, out)
        },
        _ => {
            // The portable kernel gains nothing from blocking: one pair at a time.
            for (row, o) in rows.iter().zip(out.iter_mut()) {
                for (x, v) in xs.iter().zip(o.iter_mut()) {
                    *v = if q4 {
                        q4_row_portable(*row, x)
                    } else {
                        q8_row_portable(*row, x)
                    };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::int8::x86::{combine_block, hsum_ps, hsum8_i32, with_offset};
    use super::{QRow, QuantizedX};
    use core::arch::x86_64::*;

    /// Combines the per-group integer lanes `a[r][t][..n]` of groups `k0..k0 + n` into the f32
    /// lanes of each pair, as the single-row kernels' `drive` does.
    ///
    /// # Safety
    /// The CPU has AVX2 and F16C; the rows and vectors passed `q_block`'s checks and
    /// `k0 + n <= groups`.
    #[target_feature(enable = "avx2,f16c")]
    #[inline]
    #[allow(clippy::too_many_arguments)]
    unsafe fn combine_all<const R: usize, const T: usize>(
        lanes: &mut [[__m256; T]; R],
        a: &[[[__m256i; 8]; T]; R],
        rows: &[QRow<'_>; R],
        xs: &[&QuantizedX; T],
        k0: usize,
        n: usize,
        offset: i32,
    ) {
        for r in 0..R {
            for t in 0..T {
                let isums = with_offset(hsum8_i32(&a[r][t]), xs[t], k0, n, offset);
                // SAFETY: the caller's lengths are those `combine_block` requires.
                lanes[r][t] = unsafe { combine_block(lanes[r][t], isums, rows[r], xs[t], k0, n) };
            }
        }
    }

    /// Generates the Q4 and Q8 block kernels for one instruction set; the fold expressions are
    /// those of the single-row kernels in `int8.rs` (same integer lanes).
    macro_rules! block_kernels {
        ($feat:literal, $q4name:ident, $q8name:ident,
         |$a4:ident, $lo:ident, $hi:ident, $qe:ident, $qo:ident| $q4:expr,
         |$a8:ident, $c:ident, $qx:ident| $q8:expr, $q8_offset:expr) => {
            /// # Safety
            /// The CPU has the kernel's features; `q_block` checked the lengths and the group
            /// (a multiple of 64).
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $q4name<const R: usize, const T: usize>(
                rows: &[QRow<'_>; R],
                xs: &[&QuantizedX; T],
                out: &mut [[f32; T]; R],
            ) {
                let (g, half, groups) = (xs[0].group, xs[0].group / 2, xs[0].groups());
                let m = _mm256_set1_epi8(15);
                let mut lanes = [[_mm256_setzero_ps(); T]; R];
                let mut k0 = 0;
                while k0 < groups {
                    let n = (groups - k0).min(8);
                    let mut a = [[[_mm256_setzero_si256(); 8]; T]; R];
                    for j in 0..n {
                        let k = k0 + j;
                        let mut i = 0;
                        while i < half {
                            let mut lo = [_mm256_setzero_si256(); R];
                            let mut hi = [_mm256_setzero_si256(); R];
                            for r in 0..R {
                                // SAFETY: k * half + i + 32 <= groups * half = codes.len().
                                let c = unsafe {
                                    _mm256_loadu_si256(
                                        rows[r].codes.as_ptr().add(k * half + i).cast(),
                                    )
                                };
                                lo[r] = _mm256_and_si256(c, m);
                                hi[r] = _mm256_and_si256(_mm256_srli_epi16(c, 4), m);
                            }
                            for t in 0..T {
                                // SAFETY: group k of x.q spans k * g..(k + 1) * g, its even and
                                // odd halves `half` codes each, and i + 32 <= half.
                                let ($qe, $qo) = unsafe {
                                    let q = xs[t].q.as_ptr().add(k * g + i);
                                    (
                                        _mm256_loadu_si256(q.cast()),
                                        _mm256_loadu_si256(q.add(half).cast()),
                                    )
                                };
                                for r in 0..R {
                                    let ($a4, $lo, $hi) = (a[r][t][j], lo[r], hi[r]);
                                    a[r][t][j] = $q4;
                                }
                            }
                            i += 32;
                        }
                    }
                    // SAFETY: same features; k0 + n <= groups.
                    unsafe { combine_all(&mut lanes, &a, rows, xs, k0, n, 0) };
                    k0 += 8;
                }
                for r in 0..R {
                    for t in 0..T {
                        out[r][t] = hsum_ps(lanes[r][t]);
                    }
                }
            }

            /// # Safety
            /// As for the Q4 kernel, with the group a multiple of 32.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $q8name<const R: usize, const T: usize>(
                rows: &[QRow<'_>; R],
                xs: &[&QuantizedX; T],
                out: &mut [[f32; T]; R],
            ) {
                let (g, groups) = (xs[0].group, xs[0].groups());
                let mut lanes = [[_mm256_setzero_ps(); T]; R];
                let mut k0 = 0;
                while k0 < groups {
                    let n = (groups - k0).min(8);
                    let mut a = [[[_mm256_setzero_si256(); 8]; T]; R];
                    for j in 0..n {
                        let k = k0 + j;
                        let mut i = 0;
                        while i < g {
                            let mut cs = [_mm256_setzero_si256(); R];
                            for r in 0..R {
                                // SAFETY: k * g + i + 32 <= groups * g = codes.len().
                                cs[r] = unsafe {
                                    _mm256_loadu_si256(rows[r].codes.as_ptr().add(k * g + i).cast())
                                };
                            }
                            for t in 0..T {
                                // SAFETY: k * g + i + 32 <= x.q.len() (= codes.len()).
                                let $qx = unsafe {
                                    _mm256_loadu_si256(xs[t].q.as_ptr().add(k * g + i).cast())
                                };
                                for r in 0..R {
                                    let ($a8, $c) = (a[r][t][j], cs[r]);
                                    a[r][t][j] = $q8;
                                }
                            }
                            i += 32;
                        }
                    }
                    // SAFETY: same features; k0 + n <= groups.
                    unsafe { combine_all(&mut lanes, &a, rows, xs, k0, n, $q8_offset) };
                    k0 += 8;
                }
                for r in 0..R {
                    for t in 0..T {
                        out[r][t] = hsum_ps(lanes[r][t]);
                    }
                }
            }
        };
    }

    block_kernels!(
        "avx2,f16c",
        q4_avx2,
        q8_avx2,
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

    block_kernels!(
        "avx2,f16c,avxvnni",
        q4_vnni,
        q8_vnni,
        |a, lo, hi, qe, qo| _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(a, lo, qe), hi, qo),
        |a, c, qx| _mm256_dpbusd_avx_epi32(a, c, qx),
        0
    );
}
