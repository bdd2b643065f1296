//! `kcheck compare controller-failover`: ZooKeeper mode against KRaft mode, measured in the
//! models (see `specs/zookeeper-vs-kraft.md`).

use crate::{EXIT_OK, EXIT_USAGE};
use clap::{value_parser, Arg, ArgAction, ArgMatches, Command};
use kcheck_models::compare::Measured;
use kcheck_models::{kraft_failover, zk_controller};

const SCENARIOS: &[&str] = &["controller-failover"];

pub fn compare_command() -> Command {
    Command::new("compare")
        .about("Measure a scenario in the ZooKeeper-mode and KRaft-mode models side by side")
        .arg(
            Arg::new("scenario")
                .required(true)
                .value_name("SCENARIO")
                .help("controller-failover"),
        )
        .arg(
            Arg::new("brokers")
                .long("brokers")
                .value_name("N")
                .value_parser(value_parser!(u32))
                .help("Brokers for the failover table (2..=4, default 2; the kraft model holds at most 2)"),
        )
        .arg(
            Arg::new("json")
                .long("json")
                .action(ArgAction::SetTrue)
                .help("Machine-readable JSON output"),
        )
        .arg(
            Arg::new("real")
                .long("real")
                .action(ArgAction::SetTrue)
                .help("Also measure real clusters of kcheck broker processes (ZooKeeper ensemble or KRaft quorum) on 127.0.0.1: kill -9 of the active controller and the partition leader, time until every live broker names the new leader"),
        )
        .arg(
            Arg::new("runs")
                .long("runs")
                .value_name("N")
                .value_parser(value_parser!(u32))
                .help("Failovers per mode with --real (1..=20, default 3)"),
        )
        .arg(
            Arg::new("data-dir")
                .long("data-dir")
                .default_value("target/compare-real")
                .help("Where --real runs its clusters (wiped first)"),
        )
}

/// One mode's row: `None` when the model cannot reach the goal (or is not wired yet).
struct Row {
    mode: &'static str,
    measured: Option<Measured>,
    note: String,
}

fn failover_rows(brokers: usize) -> Vec<Row> {
    vec![
        Row {
            mode: "zookeeper",
            measured: zk_controller::controller_failover(brokers),
            note: format!(
                "zk-controller brokers={brokers} expiries=1 epochs=2 records=0 isr-changes=0: \
                 b0 hosts the controller and the leader; its session expires"
            ),
        },
        Row {
            mode: "kraft",
            measured: (brokers <= kraft_failover::MAX_BROKERS)
                .then(|| kraft_failover::controller_failover(brokers))
                .flatten(),
            note: if brokers <= kraft_failover::MAX_BROKERS {
                format!(
                    "kraft voters=3 brokers={brokers} epochs=3 records=8 crashes=2 network={} \
                     duplicates=0: the active controller and the partition leader's broker fail",
                    kcheck_models::kraft::MAX_NETWORK
                )
            } else {
                format!(
                    "not measured: the kraft model holds at most {} brokers",
                    kraft_failover::MAX_BROKERS
                )
            },
        },
    ]
}

fn leader_change_rows() -> Vec<(usize, Option<Measured>, Option<Measured>)> {
    (1..=4)
        .map(|n| {
            let kraft = (n <= kraft_failover::MAX_BROKERS)
                .then(|| kraft_failover::leader_change(n))
                .flatten();
            (n, zk_controller::leader_change(n), kraft)
        })
        .collect()
}

fn cell(m: &Option<Measured>, f: fn(&Measured) -> usize) -> String {
    m.as_ref().map_or("-".to_string(), |m| f(m).to_string())
}

pub fn run_compare(m: &ArgMatches) -> u8 {
    let scenario = m.get_one::<String>("scenario").expect("required");
    if !SCENARIOS.contains(&scenario.as_str()) {
        eprintln!(
            "kcheck: unknown scenario '{scenario}' (known: {})",
            SCENARIOS.join(", ")
        );
        return EXIT_USAGE;
    }
    let brokers = *m.get_one::<u32>("brokers").unwrap_or(&2);
    if !(2..=4).contains(&brokers) {
        eprintln!("kcheck: --brokers must be between 2 and 4 (got {brokers})");
        return EXIT_USAGE;
    }
    let runs = *m.get_one::<u32>("runs").unwrap_or(&3);
    if !(1..=20).contains(&runs) {
        eprintln!("kcheck: --runs must be between 1 and 20 (got {runs})");
        return EXIT_USAGE;
    }
    if m.get_one::<u32>("runs").is_some() && !m.get_flag("real") {
        eprintln!("kcheck: --runs counts real failovers: add --real");
        return EXIT_USAGE;
    }
    let real = if m.get_flag("real") {
        let dir = std::path::PathBuf::from(m.get_one::<String>("data-dir").expect("default"));
        match crate::real_failover::measure_both(&dir, brokers as usize, runs as usize) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("kcheck compare --real: {e:#}");
                return crate::EXIT_VIOLATION;
            }
        }
    } else {
        None
    };
    let rows = failover_rows(brokers as usize);
    let changes = leader_change_rows();
    if m.get_flag("json") {
        let json = serde_json::json!({
            "scenario": scenario,
            "brokers": brokers,
            "failover": rows.iter().map(|r| serde_json::json!({
                "mode": r.mode,
                "steps": r.measured.as_ref().map(|x| x.steps),
                "messages": r.measured.as_ref().map(|x| x.messages),
                "unique_states": r.measured.as_ref().map(|x| x.unique_states),
                "note": r.note,
            })).collect::<Vec<_>>(),
            "leader_change_messages": changes.iter().map(|(n, zk, kraft)| serde_json::json!({
                "brokers": n,
                "zookeeper": zk.as_ref().map(|x| x.messages),
                "kraft": kraft.as_ref().map(|x| x.messages),
            })).collect::<Vec<_>>(),
            "real": real.as_ref().map(|r| r.iter().map(|m| serde_json::json!({
                "mode": m.mode,
                "failover_ms": m.failover_ms,
                "median_ms": m.median_ms(),
                "min_ms": m.failover_ms.iter().min(),
                "max_ms": m.failover_ms.iter().max(),
                "settings": m.settings,
            })).collect::<Vec<_>>()),
        });
        println!("{}", serde_json::to_string_pretty(&json).expect("JSON"));
        return EXIT_OK;
    }
    println!(
        "controller failover, {brokers} brokers, one partition replicated on all of them:\n\
         from \"the active controller fails\" to \"every live broker knows the partition's new leader\"\n\
         (shortest path in the model's exhaustive state graph; messages = broker requests sent\n\
         plus ZooKeeper requests and watch notifications, responses not counted)\n"
    );
    println!(
        "{:<10} {:>6} {:>9} {:>16}  model and bounds",
        "mode", "steps", "messages", "states searched"
    );
    for r in &rows {
        println!(
            "{:<10} {:>6} {:>9} {:>16}  {}",
            r.mode,
            cell(&r.measured, |x| x.steps),
            cell(&r.measured, |x| x.messages),
            cell(&r.measured, |x| x.unique_states),
            r.note
        );
    }
    if let Some(real) = &real {
        println!(
            "\nreal clusters on 127.0.0.1 ({brokers} brokers): kill -9 of the active controller and the\n\
             partition leader's broker, until every live broker's Metadata names the new leader\n"
        );
        println!(
            "{:<10} {:>5} {:>10} {:>8} {:>8}  model steps  settings",
            "mode", "runs", "median ms", "min ms", "max ms"
        );
        for m in real {
            let steps = rows
                .iter()
                .find(|r| r.mode == m.mode)
                .map_or("-".to_string(), |r| cell(&r.measured, |x| x.steps));
            println!(
                "{:<10} {:>5} {:>10} {:>8} {:>8}  {:>11}  {}",
                m.mode,
                m.failover_ms.len(),
                m.median_ms(),
                m.failover_ms.iter().min().copied().unwrap_or(0),
                m.failover_ms.iter().max().copied().unwrap_or(0),
                steps,
                m.settings
            );
        }
    }
    println!("\nmessages for one partition-leader change (the leader's broker fails, the controller is healthy):\n");
    println!("{:<8} {:>10} {:>10}", "brokers", "zookeeper", "kraft");
    let text = |n: usize, x: &Option<Measured>, limit: usize| match x {
        Some(x) => x.messages.to_string(),
        None if n == 1 => "n/a".to_string(),
        None if n > limit => "-".to_string(),
        None => "none".to_string(),
    };
    for (n, zk, kraft) in &changes {
        println!(
            "{n:<8} {:>10} {:>10}",
            text(*n, zk, usize::MAX),
            text(*n, kraft, kraft_failover::MAX_BROKERS)
        );
    }
    println!(
        "\nn/a: a single replica has no other broker to lead; -: beyond the model's bounds \
         (the kraft model holds at most {} brokers)",
        kraft_failover::MAX_BROKERS
    );
    EXIT_OK
}
