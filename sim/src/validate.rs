//! Range checks of every number the simulator takes from a user: device profile fields,
//! `flashmoe sim` arguments, and the resolved [`RunSpec`] (a last guard for callers of the
//! library). A zero or NaN bandwidth would make virtual time stand still (the run never
//! ends), a NaN compute time prints `tok/s NaN`: both are refused up front, each message
//! naming the field and its unit.

use crate::cli::SimArgs;
use crate::device::{DeviceProfile, SsdPath};
use crate::error::{Result, SimError};
use crate::vtime::RunSpec;

/// Most tokens (warmup + measured) a run may simulate: the synthetic trace holds
/// `tokens × layers × k` ids in memory.
pub const MAX_TOKENS: u64 = 10_000_000;

/// Most expert ids a synthetic trace may hold in memory (4 GiB of `u32`).
pub const MAX_TRACE_IDS: u64 = 1 << 30;

/// Longest `--ttft` prompt: the prefill model walks every token of every layer and keeps one
/// union size per chunk and layer, so a prompt of 2⁶⁴ tokens ran forever. 1 Mi tokens is
/// above every preset model's context.
pub const MAX_PROMPT_TOKENS: u64 = 1 << 20;

/// The accepted range of one number.
#[derive(Clone, Copy)]
enum Range {
    /// `> 0` and finite.
    Positive,
    /// `>= 0` and finite.
    NonNegative,
    /// In `[0, 1]`.
    Share,
    /// `>= 1` and finite.
    AtLeastOne,
}

fn check(what: &str, value: f64, unit: &str, range: Range) -> std::result::Result<(), String> {
    let ok = value.is_finite()
        && match range {
            Range::Positive => value > 0.0,
            Range::NonNegative => value >= 0.0,
            Range::Share => (0.0..=1.0).contains(&value),
            Range::AtLeastOne => value >= 1.0,
        };
    if ok {
        return Ok(());
    }
    let want = match range {
        Range::Positive => "a finite number > 0",
        Range::NonNegative => "a finite number >= 0",
        Range::Share => "between 0 and 1",
        Range::AtLeastOne => "a finite number >= 1",
    };
    let unit = if unit.is_empty() {
        String::new()
    } else {
        format!(" {unit}")
    };
    Err(format!("{what} = {value}{unit}: must be {want}"))
}

fn path_checks(name: &str, p: &SsdPath) -> Vec<(String, f64, &'static str, Range)> {
    vec![
        (
            format!("{name}.peak_gbps"),
            p.peak_gbps.value,
            "GB/s",
            Range::Positive,
        ),
        (
            format!("{name}.single_request_gbps"),
            p.single_request_gbps.value,
            "GB/s",
            Range::Positive,
        ),
        (
            format!("{name}.latency_us"),
            p.latency_us.value,
            "µs",
            Range::NonNegative,
        ),
        (
            format!("{name}.channels"),
            p.channels.value,
            "requests",
            Range::AtLeastOne,
        ),
    ]
}

/// Checks every numeric field of a device profile (named `name` in the error).
pub fn check_profile(name: &str, d: &DeviceProfile) -> Result<()> {
    let mut checks = vec![
        (
            "ram_bytes".to_string(),
            d.ram_bytes.value,
            "bytes",
            Range::Positive,
        ),
        (
            "os_reserved_bytes".into(),
            d.os_reserved_bytes.value,
            "bytes",
            Range::NonNegative,
        ),
        (
            "page_cache_copy_gbps_per_thread".into(),
            d.page_cache_copy_gbps_per_thread.value,
            "GB/s",
            Range::Positive,
        ),
        (
            "buffered_threads".into(),
            d.buffered_threads.value,
            "threads",
            Range::AtLeastOne,
        ),
        (
            "compute.mem_bw_gbps".into(),
            d.compute.mem_bw_gbps.value,
            "GB/s",
            Range::Positive,
        ),
        (
            "contention".into(),
            d.contention.value,
            "(slowdown at full SSD use)",
            Range::NonNegative,
        ),
    ];
    if let Some(f) = &d.page_cache_bytes {
        checks.push((
            "page_cache_bytes".into(),
            f.value,
            "bytes",
            Range::NonNegative,
        ));
    }
    if let Some(c) = &d.compute.calibration {
        checks.push((
            "compute.calibration.ms_per_layer".into(),
            c.ms_per_layer.value,
            "ms",
            Range::Positive,
        ));
    }
    if let Some(f) = &d.compute.layer_overhead_us {
        checks.push((
            "compute.layer_overhead_us".into(),
            f.value,
            "µs",
            Range::NonNegative,
        ));
    }
    if let Some(f) = &d.buffered_io_split {
        checks.push((
            "buffered_io_split".into(),
            f.value,
            "chunks",
            Range::AtLeastOne,
        ));
    }
    if let Some(c) = &d.costs {
        let mut pos = |what: &str, f: &crate::figure::Fig, unit: &'static str| {
            checks.push((format!("costs.{what}"), f.value, unit, Range::Positive));
        };
        pos("soc_power_w", &c.soc_power_w, "W");
        pos(
            "flash_read_nj_per_byte",
            &c.flash_read_nj_per_byte,
            "nJ/byte",
        );
        pos("dram_pj_per_byte", &c.dram_pj_per_byte, "pJ/byte");
        pos("sustained_power_w", &c.sustained_power_w, "W");
        pos("flash_capacity_bytes", &c.flash_capacity_bytes, "bytes");
        pos("flash_tbw_bytes", &c.flash_tbw_bytes, "bytes");
        if let Some(b) = &c.battery_wh {
            pos("battery_wh", b, "Wh");
        }
        checks.push((
            "costs.system_base_w".into(),
            c.system_base_w.value,
            "W",
            Range::NonNegative,
        ));
    }
    if let Some(p) = &d.prefill {
        checks.push((
            "prefill.gpu_tflops".into(),
            p.gpu_tflops.value,
            "TFLOPS",
            Range::Positive,
        ));
        checks.push((
            "prefill.flop_efficiency".into(),
            p.flop_efficiency.value,
            "",
            Range::Share,
        ));
    }
    checks.extend(path_checks("ssd_direct", &d.ssd_direct));
    checks.extend(path_checks("ssd_buffered", &d.ssd_buffered));
    for (what, value, unit, range) in checks {
        check(&what, value, unit, range).map_err(|reason| SimError::Profile {
            name: name.into(),
            reason,
        })?;
    }
    if d.os_reserved_bytes.value >= d.ram_bytes.value {
        return Err(SimError::Profile {
            name: name.into(),
            reason: format!(
                "os_reserved_bytes = {} bytes: must be less than ram_bytes = {} bytes (nothing \
                 would be left for the model)",
                d.os_reserved_bytes.value, d.ram_bytes.value
            ),
        });
    }
    Ok(())
}

/// Checks the numeric arguments of `flashmoe sim`.
pub fn check_args(a: &SimArgs) -> Result<()> {
    let setup = SimError::Setup;
    let opt = |what: &str, v: Option<f64>, unit: &str, r: Range| match v {
        Some(v) => check(what, v, unit, r),
        None => Ok(()),
    };
    opt("--ssd-peak-gbps", a.ssd_peak_gbps, "GB/s", Range::Positive).map_err(setup)?;
    opt(
        "--ssd-single-gbps",
        a.ssd_single_gbps,
        "GB/s",
        Range::Positive,
    )
    .map_err(setup)?;
    opt("--contention", a.contention, "", Range::NonNegative).map_err(setup)?;
    opt("--budget-gb", a.budget_gb, "GB", Range::NonNegative).map_err(setup)?;
    for &b in &a.sweep_budgets_gb {
        check("--sweep-budgets-gb", b, "GB", Range::NonNegative).map_err(setup)?;
    }
    opt("--reuse", a.reuse, "", Range::Share).map_err(setup)?;
    opt("--recent", a.recent, "", Range::Share).map_err(setup)?;
    opt("--cross-layer", a.cross_layer, "", Range::Share).map_err(setup)?;
    opt("--pregate-recall", a.pregate_recall, "", Range::Share).map_err(setup)?;
    opt("--skew", a.skew, "(Zipf exponent)", Range::NonNegative).map_err(setup)?;
    if a.queue_depth == Some(0) {
        return Err(setup("--queue-depth = 0 reads: must be >= 1".into()));
    }
    if a.max_per_layer == Some(0) {
        return Err(setup("--max-per-layer = 0 experts: must be >= 1".into()));
    }
    if a.tokens == 0 {
        return Err(setup("--tokens = 0: must be >= 1".into()));
    }
    if !(1..=MAX_PROMPT_TOKENS).contains(&a.prompt_tokens) {
        return Err(setup(format!(
            "--prompt-tokens = {} tokens: must be in 1..={MAX_PROMPT_TOKENS}",
            a.prompt_tokens
        )));
    }
    if a.chunk == 0 {
        return Err(setup(
            "--chunk = 0 tokens: must be >= 1 (1 = token by token)".into(),
        ));
    }
    match a.warmup.checked_add(a.tokens) {
        Some(n) if n <= MAX_TOKENS => Ok(()),
        _ => Err(setup(format!(
            "--warmup {} + --tokens {} tokens: at most {MAX_TOKENS} in all",
            a.warmup, a.tokens
        ))),
    }
}

/// Checks a resolved run: bandwidths > 0 (infinite allowed: an instant device), latency and
/// compute times finite and >= 0, contention >= 0, at least one channel.
pub fn check_spec(s: &RunSpec) -> Result<()> {
    let bw = |what: &str, v: f64| {
        if v > 0.0 && !v.is_nan() {
            Ok(())
        } else {
            Err(format!("{what} = {} GB/s: must be > 0", v / 1e9))
        }
    };
    bw("SSD peak bandwidth", s.ssd.peak_bps)
        .and_then(|()| bw("SSD single-request bandwidth", s.ssd.single_bps))
        .and_then(|()| bw("page-cache copy bandwidth", s.copy_bps_per_thread))
        .and_then(|()| check("SSD latency", s.ssd.latency_ns, "ns", Range::NonNegative))
        .and_then(|()| {
            check(
                "compute before routing",
                s.compute_pre_ns,
                "ns/layer",
                Range::NonNegative,
            )
        })
        .and_then(|()| {
            check(
                "expert compute",
                s.compute_post_ns,
                "ns/layer",
                Range::NonNegative,
            )
        })
        .and_then(|()| check("contention", s.contention, "", Range::NonNegative))
        .and_then(|()| check("pre-gate recall", s.pregate_recall, "", Range::Share))
        .and_then(|()| {
            if s.ssd.channels == 0 {
                Err("SSD channels = 0 requests: must be >= 1".into())
            } else {
                Ok(())
            }
        })
        .and_then(|()| match s.warmup_tokens.checked_add(s.tokens) {
            Some(_) => Ok(()),
            None => Err(format!(
                "warmup {} + tokens {} overflows",
                s.warmup_tokens, s.tokens
            )),
        })
        .map_err(SimError::Setup)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_unit_and_refuses_nan() {
        let e = check("x.peak_gbps", f64::NAN, "GB/s", Range::Positive).unwrap_err();
        assert!(e.contains("GB/s") && e.contains("NaN"), "{e}");
        assert!(check("r", 1.5, "", Range::Share).is_err());
        assert!(check("c", -0.1, "", Range::NonNegative).is_err());
        assert!(check("n", 0.5, "requests", Range::AtLeastOne).is_err());
        assert!(check("b", 0.0, "GB/s", Range::Positive).is_err());
        check("b", 3.0, "GB/s", Range::Positive).unwrap();
    }
}
