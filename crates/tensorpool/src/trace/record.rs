//! `Recording`: an allocator adaptor that writes every allocation and free as a trace.
//!
//! Wrap any allocator-api2 allocator (a [`MemoryManager`](crate::MemoryManager), the
//! global allocator, another adaptor) and the program's allocations go to a file in the
//! CSV format of RAPIDS RMM's logging adaptor, which `tensorpool replay` and
//! [`Trace::parse`](super::Trace::parse) read. Failed allocations are recorded as
//! `allocate failure`. Writing errors do not disturb the allocations: the first one
//! stops the recording and is kept for [`Recording::finish`].
//!
//! ```
//! use allocator_api2::{alloc::Global, vec::Vec};
//! use tensorpool::trace::{Recording, Trace};
//!
//! let path = std::env::temp_dir().join(format!("doc-record-{}.csv", std::process::id()));
//! let recorder = Recording::to_file(Global, &path)?;
//! let mut v: Vec<u32, &Recording<Global>> = Vec::new_in(&recorder);
//! for i in 0..1000u32 {
//!     v.push(i); // grows a few times: allocations and frees
//! }
//! drop(v);
//! recorder.finish()?;
//! let trace = Trace::read(&path)?;
//! assert!(trace.allocations > 1);
//! assert_eq!(trace.leaked_blocks, 0);
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use super::rmm::HEADER;
use allocator_api2::alloc::{AllocError, Allocator};
use std::alloc::Layout;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// An allocator that records what passes through it.
pub struct Recording<A> {
    inner: A,
    writer: TraceWriter,
}

/// Writes allocation events as RMM CSV lines, from any thread: what [`Recording`]
/// and foreign hooks (NumPy's allocator) use to record.
pub struct TraceWriter {
    start: Instant,
    out: Mutex<Sink>,
    /// Whether the Thread column holds the system's thread ids (`gettid`) instead of
    /// small numbers in the order threads first wrote.
    os_thread_ids: bool,
    /// [`FORKS`] when the writer was made: a forked child's differs.
    forks: u64,
}

/// The `fork()`s this process came from since the first writer was made (a
/// `pthread_atfork` handler counts them in each child). A forked child records
/// nothing into its parent's writer, and never flushes the parent's buffered lines
/// (a child of a recording Python program, a `multiprocessing` worker, wrote its
/// own events and, at its exit, a copy of the parent's last buffer into the trace).
static FORKS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_fork_in_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// [`FORKS`] now, with the handler that counts them registered (once).
fn forks() -> u64 {
    #[cfg(all(unix, not(miri)))]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // SAFETY: registers a plain function that only increments an atomic.
        ONCE.call_once(|| unsafe {
            libc::pthread_atfork(None, None, Some(count_fork_in_child));
        });
    }
    FORKS.load(Ordering::Relaxed)
}

struct Sink {
    writer: Option<Box<dyn Write + Send>>,
    error: Option<io::Error>,
}

static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);

std::thread_local! {
    static THREAD: u64 = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

impl<A> Recording<A> {
    /// Records the allocations of `inner` into `out` (the header is written now).
    pub fn new(inner: A, out: impl Write + Send + 'static) -> io::Result<Self> {
        Ok(Recording {
            inner,
            writer: TraceWriter::new(out)?,
        })
    }

    /// Records into a new file at `path`.
    pub fn to_file(inner: A, path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Recording {
            inner,
            writer: TraceWriter::to_file(path)?,
        })
    }

    /// The wrapped allocator.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// Flushes the recording and returns the first write error, if any.
    pub fn finish(&self) -> io::Result<()> {
        self.writer.finish()
    }
}

impl TraceWriter {
    /// Writes into `out` (the header is written now).
    pub fn new(mut out: impl Write + Send + 'static) -> io::Result<Self> {
        writeln!(out, "{HEADER}")?;
        // A program cut short before its first buffer is written still leaves a
        // trace that reads (with no event).
        out.flush()?;
        Ok(TraceWriter {
            start: Instant::now(),
            out: Mutex::new(Sink {
                writer: Some(Box::new(out)),
                error: None,
            }),
            os_thread_ids: false,
            forks: forks(),
        })
    }

    /// Writes the system's thread ids (`gettid`, as `top -H` and `/proc` name
    /// threads) in the Thread column, as a whole process's recording needs.
    pub fn with_os_thread_ids(mut self) -> Self {
        self.os_thread_ids = true;
        self
    }

    /// Writes into a new file at `path`, through a descriptor kept high and
    /// checked before each write ([`Kept`](crate::fd::Kept)): a program started
    /// without its standard error would otherwise give the file descriptor 2 (and
    /// the programs it starts would write into the trace), and a program that
    /// closes the descriptors it did not open would get the trace's lines in the
    /// next file it opens.
    pub fn to_file(path: impl AsRef<Path>) -> io::Result<Self> {
        use std::os::fd::IntoRawFd;
        let file = std::fs::File::create(path)?;
        Self::new(BufWriter::new(crate::fd::Kept::new(file.into_raw_fd())?))
    }

    /// Records an allocation of `size` bytes at `addr`.
    pub fn allocate(&self, addr: usize, size: usize) {
        self.log("allocate", addr, size);
    }

    /// Records an allocation of `size` bytes that failed.
    pub fn allocate_failure(&self, size: usize) {
        self.log("allocate failure", 0, size);
    }

    /// Records the free of the `size`-byte block at `addr`.
    pub fn free(&self, addr: usize, size: usize) {
        self.log("free", addr, size);
    }

    /// Flushes the recording and returns the first write error, if any. Later events
    /// are still written.
    pub fn finish(&self) -> io::Result<()> {
        if self.forked() {
            // The parent's recording: not this process's to write (nor its lock to
            // take: a thread of the parent may have held it at the fork).
            return Ok(());
        }
        let mut sink = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = sink.error.take() {
            return Err(e);
        }
        match sink.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }

    /// Stops recording: flushes, closes the output, and returns the first write error.
    /// Later events are dropped.
    pub fn close(&self) -> io::Result<()> {
        if self.forked() {
            // As in `finish`; the writer is let go unflushed when dropped.
            return Ok(());
        }
        let result = self.finish();
        let mut sink = self.out.lock().unwrap_or_else(|e| e.into_inner());
        sink.writer = None;
        result
    }

    /// Whether this process is a forked child of the one that made the writer.
    fn forked(&self) -> bool {
        FORKS.load(Ordering::Relaxed) != self.forks
    }

    fn log(&self, action: &str, ptr: usize, size: usize) {
        if self.forked() {
            return;
        }
        let elapsed = self.start.elapsed();
        let micros = elapsed.as_micros();
        let (h, m, s, us) = (
            micros / 3_600_000_000,
            micros / 60_000_000 % 60,
            micros / 1_000_000 % 60,
            micros % 1_000_000,
        );
        let thread = match self.os_thread_ids {
            true => os_thread_id(),
            false => THREAD.try_with(|t| *t).unwrap_or(0),
        };
        // The line is made whole first and written in one call, so that a buffered
        // writer only ever writes whole lines: a program that ends without `exit`
        // (`_exit`, a signal) loses its last buffer but leaves a trace that reads.
        let mut line = [0u8; 128];
        let mut cursor = io::Cursor::new(&mut line[..]);
        let formatted = writeln!(
            cursor,
            "{thread},{h:02}:{m:02}:{s:02}.{us:06},{action},{ptr:#x},{size},0"
        );
        let len = cursor.position() as usize;
        debug_assert!(formatted.is_ok(), "a trace line fits in 128 bytes");
        let mut sink = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let Some(writer) = sink.writer.as_mut() else {
            return;
        };
        if let Err(e) = writer.write_all(&line[..len]) {
            sink.writer = None;
            sink.error = Some(e);
        }
    }
}

impl Drop for TraceWriter {
    fn drop(&mut self) {
        if self.forked() {
            // Dropping the buffered writer would flush the parent's last lines a
            // second time: they are the parent's to write.
            let sink = self.out.get_mut().unwrap_or_else(|e| e.into_inner());
            if let Some(writer) = sink.writer.take() {
                std::mem::forget(writer);
            }
        }
    }
}

/// The calling thread's id as the system knows it.
fn os_thread_id() -> u64 {
    #[cfg(target_os = "linux")]
    // SAFETY: `gettid` has no preconditions and cannot fail.
    let id = unsafe { libc::gettid() } as u64;
    #[cfg(not(target_os = "linux"))]
    let id = THREAD.try_with(|t| *t).unwrap_or(0);
    id
}

// SAFETY: every call is forwarded to `inner` unchanged; the recording only reads the
// pointers' addresses.
unsafe impl<A: Allocator> Allocator for Recording<A> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        let result = self.inner.allocate(layout);
        match &result {
            Ok(block) => self
                .writer
                .allocate(block.cast::<u8>().as_ptr().addr(), layout.size()),
            Err(_) => self.writer.allocate_failure(layout.size()),
        }
        result
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        self.writer.free(ptr.as_ptr().addr(), layout.size());
        // SAFETY: forwarded unchanged from our caller, who holds the same contract.
        unsafe { self.inner.deallocate(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::Trace;
    use std::sync::Arc;

    /// A writer into shared memory, to read what was recorded.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_writer_drops_later_events() {
        let sink = Shared::default();
        let writer = TraceWriter::new(sink.clone()).unwrap();
        writer.allocate(0x1000, 64);
        writer.allocate(0x2000, 128);
        writer.free(0x1000, 64);
        writer.close().unwrap();
        writer.free(0x2000, 128); // after the recording: not written
        writer.allocate_failure(1 << 40);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 4, "{text}");
        let trace = Trace::parse(text.as_bytes()).unwrap();
        assert_eq!((trace.allocations, trace.leaked_blocks), (2, 1));
        assert!(writer.finish().is_ok());
    }

    /// Found by a review: a forked child (a `multiprocessing` worker of a recording
    /// Python program) wrote its own events into its parent's trace and, at exit,
    /// flushed a copy of the parent's buffered lines. A real fork: the child only
    /// records, finishes, closes and drops the writer, then `_exit`s.
    #[test]
    #[cfg_attr(miri, ignore = "fork")]
    fn a_forked_child_writes_nothing_into_its_parents_recording() {
        let path = std::env::temp_dir().join(format!("tp-fork-rec-{}.csv", std::process::id()));
        let writer = TraceWriter::to_file(&path).unwrap();
        writer.allocate(0x1000, 64); // buffered at the fork
                                     // SAFETY: the child calls only the writer's methods, which (forked) touch
                                     // no lock and allocate nothing, then `_exit`.
        match unsafe { libc::fork() } {
            0 => {
                writer.allocate(0x2000, 64);
                writer.free(0x1000, 64);
                let ok = writer.finish().is_ok() && writer.close().is_ok();
                drop(writer);
                // SAFETY: ends the child without running the parent's exit handlers.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) };
            }
            child => {
                assert!(child > 0, "fork failed");
                let mut status = 0;
                // SAFETY: waits for the child just forked.
                assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            }
        }
        writer.free(0x1000, 64);
        writer.close().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(
            text.lines().count(),
            3,
            "the header and the parent's two: {text}"
        );
        assert!(!text.contains("0x2000"), "{text}");
    }

    #[test]
    fn a_recording_cut_short_still_reads() {
        // A program that ends in `_exit` or on a signal never flushes its last
        // buffer: what reached the file must be whole lines.
        let sink = Shared::default();
        let writer = TraceWriter::new(BufWriter::with_capacity(100, sink.clone())).unwrap();
        for i in 0..50 {
            writer.allocate(0x1000 * (i + 1), 64 + i);
        }
        // Not finished: the buffer's last lines are lost, as at `_exit`.
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        assert!(text.lines().count() > 10 && text.ends_with('\n'), "{text}");
        let trace = Trace::parse(text.as_bytes()).unwrap();
        assert_eq!(trace.allocations, text.lines().count() - 1);
    }

    #[test]
    fn a_recording_replays_to_the_same_events() {
        let sink = Shared::default();
        let mm = crate::MemoryManager::new(
            crate::Config::builder()
                .upstream(crate::UpstreamKind::Heap)
                .memory_limit(1 << 20)
                .build()
                .unwrap(),
        )
        .unwrap();
        let rec = Recording::new(&mm, sink.clone()).unwrap();
        let a = rec
            .allocate(Layout::from_size_align(100, 8).unwrap())
            .unwrap();
        let b = rec
            .allocate(Layout::from_size_align(200, 8).unwrap())
            .unwrap();
        assert!(rec
            .allocate(Layout::from_size_align(8 << 20, 8).unwrap())
            .is_err());
        // SAFETY: allocated above with these layouts.
        unsafe {
            rec.deallocate(a.cast(), Layout::from_size_align(100, 8).unwrap());
            rec.deallocate(b.cast(), Layout::from_size_align(200, 8).unwrap());
        }
        rec.finish().unwrap();
        let bytes = sink.0.lock().unwrap().clone();
        let trace = Trace::parse(&bytes).unwrap();
        assert_eq!(
            (
                trace.allocations,
                trace.failed_allocations,
                trace.leaked_blocks
            ),
            (2, 1, 0)
        );
        assert_eq!(trace.peak_live_bytes(), 300);
    }

    #[test]
    fn a_write_error_stops_the_recording_but_not_the_allocator() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        assert!(Recording::new(allocator_api2::alloc::Global, Broken).is_err());
        let rec = Recording::new(allocator_api2::alloc::Global, LineWriter(false)).unwrap();
        let layout = Layout::from_size_align(8, 8).unwrap();
        let p = rec.allocate(layout).unwrap();
        // SAFETY: allocated above with `layout`.
        unsafe { rec.deallocate(p.cast(), layout) };
        assert_eq!(rec.finish().unwrap_err().to_string(), "disk full");
    }

    /// Accepts one line (the header), then fails.
    struct LineWriter(bool);
    impl Write for LineWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0 {
                return Err(io::Error::other("disk full"));
            }
            self.0 = buf.contains(&b'\n');
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
}
