//! The process around the library: its config from the environment, and what it
//! does when the program starts and exits (`TENSORPOOL_STATS`, `TENSORPOOL_RECORD`).
//!
//! `TENSORPOOL_STATS` is passed on to the programs this one runs (each prints its
//! own summary, with its pid). `TENSORPOOL_RECORD` records one process: the first
//! that loads the library with it (with `tensorpool run`, which sets
//! `TENSORPOOL_RECORD_PARENT` to its pid, its child), and the programs that process
//! becomes by `exec` (a wrapper such as `env`, a `#!/usr/bin/env` script's
//! interpreter, a shell's `exec`), each making the file anew, so that it holds the
//! last one's allocations; not the programs it starts, its children. The process
//! that records says so in `TENSORPOOL_RECORD_OF` (its pid and the file), which an
//! exec keeps and a child's different pid does not match (a shell such as bash may
//! pass on the variables from its own copy of the environment, without that mark:
//! the parent's pid then stops its children). A forked child neither records nor
//! prints. What the recording still buffers is lost if the program ends without
//! `exit` (`_exit`, a signal, an `exec`), whole lines only, so the trace still reads;
//! `tensorpool_flush_recording()` writes it out.
//!
//! The summary goes to the standard error the program started with: the library
//! keeps a copy of it (a descriptor of its own, closed on `exec`), as programs may
//! close theirs before they exit (coreutils does) or give its number to a file of
//! theirs, which the summary would have been written into; a program started
//! without a standard error gets no summary. A forked child closes the copy (it
//! prints nothing, and a daemon kept the caller's pipe open with it). A program
//! that ends with `_exit` (dash does) prints no summary: no exit handler runs.

use crate::MALLOC;
use std::ffi::OsString;
use tensorpool_core::fd::{dup_high, file_id};
use tensorpool_core::global::recording::{mark, records, ENV_RECORD_OF};

/// Prints the summary at exit when set (`1`, `true`, `yes`, `on`).
pub const ENV_STATS: &str = "TENSORPOOL_STATS";
/// Records every allocation and free of the process into this file.
pub const ENV_RECORD: &str = "TENSORPOOL_RECORD";
/// The pid of the process whose child is to record (set by `tensorpool run`).
pub const ENV_RECORD_PARENT: &str = "TENSORPOOL_RECORD_PARENT";

/// Runs when the library is loaded, before the program's `main` (and before the
/// constructors of the libraries loaded after it).
#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = at_load;

extern "C" fn at_load() {
    LOADED_IN.get_or_init(std::process::id);
    let stats = match std::env::var_os(ENV_STATS) {
        Some(value) => flag(ENV_STATS, &value),
        None => false,
    };
    let mut record = std::env::var_os(ENV_RECORD).filter(|v| !v.is_empty());
    if let Some(path) = &record {
        let (pid, ppid) = (std::process::id(), std::os::unix::process::parent_id());
        let of = std::env::var_os(ENV_RECORD_OF);
        let parent = std::env::var_os(ENV_RECORD_PARENT);
        if records(path, pid, ppid, of.as_deref(), parent.as_deref()) {
            // A relative path is made absolute for the programs this one becomes by
            // `exec`: a wrapper that changes directory first (`cd dir && exec
            // python ...`) recorded into a new file there, over the wrapper's.
            let path = std::path::absolute(path).map_or_else(|_| path.clone(), OsString::from);
            // SAFETY: constructors run before `main`, while the process has one
            // thread.
            unsafe {
                std::env::set_var(ENV_RECORD, &path);
                std::env::set_var(ENV_RECORD_OF, mark(pid, &path));
            }
            record = Some(path);
        } else {
            record = None;
        }
    }
    if !stats && record.is_none() {
        return;
    }
    if stats {
        // Before the recording opens its file, which could take descriptor 2 if
        // the program started without one.
        Stderr::keep();
    }
    if let Some(path) = record {
        if let Err(e) = MALLOC.record_to(&path) {
            say(format_args!("{ENV_RECORD}={path:?}: {e}; not recording"));
        }
    }
    PRINT_STATS.store(stats, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: registers a plain function with no preconditions.
    if unsafe { libc::atexit(at_exit) } != 0 {
        say(format_args!(
            "atexit failed: no summary or recording at exit"
        ));
    }
}

static PRINT_STATS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a variable says yes; a value that is neither yes nor no is reported
/// once and taken as no.
fn flag(name: &str, value: &OsString) -> bool {
    match value.to_str().map(str::to_ascii_lowercase).as_deref() {
        Some("1" | "true" | "yes" | "on") => true,
        Some("" | "0" | "false" | "no" | "off") => false,
        _ => {
            say(format_args!(
                "{name}={value:?}: expected 1/true/yes/on or 0/false/no/off; taken as no"
            ));
            false
        }
    }
}

/// At exit (of the process that loaded the library, not of a forked child): the
/// recording written out, the summary printed.
extern "C" fn at_exit() {
    if let Err(e) = MALLOC.finish_recording() {
        say(format_args!("the recording ({ENV_RECORD}): {e}"));
    }
    if PRINT_STATS.load(std::sync::atomic::Ordering::Relaxed) && !forked_child() {
        if let Some(summary) = MALLOC.summary() {
            let pid = std::process::id();
            Stderr::write(&format!(
                "tensorpool: summary of process {pid} at exit\n{summary}\n"
            ));
        }
    }
}

/// A line on standard error, after `tensorpool: `; a write error is passed over
/// (`eprintln!` would panic, and a panic here aborts the program).
pub(crate) fn say(what: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "tensorpool: {what}");
}

/// The standard error the program started with, for the summary at exit.
struct Stderr;

/// The copy of descriptor 2 and the file it was (device, inode); -1: none.
static STDERR_COPY: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);
static STDERR_FILE: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

impl Stderr {
    /// Keeps a copy of descriptor 2 (at load).
    fn keep() {
        let Some(file) = file_id(2) else {
            return;
        };
        // Without a copy (no descriptor left), descriptor 2 serves while it is
        // still that file.
        let _ = STDERR_FILE.set(file);
        if let Ok(copy) = dup_high(2) {
            STDERR_COPY.store(copy, std::sync::atomic::Ordering::Relaxed);
            // SAFETY: registers a plain function, run in the child after `fork`.
            unsafe { libc::pthread_atfork(None, None, Some(Self::close_in_child)) };
        }
    }

    /// In a forked child: closes the copy (the child prints no summary; a daemon
    /// would otherwise keep the caller's standard error open).
    extern "C" fn close_in_child() {
        let copy = STDERR_COPY.swap(-1, std::sync::atomic::Ordering::Relaxed);
        // Only while the number is still the copy: the program may have closed it
        // and opened a file of its own there (the review: closing that).
        if copy >= 0 && file_id(copy) == STDERR_FILE.get().copied() {
            // SAFETY: closes the library's own descriptor, which nothing else uses.
            unsafe { libc::close(copy) };
        }
    }

    /// Writes `text` to the standard error the program started with: the copy, or
    /// descriptor 2, whichever is still that file; nowhere if neither is (rather
    /// than into a file of the program's).
    fn write(text: &str) {
        let copy = STDERR_COPY.load(std::sync::atomic::Ordering::Relaxed);
        // The program started without a standard error: nowhere to print.
        let Some(&file) = STDERR_FILE.get() else {
            return;
        };
        let Some(fd) = [copy, 2]
            .into_iter()
            .find(|&fd| fd >= 0 && file_id(fd) == Some(file))
        else {
            return;
        };
        let mut rest = text.as_bytes();
        while !rest.is_empty() {
            // SAFETY: writes from a live buffer of `rest.len()` bytes.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n <= 0 {
                if n < 0
                    && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
                {
                    continue;
                }
                return;
            }
            rest = &rest[n as usize..];
        }
    }
}

/// The pid of the process that loaded the library.
static LOADED_IN: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// Whether this process is a forked child of the one that loaded the library.
fn forked_child() -> bool {
    *LOADED_IN.get_or_init(std::process::id) != std::process::id()
}
