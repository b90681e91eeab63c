//! A block's scales and biases for the multi-row kernels of [`super::block`]: each of its
//! [`ROWS`] rows' f16 values converted to f32 and put in `[group][row]` order, so that a
//! kernel step loads the 8 rows' values of a group (or of two, in 512-bit steps) as one vector.
//! The f32 values are exact conversions either way, so every path gives the same bits.

use super::block::{Prepared, ROWS};
use super::int8::QRow;
use core::arch::x86_64::*;

/// Hints the next block's scales and biases (the next `ROWS` rows': consecutive in a
/// matrix), like its codes in the kernels: without it each block's first loads of them
/// wait on memory.
#[inline]
fn prefetch_scales(rows: &[QRow<'_>; ROWS]) {
    let span = ROWS * rows[0].scales.len();
    for src in [rows[0].scales, rows[0].biases] {
        for off in (0..span).step_by(64) {
            // SAFETY: SSE is baseline on x86_64; a prefetch is only a hint: it never
            // faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(src.as_ptr().wrapping_add(span + off).cast()) };
        }
    }
}

/// The body of [`prepare`]: per 8 groups, `$load(src, k0, n)` gives
/// a row's `n` (at most 8) f16 values from group `k0` as 16 bytes (zeros past `n`), then
/// an 8 x 8 transpose into `[group][row]`.
macro_rules! prepare_body {
    ($rows:ident, $groups:ident, $p:ident, |$src:ident, $k0:ident, $n:ident| $load:expr) => {{
        prefetch_scales($rows);
        let mut $k0 = 0;
        while $k0 < $groups {
            let $n = ($groups - $k0).min(8);
            for (bias, dst) in [(false, &mut $p.s), (true, &mut $p.b)] {
                let v: [__m256; 8] = std::array::from_fn(|r| {
                    let $src: &[u8] = if bias {
                        $rows[r].biases
                    } else {
                        $rows[r].scales
                    };
                    _mm256_cvtph_ps($load)
                });
                // All 8 columns, as 8 stores: columns past `groups` land in the padding
                // `with_prepared` adds (never read). A loop over the first `n` compiled to
                // a spill and a `memcpy` call per run (8% of a decode step's time).
                let [t0, t1, t2, t3, t4, t5, t6, t7] = transpose8(v);
                // SAFETY: k0 + 8 <= groups rounded up to 8, and `dst` holds that many
                // groups of ROWS floats (`with_prepared`).
                unsafe {
                    let at = dst.as_mut_ptr().add($k0 * ROWS);
                    _mm256_storeu_ps(at, t0);
                    _mm256_storeu_ps(at.add(ROWS), t1);
                    _mm256_storeu_ps(at.add(2 * ROWS), t2);
                    _mm256_storeu_ps(at.add(3 * ROWS), t3);
                    _mm256_storeu_ps(at.add(4 * ROWS), t4);
                    _mm256_storeu_ps(at.add(5 * ROWS), t5);
                    _mm256_storeu_ps(at.add(6 * ROWS), t6);
                    _mm256_storeu_ps(at.add(7 * ROWS), t7);
                }
            }
            $k0 += 8;
        }
    }};
}

/// Fills `p.s` and `p.b` (`[group][row]` f32) from the rows' f16 scales and biases: per 8
/// groups, each row's 8 values converted at once, then an 8 x 8 transpose.
///
/// # Safety
/// The CPU has AVX2 and F16C; each row holds `groups` scales and biases; `p.s` and `p.b`
/// hold `groups.next_multiple_of(8) * ROWS` floats.
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn prepare(rows: &[QRow<'_>; ROWS], groups: usize, p: &mut Prepared) {
    prepare_body!(rows, groups, p, |src, k0, n| if n == 8 {
        // SAFETY: groups k0..k0 + 8 exist: 16 bytes from 2 * k0.
        unsafe { _mm_loadu_si128(src.as_ptr().add(2 * k0).cast()) }
    } else {
        let mut h = [0u8; 16];
        h[..2 * n].copy_from_slice(&src[2 * k0..2 * (k0 + n)]);
        // SAFETY: `h` holds 16 bytes.
        unsafe { _mm_loadu_si128(h.as_ptr().cast()) }
    })
}

/// [`prepare`] by AVX-512 permutes of the f16 values, before they are converted: per 8
/// groups, the 8 rows' values (masked loads: the 30B experts' down rows have 12 groups,
/// so every block has a partial run) in two registers of 4 rows, two 16-bit permutes
/// into `[group][row]`, and 4 conversions of 2 groups each straight into place: about a
/// third of the shuffles of [`prepare`]'s f32 transpose, on the port the kernels'
/// reductions also need (a hot 768 x 2048 matvec ran 1.16x faster with no prepare at
/// all). The f32 values are the same (each f16 converts exactly either way).
///
/// # Safety
/// As for [`prepare`], and the CPU has AVX-512 F, BW and VL.
#[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn prepare_avx512(rows: &[QRow<'_>; ROWS], groups: usize, p: &mut Prepared) {
    prefetch_scales(rows);
    // Word `g * 8 + r` of the result takes row `r`'s group `g` (of 4): row `r < 4` is word
    // `8 r + g` of the first source, row `r >= 4` word `8 (r - 4) + g` of the second
    // (indices 32 and up). `LOW` takes groups 0-3 of the run, `HIGH` groups 4-7.
    const fn index(first: usize) -> [i16; 32] {
        let mut ix = [0i16; 32];
        let mut i = 0;
        while i < 32 {
            let (g, r) = (first + i / 8, i % 8);
            ix[i] = if r < 4 {
                8 * r + g
            } else {
                32 + 8 * (r - 4) + g
            } as i16;
            i += 1;
        }
        ix
    }
    const LOW: [i16; 32] = index(0);
    const HIGH: [i16; 32] = index(4);
    // SAFETY: 32 i16 are 64 bytes.
    let (low, high) = unsafe {
        (
            _mm512_loadu_si512(LOW.as_ptr().cast()),
            _mm512_loadu_si512(HIGH.as_ptr().cast()),
        )
    };
    let mut k0 = 0;
    while k0 < groups {
        // The low n of 8 lanes.
        let mask = ((1u16 << (groups - k0).min(8)) - 1) as __mmask8;
        for (bias, dst) in [(false, &mut p.s), (true, &mut p.b)] {
            let load = |r: usize| {
                let row: &[u8] = if bias { rows[r].biases } else { rows[r].scales };
                // SAFETY: the unmasked values are groups k0..k0 + n of the row, inside
                // its 2 * groups bytes; masked-out ones are not read.
                unsafe { _mm_maskz_loadu_epi16(mask, row.as_ptr().add(2 * k0).cast()) }
            };
            let four = |r: usize| {
                let lo = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(load(r)), load(r + 1));
                let hi =
                    _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(load(r + 2)), load(r + 3));
                _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
            };
            let (a, b) = (four(0), four(4));
            let runs = [
                _mm512_permutex2var_epi16(a, low, b),
                _mm512_permutex2var_epi16(a, high, b),
            ];
            // SAFETY: k0 + 8 <= groups rounded up to 8, and `dst` holds that many groups
            // of ROWS floats (`with_prepared`): columns past `groups` land in that padding
            // (never read).
            unsafe {
                let at = dst.as_mut_ptr().add(k0 * ROWS);
                for (i, run) in runs.into_iter().enumerate() {
                    let (lo, hi) = (
                        _mm512_castsi512_si256(run),
                        _mm512_extracti64x4_epi64::<1>(run),
                    );
                    _mm512_storeu_ps(at.add(32 * i), _mm512_cvtph_ps(lo));
                    _mm512_storeu_ps(at.add(32 * i + 16), _mm512_cvtph_ps(hi));
                }
            }
        }
        k0 += 8;
    }
}

/// The transpose of an 8 x 8 f32 matrix held as 8 row vectors.
#[target_feature(enable = "avx2")]
#[inline]
fn transpose8(v: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(v[0], v[1]);
    let t1 = _mm256_unpackhi_ps(v[0], v[1]);
    let t2 = _mm256_unpacklo_ps(v[2], v[3]);
    let t3 = _mm256_unpackhi_ps(v[2], v[3]);
    let t4 = _mm256_unpacklo_ps(v[4], v[5]);
    let t5 = _mm256_unpackhi_ps(v[4], v[5]);
    let t6 = _mm256_unpacklo_ps(v[6], v[7]);
    let t7 = _mm256_unpackhi_ps(v[6], v[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xee>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xee>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xee>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xee>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}
