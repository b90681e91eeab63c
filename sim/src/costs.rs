//! What a run costs the user: energy per token, tokens per battery charge, sustained power
//! against the thermal envelope, and flash wear.
//!
//! Energy of one token (every term from the device's [`CostProfile`]):
//!
//! ```text
//! J/token = SoC power × token time              (CPU + GPU under this load, whole token)
//!         + flash bytes read × flash J/byte     (every byte the simulated SSD moved)
//!         + DRAM bytes × DRAM J/byte            (weights the kernels read, flash bytes
//!                                                landing in DRAM, page-cache copies ×2)
//! ```
//!
//! Wear: NAND cells wear by program/erase cycles, i.e. writes; reads do not consume P/E
//! cycles (read disturb is refreshed by the controller, which rewrites a block only after
//! very many reads of it). So inference reads add nothing to the endurance budget; the
//! packer writes the model once, and that write is set against the rated TBW.

use serde::{Deserialize, Serialize};

use crate::figure::Fig;
use crate::geometry::Geometry;

/// Power, battery, thermal and endurance figures of a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CostProfile {
    /// W drawn by the SoC (CPU + GPU) while the model runs.
    pub soc_power_w: Fig,
    /// W of the rest of the system (display, radios idle) while the user watches tokens.
    pub system_base_w: Fig,
    /// J per byte read from flash (controller + NAND + link).
    pub flash_read_nj_per_byte: Fig,
    /// J per byte moved to or from DRAM.
    pub dram_pj_per_byte: Fig,
    /// Wh of a full battery (absent: mains powered).
    #[serde(default)]
    pub battery_wh: Option<Fig>,
    /// W the chassis can dissipate without throttling (sustained thermal envelope).
    pub sustained_power_w: Fig,
    /// Bytes of flash (the storage tier).
    pub flash_capacity_bytes: Fig,
    /// Rated endurance, bytes written (TBW).
    pub flash_tbw_bytes: Fig,
    /// Thermal time constant of the chassis, s ([`crate::throttle`]).
    #[serde(default = "default_tau")]
    pub thermal_tau_s: Fig,
    /// SoC power ∝ clock^this under DVFS ([`crate::throttle`]).
    #[serde(default = "default_exponent")]
    pub dvfs_power_exponent: Fig,
}

fn default_tau() -> Fig {
    Fig::new(
        240.0,
        "assumption within 120-600 s: phone GPU stress tests (3DMark loops of about a minute) lose their peak within the first 2-5 loops at about twice the sustained power, i.e. tau ln 2 = 2-5 min; the iPhone 16 Pro loses over a third of its GPU score under sustained load (notebookcheck.com, iPhone 16 Pro test)",
    )
}

fn default_exponent() -> Fig {
    Fig::new(
        2.0,
        "assumption within 1-3: dynamic power f V^2 with voltage falling with clock near the top of the DVFS curve (3 if V tracks f, 1 at the voltage floor)",
    )
}

/// The costs of one simulated run, per token and per hour of use.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CostReport {
    pub tok_per_s: f64,
    /// Energy split per token, J.
    pub soc_j_per_token: f64,
    pub flash_j_per_token: f64,
    pub dram_j_per_token: f64,
    pub j_per_token: f64,
    /// Average power while generating (SoC + flash + DRAM, without the system base), W.
    pub power_w: f64,
    /// Power over the thermal envelope (> 1: throttling will set in).
    pub thermal_ratio: f64,
    /// Tokens one full charge gives (system base included); None when mains powered.
    pub tokens_per_charge: Option<f64>,
    /// Hours of generation one full charge gives.
    pub hours_per_charge: Option<f64>,
    /// Flash bytes read per hour of generation.
    pub flash_read_bytes_per_hour: f64,
    /// Bytes the packer writes once (the packed model), and that write as a share of TBW.
    pub model_write_bytes: f64,
    pub model_write_share_of_tbw: f64,
    /// P/E-cycle wear of one hour of generation (reads: none).
    pub read_wear_share_of_tbw_per_hour: f64,
    /// Thermal throttling over time ([`crate::throttle`]).
    pub throttle: crate::throttle::Throttle,
}

/// Bytes of the packed model file: every expert plus the non-expert weights.
pub fn model_bytes(g: &Geometry) -> f64 {
    g.layers as f64 * g.experts as f64 * g.expert_bytes as f64 + g.non_expert_bytes as f64
}

/// The inputs of one cost estimate, per token.
#[derive(Debug, Clone, Copy)]
pub struct TokenWork {
    pub seconds: f64,
    /// The part of `seconds` spent computing (slows with the clock when throttled).
    pub compute_seconds: f64,
    /// Bytes the SSD moved.
    pub flash_bytes: f64,
    /// Bytes the kernels read from DRAM (weights).
    pub kernel_bytes: f64,
    /// Bytes copied from the page cache into user buffers (trust-the-OS; 0 for direct reads).
    pub copied_bytes: f64,
}

impl CostProfile {
    /// Costs of a run doing `w` per token, of model `g`.
    pub fn report(&self, w: TokenWork, g: &Geometry) -> CostReport {
        let soc = self.soc_power_w.value * w.seconds;
        let flash = w.flash_bytes * self.flash_read_nj_per_byte.value * 1e-9;
        // Flash bytes land in DRAM once; a page-cache copy reads and writes DRAM.
        let dram_bytes = w.kernel_bytes + w.flash_bytes + 2.0 * w.copied_bytes;
        let dram = dram_bytes * self.dram_pj_per_byte.value * 1e-12;
        let j = soc + flash + dram;
        let power = if w.seconds > 0.0 { j / w.seconds } else { 0.0 };
        let with_base = j + self.system_base_w.value * w.seconds;
        let per_charge = self
            .battery_wh
            .as_ref()
            .map(|b| b.value * 3600.0 / with_base.max(f64::MIN_POSITIVE));
        let tok_per_s = if w.seconds > 0.0 {
            1.0 / w.seconds
        } else {
            f64::INFINITY
        };
        let model = model_bytes(g);
        let throttle = crate::throttle::ThermalInput {
            compute_s: w.compute_seconds.clamp(0.0, w.seconds),
            stall_s: (w.seconds - w.compute_seconds).max(0.0),
            soc_w: self.soc_power_w.value,
            io_j: flash + dram,
            sustained_w: self.sustained_power_w.value,
            tau_s: self.thermal_tau_s.value,
            exponent: self.dvfs_power_exponent.value,
        }
        .throttle();
        CostReport {
            tok_per_s,
            soc_j_per_token: soc,
            flash_j_per_token: flash,
            dram_j_per_token: dram,
            j_per_token: j,
            power_w: power,
            thermal_ratio: power / self.sustained_power_w.value,
            tokens_per_charge: per_charge,
            hours_per_charge: per_charge.map(|t| t / tok_per_s / 3600.0),
            flash_read_bytes_per_hour: w.flash_bytes * tok_per_s * 3600.0,
            model_write_bytes: model,
            model_write_share_of_tbw: model / self.flash_tbw_bytes.value,
            read_wear_share_of_tbw_per_hour: 0.0,
            throttle,
        }
    }
}

impl CostReport {
    /// A few lines for the run summary.
    pub fn text(&self) -> String {
        let mut s = format!(
            "  energy         {:.2} J/token = SoC {:.2} + flash {:.3} + DRAM {:.3}; {:.1} W while generating ({:.0}% of the sustained envelope{})\n",
            self.j_per_token,
            self.soc_j_per_token,
            self.flash_j_per_token,
            self.dram_j_per_token,
            self.power_w,
            100.0 * self.thermal_ratio,
            if self.thermal_ratio > 1.0 {
                ": throttling expected"
            } else {
                ""
            }
        );
        let t = &self.throttle;
        if let Some(th) = t.time_to_throttle_s {
            s += &format!(
                "  throttling     after {:.1} min: clock {:.0}%, {:.2} -> {:.2} tok/s (tokens in 30 min: {:.0})\n",
                th / 60.0,
                100.0 * t.clock_share,
                t.unthrottled_tok_per_s,
                t.sustained_tok_per_s,
                t.after.last().map_or(0.0, |a| a.tokens)
            );
        }
        if let (Some(t), Some(h)) = (self.tokens_per_charge, self.hours_per_charge) {
            s += &format!(
                "  battery        {t:.0} tokens per full charge ({h:.1} h of generation)\n"
            );
        }
        s += &format!(
            "  flash wear     reads {:.0} GB per hour of use: 0 P/E cycles (reads do not wear NAND); the packer's one write of {:.0} GB = {:.2}% of the rated TBW\n",
            self.flash_read_bytes_per_hour / 1e9,
            self.model_write_bytes / 1e9,
            100.0 * self.model_write_share_of_tbw
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> CostProfile {
        let f = |v: f64| Fig::new(v, "test");
        CostProfile {
            soc_power_w: f(10.0),
            system_base_w: f(1.0),
            flash_read_nj_per_byte: f(0.5),
            dram_pj_per_byte: f(40.0),
            battery_wh: Some(f(15.0)),
            sustained_power_w: f(5.0),
            flash_capacity_bytes: f(512e9),
            flash_tbw_bytes: f(300e12),
            thermal_tau_s: f(240.0),
            dvfs_power_exponent: f(2.0),
        }
    }

    fn g() -> Geometry {
        Geometry {
            name: "t".into(),
            layers: 2,
            experts: 4,
            bits: 4,
            expert_bytes: 1000,
            non_expert_bytes: 2000,
        }
    }

    #[test]
    fn energy_grows_with_flash_bytes_and_battery_holds_fewer_tokens() {
        let p = profile();
        let w = |flash: f64| TokenWork {
            seconds: 1.0,
            compute_seconds: 0.5,
            flash_bytes: flash,
            kernel_bytes: 1e9,
            copied_bytes: 0.0,
        };
        let a = p.report(w(1e9), &g());
        let b = p.report(w(2e9), &g());
        assert!(b.j_per_token > a.j_per_token);
        // 1e9 more bytes: 0.5 J of flash + 0.04 J of DRAM.
        assert!((b.j_per_token - a.j_per_token - 0.54).abs() < 1e-9);
        assert!(b.tokens_per_charge.unwrap() < a.tokens_per_charge.unwrap());
        assert_eq!(a.read_wear_share_of_tbw_per_hour, 0.0);
        assert_eq!(a.model_write_bytes, 2.0 * 4.0 * 1000.0 + 2000.0);
    }
}
