//! AVX2 + FMA + F16C float row kernels for x86_64, chosen at run time when the CPU has them.
//!
//! Each kernel computes one row's dot product with the same maths as the portable kernels in
//! `matvec.rs` (only the summation order differs). The safe wrappers check every length the
//! unsafe loops rely on, so the raw-pointer loads below stay inside their slices.

use core::arch::x86_64::*;

/// Whether the CPU running us has AVX2, FMA and F16C (cached by std after the first call).
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
}

#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// One row of a bf16 matrix (`row` = `2 * x.len()` bytes).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn bf16_row(row: &[u8], x: &[f32]) -> f32 {
    assert!(row.len() == 2 * x.len());
    let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let n16 = x.len() / 16 * 16;
    let mut i = 0;
    while i < n16 {
        // SAFETY: i + 16 <= x.len() and 2 * (i + 16) <= row.len(), so the two 16-byte loads and
        // the two 8-float loads are in bounds.
        unsafe {
            let p = row.as_ptr().add(2 * i);
            let w0 = _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())),
                16,
            ));
            let w1 = _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(16).cast())),
                16,
            ));
            a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.as_ptr().add(i)), a0);
            a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.as_ptr().add(i + 8)), a1);
        }
        i += 16;
    }
    let tail: f32 = (n16..x.len())
        .map(|j| crate::quant::bf16_at(row, j) * x[j])
        .sum();
    hsum(_mm256_add_ps(a0, a1)) + tail
}

/// One row of a bf16 matrix dotted with each of `T` vectors (each `row.len() / 2` long): the
/// weights are converted once for the `T` vectors, and each vector gets exactly the
/// operations of [`bf16_row`] in the same order (so the same bits).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn bf16_row_multi<const T: usize>(row: &[u8], xs: [&[f32]; T]) -> [f32; T] {
    let len = row.len() / 2;
    assert!(row.len() == 2 * len && xs.iter().all(|x| x.len() == len));
    let mut a0 = [_mm256_setzero_ps(); T];
    let mut a1 = [_mm256_setzero_ps(); T];
    let n16 = len / 16 * 16;
    let mut i = 0;
    while i < n16 {
        // SAFETY: i + 16 <= len, so the two 16-byte weight loads (2 * (i + 16) <= row.len())
        // and each vector's two 8-float loads are in bounds.
        unsafe {
            let p = row.as_ptr().add(2 * i);
            let w0 = _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())),
                16,
            ));
            let w1 = _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(16).cast())),
                16,
            ));
            for t in 0..T {
                a0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs[t].as_ptr().add(i)), a0[t]);
                a1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xs[t].as_ptr().add(i + 8)), a1[t]);
            }
        }
        i += 16;
    }
    std::array::from_fn(|t| {
        let x = xs[t];
        let tail: f32 = (n16..len)
            .map(|j| crate::quant::bf16_at(row, j) * x[j])
            .sum();
        hsum(_mm256_add_ps(a0[t], a1[t])) + tail
    })
}
