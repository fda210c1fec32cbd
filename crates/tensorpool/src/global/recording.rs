//! Which process records when `TENSORPOOL_RECORD` names a file: the decision the
//! preloaded library makes as it loads, from the environment alone (no process
//! tree to walk, no lock), kept here with its tests (the library itself cannot be
//! a test binary).
//!
//! One process records: the first that loads the library with the variable (with
//! `tensorpool run`, which sets `TENSORPOOL_RECORD_PARENT` to its pid, its child),
//! and the programs it becomes by `exec` (a wrapper such as `env`, a
//! `#!/usr/bin/env` script's interpreter, a shell's `exec`); not the programs it
//! starts. The process that records marks it in [`ENV_RECORD_OF`] (its pid and the
//! file), which an exec keeps and a child's pid does not match.
//!
//! ```
//! use std::ffi::OsStr;
//! use tensorpool::global::recording::{mark, records};
//!
//! let file = OsStr::new("trace.csv");
//! assert!(records(file, 100, 1, None, None)); // the first process
//! let of = mark(100, file);
//! assert!(records(file, 100, 1, Some(&of), None)); // it, after an exec
//! assert!(!records(file, 101, 100, Some(&of), None)); // its child
//! ```

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

/// `PID:FILE` of the process that records into `FILE` (set by that process).
pub const ENV_RECORD_OF: &str = "TENSORPOOL_RECORD_OF";

/// Whether the process `pid`, child of `ppid`, records into `path`, given the
/// marks of the environment (see the module's docs): as the process that records
/// (after an exec: the same pid, the same file), or as the first to load the
/// library for a request no process took yet, unless `tensorpool run` named
/// another parent.
pub fn records(
    path: &OsStr,
    pid: u32,
    ppid: u32,
    of: Option<&OsStr>,
    parent: Option<&OsStr>,
) -> bool {
    let taken = of.and_then(|of| {
        let (who, file) = of
            .as_bytes()
            .split_at(of.as_bytes().iter().position(|&b| b == b':')?);
        (&file[1..] == path.as_bytes()).then_some(who)
    });
    match (taken, parent) {
        (Some(who), _) => who == pid.to_string().as_bytes(),
        (None, Some(parent)) => parent.as_bytes() == ppid.to_string().as_bytes(),
        (None, None) => true,
    }
}

/// The value of [`ENV_RECORD_OF`] for process `pid` recording into `path`.
pub fn mark(pid: u32, path: &OsStr) -> OsString {
    let mut mark = OsString::from(format!("{pid}:"));
    mark.push(path);
    mark
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_records_and_the_programs_it_becomes_by_exec() {
        let file = OsStr::new("/tmp/t:1.csv");
        // Plain `TENSORPOOL_RECORD=...`: the first process records, and marks it.
        assert!(records(file, 100, 1, None, None));
        let of = mark(100, file);
        // It execs (`env`, a script's interpreter): same pid, same file.
        assert!(records(file, 100, 1, Some(&of), None));
        // Its children do not (an orphan reparented anywhere included).
        assert!(!records(file, 101, 100, Some(&of), None));
        assert!(!records(file, 102, 1, Some(&of), None));
        // A new request for another file is a new recording.
        assert!(records(OsStr::new("/tmp/b.csv"), 103, 100, Some(&of), None));
        // `tensorpool run` (pid 50): its child records; a grandchild given the
        // variables without the mark (a shell's own copy) does not.
        let parent = OsStr::new("50");
        assert!(records(file, 60, 50, None, Some(parent)));
        assert!(!records(file, 61, 60, None, Some(parent)));
        let of = mark(60, file);
        assert!(records(file, 60, 50, Some(&of), Some(parent)));
        assert!(!records(file, 61, 60, Some(&of), Some(parent)));
        // A mark without a file part is no mark.
        assert!(records(file, 70, 1, Some(OsStr::new("70")), None));
    }
}
