//! AVX2 + FMA + F16C row kernels for x86_64, chosen at run time when the CPU has them.
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

#[target_feature(enable = "avx2,fma,f16c")]
fn f16_at(bytes: &[u8], i: usize) -> f32 {
    let bits = u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
}

/// One row of a Q4 matrix: `codes` = `cols/2` bytes, `scales`/`biases` = the row's f16 bytes,
/// `even`/`odd` = the even and odd columns of x, `group_sums` = x summed per group.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q4_row(
    codes: &[u8],
    scales: &[u8],
    biases: &[u8],
    even: &[f32],
    odd: &[f32],
    group_sums: &[f32],
    group: usize,
) -> f32 {
    let half = group / 2;
    let gpr = group_sums.len();
    assert!(
        group.is_multiple_of(16)
            && codes.len() == gpr * half
            && even.len() == codes.len()
            && odd.len() == codes.len()
    );
    assert!(scales.len() == 2 * gpr && biases.len() == 2 * gpr);
    let mask = _mm256_set1_epi32(15);
    let mut row = _mm256_setzero_ps();
    let mut bias_acc = 0f32;
    for (g, &gsum) in group_sums.iter().enumerate() {
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let base = g * half;
        let mut i = 0;
        while i < half {
            // SAFETY: base + i + 8 <= gpr * half = codes.len() = even.len() = odd.len() (asserted
            // above; half is a multiple of 8), so the 8-byte and two 8-float loads are in bounds.
            unsafe {
                let w = _mm256_cvtepu8_epi32(_mm_loadl_epi64(codes.as_ptr().add(base + i).cast()));
                let lo = _mm256_cvtepi32_ps(_mm256_and_si256(w, mask));
                let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(w, 4));
                a0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(even.as_ptr().add(base + i)), a0);
                a1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(odd.as_ptr().add(base + i)), a1);
            }
            i += 8;
        }
        row = _mm256_fmadd_ps(
            _mm256_set1_ps(f16_at(scales, g)),
            _mm256_add_ps(a0, a1),
            row,
        );
        bias_acc += f16_at(biases, g) * gsum;
    }
    hsum(row) + bias_acc
}

/// One row of a Q8 matrix: `codes` = `cols` bytes, other arguments as in [`q4_row`].
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn q8_row(
    codes: &[u8],
    scales: &[u8],
    biases: &[u8],
    x: &[f32],
    group_sums: &[f32],
    group: usize,
) -> f32 {
    let gpr = group_sums.len();
    assert!(group.is_multiple_of(16) && codes.len() == gpr * group && x.len() == codes.len());
    assert!(scales.len() == 2 * gpr && biases.len() == 2 * gpr);
    let mut row = _mm256_setzero_ps();
    let mut bias_acc = 0f32;
    for (g, &gsum) in group_sums.iter().enumerate() {
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let base = g * group;
        let mut i = 0;
        while i < group {
            // SAFETY: base + i + 16 <= gpr * group = codes.len() = x.len() (asserted; group is a
            // multiple of 16), so both 8-byte and both 8-float loads are in bounds.
            unsafe {
                let p = codes.as_ptr().add(base + i);
                let w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())));
                let w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.add(8).cast())));
                a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x.as_ptr().add(base + i)), a0);
                a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x.as_ptr().add(base + i + 8)), a1);
            }
            i += 16;
        }
        row = _mm256_fmadd_ps(
            _mm256_set1_ps(f16_at(scales, g)),
            _mm256_add_ps(a0, a1),
            row,
        );
        bias_acc += f16_at(biases, g) * gsum;
    }
    hsum(row) + bias_acc
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
