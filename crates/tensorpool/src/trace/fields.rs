//! Fields of the CSV trace formats, parsed from bytes without allocating.

use super::{malformed, Location};
use crate::error::Result;

/// The line without a trailing carriage return.
pub(crate) fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits line `n` into exactly `N` comma-separated fields.
#[inline]
pub(crate) fn split<const N: usize>(line: &[u8], n: usize) -> Result<[&[u8]; N]> {
    let mut out = [&line[..0]; N];
    let mut start = 0;
    let mut field = 0;
    for (i, &b) in line.iter().enumerate() {
        if b == b',' {
            if field + 1 == N {
                return Err(malformed(
                    Location::Line(n),
                    format!("expected {N} fields, found more"),
                ));
            }
            out[field] = &line[start..i];
            field += 1;
            start = i + 1;
        }
    }
    if field + 1 != N {
        return Err(malformed(
            Location::Line(n),
            format!("expected {N} fields, found {}", field + 1),
        ));
    }
    out[field] = &line[start..];
    Ok(out)
}

/// A non-negative decimal integer field named `what` on line `n`.
#[inline]
pub(crate) fn decimal(field: &[u8], what: &str, n: usize) -> Result<u64> {
    let mut value = 0u64;
    if !field.is_empty() && field.len() <= 19 {
        // At most 19 digits cannot overflow: the fast path of every valid field.
        let mut ok = true;
        for &d in field {
            ok &= d.is_ascii_digit();
            value = value
                .wrapping_mul(10)
                .wrapping_add(u64::from(d.wrapping_sub(b'0')));
        }
        if ok {
            return Ok(value);
        }
    }
    bad_decimal(field, what, n)
}

#[cold]
fn bad_decimal(field: &[u8], what: &str, n: usize) -> Result<u64> {
    // Shown escaped: a stray carriage return or other control character is seen.
    let text = String::from_utf8_lossy(field).escape_debug().to_string();
    let at = Location::Line(n);
    if field.first() == Some(&b'-') {
        return Err(malformed(at, format!("{what} `{text}` is negative")));
    }
    if field.is_empty() || !field.iter().all(u8::is_ascii_digit) {
        return Err(malformed(
            at,
            format!("{what} `{text}` is not a non-negative integer"),
        ));
    }
    // Twenty digits or more (leading zeros included) may still fit.
    field
        .iter()
        .try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or_else(|| malformed(at, format!("{what} `{text}` is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_u64_is_read_and_only_a_larger_one_is_too_large() {
        for (text, value) in [
            ("0", 0),
            ("1234567890123456789", 1_234_567_890_123_456_789),
            ("18446744073709551615", u64::MAX),
            ("00000000000000000000042", 42),
        ] {
            assert_eq!(
                decimal(text.as_bytes(), "size", 2).unwrap(),
                value,
                "{text}"
            );
        }
        let e = decimal(b"18446744073709551616", "size", 2).unwrap_err();
        assert!(e.to_string().contains("too large"), "{e}");
    }
}
