//! The `tensorpool` command, run as a user runs it: every subcommand, golden figures
//! on the project's real traces (checked against an independent computation here),
//! and a clear refusal of each kind of malformed input.

use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tensorpool(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tensorpool"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// [`tensorpool`] run in `dir` (for the files it writes beside itself, or a path
/// relative to it).
fn tensorpool_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tensorpool"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary runs")
}

/// `replay` with one repetition and untouched pages: the quickest full replay.
const QUICK_REPLAY: [&str; 5] = ["replay", "--reps", "1", "--no-touch", "--quiet"];

/// [`QUICK_REPLAY`] with `args` after it.
fn quick_replay_args<'a>(args: &[&'a str]) -> Vec<&'a str> {
    [&QUICK_REPLAY[..], args].concat()
}

fn quick_replay(args: &[&str]) -> Output {
    tensorpool(&quick_replay_args(args))
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../traces")
        .join(name)
        .display()
        .to_string()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tensorpool-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Asserts that the command failed and said `needle` on standard error.
fn refused_saying(out: &Output, needle: &str) {
    assert!(!out.status.success(), "it succeeded");
    assert!(
        text(&out.stderr).contains(needle),
        "`{needle}` not in: {}",
        text(&out.stderr)
    );
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn read_maybe_gz(path: &str) -> String {
    let raw = std::fs::read(path).unwrap();
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = String::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_string(&mut out)
            .unwrap();
        out
    } else {
        String::from_utf8(raw).unwrap()
    }
}

/// (events, allocations, peak live, unmatched frees, leaked blocks), computed here from
/// the file's text with nothing of tensorpool's.
fn figures(path: &str) -> (u64, u64, u64, u64, u64) {
    let text = read_maybe_gz(path);
    if text.trim_start().starts_with('{') {
        let doc: Value = serde_json::from_str(&text).unwrap();
        let mut events: Vec<(f64, u64, i64)> = doc["traceEvents"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["name"] == "[memory]")
            .map(|e| {
                (
                    e["ts"].as_f64().unwrap(),
                    e["args"]["Addr"].as_u64().unwrap(),
                    e["args"]["Bytes"].as_i64().unwrap(),
                )
            })
            .collect();
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        return stream(
            events
                .into_iter()
                .map(|(_, addr, bytes)| (bytes > 0, addr, bytes.unsigned_abs())),
        );
    }
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    if header.starts_with("Thread") {
        return stream(lines.filter(|l| !l.is_empty()).filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let addr = u64::from_str_radix(f[3].trim_start_matches("0x"), 16).unwrap();
            match f[2] {
                "allocate" => Some((true, addr, f[4].parse().unwrap())),
                "free" => Some((false, addr, 0)),
                _ => None,
            }
        }));
    }
    // Intervals: the live bytes at each step, by brute force.
    let rows: Vec<(u64, u64, u64)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<u64> = l.split(',').map(|x| x.parse().unwrap()).collect();
            (f[1], f[2], f[3])
        })
        .collect();
    let steps: std::collections::BTreeSet<u64> = rows.iter().map(|r| r.0).collect();
    let peak = steps
        .iter()
        .map(|&t| {
            rows.iter()
                .filter(|r| r.0 <= t && t < r.1)
                .map(|r| r.2)
                .sum::<u64>()
        })
        .max()
        .unwrap_or(0);
    let n = rows.len() as u64;
    (2 * n, n, peak, 0, 0)
}

/// Figures of a stream of (is allocation, address, size), pairing frees by address.
fn stream(events: impl Iterator<Item = (bool, u64, u64)>) -> (u64, u64, u64, u64, u64) {
    let (mut count, mut allocations, mut unmatched, mut replaced) = (0, 0, 0, 0);
    let (mut live_bytes, mut peak) = (0u64, 0u64);
    let mut live: HashMap<u64, u64> = HashMap::new();
    for (alloc, addr, size) in events {
        if alloc {
            if live.insert(addr, size).is_some() {
                // The earlier block at this address stays live: never freed.
                replaced += 1;
            }
            allocations += 1;
            count += 1;
            live_bytes += size;
            peak = peak.max(live_bytes);
        } else if let Some(size) = live.remove(&addr) {
            count += 1;
            live_bytes -= size;
        } else {
            unmatched += 1;
        }
    }
    (
        count,
        allocations,
        peak,
        unmatched,
        live.len() as u64 + replaced,
    )
}

#[test]
fn replay_json_matches_an_independent_count() {
    let traces = [
        fixture("transformer_train.csv.gz"),
        fixture("intervals/resnet50.csv.gz"),
        fixture("torch_profiler_mlp.json"),
    ];
    let mut args = vec!["--json"];
    args.extend(traces.iter().map(String::as_str));
    let out = quick_replay(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports = reports.as_array().unwrap();
    assert_eq!(reports.len(), traces.len());
    for (report, path) in reports.iter().zip(&traces) {
        assert_eq!(report["trace"], path.as_str());
        let (events, allocations, peak, unmatched, leaked) = figures(path);
        assert_eq!(report["events"], events, "{path}");
        assert_eq!(report["allocations"], allocations, "{path}");
        assert_eq!(report["peak_live_bytes"], peak, "{path}");
        assert_eq!(report["unmatched_frees"], unmatched, "{path}");
        assert_eq!(report["leaked_blocks"], leaked, "{path}");
        let allocators = report["allocators"].as_array().unwrap();
        let names: Vec<&str> = allocators
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["tensorpool", "system", "mimalloc", "jemalloc"]);
        for a in allocators {
            for key in [
                "ns_per_event",
                "peak_reserved_bytes",
                "efficiency",
                "upstream_calls",
            ] {
                assert!(a.get(key).is_some(), "{key} missing");
            }
            assert!(a["ns_per_event"].as_f64().unwrap() > 0.0);
            let ratio = a["peak_reserved_bytes"].as_f64().unwrap() / peak as f64;
            assert!((a["efficiency"].as_f64().unwrap() - ratio).abs() < 1e-9);
        }
        let tp = &allocators[0];
        assert!(tp["upstream_calls"].as_u64().unwrap() > 0);
        assert!(allocators[1]["upstream_calls"].is_null());
        assert!(tp["peak_reserved_bytes"].as_u64().unwrap() >= peak);
    }
}

#[test]
fn replay_reports_a_true_median_and_no_time_for_a_trace_without_events() {
    // With an even count of repetitions the upper middle one was reported, and a
    // trace of frees alone was timed per event as if it had one (a user hunt).
    let dir = scratch("medians");
    std::fs::create_dir_all(&dir).unwrap();
    let frees = dir.join("frees.csv");
    std::fs::write(
        &frees,
        "Thread,Time,Action,Pointer,Size,Stream\n1,0,free,0x10,8,0\n1,1,free,0x20,8,0\n",
    )
    .unwrap();
    let out = quick_replay(&["--json", frees.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["events"], 0);
    assert_eq!(report[0]["unmatched_frees"], 2);
    for a in report[0]["allocators"].as_array().unwrap() {
        assert!(a["error"].is_null(), "{a}");
        assert!(a["ns_per_event"].is_null(), "{a}");
        assert_eq!(a["ns_per_event_reps"].as_array().unwrap().len(), 0, "{a}");
        assert!(a["tensorpool_time_ratio"].is_null(), "{a}");
    }
    let out = tensorpool(&[
        "replay",
        "--reps",
        "2",
        "--no-touch",
        "--quiet",
        "--json",
        &fixture("intervals/iree_mobilenet.csv.gz"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    for a in report[0]["allocators"].as_array().unwrap() {
        let reps: Vec<f64> = a["ns_per_event_reps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_f64().unwrap())
            .collect();
        assert_eq!(reps.len(), 2);
        let median = a["ns_per_event"].as_f64().unwrap();
        assert!((median - (reps[0] + reps[1]) / 2.0).abs() < 1e-9, "{a}");
    }
}

#[test]
fn replay_without_a_trace_runs_the_embedded_workload() {
    let out = tensorpool(&["replay", "--reps", "1", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("embedded:transformer_train"), "{stdout}");
    assert!(stdout.contains("pages touched"));
    for name in ["tensorpool", "system", "mimalloc", "jemalloc"] {
        assert!(stdout.contains(name));
    }
}

#[test]
fn a_trace_whose_name_starts_with_a_dash_is_replayed() {
    // Each allocator replays in a worker process that takes the trace's path as an
    // argument: a name like `-x` was read as an option, and every replay failed.
    let dir = scratch("dash");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixture("sk_mlp.csv.gz"), dir.join("-x.csv.gz")).unwrap();
    let out = tensorpool_in(&dir, &quick_replay_args(&["--", "-x.csv.gz"]));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!stdout.contains("failed"), "{stdout}");
    assert!(stdout.contains("jemalloc"), "{stdout}");
}

#[test]
fn an_allocator_that_runs_out_of_memory_is_reported_with_its_reason() {
    // Under a memory limit below the trace's peak, tensorpool's worker fails: the
    // table says why (it said its output was not a measurement) and shows no ratio
    // to it, and the JSON has the reason.
    let config = scratch("small_limit.toml");
    std::fs::write(&config, "memory_limit = \"4 MiB\"\n").unwrap();
    let trace = fixture("intervals/iree_mobilenet.csv.gz");
    let args = ["--config", config.to_str().unwrap(), trace.as_str()];
    let out = quick_replay(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("tensorpool  failed: out of memory at event"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("NaN") && !stdout.contains("not a measurement"),
        "{stdout}"
    );
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = quick_replay(&json_args);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = &rows[0]["allocators"][0];
    assert_eq!(ours["name"], "tensorpool");
    assert!(
        ours["error"].as_str().unwrap().contains("out of memory"),
        "{ours}"
    );
    assert!(rows[0]["allocators"][1]["tensorpool_time_ratio"].is_null());
}

#[test]
fn replay_in_debug_mode_gives_the_same_figures_and_no_report() {
    let trace = fixture("sk_mlp.csv.gz");
    let plain = quick_replay(&[&trace, "--json"]);
    let debug = quick_replay(&[&trace, "--json", "--debug"]);
    assert!(debug.status.success(), "{}", text(&debug.stderr));
    let rows = |out: &Output| -> serde_json::Value { serde_json::from_slice(&out.stdout).unwrap() };
    let (plain, debug_rows) = (rows(&plain), rows(&debug));
    for key in ["events", "allocations", "peak_live_bytes", "leaked_blocks"] {
        assert_eq!(plain[0][key], debug_rows[0][key], "{key}");
    }
    let tp = &debug_rows[0]["allocators"][0];
    assert_eq!(tp["name"], "tensorpool");
    assert!(tp["error"].is_null(), "{tp}");
    // The trace's blocks are all freed by the replay: no overrun, no leak reported.
    let stderr = text(&debug.stderr);
    assert!(
        !stderr.contains("overrun") && !stderr.contains("leak:"),
        "{stderr}"
    );
}

#[test]
fn plots_are_written_as_svg_or_html() {
    for ext in ["svg", "html"] {
        let path = scratch(&format!("timeline.{ext}"));
        let out = quick_replay(&[
            "--plot",
            path.to_str().unwrap(),
            &fixture("intervals/iree_mobilenet.csv.gz"),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let plot = std::fs::read_to_string(&path).unwrap();
        assert!(plot.contains("<svg") && plot.contains("polyline"), "{ext}");
        assert_eq!(plot.contains("<html>"), ext == "html");
    }
    let out = tensorpool(&[
        "replay",
        "--plot",
        "timeline.png",
        "--quiet",
        &fixture("intervals/iree_mobilenet.csv.gz"),
    ]);
    refused_saying(&out, ".html or .svg");
    // A path that cannot be written is refused before any replay runs.
    let started = std::time::Instant::now();
    let out = tensorpool(&["replay", "--plot", "/nonexistent/dir/t.svg", "--quiet"]);
    refused_saying(&out, "/nonexistent/dir/t.svg");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "it replayed first"
    );
}

#[test]
fn plan_writes_a_usable_config_and_a_verified_plan() {
    let (config, plan) = (scratch("resnet.toml"), scratch("resnet.plan.csv"));
    let out = tensorpool(&[
        "plan",
        "--json",
        "--quiet",
        &fixture("intervals/resnet50.csv.gz"),
        "--config-out",
        config.to_str().unwrap(),
        "--plan-out",
        plan.to_str().unwrap(),
        "--steps",
        "20000",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(
        report["peak_live_bytes"],
        figures(&fixture("intervals/resnet50.csv.gz")).2
    );
    assert!(report["offline_efficiency"].as_f64().unwrap() <= 1.02);
    // Never above the online manager, and every method named with its figure.
    assert_eq!(report["offline_at_most_online"], true);
    let offline = report["offline_plan_bytes"].as_u64().unwrap();
    assert!(offline <= report["default_reserved_bytes"].as_u64().unwrap());
    let methods = report["offline_methods"].as_array().unwrap();
    assert_eq!(methods.len(), 8);
    assert_eq!(report["alignment"], 64);
    assert!(report["search"]["steps"].as_u64().unwrap() <= 20_000);
    assert!(report["aligned_lower_bound_bytes"].as_u64() <= Some(offline));
    assert!(methods
        .iter()
        .all(|m| m["bytes"].as_u64().unwrap() >= offline));
    assert!(methods
        .iter()
        .any(|m| m["method"] == report["offline_method"] && m["bytes"].as_u64() == Some(offline)));
    assert!(
        report["suggested_reserved_bytes"].as_u64() <= report["default_reserved_bytes"].as_u64()
    );
    tensorpool::Config::from_file(&config).expect("the suggested config reads back");
    let planned = tensorpool::trace::Trace::read(&plan).expect("the plan reads back as a trace");
    assert_eq!(planned.allocations, 1042);
    // replay accepts the suggested config
    let out = quick_replay(&[
        "--config",
        config.to_str().unwrap(),
        &fixture("intervals/iree_mobilenet.csv.gz"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn a_capacity_the_search_cannot_settle_leaves_a_plan_below_the_greedy_one() {
    // MiniMalloc's instance A at 1 MiB in 20,000 steps: every step went to the
    // capacity, and the plan stayed greedy's 1.27 MiB ("the plan needs 1.27 MiB"),
    // where the same search without a capacity found 1.04 MiB (a user hunt).
    let plan = |capacity: Option<&str>| -> Value {
        let mut args = vec!["plan", "--json", "--quiet", "--steps", "20000"];
        if let Some(c) = capacity {
            args.extend(["--capacity", c]);
        }
        let trace = fixture("intervals/mm_A.csv.gz");
        args.push(&trace);
        let dir = scratch("mm_a");
        std::fs::create_dir_all(&dir).unwrap();
        let out = tensorpool_in(&dir, &args);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let plain = plan(None)["offline_plan_bytes"].as_u64().unwrap();
    let asked = plan(Some("1 MiB"));
    let bytes = asked["offline_plan_bytes"].as_u64().unwrap();
    assert!(bytes * 100 <= plain * 105, "{bytes} against {plain}");
    assert_eq!(asked["capacity"]["met"], bytes <= 1 << 20);
}

#[test]
fn plan_searches_to_a_capacity_and_draws_the_plan() {
    // MiniMalloc's instance H at its capacity of 1 MiB: greedy by size needs 1.36x;
    // the search fits it (the lower bound: proven optimal), bounded by steps.
    let (config, plan, svg) = (
        scratch("mm_h.toml"),
        scratch("mm_h.plan.csv"),
        scratch("mm_h.svg"),
    );
    let out = tensorpool(&[
        "plan",
        "--json",
        "--quiet",
        &fixture("intervals/mm_H.csv.gz"),
        "--config-out",
        config.to_str().unwrap(),
        "--plan-out",
        plan.to_str().unwrap(),
        "--steps",
        "12000",
        "--capacity",
        "1 MiB",
        "--plot",
        svg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["offline_plan_bytes"], 1 << 20);
    assert_eq!(report["capacity"]["bytes"], 1 << 20);
    assert_eq!(report["capacity"]["met"], true, "the report says it fits");
    assert_eq!(report["proven_optimal"], true);
    assert_eq!(report["offline_method"], "search (MiniMalloc's method)");
    let improvements = report["search"]["improvements"].as_array().unwrap();
    assert_eq!(improvements.last().unwrap()["bytes"], 1 << 20);
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.trim_end().ends_with("</svg>"));
    // One rectangle per buffer, and the frame.
    assert_eq!(drawn.matches("<rect").count(), 316 + 1);
    // The plan file holds the offsets the report describes.
    let written = std::fs::read_to_string(&plan).unwrap();
    let top = written
        .lines()
        .skip(1)
        .map(|line| {
            let f: Vec<u64> = line.split(',').map(|x| x.parse().unwrap()).collect();
            assert_eq!(f[4] % 64, 0, "unaligned: {line}");
            f[3] + f[4]
        })
        .max()
        .unwrap();
    assert_eq!(top, 1 << 20);
}

#[test]
fn plan_plans_one_step_of_a_repeating_trace_and_replays_it_through_a_planned_arena() {
    // The transformer training trace repeats: one step of 957 allocations, all of
    // them freed within it. Every step the replay begins is served by the plan.
    let (config, plan, step) = (
        scratch("tt.toml"),
        scratch("tt.plan.csv"),
        scratch("tt.step.csv"),
    );
    let out = tensorpool(&[
        "plan",
        "--json",
        "--quiet",
        &fixture("transformer_train.csv.gz"),
        "--config-out",
        config.to_str().unwrap(),
        "--plan-out",
        plan.to_str().unwrap(),
        "--steps",
        "1000",
        "--step",
        "repeating",
        "--step-plan-out",
        step.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &report["step_plan"];
    assert_eq!(s["allocations"], 957);
    assert_eq!(s["planned"], 957);
    assert_eq!(s["replay"]["fallback"], 0);
    assert_eq!(s["replay"]["served"], 3 * 957);
    assert!(s["arena_bytes"].as_u64() >= s["peak_live_bytes"].as_u64());
    assert!(
        s["replay"]["peak_reserved_bytes"].as_u64()
            <= s["replay"]["manager_peak_reserved_bytes"].as_u64()
    );
    // The step plan file: one row per allocation, in order.
    let written = std::fs::read_to_string(&step).unwrap();
    assert!(written.starts_with("slot,size,offset,freed_before,free_event\n"));
    assert_eq!(written.lines().count(), 1 + 957);
    // A trace that does not repeat, and steps that are not events, are refused.
    for (trace, steps, says) in [
        ("torch_profiler_mlp.json", "repeating", "does not repeat"),
        ("sk_mlp.csv.gz", "0,x", "give `repeating`"),
    ] {
        let out = tensorpool(&[
            "plan",
            "--quiet",
            &fixture(trace),
            "--steps",
            "100",
            "--config-out",
            config.to_str().unwrap(),
            "--plan-out",
            plan.to_str().unwrap(),
            "--step",
            steps,
            "--step-plan-out",
            step.to_str().unwrap(),
        ]);
        assert!(!out.status.success(), "{trace} {steps} was accepted");
        assert!(text(&out.stderr).contains(says), "{}", text(&out.stderr));
    }
}

#[test]
fn plan_refuses_bad_search_settings() {
    let trace = fixture("intervals/iree_mobilenet.csv.gz");
    for (args, says) in [
        (&["--align", "48"][..], "not an alignment"),
        (&["--time-limit=-1"][..], "not a number of seconds"),
        (&["--time-limit", "soon"][..], "not a number of seconds"),
        (
            &["--plot", "plan.png"][..],
            "a plan is drawn as an .svg file",
        ),
        (&["--capacity", "0"][..], "holds no plan"),
        (&["--capacity", "lots"][..], "lots"),
    ] {
        let mut all = vec!["plan", "--quiet", trace.as_str()];
        all.extend_from_slice(args);
        let out = tensorpool(&all);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            text(&out.stderr).contains(says),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    // `tensorpool plan --json t.csv | head -c 100` panicked on the closed pipe.
    let dir = scratch("closed_pipe");
    std::fs::create_dir_all(&dir).unwrap();
    let trace = fixture("intervals/iree_mobilenet.csv.gz");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tensorpool"))
        .args([
            "plan",
            "--json",
            "--quiet",
            "--time-limit",
            "0.2",
            trace.as_str(),
        ])
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before anything is written
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn run_refuses_an_option_it_does_not_know_before_the_program() {
    // `tensorpool run --bogus -- true` ran "--bogus" as the program (a user hunt).
    let out = tensorpool(&["run", "--bogus", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("unexpected argument '--bogus'"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bench_refuses_thread_counts_it_cannot_run() {
    for (count, says) in [
        ("0", "give 1 to 256"),
        ("100000", "give 1 to 256"),
        ("two", "not a thread count"),
    ] {
        let out = tensorpool(&["bench", "--smoke", "--threads", count]);
        assert!(!out.status.success(), "--threads {count} was accepted");
        assert!(
            text(&out.stderr).contains(says),
            "{count}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn bench_runs() {
    let out = tensorpool(&["bench", "--smoke", "--quiet"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for section in [
        "Allocate + free",
        "Arena",
        "Large blocks",
        "Threads",
        "Producer/consumer",
    ] {
        assert!(stdout.contains(section), "{section} missing:\n{stdout}");
    }
}

#[test]
fn malformed_inputs_are_refused_with_file_location_and_reason() {
    let cases: [(&str, &[u8], &str); 6] = [
        ("bad.csv", b"Thread,Time,Action,Pointer,Size,Stream\n1,0,allocate,0x10,8,0\n1,0,allocate,0x20,-4,0\n", "line 3: size `-4` is negative"),
        ("bad_intervals.csv", b"id,lower,upper,size\n0,5,2,8\n", "line 2: lower (5) must be below upper (2)"),
        ("bad.json", b"{\"traceEvents\": [{\"name\": \"x\"}, {\"name\": \"[memory]\", \"args\": {\"Addr\": 1}}]}", "event 1: a [memory] event has no `Bytes`"),
        ("empty.csv", b"", "the file is empty"),
        ("unknown.csv", b"a,b\n1,2\n", "unknown header"),
        ("truncated.csv.gz", &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3], "gzip"),
    ];
    for (name, bytes, needle) in cases {
        let path = scratch(name);
        std::fs::write(&path, bytes).unwrap();
        for command in ["replay", "plan"] {
            let out = tensorpool(&[command, "--quiet", path.to_str().unwrap()]);
            assert_eq!(out.status.code(), Some(1), "{name}");
            let stderr = text(&out.stderr);
            assert!(
                stderr.contains(path.to_str().unwrap()) && stderr.contains(needle),
                "{name}: {stderr}"
            );
        }
    }
    for (args, why) in [
        (&["replay", "--reps", "0"][..], "must be at least 1"),
        (&["replay", "--reps", "x"][..], "invalid digit"),
        (&["replay", "--no-such-flag"][..], "unexpected argument"),
    ] {
        let out = tensorpool(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            text(&out.stderr).contains(why),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = tensorpool(&["replay", "--quiet", "/nonexistent/trace.csv"]);
    assert!(text(&out.stderr).contains("cannot read"));
    let bad_config = scratch("bad.toml");
    std::fs::write(&bad_config, "smal_threshold = 4\n").unwrap();
    let out = tensorpool(&[
        "replay",
        "--quiet",
        "--config",
        bad_config.to_str().unwrap(),
    ]);
    assert!(
        text(&out.stderr).contains("unknown field `smal_threshold`"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn replay_reads_a_trace_from_a_pipe_once_for_every_allocator() {
    // Every allocator is replayed by a worker process that read the trace's path
    // again: a pipe read as empty, and a FIFO waited for a writer for ever.
    let trace = fixture("intervals/iree_mobilenet.csv.gz");
    let bytes = std::fs::read(&trace).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tensorpool"))
        .args(quick_replay_args(&["--json", "/dev/stdin"]))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, &bytes).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reports: Value = serde_json::from_slice(&out.stdout).unwrap();
    let report = &reports[0];
    assert_eq!(report["trace"], "/dev/stdin");
    assert_eq!(report["allocators"].as_array().unwrap().len(), 4);
    for allocator in report["allocators"].as_array().unwrap() {
        assert!(allocator["ns_per_event"].as_f64().is_some(), "{allocator}");
    }
    // The copy the workers read is gone.
    let copies = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("tensorpool-replay-{pid}-"))
        })
        .count();
    assert_eq!(copies, 0);
}

#[test]
fn plan_refuses_to_write_over_its_trace_or_one_output_with_another() {
    let trace = scratch("own.csv");
    std::fs::copy(fixture("intervals/iree_mobilenet.csv.gz"), &trace).unwrap();
    let before = std::fs::read(&trace).unwrap();
    let path = trace.to_str().unwrap();
    let out = tensorpool(&["plan", "--quiet", path, "--plan-out", path]);
    refused_saying(&out, "the trace being planned");
    assert_eq!(
        std::fs::read(&trace).unwrap(),
        before,
        "the trace is untouched"
    );
    let same = scratch("same.out");
    let same = same.to_str().unwrap();
    let out = tensorpool(&[
        "plan",
        "--quiet",
        path,
        "--config-out",
        same,
        "--plan-out",
        same,
    ]);
    refused_saying(&out, "a file of its own");
    // Outputs thrown away: a device takes both.
    let out = tensorpool(&[
        "plan",
        "--quiet",
        path,
        "--config-out",
        "/dev/null",
        "--plan-out",
        "/dev/null",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn output_that_cannot_be_written_fails_the_command() {
    // A full disk: the report was cut off, the error printed, and the command still
    // exited 0, so a script took the cut-off file for a result.
    if !Path::new("/dev/full").exists() {
        return;
    }
    let full = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap()
    };
    let trace = fixture("recorded/np_vit.csv.gz");
    // `plan` writes its files into the working directory: a scratch one.
    let dir = scratch("full");
    std::fs::create_dir_all(&dir).unwrap();
    for args in [
        quick_replay_args(&["--json", &trace]),
        vec!["plan", "--quiet", "--steps", "50", &trace],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_tensorpool"))
            .args(&args)
            .current_dir(&dir)
            .stdout(full())
            .output()
            .unwrap();
        refused_saying(&out, "cannot write the output");
    }
}
