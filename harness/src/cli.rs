//! `kcheck analyze <RUN_DIR | history.jsonl> [--json] [--edn] [--time-limit SECS]`.
//!
//! Reads a history, runs the checkers, writes `results.json`, `report.html`,
//! `latency.svg` and `throughput.svg` beside it (and
//! `history.edn` with `--edn`), prints a summary and exits 0 (valid), 1 (anomaly found) or 2 (unknown, or the
//! input or harness failed), with a last line that says which.

use crate::analyze::{analyze, Options, Results};
use crate::history::History;
use crate::Verdict;
use clap::{value_parser, Arg, ArgAction, ArgMatches, Command};
use std::path::{Path, PathBuf};
use std::time::Duration;

const EXIT_UNKNOWN: u8 = 2;

pub fn analyze_command() -> Command {
    Command::new("analyze")
        .about("Check a recorded history (Jepsen-style JSON Lines) for linearizability and Kafka queue anomalies")
        .arg(
            Arg::new("path")
                .value_name("RUN_DIR|HISTORY")
                .required(true)
                .value_parser(value_parser!(PathBuf))
                .help("A run's folder (holding history.jsonl) or a history file"),
        )
        .arg(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("Print results.json to stdout instead of the summary"),
        )
        .arg(
            Arg::new("edn")
                .long("edn")
                .action(ArgAction::SetTrue)
                .help("Also write history.edn beside the history, for Elle/Knossos"),
        )
        .arg(
            Arg::new("time-limit")
                .long("time-limit")
                .value_name("SECS")
                .default_value("60")
                .value_parser(value_parser!(f64))
                .help("Give up on linearizability (verdict unknown) after this many seconds"),
        )
        .arg(
            Arg::new("threads")
                .long("threads")
                .value_name("N")
                .value_parser(value_parser!(usize))
                .help("Partitions checked in parallel (default: available cores)"),
        )
        .arg(
            Arg::new("examples")
                .long("examples")
                .value_name("N")
                .default_value("8")
                .value_parser(value_parser!(usize))
                .help("Examples kept per anomaly"),
        )
}

/// The history file and the folder results go to.
fn locate(path: &Path) -> (PathBuf, PathBuf) {
    if path.is_dir() {
        (path.join("history.jsonl"), path.to_path_buf())
    } else {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        (path.to_path_buf(), dir)
    }
}

fn fail(message: impl std::fmt::Display) -> u8 {
    eprintln!("kcheck analyze: harness/input failure: {message}");
    EXIT_UNKNOWN
}

pub fn run_analyze(m: &ArgMatches) -> u8 {
    let path = m.get_one::<PathBuf>("path").expect("required");
    let secs = *m.get_one::<f64>("time-limit").expect("defaulted");
    if !(secs.is_finite() && secs >= 0.0) {
        return fail(format!(
            "--time-limit must be a non-negative number, got {secs}"
        ));
    }
    let mut opts = Options {
        time_limit: Duration::from_secs_f64(secs.min(1e9)),
        max_examples: *m.get_one::<usize>("examples").expect("defaulted"),
        ..Options::default()
    };
    if let Some(&t) = m.get_one::<usize>("threads") {
        opts.threads = t.max(1);
    }
    let (file, dir) = locate(path);
    let (results, json, out) = match check_and_write(&file, &dir, &opts, m.get_flag("edn")) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if m.get_flag("json") {
        println!("{json}");
    } else {
        print_summary(&file, &out, &results);
    }
    eprintln!("{}", verdict_line(&results));
    results.verdict.exit_code()
}

/// Checks the history in `file` and writes `results.json`, `report.html` and the plots into
/// `dir` (and `history.edn` with `edn`). Shared by `kcheck analyze` and `kcheck test`.
pub fn check_and_write(
    file: &Path,
    dir: &Path,
    opts: &Options,
    edn: bool,
) -> Result<(Results, String, PathBuf), String> {
    let history = History::read_path(file).map_err(|e| format!("{}: {e}", file.display()))?;
    if edn {
        let edn = dir.join("history.edn");
        let written = std::fs::File::create(&edn).and_then(|f| {
            let mut w = std::io::BufWriter::new(f);
            crate::edn::write_edn(&history, &mut w)?;
            std::io::Write::flush(&mut w)
        });
        written.map_err(|e| format!("cannot write {}: {e}", edn.display()))?;
    }
    let results = analyze(&history, opts);
    let json = serde_json::to_string_pretty(&results)
        .map_err(|e| format!("cannot encode results: {e}"))?;
    let out = dir.join("results.json");
    std::fs::write(&out, format!("{json}\n"))
        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
    let report = dir.join("report.html");
    std::fs::write(&report, crate::report::html(&history, &results))
        .map_err(|e| format!("cannot write {}: {e}", report.display()))?;
    for (name, svg) in [
        ("latency.svg", crate::plots::latency_svg(&history)),
        ("throughput.svg", crate::plots::throughput_svg(&history)),
    ] {
        let path = dir.join(name);
        svg.and_then(|s| std::fs::write(&path, s).map_err(|e| e.to_string()))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok((results, json, out))
}

/// The one line that says what the exit code means.
pub fn verdict_line(r: &Results) -> String {
    let what = match r.verdict {
        Verdict::Valid => "VALID",
        Verdict::Invalid => "INVALID (anomaly found)",
        Verdict::Unknown => "UNKNOWN",
    };
    format!("kcheck analyze: {what}: {}", r.summary)
}

pub fn print_summary(file: &Path, out: &Path, r: &Results) {
    println!(
        "history {}: {} ops ({} nemesis), workloads: {}",
        file.display(),
        r.ops,
        r.nemesis_ops,
        if r.workloads.is_empty() {
            "none".to_string()
        } else {
            r.workloads.join(", ")
        }
    );
    if let Some(l) = &r.linearizability {
        for p in &l.partitions {
            println!(
                "  log partition {}: {:?} ({} ops, {} indeterminate, {} configurations, {:.3}s)",
                p.partition, p.verdict, p.ops, p.indeterminate_ops, p.configurations, p.seconds
            );
            if let Some(i) = &p.first_illegal {
                let tail: Vec<String> = p
                    .linearized_prefix
                    .iter()
                    .rev()
                    .take(10)
                    .rev()
                    .map(u64::to_string)
                    .collect();
                println!(
                    "    longest linearizable prefix: {} ops (last: ...{})",
                    p.linearized_prefix.len(),
                    tail.join(", ")
                );
                println!(
                    "    first op that cannot be linearized: index {} ({}): {}",
                    i.invoke_index, i.op, i.explanation
                );
            }
        }
    }
    if let Some(q) = &r.queue {
        println!(
            "  queue: {} keys, {} sends, {} polls; {} anomaly kinds checked",
            q.keys,
            q.sends,
            q.polls,
            q.checked.len()
        );
        for (name, a) in &q.anomalies {
            println!("    {name}: {} ({})", a.count, a.meaning);
            for e in a.examples.iter().take(3) {
                println!("      ops {:?}: {}", e.ops, e.description);
            }
        }
    }
    println!("results: {} ({:.3}s)", out.display(), r.seconds);
}
