//! File descriptors that tensorpool keeps open inside a program it does not own (the
//! preloaded library's copy of standard error, a recording's file).
//!
//! Programs use and reuse the low numbers, and some close every descriptor they did
//! not open (`closefrom(3)`, a daemon as it starts) and then open files of their own,
//! which take the freed numbers. So a kept descriptor goes high ([`dup_high`]: from
//! 200, or as high as the process's descriptor limit leaves room for), and
//! [`Kept`] checks before each write that its number still names the file it
//! opened: never a write into, or a close of, a file of the program's.
//!
//! ```
//! use std::io::Write;
//! use std::os::fd::IntoRawFd;
//! use tensorpool::fd::Kept;
//!
//! let file = std::fs::File::create(std::env::temp_dir().join("doc-kept.txt"))?;
//! let mut kept = Kept::new(file.into_raw_fd())?;
//! assert!(kept.raw() > 2 && kept.is_intact());
//! kept.write_all(b"written while the descriptor is ours\n")?;
//! # Ok::<(), std::io::Error>(())
//! ```

use super::rlimit::{soft_limit, Resource};
use std::io;
use std::os::fd::RawFd;

/// Where a kept descriptor is placed from, when the descriptor limit allows.
pub const HIGH: RawFd = 200;

/// The file open as descriptor `fd` (device, inode); `None` if `fd` is not open.
pub fn file_id(fd: RawFd) -> Option<(u64, u64)> {
    // SAFETY: a zeroed stat is a valid buffer for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes into `st` only.
    (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
}

/// A copy of open descriptor `fd`, closed on `exec`, at the first free number from
/// [`HIGH`], or from half the descriptor limit when that is lower (`ulimit -n 64`),
/// or else from 3: never 0-2, which a program and the programs it starts take for
/// their standard streams.
pub fn dup_high(fd: RawFd) -> io::Result<RawFd> {
    let most = soft_limit(Resource::Descriptors)
        .and_then(|n| RawFd::try_from(n).ok())
        .unwrap_or(RawFd::MAX);
    for from in [HIGH.min(most / 2).max(3), 3] {
        // SAFETY: duplicates a descriptor; the new one is the caller's.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, from) };
        if copy >= 0 {
            return Ok(copy);
        }
    }
    Err(io::Error::last_os_error())
}

/// A descriptor of tensorpool's own (a file it opened), written and closed only
/// while its number still names that file.
#[derive(Debug)]
pub struct Kept {
    fd: RawFd,
    id: (u64, u64),
}

impl Kept {
    /// Takes `fd`, a descriptor the caller owns and gives up, and moves it high
    /// ([`dup_high`]); the old number is closed.
    pub fn new(fd: RawFd) -> io::Result<Kept> {
        let moved = dup_high(fd);
        // SAFETY: the caller gave `fd` up to us; nothing else closes it.
        unsafe { libc::close(fd) };
        let fd = moved?;
        match file_id(fd) {
            Some(id) => Ok(Kept { fd, id }),
            None => {
                let e = io::Error::last_os_error();
                // SAFETY: the copy `dup_high` just made, ours alone.
                unsafe { libc::close(fd) };
                Err(e)
            }
        }
    }

    /// The descriptor's number.
    pub fn raw(&self) -> RawFd {
        self.fd
    }

    /// Whether the number still names the file this opened (the program did not
    /// close it, or not yet reuse it).
    pub fn is_intact(&self) -> bool {
        file_id(self.fd) == Some(self.id)
    }

    fn lost() -> io::Error {
        io::Error::other(
            "the program closed the descriptor tensorpool wrote to (perhaps opening a file \
             of its own under its number); nothing more is written",
        )
    }
}

impl io::Write for Kept {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.is_intact() {
            return Err(Self::lost());
        }
        loop {
            // SAFETY: writes from a live buffer of `buf.len()` bytes.
            let n = unsafe { libc::write(self.fd, buf.as_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if self.is_intact() {
            // SAFETY: our own descriptor, still naming our file.
            unsafe { libc::close(self.fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::IntoRawFd;

    #[test]
    fn a_kept_descriptor_never_writes_into_a_file_that_took_its_number() {
        let dir = std::env::temp_dir().join(format!("tp-kept-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ours = std::fs::File::create(dir.join("ours.txt")).unwrap();
        let mut kept = Kept::new(ours.into_raw_fd()).unwrap();
        assert!(kept.raw() > 2);
        kept.write_all(b"ours\n").unwrap();
        // The program closes it, and a file of its own takes the number (`dup2`
        // does both at once: the number is never free for another thread of this
        // test binary to take meanwhile).
        let theirs = std::fs::File::create(dir.join("theirs.txt")).unwrap();
        let theirs = theirs.into_raw_fd();
        // SAFETY: replaces the test's own descriptor with the program's file.
        assert_eq!(unsafe { libc::dup2(theirs, kept.raw()) }, kept.raw());
        // SAFETY: the original number of the program's file, a copy now.
        unsafe { libc::close(theirs) };
        assert!(!kept.is_intact());
        assert!(kept.write_all(b"trace\n").is_err());
        let number = kept.raw();
        drop(kept);
        // Neither written nor closed: the program's file is as it left it.
        assert!(
            file_id(number).is_some(),
            "the program's descriptor was closed"
        );
        // SAFETY: the program's descriptor, closed by the program.
        unsafe { libc::close(number) };
        assert_eq!(std::fs::read(dir.join("ours.txt")).unwrap(), b"ours\n");
        assert_eq!(std::fs::read(dir.join("theirs.txt")).unwrap(), b"");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
