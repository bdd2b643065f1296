//! Check time of the history checkers on simulated histories of 10^3..10^6 operations.
//!
//! `cargo bench -p kcheck-harness --bench checker` (optionally `-- 100000` to cap the size).
//! A plain timing bench (no criterion, to keep the dependency tree lean): each size is
//! generated once, then checked `runs` times; the median is printed. Generation is not timed.

use kcheck_harness::sim::{log_history, queue_history, SimConfig};
use kcheck_harness::{linear, queue, Verdict};
use std::time::{Duration, Instant};

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

fn time(runs: usize, mut f: impl FnMut() -> Verdict) -> f64 {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(f(), Verdict::Valid, "benchmark histories are valid");
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn main() {
    let cap: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("threads: {threads}; times are medians; ops = client operations invoked");
    println!(
        "{:<42} {:>10} {:>12} {:>14}",
        "history", "ops", "check (s)", "ops/s"
    );
    for exp in 3..=6 {
        let ops = 10usize.pow(exp);
        if ops > cap {
            break;
        }
        let runs = if ops >= 1_000_000 { 1 } else { 3 };
        let cases: [(&str, u64); 2] = [
            ("log, 1 partition, concurrency 10", 1),
            ("log, 4 partitions, concurrency 10", 4),
        ];
        for (name, partitions) in cases {
            let cfg = SimConfig {
                seed: exp as u64,
                ops,
                concurrency: 10,
                partitions,
                ..SimConfig::default()
            };
            let h = log_history(&cfg);
            let s = time(runs, || {
                linear::check(&h, Duration::from_secs(600), threads).verdict
            });
            println!("{name:<42} {ops:>10} {s:>12.3} {:>14.0}", ops as f64 / s);
        }
        let cfg = SimConfig {
            seed: exp as u64,
            ops,
            concurrency: 10,
            partitions: 8,
            ..SimConfig::default()
        };
        let h = queue_history(&cfg);
        let s = time(runs, || queue::check(&h, 8).verdict);
        println!(
            "{:<42} {ops:>10} {s:>12.3} {:>14.0}",
            "queue, 8 keys, concurrency 10",
            ops as f64 / s
        );
    }
}
