//! `kcheck gate`: the release gate. Checks every model at its release bounds (and, once the
//! harness can start clusters, a fixed set of seeded harness runs), writes JUnit XML for the
//! CI system to show, and exits non-zero on any violation or undecided result.
//!
//! One JUnit test suite per model, one test case per named property: `holds` and `reached`
//! pass, `violated` and `unreachable` fail (with the counterexample as the failure text), and
//! `unknown` (the search was cut short) is an error, never a pass.

use crate::models_cli::{describe_config, print_summary, run_one};
use crate::{EXIT_OK, EXIT_USAGE, EXIT_VIOLATION};
use clap::{value_parser, Arg, ArgAction, ArgMatches, Command};
use kcheck_models::engine::CheckOptions;
use kcheck_models::{find, ModelDef, Report, CATALOG};
use quick_junit::{NonSuccessKind, TestCase, TestCaseStatus, TestSuite};
use std::path::PathBuf;
use std::time::Duration;

pub fn gate_command() -> Command {
    Command::new("gate")
        .about("Release gate: every model at its release bounds; JUnit XML; non-zero exit on any violation or unknown")
        .arg(
            Arg::new("junit")
                .long("junit")
                .value_name("FILE")
                .default_value("kcheck-gate.xml")
                .value_parser(value_parser!(PathBuf))
                .help("Where to write the JUnit XML report"),
        )
        .arg(
            Arg::new("bounds")
                .long("bounds")
                .value_name("release|default")
                .default_value("release")
                .value_parser(["release", "default"])
                .help("Which bounds to check at (default bounds: a quick pre-merge gate)"),
        )
        .arg(
            Arg::new("model")
                .long("model")
                .value_name("NAME")
                .action(ArgAction::Append)
                .help("Gate only these models (default: every model)"),
        )
        .arg(
            Arg::new("bug")
                .long("bug")
                .value_name("MODEL:FLAG")
                .action(ArgAction::Append)
                .help("Switch a bug flag on in one model (to see the gate fail)"),
        )
        .arg(
            Arg::new("threads")
                .long("threads")
                .value_name("N")
                .value_parser(value_parser!(u16).range(1..=1024))
                .help("Worker threads per model check (default: all cores)"),
        )
}

/// One gated check: a model with the bug flags asked for it.
struct Planned {
    model: &'static dyn ModelDef,
    bugs: Vec<String>,
}

fn plan(m: &ArgMatches) -> Result<Vec<Planned>, String> {
    let names: Vec<String> = m
        .get_many::<String>("model")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let models: Vec<&'static dyn ModelDef> = if names.is_empty() {
        CATALOG.to_vec()
    } else {
        names.iter().map(|n| find(n)).collect::<Result<_, _>>()?
    };
    let mut planned: Vec<Planned> = models
        .into_iter()
        .map(|model| Planned {
            model,
            bugs: Vec::new(),
        })
        .collect();
    for spec in m.get_many::<String>("bug").into_iter().flatten() {
        let (model, flag) = spec.split_once(':').ok_or_else(|| {
            format!("--bug takes MODEL:FLAG (e.g. replication:truncate-to-hw), got '{spec}'")
        })?;
        let target = planned
            .iter_mut()
            .find(|p| p.model.name() == model)
            .ok_or_else(|| match find(model) {
                Ok(_) => format!("--bug {spec}: model '{model}' is not gated in this run"),
                Err(e) => e,
            })?;
        target.bugs.push(flag.to_string());
    }
    Ok(planned)
}

fn test_case(report: &Report, result: &kcheck_models::catalog::PropertyResult) -> TestCase {
    let status = match result.status {
        "holds" | "reached" => TestCaseStatus::success(),
        // The check stops at its first violation (TLC's rule); what it left undecided then is
        // not an error of its own.
        "unknown" if report.results.iter().any(|r| r.status == "violated") => {
            let mut s = TestCaseStatus::skipped();
            s.set_message("not decided: the check stopped at the first violation");
            s
        }
        "unknown" => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_message("undecided: the search stopped before covering every state");
            s
        }
        other => {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(format!("{other}: {}", result.meaning));
            s.set_type(other.to_string());
            if let Some(trace) = &result.trace {
                s.set_description(trace.render());
            }
            s
        }
    };
    let mut case = TestCase::new(result.name, status);
    case.set_classname(format!("kcheck.models.{}", report.model));
    case
}

fn suite(report: &Report) -> TestSuite {
    let mut suite = TestSuite::new(format!("model {}", report.model));
    suite.set_time(Duration::from_secs_f64(report.seconds));
    suite.add_property(("bounds", describe_config(&report.config).as_str()));
    suite.add_property(("unique_states", report.unique_states.to_string().as_str()));
    suite.add_property((
        "states_per_second",
        format!("{:.0}", report.states_per_second).as_str(),
    ));
    suite.add_test_cases(report.results.iter().map(|r| test_case(report, r)));
    suite
}

/// The gate's verdict over every report: any failure is a violation unless it is only
/// undecided, which is unknown (2).
fn verdict(reports: &[Report]) -> u8 {
    let results = reports.iter().flat_map(|r| &r.results);
    if results
        .clone()
        .any(|r| r.status == "violated" || r.status == "unreachable")
    {
        EXIT_VIOLATION
    } else if results.clone().any(|r| r.failed) {
        EXIT_USAGE
    } else {
        EXIT_OK
    }
}

pub fn run_gate(m: &ArgMatches, quiet: bool) -> u8 {
    let planned = match plan(m) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kcheck gate: {e}");
            return EXIT_USAGE;
        }
    };
    let release = m.get_one::<String>("bounds").map(String::as_str) == Some("release");
    let mut options = CheckOptions::default();
    if let Some(t) = m.get_one::<u16>("threads") {
        options.threads = *t as usize;
    }
    let mut reports = Vec::new();
    for p in &planned {
        let config = match p.model.config_with(&p.bugs, &[], release) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("kcheck gate: {e}");
                return EXIT_USAGE;
            }
        };
        println!("gate: {} ({})", p.model.name(), describe_config(&config));
        let report = run_one(p.model, &config, &options, quiet);
        print_summary(&report);
        reports.push(report);
    }
    let mut junit = quick_junit::Report::new("kcheck gate");
    junit.add_test_suites(reports.iter().map(suite));
    let path = m.get_one::<PathBuf>("junit").expect("has a default");
    let written = std::fs::File::create(path)
        .map_err(|e| e.to_string())
        .and_then(|f| junit.serialize(f).map_err(|e| e.to_string()));
    if let Err(e) = written {
        eprintln!("kcheck gate: cannot write {}: {e}", path.display());
        return EXIT_USAGE;
    }
    let code = verdict(&reports);
    let listed = |wanted: fn(&str) -> bool| -> Vec<String> {
        reports
            .iter()
            .flat_map(|r| {
                r.results
                    .iter()
                    .filter(move |p| p.failed && wanted(p.status))
                    .map(move |p| format!("{}/{} {}", r.model, p.name, p.status))
            })
            .collect()
    };
    let failed = match code {
        EXIT_VIOLATION => listed(|s| s != "unknown"),
        _ => listed(|s| s == "unknown"),
    };
    println!("JUnit report: {}", path.display());
    println!("harness runs: none yet (they join the gate with `kcheck test`, issue 8)");
    match code {
        EXIT_OK => println!("gate PASSED: every property of every gated model holds"),
        EXIT_VIOLATION => println!("gate FAILED: {}", failed.join(", ")),
        _ => println!("gate UNKNOWN: {}", failed.join(", ")),
    }
    code
}
