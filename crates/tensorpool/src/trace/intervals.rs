//! MiniMalloc's static lifetimes: `id,lower,upper,size`.
//!
//! Each row is a buffer live over the half-open interval `[lower, upper)` of steps. A
//! fifth `offset` column (IREE's planned offsets, or a plan `tensorpool plan` wrote)
//! is read into [`Trace::offsets`].
//! As a replay: every buffer is allocated at `lower` and freed at `upper`, frees
//! first within a step. [`write`](fn@write) writes a plan in the same format, offsets included.

use super::fields::{decimal, split, trim_cr};
use super::{malformed, Event, Format, LineParser, Location, Trace};
use crate::error::Result;
use std::collections::HashMap;
use std::io::Write;

/// The parser of the lines after the header.
pub(crate) struct Parser {
    /// 4, or 5 with offsets.
    columns: usize,
    /// (time, 0 = free / 1 = alloc, block, size)
    stamped: Vec<(u64, u8, u32, u64)>,
    /// Buffer id -> the line it was first seen on.
    ids: HashMap<u64, usize>,
    /// Planned offsets by block, with 5 columns.
    offsets: Vec<u64>,
}

impl Parser {
    pub(crate) fn new(columns: usize) -> Self {
        Parser {
            columns,
            stamped: Vec::new(),
            ids: HashMap::new(),
            offsets: Vec::new(),
        }
    }
}

impl LineParser for Parser {
    fn line(&mut self, line: &[u8], n: usize) -> Result<()> {
        let line = trim_cr(line);
        if line.is_empty() {
            return Ok(());
        }
        let [id, lower, upper, size] = if self.columns == 5 {
            let [id, lower, upper, size, offset] = split::<5>(line, n)?;
            self.offsets.push(decimal(offset, "offset", n)?);
            [id, lower, upper, size]
        } else {
            split::<4>(line, n)?
        };
        let id = decimal(id, "id", n)?;
        let (lower, upper) = (decimal(lower, "lower", n)?, decimal(upper, "upper", n)?);
        let size = decimal(size, "size", n)?;
        super::check_size(size, Location::Line(n))?;
        if lower >= upper {
            return Err(malformed(
                Location::Line(n),
                format!("lower ({lower}) must be below upper ({upper})"),
            ));
        }
        let block = u32::try_from(self.stamped.len() / 2)
            .map_err(|_| malformed(Location::Line(n), "more than 4 billion buffers"))?;
        if let Some(first) = self.ids.insert(id, n) {
            return Err(malformed(
                Location::Line(n),
                format!("buffer id {id} appears twice (first on line {first})"),
            ));
        }
        self.stamped.push((lower, 1, block, size));
        self.stamped.push((upper, 0, block, size));
        Ok(())
    }

    fn finish(mut self) -> Result<Trace> {
        self.stamped
            .sort_unstable_by_key(|&(t, kind, block, _)| (t, kind, block));
        let allocations = self.stamped.len() / 2;
        let times = self.stamped.iter().map(|&(t, ..)| t).collect();
        let events = self
            .stamped
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
            times,
            offsets: self.offsets,
        })
    }
}

/// A buffer with its planned offset, as written by [`write`](fn@write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// Buffer id.
    pub id: u64,
    /// First step it is live.
    pub lower: u64,
    /// First step it is no longer live.
    pub upper: u64,
    /// Bytes.
    pub size: u64,
    /// Its offset in the planned arena.
    pub offset: u64,
}

/// Writes buffers with offsets as `id,lower,upper,size,offset`, which [`Trace::parse`]
/// and MiniMalloc read back.
pub fn write(out: &mut impl Write, buffers: &[Placed]) -> std::io::Result<()> {
    writeln!(out, "id,lower,upper,size,offset")?;
    for b in buffers {
        writeln!(
            out,
            "{},{},{},{},{}",
            b.id, b.lower, b.upper, b.size, b.offset
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::reason;
    use super::*;

    #[test]
    fn frees_come_before_allocations_within_a_step() {
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
        // Each event keeps the instance's own time (not a clock: replays ignore it).
        assert_eq!(t.times, vec![0, 0, 1, 2, 2, 3]);
        assert!(!t.format.times_are_nanoseconds());
    }

    #[test]
    fn offsets_are_read_and_written() {
        let mut out = Vec::new();
        let plan = [
            Placed {
                id: 0,
                lower: 0,
                upper: 1,
                size: 5,
                offset: 0,
            },
            Placed {
                id: 1,
                lower: 0,
                upper: 2,
                size: 3,
                offset: 5,
            },
        ];
        write(&mut out, &plan).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "id,lower,upper,size,offset\n0,0,1,5,0\n1,0,2,3,5\n"
        );
        let back = Trace::parse(&out).unwrap();
        assert_eq!(back.allocations, 2);
        assert_eq!(back.offsets, vec![0, 5]);
    }

    #[test]
    fn bad_rows_are_named_with_their_line() {
        for (row, needle) in [
            ("0,2,2,5", "must be below"),
            ("0,0,1", "expected 4 fields"),
            ("0,0,-1,5", "negative"),
            ("0,a,1,5", "lower"),
        ] {
            let (at, why) = reason(Trace::parse(
                format!("id,lower,upper,size\n{row}\n").as_bytes(),
            ));
            assert_eq!(at, Location::Line(2));
            assert!(why.contains(needle), "`{needle}` not in `{why}`");
        }
        let (at, why) = reason(Trace::parse(b"id,lower,upper,size\n1,0,1,5\n1,0,2,5\n"));
        assert_eq!(at, Location::Line(3));
        assert!(why.contains("twice") && why.contains("line 2"), "{why}");
        let (_, why) = reason(Trace::parse(b"id,lower,upper,size,offset\n1,0,1,5,x\n"));
        assert!(why.contains("offset"), "{why}");
    }
}
