//! `kcheck test`: one Jepsen-style run (see [`crate::run`]), then the same checks as
//! `kcheck analyze`. Exit 0 valid, 1 anomaly found, 2 unknown or harness failure; the last line
//! says which.

use crate::analyze::Options;
use crate::cli::{check_and_write, print_summary};
use crate::run::{self, NemesisKind, TestConfig, Workload};
use crate::Verdict;
use clap::{value_parser, Arg, ArgAction, ArgMatches, Command};
use std::path::PathBuf;
use std::time::Duration;

const EXIT_UNKNOWN: u8 = 2;

pub fn test_command() -> Command {
    let num = |name: &'static str, default: &'static str, help: &'static str| {
        Arg::new(name)
            .long(name)
            .value_name("N")
            .default_value(default)
            .help(help)
    };
    Command::new("test")
        .about("Run a Jepsen-style test: start brokers, run a workload under faults, check the history")
        .arg(
            Arg::new("system")
                .long("system")
                .value_name("kafka|zookeeper")
                .default_value("kafka")
                .value_parser(["kafka", "zookeeper"])
                .help("kafka: kcheck's brokers; zookeeper: a real Apache ZooKeeper 3.8 ensemble (Debian's zookeeper)"),
        )
        .arg(num("brokers", "1", "Broker processes").value_parser(value_parser!(usize)))
        .arg(num("controllers", "0", "KRaft controller processes").value_parser(value_parser!(usize)))
        .arg(
            Arg::new("workload")
                .long("workload")
                .value_name("log|queue|register|election")
                .default_value("log")
                .value_parser(["log", "queue", "register", "election"])
                .help("kafka: log (every partition a linearizable log) or queue (Jepsen's Kafka queue); \
                       zookeeper: register (CAS register on znodes, the default) or election (Kafka's controller election)"),
        )
        .arg(
            Arg::new("nemesis")
                .long("nemesis")
                .value_name("LIST")
                .default_value("kill")
                .help("Faults, comma-separated: kill, pause, partition, clock, lose-unsynced, all, none"),
        )
        .arg(num("time-limit", "30", "Seconds of workload").value_parser(value_parser!(f64)))
        .arg(num("rate", "100", "Client operations per second, all workers").value_parser(value_parser!(f64)))
        .arg(num("concurrency", "5", "Client workers").value_parser(value_parser!(usize)))
        .arg(num("seed", "0", "Schedule seed (same seed, same schedule)").value_parser(value_parser!(u64)))
        .arg(num("partitions", "2", "Partitions of the test topic").value_parser(value_parser!(i32)))
        .arg(
            num("nemesis-interval", "5", "Seconds each fault lasts, and between faults")
                .value_parser(value_parser!(f64)),
        )
        .arg(
            Arg::new("flush")
                .long("flush")
                .value_name("always|never|interval-ms N")
                .default_value("always")
                .help("The brokers' --flush policy"),
        )
        .arg(
            Arg::new("bug")
                .long("bug")
                .value_name("NAME")
                .action(ArgAction::Append)
                .help("Switch a bug flag on in the brokers"),
        )
        .arg(
            Arg::new("store")
                .long("store")
                .value_name("DIR")
                .default_value("store")
                .value_parser(value_parser!(PathBuf))
                .help("Where run folders are written"),
        )
}

pub(crate) fn secs(m: &ArgMatches, name: &str) -> Result<Duration, String> {
    let s = *m.get_one::<f64>(name).expect("defaulted");
    if s.is_finite() && s > 0.0 && s < 1e6 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(format!(
            "--{name} must be a positive number of seconds, got {s}"
        ))
    }
}

fn config(m: &ArgMatches) -> Result<TestConfig, String> {
    Ok(TestConfig {
        brokers: *m.get_one("brokers").expect("defaulted"),
        controllers: *m.get_one("controllers").expect("defaulted"),
        workload: match m.get_one::<String>("workload").map(String::as_str) {
            Some("queue") => Workload::Queue,
            _ => Workload::Log,
        },
        nemeses: NemesisKind::parse_list(m.get_one::<String>("nemesis").expect("defaulted"))?,
        time_limit: secs(m, "time-limit")?,
        rate: *m.get_one("rate").expect("defaulted"),
        concurrency: *m.get_one("concurrency").expect("defaulted"),
        seed: *m.get_one("seed").expect("defaulted"),
        bugs: m
            .get_many::<String>("bug")
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
        store: m.get_one::<PathBuf>("store").expect("defaulted").clone(),
        flush: m.get_one::<String>("flush").expect("defaulted").clone(),
        partitions: *m.get_one("partitions").expect("defaulted"),
        nemesis_interval: secs(m, "nemesis-interval")?,
        program: std::env::current_exe().map_err(|e| format!("cannot find kcheck itself: {e}"))?,
        client_timeout: Duration::from_secs(3),
        final_read_limit: Duration::from_secs(30),
    })
}

pub fn run_test(m: &ArgMatches) -> u8 {
    if m.get_one::<String>("system").map(String::as_str) == Some("zookeeper") {
        return crate::zookeeper::run::run_cli(m);
    }
    if let Some(w @ ("register" | "election")) = m.get_one::<String>("workload").map(String::as_str) {
        eprintln!("kcheck test: bad arguments: --workload {w} is a ZooKeeper workload: add --system zookeeper");
        return EXIT_UNKNOWN;
    }
    let config = match config(m) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kcheck test: bad arguments: {e}");
            return EXIT_UNKNOWN;
        }
    };
    let outcome = match run::run(&config) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("kcheck test: UNKNOWN: {e}");
            return EXIT_UNKNOWN;
        }
    };
    println!("run folder: {}", outcome.dir.display());
    println!("faults injected: {}", outcome.faults.len());
    for f in &outcome.faults {
        println!("  {f}");
    }
    let file = outcome.dir.join("history.jsonl");
    let opts = Options {
        time_limit: Duration::from_secs(60),
        ..Options::default()
    };
    let (results, _, out) = match check_and_write(&file, &outcome.dir, &opts, true) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kcheck test: UNKNOWN: harness failure: {e}");
            return EXIT_UNKNOWN;
        }
    };
    print_summary(&file, &out, &results);
    let line = match results.verdict {
        Verdict::Valid => "VALID: no anomaly found",
        Verdict::Invalid => "INVALID: an anomaly was found",
        Verdict::Unknown => "UNKNOWN: the checkers could not decide",
    };
    println!("kcheck test: {line}: {}", results.summary);
    results.verdict.exit_code()
}
