//! Reports on standard error that cannot fail and never wait for a lock.
//!
//! tensorpool reports from inside allocations and frees (a refused free, running out
//! of memory, a guard overrun) and, as a process's allocator, from inside its
//! `malloc`. `eprintln!` would not do there: it panics when standard error is a
//! closed pipe (a panic inside `malloc` aborts the program), and it takes the
//! standard library's stderr lock, which a forked child may find held by a thread
//! that did not come with it. [`report!`] writes the line with one `write(2)` per
//! chunk and lets errors go.
//!
//! ```ignore
//! report!("tensorpool: free({ptr:p}) refused: {e}");
//! ```

use std::fmt;

/// Writes one line on standard error, passing over any error.
pub(crate) fn report_line(args: fmt::Arguments<'_>) {
    let line = format!("{args}\n");
    let mut rest = line.as_bytes();
    while !rest.is_empty() {
        // SAFETY: writes from a live buffer of `rest.len()` bytes.
        let n = unsafe { libc::write(2, rest.as_ptr().cast(), rest.len()) };
        match n {
            n if n > 0 => rest = &rest[n as usize..],
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

/// `eprintln!` that cannot fail: see the [module docs](self).
macro_rules! report {
    ($($arg:tt)*) => {
        $crate::util::stderr::report_line(format_args!($($arg)*))
    };
}
pub(crate) use report;
