//! Allocation traces: reading the formats real programs and planners write.
//!
//! A [`Trace`] is the sequence of allocations and frees of a program, with every free
//! paired to the allocation it releases (block ids), ready to replay through any
//! allocator. Two formats are read here, gzip-compressed or not:
//!
//! - the CSV log of RAPIDS RMM's logging adaptor:
//!   `Thread,Time,Action,Pointer,Size,Stream`, with `Action` one of `allocate`,
//!   `allocate failure` or `free`, `Time` a clock time (`HH:MM:SS.ffffff`, hours may
//!   exceed 24) or a number, and `Pointer` in hex. A free is paired with the latest
//!   allocation at its address; frees of unknown addresses are counted, not fatal;
//! - MiniMalloc's static lifetimes, `id,lower,upper,size` (an extra `offset` column
//!   is accepted), replayed as an allocation at `lower` and a free at `upper`, frees
//!   first within a step.
//!
//! A malformed file is refused with the line and the reason.
//!
//! ```
//! use tensorpool::trace::Trace;
//!
//! let csv = "Thread,Time,Action,Pointer,Size,Stream\n\
//!            1,15:47:02.000277,allocate,0x1000,64,0\n\
//!            1,15:47:02.000280,allocate,0x2000,128,0\n\
//!            1,15:47:02.000287,free,0x1000,64,0\n\
//!            1,15:47:02.000290,free,0x9999,8,0\n";
//! let trace = Trace::parse(csv.as_bytes())?;
//! assert_eq!(trace.allocations, 2);
//! assert_eq!(trace.unmatched_frees, 1);
//! assert_eq!(trace.leaked_blocks, 1); // 0x2000 is never freed
//! assert_eq!(trace.peak_live_bytes(), 192);
//!
//! let bad = "Thread,Time,Action,Pointer,Size,Stream\n1,15:47:02.1,allocate,0x10,-8,0\n";
//! let err = Trace::parse(bad.as_bytes()).unwrap_err();
//! assert!(err.to_string().contains("line 2"));
//! # Ok::<(), tensorpool::Error>(())
//! ```

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

/// One event of a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Block `id` is allocated with `size` bytes.
    Alloc {
        /// The block.
        id: u32,
        /// Bytes requested.
        size: u64,
    },
    /// Block `id` is freed.
    Free {
        /// The block.
        id: u32,
    },
}

/// The format a trace was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RMM logging-adaptor CSV.
    RmmCsv,
    /// MiniMalloc `id,lower,upper,size` lifetimes.
    Intervals,
}

/// A parsed trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The format it was read from.
    pub format: Format,
    /// Allocations and frees, in order, frees paired to their allocation.
    pub events: Vec<Event>,
    /// Number of allocations (= number of distinct blocks).
    pub allocations: usize,
    /// Frees of addresses with no live allocation (left out of `events`).
    pub unmatched_frees: usize,
    /// Allocations the program saw fail (`allocate failure`, left out of `events`).
    pub failed_allocations: usize,
    /// Blocks still live at the end.
    pub leaked_blocks: usize,
}

fn malformed(line: usize, reason: impl Into<String>) -> Error {
    Error::MalformedTrace {
        line,
        reason: reason.into(),
    }
}

impl Trace {
    /// Reads a trace file (gzip or plain), naming the file in any error.
    pub fn read(path: impl AsRef<Path>) -> Result<Trace> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::TraceFile {
            path: path.display().to_string(),
            reason: Box::new(Error::InvalidConfig(format!("cannot read: {e}"))),
        })?;
        Self::parse(&bytes).map_err(|e| Error::TraceFile {
            path: path.display().to_string(),
            reason: Box::new(e),
        })
    }

    /// Parses a trace from bytes (gzip or plain); the format is told by the header.
    pub fn parse(bytes: &[u8]) -> Result<Trace> {
        let text;
        let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
            let mut out = Vec::with_capacity(bytes.len() * 8);
            flate2::read::MultiGzDecoder::new(bytes)
                .read_to_end(&mut out)
                .map_err(|e| {
                    malformed(0, format!("the gzip stream is damaged or truncated: {e}"))
                })?;
            text = out;
            &text[..]
        } else {
            bytes
        };
        let mut lines = bytes.split(|&b| b == b'\n');
        let header = lines.next().map(trim_cr).unwrap_or_default();
        let header =
            std::str::from_utf8(header).map_err(|_| malformed(1, "the header is not text"))?;
        let columns: Vec<&str> = header.split(',').map(str::trim).collect();
        match columns.as_slice() {
            ["Thread", "Time", "Action", "Pointer", "Size", "Stream"] => parse_rmm(lines),
            ["id", "lower", "upper", "size"] | ["id", "lower", "upper", "size", "offset"] => {
                parse_intervals(lines, columns.len())
            }
            _ if header.is_empty() => Err(malformed(1, "the file is empty")),
            _ => Err(malformed(
                1,
                format!(
                    "unknown header `{header}`: expected `Thread,Time,Action,Pointer,Size,Stream` \
                     (RMM) or `id,lower,upper,size` (MiniMalloc)"
                ),
            )),
        }
    }

    /// The most bytes live at once: the floor no allocator can go below.
    pub fn peak_live_bytes(&self) -> u64 {
        let mut sizes = vec![0u64; self.allocations];
        let (mut live, mut peak) = (0u64, 0u64);
        for e in &self.events {
            match *e {
                Event::Alloc { id, size } => {
                    sizes[id as usize] = size;
                    live += size;
                    peak = peak.max(live);
                }
                Event::Free { id } => live -= sizes[id as usize],
            }
        }
        peak
    }

    /// Runs the trace against an allocator: `alloc(size)` for every allocation and
    /// `free(ptr, size)` for every free of what it returned. Blocks still live at the
    /// end are freed too, so that the allocator ends empty. Stops at the first error
    /// of `alloc`.
    pub fn replay<E>(
        &self,
        mut alloc: impl FnMut(usize) -> std::result::Result<std::ptr::NonNull<u8>, E>,
        mut free: impl FnMut(std::ptr::NonNull<u8>, usize),
    ) -> std::result::Result<(), E> {
        let mut live: Vec<Option<(std::ptr::NonNull<u8>, usize)>> = vec![None; self.allocations];
        for event in &self.events {
            match *event {
                Event::Alloc { id, size } => {
                    let size = size as usize;
                    live[id as usize] = Some((alloc(size)?, size));
                }
                Event::Free { id } => {
                    if let Some((ptr, size)) = live[id as usize].take() {
                        free(ptr, size);
                    }
                }
            }
        }
        for (ptr, size) in live.into_iter().flatten() {
            free(ptr, size);
        }
        Ok(())
    }

    /// The size of every block, by id.
    pub fn block_sizes(&self) -> Vec<u64> {
        let mut sizes = vec![0u64; self.allocations];
        for e in &self.events {
            if let Event::Alloc { id, size } = *e {
                sizes[id as usize] = size;
            }
        }
        sizes
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits a line into exactly `N` comma-separated fields.
fn fields<const N: usize>(line: &[u8], n: usize) -> Result<[&[u8]; N]> {
    let mut out = [&line[..0]; N];
    let mut parts = line.split(|&b| b == b',');
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = parts
            .next()
            .ok_or_else(|| malformed(n, format!("expected {N} fields, found {i}")))?;
    }
    if parts.next().is_some() {
        return Err(malformed(n, format!("expected {N} fields, found more")));
    }
    Ok(out)
}

fn decimal(field: &[u8], what: &str, n: usize) -> Result<u64> {
    let text = String::from_utf8_lossy(field);
    if field.first() == Some(&b'-') {
        return Err(malformed(n, format!("{what} `{text}` is negative")));
    }
    if field.is_empty() || field.len() > 20 || !field.iter().all(u8::is_ascii_digit) {
        return Err(malformed(
            n,
            format!("{what} `{text}` is not a non-negative integer"),
        ));
    }
    field
        .iter()
        .try_fold(0u64, |acc, &d| {
            acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .ok_or_else(|| malformed(n, format!("{what} `{text}` is too large")))
}

fn hex_pointer(field: &[u8], n: usize) -> Result<u64> {
    let digits = field
        .strip_prefix(b"0x")
        .or_else(|| field.strip_prefix(b"0X"))
        .unwrap_or(field);
    if digits.is_empty() || digits.len() > 16 {
        return Err(malformed(
            n,
            format!(
                "pointer `{}` is not a hex address",
                String::from_utf8_lossy(field)
            ),
        ));
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        let v = (d as char).to_digit(16).ok_or_else(|| {
            malformed(
                n,
                format!(
                    "pointer `{}` is not a hex address",
                    String::from_utf8_lossy(field)
                ),
            )
        })?;
        Ok(acc << 4 | u64::from(v))
    })
}

/// Checks a `Time` field: `H+:MM:SS[.f+]` or a non-negative number.
fn check_time(field: &[u8], n: usize) -> Result<()> {
    let bad = || {
        malformed(
            n,
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
    let parts: Vec<&[u8]> = whole.split(|&b| b == b':').collect();
    let ok = match parts.as_slice() {
        [number] => digits(number),
        [h, m, s] => digits(h) && m.len() == 2 && s.len() == 2 && digits(m) && digits(s),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(bad())
    }
}

fn parse_rmm<'a>(lines: impl Iterator<Item = &'a [u8]>) -> Result<Trace> {
    let mut events = Vec::new();
    let mut live: HashMap<u64, u32> = HashMap::new();
    let (mut allocations, mut unmatched, mut failed, mut replaced) = (0u32, 0, 0, 0);
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        let line = trim_cr(line);
        if line.is_empty() {
            continue;
        }
        let [thread, time, action, pointer, size, stream] = fields::<6>(line, n)?;
        decimal(thread, "thread", n)?;
        check_time(time, n)?;
        let pointer = hex_pointer(pointer, n)?;
        let size = decimal(size, "size", n)?;
        decimal(stream, "stream", n)?;
        match action {
            b"allocate" => {
                if live.insert(pointer, allocations).is_some() {
                    // The earlier block at this address was never freed.
                    replaced += 1;
                }
                events.push(Event::Alloc {
                    id: allocations,
                    size,
                });
                allocations = allocations
                    .checked_add(1)
                    .ok_or_else(|| malformed(n, "more than 4 billion allocations"))?;
            }
            b"free" => match live.remove(&pointer) {
                Some(id) => events.push(Event::Free { id }),
                None => unmatched += 1,
            },
            b"allocate failure" => failed += 1,
            other => {
                return Err(malformed(
                    n,
                    format!(
                        "unknown action `{}`: expected allocate, allocate failure or free",
                        String::from_utf8_lossy(other)
                    ),
                ))
            }
        }
    }
    Ok(Trace {
        format: Format::RmmCsv,
        events,
        allocations: allocations as usize,
        unmatched_frees: unmatched,
        failed_allocations: failed,
        leaked_blocks: live.len() + replaced,
    })
}

fn parse_intervals<'a>(lines: impl Iterator<Item = &'a [u8]>, columns: usize) -> Result<Trace> {
    // (time, 0 = free / 1 = alloc, block, size)
    let mut stamped: Vec<(u64, u8, u32, u64)> = Vec::new();
    let mut ids = HashMap::new();
    for (i, line) in lines.enumerate() {
        let n = i + 2;
        let line = trim_cr(line);
        if line.is_empty() {
            continue;
        }
        let [id, lower, upper, size] = if columns == 5 {
            let [id, lower, upper, size, offset] = fields::<5>(line, n)?;
            decimal(offset, "offset", n)?;
            [id, lower, upper, size]
        } else {
            fields::<4>(line, n)?
        };
        let id = decimal(id, "id", n)?;
        let (lower, upper) = (decimal(lower, "lower", n)?, decimal(upper, "upper", n)?);
        let size = decimal(size, "size", n)?;
        if lower >= upper {
            return Err(malformed(
                n,
                format!("lower ({lower}) must be below upper ({upper})"),
            ));
        }
        let block = u32::try_from(stamped.len() / 2)
            .map_err(|_| malformed(n, "more than 4 billion buffers"))?;
        if ids.insert(id, n).is_some() {
            return Err(malformed(n, format!("buffer id {id} appears twice")));
        }
        stamped.push((lower, 1, block, size));
        stamped.push((upper, 0, block, size));
    }
    stamped.sort_unstable_by_key(|&(t, kind, block, _)| (t, kind, block));
    let allocations = stamped.len() / 2;
    let events = stamped
        .into_iter()
        .map(|(_, kind, id, size)| {
            if kind == 1 {
                Event::Alloc { id, size }
            } else {
                Event::Free { id }
            }
        })
        .collect();
    Ok(Trace {
        format: Format::Intervals,
        events,
        allocations,
        unmatched_frees: 0,
        failed_allocations: 0,
        leaked_blocks: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Thread,Time,Action,Pointer,Size,Stream\n";

    fn rmm(rows: &str) -> Result<Trace> {
        Trace::parse(format!("{HEADER}{rows}").as_bytes())
    }

    fn reason(result: Result<Trace>) -> (usize, String) {
        match result {
            Err(Error::MalformedTrace { line, reason }) => (line, reason),
            other => panic!("expected a malformed trace, got {other:?}"),
        }
    }

    #[test]
    fn rmm_pairs_frees_with_the_latest_allocation() {
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
    }

    #[test]
    fn rmm_rejects_each_malformed_field() {
        let cases = [
            ("1,00:00:01,allocate,0x10,8\n", "expected 6 fields"),
            ("1,00:00:01,allocate,0x10,8,0,9\n", "found more"),
            ("x,00:00:01,allocate,0x10,8,0\n", "thread"),
            ("1,25h,allocate,0x10,8,0\n", "time"),
            ("1,00:0:01,allocate,0x10,8,0\n", "time"),
            ("1,00:00:01.,allocate,0x10,8,0\n", "time"),
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
                "not a non-negative integer",
            ),
            (
                "1,00:00:01,allocate,0x10,18446744073709551616,0\n",
                "too large",
            ),
            ("1,00:00:01,allocate,0x10,8,s\n", "stream"),
        ];
        for (row, needle) in cases {
            let (line, why) = reason(rmm(&format!("1,00:00:00,allocate,0x1,1,0\n{row}")));
            assert_eq!(line, 3, "{row}");
            assert!(why.contains(needle), "`{needle}` not in `{why}` for {row}");
        }
    }

    #[test]
    fn intervals_free_before_allocating_in_a_step() {
        let t = Trace::parse(b"id,lower,upper,size\n0,0,2,100\n1,2,3,50\n2,0,1,7\n").unwrap();
        assert_eq!(
            t.events,
            vec![
                Event::Alloc { id: 0, size: 100 },
                Event::Alloc { id: 2, size: 7 },
                Event::Free { id: 2 },
                Event::Free { id: 0 },
                Event::Alloc { id: 1, size: 50 },
                Event::Free { id: 1 },
            ]
        );
        assert_eq!(t.peak_live_bytes(), 107);
        let with_offsets = Trace::parse(b"id,lower,upper,size,offset\n0,0,1,5,0\n").unwrap();
        assert_eq!(with_offsets.allocations, 1);
    }

    #[test]
    fn intervals_reject_bad_rows() {
        for (row, needle) in [
            ("0,2,2,5", "must be below"),
            ("0,0,1", "expected 4 fields"),
            ("0,0,-1,5", "negative"),
            ("0,a,1,5", "lower"),
        ] {
            let (line, why) = reason(Trace::parse(
                format!("id,lower,upper,size\n{row}\n").as_bytes(),
            ));
            assert_eq!(line, 2);
            assert!(why.contains(needle), "`{needle}` not in `{why}`");
        }
        let (line, why) = reason(Trace::parse(b"id,lower,upper,size\n1,0,1,5\n1,0,2,5\n"));
        assert_eq!((line, why.contains("twice")), (3, true));
    }

    #[test]
    fn replay_pairs_and_drains() {
        let t = rmm("1,0,allocate,0x10,8,0\n1,0,allocate,0x20,16,0\n1,0,free,0x10,8,0\n").unwrap();
        let log = std::cell::RefCell::new(Vec::new());
        let mut next = 0x1000usize;
        t.replay(
            |size| {
                next += 0x100;
                log.borrow_mut().push(format!("alloc {size}"));
                Ok::<_, ()>(std::ptr::NonNull::new(next as *mut u8).unwrap())
            },
            |ptr, size| {
                log.borrow_mut()
                    .push(format!("free {:#x} {size}", ptr.as_ptr() as usize))
            },
        )
        .unwrap();
        let log = log.into_inner();
        assert_eq!(
            log,
            ["alloc 8", "alloc 16", "free 0x1100 8", "free 0x1200 16"]
        );
        assert_eq!(t.replay(|_| Err("full"), |_, _| {}), Err("full"));
    }

    #[test]
    fn headers_gzip_and_empty_files() {
        assert!(reason(Trace::parse(b"")).1.contains("empty"));
        assert!(reason(Trace::parse(b"a,b,c\n"))
            .1
            .contains("unknown header"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(
            &mut gz,
            format!("{HEADER}1,0,allocate,0x1,1,0\n").as_bytes(),
        )
        .unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(Trace::parse(&gz).unwrap().allocations, 1);
        let (_, why) = reason(Trace::parse(&gz[..gz.len() - 6]));
        assert!(why.contains("gzip"), "{why}");
    }
}
