//! What the library knows beyond `malloc`, for C programs that ask
//! (`include/tensorpool.h`): the statistics as JSON, the summary, a trim, the
//! recording flushed. Strings are returned in blocks of `malloc`'s, for the caller
//! to `free`.

use crate::exports::Mallinfo2;
use crate::MALLOC;
use libc::{c_char, c_int, size_t};

/// `text` in a new NUL-terminated block of `malloc`'s; NULL without memory.
fn c_string(text: &str) -> *mut c_char {
    // SAFETY: a fresh block of `len + 1` bytes, written within its size.
    unsafe {
        let out = MALLOC.malloc(text.len() + 1).cast::<u8>();
        if !out.is_null() {
            std::ptr::copy_nonoverlapping(text.as_ptr(), out, text.len());
            out.add(text.len()).write(0);
        }
        out.cast()
    }
}

/// The manager's statistics as a JSON object (the fields of
/// `tensorpool::Stats`), in a block to `free`; NULL if the manager does not run.
#[no_mangle]
pub extern "C" fn tensorpool_stats_json() -> *mut c_char {
    match MALLOC.query_stats(|stats| serde_json::to_string(&stats)) {
        Some(Ok(json)) => c_string(&json),
        _ => std::ptr::null_mut(),
    }
}

/// The manager's summary, for people, in a block to `free`; NULL if the manager
/// does not run.
#[no_mangle]
pub extern "C" fn tensorpool_summary() -> *mut c_char {
    match MALLOC.summary() {
        Some(summary) => c_string(&summary),
        None => std::ptr::null_mut(),
    }
}

/// Gives every thread's free memory back to the system now; returns the bytes.
#[no_mangle]
pub extern "C" fn tensorpool_trim() -> size_t {
    MALLOC.trim()
}

/// Writes out what the recording (`TENSORPOOL_RECORD`) holds so far: 0, or -1 if
/// writing failed (the reason is printed on stderr).
#[no_mangle]
pub extern "C" fn tensorpool_flush_recording() -> c_int {
    match MALLOC.finish_recording() {
        Ok(()) => 0,
        Err(e) => {
            crate::process::say(format_args!("the recording: {e}"));
            -1
        }
    }
}

/// `mallinfo2`'s fields from the manager's statistics: `arena` the bytes reserved,
/// `usmblks` their peak, `uordblks` the bytes of live blocks, `fordblks` the rest
/// of what is reserved, `keepcost` the free bytes still resident (what a trim gives
/// back: those already given back are not counted); the
/// counts of glibc's own structures (bins, fastbins) are 0.
pub fn mallinfo() -> Mallinfo2 {
    match MALLOC.stats() {
        Some(s) => Mallinfo2 {
            arena: s.reserved_bytes,
            usmblks: s.peak_reserved_bytes,
            uordblks: s.allocated_bytes,
            fordblks: s.reserved_bytes.saturating_sub(s.allocated_bytes),
            keepcost: s.resident_bytes.saturating_sub(s.allocated_bytes),
            ..Mallinfo2::default()
        },
        None => Mallinfo2::default(),
    }
}
