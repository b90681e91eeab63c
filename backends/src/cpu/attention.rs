//! Causal GQA attention of one query row over the cached positions, on the CPU.
//!
//! The query heads that share a key/value head are taken together, [`HEADS`] at a time, so
//! each cached key and value row is loaded once for all of them: scores for 4 heads x 2 keys
//! per step (8 accumulators, one 8-way horizontal sum), then a softmax per head (the max, `exp`
//! and the sum in position order), then the weighted sum of value rows for 4 heads x 16 dims
//! per pass (8 accumulators), scaled by `1 / sum` at the end. AVX2 + FMA when the CPU has them
//! and the head is a multiple of 16 wide; otherwise portable code with the same structure.
//! Decode and prefill rows both come here, so a prompt chunk's rows get exactly the bits of
//! the token-by-token path.

use crate::AttnShape;
use std::cell::RefCell;

/// Query heads taken together.
const HEADS: usize = 4;

thread_local! {
    /// Scores of the calling thread (`[HEADS][seq_len]`), reused across calls.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `out` (`n_heads * head_dim`) = attention of `q` over positions `0..seq_len` of `k` and `v`
/// (a layer's cache, `[max_seq][n_kv_heads * head_dim]`). Sizes are checked by the caller.
pub(crate) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    seq_len: usize,
    shape: AttnShape,
    out: &mut [f32],
) {
    let simd = simd_ok(shape.head_dim);
    SCORES.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scores) => {
            scores.resize(HEADS * seq_len, 0.0);
            attend(simd, q, (k, v), seq_len, shape, &mut scores, out)
        }
        // Re-entered on this thread (a nested parallel job): a fresh buffer.
        Err(_) => {
            let mut scores = vec![0.0; HEADS * seq_len];
            attend(simd, q, (k, v), seq_len, shape, &mut scores, out)
        }
    });
}

/// [`attention`] with the AVX2 kernels (`simd`, which [`simd_ok`] allows) or portable ones.
fn attend(
    simd: bool,
    q: &[f32],
    (k, v): (&[f32], &[f32]),
    seq_len: usize,
    shape: AttnShape,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let hd = shape.head_dim;
    let kv_dim = shape.n_kv_heads * hd;
    let group = shape.n_heads / shape.n_kv_heads.max(1);
    let scale = 1.0 / (hd as f32).sqrt();
    assert!(k.len() >= seq_len * kv_dim && v.len() >= seq_len * kv_dim);
    assert!(q.len() >= shape.n_heads * hd && out.len() >= shape.n_heads * hd);
    assert!(scores.len() >= HEADS * seq_len && (!simd || simd_ok(hd)));
    let mut h0 = 0;
    while h0 < shape.n_heads {
        let kvh = h0 / group;
        // A block never straddles two key/value heads: it stops at the group's end.
        let heads = (shape.n_heads - h0).min(HEADS).min(group - h0 % group);
        let qh: [&[f32]; HEADS] = std::array::from_fn(|i| &q[(h0 + i.min(heads - 1)) * hd..][..hd]);
        let s = &mut scores[..HEADS * seq_len];
        block_scores(simd, qh, &k[kvh * hd..], kv_dim, seq_len, hd, scale, s);
        let mut inv = [0f32; HEADS];
        for (i, row) in s.chunks_exact_mut(seq_len).take(heads).enumerate() {
            inv[i] = 1.0 / softmax_unnormalized(row);
        }
        let o = &mut out[h0 * hd..(h0 + heads) * hd];
        block_values(simd, s, &v[kvh * hd..], kv_dim, seq_len, hd, heads, inv, o);
        h0 += heads;
    }
}

/// `row[t] = exp(row[t] - max)`; returns their sum (in position order).
fn softmax_unnormalized(row: &mut [f32]) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
    let mut sum = 0f32;
    for s in row.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    sum
}

/// Whether the AVX2 kernels take a head `hd` wide.
fn simd_ok(hd: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        hd.is_multiple_of(16) && hd > 0 && super::simd::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = hd;
        false
    }
}

/// `s[i * seq + t] = scale * (q[i] . k[t])` for the [`HEADS`] query heads (a short block
/// repeats its last head; those rows are scratch).
#[allow(clippy::too_many_arguments)]
fn block_scores(
    simd: bool,
    q: [&[f32]; HEADS],
    k: &[f32],
    stride: usize,
    seq: usize,
    hd: usize,
    scale: f32,
    s: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: `simd` is true only when `simd_ok` found AVX2 + FMA and `hd` is a multiple
        // of 16; `attend` asserted that `k` holds `seq` rows of `stride >= hd` floats (from
        // the head's offset, whose last row ends inside the cache), `q` rows are `hd` long and
        // `s` holds HEADS * seq floats.
        unsafe { x86::scores(q, k, stride, seq, hd, scale, s) };
        return;
    }
    let _ = simd;
    for t in 0..seq {
        let kt = &k[t * stride..][..hd];
        for (i, qi) in q.iter().enumerate() {
            let mut acc = [0f32; 8];
            for (qc, kc) in qi.chunks(8).zip(kt.chunks(8)) {
                for (j, (a, b)) in qc.iter().zip(kc).enumerate() {
                    acc[j] += a * b;
                }
            }
            s[i * seq + t] = acc.iter().sum::<f32>() * scale;
        }
    }
}

/// `o[i] = inv[i] * sum_t p[i * seq + t] * v[t]` for the first `heads` heads.
#[allow(clippy::too_many_arguments)]
fn block_values(
    simd: bool,
    p: &[f32],
    v: &[f32],
    stride: usize,
    seq: usize,
    hd: usize,
    heads: usize,
    inv: [f32; HEADS],
    o: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if simd {
        // SAFETY: as in `block_scores`; `o` holds `heads * hd` floats and `p` HEADS * seq.
        unsafe { x86::values(p, v, stride, seq, hd, heads, inv, o) };
        return;
    }
    let _ = simd;
    for (i, oi) in o.chunks_exact_mut(hd).take(heads).enumerate() {
        oi.iter_mut().for_each(|x| *x = 0.0);
        for t in 0..seq {
            let w = p[i * seq + t];
            for (x, vv) in oi.iter_mut().zip(&v[t * stride..][..hd]) {
                *x += w * vv;
            }
        }
        oi.iter_mut().for_each(|x| *x *= inv[i]);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::HEADS;
    use core::arch::x86_64::*;

    /// The 8 lanes' sums of 8 vectors, as one vector (lane `i` = sum of `a[i]`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn hsum8(a: [__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(a[0], a[1]);
        let t1 = _mm256_hadd_ps(a[2], a[3]);
        let t2 = _mm256_hadd_ps(a[4], a[5]);
        let t3 = _mm256_hadd_ps(a[6], a[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(
            _mm256_permute2f128_ps::<0x20>(u0, u1),
            _mm256_permute2f128_ps::<0x31>(u0, u1),
        )
    }

    /// Scores of 4 heads against 2 keys per step (a last odd key against itself twice).
    ///
    /// # Safety
    /// AVX2 + FMA; `hd % 16 == 0`; `q[i]` hold `hd` floats; `k` holds row `t` at `t * stride`
    /// for `t < seq`, each `hd` long; `s` holds `HEADS * seq` floats.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scores(
        q: [&[f32]; HEADS],
        k: &[f32],
        stride: usize,
        seq: usize,
        hd: usize,
        scale: f32,
        s: &mut [f32],
    ) {
        assert!(s.len() >= HEADS * seq && q.iter().all(|r| r.len() >= hd));
        assert!(seq == 0 || k.len() >= (seq - 1) * stride + hd);
        let sc = _mm256_set1_ps(scale);
        let mut t = 0;
        while t < seq {
            let t1 = (t + 1).min(seq - 1);
            let (k0, k1) = (
                k.as_ptr().wrapping_add(t * stride),
                k.as_ptr().wrapping_add(t1 * stride),
            );
            let mut acc = [_mm256_setzero_ps(); 8];
            let mut c = 0;
            while c < hd {
                // SAFETY: t, t1 < seq and c + 8 <= hd: inside rows t and t1 of `k` and the q rows.
                unsafe {
                    let a = _mm256_loadu_ps(k0.add(c));
                    let b = _mm256_loadu_ps(k1.add(c));
                    for (i, qi) in q.iter().enumerate() {
                        let x = _mm256_loadu_ps(qi.as_ptr().add(c));
                        acc[i] = _mm256_fmadd_ps(x, a, acc[i]);
                        acc[HEADS + i] = _mm256_fmadd_ps(x, b, acc[HEADS + i]);
                    }
                }
                c += 8;
            }
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` holds 8 floats.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_mul_ps(hsum8(acc), sc)) };
            for i in 0..HEADS {
                s[i * seq + t] = lanes[i];
                if t1 != t {
                    s[i * seq + t1] = lanes[HEADS + i];
                }
            }
            t += 2;
        }
    }

    /// Weighted sums of the value rows for 4 heads, 16 dims per pass.
    ///
    /// # Safety
    /// As for [`scores`], with `p` holding `HEADS * seq` weights and `o` `heads * hd` floats.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn values(
        p: &[f32],
        v: &[f32],
        stride: usize,
        seq: usize,
        hd: usize,
        heads: usize,
        inv: [f32; HEADS],
        o: &mut [f32],
    ) {
        assert!(p.len() >= HEADS * seq && o.len() >= heads * hd && heads <= HEADS);
        assert!(seq == 0 || v.len() >= (seq - 1) * stride + hd);
        let mut c = 0;
        while c < hd {
            let mut acc = [_mm256_setzero_ps(); 2 * HEADS];
            for t in 0..seq {
                // SAFETY: t < seq and c + 16 <= hd: inside row t of `v`; i * seq + t < p.len().
                unsafe {
                    let vt = v.as_ptr().add(t * stride + c);
                    let (a, b) = (_mm256_loadu_ps(vt), _mm256_loadu_ps(vt.add(8)));
                    for i in 0..HEADS {
                        let w = _mm256_set1_ps(*p.get_unchecked(i * seq + t));
                        acc[2 * i] = _mm256_fmadd_ps(w, a, acc[2 * i]);
                        acc[2 * i + 1] = _mm256_fmadd_ps(w, b, acc[2 * i + 1]);
                    }
                }
            }
            for i in 0..heads {
                let f = _mm256_set1_ps(inv[i]);
                // SAFETY: i < heads and c + 16 <= hd: inside head i of `o`.
                unsafe {
                    let dst = o.as_mut_ptr().add(i * hd + c);
                    _mm256_storeu_ps(dst, _mm256_mul_ps(acc[2 * i], f));
                    _mm256_storeu_ps(dst.add(8), _mm256_mul_ps(acc[2 * i + 1], f));
                }
            }
            c += 16;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::test_values::values;

    /// The textbook computation in f64: softmax(q k / sqrt(d)) v per head.
    fn reference(q: &[f32], k: &[f32], v: &[f32], seq: usize, sh: AttnShape) -> Vec<f32> {
        let (hd, kv_dim) = (sh.head_dim, sh.n_kv_heads * sh.head_dim);
        let group = sh.n_heads / sh.n_kv_heads;
        let mut out = vec![0f32; sh.n_heads * hd];
        for h in 0..sh.n_heads {
            let off = (h / group) * hd;
            let s: Vec<f64> = (0..seq)
                .map(|t| {
                    (0..hd)
                        .map(|d| q[h * hd + d] as f64 * k[t * kv_dim + off + d] as f64)
                        .sum::<f64>()
                        / (hd as f64).sqrt()
                })
                .collect();
            let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..hd {
                let x: f64 = (0..seq)
                    .map(|t| e[t] * v[t * kv_dim + off + d] as f64)
                    .sum();
                out[h * hd + d] = (x / z) as f32;
            }
        }
        out
    }

    /// Both paths (AVX2 where the CPU has it, portable) against the f64 reference, on GQA
    /// groups of 1, 3, 4 and 8 query heads per key/value head (blocks that end at a group's
    /// end and short blocks), odd and even sequence lengths, and heads too narrow for SIMD.
    #[test]
    fn matches_the_reference_on_every_shape() {
        for (n_heads, n_kv_heads, head_dim) in [
            (8, 1, 16),
            (6, 2, 32),
            (8, 2, 128),
            (32, 4, 128),
            (3, 3, 16),
            (4, 2, 12),
        ] {
            let sh = AttnShape {
                n_heads,
                n_kv_heads,
                head_dim,
            };
            for seq in [1usize, 2, 7, 40] {
                let kv = n_kv_heads * head_dim;
                let q = values(n_heads * head_dim, seq as u64);
                let k = values(seq * kv + 5, 11 + seq as u64);
                let v = values(seq * kv + 5, 23 + seq as u64);
                let want = reference(&q, &k, &v, seq, sh);
                for simd in [false, simd_ok(head_dim)] {
                    let mut out = vec![9f32; n_heads * head_dim + 1];
                    let mut s = vec![0f32; HEADS * seq];
                    attend(simd, &q, (&k, &v), seq, sh, &mut s, &mut out);
                    for (i, (g, w)) in out.iter().zip(&want).enumerate() {
                        assert!(
                            (g - w).abs() <= 2e-6 * (1.0 + w.abs()),
                            "{sh:?} seq {seq} simd {simd} [{i}]: {g} vs {w}"
                        );
                    }
                    assert_eq!(out[n_heads * head_dim], 9.0, "wrote past the heads");
                }
            }
        }
    }
}
