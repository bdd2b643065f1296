//! `kcheck test --system zookeeper`: kcheck's harness against a real Apache ZooKeeper 3.8
//! ensemble (Debian's `zookeeper`), a system nobody here wrote.
//!
//! - [`run`]: the run: a three-server ensemble ([`kcheck_reference::zk_ensemble`]) with a
//!   fault-injecting proxy on every link (server to server for the quorum and election ports,
//!   client to server for every worker), Rust ZooKeeper clients (`zookeeper-client`) as
//!   workers, a seeded nemesis schedule (kill, pause, partition, clock), heal, final reads;
//! - [`register`]: the compare-and-set register workload and its checkers (linearizability of
//!   synced reads, stale plain reads counted, session order);
//! - [`election`]: Kafka's ZooKeeper-mode controller election and the `zk-controller` model's
//!   invariants on the real history;
//! - [`bench`]: failover times of the ensemble (`kcheck bench-zookeeper`);
//! - [`metadata_ensemble`]: the ensemble behind a ZooKeeper-mode Kafka cluster in `kcheck test
//!   --metadata zookeeper`, with the proxies its faults cut.

pub mod bench;
pub mod election;
pub mod metadata_ensemble;
pub mod register;
pub mod run;
