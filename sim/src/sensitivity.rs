//! `--sensitivity`: how each `--reproduce` point moves over the plausible range of every
//! parameter the published data cannot identify (the "trust the OS" run of each point, one
//! parameter changed at a time, everything else as in the presets).

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::{SimArgs, plan_for_device, run_plan, to_json};
use crate::device::{DeviceProfile, device_profile};
use crate::error::Result;
use crate::predict::PredictorKind;
use crate::reproduce::PUBLISHED;
use crate::vtime::Mode;

/// One parameter value tried on one point.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    pub case: String,
    pub parameter: String,
    pub value: String,
    pub tok_per_s: f64,
    /// Simulated / published − 1, %; for a point with a same-build reference
    /// ([`crate::reproduce::Reference`]), of the ratio to that reference, as `--reproduce`.
    pub error_pct: f64,
}

type Patch = Box<dyn Fn(&mut DeviceProfile) -> Result<()>>;

fn set_overhead(d: &mut DeviceProfile, us: f64) -> Result<()> {
    let f = crate::figure::Fig::new(us, "sensitivity");
    if d.compute.calibration.is_none()
        && let Some(other) = &d.compute.efficiency_of
    {
        // The efficiency comes from the calibrating preset: recompute it there with the
        // same overhead, so the two stay consistent.
        let mut o = device_profile(other)?;
        o.compute.layer_overhead_us = Some(f.clone());
        d.compute.efficiency_override = Some(o.compute_efficiency()?);
    }
    d.compute.layer_overhead_us = Some(f);
    Ok(())
}

/// The unidentified parameters of `device` and the values tried.
fn variants(device: &str) -> Vec<(String, String, Patch)> {
    let mut v: Vec<(String, String, Patch)> = Vec::new();
    for us in [600.0, 1200.0] {
        v.push((
            "compute.layer_overhead_us".into(),
            format!("{us:.0}"),
            Box::new(move |d| set_overhead(d, us)),
        ));
    }
    for x in [0.5, 2.0] {
        v.push((
            "page_cache_copy_gbps_per_thread".into(),
            format!("x{x}"),
            Box::new(move |d| {
                d.page_cache_copy_gbps_per_thread.value *= x;
                Ok(())
            }),
        ));
    }
    if device == "macbook-m3-max" {
        for c in [0.0, 1.0] {
            v.push((
                "contention".into(),
                format!("{c}"),
                Box::new(move |d| {
                    d.contention.value = c;
                    Ok(())
                }),
            ));
        }
        return v;
    }
    for split in [1.0, 8.0] {
        v.push((
            "buffered_io_split".into(),
            format!("{split}"),
            Box::new(move |d| {
                d.buffered_io_split = Some(crate::figure::Fig::new(split, "sensitivity"));
                Ok(())
            }),
        ));
    }
    let reserved: &[f64] = if device == "iphone-17-pro" {
        &[2.7e9, 6.0e9, 9.0e9]
    } else {
        &[2.0e9, 3.5e9]
    };
    for &r in reserved {
        v.push((
            "os_reserved_bytes".into(),
            format!("{:.1} GB", r / 1e9),
            Box::new(move |d| {
                d.os_reserved_bytes.value = r;
                Ok(())
            }),
        ));
    }
    let tier = if device == "iphone-17-pro" { 1.65 } else { 3.3 };
    v.push((
        "storage tier (flash GB/s)".into(),
        format!("{tier}"),
        Box::new(move |d| {
            for p in [&mut d.ssd_direct, &mut d.ssd_buffered] {
                p.peak_gbps.value = tier;
                p.single_request_gbps.value = tier / 2.0;
            }
            Ok(())
        }),
    ));
    if device == "iphone-17" {
        v.push((
            "ram_bytes".into(),
            "12 GB (the source's label)".into(),
            Box::new(|d| {
                d.ram_bytes.value = 12e9;
                Ok(())
            }),
        ));
        for bw in [51.2, 76.8] {
            v.push((
                "compute.mem_bw_gbps".into(),
                format!("{bw}"),
                Box::new(move |d| {
                    d.compute.mem_bw_gbps.value = bw;
                    Ok(())
                }),
            ));
        }
    }
    v
}

/// Runs every variant of every published point.
pub fn sensitivity_rows(args: &SimArgs) -> Result<Vec<Variant>> {
    let mut rows = Vec::new();
    for case in PUBLISHED {
        let mut args = args.clone();
        args.k = Some(case.k);
        args.model = case.model.into();
        let tok_s = |args: &SimArgs, d: DeviceProfile| -> Result<f64> {
            let (plan, trace) = plan_for_device(args, d, case.bits)?;
            let s = run_plan(
                args,
                &plan,
                &trace,
                Mode::TrustOs,
                PredictorKind::None,
                case.case,
            )?;
            Ok(s.tok_per_s)
        };
        let mut run = |parameter: String, value: String, d: DeviceProfile| -> Result<()> {
            let tok_per_s = tok_s(&args, d.clone())?;
            let error_pct = match case.reference {
                Some(r) => {
                    let mut ra = args.clone();
                    ra.k = Some(r.k);
                    let base = tok_s(&ra, d)?;
                    100.0 * ((tok_per_s / base) / (case.tok_per_s / r.tok_per_s) - 1.0)
                }
                None => 100.0 * (tok_per_s / case.tok_per_s - 1.0),
            };
            rows.push(Variant {
                case: case.case.into(),
                parameter,
                value,
                tok_per_s,
                error_pct,
            });
            Ok(())
        };
        run("preset".into(), "-".into(), device_profile(case.device)?)?;
        for (parameter, value, patch) in variants(case.device) {
            let mut d = device_profile(case.device)?;
            patch(&mut d)?;
            run(parameter, value, d)?;
        }
    }
    Ok(rows)
}

/// `--sensitivity`: text or JSON.
pub fn sensitivity(args: &SimArgs) -> Result<String> {
    let rows = sensitivity_rows(args)?;
    if args.json {
        return to_json(&rows);
    }
    let mut s = String::from(
        "Each published point (flash-moe's trust-the-OS pipeline), one unidentified parameter moved at a time:\n\n",
    );
    let _ = writeln!(
        s,
        "{:<31} {:<34} {:>23} {:>8} {:>8}",
        "case", "parameter", "value", "tok/s", "error"
    );
    for r in &rows {
        let _ = writeln!(
            s,
            "{:<31} {:<34} {:>23} {:>8.2} {:>7.1}%",
            r.case, r.parameter, r.value, r.tok_per_s, r.error_pct
        );
    }
    s += "(error of a pruning point: of its ratio to the same table's K=4, as in --reproduce)\n";
    Ok(s)
}
