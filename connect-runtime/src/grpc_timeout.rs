//! The `grpc-timeout` header: how long the remote has for a call, in at most
//! eight digits and a unit (gRPC over HTTP/2's format).

use std::time::Duration;

use http::HeaderValue;

/// The header's name.
pub(crate) const HEADER: &str = "grpc-timeout";

const MAX_DIGITS: u128 = 99_999_999;
const UNITS: [(u128, u8); 6] = [
    (1, b'n'),
    (1_000, b'u'),
    (1_000_000, b'm'),
    (1_000_000_000, b'S'),
    (60_000_000_000, b'M'),
    (3_600_000_000_000, b'H'),
];

/// `timeout` as a header value, rounded up so that the remote never sees
/// less time than the caller has, and saturating at the largest value the
/// format holds.
pub(crate) fn format(timeout: Duration) -> HeaderValue {
    HeaderValue::try_from(text(timeout)).expect("digits and a letter")
}

/// [`format`]'s value as text.
pub(crate) fn text(timeout: Duration) -> String {
    let nanos = timeout.as_nanos();
    let (value, unit) = UNITS
        .iter()
        .find_map(|&(per, unit)| {
            let value = nanos.div_ceil(per);
            (value <= MAX_DIGITS).then_some((value, unit))
        })
        .unwrap_or((MAX_DIGITS, b'H'));
    format!("{value}{}", char::from(unit))
}

/// The timeout a header value gives; `None` if it is not one.
pub(crate) fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value: u128 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let (per, _) = UNITS.iter().find(|(_, u)| *u == unit)?;
    let nanos = value * per;
    Some(Duration::new(
        u64::try_from(nanos / 1_000_000_000).ok()?,
        (nanos % 1_000_000_000) as u32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_fit_eight_digits_and_round_up() {
        let value = |d| format(d).to_str().unwrap().to_owned();
        assert_eq!(value(Duration::from_nanos(5)), "5n");
        assert_eq!(value(Duration::from_millis(250)), "250000u");
        assert_eq!(value(Duration::from_nanos(100_000_001)), "100001u");
        assert_eq!(value(Duration::from_secs(5)), "5000000u");
        assert_eq!(value(Duration::from_secs(200_000)), "200000S");
        assert_eq!(value(Duration::from_secs(200_000_000)), "3333334M");
        assert_eq!(value(Duration::MAX), "99999999H");
    }

    #[test]
    fn what_is_formatted_parses_back_at_least_as_long() {
        for d in [
            Duration::from_nanos(5),
            Duration::from_millis(250),
            Duration::from_secs(200_000_000),
        ] {
            assert!(parse(format(d).as_bytes()).unwrap() >= d, "{d:?}");
        }
        assert_eq!(
            parse(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3600))
        );
    }

    #[test]
    fn malformed_values_are_not_timeouts() {
        for bad in ["", "S", "5", "5x", "123456789S", "-5S", "5 S"] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
