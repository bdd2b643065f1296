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
    let res = rt.block_on(crate::server::serve(cfg, async {
        let _ = tokio::signal::ctrl_c().await;
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
