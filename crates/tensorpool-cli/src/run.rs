//! `tensorpool run`: any program with tensorpool as its allocator.
//!
//! The program is started with `libtensorpool.so` (crates/tensorpool-malloc) in
//! `LD_PRELOAD`, ahead of whatever the environment preloads already, and with the
//! library's variables set from the options: `--config` (`TENSORPOOL_CONFIG`, the
//! format `tensorpool plan` writes), `--record` (`TENSORPOOL_RECORD`: every
//! allocation and free of the process, in the CSV that `replay` and `plan` read),
//! `--stats` (`TENSORPOOL_STATS`: the summary when the program exits). The command
//! exits with the program's status (128 + the signal's number when a signal ended
//! it), so that it can stand in for the program in a script. While the program
//! runs, the signals a job manager sends to stop it (`SIGTERM`, `SIGHUP`,
//! `SIGUSR1`, `SIGUSR2`, and `SIGINT`, `SIGQUIT` sent by a process) are passed on
//! to it, and the command outlives the terminal's `SIGINT` and `SIGQUIT`, which
//! reach the program directly (as `time` does), to report how it ended. (A signal
//! sent to the whole process group reaches the program twice.)
//!
//! ```no_run
//! use tensorpool_cli::run::{run, Launch};
//!
//! let launch = Launch {
//!     command: vec!["python3".into(), "train.py".into()],
//!     record: Some("train.csv".into()),
//!     ..Launch::default()
//! };
//! let status = run(&launch)?; // then: tensorpool plan train.csv
//! # Ok::<(), tensorpool_cli::error::CliError>(())
//! ```
//!
//! The library is found beside the command (`target/release/` after
//! `cargo build --release -p tensorpool-malloc -p tensorpool-cli`), or in `../lib`
//! of an installed one, or where `--library` says. Static and setuid programs
//! ignore `LD_PRELOAD`: the loader does not preload into them, and they run on
//! their own allocator (the summary then never appears).

use crate::error::{CliError, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The library's file name.
pub const LIBRARY: &str = "libtensorpool.so";

/// What to run, and how.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// The program and its arguments.
    pub command: Vec<OsString>,
    /// A config file for the library (checked before the program starts).
    pub config: Option<PathBuf>,
    /// Where to record the program's allocations and frees.
    pub record: Option<PathBuf>,
    /// Print the library's summary when the program exits.
    pub stats: bool,
    /// The library to preload, if not the one beside the command.
    pub library: Option<PathBuf>,
}

/// How the program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// The status for the command to exit with: the program's, or 128 + the number
    /// of the signal that ended it.
    pub code: u8,
}

/// The library `launch` names, or the one beside the running command; an error
/// that says where it looked and how to build it.
pub fn find_library(launch: &Launch) -> Result<PathBuf> {
    if let Some(path) = &launch.library {
        if !path.is_file() {
            return Err(CliError::Run(format!(
                "--library {}: no such file",
                path.display()
            )));
        }
        if !is_tensorpool_library(path) {
            return Err(CliError::Run(format!(
                "--library {}: not tensorpool's library (a shared object that exports \
                 tensorpool_summary); the loader would pass it over, or preload another \
                 allocator, and the program would run without tensorpool",
                path.display()
            )));
        }
        return preloadable(path);
    }
    let exe = std::env::current_exe().map_err(CliError::CurrentExe)?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [dir.join(LIBRARY), dir.join("../lib").join(LIBRARY)];
    match candidates.iter().find(|p| p.is_file()) {
        Some(path) => preloadable(path),
        None => Err(CliError::Run(format!(
            "{LIBRARY} is not beside this command (looked in {} and {}); build it with \
             `cargo build --release -p tensorpool-malloc`, or name it with --library",
            candidates[0].display(),
            candidates[1].display()
        ))),
    }
}

/// Whether `path` is an ELF shared object that names `tensorpool_summary` (in its
/// symbol table): tensorpool's library, not another file given by mistake.
fn is_tensorpool_library(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let needle = b"tensorpool_summary\0";
    bytes.starts_with(b"\x7fELF") && bytes.windows(needle.len()).any(|w| w == needle)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(CliError::file(path))
}

/// The library's `path` made absolute, if `LD_PRELOAD` can carry it: the loader
/// splits its value at spaces and colons, so a library in `/opt/my tools/` was not
/// preloaded and the program ran without tensorpool.
fn preloadable(path: &Path) -> Result<PathBuf> {
    let path = absolute(path)?;
    if path
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .any(|b| matches!(b, b' ' | b':' | b'\t'))
    {
        return Err(CliError::Run(format!(
            "{}: LD_PRELOAD splits its value at spaces and colons, so the loader cannot \
             preload a library whose path has one; copy {LIBRARY} to a path without \
             them and name it with --library",
            path.display()
        )));
    }
    Ok(path)
}

/// The `LD_PRELOAD` value with `library` first, before what `current` preloads.
pub fn preload_value(library: &Path, current: Option<&OsString>) -> OsString {
    let mut value = library.as_os_str().to_os_string();
    if let Some(current) = current.filter(|c| !c.is_empty()) {
        value.push(":");
        value.push(current);
    }
    value
}

/// Runs the program with the library preloaded and waits for it.
pub fn run(launch: &Launch) -> Result<Ended> {
    let Some((program, args)) = launch.command.split_first() else {
        return Err(CliError::Run(
            "no program to run: tensorpool run [OPTIONS] -- PROGRAM [ARGS...]".into(),
        ));
    };
    let library = find_library(launch)?;
    let mut command = Command::new(program);
    command.args(args).env(
        "LD_PRELOAD",
        preload_value(&library, std::env::var_os("LD_PRELOAD").as_ref()),
    );
    if let Some(config) = &launch.config {
        // A bad file is the command's error, before anything runs (the library
        // would only report it and use its defaults); checked over the library's
        // own base, as the library reads it.
        tensorpool::Config::from_file_over(&tensorpool::global::process_defaults(), config)?;
        command.env("TENSORPOOL_CONFIG", absolute(config)?);
    }
    if let Some(record) = &launch.record {
        // The file is made now, so that a path that cannot be written fails here.
        std::fs::File::create(record).map_err(CliError::file(record))?;
        command.env("TENSORPOOL_RECORD", absolute(record)?);
        // The recording is of the program this runs (its parent is this process),
        // not of the programs it starts: a shell such as bash passes the variable on
        // from its own copy of the environment, where the library cannot remove it.
        command.env("TENSORPOOL_RECORD_PARENT", std::process::id().to_string());
    }
    if launch.stats {
        command.env("TENSORPOOL_STATS", "1");
    }
    let mut child = command
        .spawn()
        .map_err(|e| CliError::Run(format!("cannot start {}: {e}", program.to_string_lossy())))?;
    let forwarding = Forwarding::to(child.id());
    // Waits without reaping, so that the pid, which signals are passed on to, is not
    // given to another process before forwarding stops.
    loop {
        // SAFETY: a zeroed siginfo_t is a valid buffer for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waits for our own child, leaving it waitable (WNOWAIT).
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                child.id() as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    drop(forwarding);
    let status = child.wait().map_err(|e| {
        CliError::Run(format!(
            "cannot wait for {}: {e}",
            program.to_string_lossy()
        ))
    })?;
    Ok(Ended {
        code: exit_code(status),
    })
}

/// The program that signals are passed on to (0: none).
static CHILD: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Signals passed on to the program while it runs.
const FORWARDED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1, libc::SIGUSR2];
/// Signals the terminal sends to the whole foreground group, the program included:
/// passed on only when another process sent them to this one (`kill -INT`).
const FROM_PROCESSES: [libc::c_int; 2] = [libc::SIGINT, libc::SIGQUIT];

extern "C" fn pass_on(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler.
    let from_kernel = unsafe { (*info).si_code } == libc::SI_KERNEL;
    if from_kernel && FROM_PROCESSES.contains(&signal) {
        // The terminal's: the program, in the same group, had it too.
        return;
    }
    let pid = CHILD.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: `kill` is async-signal-safe; `pid` is the program, not yet reaped
        // (forwarding stops before it is).
        unsafe { libc::kill(pid, signal) };
    }
}

/// The signal dispositions while the program runs; the previous ones come back on
/// drop.
struct Forwarding {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

impl Forwarding {
    fn to(pid: u32) -> Forwarding {
        CHILD.store(pid as i32, std::sync::atomic::Ordering::Relaxed);
        let mut previous = Vec::new();
        let handler = pass_on as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as libc::sighandler_t;
        for &signal in FORWARDED.iter().chain(&FROM_PROCESSES) {
            // SAFETY: a zeroed sigaction is a valid value to fill; `handler` is
            // async-signal-safe; the old action is kept to restore.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = handler;
                action.sa_flags = libc::SA_RESTART | libc::SA_SIGINFO;
                libc::sigemptyset(&mut action.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(signal, &action, &mut old) == 0 {
                    previous.push((signal, old));
                }
            }
        }
        Forwarding { previous }
    }
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        CHILD.store(0, std::sync::atomic::Ordering::Relaxed);
        for (signal, old) in &self.previous {
            // SAFETY: restores the action `to` replaced.
            unsafe { libc::sigaction(*signal, old, std::ptr::null_mut()) };
        }
    }
}

/// The status a shell gives a program that ended so.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_goes_first_in_ld_preload() {
        let lib = Path::new("/opt/tp/libtensorpool.so");
        assert_eq!(preload_value(lib, None), "/opt/tp/libtensorpool.so");
        assert_eq!(
            preload_value(lib, Some(&"".into())),
            "/opt/tp/libtensorpool.so"
        );
        assert_eq!(
            preload_value(lib, Some(&"libfoo.so".into())),
            "/opt/tp/libtensorpool.so:libfoo.so"
        );
    }

    #[test]
    fn a_library_path_ld_preload_would_split_is_refused() {
        // Found by a user hunt: run from "/tmp/my dir/" preloaded "/tmp/my", which
        // the loader passed over, and the program ran without tensorpool.
        for bad in ["/tmp/my dir/libtensorpool.so", "/tmp/a:b/libtensorpool.so"] {
            let e = preloadable(Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains("LD_PRELOAD splits its value"), "{e}");
        }
        assert!(preloadable(Path::new("/opt/tp/libtensorpool.so")).is_ok());
        // A config or a recording in such a directory is one path, never split (the
        // review of the first version: it refused `--record` run from "My Projects").
        assert!(absolute(Path::new("/tmp/my dir/trace.csv")).is_ok());
    }

    #[test]
    fn a_missing_library_or_program_is_an_error_that_says_what_to_do() {
        let launch = Launch {
            command: vec!["true".into()],
            library: Some("/no/such/libtensorpool.so".into()),
            ..Launch::default()
        };
        let e = run(&launch).unwrap_err().to_string();
        assert!(e.contains("--library /no/such/libtensorpool.so"), "{e}");
        let e = run(&Launch::default()).unwrap_err().to_string();
        assert!(e.contains("no program to run"), "{e}");
        // A file that is not tensorpool's library: the loader would pass it over
        // and the program would run on its own allocator.
        let other = std::env::temp_dir().join(format!("not-tp-{}.so", std::process::id()));
        std::fs::write(&other, b"\x7fELF not the library").unwrap();
        let launch = Launch {
            command: vec!["true".into()],
            library: Some(other.clone()),
            ..Launch::default()
        };
        let e = run(&launch).unwrap_err().to_string();
        std::fs::remove_file(&other).unwrap();
        assert!(e.contains("not tensorpool's library"), "{e}");
    }
}
