//! Fields of the CSV trace formats, parsed from bytes without allocating.

use super::{malformed, Location};
use crate::error::Result;

/// The line without a trailing carriage return.
pub(crate) fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits line `n` into exactly `N` comma-separated fields.
pub(crate) fn split<const N: usize>(line: &[u8], n: usize) -> Result<[&[u8]; N]> {
    let mut out = [&line[..0]; N];
    let mut parts = line.split(|&b| b == b',');
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = parts.next().ok_or_else(|| {
            malformed(Location::Line(n), format!("expected {N} fields, found {i}"))
        })?;
    }
    if parts.next().is_some() {
        return Err(malformed(
            Location::Line(n),
            format!("expected {N} fields, found more"),
        ));
    }
    Ok(out)
}

/// A non-negative decimal integer field named `what` on line `n`.
pub(crate) fn decimal(field: &[u8], what: &str, n: usize) -> Result<u64> {
    let text = String::from_utf8_lossy(field);
    let at = Location::Line(n);
    if field.first() == Some(&b'-') {
        return Err(malformed(at, format!("{what} `{text}` is negative")));
    }
    if field.is_empty() || field.len() > 20 || !field.iter().all(u8::is_ascii_digit) {
        return Err(malformed(
            at,
            format!("{what} `{text}` is not a non-negative integer"),
        ));
    }
    field
        .iter()
        .try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or_else(|| malformed(at, format!("{what} `{text}` is too large")))
}
