//! The CSV log of RAPIDS RMM's logging adaptor.
//!
//! `Thread,Time,Action,Pointer,Size,Stream`: `Action` is `allocate`, `allocate
//! failure` or `free`; `Time` is a clock time (`HH:MM:SS.ffffff`, the hours may exceed
//! 24) or a number; `Pointer` is hex. A free is paired with the latest allocation at
//! its address.

use super::fields::{decimal, split, trim_cr};
use super::{malformed, Format, LineParser, Location, Pairing, Trace};
use crate::error::Result;

/// The header line of the format.
pub const HEADER: &str = "Thread,Time,Action,Pointer,Size,Stream";

/// The parser of the lines after the header.
#[derive(Default)]
pub(crate) struct Parser {
    pairing: Pairing,
}

impl LineParser for Parser {
    #[inline]
    fn line(&mut self, line: &[u8], n: usize) -> Result<()> {
        let line = trim_cr(line);
        if line.is_empty() {
            return Ok(());
        }
        let [thread, time, action, pointer, size, stream] = split::<6>(line, n)?;
        decimal(thread, "thread", n)?;
        let time = parse_time(time, n)?;
        let pointer = hex_pointer(pointer, n)?;
        let size = decimal(size, "size", n)?;
        decimal(stream, "stream", n)?;
        match action {
            b"allocate" => self.pairing.alloc(pointer, size, time, Location::Line(n)),
            b"free" => {
                self.pairing.free(pointer, time);
                Ok(())
            }
            b"allocate failure" => {
                self.pairing.failed();
                Ok(())
            }
            other => Err(malformed(
                Location::Line(n),
                format!(
                    "unknown action `{}`: expected allocate, allocate failure or free",
                    String::from_utf8_lossy(other)
                ),
            )),
        }
    }

    fn finish(self) -> Result<Trace> {
        Ok(self.pairing.finish(Format::RmmCsv))
    }
}

#[inline]
fn hex_pointer(field: &[u8], n: usize) -> Result<u64> {
    let digits = field
        .strip_prefix(b"0x")
        .or_else(|| field.strip_prefix(b"0X"))
        .unwrap_or(field);
    let mut value = 0u64;
    let mut ok = !digits.is_empty() && digits.len() <= 16;
    for &d in digits {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => {
                ok = false;
                0
            }
        };
        value = value << 4 | u64::from(v);
    }
    if ok {
        Ok(value)
    } else {
        Err(malformed(
            Location::Line(n),
            format!(
                "pointer `{}` is not a hex address",
                String::from_utf8_lossy(field)
            ),
        ))
    }
}

/// Reads a `Time` field, `H+:MM:SS[.f+]` or a non-negative number of seconds, as
/// nanoseconds.
#[inline]
fn parse_time(field: &[u8], n: usize) -> Result<u64> {
    // The common shape, HH:MM:SS.ffffff, read in one pass.
    if field.len() == 15
        && field[2] == b':'
        && field[5] == b':'
        && field[8] == b'.'
        && field
            .iter()
            .enumerate()
            .all(|(i, d)| matches!(i, 2 | 5 | 8) || d.is_ascii_digit())
        && field[3] < b'6'
        && field[6] < b'6'
    {
        let num = |r: std::ops::Range<usize>| {
            field[r]
                .iter()
                .fold(0u64, |v, d| v * 10 + u64::from(d - b'0'))
        };
        let seconds = num(0..2) * 3600 + num(3..5) * 60 + num(6..8);
        return Ok(seconds * 1_000_000_000 + num(9..15) * 1000);
    }
    parse_time_slowly(field, n)
}

#[cold]
fn parse_time_slowly(field: &[u8], n: usize) -> Result<u64> {
    let bad = || {
        malformed(
            Location::Line(n),
            format!(
                "time `{}` is neither HH:MM:SS.ffffff nor a number",
                String::from_utf8_lossy(field)
            ),
        )
    };
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    let (whole, frac) = match field.iter().position(|&b| b == b'.') {
        Some(dot) => (&field[..dot], Some(&field[dot + 1..])),
        None => (field, None),
    };
    if frac.is_some_and(|f| !digits(f)) {
        return Err(bad());
    }
    let value = |s: &[u8]| {
        s.iter().try_fold(0u64, |v, d| {
            v.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    };
    let mut parts = whole.split(|&b| b == b':');
    let seconds = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(number), None, None, None) if digits(number) => value(number),
        // Minutes and seconds of a clock: 00 to 59.
        (Some(h), Some(m), Some(s), None)
            if digits(h)
                && m.len() == 2
                && s.len() == 2
                && digits(m)
                && digits(s)
                && m[0] < b'6'
                && s[0] < b'6' =>
        {
            (|| {
                value(h)?
                    .checked_mul(3600)?
                    .checked_add(value(m)? * 60 + value(s)?)
            })()
        }
        _ => None,
    }
    .ok_or_else(bad)?;
    // Nanoseconds from the first nine digits of the fraction.
    let nanos = frac.map_or(0, |f| {
        (0..9).fold(0u64, |v, i| {
            v * 10 + f.get(i).map_or(0, |d| u64::from(d - b'0'))
        })
    });
    seconds
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(nanos))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::super::tests::reason;
    use super::super::{Event, Trace};
    use super::*;
    use crate::error::Result;

    fn rmm(rows: &str) -> Result<Trace> {
        Trace::parse(format!("{HEADER}\n{rows}").as_bytes())
    }

    #[test]
    fn frees_pair_with_the_latest_allocation() {
        let t = rmm("1,00:00:01.5,allocate,0x10,8,0\n\
                     1,00:00:02,free,0x10,8,0\n\
                     1,00:00:03,allocate,0x10,16,0\n\
                     1,1417:48:04.722180,allocate failure,0x0,99,0\n\
                     1,5,free,0x10,16,0\r\n")
        .unwrap();
        assert_eq!(
            t.events,
            vec![
                Event::Alloc { id: 0, size: 8 },
                Event::Free { id: 0 },
                Event::Alloc { id: 1, size: 16 },
                Event::Free { id: 1 },
            ]
        );
        assert_eq!(
            (t.failed_allocations, t.unmatched_frees, t.leaked_blocks),
            (1, 0, 0)
        );
        assert_eq!(t.peak_live_bytes(), 16);
        // Each event's time, in nanoseconds.
        assert_eq!(
            t.times,
            vec![1_500_000_000, 2_000_000_000, 3_000_000_000, 5_000_000_000]
        );
    }

    #[test]
    fn times_read_as_nanoseconds() {
        let t = rmm("1,1417:48:04.722180,allocate,0x10,8,0\n\
                     1,01:02:03.000000001,free,0x10,8,0\n\
                     1,12.25,allocate,0x20,8,0\n")
        .unwrap();
        let hms = |h: u64, m: u64, s: u64| (h * 3600 + m * 60 + s) * 1_000_000_000;
        assert_eq!(
            t.times,
            vec![
                hms(1417, 48, 4) + 722_180_000,
                hms(1, 2, 3) + 1,
                12_250_000_000
            ]
        );
        assert!(rmm("1,99999999999999999999,allocate,0x10,8,0\n").is_err());
        // Minutes and seconds past 59 are no clock time (they were read as one).
        for time in [
            "00:61:09.000001",
            "00:01:99.000001",
            "1417:60:04.5",
            "3:04:75",
        ] {
            let line = format!("1,{time},allocate,0x10,8,0\n");
            let e = rmm(&line).unwrap_err().to_string();
            assert!(e.contains(time) && e.contains("line 2"), "{time}: {e}");
        }
    }

    #[test]
    fn each_malformed_field_is_named_with_its_line() {
        let cases = [
            ("1,00:00:01,allocate,0x10,8\n", "expected 6 fields"),
            ("1,00:00:01,allocate,0x10,8,0,9\n", "found more"),
            ("x,00:00:01,allocate,0x10,8,0\n", "thread"),
            ("1,25h,allocate,0x10,8,0\n", "time"),
            ("1,00:0:01,allocate,0x10,8,0\n", "time"),
            ("1,00:00:01.,allocate,0x10,8,0\n", "time"),
            ("1,1:2:3:4,allocate,0x10,8,0\n", "time"),
            ("1,00:00:01,alloc,0x10,8,0\n", "unknown action"),
            ("1,00:00:01,allocate,0xZZ,8,0\n", "pointer"),
            ("1,00:00:01,allocate,0x,8,0\n", "pointer"),
            ("1,00:00:01,allocate,0x10,-8,0\n", "negative"),
            (
                "1,00:00:01,allocate,0x10,8.5,0\n",
                "not a non-negative integer",
            ),
            (
                "1,00:00:01,allocate,0x10,99999999999999999999999,0\n",
                "too large",
            ),
            // A control character is shown, not printed.
            ("1,00:00:01,allocate,0x10,10\r0,0\n", "`10\\r0`"),
            (
                "1,00:00:01,allocate,0x10,18446744073709551616,0\n",
                "too large",
            ),
            ("1,00:00:01,allocate,0x10,8,s\n", "stream"),
        ];
        for (row, needle) in cases {
            let (at, why) = reason(rmm(&format!("1,00:00:00,allocate,0x1,1,0\n{row}")));
            assert_eq!(at, Location::Line(3), "{row}");
            assert!(why.contains(needle), "`{needle}` not in `{why}` for {row}");
        }
    }
}
