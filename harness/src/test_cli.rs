//! `kcheck test`: one Jepsen-style run (see [`crate::run`]), then the same checks as
//! `kcheck analyze`. Exit 0 valid, 1 anomaly found, 2 unknown or harness failure; the last line
//! says which.

use crate::analyze::Options;
use crate::cli::{check_and_write, print_summary};
use crate::run::{self, Metadata, NemesisKind, TestConfig, Workload};
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
        .arg(num("brokers", "1", "Broker processes (--metadata zookeeper: 3 unless given)").value_parser(value_parser!(usize)))
        .arg(num("controllers", "0", "KRaft controller processes").value_parser(value_parser!(usize)))
        .arg(
            Arg::new("metadata")
                .long("metadata")
                .value_name("kraft|zookeeper")
                .default_value("kraft")
                .value_parser(["kraft", "zookeeper"])
                .help("Where the brokers keep their metadata: a KRaft quorum (--controllers), or a ZooKeeper ensemble \
                       (--zookeeper-servers) and a controller elected through /controller"),
        )
        .arg(
            num("zookeeper-servers", "3", "ZooKeeper servers of a --metadata zookeeper run")
                .value_parser(value_parser!(usize)),
        )
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
                .help("Faults, comma-separated: kill, pause, partition, clock, lose-unsynced, \
                       reassign (move a partition to other brokers; needs --brokers 4), \
                       quorum (aimed at the KRaft controller quorum's leader; needs --controllers 3), \
                       delay, loss (inter-node links; --net proxy), all, none; \
                       all includes reassign from --brokers 4 on and quorum from --controllers 3 on; \
                       --metadata zookeeper adds zk-kill, zk-partition, zombie, expire-session, zombie-failover"),
        )
        .arg(
            Arg::new("net")
                .long("net")
                .value_name("proxy|netns")
                .value_parser(["proxy", "netns"])
                .help("How network faults reach the links between nodes: proxy (one TCP proxy per \
                       directed link, no root; partitions, delay, loss) or netns (network namespaces \
                       and nftables, root; partitions). Default: netns as root unless delay or loss \
                       is asked for, proxy otherwise"),
        )
        .arg(num("time-limit", "30", "Seconds of workload").value_parser(value_parser!(f64)))
        .arg(num("rate", "100", "Client operations per second, all workers").value_parser(value_parser!(f64)))
        .arg(num("concurrency", "5", "Client workers").value_parser(value_parser!(usize)))
        .arg(num("seed", "0", "Schedule seed (same seed, same schedule)").value_parser(value_parser!(u64)))
        .arg(num("partitions", "2", "Partitions of the test topic").value_parser(value_parser!(i32)))
        .arg(
            num("nemesis-interval", "2", "Seconds each fault lasts, and between faults")
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
                .help("Switch a bug flag on in the brokers (without --brokers/--controllers: 3 controllers and 3 brokers, \
                       or the 4 or 5 a reassignment flag needs to act)"),
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

/// `--brokers`/`--controllers`, or, when `--bug` names a flag of the replicated cluster and
/// neither is given, the cluster the detection table uses: 3 controllers and 3 brokers (4 or
/// 5 for a reassignment flag, [`default_brokers_for`])
/// (bug flags are refused for the standalone broker).
fn node_counts(m: &ArgMatches) -> (usize, usize) {
    use clap::parser::ValueSource;
    let given = |n: &str| m.value_source(n) == Some(ValueSource::CommandLine);
    if metadata(m) == Metadata::Zookeeper {
        let brokers = if given("brokers") {
            *m.get_one("brokers").expect("defaulted")
        } else {
            3
        };
        return (brokers, *m.get_one("controllers").expect("defaulted"));
    }
    if let Some(bugs) = m.get_many::<String>("bug") {
        if !given("brokers") && !given("controllers") {
            return (default_brokers_for(bugs.map(String::as_str)), 3);
        }
    }
    (
        *m.get_one("brokers").expect("defaulted"),
        *m.get_one("controllers").expect("defaulted"),
    )
}

/// The brokers of the cluster a `--bug` run gets by default: three, or as many as the flags
/// need to act at all (a reassignment flag needs brokers outside the replica set, see
/// `ControllerBug::min_brokers`), so that `kcheck test --bug NAME --nemesis all` can find
/// every flag. Unknown names are left to the validation, which names them.
pub fn default_brokers_for<'a>(bugs: impl Iterator<Item = &'a str>) -> usize {
    use kcheck_reference::controller::ControllerBug;
    bugs.filter_map(|b| ControllerBug::parse(b).ok())
        .map(ControllerBug::min_brokers)
        .fold(3, usize::max)
}

/// `--nemesis`: `all` is every fault this machine can inject (a notice names what it leaves
/// out: lose-unsynced needs FUSE, clock libfaketime; partitions go through the proxies without
/// root); a fault named
/// explicitly is refused with the reason when it cannot run.
fn nemeses(
    list: &str,
    metadata: Metadata,
    brokers: usize,
    controllers: usize,
) -> Result<Vec<NemesisKind>, String> {
    let mut kinds = NemesisKind::parse_list(list)?;
    if !list.split(',').any(|p| p.trim() == "all") {
        return Ok(kinds);
    }
    let named: Vec<&str> = list.split(',').map(str::trim).collect();
    let (mut available, mut missing) = available_nemeses();
    if metadata == Metadata::Zookeeper {
        // The ZooKeeper side's faults; its brokers do not run in network namespaces.
        kinds.extend(NemesisKind::ZOOKEEPER_MODE);
        available.extend(NemesisKind::ZOOKEEPER_MODE);
        if available.contains(&NemesisKind::Partition) {
            available.retain(|k| *k != NemesisKind::Partition);
            missing.push(
                "partition: a ZooKeeper-mode run cuts the network through proxies (zk-partition, expire-session)"
                    .into(),
            );
        }
    }
    if metadata == Metadata::Kraft {
        if controllers >= 3 {
            if !kinds.contains(&NemesisKind::Quorum) {
                kinds.push(NemesisKind::Quorum);
            }
            available.push(NemesisKind::Quorum);
        } else if controllers > 0 {
            missing.push(
                "quorum: it needs a controller quorum of three (--controllers 3)".to_string(),
            );
        }
        if brokers >= run::REASSIGN_MIN_BROKERS {
            if !kinds.contains(&NemesisKind::Reassign) {
                kinds.push(NemesisKind::Reassign);
            }
            available.push(NemesisKind::Reassign);
        } else {
            missing.push(format!(
                "reassign: it needs a broker outside the replica set (--brokers {})",
                run::REASSIGN_MIN_BROKERS
            ));
        }
    }
    for m in &missing {
        eprintln!("kcheck test: --nemesis all leaves out {m}");
    }
    Ok(kinds
        .into_iter()
        .filter(|k| available.contains(k) || named.contains(&k.name()))
        .collect())
}

fn metadata(m: &ArgMatches) -> Metadata {
    match m.get_one::<String>("metadata").map(String::as_str) {
        Some("zookeeper") => Metadata::Zookeeper,
        _ => Metadata::Kraft,
    }
}

fn config(m: &ArgMatches) -> Result<TestConfig, String> {
    let (brokers, controllers) = node_counts(m);
    let nemeses = nemeses(
        m.get_one::<String>("nemesis").expect("defaulted"),
        metadata(m),
        brokers,
        controllers,
    )?;
    let net = match m.get_one::<String>("net").map(String::as_str) {
        Some("netns") => run::Net::Netns,
        Some(_) => run::Net::Proxy,
        None => run::Net::default_for(&nemeses),
    };
    Ok(TestConfig {
        brokers,
        controllers,
        metadata: metadata(m),
        zookeeper_servers: *m.get_one("zookeeper-servers").expect("defaulted"),
        workload: match m.get_one::<String>("workload").map(String::as_str) {
            Some("queue") => Workload::Queue,
            _ => Workload::Log,
        },
        nemeses,
        net,
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

/// Runs `config` and checks its history as `kcheck analyze --edn` would (results.json,
/// report.html, plots in the run folder). Shared by `kcheck test` and `kcheck gate`.
pub fn run_and_check(
    config: &TestConfig,
) -> Result<(run::RunOutcome, crate::analyze::Results), String> {
    let outcome = run::run(config)?;
    let file = outcome.dir.join("history.jsonl");
    let opts = Options {
        time_limit: Duration::from_secs(60),
        ..Options::default()
    };
    let (results, _, _) = check_and_write(&file, &outcome.dir, &opts, true)
        .map_err(|e| format!("harness failure: {e}"))?;
    Ok((outcome, results))
}

/// The kinds of `--nemesis all` this machine can inject: partitions always (network namespaces
/// as root, the link proxies otherwise), lose-unsynced needs FUSE, clock libfaketime. Returns
/// them and why each other is out.
pub fn available_nemeses() -> (Vec<NemesisKind>, Vec<String>) {
    let mut kinds = Vec::new();
    let mut missing = Vec::new();
    for kind in NemesisKind::ALL {
        let check = match kind {
            // The proxies partition without root (`--net proxy`).
            NemesisKind::Partition => Ok(()),
            NemesisKind::LoseUnsynced => crate::lazyfs::available(),
            NemesisKind::Clock => crate::nemesis::clock::available(),
            NemesisKind::Kill | NemesisKind::Pause => Ok(()),
            // Not in `ALL`: a ZooKeeper-mode run adds them.
            NemesisKind::ZkKill
            | NemesisKind::ZkPartition
            | NemesisKind::Zombie
            | NemesisKind::ExpireSession
            | NemesisKind::ZombieFailover => continue,
            // Not in `ALL`: `nemeses` adds it for a KRaft cluster of four brokers or more.
            NemesisKind::Reassign => continue,
            // Not in `ALL` (it keeps the schedules of `all` runs as they were measured).
            NemesisKind::Delay | NemesisKind::Loss => continue,
            // Not in `ALL`: `nemeses` adds it for a KRaft cluster of three controllers or more.
            NemesisKind::Quorum => continue,
        };
        match check {
            Ok(()) => kinds.push(kind),
            Err(e) => missing.push(format!("{}: {e}", kind.name())),
        }
    }
    (kinds, missing)
}

/// A run configuration with every default of `kcheck test` (3 brokers, 3 controllers).
pub fn default_config(
    workload: Workload,
    nemeses: Vec<NemesisKind>,
    seed: u64,
    time_limit: Duration,
    bugs: Vec<String>,
    store: PathBuf,
) -> Result<TestConfig, String> {
    let m = test_command()
        .try_get_matches_from(["test", "--brokers", "3", "--controllers", "3"])
        .map_err(|e| e.to_string())?;
    let mut c = config(&m)?;
    c.workload = workload;
    c.nemeses = nemeses;
    c.seed = seed;
    c.time_limit = time_limit;
    c.bugs = bugs;
    c.store = store;
    Ok(c)
}

pub fn run_test(m: &ArgMatches) -> u8 {
    if m.get_one::<String>("system").map(String::as_str) == Some("zookeeper") {
        if m.value_source("metadata") == Some(clap::parser::ValueSource::CommandLine) {
            eprintln!("kcheck test: bad arguments: --metadata is for --system kafka (the brokers' metadata); --system zookeeper tests a bare ZooKeeper ensemble");
            return EXIT_UNKNOWN;
        }
        return crate::zookeeper::run::run_cli(m);
    }
    if let Some(w @ ("register" | "election")) = m.get_one::<String>("workload").map(String::as_str)
    {
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
    let conformance = if config.controllers > 0 {
        conformance(&outcome.dir, &out)
    } else {
        Verdict::Valid
    };
    let verdict = Verdict::combine([results.verdict, conformance]);
    if verdict != Verdict::Valid {
        if let Some(e) = record_first_evidence(&file, &out, outcome.start_mono_ns) {
            println!(
                "first evidence: {:.1} s into the workload ({})",
                e.seconds, e.what
            );
        }
    }
    let line = match results.verdict {
        Verdict::Valid => "VALID: no anomaly found",
        Verdict::Invalid => "INVALID: an anomaly was found",
        Verdict::Unknown => "UNKNOWN: the checkers could not decide",
    };
    println!("kcheck test: {line}: {}", results.summary);
    if conformance == Verdict::Invalid {
        println!("kcheck test: NON-CONFORMING: a node took a step no model action explains");
    }
    verdict.exit_code()
}

/// The run's earliest evidence ([`crate::evidence`]), also written to `results.json` under
/// `first_evidence`. `None` when nothing names an operation or an event, or a file is
/// unreadable (the verdict stands either way).
fn record_first_evidence(
    history: &std::path::Path,
    results_json: &std::path::Path,
    start_mono_ns: u64,
) -> Option<crate::evidence::Evidence> {
    let h = crate::history::History::read_path(history).ok()?;
    let mut r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(results_json).ok()?).ok()?;
    let e = crate::evidence::first_evidence(&r, &h, Some(start_mono_ns))?;
    r.as_object_mut()?
        .insert("first_evidence".into(), serde_json::to_value(&e).ok()?);
    let text = serde_json::to_string_pretty(&r).ok()?;
    let _ = std::fs::write(results_json, format!("{text}\n"));
    Some(e)
}

/// Trace validation of a cluster run (`kcheck conform`): prints the report, adds it to
/// `results.json` under `conformance` and writes `conformance.json`. A run whose traces
/// cannot be read is unknown, never silently conforming.
fn conformance(dir: &std::path::Path, results_json: &std::path::Path) -> Verdict {
    let report = match crate::conform::conform_run(dir) {
        Ok(r) => r,
        Err(e) => {
            println!("conformance: UNKNOWN: {e}");
            return Verdict::Unknown;
        }
    };
    print!("{}", report.text());
    let value = serde_json::to_value(&report).expect("report serializes");
    let _ = std::fs::write(
        dir.join("conformance.json"),
        format!("{}\n", serde_json::to_string_pretty(&value).expect("json")),
    );
    let merged = std::fs::read_to_string(results_json)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|mut r| {
            r.as_object_mut()?.insert("conformance".into(), value);
            serde_json::to_string_pretty(&r).ok()
        });
    if let Some(text) = merged {
        let _ = std::fs::write(results_json, format!("{text}\n"));
    }
    if report.conforms() {
        Verdict::Valid
    } else {
        Verdict::Invalid
    }
}

#[cfg(test)]
mod tests {
    use super::default_brokers_for;

    #[test]
    fn a_bug_run_gets_the_brokers_its_flag_needs_to_act() {
        assert_eq!(default_brokers_for(["unclean-election"].into_iter()), 3);
        assert_eq!(default_brokers_for(["truncate-to-hw"].into_iter()), 3);
        assert_eq!(
            default_brokers_for(["remove-before-caught-up"].into_iter()),
            4
        );
        assert_eq!(
            default_brokers_for(["truncate-to-hw", "cancel-keeps-adding-in-isr"].into_iter()),
            5
        );
        assert_eq!(default_brokers_for(["no-such-flag"].into_iter()), 3);
    }
}
