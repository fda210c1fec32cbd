//! `tensorpool`: replay allocation traces, plan a configuration, run benchmarks.

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tensorpool::Config;
use tensorpool_cli::error::{CliError, Result};
use tensorpool_cli::peers::Kind;
use tensorpool_cli::replay::{self, Options, Source};
use tensorpool_cli::run::Launch;
use tensorpool_cli::{bench, plan, plot};

#[derive(Parser)]
#[command(
    name = "tensorpool",
    version,
    about = "A memory allocator for tensors: replay traces, compare allocators, plan a configuration"
)]
struct Cli {
    /// No progress bar.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay traces through tensorpool, the system allocator, mimalloc and jemalloc.
    Replay {
        /// Traces: RMM CSV, MiniMalloc intervals or PyTorch Chrome JSON, gzip or not.
        /// None: the embedded transformer training trace.
        traces: Vec<String>,
        #[command(flatten)]
        how: HowToReplay,
        /// Print one JSON array instead of the table.
        #[arg(long)]
        json: bool,
        /// Write a timeline of live and reserved bytes (.html or .svg).
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Lower bound, online reservation, a suggested config and a verified offline plan.
    Plan {
        /// The trace to plan.
        trace: String,
        /// Where to write the suggested config (default: `<trace name>.tensorpool.toml`).
        #[arg(long)]
        config_out: Option<PathBuf>,
        /// Where to write the offline plan (default: `<trace name>.plan.csv`).
        #[arg(long)]
        plan_out: Option<PathBuf>,
        /// Seconds the search for a smaller plan may take (the best plan found so far
        /// is kept when they run out). Default: 5, or none with --steps.
        #[arg(long, value_name = "SECONDS", value_parser = parse_seconds)]
        time_limit: Option<f64>,
        /// Bound the search by a count of steps instead (results that do not depend
        /// on the machine's speed).
        #[arg(long, value_name = "N")]
        steps: Option<u64>,
        /// A capacity to reach first (MiniMalloc's question: does the plan fit in this
        /// many bytes?) with seven eighths of the budget; the search goes on below it
        /// (or above it, when it cannot be settled) with the rest.
        #[arg(long, value_name = "BYTES", value_parser = parse_capacity)]
        capacity: Option<u64>,
        /// Every offset of the plan is a multiple of this many bytes (a power of two).
        #[arg(long, value_name = "BYTES", default_value_t = plan::Options::ALIGN, value_parser = parse_align)]
        align: u64,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        /// Draw the plan (buffers as rectangles, offset against time) as an SVG file.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// Also plan one step, for a PlannedArena: `repeating` (the trace's period
        /// is found) or the steps' first events (`0,120,240`).
        #[arg(long, value_name = "repeating|EVENTS", value_parser = parse_steps)]
        step: Option<tensorpool::plan::Steps>,
        /// Where to write the step's plan (default: `<trace name>.step.csv`).
        #[arg(long, requires = "step")]
        step_plan_out: Option<PathBuf>,
    },
    /// Microbenchmarks against the system allocator, mimalloc, jemalloc and bumpalo.
    Bench {
        /// Longer and steadier (about ten times the quick run).
        #[arg(long, conflicts_with = "smoke")]
        full: bool,
        /// One short run of each benchmark: checks they work, measures little.
        #[arg(long)]
        smoke: bool,
        /// Thread counts of the threads benchmark (each 1 to 256).
        #[arg(long, value_delimiter = ',', default_value = "1,2", value_parser = thread_count)]
        threads: Vec<usize>,
    },
    /// Run a program with tensorpool as its allocator (libtensorpool.so preloaded).
    ///
    /// `tensorpool run --record t.csv -- python3 train.py`, then `tensorpool plan
    /// t.csv`: how to study a program you did not write. Exits with the program's
    /// status.
    Run {
        /// A config for the library (TOML or JSON, as `plan` writes).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Record every allocation and free of the program here (RMM CSV).
        #[arg(long)]
        record: Option<PathBuf>,
        /// Print tensorpool's summary when the program exits.
        #[arg(long)]
        stats: bool,
        /// The library to preload (default: libtensorpool.so beside this command).
        #[arg(long)]
        library: Option<PathBuf>,
        /// The program and its arguments, after `--`. (An option before the program
        /// is this command's: an unknown one is an error, not the program to run.)
        #[arg(required = true, trailing_var_arg = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Measure one allocator on one trace (used by `replay`, one process each).
    #[command(hide = true)]
    ReplayWorker {
        trace: String,
        #[arg(long, value_enum)]
        allocator: Kind,
        #[command(flatten)]
        how: HowToReplay,
        #[arg(long, default_value_t = 400)]
        samples: usize,
    },
}

/// The replay settings `replay` takes and passes on to its workers.
#[derive(Args)]
struct HowToReplay {
    /// tensorpool's configuration (TOML or JSON, as `plan` writes).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Do not write the pages of each block.
    #[arg(long)]
    no_touch: bool,
    /// Timed repetitions per allocator; the median is reported.
    #[arg(long, default_value_t = 5, value_parser = at_least_one)]
    reps: usize,
    /// Run tensorpool in debug mode (guard bytes, poisoning, leak checks), to find
    /// bugs or to measure what debug mode costs.
    #[arg(long)]
    debug: bool,
}

impl HowToReplay {
    fn options(self, samples: usize) -> Result<Options> {
        let mut config = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        config.debug |= self.debug;
        Ok(Options {
            reps: self.reps,
            touch: !self.no_touch,
            config,
            config_path: self.config,
            samples,
        })
    }
}

/// Prints `report` as pretty JSON with `--json`, else as the text `table` makes.
fn print_report<T: serde::Serialize>(
    json: bool,
    report: &T,
    table: impl FnOnce() -> String,
) -> Result<()> {
    if json {
        let text = serde_json::to_string_pretty(report)?;
        print_out(&format!("{text}\n"))
    } else {
        print_out(&table())
    }
}

/// Writes `text` on standard output; a reader that went away (`| head`) ends the
/// output quietly, where `print!` would panic; any other failure (a full disk) is
/// the command's failure, so that a script does not take a cut-off file for a
/// result.
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::Output(e)),
        _ => Ok(()),
    }
}

/// A capacity for `plan`: a number of bytes, or a size such as "1 MiB"; not 0.
fn parse_capacity(text: &str) -> std::result::Result<u64, String> {
    match tensorpool::bytes::parse_bytes(text) {
        Ok(0) => Err("a capacity of 0 bytes holds no plan".to_string()),
        Ok(n) => Ok(n as u64),
        Err(e) => Err(e),
    }
}

/// A thread count of the threads benchmark: 1 to 256.
fn thread_count(text: &str) -> std::result::Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n @ 1..=256) => Ok(n),
        Ok(n) => Err(format!("{n} threads: give 1 to 256")),
        Err(e) => Err(format!("{text:?} is not a thread count: {e}")),
    }
}

/// A count of at least 1, for `--reps`.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A time limit in seconds: finite, not negative.
fn parse_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.0..=1e9).contains(&s) => Ok(s),
        _ => Err(format!(
            "{text:?} is not a number of seconds (0 or more, for example 2.5)"
        )),
    }
}

/// How a trace is cut into steps: `repeating`, or the steps' first events.
fn parse_steps(text: &str) -> Result<tensorpool::plan::Steps, String> {
    text.parse().map_err(|e: tensorpool::Error| e.to_string())
}

/// An alignment: a power of two from 1 to 1 GiB.
fn parse_align(text: &str) -> Result<u64, String> {
    use tensorpool::plan::MOST_ALIGN;
    match text.parse::<u64>() {
        Ok(a) if a.is_power_of_two() && a <= MOST_ALIGN => Ok(a),
        _ => Err(format!(
            "{text:?} is not an alignment (a power of two of bytes, from 1 to {MOST_ALIGN})"
        )),
    }
}

fn progress(quiet: bool, total: usize) -> ProgressBar {
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}").expect("a valid template"),
    );
    bar
}

/// Whether two paths name one regular file (to be written): the same path, or the
/// same existing file (device and inode) reached another way. A device or a pipe
/// (`/dev/null` for an output thrown away) may take several outputs.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (x, y) = (std::fs::metadata(a), std::fs::metadata(b));
    if x.as_ref().is_ok_and(|m| !m.is_file()) || y.as_ref().is_ok_and(|m| !m.is_file()) {
        return false;
    }
    if std::path::absolute(a).ok() == std::path::absolute(b).ok() {
        return true;
    }
    match (x, y) {
        (Ok(x), Ok(y)) => (x.dev(), x.ino()) == (y.dev(), y.ino()),
        _ => false,
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run {
            config,
            record,
            stats,
            library,
            command,
        } => {
            let launch = Launch {
                command,
                config,
                record: record.clone(),
                stats,
                library,
            };
            let ended = tensorpool_cli::run::run(&launch)?;
            if let Some(path) = record {
                // The library writes the header when it starts recording: an empty
                // file means it never did (a static or setuid program, which the
                // loader preloads nothing into, or a file it could not write).
                // (A pipe or a device written to says nothing of its length.)
                let recorded = std::fs::metadata(&path).is_ok_and(|m| !m.is_file() || m.len() > 0);
                if !recorded {
                    eprintln!(
                        "tensorpool: nothing was recorded into {}: the program did not \
                         record (a static or setuid program ignores LD_PRELOAD; an \
                         error above says why otherwise)",
                        path.display()
                    );
                } else if !cli.quiet {
                    eprintln!(
                        "tensorpool: recorded into {0}; `tensorpool plan {0}` plans it, \
                         `tensorpool replay {0}` compares allocators on it",
                        path.display()
                    );
                }
            }
            Ok(ExitCode::from(ended.code))
        }
        Command::Replay {
            traces,
            how,
            json,
            plot,
        } => {
            let sources: Vec<Source> = if traces.is_empty() {
                vec![Source::Embedded]
            } else {
                traces.iter().map(|t| Source::parse(t)).collect()
            };
            // Check every trace, the config and the plot's path before the long work.
            let sources = sources
                .into_iter()
                .map(Source::prepare)
                .collect::<Result<Vec<_>, _>>()?;
            if let Some(path) = &plot {
                if !matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("svg" | "html" | "htm")
                ) {
                    return Err(CliError::PlotKind(path.clone()));
                }
                // Made now (empty), so that a path that cannot be written fails here.
                std::fs::write(path, "").map_err(CliError::file(path))?;
            }
            let options = how.options(400)?;
            let bar = progress(cli.quiet, sources.len() * Kind::ALL.len());
            let reports = replay::replay_all(&sources, &options, |step| {
                bar.set_message(step.to_string());
                bar.inc(1);
            })?;
            bar.finish_and_clear();
            print_report(json, &reports, || replay::table(&reports))?;
            if let Some(path) = plot {
                let text = match path.extension().and_then(|e| e.to_str()) {
                    Some("svg") => plot::svg(&reports),
                    _ => plot::html(&reports),
                };
                std::fs::write(&path, text).map_err(CliError::file(&path))?;
                if !json {
                    print_out(&format!("plot written to {}\n", path.display()))?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Plan {
            trace,
            config_out,
            plan_out,
            time_limit,
            steps,
            capacity,
            align,
            json,
            plot,
            step,
            step_plan_out,
        } => {
            if let Some(path) = &plot {
                if path.extension().and_then(|e| e.to_str()) != Some("svg") {
                    return Err(CliError::PlanPlotKind(path.clone()));
                }
                // Made now (empty), so that a path that cannot be written fails here.
                std::fs::write(path, "").map_err(CliError::file(path))?;
            }
            let time = match (time_limit, steps) {
                (Some(seconds), _) => Some(std::time::Duration::from_secs_f64(seconds)),
                (None, Some(_)) => None,
                (None, None) => Some(plan::Options::TIME_LIMIT),
            };
            let options = plan::Options {
                align,
                budget: plan::search::Budget {
                    time,
                    steps,
                    capacity,
                },
            };
            let source = Source::parse(&trace);
            let loaded = source.load()?;
            let stem = match &source {
                Source::Embedded => "transformer_train".to_string(),
                Source::File(p) | Source::Copied { given: p, .. } => {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    name.trim_end_matches(".gz")
                        .trim_end_matches(".csv")
                        .trim_end_matches(".json")
                        .to_string()
                }
            };
            let config_out =
                config_out.unwrap_or_else(|| PathBuf::from(format!("{stem}.tensorpool.toml")));
            let plan_out = plan_out.unwrap_or_else(|| PathBuf::from(format!("{stem}.plan.csv")));
            let step_plan_out = step.as_ref().map(|_| {
                step_plan_out.unwrap_or_else(|| PathBuf::from(format!("{stem}.step.csv")))
            });
            // Each output a file of its own, and none the trace read.
            let mut outputs: Vec<(&str, &std::path::Path)> =
                vec![("--config-out", &config_out), ("--plan-out", &plan_out)];
            outputs.extend(step_plan_out.as_deref().map(|p| ("--step-plan-out", p)));
            outputs.extend(plot.as_deref().map(|p| ("--plot", p)));
            for (i, (option, path)) in outputs.iter().enumerate() {
                if let Source::File(input) = &source {
                    if same_file(path, input) {
                        return Err(CliError::Run(format!(
                            "{option} {}: that is the trace being planned; name another file",
                            path.display()
                        )));
                    }
                }
                if let Some((other, _)) = outputs[..i].iter().find(|(_, p)| same_file(p, path)) {
                    return Err(CliError::Run(format!(
                        "{option} and {other} both name {}: each output needs a file of its own",
                        path.display()
                    )));
                }
            }
            let bar = progress(cli.quiet, 1);
            bar.set_message(format!("planning {}", source.label()));
            // The step first: a step that cannot be cut is refused before the long part.
            let step_plan = match (&step, &step_plan_out) {
                (Some(steps), Some(out)) => Some(plan::plan_step(&loaded, steps, &options, out)?),
                _ => None,
            };
            let mut report =
                plan::plan(&source.label(), &loaded, &config_out, &plan_out, &options)?;
            report.step_plan = step_plan;
            bar.finish_and_clear();
            if let Some(path) = &plot {
                let svg = plot::plan_svg(
                    &source.label(),
                    &report.placements,
                    report.offline_plan_bytes,
                );
                std::fs::write(path, svg).map_err(CliError::file(path))?;
                if !json {
                    print_out(&format!("plan drawn in {}\n", path.display()))?;
                }
            }
            print_report(json, &report, || plan::text(&report))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            full,
            smoke,
            threads,
        } => {
            let effort = match (full, smoke) {
                (true, _) => bench::Effort::FULL,
                (_, true) => bench::Effort::SMOKE,
                _ => bench::Effort::QUICK,
            };
            let bar = progress(cli.quiet, bench::steps(&threads));
            let report = bench::run(effort, &threads, |step| {
                bar.set_message(step.to_string());
                bar.inc(1);
            });
            bar.finish_and_clear();
            print_out(&report.to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ReplayWorker {
            trace,
            allocator,
            how,
            samples,
        } => {
            let options = how.options(samples)?;
            let trace = Source::parse(&trace).load()?;
            let m = replay::measure(&trace, allocator, &options)?;
            print_out(&format!("{}\n", serde_json::to_string(&m)?))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tensorpool: {message}");
            ExitCode::FAILURE
        }
    }
}
