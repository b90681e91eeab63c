//! The one-vector Q4 block kernel with AVX-512 VNNI (decode's matvecs and routed experts):
//! two groups of 64 per 512-bit step, bit-exact with [`super::block`]'s 256-bit kernel.

use super::block::{Prepared, ROWS};
use super::int8::{QRow, QuantizedX};
use core::arch::x86_64::*;

/// `i32` sums of 8 rows' 512-bit accumulators (row `r` in `a[r]`, group `k` in lanes 0-7
/// and `k + 1` in lanes 8-15), lane `r` for group `k` and `8 + r` for `k + 1`: per
/// 128-bit lane, rows paired by 32-bit then 64-bit unpacks, then the 128-bit lanes of
/// each group added and put in row order.
#[target_feature(enable = "avx512f")]
#[inline]
fn reduce_rows_512(a: &[__m512i; ROWS]) -> __m512i {
    let pair32 = |x, y| _mm512_add_epi32(_mm512_unpacklo_epi32(x, y), _mm512_unpackhi_epi32(x, y));
    let pair64 = |x, y| _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
    // Per 128-bit lane L: rows 0-3 (t0) and 4-7 (t1), summed over L's 4 elements; lanes
    // 0 and 1 hold group k, lanes 2 and 3 group k + 1.
    let t0 = pair64(pair32(a[0], a[1]), pair32(a[2], a[3]));
    let t1 = pair64(pair32(a[4], a[5]), pair32(a[6], a[7]));
    // [k rows 0-3, k + 1 rows 0-3, k rows 4-7, k + 1 rows 4-7], then in row order.
    let w = _mm512_add_epi32(
        _mm512_shuffle_i64x2::<0x88>(t0, t1),
        _mm512_shuffle_i64x2::<0xdd>(t0, t1),
    );
    _mm512_shuffle_i64x2::<0xd8>(w, w)
}

/// `[a; 8] ++ [b; 8]`.
#[target_feature(enable = "avx512f,avx512dq")]
#[inline]
fn halves(a: f32, b: f32) -> __m512 {
    _mm512_insertf32x8::<1>(_mm512_castps256_ps512(_mm256_set1_ps(a)), _mm256_set1_ps(b))
}

/// The Q4 kernel for one vector and groups of 64, two groups per 512-bit step: each
/// row's 64 code bytes of groups `k` and `k + 1` in one load, the vector's even and odd
/// halves of both groups in two registers, the 8 rows' sums reduced at once
/// ([`reduce_rows_512`]) and combined with the rows' scales as `[F[k % 8] | F[(k + 1) % 8]]`
/// (k even), each lane the f32 operations of `block.rs`'s `q4_vnni` in the same order, so the
/// results are bit-exact with it. An odd last group runs in the low halves, the high ones
/// adding zeros (`F + 0 + 0 = F`: lanes are never -0).
///
/// # Safety
/// The CPU has AVX2, F16C, AVX-512 F, BW, DQ, VL and VNNI; `rows_block` checked the lengths,
/// the group is 64, and `p` was prepared for these rows.
#[target_feature(enable = "avx2,f16c,avx512f,avx512bw,avx512dq,avx512vl,avx512vnni")]
pub(super) unsafe fn q4_one_avx512(
    rows: &[QRow<'_>; ROWS],
    x: &QuantizedX,
    p: &Prepared,
    valid: usize,
    o: &mut [f32],
) {
    let groups = x.groups();
    let m = _mm512_set1_epi8(15);
    // Two blocks on, into L2 (more misses in flight than L1's fill buffers allow: this
    // kernel outruns memory, so the distance is what keeps it fed).
    let ahead = 2 * ROWS * rows[0].codes.len();
    let codes: [*const u8; ROWS] = std::array::from_fn(|r| rows[r].codes.as_ptr());
    let mut f = [_mm512_setzero_ps(); 4];
    // Groups k and k + 1 (k = 2 j) into f[j % 4]: `$q` loads a row's codes, `$x` the
    // vector's even and odd halves, `$sb` the rows' scales and biases, `$d` the vector's
    // scales and sums, each as a pair of halves.
    macro_rules! step {
        ($fj:expr, $k:expr, |$r:ident| $q:expr, $x:expr, $sb:expr, $d:expr) => {{
            let k: usize = $k;
            let (qe, qo) = $x;
            let acc: [__m512i; ROWS] = std::array::from_fn(|$r| {
                let c = $q;
                let lo = _mm512_and_si512(c, m);
                let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(c), m);
                _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, qe), hi, qo)
            });
            let isums = reduce_rows_512(&acc);
            let (s, b) = $sb;
            let (d, sums) = $d;
            let t1 = _mm512_mul_ps(_mm512_mul_ps(s, d), _mm512_cvtepi32_ps(isums));
            $fj = _mm512_add_ps(_mm512_add_ps($fj, t1), _mm512_mul_ps(b, sums));
            let _ = k;
        }};
    }
    for j in 0..groups / 2 {
        let k = 2 * j;
        for c in &codes {
            // A prefetch is only a hint: it never faults, whatever the address.
            _mm_prefetch::<_MM_HINT_T1>(c.wrapping_add(ahead + k * 32).cast());
        }
        step!(
            f[j % 4],
            k,
            // SAFETY: row codes k * 32..(k + 2) * 32 <= groups * 32 = codes.len().
            |r| unsafe { _mm512_loadu_si512(codes[r].add(k * 32).cast()) },
            // SAFETY: groups k and k + 1 of x.q span k * 64..(k + 2) * 64 <= x.q.len().
            unsafe {
                let q = x.q.as_ptr().add(k * 64);
                let z0 = _mm512_loadu_si512(q.cast());
                let z1 = _mm512_loadu_si512(q.add(64).cast());
                (
                    _mm512_shuffle_i64x2::<0x44>(z0, z1),
                    _mm512_shuffle_i64x2::<0xee>(z0, z1),
                )
            },
            // SAFETY: p.s and p.b hold groups * ROWS floats; (k + 2) * ROWS <= that.
            unsafe {
                (
                    _mm512_loadu_ps(p.s.as_ptr().add(k * ROWS)),
                    _mm512_loadu_ps(p.b.as_ptr().add(k * ROWS)),
                )
            },
            (halves(x.d[k], x.d[k + 1]), halves(x.sums[k], x.sums[k + 1]))
        );
    }
    if groups % 2 == 1 {
        let k = groups - 1;
        step!(
            f[(k / 2) % 4],
            k,
            // SAFETY: row codes k * 32..(k + 1) * 32 = the row's last 32 bytes.
            |r| unsafe { _mm512_zextsi256_si512(_mm256_loadu_si256(codes[r].add(k * 32).cast())) },
            // SAFETY: group k of x.q spans k * 64..(k + 1) * 64 = x.q.len().
            unsafe {
                let z0 = _mm512_loadu_si512(x.q.as_ptr().add(k * 64).cast());
                (
                    _mm512_zextsi256_si512(_mm512_castsi512_si256(z0)),
                    _mm512_zextsi256_si512(_mm512_extracti64x4_epi64::<1>(z0)),
                )
            },
            // SAFETY: p.s and p.b hold ROWS floats from k * ROWS.
            unsafe {
                (
                    _mm512_zextps256_ps512(_mm256_loadu_ps(p.s.as_ptr().add(k * ROWS))),
                    _mm512_zextps256_ps512(_mm256_loadu_ps(p.b.as_ptr().add(k * ROWS))),
                )
            },
            (
                _mm512_zextps256_ps512(_mm256_set1_ps(x.d[k])),
                _mm512_zextps256_ps512(_mm256_set1_ps(x.sums[k]))
            )
        );
    }
    // [(F0 + F4) + (F2 + F6) | (F1 + F5) + (F3 + F7)], then the halves added.
    let c = _mm512_add_ps(_mm512_add_ps(f[0], f[2]), _mm512_add_ps(f[1], f[3]));
    let v = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps::<1>(c));
    let o = &mut o[..valid];
    // SAFETY: `o` holds `valid` <= 8 floats; the mask stores only those.
    unsafe { _mm256_mask_storeu_ps(o.as_mut_ptr(), ((1u16 << valid) - 1) as __mmask8, v) };
}
