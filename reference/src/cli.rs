//! `kcheck broker`: the clap command and its runner (wired into the root CLI).

use crate::broker::BrokerConfig;
use crate::log::FlushPolicy;
use clap::{Arg, ArgAction, ArgMatches, Command};
use std::path::PathBuf;

pub fn broker_command() -> Command {
    Command::new("broker")
        .about("Run the reference Kafka broker (single node, durable segmented log)")
        .arg(
            Arg::new("node-id")
                .long("node-id")
                .default_value("0")
                .value_parser(clap::value_parser!(i32))
                .help("Broker id (node.id)"),
        )
        .arg(
            Arg::new("listen")
                .long("listen")
                .default_value("127.0.0.1:9092")
                .help("Listener address (loopback by default; port 0 picks a free port)"),
        )
        .arg(
            Arg::new("data-dir")
                .long("data-dir")
                .default_value("kcheck-data")
                .help("Log directory (log.dirs)"),
        )
        .arg(
            Arg::new("flush")
                .long("flush")
                .num_args(1..=2)
                .default_values(["never"])
                .help("fsync policy: always | interval-ms N | never"),
        )
        .arg(
            Arg::new("auto-create-topics")
                .long("auto-create-topics")
                .action(ArgAction::SetTrue)
                .help("Create topics on first use (auto.create.topics.enable)"),
        )
        .arg(
            Arg::new("partitions")
                .long("partitions")
                .default_value("1")
                .value_parser(clap::value_parser!(i32))
                .help("Partitions of auto-created topics (num.partitions)"),
        )
        .arg(
            Arg::new("max-request-bytes")
                .long("max-request-bytes")
                .default_value("104857600")
                .value_parser(clap::value_parser!(usize))
                .help("Largest request frame accepted (socket.request.max.bytes)"),
        )
}

/// Parses `--flush` values: `always`, `never`, `interval-ms N` (or `interval-ms=N`).
pub fn parse_flush(values: &[String]) -> Result<FlushPolicy, String> {
    match values {
        [one] => one.parse(),
        [k, n] if k == "interval-ms" => n
            .parse()
            .map(FlushPolicy::IntervalMs)
            .map_err(|_| format!("bad interval {n:?}")),
        other => Err(format!(
            "bad flush policy {other:?}: want always, never or interval-ms N"
        )),
    }
}

pub fn broker_config(m: &ArgMatches) -> Result<BrokerConfig, String> {
    let flush: Vec<String> = m
        .get_many::<String>("flush")
        .map(|v| v.cloned().collect())
        .unwrap_or_default();
    let mut cfg = BrokerConfig::new(PathBuf::from(
        m.get_one::<String>("data-dir").expect("has default"),
    ));
    cfg.node_id = *m.get_one::<i32>("node-id").expect("has default");
    let listen = m.get_one::<String>("listen").expect("has default");
    cfg.listen = listen
        .parse()
        .map_err(|e| format!("bad --listen {listen:?}: {e}"))?;
    cfg.flush = parse_flush(&flush)?;
    cfg.auto_create_topics = m.get_flag("auto-create-topics");
    cfg.default_partitions = *m.get_one::<i32>("partitions").expect("has default");
    cfg.max_request_bytes = *m
        .get_one::<usize>("max-request-bytes")
        .expect("has default");
    Ok(cfg)
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// Runs the broker until Ctrl-C. Exit 0 on clean shutdown, 2 on bad arguments, 1 when the
/// broker cannot start (e.g. corrupt committed data).
pub fn run_broker(m: &ArgMatches) -> u8 {
    init_tracing();
    let cfg = match broker_config(m) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kcheck broker: {e}");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kcheck broker: cannot start runtime: {e}");
            return 1;
        }
    };
    // Clean shutdown (flush + checkpoints) on Ctrl-C or SIGTERM, as Kafka's controlled shutdown.
    let res = rt.block_on(crate::server::serve(cfg, async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }));
    match res {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kcheck broker: {e:#}");
            tracing::error!(error = %e, "broker failed");
            1
        }
    }
}

pub fn bench_broker_command() -> Command {
    Command::new("bench-broker")
        .about("Benchmark the reference broker over loopback (acks 1/all x flush never/always) against disk and loopback limits")
        .arg(Arg::new("data-dir").long("data-dir").default_value("target/bench-broker").help("Directory on the disk to measure"))
        .arg(Arg::new("seconds").long("seconds").default_value("5").value_parser(clap::value_parser!(f64)).help("Duration of each run"))
        .arg(Arg::new("in-flight").long("in-flight").default_value("64").value_parser(clap::value_parser!(usize)).help("Outstanding produce requests"))
        .arg(Arg::new("records-per-batch").long("records-per-batch").default_value("100").value_parser(clap::value_parser!(i32)))
        .arg(Arg::new("record-bytes").long("record-bytes").default_value("100").value_parser(clap::value_parser!(usize)))
}

pub fn run_bench_broker(m: &ArgMatches) -> u8 {
    let cfg = crate::bench::BenchConfig {
        data_dir: PathBuf::from(m.get_one::<String>("data-dir").expect("has default")),
        seconds: m
            .get_one::<f64>("seconds")
            .copied()
            .unwrap_or(5.0)
            .clamp(0.1, 600.0),
        in_flight: m
            .get_one::<usize>("in-flight")
            .copied()
            .unwrap_or(64)
            .clamp(1, 10_000),
        records_per_batch: m
            .get_one::<i32>("records-per-batch")
            .copied()
            .unwrap_or(100)
            .clamp(1, 100_000),
        record_bytes: m
            .get_one::<usize>("record-bytes")
            .copied()
            .unwrap_or(100)
            .min(1 << 20),
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kcheck bench-broker: {e}");
            return 1;
        }
    };
    match rt.block_on(crate::bench::run(&cfg)) {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("kcheck bench-broker: {e:#}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_policies_parse() {
        let v = |a: &[&str]| parse_flush(&a.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&["always"]), Ok(FlushPolicy::Always));
        assert_eq!(v(&["never"]), Ok(FlushPolicy::Never));
        assert_eq!(v(&["interval-ms", "50"]), Ok(FlushPolicy::IntervalMs(50)));
        assert!(v(&["interval-ms", "x"]).is_err());
        assert!(v(&["sometimes"]).is_err());
    }

    #[test]
    fn broker_args() {
        let m = broker_command()
            .try_get_matches_from([
                "broker",
                "--node-id",
                "3",
                "--flush",
                "interval-ms",
                "20",
                "--auto-create-topics",
            ])
            .unwrap();
        let c = broker_config(&m).unwrap();
        assert_eq!(
            (c.node_id, c.flush, c.auto_create_topics),
            (3, FlushPolicy::IntervalMs(20), true)
        );
        let m = broker_command()
            .try_get_matches_from(["broker", "--listen", "nowhere"])
            .unwrap();
        assert!(broker_config(&m).is_err());
    }
}
