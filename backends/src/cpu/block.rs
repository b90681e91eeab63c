//! Multi-row Q4/Q8 kernels with int8 activations: [`ROWS`] weight rows at a time against one
//! or several quantized activation vectors, for the matvec (one vector), the routed experts
//! and the matmul of a prompt chunk (every vector of the chunk while the rows are in L1).
//!
//! The single-row kernels of [`super::int8`] put a row's groups in the 8 lanes of a vector
//! (group `k` in lane `k % 8`) and sum the lanes at the end. Here the lanes are the 8 *rows*:
//! per group `k`, the rows' integer sums come out of one horizontal sum of 8 accumulators, and
//! are combined with the 8 rows' scales and biases into `F[k % 8]`, a vector whose lane `r`
//! is row `r`'s lane `k % 8`; the row's value is `((F0 + F4) + (F2 + F6)) + ((F1 + F5) + (F3 +
//! F7))` in lane `r`. Each row sees exactly the f32 operations of the single-row kernel in the
//! same order (the integer sums are exact in any order), so the results are bit-exact with it
//! on every ISA, and a row whose group count is not a multiple of 8 needs no padding. What is
//! saved: each activation chunk is loaded once for 8 rows, one horizontal sum per group serves
//! 8 rows, and per-row call and tail overheads are gone (rows of the 30B experts' down
//! projection are only 12 groups long). For several vectors, the 8 rows' scales and biases are
//! converted once and 4-bit codes unpacked once, then reused for every vector.

use super::int8::{Isa, QRow, QuantizedX, q4_row_portable, q8_row_portable};
use std::cell::RefCell;

/// Weight rows per block.
pub(crate) const ROWS: usize = 8;

/// One block's rows prepared for every vector: scales and biases as f32 `[group][row]`, and
/// for Q4 each row's codes unpacked to bytes (`[row][low nibbles | high nibbles]` per group).
#[derive(Default)]
pub(super) struct Prepared {
    pub(super) s: Vec<f32>,
    pub(super) b: Vec<f32>,
    codes: Vec<u8>,
}

thread_local! {
    static PREPARED: RefCell<Prepared> = RefCell::new(Prepared::default());
}

/// Runs `f` on the calling thread's [`Prepared`] buffers (fresh ones when re-entered by a
/// nested parallel job), with room for `groups` groups of scales and biases.
fn with_prepared<R>(groups: usize, f: impl FnOnce(&mut Prepared) -> R) -> R {
    PREPARED.with(|cell| {
        let mut fresh = Prepared::default();
        let mut held = cell.try_borrow_mut();
        let p = match &mut held {
            Ok(p) => &mut **p,
            Err(_) => &mut fresh,
        };
        // Padded to a whole run of 8 groups: the prepares store 8 groups at a time.
        let padded = groups.next_multiple_of(8) * ROWS;
        p.s.resize(padded, 0.0);
        p.b.resize(padded, 0.0);
        f(p)
    })
}

/// `o[r * n + t] = rows[r] . xs[t]` for the first `valid` rows (`n = xs.len()`), for one block
/// of [`ROWS`] rows of a Q4 (`q4`) or Q8 matrix (rows past `valid` may repeat a row; their
/// values are not stored) and vectors quantized for it (all of one group size and length).
pub(crate) fn rows_block(
    isa: Isa,
    q4: bool,
    rows: &[QRow<'_>; ROWS],
    xs: &[QuantizedX],
    valid: usize,
    o: &mut [f32],
) {
    let n = xs.len();
    let Some(x0) = xs.first() else { return };
    let (len, group, groups) = (x0.q.len(), x0.group, x0.groups());
    assert!(valid <= ROWS && o.len() >= valid * n);
    assert!(x0.d.len() == groups && x0.sums.len() == groups && x0.qsums.len() == groups);
    for x in xs {
        assert!(x.q.len() == len && x.group == group && x.groups() == groups);
        assert!(x.sums.len() == groups && x.qsums.len() == groups);
    }
    let code_len = if q4 { len / 2 } else { len };
    for row in rows {
        assert!(row.codes.len() == code_len && row.scales.len() == 2 * groups);
        assert!(row.biases.len() == row.scales.len());
    }
    let simd = match isa {
        Isa::Portable => false,
        _ => group.is_multiple_of(if q4 { 64 } else { 32 }),
    };
    if !simd {
        for (r, row) in rows.iter().take(valid).enumerate() {
            for (t, x) in xs.iter().enumerate() {
                o[r * n + t] = if q4 {
                    q4_row_portable(*row, x)
                } else {
                    q8_row_portable(*row, x)
                };
            }
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    with_prepared(groups, |p| {
        let unpack = q4 && n > 1;
        if unpack {
            p.codes.resize(ROWS * len, 0);
        }
        // What the kernels need: AVX2 and F16C (every non-portable `isa`), AVX-VNNI (both VNNI
        // variants), AVX-512 F, BW, DQ, VL and VNNI and a group of exactly 64 (the 512-bit one).
        // SAFETY: `Isa::detect` found those features for `isa`; every length the kernels rely
        // on is asserted above, `p`'s buffers were sized just now, and the group is a multiple
        // of 64 (Q4) or 32 (Q8), and 64 where the 512-bit kernel is chosen.
        unsafe {
            if isa == Isa::Avx512Vnni {
                super::block_prepare::prepare_avx512(rows, groups, p);
            } else {
                super::block_prepare::prepare(rows, groups, p);
            }
            if unpack {
                x86::unpack(rows, len / 2, &mut p.codes);
            }
            match (isa, q4) {
                (Isa::Avx512Vnni, true) if n == 1 && group == 64 => {
                    super::block_avx512::q4_one_avx512(rows, x0, p, valid, o)
                }
                (Isa::AvxVnni | Isa::Avx512Vnni, true) => {
                    x86::q4_vnni(rows, xs, p, unpack, valid, o)
                }
                (Isa::AvxVnni | Isa::Avx512Vnni, false) => x86::q8_vnni(rows, xs, p, valid, o),
                (_, true) => x86::q4_avx2(rows, xs, p, unpack, valid, o),
                (_, false) => x86::q8_avx2(rows, xs, p, valid, o),
            }
        }
    });
}

/// Rows of one block (as [`rows_block`]) against every block of tokens of `xs`, with the
/// tokens-in-lanes kernels of [`super::lanes`] (the caller chose the width with
/// [`super::lanes::width`]):
/// scales converted and Q4 codes unpacked once, then each token block in turn.
#[cfg(target_arch = "x86_64")]
pub(crate) fn rows_block_lanes(
    q4: bool,
    rows: &[QRow<'_>; ROWS],
    xs: &[super::lanes::TokenBlock],
    (n, groups, group): (usize, usize, usize),
    valid: usize,
    o: &mut [f32],
) {
    let cols = groups * group;
    let code_len = if q4 { cols / 2 } else { cols };
    assert!(valid <= ROWS && o.len() >= valid * n && cols > 0);
    assert!(group.is_multiple_of(if q4 { 64 } else { 32 }));
    for row in rows {
        assert!(row.codes.len() == code_len && row.scales.len() == 2 * groups);
        assert!(row.biases.len() == row.scales.len());
    }
    assert!(xs.iter().map(|x| x.tokens).sum::<usize>() == n);
    with_prepared(groups, |p| {
        if q4 {
            p.codes.resize(ROWS * cols, 0);
        }
        // SAFETY: `lanes::width` found AVX-VNNI (with AVX2 and F16C, and AVX-512 VNNI for a
        // 16-wide block); the lengths are asserted above
        // and `p`'s buffers sized just now; each token block was filled for these groups.
        unsafe {
            super::block_prepare::prepare(rows, groups, p);
            if q4 {
                x86::unpack(rows, cols / 2, &mut p.codes);
            }
            let codes: [&[u8]; ROWS] = std::array::from_fn(|r| {
                if q4 {
                    &p.codes[r * cols..(r + 1) * cols]
                } else {
                    rows[r].codes
                }
            });
            let mut t0 = 0;
            for x in xs {
                super::lanes::rows_block(
                    codes,
                    (&p.s, &p.b),
                    (groups, group),
                    x,
                    valid,
                    (n, t0),
                    o,
                );
                t0 += x.tokens;
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::int8::x86::hsum8_i32;
    use super::{Prepared, QRow, QuantizedX, ROWS};
    use core::arch::x86_64::*;

    /// Unpacks each row's 4-bit codes (`half_len` bytes) into `out[r * 2 * half_len..]`: per
    /// 32-byte run at `i`, the low nibbles at `2 * i` and the high ones at `2 * i + 32`.
    ///
    /// # Safety
    /// The CPU has AVX2; every row holds `half_len` code bytes, a multiple of 32; `out` holds
    /// `ROWS * 2 * half_len` bytes.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn unpack(rows: &[QRow<'_>; ROWS], half_len: usize, out: &mut [u8]) {
        let m = _mm256_set1_epi8(15);
        for (r, row) in rows.iter().enumerate() {
            let mut i = 0;
            while i < half_len {
                // SAFETY: i + 32 <= half_len = codes.len(); the two stores end at
                // r * 2 * half_len + 2 * i + 64 <= out.len().
                unsafe {
                    let c = _mm256_loadu_si256(row.codes.as_ptr().add(i).cast());
                    let dst = out.as_mut_ptr().add(r * 2 * half_len + 2 * i);
                    _mm256_storeu_si256(dst.cast(), _mm256_and_si256(c, m));
                    _mm256_storeu_si256(
                        dst.add(32).cast(),
                        _mm256_and_si256(_mm256_srli_epi16(c, 4), m),
                    );
                }
                i += 32;
            }
        }
    }

    /// `F = (F + (s d) isum) + b xsum` for group `k` of one vector, lanes = rows (the order of
    /// the single-row kernels' `combine`, mul and add kept apart); then stores the rows' values
    /// `((F0 + F4) + (F2 + F6)) + ((F1 + F5) + (F3 + F7))` once all groups are in.
    macro_rules! combine_group {
        ($f:ident, $p:ident, $x:ident, $k:expr, $isums:expr) => {{
            let k = $k;
            // SAFETY: k < groups: p.s and p.b hold ROWS floats from k * ROWS.
            let (s, b) = unsafe {
                (
                    _mm256_loadu_ps($p.s.as_ptr().add(k * ROWS)),
                    _mm256_loadu_ps($p.b.as_ptr().add(k * ROWS)),
                )
            };
            let t1 = _mm256_mul_ps(
                _mm256_mul_ps(s, _mm256_set1_ps($x.d[k])),
                _mm256_cvtepi32_ps($isums),
            );
            $f[k % 8] = _mm256_add_ps(
                _mm256_add_ps($f[k % 8], t1),
                _mm256_mul_ps(b, _mm256_set1_ps($x.sums[k])),
            );
        }};
    }

    /// Hints the cache line `offset` bytes past each row's codes (the next block's rows, read
    /// while this block computes: 8 interleaved row streams defeat the hardware prefetcher on
    /// matrices larger than the caches).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn prefetch(rows: &[QRow<'_>; ROWS], offset: usize) {
        for row in rows {
            let p = row.codes.as_ptr().wrapping_add(offset);
            // A prefetch is only a hint: it never faults, whatever the address.
            _mm_prefetch::<_MM_HINT_T0>(p.cast());
        }
    }

    /// Writes rows `0..valid` of the lanes' sums into column `t` of `o` (`[row][n]`).
    #[target_feature(enable = "avx2")]
    #[inline]
    fn store(f: &[__m256; 8], valid: usize, n: usize, t: usize, o: &mut [f32]) {
        let v = _mm256_add_ps(
            _mm256_add_ps(_mm256_add_ps(f[0], f[4]), _mm256_add_ps(f[2], f[6])),
            _mm256_add_ps(_mm256_add_ps(f[1], f[5]), _mm256_add_ps(f[3], f[7])),
        );
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        for (r, l) in lanes.iter().take(valid).enumerate() {
            o[r * n + t] = *l;
        }
    }

    /// Generates the Q4 and Q8 kernels for one instruction set: `$q4` folds 32 code bytes
    /// (low nibbles against `qe`, high against `qo`) into i32 lanes, `$q8` folds 32 codes; the
    /// same expressions as the single-row kernels in `int8.rs`.
    macro_rules! kernels {
        ($feat:literal, $q4name:ident, $q8name:ident,
         |$a4:ident, $lo:ident, $hi:ident, $qe:ident, $qo:ident| $q4:expr,
         |$a8:ident, $c:ident, $qx:ident| $q8:expr, $q8_offset:expr) => {
            /// # Safety
            /// The CPU has the kernel's features; `rows_block` checked the lengths and the
            /// group (a multiple of 64) and prepared `p` (and unpacked the codes if `unpacked`).
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $q4name(
                rows: &[QRow<'_>; ROWS],
                xs: &[QuantizedX],
                p: &Prepared,
                unpacked: bool,
                valid: usize,
                o: &mut [f32],
            ) {
                let (g, half, groups) = (xs[0].group, xs[0].group / 2, xs[0].groups());
                let m = _mm256_set1_epi8(15);
                let cols = g * groups;
                // The next block's rows lie `ROWS` rows on (consecutive rows of a matrix).
                let ahead = ROWS * rows[0].codes.len();
                for (t, x) in xs.iter().enumerate() {
                    let mut f = [_mm256_setzero_ps(); 8];
                    for k in 0..groups {
                        if !unpacked && (k * half) % 64 == 0 {
                            prefetch(rows, ahead + k * half);
                        }
                        let mut acc = [_mm256_setzero_si256(); ROWS];
                        let mut i = 0;
                        while i < half {
                            // SAFETY: group k of x.q spans k * g..(k + 1) * g, its even and
                            // odd halves `half` codes each, and i + 32 <= half.
                            let ($qe, $qo) = unsafe {
                                let q = x.q.as_ptr().add(k * g + i);
                                (
                                    _mm256_loadu_si256(q.cast()),
                                    _mm256_loadu_si256(q.add(half).cast()),
                                )
                            };
                            for r in 0..ROWS {
                                // SAFETY: packed: k * half + i + 32 <= codes.len(); unpacked:
                                // the row's bytes span r * cols..(r + 1) * cols and
                                // 2 * (k * half + i) + 64 <= cols.
                                let ($lo, $hi) = unsafe {
                                    if unpacked {
                                        let u = p.codes.as_ptr().add(r * cols + 2 * (k * half + i));
                                        (
                                            _mm256_loadu_si256(u.cast()),
                                            _mm256_loadu_si256(u.add(32).cast()),
                                        )
                                    } else {
                                        let c = _mm256_loadu_si256(
                                            rows[r].codes.as_ptr().add(k * half + i).cast(),
                                        );
                                        (
                                            _mm256_and_si256(c, m),
                                            _mm256_and_si256(_mm256_srli_epi16(c, 4), m),
                                        )
                                    }
                                };
                                let $a4 = acc[r];
                                acc[r] = $q4;
                            }
                            i += 32;
                        }
                        combine_group!(f, p, x, k, hsum8_i32(&acc));
                    }
                    store(&f, valid, xs.len(), t, o);
                }
            }

            /// # Safety
            /// As for the Q4 kernel, with the group a multiple of 32.
            #[target_feature(enable = $feat)]
            pub(super) unsafe fn $q8name(
                rows: &[QRow<'_>; ROWS],
                xs: &[QuantizedX],
                p: &Prepared,
                valid: usize,
                o: &mut [f32],
            ) {
                let (g, groups) = (xs[0].group, xs[0].groups());
                let ahead = ROWS * rows[0].codes.len();
                for (t, x) in xs.iter().enumerate() {
                    let mut f = [_mm256_setzero_ps(); 8];
                    for k in 0..groups {
                        if t == 0 {
                            for i in (0..g).step_by(64) {
                                prefetch(rows, ahead + k * g + i);
                            }
                        }
                        let mut acc = [_mm256_setzero_si256(); ROWS];
                        let mut i = 0;
                        while i < g {
                            // SAFETY: k * g + i + 32 <= x.q.len() = codes.len().
                            let $qx =
                                unsafe { _mm256_loadu_si256(x.q.as_ptr().add(k * g + i).cast()) };
                            for r in 0..ROWS {
                                // SAFETY: as above.
                                let $c = unsafe {
                                    _mm256_loadu_si256(rows[r].codes.as_ptr().add(k * g + i).cast())
                                };
                                let $a8 = acc[r];
                                acc[r] = $q8;
                            }
                            i += 32;
                        }
                        let isums = _mm256_add_epi32(
                            hsum8_i32(&acc),
                            _mm256_set1_epi32($q8_offset * x.qsums[k]),
                        );
                        combine_group!(f, p, x, k, isums);
                    }
                    store(&f, valid, xs.len(), t, o);
                }
            }
        };
    }

    // AVX2: u8 x i8 pairs to i16 (`maddubs`), then to i32; Q8 codes shifted to `q - 128` and
    // `128 * sum(qx)` added back (see `int8.rs`).
    kernels!(
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

    // AVX-VNNI: u8 x i8 quadruples straight into i32 lanes.
    kernels!(
        "avx2,f16c,avxvnni",
        q4_vnni,
        q8_vnni,
        |a, lo, hi, qe, qo| _mm256_dpbusd_avx_epi32(_mm256_dpbusd_avx_epi32(a, lo, qe), hi, qo),
        |a, c, qx| _mm256_dpbusd_avx_epi32(a, c, qx),
        0
    );
}
