//! Branch-free `ln`, `exp`, logit and sigmoid in plain f32 arithmetic, so that the loops over a
//! layer's experts vectorize (libm's calls do not). Relative error below 1e-6 (ln) and 4e-6
//! (exp) over the ranges the blend uses; see the tests.

const LN2: f32 = std::f32::consts::LN_2;
const LOG2E: f32 = std::f32::consts::LOG2_E;
/// 1.5 × 2^23: adding and subtracting it rounds an f32 below 2^22 to the nearest integer.
const ROUND: f32 = 12_582_912.0;

/// `ln(x)` for finite `x > 0` (normal numbers; the callers clamp first).
#[inline(always)]
pub(crate) fn ln(x: f32) -> f32 {
    let bits = x.to_bits();
    let mut e = ((bits >> 23) & 0xff) as i32 - 127;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    // m in [sqrt(1/2), sqrt(2)): the series below converges fastest around 1.
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e += big as i32;
    // ln m = 2 atanh(t), t = (m - 1) / (m + 1), |t| < 0.172.
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let series = 1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0))));
    2.0 * t * series + e as f32 * LN2
}

/// `exp(x)`, with `x` clamped to [-87, 87] (no infinities, no denormals).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    // r = x - n ln 2 in two parts (Cody-Waite), |r| <= ln2 / 2.
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    // Degree 5 Taylor: relative error about r^6 / 720 < 4e-6.
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0)))));
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}

/// `ln(p / (1 - p))` with `p` clamped to [1e-3, 1 - 1e-3].
#[inline(always)]
pub(crate) fn logit(p: f32) -> f32 {
    let p = p.clamp(1e-3, 1.0 - 1e-3);
    ln(p / (1.0 - p))
}

/// `1 / (1 + exp(-z))`.
#[inline(always)]
pub(crate) fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f32, b: f32) -> f32 {
        ((a - b) / b.abs().max(1e-30)).abs()
    }

    #[test]
    fn ln_matches_std() {
        let mut worst = 0.0f32;
        let mut x = 1e-6f32;
        while x < 1e6 {
            // Absolute error near 1 (where ln crosses 0), relative elsewhere.
            let err = if (0.5..2.0).contains(&x) {
                (ln(x) - x.ln()).abs()
            } else {
                rel(ln(x), x.ln())
            };
            worst = worst.max(err);
            x *= 1.0007;
        }
        assert!(worst < 1e-6, "worst {worst}");
        assert_eq!(ln(1.0), 0.0);
    }

    #[test]
    fn exp_matches_std_and_saturates() {
        let mut worst = 0.0f32;
        let mut x = -80.0f32;
        while x < 80.0 {
            worst = worst.max(rel(exp(x), x.exp()));
            x += 0.0137;
        }
        assert!(worst < 4e-6, "worst {worst}");
        assert!(exp(1e9).is_finite() && exp(-1e9) > 0.0);
    }

    #[test]
    fn logit_and_sigmoid_invert() {
        for p in [0.002f32, 0.1, 0.5, 0.77, 0.998] {
            assert!((sigmoid(logit(p)) - p).abs() < 1e-6, "{p}");
        }
        assert!((logit(0.0) - logit(1e-3)).abs() < 1e-6, "clamped");
        assert!(sigmoid(-200.0) >= 0.0 && sigmoid(200.0) <= 1.0);
    }
}
