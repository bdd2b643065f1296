//! Network partitions with real network namespaces, for runs as root.
//!
//! Each node gets its own network namespace with one veth link to a bridge in the harness's
//! namespace, and an address in a private /24 that exists only inside this run's namespaces.
//! A [`Grudge`] becomes one nftables table per node namespace that drops packets from the
//! nodes it holds a grudge against (as Jepsen's iptables DROP rules do: connections hang
//! rather than fail). Nodes are started inside their namespace with [`NetnsNetwork::command`];
//! the harness (clients, checkers) stays in its own namespace and reaches every node over the
//! bridge, unaffected by the partitions, as Jepsen's control node is.
//!
//! Everything it creates (namespaces, veths, the bridge, the rules inside the namespaces) is
//! removed when the [`NetnsNetwork`] is dropped, including on panic; [`remove_stale`] clears
//! what a killed harness left behind.

use super::grudge::{Grudge, NodeId};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Every name this module creates starts with this, so stale ones can be found.
const PREFIX: &str = "kcn";

/// One node's namespace.
#[derive(Debug, Clone)]
pub struct NetnsNode {
    pub namespace: String,
    pub addr: Ipv4Addr,
    host_veth: String,
}

/// A run's namespaces, bridge and links.
#[derive(Debug)]
pub struct NetnsNetwork {
    tag: String,
    bridge: String,
    /// The harness's own address on the bridge.
    pub host_addr: Ipv4Addr,
    nodes: BTreeMap<NodeId, NetnsNode>,
}

fn run(cmd: &mut Command) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn ip(args: &[&str]) -> io::Result<()> {
    run(Command::new("ip").args(args))
}

/// Whether namespaces can be used here (root, `ip` and `nft` installed), and if not, why.
pub fn available() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("network namespaces need root".into());
    }
    for tool in ["ip", "nft"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!(
                "'{tool}' is not installed (Debian: apt-get install iproute2 nftables)"
            ));
        }
    }
    Ok(())
}

/// Removes namespaces and bridges left by harness runs that were killed before cleaning up.
pub fn remove_stale() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with(PREFIX) {
                let _ = ip(&["netns", "del", name]);
            }
        }
    }
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            let name = name.split('@').next().unwrap_or("");
            if name.starts_with(PREFIX) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

impl NetnsNetwork {
    /// Creates a namespace per node, linked over a fresh bridge. Fails (and removes what it
    /// made) unless running as root with `ip` and `nft`.
    pub fn create(node_ids: &[NodeId]) -> io::Result<NetnsNetwork> {
        available().map_err(io::Error::other)?;
        if node_ids.len() > 250 {
            return Err(io::Error::other("at most 250 nodes per network"));
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let id = (std::process::id().wrapping_mul(31).wrapping_add(n)) % 0x10000;
        let tag = format!("{id:04x}");
        // 10.213.0.0/16 is used only inside this run's namespaces and bridge; a /24 another
        // run (another harness process on this machine) already has on a bridge is skipped,
        // since two bridges with one subnet would make the routes ambiguous.
        let in_use = Command::new("ip")
            .args(["-o", "-4", "addr", "show"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let subnet = (0..250u32)
            .map(|k| ((id + k) % 250) as u8)
            .find(|s| !in_use.contains(&format!(" 10.213.{s}.")))
            .ok_or_else(|| io::Error::other("every 10.213.x.0/24 subnet is in use"))?;
        let mut net = NetnsNetwork {
            bridge: format!("{PREFIX}{tag}br"),
            host_addr: Ipv4Addr::new(10, 213, subnet, 254),
            tag,
            nodes: BTreeMap::new(),
        };
        // On any error, Drop removes what exists so far.
        ip(&["link", "add", &net.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", net.host_addr),
            "dev",
            &net.bridge,
        ])?;
        ip(&["link", "set", &net.bridge, "up"])?;
        for (i, &node) in node_ids.iter().enumerate() {
            let namespace = format!("{PREFIX}{}n{node}", net.tag);
            let host_veth = format!("{PREFIX}{}v{i}", net.tag);
            let addr = Ipv4Addr::new(10, 213, subnet, i as u8 + 1);
            net.nodes.insert(
                node,
                NetnsNode {
                    namespace: namespace.clone(),
                    addr,
                    host_veth: host_veth.clone(),
                },
            );
            ip(&["netns", "add", &namespace])?;
            ip(&[
                "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns",
                &namespace,
            ])?;
            ip(&["link", "set", &host_veth, "master", &net.bridge])?;
            ip(&["link", "set", &host_veth, "up"])?;
            ip(&[
                "-n",
                &namespace,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &namespace, "link", "set", "eth0", "up"])?;
            ip(&["-n", &namespace, "link", "set", "lo", "up"])?;
        }
        net.heal()?;
        Ok(net)
    }

    pub fn node(&self, node: NodeId) -> Option<&NetnsNode> {
        self.nodes.get(&node)
    }

    pub fn addr(&self, node: NodeId) -> Option<Ipv4Addr> {
        self.nodes.get(&node).map(|n| n.addr)
    }

    /// `program` to be run inside `node`'s namespace (`ip netns exec NS program`).
    pub fn command(&self, node: NodeId, program: &str) -> Option<Command> {
        let n = self.nodes.get(&node)?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &n.namespace, program]);
        Some(c)
    }

    /// Runs `f` on a thread that has entered `node`'s namespace: sockets it creates live there.
    pub fn enter<T: Send + 'static>(
        &self,
        node: NodeId,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        let n = self
            .nodes
            .get(&node)
            .ok_or_else(|| io::Error::other(format!("no node {node} in this network")))?;
        let path = format!("/var/run/netns/{}", n.namespace);
        std::thread::spawn(move || -> io::Result<T> {
            let file = std::fs::File::open(&path)?;
            use std::os::fd::AsRawFd;
            // SAFETY: a valid namespace fd; this thread alone switches namespace.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("the thread in the namespace panicked"))?
    }

    /// Makes `grudge` the network's partition (replacing the previous one): each node drops
    /// packets from the nodes it holds a grudge against.
    pub fn apply(&self, grudge: &Grudge) -> io::Result<()> {
        for (id, node) in &self.nodes {
            let dropped: Vec<String> = self
                .nodes
                .iter()
                .filter(|(from, _)| grudge.cuts(**from, *id))
                .map(|(_, n)| n.addr.to_string())
                .collect();
            let rule = if dropped.is_empty() {
                String::new()
            } else {
                format!("ip saddr {{ {} }} drop", dropped.join(", "))
            };
            // Declaring then deleting the table makes the replacement idempotent; nft applies
            // the whole script atomically.
            let script = format!(
                "table inet kcheck {{}}\ndelete table inet kcheck\n\
                 table inet kcheck {{\n chain input {{\n  type filter hook input priority 0; policy accept;\n  {rule}\n }}\n}}\n"
            );
            let mut child = Command::new("ip")
                .args(["netns", "exec", &node.namespace, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            child
                .stdin
                .take()
                .expect("piped stdin")
                .write_all(script.as_bytes())?;
            let out = child.wait_with_output()?;
            if !out.status.success() {
                return Err(io::Error::other(format!(
                    "nft in {} failed: {}",
                    node.namespace,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(())
    }

    /// Removes every partition.
    pub fn heal(&self) -> io::Result<()> {
        self.apply(&Grudge::default())
    }
}

/// The names a network created, to remove them from elsewhere (a signal handler).
#[derive(Debug, Clone)]
pub struct NetnsNames {
    namespaces: Vec<String>,
    links: Vec<String>,
}

impl NetnsNames {
    /// Deletes the namespaces (and with them the veths' inner ends), the veths and the bridge.
    pub fn remove(&self) {
        for n in &self.namespaces {
            let _ = ip(&["netns", "del", n]);
        }
        for l in &self.links {
            let _ = ip(&["link", "del", l]);
        }
    }
}

impl NetnsNetwork {
    pub fn names(&self) -> NetnsNames {
        let mut links: Vec<String> = self.nodes.values().map(|n| n.host_veth.clone()).collect();
        links.push(self.bridge.clone());
        NetnsNames {
            namespaces: self.nodes.values().map(|n| n.namespace.clone()).collect(),
            links,
        }
    }
}

/// On SIGINT or SIGTERM, removes `names` ([`crate::cleanup`]): Drop does not run when the
/// process is killed by a signal, and a run must leave no namespace behind. Kept for the
/// process's life (one run a process); removing names already gone is harmless.
pub fn remove_on_signal(names: NetnsNames) {
    std::mem::forget(crate::cleanup::on_signal(move || names.remove()));
}

impl Drop for NetnsNetwork {
    fn drop(&mut self) {
        self.names().remove();
    }
}
