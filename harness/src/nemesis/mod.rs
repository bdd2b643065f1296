//! Fault injection (Jepsen's nemeses), each mechanism in its own module with a small
//! interface the run loop drives:
//!
//! - [`grudge`]: *which* links a network partition cuts, in Jepsen's shapes, as a pure
//!   function of the nodes (and a seed). Carried out by the TCP proxies ([`crate::proxy`]) or by
//!   network namespaces ([`netns`]).
//! - [`netns`]: real network namespaces with veth links on a bridge and nftables drop rules,
//!   for runs as root; everything it creates is removed when it is dropped.
//! - [`proxynet`]: one [`crate::proxy`] per directed link between nodes, for runs without root;
//!   partitions, delay and loss.
//! - [`clock`]: wall-clock skew, bumps and strobes of one process through libfaketime.
//! - [`crate::lazyfs`]: crashes that lose exactly the writes a node had not fsynced.
//! - [`quorum`]: faults lined up around the KRaft controller quorum's leader (cut it from the
//!   other controllers only, outlive it with a lagging follower, crash-restart it).
//! - [`zombie_failover`]: ZooKeeper mode's composite fault, a leader's death left queued for
//!   a controller paused past its session (the zombie window), timed with signals only.
//! - [`successor`]: the plan of the `lagging-successor` composite fault (a partition, a
//!   leader failure and a pause lined up for KIP-279's divergence), a pure function of
//!   Metadata.
//! - [`stale_fetch`]: the plan of the `stale-fetch` composite fault (a leader paused across
//!   its follower's crash-restart, so it handles the dead incarnation's Fetch late: KIP-903).

pub mod clock;
pub mod grudge;
pub mod netns;
pub mod proxynet;
pub mod quorum;
pub mod stale_fetch;
pub mod successor;
pub mod zombie_failover;
