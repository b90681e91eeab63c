//! Typed, range-checked values of command-line arguments (clap `value_parser`s): a bad value
//! is refused when the arguments are parsed, with the range and unit in the message.

/// `--temperature`: a finite number >= 0 (0 is greedy).
pub fn temperature(s: &str) -> Result<f32, String> {
    let t: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !t.is_finite() || t < 0.0 {
        return Err(format!("{t}: must be a finite number >= 0 (0 is greedy)"));
    }
    Ok(t)
}

/// `--prefill-chunk`: prompt tokens per chunk, at least 1 (1 is token by token).
pub fn prefill_chunk(s: &str) -> Result<usize, String> {
    let n: usize = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of tokens"))?;
    if n == 0 {
        return Err("0: a chunk holds at least 1 token (1 is token by token)".into());
    }
    Ok(n)
}

/// `--top-p`: a probability mass in (0, 1].
pub fn top_p(s: &str) -> Result<f32, String> {
    let p: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !(p > 0.0 && p <= 1.0) {
        return Err(format!("{p}: must be a probability mass in (0, 1]"));
    }
    Ok(p)
}

/// A count that must be at least 1 (`--experts`, `--k` of io-bench).
pub fn positive_u32(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number"))?;
    if n == 0 {
        return Err("0: must be at least 1".into());
    }
    Ok(n)
}

/// [`positive_u32`] as a `usize`.
pub fn positive_usize(s: &str) -> Result<usize, String> {
    positive_u32(s).map(|n| n as usize)
}

/// Most MiB a size argument in MiB may name (`--file-mib`, `--mib-per-row` of io-bench): 1 TiB.
pub const MAX_MIB: u64 = 1 << 20;

/// A size in MiB in `1..=`[`MAX_MIB`] (a larger one would overflow when turned into bytes).
pub fn mib(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of MiB"))?;
    if !(1..=MAX_MIB).contains(&n) {
        return Err(format!("{n} MiB: must be in 1..={MAX_MIB} MiB"));
    }
    Ok(n)
}

/// Largest expert record io-bench writes: 1 GiB (real ones are a few MiB).
pub const MAX_EXPERT_BYTES: u64 = 1 << 30;

/// `--expert-bytes` of io-bench: a record size in `1..=`[`MAX_EXPERT_BYTES`] bytes.
pub fn expert_bytes(s: &str) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number of bytes"))?;
    if !(1..=MAX_EXPERT_BYTES).contains(&n) {
        return Err(format!(
            "{n} bytes: must be in 1..={MAX_EXPERT_BYTES} bytes"
        ));
    }
    Ok(n)
}

/// A share in `[0, 1]` (`--pre-share`, `--pregate-recall`).
pub fn share(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{x}: must be a share in [0, 1]"));
    }
    Ok(x)
}

/// A time in microseconds: finite and `>= 0` (`--compute-us`).
pub fn micros(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !x.is_finite() || x < 0.0 {
        return Err(format!("{x} µs: must be a finite number >= 0"));
    }
    Ok(x)
}

/// A bandwidth in GB/s: finite and `> 0` (`--sim-gbps`).
pub fn gbps(s: &str) -> Result<f64, String> {
    let x: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if !(x.is_finite() && x > 0.0) {
        return Err(format!("{x} GB/s: must be a finite number > 0"));
    }
    Ok(x)
}

/// Parses a budget: `512M`, `2G`, `64K`, `1048576` (bytes, powers of 1024) or `25%` of
/// `all_bytes` (what holding every expert takes).
pub fn parse_budget(s: &str, all_bytes: u64) -> Result<u64, String> {
    let t = s.trim();
    let bad =
        || format!("--budget {s:?}: expected bytes (512M, 2G, 1048576) or a percentage (25%)");
    if let Some(p) = t.strip_suffix('%') {
        let p: f64 = p.trim().parse().map_err(|_| bad())?;
        if p.is_nan() || p <= 0.0 || p > 100.0 {
            return Err(format!("--budget {s:?}: a percentage must be in (0, 100]"));
        }
        return Ok((all_bytes as f64 * p / 100.0).ceil() as u64);
    }
    let upper = t.to_ascii_uppercase();
    let upper = upper.trim_end_matches("IB").trim_end_matches('B');
    let (num, mult) = match upper.chars().last() {
        Some('K') => (&upper[..upper.len() - 1], 1u64 << 10),
        Some('M') => (&upper[..upper.len() - 1], 1 << 20),
        Some('G') => (&upper[..upper.len() - 1], 1 << 30),
        Some('T') => (&upper[..upper.len() - 1], 1 << 40),
        _ => (upper, 1),
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    if n == 0.0 {
        return Err(format!(
            "--budget {s:?}: must be more than 0 bytes (the cache must hold at least k experts)"
        ));
    }
    if n.is_nan() || n < 0.0 || !n.is_finite() {
        return Err(bad());
    }
    Ok((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_nan_out_of_range_and_zero() {
        assert!(temperature("nan").is_err());
        assert!(temperature("-1").is_err());
        assert!(temperature("inf").is_err());
        assert_eq!(temperature("0.8"), Ok(0.8));
        assert!(top_p("2").is_err());
        assert!(top_p("nan").is_err());
        assert!(top_p("0").is_err());
        assert_eq!(top_p("1"), Ok(1.0));
        assert!(positive_u32("0").is_err());
        assert!(mib("0").is_err() && mib("18446744073709551615").is_err());
        assert!(share("1.5").is_err() && share("nan").is_err() && share("-0.1").is_err());
        assert_eq!(share("0.5"), Ok(0.5));
        assert!(micros("nan").is_err() && micros("-1").is_err() && micros("inf").is_err());
        assert!(gbps("0").is_err() && gbps("nan").is_err());
        assert_eq!(mib("512"), Ok(512));
        assert!(expert_bytes("0").is_err() && expert_bytes("18446744073709551615").is_err());
        assert_eq!(expert_bytes("4096"), Ok(4096));
        assert_eq!(positive_usize("4"), Ok(4));
    }

    #[test]
    fn budgets_parse() {
        assert_eq!(parse_budget("512M", 0), Ok(512 << 20));
        assert_eq!(parse_budget("2G", 0), Ok(2 << 30));
        assert_eq!(parse_budget("2GiB", 0), Ok(2 << 30));
        assert_eq!(parse_budget("1048576", 0), Ok(1 << 20));
        assert_eq!(parse_budget("25%", 1000), Ok(250));
        assert!(parse_budget("0%", 1000).is_err());
        assert!(parse_budget("lots", 1000).is_err());
        assert!(parse_budget("-5M", 1000).is_err());
        for zero in ["0", "0M", "0.0G"] {
            let e = parse_budget(zero, 1000).unwrap_err();
            assert!(e.contains("more than 0 bytes"), "{e}");
        }
    }
}
