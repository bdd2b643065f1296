//! kcheck's models: stateright models of Kafka's replication and control-plane protocols, each
//! with named invariants, stated bounds and switchable historical bug flags.

pub mod catalog;
pub mod compact;
pub mod compare;
pub mod consumer_offsets;
pub mod engine;
pub mod kraft;
pub mod kraft_failover;
pub mod property;
pub mod reassignment;
pub mod replication;
pub mod testkit;
pub mod trace;
pub mod zk_controller;
pub mod zk_election;

pub use catalog::{Bound, BugFlag, Config, Entry, KcheckModel, ModelDef, Report};
pub use property::{Property, PropertyKind};
pub use trace::Trace;

/// Every model kcheck knows, in the order `kcheck models` lists them.
pub static CATALOG: &[&dyn ModelDef] = &[
    &Entry::<replication::Replication>::NEW,
    &Entry::<reassignment::Reassignment>::NEW,
    &Entry::<consumer_offsets::ConsumerOffsets>::NEW,
    &Entry::<kraft::Kraft>::NEW,
    &Entry::<zk_controller::ZkController>::NEW,
    &Entry::<zk_election::ZkElection>::NEW,
];

/// Look a model up by name, with an error that lists the known ones.
pub fn find(name: &str) -> Result<&'static dyn ModelDef, String> {
    CATALOG
        .iter()
        .copied()
        .find(|m| m.name() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = CATALOG.iter().map(|m| m.name()).collect();
            format!("unknown model '{name}' (known: {})", known.join(", "))
        })
}
