//! Human-readable sizes: `512MiB`, `10GiB`, `1TB`, `4096`, `1.5GiB`. Binary units (KiB, MiB, GiB,
//! TiB, PiB) are powers of 1024; decimal units (kB/KB, MB, GB, TB, PB) powers of 1000; a single
//! letter (`K`, `M`, `G`, `T`, `P`) is taken as binary, as qemu-img and dd read it.

/// Why a string is not a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// The text is not a number followed by an optional unit.
    #[error("{0:?} is not a size; write a number and a unit, e.g. 512MiB, 10GiB or 1TB")]
    Malformed(String),
    /// The unit is unknown.
    #[error(
        "{unit:?} in {text:?} is not a size unit; use B, KiB, MiB, GiB, TiB, kB, MB, GB or TB"
    )]
    UnknownUnit { text: String, unit: String },
    /// The value does not fit in 64 bits of bytes.
    #[error("{0:?} is too large")]
    TooLarge(String),
}

/// Parses a size in bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim();
    if number.is_empty() || number.matches('.').count() > 1 || number.ends_with('.') {
        return Err(SizeError::Malformed(text.to_string()));
    }
    let multiplier: u64 = match unit {
        "" | "B" | "b" => 1,
        "K" | "k" | "KiB" => 1 << 10,
        "M" | "MiB" => 1 << 20,
        "G" | "GiB" => 1 << 30,
        "T" | "TiB" => 1 << 40,
        "P" | "PiB" => 1 << 50,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        "PB" => 1_000_000_000_000_000,
        _ => {
            return Err(SizeError::UnknownUnit {
                text: text.to_string(),
                unit: unit.to_string(),
            })
        }
    };
    let too_large = || SizeError::TooLarge(text.to_string());
    match number.split_once('.') {
        None => {
            let n: u64 = number.parse().map_err(|_| too_large())?;
            n.checked_mul(multiplier).ok_or_else(too_large)
        }
        Some((whole, frac)) => {
            let whole: u64 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| too_large())?
            };
            let digits = frac.len().min(9) as u32;
            let frac: u64 = frac[..digits as usize]
                .parse()
                .map_err(|_| SizeError::Malformed(text.to_string()))?;
            let scale = 10u64.pow(digits);
            let whole_bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
            let frac_bytes = (u128::from(frac) * u128::from(multiplier) / u128::from(scale)) as u64;
            whole_bytes.checked_add(frac_bytes).ok_or_else(too_large)
        }
    }
}

/// Formats bytes for people: the largest binary unit that leaves a value ≥ 1, with up to two
/// decimals and trailing zeros dropped (`1GiB`, `1.5MiB`, `512B`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut unit = 0;
    while unit + 1 < UNITS.len() && bytes >= 1u64 << (10 * (unit + 1)) {
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes}B");
    }
    let value = bytes as f64 / (1u64 << (10 * unit)) as f64;
    let text = format!("{value:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}{}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_spec_examples() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("1TB"), Ok(1_000_000_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size(" 2G "), Ok(2 << 30));
    }

    #[test]
    fn refuses_nonsense() {
        for bad in ["", "GiB", "-1GiB", "1..2G", "1.", "abc", "1 GiBs"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_size("10 parsecs"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("99999999999PiB"),
            Err(SizeError::TooLarge(_))
        ));
    }

    #[test]
    fn formats_for_people() {
        assert_eq!(format_size(512), "512B");
        assert_eq!(format_size(1 << 30), "1GiB");
        assert_eq!(format_size(3 << 19), "1.5MiB");
    }

    proptest! {
        #[test]
        fn formatted_whole_units_parse_back(n in 0u64..1024, unit in 0u32..5) {
            let bytes = n << (10 * unit);
            prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }
}
