//! kcheck's reference Kafka broker: sans-IO protocol cores with thin tokio adapters.
//!
//! - [`batch`]: record batch v2 header parsing, CRC-32C validation, offset assignment
//! - [`log`]: durable segmented partition log with recovery
//! - [`partition`]: sans-IO partition replica state (LEO, HW, ISR, leader epoch)
//! - [`metadata`]: `__cluster_metadata` records and the metadata image brokers build from them
//! - [`replication`]: the replicated data plane's tokio adapters (image listener, replica
//!   fetchers, AlterPartition)
pub mod alloc_guard;
pub mod batch;
pub mod bench;
pub mod bench_quorum;
pub mod broker;
pub mod clean_shutdown;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod cluster_zookeeper;
pub mod controller;
pub mod controller_client;
pub mod controller_server;
pub mod controller_test_control;
pub mod group;
pub mod log;
pub mod metadata;
pub mod metadata_log;
pub mod offsets;
pub mod partition;
pub mod proto_trace;
pub mod raft;
pub mod replication;
pub mod server;
pub mod test_control;
pub mod zk_controller;
pub mod zk_ensemble;

/// Re-exported so tests and tools build requests with the same codec version.
pub use kafka_protocol;

/// Every binary linking the broker gets the allocation-bomb guard (see [`alloc_guard`]):
/// a malformed request must never abort the process.
#[global_allocator]
static GLOBAL: alloc_guard::NoReserveHuge = alloc_guard::NoReserveHuge;
