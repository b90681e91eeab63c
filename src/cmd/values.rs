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
        assert_eq!(positive_usize("4"), Ok(4));
    }
}
