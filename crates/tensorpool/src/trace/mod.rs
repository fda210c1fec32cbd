//! Allocation traces: reading the formats real programs and planners write, and
//! writing the one RMM reads.
//!
//! A [`Trace`] is the sequence of allocations and frees of a program, with every free
//! paired to the allocation it releases (block ids), ready to replay through any
//! allocator. Three formats are read, gzip-compressed or not, told apart by their
//! first bytes:
//!
//! - the CSV log of RAPIDS RMM's logging adaptor ([`rmm`]):
//!   `Thread,Time,Action,Pointer,Size,Stream`;
//! - MiniMalloc's static lifetimes ([`intervals`]): `id,lower,upper,size`, replayed as
//!   an allocation at `lower` and a free at `upper`, frees first within a step;
//! - the Chrome-trace JSON that PyTorch's profiler exports with `profile_memory=True`
//!   ([`chrome`]): its `[memory]` events.
//!
//! Frees of addresses with no live allocation and blocks still live at the end are
//! counted, not fatal. A malformed file is refused with the line (or the event) and
//! the reason. [`Recording`] wraps any allocator and writes the RMM format, so a Rust
//! program can record its own trace.
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

pub mod chrome;
mod fields;
pub mod intervals;
mod record;
pub mod rmm;

pub use record::{Recording, TraceWriter};

use crate::error::{Error, Result};
use rustc_hash::FxHashMap;
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
    /// PyTorch profiler Chrome-trace JSON.
    ChromeJson,
}

impl Format {
    /// Whether the format's times ([`Trace::times`]) are a clock in nanoseconds,
    /// which a replay can drive a manager's release policy with; an intervals
    /// instance's times are its own abstract units.
    pub fn times_are_nanoseconds(self) -> bool {
        !matches!(self, Format::Intervals)
    }
}

pub use crate::error::Location;

/// A buffer's lifetime: allocated before event `lower`, freed before event `upper`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// The block id.
    pub id: u32,
    /// Index of the allocation event.
    pub lower: usize,
    /// Index of the free event (the number of events for a block never freed).
    pub upper: usize,
    /// Bytes.
    pub size: u64,
}

impl Lifetime {
    /// Block `id` of `size` bytes, allocated at event `lower` and freed at `upper`.
    pub const fn new(id: u32, lower: usize, upper: usize, size: u64) -> Lifetime {
        Lifetime {
            id,
            lower,
            upper,
            size,
        }
    }
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
    /// When each event happened: in nanoseconds from the trace's clock (its zero
    /// is the format's: a time of day, a profiler's start) for RMM CSV and Chrome
    /// JSON, with which a replay can drive a manager's release policy; in the
    /// instance's own time units for intervals (see
    /// [`Format::times_are_nanoseconds`]); empty where the format records none.
    /// Planners measure how long buffers live with them.
    pub times: Vec<u64>,
    /// Planned offsets by block id, where the file has them (an intervals file with
    /// an `offset` column, as `tensorpool plan` writes its plans); empty otherwise.
    pub offsets: Vec<u64>,
}

/// A block's size as a trace gives it: refused beyond what any allocation can be
/// (`isize::MAX` bytes; a replay's workers panicked on it).
pub(crate) fn check_size(size: u64, at: Location) -> Result<()> {
    if size > isize::MAX as u64 {
        return Err(malformed(
            at,
            format!(
                "a block of {size} bytes is larger than any allocation can be (at most isize::MAX)"
            ),
        ));
    }
    Ok(())
}

pub(crate) fn malformed(at: Location, reason: impl Into<String>) -> Error {
    Error::MalformedTrace {
        at,
        reason: reason.into(),
    }
}

impl Trace {
    /// Reads a trace file (gzip or plain), naming the file in any error.
    pub fn read(path: impl AsRef<Path>) -> Result<Trace> {
        let path = path.as_ref();
        Self::parse_file(path, &Self::read_bytes(path)?)
    }

    /// The bytes of a trace file, naming the file if it cannot be read.
    pub fn read_bytes(path: &Path) -> Result<Vec<u8>> {
        std::fs::read(path).map_err(|e| Error::TraceFile {
            path: path.display().to_string(),
            reason: Box::new(Error::UnreadableTrace(e.to_string())),
        })
    }

    /// Parses the bytes of trace file `path` (see [`parse`](Self::parse)), naming the
    /// file in any error.
    pub fn parse_file(path: &Path, bytes: &[u8]) -> Result<Trace> {
        Self::parse(bytes).map_err(|reason| Error::TraceFile {
            path: path.display().to_string(),
            reason: Box::new(reason),
        })
    }

    /// Parses a trace from bytes (gzip or plain); the format is told by its start.
    ///
    /// A gzip stream is decompressed on a second thread while this one parses, a
    /// chunk at a time.
    pub fn parse(bytes: &[u8]) -> Result<Trace> {
        if !bytes.starts_with(&[0x1f, 0x8b]) {
            return parse_stream(bytes);
        }
        // Chunks go to the parser full and come back empty, so that their memory is
        // reused rather than mapped afresh for every chunk.
        let (full, filled) = std::sync::mpsc::sync_channel::<std::io::Result<Vec<u8>>>(2);
        let (empty, emptied) = std::sync::mpsc::channel::<Vec<u8>>();
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let mut decoder = flate2::read::MultiGzDecoder::new(bytes);
                loop {
                    let mut chunk = emptied
                        .try_recv()
                        .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
                    chunk.clear();
                    match decoder.by_ref().take(CHUNK as u64).read_to_end(&mut chunk) {
                        Ok(0) => break,
                        Ok(_) => {
                            if full.send(Ok(chunk)).is_err() {
                                break; // the parser stopped at an error
                            }
                        }
                        Err(e) => {
                            let _ = full.send(Err(e));
                            break;
                        }
                    }
                }
            });
            parse_stream(Chunks {
                filled,
                empty,
                chunk: Vec::new(),
                at: 0,
            })
        })
    }

    /// The most bytes live at once: the floor no allocator can go below (at most
    /// `u64::MAX`, which a sum of blocks of up to `isize::MAX` bytes each can pass).
    pub fn peak_live_bytes(&self) -> u64 {
        let sizes = self.block_sizes();
        let (mut live, mut peak) = (0u128, 0u128);
        for e in &self.events {
            match *e {
                Event::Alloc { size, .. } => {
                    live += u128::from(size);
                    peak = peak.max(live);
                }
                Event::Free { id } => live -= u128::from(sizes[id as usize]),
            }
        }
        u64::try_from(peak).unwrap_or(u64::MAX)
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

    /// Every block's lifetime in event indices, by id.
    pub fn lifetimes(&self) -> Vec<Lifetime> {
        let mut lifetimes = vec![
            Lifetime {
                id: 0,
                lower: 0,
                upper: self.events.len(),
                size: 0,
            };
            self.allocations
        ];
        for (i, e) in self.events.iter().enumerate() {
            match *e {
                Event::Alloc { id, size } => {
                    let l = &mut lifetimes[id as usize];
                    (l.id, l.lower, l.size) = (id, i, size);
                }
                Event::Free { id } => lifetimes[id as usize].upper = i,
            }
        }
        lifetimes
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
}

/// A parser fed the lines after a CSV header one at a time; `n` is the line number.
pub(crate) trait LineParser {
    fn line(&mut self, line: &[u8], n: usize) -> Result<()>;
    fn finish(self) -> Result<Trace>;
}

/// Text is read and parsed a chunk at a time, so that a large compressed trace is
/// never held whole in memory.
const CHUNK: usize = 1 << 20;

/// Reads into `buf` until it holds `want` bytes or the input ends; returns false at
/// the end of the input.
fn fill(reader: &mut impl Read, buf: &mut Vec<u8>, want: usize) -> Result<bool> {
    let missing = want.saturating_sub(buf.len());
    let read = reader.take(missing as u64).read_to_end(buf).map_err(|e| {
        malformed(
            Location::File,
            format!("the gzip stream is damaged or truncated: {e}"),
        )
    })?;
    Ok(read == missing)
}

/// A reader over chunks sent by the decompressing thread, which it sends back empty.
struct Chunks {
    filled: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    empty: std::sync::mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for Chunks {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.filled.recv() {
                Ok(next) => {
                    let used = std::mem::replace(&mut self.chunk, next?);
                    let _ = self.empty.send(used);
                    self.at = 0;
                }
                Err(_) => return Ok(0), // the stream ended
            }
        }
        let n = out.len().min(self.chunk.len() - self.at);
        out[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Detects the format from the first bytes and parses the whole input.
fn parse_stream(mut reader: impl Read) -> Result<Trace> {
    let mut buf = Vec::with_capacity(CHUNK + 4096);
    let mut more = fill(&mut reader, &mut buf, CHUNK)?;
    let first = buf.iter().position(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|i| buf[i] == b'{') {
        while more {
            let want = buf.len() + CHUNK;
            more = fill(&mut reader, &mut buf, want)?;
        }
        return chrome::parse(&buf);
    }
    let header_end = memchr::memchr(b'\n', &buf).unwrap_or(buf.len());
    // A byte-order mark (a spreadsheet's "CSV UTF-8") is not part of the header.
    let line = fields::trim_cr(&buf[..header_end]);
    let header = std::str::from_utf8(line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line))
        .map_err(|_| malformed(Location::Line(1), "the header is not text"))?
        .to_string();
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let start = (header_end + 1).min(buf.len());
    match columns.as_slice() {
        ["Thread", "Time", "Action", "Pointer", "Size", "Stream"] => {
            feed(rmm::Parser::default(), reader, buf, start, more)
        }
        ["id", "lower", "upper", "size"] | ["id", "lower", "upper", "size", "offset"] => feed(
            intervals::Parser::new(columns.len()),
            reader,
            buf,
            start,
            more,
        ),
        _ if header.is_empty() => Err(malformed(Location::File, "the file is empty")),
        _ => Err(malformed(
            Location::Line(1),
            format!(
                "unknown header `{header}`: expected `Thread,Time,Action,Pointer,Size,Stream` \
                 (RMM), `id,lower,upper,size` (MiniMalloc) or a JSON object (Chrome trace)"
            ),
        )),
    }
}

/// Feeds `parser` every line from `buf[start..]` on, reading more as it goes.
fn feed<P: LineParser>(
    mut parser: P,
    mut reader: impl Read,
    mut buf: Vec<u8>,
    start: usize,
    mut more: bool,
) -> Result<Trace> {
    let mut n = 2;
    // Unparsed text starts at `line`; no newline lies before `search`.
    let (mut line, mut search) = (start, start);
    loop {
        for end in memchr::memchr_iter(b'\n', &buf[search..]) {
            let end = search + end;
            parser.line(&buf[line..end], n)?;
            n += 1;
            line = end + 1;
        }
        if !more {
            if line < buf.len() {
                parser.line(&buf[line..], n)?;
            }
            return parser.finish();
        }
        // Keep the partial last line and read the next chunk after it.
        buf.drain(..line);
        (line, search) = (0, buf.len());
        let want = buf.len() + CHUNK;
        more = fill(&mut reader, &mut buf, want)?;
    }
}

/// Builds a trace from allocations and frees by address, pairing each free with the
/// latest allocation at its address (the addresses of a log are reused).
#[derive(Debug)]
pub(crate) struct Pairing<K = u64> {
    events: Vec<Event>,
    times: Vec<u64>,
    live: FxHashMap<K, u32>,
    allocations: u32,
    unmatched: usize,
    failed: usize,
    replaced: usize,
}

impl<K> Default for Pairing<K> {
    fn default() -> Self {
        Pairing {
            events: Vec::new(),
            times: Vec::new(),
            live: FxHashMap::default(),
            allocations: 0,
            unmatched: 0,
            failed: 0,
            replaced: 0,
        }
    }
}

impl<K: std::hash::Hash + Eq> Pairing<K> {
    /// An allocation at `time` (nanoseconds of the trace's clock).
    pub(crate) fn alloc(&mut self, addr: K, size: u64, time: u64, at: Location) -> Result<()> {
        check_size(size, at)?;
        if self.live.insert(addr, self.allocations).is_some() {
            // The earlier block at this address was never freed.
            self.replaced += 1;
        }
        self.events.push(Event::Alloc {
            id: self.allocations,
            size,
        });
        self.times.push(time);
        self.allocations = self
            .allocations
            .checked_add(1)
            .ok_or_else(|| malformed(at, "more than 4 billion allocations"))?;
        Ok(())
    }

    /// A free at `time`.
    pub(crate) fn free(&mut self, addr: K, time: u64) {
        match self.live.remove(&addr) {
            Some(id) => {
                self.events.push(Event::Free { id });
                self.times.push(time);
            }
            None => self.unmatched += 1,
        }
    }

    pub(crate) fn failed(&mut self) {
        self.failed += 1;
    }

    pub(crate) fn finish(self, format: Format) -> Trace {
        Trace {
            format,
            events: self.events,
            allocations: self.allocations as usize,
            unmatched_frees: self.unmatched,
            failed_allocations: self.failed,
            leaked_blocks: self.live.len() + self.replaced,
            times: self.times,
            offsets: Vec::new(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn reason(result: Result<Trace>) -> (Location, String) {
        match result {
            Err(Error::MalformedTrace { at, reason }) => (at, reason),
            other => panic!("expected a malformed trace, got {other:?}"),
        }
    }

    #[test]
    fn replay_pairs_and_drains() {
        let csv = "Thread,Time,Action,Pointer,Size,Stream\n\
                   1,0,allocate,0x10,8,0\n1,0,allocate,0x20,16,0\n1,0,free,0x10,8,0\n";
        let t = Trace::parse(csv.as_bytes()).unwrap();
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
        assert_eq!(
            log.into_inner(),
            ["alloc 8", "alloc 16", "free 0x1100 8", "free 0x1200 16"]
        );
        assert_eq!(t.replay(|_| Err("full"), |_, _| {}), Err("full"));
        let lifetimes = t.lifetimes();
        assert_eq!((lifetimes[0].lower, lifetimes[0].upper), (0, 2));
        assert_eq!(
            (lifetimes[1].lower, lifetimes[1].upper),
            (1, 3),
            "never freed: until the end"
        );
    }

    #[test]
    fn headers_gzip_and_empty_files() {
        assert_eq!(reason(Trace::parse(b"")).0, Location::File);
        assert!(reason(Trace::parse(b"a,b,c\n"))
            .1
            .contains("unknown header"));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(
            &mut gz,
            b"Thread,Time,Action,Pointer,Size,Stream\n1,0,allocate,0x1,1,0\n",
        )
        .unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(Trace::parse(&gz).unwrap().allocations, 1);
        let (at, why) = reason(Trace::parse(&gz[..gz.len() - 6]));
        assert_eq!(at, Location::File);
        assert!(why.contains("gzip"), "{why}");
    }

    #[test]
    fn a_block_larger_than_any_allocation_is_refused_and_peaks_do_not_overflow() {
        // Sizes of 2^63 made every replay worker panic, and four blocks of 6e18
        // bytes wrapped the peak (a user hunt).
        let huge =
            "Thread,Time,Action,Pointer,Size,Stream\n1,0,allocate,0x10,9223372036854775808,0\n";
        let (at, why) = reason(Trace::parse(huge.as_bytes()));
        assert_eq!(at, Location::Line(2));
        assert!(why.contains("larger than any allocation"), "{why}");
        let (at, _) = reason(Trace::parse(
            b"id,lower,upper,size\n0,0,1,9223372036854775808\n",
        ));
        assert_eq!(at, Location::Line(2));
        let mut four = String::from("Thread,Time,Action,Pointer,Size,Stream\n");
        for p in 1..=4 {
            four.push_str(&format!("1,0,allocate,{p:#x},6000000000000000000,0\n"));
        }
        assert_eq!(
            Trace::parse(four.as_bytes()).unwrap().peak_live_bytes(),
            u64::MAX
        );
    }

    #[test]
    fn a_byte_order_mark_before_the_header_is_passed_over() {
        let text = "\u{feff}Thread,Time,Action,Pointer,Size,Stream\n1,00:00:01,allocate,0x10,8,0\n";
        let trace = Trace::parse(text.as_bytes()).unwrap();
        assert_eq!(trace.peak_live_bytes(), 8);
    }

    #[test]
    fn lines_across_chunk_boundaries_are_read_whole() {
        // Several chunks of text, and the same compressed: the parse must not depend
        // on where the reads cut the lines.
        let mut text = String::from("Thread,Time,Action,Pointer,Size,Stream\n");
        for i in 0..60_000u64 {
            text.push_str(&format!(
                "7,12:00:00.{:06},allocate,{:#x},{},0\n",
                i % 1_000_000,
                0x1000 + i * 64,
                i % 977 + 1
            ));
            if i % 3 != 0 {
                text.push_str(&format!("7,12:00:01,free,{:#x},0,0\n", 0x1000 + i * 64));
            }
        }
        assert!(text.len() > 2 * CHUNK);
        let plain = Trace::parse(text.as_bytes()).unwrap();
        assert_eq!(plain.allocations, 60_000);
        assert_eq!(plain.leaked_blocks, 20_000);
        assert_eq!(plain.events.len(), 100_000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
        assert_eq!(Trace::parse(&gz.finish().unwrap()).unwrap(), plain);
        let no_final_newline = &text[..text.len() - 1];
        assert_eq!(Trace::parse(no_final_newline.as_bytes()).unwrap(), plain);
    }

    #[test]
    fn files_are_named_in_errors() {
        let err = Trace::read("/nonexistent/trace.csv")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/trace.csv") && err.contains("cannot read"),
            "{err}"
        );
    }
}
