//! The model-checking subcommands: `models`, `check`, `explore`, `replay`, `bench`.

use crate::{EXIT_OK, EXIT_USAGE, EXIT_VIOLATION};
use clap::{value_parser, Arg, ArgAction, ArgMatches, Command};
use indicatif::{ProgressBar, ProgressStyle};
use kcheck_models::catalog::PropertyResult;
use kcheck_models::engine::{CheckOptions, Progress, Stop};
use kcheck_models::{ModelDef, Report, Trace, CATALOG};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The pseudo-model `all` checks every model at its default (or release) bounds.
const ALL: &str = "all";

pub fn models_command() -> Command {
    Command::new("models")
        .about("List every model with its bounds, invariants and bug flags")
        .arg(json_arg())
}

fn json_arg() -> Arg {
    Arg::new("json")
        .long("json")
        .action(ArgAction::SetTrue)
        .help("Machine-readable JSON output")
}

/// The arguments every per-model subcommand of `check` and `explore` takes.
fn model_args(cmd: Command, model: &dyn ModelDef) -> Command {
    let flags: Vec<&str> = model.bug_flags().iter().map(|b| b.name).collect();
    let mut cmd = cmd.arg(
        Arg::new("bug")
            .long("bug")
            .value_name("NAME")
            .action(ArgAction::Append)
            .help(format!(
                "Switch on a historical bug flag (known: {})",
                flags.join(", ")
            )),
    );
    for b in model.bounds() {
        cmd = cmd.arg(
            Arg::new(b.name)
                .long(b.name)
                .value_name("N")
                .value_parser(value_parser!(u32))
                .help(format!(
                    "{} (default {}, release {}, {}..={})",
                    b.meaning, b.default, b.release, b.min, b.max
                )),
        );
    }
    cmd.arg(
        Arg::new("release")
            .long("release")
            .action(ArgAction::SetTrue)
            .help("Start from the release bounds instead of the defaults"),
    )
}

fn checker_args(cmd: Command) -> Command {
    cmd.arg(
        Arg::new("threads")
            .long("threads")
            .value_name("N")
            .value_parser(value_parser!(u16).range(1..=1024))
            .help("Worker threads (default: all cores)"),
    )
    .arg(
        Arg::new("no-symmetry")
            .long("no-symmetry")
            .action(ArgAction::SetTrue)
            .help("Explore every state, not one per symmetry class"),
    )
    .arg(
        Arg::new("max-states")
            .long("max-states")
            .value_name("N")
            .value_parser(value_parser!(u64).range(1..))
            .help("Stop after this many unique states (the result is then unknown)"),
    )
    .arg(
        Arg::new("continue")
            .long("continue")
            .action(ArgAction::SetTrue)
            .help("Keep exploring after a violation until every property is decided"),
    )
    .arg(json_arg())
}

pub fn check_command() -> Command {
    let mut cmd = Command::new("check")
        .about("Exhaustively check a model (breadth-first, shortest counterexamples)")
        .subcommand_required(true)
        .subcommand_value_name("MODEL")
        .subcommand(checker_args(
            Command::new(ALL)
                .about("Check every model with no bug flag")
                .arg(
                    Arg::new("release")
                        .long("release")
                        .action(ArgAction::SetTrue)
                        .help("Use every model's release bounds"),
                ),
        ));
    for m in CATALOG {
        let sub = model_args(Command::new(m.name()).about(m.about()), *m);
        cmd = cmd.subcommand(
            checker_args(sub).arg(
                Arg::new("trace-out")
                    .long("trace-out")
                    .value_name("FILE")
                    .value_parser(value_parser!(PathBuf))
                    .help(
                        "Write the counterexample as JSON (for `kcheck replay` and specs/traces/)",
                    ),
            ),
        );
    }
    cmd
}

pub fn explore_command() -> Command {
    let mut cmd = Command::new("explore")
        .about("Browse a model's states in stateright's Explorer web UI")
        .subcommand_required(true)
        .subcommand_value_name("MODEL");
    for m in CATALOG {
        let sub = model_args(Command::new(m.name()).about(m.about()), *m).arg(
            Arg::new("listen")
                .long("listen")
                .value_name("ADDR")
                .default_value("127.0.0.1:3000")
                .value_parser(value_parser!(SocketAddr))
                .help("Address to serve on (loopback by default)"),
        );
        cmd = cmd.subcommand(sub);
    }
    cmd
}

pub fn replay_command() -> Command {
    Command::new("replay")
        .about(
            "Re-run a recorded trace in its model and report the invariant its last state violates",
        )
        .arg(
            Arg::new("trace")
                .required(true)
                .value_name("TRACE.json")
                .value_parser(value_parser!(PathBuf)),
        )
        .arg(json_arg())
        .arg(
            Arg::new("against")
                .long("against")
                .value_name("cluster")
                .help("Replay the trace as a schedule on real broker processes (`cluster`; kraft traces: on three controller processes with held links) instead of in the model"),
        )
        .arg(
            Arg::new("bug")
                .long("bug")
                .action(ArgAction::Append)
                .value_name("NAME")
                .help("With --against cluster: switch on this bug flag of the trace in the processes (none: the correct protocol)"),
        )
        .arg(
            Arg::new("run-dir")
                .long("run-dir")
                .value_name("DIR")
                .value_parser(value_parser!(PathBuf))
                .help("With --against cluster: where the nodes keep data and logs (kept; default: a temporary directory, removed)"),
        )
}

pub fn bench_command() -> Command {
    Command::new("bench")
        .about("Measure every model's state space: unique states, seconds, states/s")
        .arg(Arg::new("models").value_name("MODEL").num_args(0..))
        .arg(
            Arg::new("release")
                .long("release")
                .action(ArgAction::SetTrue)
                .help("Also measure the release bounds"),
        )
        .arg(
            Arg::new("threads")
                .long("threads")
                .value_name("N")
                .value_parser(value_parser!(u16).range(1..=1024)),
        )
        .arg(json_arg())
}

/// clap's own message for an unknown subcommand does not list the models: say it ourselves.
pub fn unknown_model_in(args: &[String]) -> Option<String> {
    let (cmd, model) = (args.get(1)?, args.get(2)?);
    let takes_model = matches!(cmd.as_str(), "check" | "explore");
    if !takes_model || model.starts_with('-') || model == "help" {
        return None;
    }
    if cmd == "check" && model == ALL {
        return None;
    }
    kcheck_models::find(model).err()
}

fn model_config(model: &dyn ModelDef, m: &ArgMatches) -> Result<kcheck_models::Config, String> {
    let bugs: Vec<String> = m
        .get_many::<String>("bug")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let bounds: Vec<(String, u32)> = model
        .bounds()
        .iter()
        .filter_map(|b| m.get_one::<u32>(b.name).map(|v| (b.name.to_string(), *v)))
        .collect();
    model.config_with(&bugs, &bounds, m.get_flag("release"))
}

fn check_options(m: &ArgMatches) -> CheckOptions {
    let mut options = CheckOptions::default();
    if let Some(t) = m.get_one::<u16>("threads") {
        options.threads = *t as usize;
    }
    options.symmetry = !m.get_flag("no-symmetry");
    options.max_states = m.get_one::<u64>("max-states").map(|n| *n as usize);
    if m.get_flag("continue") {
        options.stop = Stop::AllDecided;
    }
    options
}

pub fn run_models(m: &ArgMatches) -> u8 {
    if m.get_flag("json") {
        let models: Vec<serde_json::Value> = CATALOG
            .iter()
            .map(|model| {
                serde_json::json!({
                    "name": model.name(),
                    "about": model.about(),
                    "bounds": model.bounds(),
                    "properties": model.properties().iter().map(|(name, kind, meaning)| {
                        serde_json::json!({"name": name, "kind": kind, "meaning": meaning})
                    }).collect::<Vec<_>>(),
                    "bug_flags": model.bug_flags(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&models).expect("JSON"));
        return EXIT_OK;
    }
    for model in CATALOG {
        println!("{} — {}", model.name(), model.about());
        println!("  bounds (default / release):");
        for b in model.bounds() {
            println!(
                "    --{:<22} {:>3} / {:<3} {}",
                b.name, b.default, b.release, b.meaning
            );
        }
        println!("  properties:");
        for (name, kind, meaning) in model.properties() {
            println!("    {name:<30} {kind:<17} {meaning}");
        }
        println!("  bug flags:");
        for b in model.bug_flags() {
            println!(
                "    {:<24} {} [{}; violates {}]",
                b.name, b.meaning, b.source, b.violates
            );
        }
        println!();
    }
    EXIT_OK
}

/// A live progress line on a terminal; nothing when stderr is not one (CI logs stay clean).
fn progress_bar(quiet: bool, label: &str) -> Option<ProgressBar> {
    if quiet || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {prefix} {msg}").expect("template"));
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    Some(bar)
}

fn progress_message(p: &Progress) -> String {
    format!(
        "{} states, {} unique, depth {}, {:.0} states/s",
        p.states_generated,
        p.unique_states,
        p.depth,
        p.states_per_second()
    )
}

pub(crate) fn run_one(
    model: &dyn ModelDef,
    config: &kcheck_models::Config,
    options: &CheckOptions,
    quiet: bool,
) -> Report {
    let bar = progress_bar(quiet, model.name());
    let report = model.check(config, options, &|p| {
        if let Some(bar) = &bar {
            bar.set_message(progress_message(p));
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    report
}

pub(crate) fn describe_config(config: &kcheck_models::Config) -> String {
    let bounds: Vec<String> = config
        .bounds
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let bugs = if config.bugs.is_empty() {
        "none".to_string()
    } else {
        config.bugs.join(", ")
    };
    format!("bug flags: {bugs}; bounds: {}", bounds.join(" "))
}

pub(crate) fn print_summary(report: &Report) {
    println!(
        "{}: {} unique states ({} generated), max depth {}, {:.2} s, {:.0} states/s{}",
        report.model,
        report.unique_states,
        report.states_generated,
        report.max_depth,
        report.seconds,
        report.states_per_second,
        if report.complete {
            ""
        } else {
            " (search stopped early)"
        }
    );
    for r in &report.results {
        let depth = r
            .trace
            .as_ref()
            .map(|t| format!(" ({} steps)", t.steps.len()))
            .unwrap_or_default();
        println!("  {:<12} {:<30} {}{depth}", r.status, r.name, r.meaning);
    }
}

/// The trace to print and save: the counterexample of the property the bug flags are
/// documented to violate when there is one, else the first failed property's.
fn headline_trace<'a>(model: &dyn ModelDef, report: &'a Report) -> Option<&'a PropertyResult> {
    let expected: Vec<&str> = model
        .bug_flags()
        .iter()
        .filter(|b| report.config.has_bug(b.name))
        .map(|b| b.violates)
        .collect();
    let failed = || {
        report
            .results
            .iter()
            .filter(|r| r.failed && r.trace.is_some())
    };
    failed()
        .find(|r| expected.contains(&r.name))
        .or_else(|| failed().next())
}

pub fn run_check(m: &ArgMatches, quiet: bool) -> u8 {
    let (name, sub) = m.subcommand().expect("clap requires a model");
    let options = check_options(sub);
    if name == ALL {
        return run_check_all(sub, &options, quiet);
    }
    let model = kcheck_models::find(name).expect("clap only accepts known models");
    let config = match model_config(model, sub) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kcheck: {e}");
            return EXIT_USAGE;
        }
    };
    let mut options = options;
    if !sub.get_flag("continue") && !config.bugs.is_empty() {
        // With bug flags, look for the counterexamples they are documented to produce.
        let targets = model
            .bug_flags()
            .iter()
            .filter(|b| config.has_bug(b.name))
            .map(|b| b.violates.to_string())
            .collect();
        options.stop = Stop::AllOf(targets);
    }
    let json = sub.get_flag("json");
    if !json {
        println!(
            "checking {} ({}) with {} threads, symmetry {}",
            model.name(),
            describe_config(&config),
            options.threads,
            if options.symmetry { "on" } else { "off" }
        );
    }
    let report = run_one(model, &config, &options, quiet || json);
    let headline = headline_trace(model, &report);
    if let (Some(path), Some(r)) = (sub.get_one::<PathBuf>("trace-out"), headline) {
        let trace = r.trace.as_ref().expect("headline results carry a trace");
        let text = serde_json::to_string_pretty(trace).expect("JSON") + "\n";
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("kcheck: cannot write {}: {e}", path.display());
            return EXIT_USAGE;
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
    } else {
        print_summary(&report);
        if let Some(r) = headline {
            let trace = r.trace.as_ref().expect("trace");
            println!(
                "\n{} of {} ({} steps):",
                trace.kind,
                r.name,
                trace.steps.len()
            );
            print!("{}", trace.render());
        }
    }
    verdict_code(&report)
}

fn verdict_code(report: &Report) -> u8 {
    if report
        .results
        .iter()
        .any(|r| r.status == "violated" || r.status == "unreachable")
    {
        EXIT_VIOLATION
    } else if report.failed() {
        if !report.complete {
            eprintln!("kcheck: result unknown: the search stopped before covering every state");
        }
        EXIT_USAGE
    } else {
        EXIT_OK
    }
}

fn run_check_all(m: &ArgMatches, options: &CheckOptions, quiet: bool) -> u8 {
    let json = m.get_flag("json");
    let release = m.get_flag("release");
    let mut worst = EXIT_OK;
    let mut reports = Vec::new();
    for model in CATALOG {
        let config = model
            .config_with(&[], &[], release)
            .expect("declared bounds are valid");
        if !json {
            println!("checking {} ({})", model.name(), describe_config(&config));
        }
        let report = run_one(*model, &config, options, quiet || json);
        if !json {
            print_summary(&report);
            if let Some(r) = headline_trace(*model, &report) {
                print!("{}", r.trace.as_ref().expect("trace").render());
            }
            println!();
        }
        worst = worst.max(verdict_code(&report));
        reports.push(report);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&reports).expect("JSON"));
    } else {
        let failed: Vec<&str> = reports
            .iter()
            .filter(|r| r.failed())
            .map(|r| r.model)
            .collect();
        if failed.is_empty() {
            println!("every property of every model holds");
        } else {
            println!("FAILED: {}", failed.join(", "));
        }
    }
    worst
}

pub fn run_explore(m: &ArgMatches) -> u8 {
    let (name, sub) = m.subcommand().expect("clap requires a model");
    let model = kcheck_models::find(name).expect("clap only accepts known models");
    let config = match model_config(model, sub) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kcheck: {e}");
            return EXIT_USAGE;
        }
    };
    let addr = *sub.get_one::<SocketAddr>("listen").expect("has a default");
    println!(
        "Explorer for {} ({}) at http://{addr}/",
        model.name(),
        describe_config(&config)
    );
    match model.explore(&config, addr) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("kcheck: {e}");
            EXIT_USAGE
        }
    }
}

pub fn read_trace(path: &std::path::Path) -> Result<Trace, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a kcheck trace: {e}", path.display()))
}

pub fn run_replay(m: &ArgMatches) -> u8 {
    let path = m.get_one::<PathBuf>("trace").expect("required");
    let trace = match read_trace(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("kcheck: {e}");
            return EXIT_USAGE;
        }
    };
    match m.get_one::<String>("against").map(String::as_str) {
        None => {
            if m.get_many::<String>("bug").is_some() || m.get_one::<PathBuf>("run-dir").is_some() {
                eprintln!("kcheck: --bug and --run-dir are for --against cluster (the model replay uses the trace's own flags)");
                return EXIT_USAGE;
            }
        }
        Some("cluster") => return run_replay_against_cluster(m, path, &trace),
        Some(other) => {
            eprintln!("kcheck: unknown --against {other:?}: the only target is `cluster`");
            return EXIT_USAGE;
        }
    }
    let model = match kcheck_models::find(&trace.model) {
        Ok(model) => model,
        Err(e) => {
            eprintln!("kcheck: {}: {e}", path.display());
            return EXIT_USAGE;
        }
    };
    let report = match model.replay(&trace) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kcheck: {}: replay failed: {e}", path.display());
            return EXIT_USAGE;
        }
    };
    if m.get_flag("json") {
        println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
    } else {
        println!(
            "replaying {} ({}): {} steps, each a legal action",
            model.name(),
            describe_config(&model.config(&trace.bugs, &[]).unwrap_or_else(|_| {
                kcheck_models::Config {
                    bugs: trace.bugs.clone(),
                    bounds: trace.bounds.clone(),
                }
            })),
            report.steps
        );
        print!("{}", report.rendered);
        if report.violated.is_empty() {
            println!("every invariant holds in the last state");
        } else {
            println!("the last state violates: {}", report.violated.join(", "));
        }
    }
    if report.violated.is_empty() {
        EXIT_OK
    } else {
        EXIT_VIOLATION
    }
}

/// `kcheck replay TRACE --against cluster [--bug NAME]...` (issue 9): the trace as a schedule
/// on real broker processes; exit 1 when the model's invariant is violated there, 0 when no
/// anomaly shows without bug flags, 2 when the trace cannot be replayed or a bug flag's
/// violation did not show.
fn run_replay_against_cluster(m: &ArgMatches, path: &std::path::Path, trace: &Trace) -> u8 {
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kcheck: cannot find the kcheck executable to start brokers: {e}");
            return EXIT_USAGE;
        }
    };
    let (run_dir, temporary) = match m.get_one::<PathBuf>("run-dir") {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("kcheck-replay-{}", std::process::id())),
            true,
        ),
    };
    let opts = kcheck_harness::replay_cluster::ReplayOptions {
        program,
        run_dir: run_dir.clone(),
        bugs: m
            .get_many::<String>("bug")
            .map(|v| v.cloned().collect())
            .unwrap_or_default(),
        verbose: false,
    };
    let result = kcheck_harness::replay_cluster::replay(trace, &opts);
    if temporary {
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    match result {
        Ok(report) => {
            if m.get_flag("json") {
                println!("{}", serde_json::to_string_pretty(&report).expect("JSON"));
            } else {
                print!("{}", report.text());
            }
            report.exit_code()
        }
        Err(e) => {
            eprintln!(
                "kcheck: {}: cannot replay against a cluster: {e}",
                path.display()
            );
            EXIT_USAGE
        }
    }
}

pub fn run_bench(m: &ArgMatches, quiet: bool) -> u8 {
    let names: Vec<String> = m
        .get_many::<String>("models")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let models: Vec<&dyn ModelDef> = if names.is_empty() {
        CATALOG.to_vec()
    } else {
        match names.iter().map(|n| kcheck_models::find(n)).collect() {
            Ok(models) => models,
            Err(e) => {
                eprintln!("kcheck: {e}");
                return EXIT_USAGE;
            }
        }
    };
    let mut options = CheckOptions {
        stop: Stop::Never,
        ..CheckOptions::default()
    };
    if let Some(t) = m.get_one::<u16>("threads") {
        options.threads = *t as usize;
    }
    let json = m.get_flag("json");
    let mut rows = Vec::new();
    let levels: &[bool] = if m.get_flag("release") {
        &[false, true]
    } else {
        &[false]
    };
    if !json {
        println!(
            "{:<18} {:<8} {:>12} {:>12} {:>6} {:>9} {:>12}  bounds",
            "model", "bounds", "unique", "generated", "depth", "seconds", "states/s"
        );
    }
    for model in models {
        for &release in levels {
            let config = model
                .config_with(&[], &[], release)
                .expect("declared bounds are valid");
            let report = run_one(model, &config, &options, quiet || json);
            let level = if release { "release" } else { "default" };
            if !json {
                let bounds: Vec<String> = config
                    .bounds
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!(
                    "{:<18} {:<8} {:>12} {:>12} {:>6} {:>9.2} {:>12.0}  {}",
                    model.name(),
                    level,
                    report.unique_states,
                    report.states_generated,
                    report.max_depth,
                    report.seconds,
                    report.states_per_second,
                    bounds.join(" ")
                );
            }
            rows.push(serde_json::json!({
                "model": model.name(), "bounds_level": level, "bounds": config.bounds,
                "unique_states": report.unique_states, "states_generated": report.states_generated,
                "max_depth": report.max_depth, "seconds": report.seconds,
                "states_per_second": report.states_per_second, "threads": options.threads,
            }));
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows).expect("JSON"));
    }
    EXIT_OK
}
