//! Parsers for the two unit-bearing value kinds of the config: byte sizes
//! (`"12GiB"`, `"500MB"`, `1048576`) and durations (`"30s"`, `"2m"`, `"1m30s"`).
//!
//! Both work on integers only (a fractional part is read as digits, never as
//! a float), so `"1.5GiB"` is exactly 1610612736 bytes.

use std::time::Duration;

/// What a size may look like, for error messages.
pub const SIZE_ALLOWED: &str =
    "a byte count > 0 (an integer, or a number with a unit: B, KB, MB, GB, TB = powers of 1000; KiB, MiB, GiB, TiB = powers of 1024; e.g. \"12GiB\", \"500MB\")";

/// What a duration may look like, for error messages.
pub const DURATION_ALLOWED: &str =
    "a duration > 0 with units ms, s, m, h (e.g. \"500ms\", \"30s\", \"2m\", \"1m30s\")";

/// Split `"1.5"` into (integer part, fraction digits as an integer, 10^digits).
fn parse_decimal(number: &str) -> Option<(u128, u128, u128)> {
    let (int, frac) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 18 {
        return None;
    }
    if number.contains('.') && frac.is_empty() {
        return None;
    }
    let int: u128 = int.parse().ok()?;
    let scale = 10u128.pow(frac.len() as u32);
    let frac: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().ok()?
    };
    Some((int, frac, scale))
}

/// Parse a byte size: digits with an optional fraction, optional spaces, and
/// an optional unit (case-insensitive). Returns `None` for anything else, for
/// zero and for values past `u64::MAX`.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u128 = match unit.trim_start().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "m" | "mb" => 1000u128.pow(2),
        "g" | "gb" => 1000u128.pow(3),
        "t" | "tb" => 1000u128.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    let (int, frac, scale) = parse_decimal(number)?;
    let bytes = int.checked_mul(multiplier)? + frac * multiplier / scale;
    if bytes == 0 {
        return None;
    }
    u64::try_from(bytes).ok()
}

/// Parse a duration: one or more `<number><unit>` parts (`"1m30s"`, spaces
/// between parts allowed), units `ms`, `s`, `m`, `h`. A number without a unit
/// is rejected: `30` could mean seconds or milliseconds. Zero is rejected.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let split = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(split);
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => return None,
        };
        let (int, frac, scale) = parse_decimal(number)?;
        nanos = nanos.checked_add(int.checked_mul(unit_nanos)? + frac * unit_nanos / scale)?;
        rest = after.trim_start();
    }
    if nanos == 0 {
        return None;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// Render a byte count the way a user would write it (`12GiB`, `500MB`,
/// `1234B`), exact: a unit is used only when it divides the count.
pub fn format_size(bytes: u64) -> String {
    const UNITS: &[(u64, &str)] = &[
        (1 << 40, "TiB"),
        (1_000_000_000_000, "TB"),
        (1 << 30, "GiB"),
        (1_000_000_000, "GB"),
        (1 << 20, "MiB"),
        (1_000_000, "MB"),
        (1 << 10, "KiB"),
        (1000, "KB"),
    ];
    for &(size, name) in UNITS {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{name}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// Render a duration in the syntax `parse_duration` reads (`1m30s`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return format!("{}ms", d.as_secs_f64() * 1000.0);
    }
    let mut out = String::new();
    for (size, unit) in [(3_600_000, "h"), (60_000, "m"), (1000, "s"), (1, "ms")] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("12GiB"), Some(12 << 30));
        assert_eq!(parse_size("500MB"), Some(500_000_000));
        assert_eq!(parse_size("500 mb"), Some(500_000_000));
        assert_eq!(parse_size("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("7B"), Some(7));
        assert_eq!(parse_size("2k"), Some(2000));
        for bad in [
            "", "0", "0GiB", "GiB", "12 GiBs", "1.GiB", ".5GiB", "-1", "1e9", "12XB", "auto",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
        assert_eq!(parse_size("99999999TiB"), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h 2m"), Some(Duration::from_secs(3720)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        for bad in [
            "",
            "30",
            "0s",
            "0ms",
            "s",
            "5 minutes",
            "3d",
            "-1s",
            "1.s",
            "30sec",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formatting_round_trips() {
        for bytes in [1, 1000, 1024, 12 << 30, 500_000_000, 1234567] {
            assert_eq!(parse_size(&format_size(bytes)), Some(bytes));
        }
        for ms in [1, 500, 30_000, 90_000, 3_723_004] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)), Some(d));
        }
        assert_eq!(format_size(12 << 30), "12GiB");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
    }
}
