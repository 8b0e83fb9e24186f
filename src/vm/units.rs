//! Sizes as Lima writes and reads them (docker's go-units): `RAMInBytes`
//! parsing, binary for every suffix, and `BytesSize` formatting.

/// Parses "4GiB", "4G", "4g", "100GiB", "512MiB", "1.5GiB", "1024" (bytes).
/// All suffixes are binary, as in go-units `RAMInBytes`.
pub(crate) fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num.parse().ok()?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let unit = unit.strip_suffix('i').unwrap_or(unit);
    let exp = match unit {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        "p" => 5,
        _ => return None,
    };
    if value < 0.0 {
        return None;
    }
    Some((value * 1024f64.powi(exp)) as u64)
}

/// Formats like go-units `BytesSize`: `%.4g` with binary suffixes
/// ("4GiB", "100GiB", "3.814GiB").
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut i = 0;
    while value >= 1024.0 && i < UNITS.len() - 1 {
        value /= 1024.0;
        i += 1;
    }
    format!("{}{}", format_g4(value), UNITS[i])
}

/// C's `%.4g` for the non-negative values `format_bytes` produces (< 1024).
fn format_g4(v: f64) -> String {
    let digits_before = if v < 1.0 {
        1
    } else {
        v.log10().floor() as i32 + 1
    };
    let decimals = (4 - digits_before).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_suffixes() {
        assert_eq!(parse_bytes("4GiB"), Some(4 << 30));
        assert_eq!(parse_bytes("4G"), Some(4 << 30));
        assert_eq!(parse_bytes("4g"), Some(4 << 30));
        assert_eq!(parse_bytes("100GiB"), Some(100 << 30));
        assert_eq!(parse_bytes("512MiB"), Some(512 << 20));
        assert_eq!(parse_bytes("1.5GiB"), Some(3 << 29));
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("4XB"), None);
    }

    #[test]
    fn formats_like_go_units() {
        assert_eq!(format_bytes(4 << 30), "4GiB");
        assert_eq!(format_bytes(100 << 30), "100GiB");
        assert_eq!(format_bytes(4_096_000_000), "3.815GiB");
        assert_eq!(format_bytes(512), "512B");
        assert_eq!(format_bytes(1536 << 20), "1.5GiB");
    }
}
