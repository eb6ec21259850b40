//! Go `time.Duration` text, as k0s reads and prints it: `ParseDuration`'s
//! input and `Duration.String()`'s output (`1m0s`, `1.5s`, `1.234ms`).

use std::time::Duration;

/// A Go `time.ParseDuration` string in nanoseconds: an optional sign, then
/// decimal numbers with units `ns`, `us`/`µs`, `ms`, `s`, `m`, `h`
/// (`1m`, `1.5s`, `1h2m`, `-3s`, `0`). `None` if it is not one.
pub fn parse_go_duration(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && fraction.is_empty() {
            return None;
        }
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut value = whole.checked_mul(scale)?;
        let mut place = scale;
        for digit in fraction.chars() {
            place /= 10;
            value += i128::from(digit.to_digit(10)? as u8) * place;
        }
        total = total.checked_add(value)?;
        rest = after;
    }
    Some(if negative { -total } else { total })
}

/// `d` as Go's `Duration.String()` prints it: `0s`, `999ns`, `1.5µs`,
/// `1.234ms`, `1.5s`, `1m0s`, `2h3m4.5s`.
pub fn format_go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{}{unit}", nanos / scale, fraction(nanos % scale, scale));
    }
    let seconds = nanos / 1_000_000_000;
    let frac = fraction(nanos % 1_000_000_000, 1_000_000_000);
    let (h, m, s) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if h > 0 {
        format!("{h}h{m}m{s}{frac}s")
    } else if m > 0 {
        format!("{m}m{s}{frac}s")
    } else {
        format!("{s}{frac}s")
    }
}

/// `.5` for 500 of 1000; empty for 0; trailing zeros cut, as Go's `fmtFrac`.
fn fraction(rest: u128, scale: u128) -> String {
    if rest == 0 {
        return String::new();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{rest:0width$}");
    format!(".{}", digits.trim_end_matches('0'))
}

/// serde: a duration as Go prints it.
pub(crate) fn serialize_go_duration<S: serde::Serializer>(
    d: &Duration,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_go_duration(*d))
}

/// serde: an optional duration as Go prints it, `null` when unset.
pub(crate) fn serialize_optional_go_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_go_duration(*d)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_go() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(999), "999ns"),
            (Duration::from_nanos(1_500), "1.5µs"),
            (Duration::from_micros(1234), "1.234ms"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_secs(3), "3s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(3723), "1h2m3s"),
            (Duration::from_millis(7_384_500), "2h3m4.5s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_go_duration(d), want, "{d:?}");
            // What Go prints, Go (and cplb) reads back.
            assert_eq!(
                parse_go_duration(want),
                Some(d.as_nanos() as i128),
                "{want}"
            );
        }
    }
}
