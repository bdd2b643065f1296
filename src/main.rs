//! `kcheck`: model-check Kafka's protocols, replay counterexamples, run the reference broker
//! cluster and the Jepsen-style harness.

mod compare_cli;
mod gate;
mod models_cli;
mod real_failover;

use clap::{Arg, ArgAction, Command};
use std::process::ExitCode;

/// Exit codes shared by every subcommand: 0 all good, 1 a property or check failed, 2 the
/// input was wrong or the result is unknown.
pub const EXIT_OK: u8 = 0;
pub const EXIT_VIOLATION: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

fn cli() -> Command {
    Command::new("kcheck")
        .about("Model-checked verification suite and reference implementation of Kafka's replication and control-plane protocols")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(models_cli::models_command())
        .subcommand(models_cli::check_command())
        .subcommand(models_cli::explore_command())
        .subcommand(models_cli::replay_command())
        .subcommand(models_cli::bench_command())
        .subcommand(gate::gate_command())
        .subcommand(compare_cli::compare_command())
        .subcommand(kcheck_harness::cli::analyze_command())
        .subcommand(kcheck_harness::test_cli::test_command())
        .subcommand(kcheck_harness::conform::conform_command())
        .subcommand(kcheck_reference::cli::broker_command())
        .subcommand(kcheck_reference::cli::bench_broker_command())
        .subcommand(kcheck_reference::cli::bench_quorum_command())
        .subcommand(kcheck_harness::zookeeper::bench::bench_command())
        .subcommand(kcheck_reference::cluster::cluster_command())
        .arg(
            Arg::new("quiet")
                .long("quiet")
                .short('q')
                .global(true)
                .action(ArgAction::SetTrue)
                .help("No progress output"),
        )
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(message) = models_cli::unknown_model_in(&args) {
        eprintln!("kcheck: {message}");
        return ExitCode::from(EXIT_USAGE);
    }
    let matches = match cli().try_get_matches_from(&args) {
        Ok(m) => m,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let quiet = matches.get_flag("quiet");
    let code = match matches.subcommand() {
        Some(("models", m)) => models_cli::run_models(m),
        Some(("check", m)) => models_cli::run_check(m, quiet),
        Some(("explore", m)) => models_cli::run_explore(m),
        Some(("replay", m)) => models_cli::run_replay(m),
        Some(("bench", m)) => models_cli::run_bench(m, quiet),
        Some(("gate", m)) => gate::run_gate(m, quiet),
        Some(("compare", m)) => compare_cli::run_compare(m),
        Some(("analyze", m)) => kcheck_harness::cli::run_analyze(m),
        Some(("test", m)) => kcheck_harness::test_cli::run_test(m),
        Some(("conform", m)) => kcheck_harness::conform::run_conform(m),
        Some(("broker", m)) => kcheck_reference::cli::run_broker(m),
        Some(("bench-broker", m)) => kcheck_reference::cli::run_bench_broker(m),
        Some(("bench-quorum", m)) => kcheck_reference::cli::run_bench_quorum(m),
        Some(("bench-zookeeper", m)) => kcheck_harness::zookeeper::bench::run_bench(m),
        Some(("cluster", m)) => kcheck_reference::cluster::run_cluster(m),
        _ => unreachable!("clap requires a known subcommand"),
    };
    ExitCode::from(code)
}
