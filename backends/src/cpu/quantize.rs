//! Quantization of activation vectors to int8 per weight group ([`QuantizedX::quantize`]).
//!
//! Per group: `d = max|x| / 127`, codes `round(x / d)` (as `x * (1 / d)`, halves away from
//! zero) in `-127..=127`, the exact f32 sum of the group (8 lanes, then added in order) and the
//! codes' integer sum. The AVX2 path computes exactly what the portable one does (the same f32
//! operations per value and per lane), so every kernel sees the same codes on every CPU.

use super::int8::QuantizedX;

impl QuantizedX {
    /// Quantizes `x` in groups of `group` (a multiple of 2 dividing `x.len()`, checked by the
    /// caller's layout); `nibble_order` stores each group's even columns before its odd ones.
    /// Buffers are reused across calls.
    pub(crate) fn quantize(&mut self, x: &[f32], group: usize, nibble_order: bool) {
        let groups = x.len() / group;
        self.group = group;
        self.q.resize(x.len(), 0);
        self.d.resize(groups, 0.0);
        self.sums.resize(groups, 0.0);
        self.qsums.resize(groups, 0);
        let simd = simd_ok(group);
        for (g, xs) in x.chunks_exact(group).enumerate() {
            let q = &mut self.q[g * group..(g + 1) * group];
            let (d, sum, qsum) = quantize_group(simd, xs, q, nibble_order);
            self.d[g] = d;
            self.sums[g] = sum;
            self.qsums[g] = qsum;
        }
    }
}

/// Whether the AVX2 path takes groups of `group`.
fn simd_ok(group: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        group.is_multiple_of(32) && super::simd::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = group;
        false
    }
}

/// One group of `xs` into `q` (`nibble_order`: even columns first, then odd ones: the 4-bit
/// codes' low and high nibbles); returns `(d, sum, qsum)`. `simd` ([`simd_ok`]) takes AVX2.
fn quantize_group(simd: bool, xs: &[f32], q: &mut [i8], nibble_order: bool) -> (f32, f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd_ok` found AVX2 and a group that is a multiple of 32; `q` is as long
        // as `xs` (one group).
        return unsafe { x86::group(xs, q, nibble_order) };
    }
    let _ = simd;
    let d = lanes_max_abs(xs) / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    if nibble_order {
        let (even, odd) = q.split_at_mut(xs.len() / 2);
        for ((pair, e), o) in xs.chunks_exact(2).zip(even).zip(odd) {
            *e = quantize_one(pair[0], inv);
            *o = quantize_one(pair[1], inv);
        }
    } else {
        for (c, &v) in q.iter_mut().zip(xs) {
            *c = quantize_one(v, inv);
        }
    }
    (d, lanes_sum(xs), q.iter().map(|&c| i32::from(c)).sum())
}

/// `round(v * inv)` clamped to `-127..=127` (halves away from zero, as `f32::round`; NaN to
/// 0), in operations the compiler vectorizes: clamping first changes nothing in that range,
/// and truncation plus a correction by the remainder is exact.
#[inline(always)]
fn quantize_one(v: f32, inv: f32) -> i8 {
    let x = (v * inv).clamp(-127.0, 127.0);
    let t = x as i32;
    let r = x - t as f32;
    (t + i32::from(r >= 0.5) - i32::from(r <= -0.5)) as i8
}

/// `max |x|` over 8 lanes (exact in any order; a NaN is skipped, as `f32::max` does).
#[inline(always)]
fn lanes_max_abs(x: &[f32]) -> f32 {
    let mut m = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(0f32, |a, v| a.max(v.abs()));
    for c in chunks {
        for (mi, v) in m.iter_mut().zip(c) {
            let a = v.abs();
            *mi = if a > *mi { a } else { *mi };
        }
    }
    m.iter().fold(tail, |a, &v| a.max(v))
}

/// `sum x` over 8 lanes, the lanes then added in order, then the tail.
#[inline(always)]
fn lanes_sum(x: &[f32]) -> f32 {
    let mut s = [0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (si, v) in s.iter_mut().zip(c) {
            *si += v;
        }
    }
    finish_sum(s, tail)
}

/// The lanes of [`lanes_sum`] added in order, then the tail's sum (shared by the SIMD path).
#[inline(always)]
fn finish_sum(lanes: [f32; 8], tail: &[f32]) -> f32 {
    lanes.iter().sum::<f32>() + tail.iter().sum::<f32>()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::x86_64::*;

    /// 8 codes of `p[..8] * inv` as i32 lanes: [`super::quantize_one`]'s operations.
    #[target_feature(enable = "avx2")]
    #[inline]
    unsafe fn codes8(p: *const f32, inv: __m256) -> __m256i {
        // SAFETY: the caller passes 8 readable floats.
        let x = _mm256_mul_ps(unsafe { _mm256_loadu_ps(p) }, inv);
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
        let c = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-127.0)),
            _mm256_set1_ps(127.0),
        );
        let t = _mm256_cvttps_epi32(c);
        let r = _mm256_sub_ps(c, _mm256_cvtepi32_ps(t));
        // Compare masks are -1 where true: `t - up + down`.
        let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(r, _mm256_set1_ps(0.5)));
        let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(r, _mm256_set1_ps(-0.5)));
        _mm256_andnot_si256(nan, _mm256_add_epi32(_mm256_sub_epi32(t, up), down))
    }

    /// Quantizes one group (`xs.len()`, a multiple of 32, codes into `q`); returns `(d, sum,
    /// qsum)`.
    ///
    /// # Safety
    /// The CPU has AVX2; `q.len() == xs.len()`, a multiple of 32.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn group(xs: &[f32], q: &mut [i8], nibble_order: bool) -> (f32, f32, i32) {
        let g = xs.len();
        assert!(g.is_multiple_of(32) && q.len() == g);
        let p = xs.as_ptr();
        let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
        let (mut m, mut s) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for i in (0..g).step_by(8) {
            // SAFETY: i + 8 <= g.
            let v = unsafe { _mm256_loadu_ps(p.add(i)) };
            // `max(a, m)` keeps `m` where `a` is NaN, as the portable select does.
            m = _mm256_max_ps(_mm256_and_ps(v, abs), m);
            s = _mm256_add_ps(s, v);
        }
        let (mut ml, mut sl) = ([0f32; 8], [0f32; 8]);
        // SAFETY: both arrays hold 8 floats.
        unsafe {
            _mm256_storeu_ps(ml.as_mut_ptr(), m);
            _mm256_storeu_ps(sl.as_mut_ptr(), s);
        }
        let amax = ml.iter().fold(0f32, |a, &v| a.max(v));
        let d = amax / 127.0;
        let inv = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        // Even bytes, then odd ones, in each 16-byte half.
        let split = _mm256_setr_epi8(
            0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3,
            5, 7, 9, 11, 13, 15,
        );
        let mut qs = _mm256_setzero_si256();
        for c in (0..g).step_by(32) {
            // SAFETY: c + 32 <= g: four runs of 8 floats.
            let [a, b, e, f] = std::array::from_fn(|i| unsafe { codes8(p.add(c + 8 * i), inv) });
            qs = _mm256_add_epi32(
                qs,
                _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(e, f)),
            );
            let bytes = _mm256_permutevar8x32_epi32(
                _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(e, f)),
                order,
            );
            if nibble_order {
                let t = _mm256_shuffle_epi8(bytes, split);
                let (lo, hi) = (_mm256_castsi256_si128(t), _mm256_extracti128_si256::<1>(t));
                // SAFETY: evens go to c / 2.. and odds to g / 2 + c / 2.., 16 bytes each,
                // inside `q` (c / 2 + 16 <= g / 2).
                unsafe {
                    let dst = q.as_mut_ptr();
                    _mm_storeu_si128(dst.add(c / 2).cast(), _mm_unpacklo_epi64(lo, hi));
                    _mm_storeu_si128(dst.add(g / 2 + c / 2).cast(), _mm_unpackhi_epi64(lo, hi));
                }
            } else {
                // SAFETY: c + 32 <= g = q.len().
                unsafe { _mm256_storeu_si256(q.as_mut_ptr().add(c).cast(), bytes) };
            }
        }
        let mut ql = [0i32; 8];
        // SAFETY: `ql` holds 8 i32.
        unsafe { _mm256_storeu_si256(ql.as_mut_ptr().cast(), qs) };
        (d, super::finish_sum(sl, &[]), ql.iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::int8::QuantizedX;

    /// The vectorizable rounding is `f32::round` then a clamp, on halves, near-halves, the
    /// clamp's edges, signed zeros, infinities and NaN.
    #[test]
    fn quantize_one_rounds_as_f32_round() {
        let mut xs = vec![
            0.0f32, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, 126.5, -126.5, 127.0,
        ];
        xs.extend([127.4, 127.6, -127.6, 300.0, -300.0, f32::INFINITY, f32::NAN]);
        for i in 0..4000 {
            let base = (i as f32 - 2000.0) / 15.0;
            xs.extend([base, base + 0.5, f32::from_bits((base + 0.5).to_bits() + 1)]);
            xs.push(f32::from_bits((base + 0.5).to_bits().wrapping_sub(1)));
        }
        for &x in &xs {
            for inv in [1.0f32, 0.37, 3.0, 0.0] {
                let want = (x * inv).round().clamp(-127.0, 127.0) as i8;
                assert_eq!(quantize_one(x, inv), want, "x {x} inv {inv}");
            }
        }
    }

    /// Codes, scales and sums of a group: |q| <= 127, the largest magnitude maps to +-127,
    /// `qsums` is the codes' sum, and the nibble order puts even columns first.
    #[test]
    fn quantize_lays_out_groups_and_nibbles() {
        let x: Vec<f32> = (0..128)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let (mut plain, mut nib) = (QuantizedX::default(), QuantizedX::default());
        plain.quantize(&x, 64, false);
        nib.quantize(&x, 64, true);
        for g in 0..2 {
            let xs = &x[g * 64..(g + 1) * 64];
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(plain.d[g], amax / 127.0);
            assert!((plain.sums[g] - xs.iter().sum::<f32>()).abs() < 1e-4);
            let q = &plain.q[g * 64..(g + 1) * 64];
            assert_eq!(plain.qsums[g], q.iter().map(|&c| i32::from(c)).sum::<i32>());
            assert!(q.iter().any(|&c| c.abs() == 127));
            for j in 0..64 {
                let want = (xs[j] * (1.0 / plain.d[g])).round() as i8;
                assert_eq!(q[j], want);
                assert_eq!(nib.q[g * 64 + (j % 2) * 32 + j / 2], want);
            }
        }
    }

    /// The AVX2 path gives the portable path's codes, scales and sums bit for bit, on both
    /// code orders and groups of 32, 64 and 128 with halves, large values, zeros and NaN.
    #[test]
    fn simd_groups_are_bit_exact_with_portable() {
        if !simd_ok(32) {
            return;
        }
        let mut s = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for g in [32usize, 64, 128] {
            for case in 0..60 {
                let xs: Vec<f32> = (0..g)
                    .map(|i| {
                        let r = next();
                        let v = ((r >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                        match (case % 6, i % 7) {
                            (1, 0) => (v * 254.0).round() / 2.0, // exact halves
                            (2, _) => v * 1e4,
                            (3, _) => 0.0,
                            (4, 3) => f32::NAN,
                            (5, 1) => -0.0,
                            _ => v,
                        }
                    })
                    .collect();
                for nib in [false, true] {
                    let (mut qa, mut qb) = (vec![0i8; g], vec![0i8; g]);
                    let a = quantize_group(true, &xs, &mut qa, nib);
                    let b = quantize_group(false, &xs, &mut qb, nib);
                    assert_eq!(qa, qb, "codes g {g} case {case} nibble {nib}");
                    assert_eq!(a.0.to_bits(), b.0.to_bits(), "d g {g} case {case}");
                    assert_eq!(a.1.to_bits(), b.1.to_bits(), "sum g {g} case {case}");
                    assert_eq!(a.2, b.2, "qsum g {g} case {case}");
                }
            }
        }
    }
}
