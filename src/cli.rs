//! Value parsers shared by the command-line tools, so that a bad number
//! (negative, fractional, too large) gets a message naming what the flag
//! accepts, rather than a parser's internal wording.

/// A whole number ≥ 1 (sample counts, batch sizes, epochs, widths).
/// Most threads `--threads` takes: far above any machine's cores, low enough
/// that a typo cannot make the backend try to spawn millions.
pub const MAX_THREADS: usize = 1024;

/// `--threads N`: 1 to [`MAX_THREADS`].
pub fn threads(text: &str) -> Result<std::num::NonZeroUsize, String> {
    let n = positive(text)?;
    if n > MAX_THREADS {
        return Err(format!(
            "{n} threads is more than the {MAX_THREADS} allowed"
        ));
    }
    Ok(std::num::NonZeroUsize::new(n).expect("positive"))
}

pub fn positive(text: &str) -> Result<usize, String> {
    if text.trim().starts_with('-') {
        return Err(format!(
            "{} is negative; give a whole number, 1 or more",
            text.trim()
        ));
    }
    match whole(text)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// A whole number ≥ 0.
pub fn whole(text: &str) -> Result<usize, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!(
            "{text} is negative; give a whole number, 0 or more"
        ));
    }
    text.parse::<usize>().map_err(|e| match e.kind() {
        std::num::IntErrorKind::PosOverflow => {
            format!("{text} is more than the largest accepted, {}", usize::MAX)
        }
        _ => format!("`{text}` is not a whole number (write e.g. 100)"),
    })
}

/// A seed: any whole number from 0 to 2^64 − 1.
pub fn seed(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return Err(format!(
            "{text} is negative; a seed is a whole number from 0 to {}",
            u64::MAX
        ));
    }
    text.parse::<u64>().map_err(|_| {
        format!(
            "`{text}` is not a seed; write a whole number from 0 to {}",
            u64::MAX
        )
    })
}

/// A finite number ≥ 0 (learning rates, momentum, weight decay, τ).
pub fn non_negative(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if !value.is_finite() {
        return Err(format!("{text} is not a finite number"));
    }
    if value < 0.0 {
        return Err(format!("{text} is negative; give 0 or more"));
    }
    Ok(value)
}

/// A finite number > 0.
pub fn positive_number(text: &str) -> Result<f64, String> {
    if text.trim().starts_with('-') {
        return Err(format!(
            "{} is negative; give a number more than 0",
            text.trim()
        ));
    }
    match non_negative(text)? {
        v if v > 0.0 => Ok(v),
        _ => Err(format!("{text} must be more than 0")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_the_flag_accepts() {
        assert_eq!(positive("12"), Ok(12));
        assert!(positive("-5").unwrap_err().contains("negative"));
        assert!(positive("0").unwrap_err().contains("at least 1"));
        assert!(positive("1.5").unwrap_err().contains("not a whole number"));
        assert!(whole("99999999999999999999999")
            .unwrap_err()
            .contains("largest"));
        assert!(seed("-1").unwrap_err().contains("negative"));
        assert_eq!(seed("18446744073709551615"), Ok(u64::MAX));
        assert!(non_negative("-5").unwrap_err().contains("negative"));
        assert!(non_negative("inf").unwrap_err().contains("finite"));
        assert!(positive_number("0").unwrap_err().contains("more than 0"));
        assert_eq!(threads("2").map(|n| n.get()), Ok(2));
        assert!(threads("0").unwrap_err().contains("at least 1"));
        assert!(threads("5000").unwrap_err().contains("1024"));
    }
}
