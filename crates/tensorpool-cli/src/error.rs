//! Every way the command can fail, each with what it was doing and why.
//!
//! The library's own refusals (a malformed trace, naming the line; an invalid
//! configuration, naming the setting) pass through unchanged as [`CliError::Library`].
//! `main` prints the error after `tensorpool: ` and exits with status 1.
//!
//! ```
//! use tensorpool_cli::error::CliError;
//!
//! let e = CliError::OutOfMemory { event: 7, size: 4096 };
//! assert_eq!(e.to_string(), "out of memory at event 7 (4096 bytes)");
//! ```

use std::path::PathBuf;

/// A failure of the command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// tensorpool refused: a trace, a configuration, or memory.
    #[error(transparent)]
    Library(#[from] tensorpool::Error),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A trace that can be read only once could not be kept for the workers.
    #[error("{}: read once (not a regular file), but its copy for the workers could not be written: {source}", path.display())]
    Spill {
        /// The trace.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// `--plot` names a file of a kind the command does not write.
    #[error("{}: the plot must be a .html or .svg file", .0.display())]
    PlotKind(PathBuf),
    /// `plan --plot` names a file that is not `.svg`.
    #[error("{}: a plan is drawn as an .svg file", .0.display())]
    PlanPlotKind(PathBuf),
    /// A replayed allocator ran out of memory.
    #[error("out of memory at event {event} ({size} bytes)")]
    OutOfMemory {
        /// The index of the allocation event in the trace.
        event: usize,
        /// Its size.
        size: u64,
    },
    /// The offline plan placed two buffers that live at once in overlapping bytes.
    #[error("the offline plan is wrong: {0}")]
    Plan(#[from] Overlap),
    /// The offline plan put a buffer at an offset that is not a multiple of the
    /// alignment asked for.
    #[error(
        "the offline plan is wrong: buffer {id} is at offset {offset}, not a multiple of {align}"
    )]
    Unaligned {
        /// The buffer.
        id: u32,
        /// Its offset.
        offset: u64,
        /// The alignment asked for.
        align: u64,
    },
    /// A replay worker (this program, run again for one allocator) did not report.
    #[error("the {allocator} worker failed: {why}")]
    Worker {
        /// The allocator it was replaying.
        allocator: &'static str,
        /// Why: it could not start, it failed (its standard error), or its output.
        why: String,
    },
    /// The command could not find its own executable, which runs the workers.
    #[error("cannot find this program: {0}")]
    CurrentExe(std::io::Error),
    /// The standard output could not be written (a full disk, a closed file).
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    /// `tensorpool run` could not start the program (no program, no library).
    #[error("{0}")]
    Run(String),
    /// A report could not be written as JSON.
    #[error("cannot write the report as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// Two buffers that an offline plan places in overlapping bytes while both are live.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("buffers {first} [{}, {}) and {second} [{}, {}) overlap while both live", .first_range.0, .first_range.1, .second_range.0, .second_range.1)]
pub struct Overlap {
    /// The buffer placed lower.
    pub first: u32,
    /// Its bytes, `[start, end)`.
    pub first_range: (u64, u64),
    /// The buffer placed higher.
    pub second: u32,
    /// Its bytes.
    pub second_range: (u64, u64),
}

/// What the command's functions return.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl CliError {
    /// A file error, with the file's path.
    pub fn file(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> CliError {
        let path = path.into();
        move |source| CliError::File { path, source }
    }
}
