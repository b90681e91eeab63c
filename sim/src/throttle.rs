//! What thermal throttling does to tok/s over time.
//!
//! Model (a lumped first-order thermal circuit and a DVFS governor):
//! - the chassis heats as `ΔT(t) = P R (1 - e^(-t/τ))`; the sustained envelope `P_s` is the
//!   power at which `ΔT` settles at the throttle point, so at power `P > P_s` throttling
//!   starts at `t_th = τ ln(P / (P - P_s))` (never when `P ≤ P_s`);
//! - then the governor holds the average power at `P_s` by lowering the SoC clock to a share
//!   `f`: SoC power scales as `f^α`, compute time as `1/f`; flash reads and their stalls do
//!   not slow, and flash and DRAM energy per token stay as they are (same bytes).
//!
//! `τ` and `α` are labelled assumptions in the device's cost profile (`--figures`).

use serde::Serialize;

/// The inputs: one token's split and energy at full clock.
#[derive(Debug, Clone, Copy)]
pub struct ThermalInput {
    /// Token time computing (scales with the clock) and stalled on flash (does not), s.
    pub compute_s: f64,
    pub stall_s: f64,
    /// SoC power at full clock, W; flash + DRAM energy per token, J.
    pub soc_w: f64,
    pub io_j: f64,
    /// Sustained envelope, W; thermal time constant, s; DVFS power exponent.
    pub sustained_w: f64,
    pub tau_s: f64,
    pub exponent: f64,
}

/// tok/s after a number of minutes of continuous generation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AfterMinutes {
    pub minutes: f64,
    /// tok/s at that moment.
    pub tok_per_s: f64,
    /// Tokens generated since the start.
    pub tokens: f64,
}

/// Throttling of one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Throttle {
    /// Seconds of generation before throttling starts (None: never).
    pub time_to_throttle_s: Option<f64>,
    /// SoC clock share once throttled (1: never throttled).
    pub clock_share: f64,
    pub unthrottled_tok_per_s: f64,
    /// tok/s once throttled (equal to unthrottled when it never throttles).
    pub sustained_tok_per_s: f64,
    pub after: Vec<AfterMinutes>,
}

/// Minutes at which [`Throttle::after`] is reported.
pub const MINUTES: [f64; 4] = [1.0, 5.0, 10.0, 30.0];

impl ThermalInput {
    fn token_s(&self, f: f64) -> f64 {
        self.compute_s / f + self.stall_s
    }
    fn power_w(&self, f: f64) -> f64 {
        self.soc_w * f.powf(self.exponent) + self.io_j / self.token_s(f)
    }

    /// The throttled steady state and tok/s over [`MINUTES`].
    pub fn throttle(&self) -> Throttle {
        let full = self.token_s(1.0);
        let p = self.power_w(1.0);
        let unthrottled = if full > 0.0 { 1.0 / full } else { 0.0 };
        let t_th = (p > self.sustained_w && self.sustained_w > 0.0)
            .then(|| self.tau_s.max(0.0) * (p / (p - self.sustained_w)).ln());
        let f = if t_th.is_some() {
            // Power falls monotonically with the clock share: bisect for P(f) = P_s.
            let (mut lo, mut hi) = (0.0f64, 1.0f64);
            for _ in 0..60 {
                let mid = 0.5 * (lo + hi);
                if mid > 0.0 && self.power_w(mid) > self.sustained_w {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            lo.max(1e-6)
        } else {
            1.0
        };
        let sustained = 1.0 / self.token_s(f);
        let after = MINUTES
            .iter()
            .map(|&m| {
                let t = m * 60.0;
                let (rate, tokens) = match t_th {
                    Some(th) if t > th => (sustained, th * unthrottled + (t - th) * sustained),
                    _ => (unthrottled, t * unthrottled),
                };
                AfterMinutes {
                    minutes: m,
                    tok_per_s: rate,
                    tokens,
                }
            })
            .collect();
        Throttle {
            time_to_throttle_s: t_th,
            clock_share: f,
            unthrottled_tok_per_s: unthrottled,
            sustained_tok_per_s: sustained,
            after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(soc_w: f64) -> ThermalInput {
        ThermalInput {
            compute_s: 0.5,
            stall_s: 0.5,
            soc_w,
            io_j: 1.0,
            sustained_w: 5.0,
            tau_s: 240.0,
            exponent: 2.0,
        }
    }

    #[test]
    fn under_the_envelope_nothing_throttles() {
        let t = input(3.0).throttle();
        assert_eq!(t.time_to_throttle_s, None);
        assert_eq!(t.clock_share, 1.0);
        assert_eq!(t.sustained_tok_per_s, t.unthrottled_tok_per_s);
        assert!(t.after.iter().all(|a| a.tok_per_s == 1.0));
    }

    #[test]
    fn over_it_throttles_after_tau_ln_and_holds_the_envelope() {
        let i = input(9.0); // 9 W SoC + 1 W I/O = 10 W: twice the envelope
        let t = i.throttle();
        let th = t.time_to_throttle_s.unwrap();
        assert!((th - 240.0 * 2f64.ln()).abs() < 1e-9);
        assert!((i.power_w(t.clock_share) - 5.0).abs() < 1e-6);
        assert!(t.sustained_tok_per_s < t.unthrottled_tok_per_s);
        // Before the throttle point: the full rate; after: the throttled one.
        assert_eq!(t.after[0].tok_per_s, 1.0);
        assert_eq!(t.after[0].tokens, 60.0);
        assert_eq!(t.after[3].tok_per_s, t.sustained_tok_per_s);
        assert!(t.after.windows(2).all(|w| w[1].tokens > w[0].tokens));
    }
}
