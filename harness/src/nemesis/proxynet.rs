//! The network of a run without network namespaces: one [`Proxy`] per directed link (node A's
//! connections to node B), each node told to reach its peers through them (`kcheck broker
//! --peer-address ID=HOST:PORT`). The harness's own clients talk to the nodes directly, so the
//! control node is never cut off (as with the namespaces).
//!
//! A partition is a [`Grudge`]: `to` drops what `from` sends, so on the link `from -> to` the
//! forward direction is dropped and on the link `to -> from` the backward one (answers). Link
//! shaping faults (`delay`, `loss`) are kept by kind and added on top, so a partition and a
//! delay can be in force together. Every proxy stops when the network is dropped.

use crate::nemesis::grudge::{Grudge, NodeId};
use crate::proxy::{Direction, LinkFaults, Mode, Proxy};
use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// A directed link: `from`'s connections to `to`.
pub type Link = (NodeId, NodeId);

/// The proxies of one run.
pub struct ProxyNetwork {
    links: BTreeMap<Link, Proxy>,
    grudge: Grudge,
    /// Shaping faults in force, by kind name (`delay`, `loss`): what each adds to a link.
    shaping: BTreeMap<String, BTreeMap<Link, LinkFaults>>,
    /// Declared last: dropped after the proxies are told to stop.
    rt: Option<tokio::runtime::Runtime>,
}

impl ProxyNetwork {
    /// Starts a proxy for every link in `links`, forwarding to `addrs[to]`.
    pub fn start(
        links: &[Link],
        addrs: &BTreeMap<NodeId, SocketAddr>,
        seed: u64,
    ) -> io::Result<ProxyNetwork> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kcheck-proxy")
            .enable_all()
            .build()?;
        let mut net = ProxyNetwork {
            links: BTreeMap::new(),
            grudge: Grudge::default(),
            shaping: BTreeMap::new(),
            rt: None,
        };
        for (i, &(from, to)) in links.iter().enumerate() {
            let upstream = *addrs
                .get(&to)
                .ok_or_else(|| io::Error::other(format!("no address for node {to}")))?;
            let seed = seed ^ ((i as u64 + 1) << 32) ^ ((from as u64) << 16) ^ (to as u64);
            let p = rt.block_on(Proxy::start(upstream, seed))?;
            net.links.insert((from, to), p);
        }
        net.rt = Some(rt);
        Ok(net)
    }

    /// Where `from` reaches `to`, if that link has a proxy.
    pub fn addr(&self, from: NodeId, to: NodeId) -> Option<SocketAddr> {
        self.links.get(&(from, to)).map(|p| p.local_addr)
    }

    pub fn links(&self) -> Vec<Link> {
        self.links.keys().copied().collect()
    }

    /// What a link carries now.
    pub fn faults(&self, from: NodeId, to: NodeId) -> Option<LinkFaults> {
        self.links.get(&(from, to)).map(|p| p.faults())
    }

    /// Makes `grudge` the partition (replacing the previous one); shaping stays.
    pub fn apply(&mut self, grudge: &Grudge) -> io::Result<()> {
        self.grudge = grudge.clone();
        self.refresh();
        Ok(())
    }

    /// Adds (replaces) the shaping fault `kind` on `links`.
    pub fn shape(&mut self, kind: &str, links: BTreeMap<Link, LinkFaults>) {
        self.shaping.insert(kind.to_string(), links);
        self.refresh();
    }

    /// Ends the shaping fault `kind`. Bytes already held back by a delay are still delivered
    /// late (a slow router does not lose what it queued).
    pub fn unshape(&mut self, kind: &str) {
        self.shaping.remove(kind);
        self.refresh();
    }

    /// No partition, no shaping.
    pub fn heal(&mut self) -> io::Result<()> {
        self.grudge = Grudge::default();
        self.shaping.clear();
        self.refresh();
        Ok(())
    }

    /// Every link's faults from the grudge and the shaping in force.
    fn refresh(&self) {
        for (&(from, to), p) in &self.links {
            let mut f = LinkFaults::healed();
            for shaped in self.shaping.values() {
                if let Some(s) = shaped.get(&(from, to)) {
                    add(&mut f.forward, &s.forward);
                    add(&mut f.backward, &s.backward);
                }
            }
            if self.grudge.cuts(from, to) {
                f.forward.mode = Mode::Drop;
            }
            if self.grudge.cuts(to, from) {
                f.backward.mode = Mode::Drop;
            }
            if p.faults() != f {
                p.set(f);
            }
        }
    }

    /// Stops every proxy (and their connections).
    pub fn shutdown(&mut self) {
        for p in self.links.values() {
            p.shutdown();
        }
        if let Some(rt) = self.rt.take() {
            // Let the accept loops and connections see the stop, then drop what is left.
            rt.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
            rt.shutdown_timeout(Duration::from_millis(200));
        }
    }
}

/// Shaping faults add up: delays sum, the worse loss wins.
fn add(to: &mut Direction, d: &Direction) {
    to.delay += d.delay;
    if d.loss > to.loss {
        to.loss = d.loss;
        to.rto = d.rto;
    }
}

impl Drop for ProxyNetwork {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn echo() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut b = [0u8; 64];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&b[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        a
    }

    fn answers(addr: SocketAddr) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 1];
        s.write_all(b"x").is_ok() && matches!(s.read(&mut b), Ok(1))
    }

    #[test]
    fn a_grudge_cuts_exactly_its_links_and_every_proxy_stops_on_drop() {
        let addrs: BTreeMap<NodeId, SocketAddr> = (1..=3).map(|n| (n, echo())).collect();
        let links: Vec<Link> = [(1, 2), (2, 1), (1, 3), (3, 1), (2, 3), (3, 2)].to_vec();
        let mut net = ProxyNetwork::start(&links, &addrs, 7).unwrap();
        for &(a, b) in &links {
            assert!(answers(net.addr(a, b).unwrap()), "{a}->{b} healed");
        }
        // 3 drops what 1 sends (one way): on 1's link to 3 the requests are lost, on 3's
        // link to 1 the answers.
        let mut g = Grudge::default();
        g.0.entry(3).or_default().insert(1);
        net.apply(&g).unwrap();
        assert_eq!(net.faults(1, 3).unwrap().forward.mode, Mode::Drop);
        assert_eq!(net.faults(3, 1).unwrap().backward.mode, Mode::Drop);
        assert!(
            !answers(net.addr(1, 3).unwrap()),
            "1's requests to 3 dropped"
        );
        assert!(
            !answers(net.addr(3, 1).unwrap()),
            "1's answers to 3 dropped"
        );
        for &(a, b) in &[(1, 2), (2, 1), (2, 3), (3, 2)] {
            assert!(answers(net.addr(a, b).unwrap()), "{a}->{b} untouched");
            assert_eq!(net.faults(a, b).unwrap(), LinkFaults::healed());
        }
        // A delay adds to the partition and survives its heal.
        let slow = LinkFaults {
            forward: Direction {
                delay: Duration::from_millis(50),
                ..Direction::default()
            },
            backward: Direction::default(),
        };
        net.shape("delay", [((2, 3), slow)].into_iter().collect());
        net.apply(&Grudge::default()).unwrap();
        assert_eq!(net.faults(2, 3).unwrap(), slow);
        assert!(answers(net.addr(1, 3).unwrap()), "healed");
        net.heal().unwrap();
        assert_eq!(net.faults(2, 3).unwrap(), LinkFaults::healed());
        let addrs: Vec<SocketAddr> = links
            .iter()
            .map(|&(a, b)| net.addr(a, b).unwrap())
            .collect();
        drop(net);
        for a in addrs {
            assert!(
                std::net::TcpStream::connect(a).is_err(),
                "the proxy on {a} stopped"
            );
        }
    }
}
