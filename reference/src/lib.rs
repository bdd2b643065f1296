//! kcheck's reference Kafka broker: sans-IO protocol cores with thin tokio adapters.
//!
//! - [`batch`]: record batch v2 header parsing, CRC-32C validation, offset assignment
//! - [`log`]: durable segmented partition log with recovery
//! - [`partition`]: sans-IO partition replica state (LEO, HW, ISR, leader epoch)
pub mod batch;
pub mod broker;
pub mod cli;
pub mod group;
pub mod log;
pub mod offsets;
pub mod partition;
pub mod server;
