//! The controller's test-only hold points (`kcheck broker --process-roles controller
//! --test-control 127.0.0.1:PORT`), used by `kcheck replay kraft-*.json --against cluster` to
//! run a `kraft` model counterexample as a schedule of single deliveries (issue 9).
//!
//! The sans-IO [`crate::raft::RaftNode`] never sees any of this: the gates sit in the tokio
//! adapter ([`crate::controller_server`]) between the core's `Output::Send` and the socket,
//! and between the socket and `handle_response`.
//!
//! - **Outgoing requests**, one link per (peer, RPC) — `pre-vote`, `vote`,
//!   `begin-quorum-epoch`, `end-quorum-epoch`, `fetch`. A request the core sends waits at its
//!   link; a newer one of the same link replaces it (the core's resend). `step request RPC
//!   PEER` lets the waiting request go: the peer handles it, and its response comes back and
//!   waits at the same link, so the peer's state changed while this node has learnt nothing
//!   yet (the model's asynchronous messages). `step response RPC PEER` hands that response to
//!   the core; `drop request|response RPC PEER` discards either.
//! - **Observers' Fetch**: a Fetch from a non-voter (a broker's metadata fetcher) is refused
//!   (the connection is closed, as a lost message) unless `step observer-fetch PEER` granted
//!   it; then it is handled and answered.
//! - **The election timer**: the voters start with timeouts long enough never to fire during a
//!   replay; `fire election-timer` moves this node's clock past every deadline of its role and
//!   ticks the core once (so a follower's fetch timer, which is the same deadline, fires too).
//!
//! | request | answer |
//! |---|---|
//! | `state` | `ok {JSON}`: role, epoch, vote, leader, HW, LEO, the log's (epoch, control) entries, whether this node is the active controller, every link |
//! | `step request RPC PEER` | `ok {"completed":1,...}` once the request was answered (its response waits), `{"completed":0}` when none was sent in 10 s |
//! | `step response RPC PEER` | `ok {"completed":1}` once the waiting response was handed to the core |
//! | `drop request RPC PEER` / `drop response RPC PEER` | `ok {"dropped":N}` |
//! | `step observer-fetch PEER` | `ok {"completed":K}` once a Fetch of that observer was handled |
//! | `fire election-timer` | `ok {"role":..,"epoch":..}` after the core's tick |
//!
//! Off unless the flag is given, and only on a loopback address.

use crate::controller_server::ControllerNode;
use crate::raft::{NodeId, Request, Response};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How long a `step` waits before answering with what completed.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// The KRaft RPCs the hold points tell apart (a pre-vote is a Vote request with `pre_vote`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rpc {
    PreVote,
    Vote,
    BeginQuorumEpoch,
    EndQuorumEpoch,
    Fetch,
}

impl Rpc {
    pub const ALL: [Rpc; 5] = [
        Rpc::PreVote,
        Rpc::Vote,
        Rpc::BeginQuorumEpoch,
        Rpc::EndQuorumEpoch,
        Rpc::Fetch,
    ];

    pub fn of(r: &Request) -> Rpc {
        match r {
            Request::Vote { pre_vote: true, .. } => Rpc::PreVote,
            Request::Vote { .. } => Rpc::Vote,
            Request::BeginQuorumEpoch { .. } => Rpc::BeginQuorumEpoch,
            Request::EndQuorumEpoch { .. } => Rpc::EndQuorumEpoch,
            Request::Fetch { .. } => Rpc::Fetch,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Rpc::PreVote => "pre-vote",
            Rpc::Vote => "vote",
            Rpc::BeginQuorumEpoch => "begin-quorum-epoch",
            Rpc::EndQuorumEpoch => "end-quorum-epoch",
            Rpc::Fetch => "fetch",
        }
    }

    pub fn parse(s: &str) -> Option<Rpc> {
        Rpc::ALL.into_iter().find(|r| r.name() == s)
    }
}

#[derive(Default)]
struct LinkState {
    /// The request waiting to be sent (the newest the core sent on this link).
    pending: Option<Request>,
    /// Requests `step request` allowed to go and not taken yet.
    request_grants: u64,
    /// The response that came back and waits to be handed to the core.
    response: Option<(Request, Response)>,
    /// Responses `step response` allowed through, not taken yet.
    response_grants: u64,
    /// Discard the waiting response instead of handing it over.
    drop_response: bool,
    sent: u64,
    answered: u64,
    failed: u64,
    delivered: u64,
    dropped: u64,
}

/// One (peer, RPC) link: a request gate and a response gate.
#[derive(Default)]
pub struct Link {
    state: Mutex<LinkState>,
    changed: Notify,
}

impl Link {
    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// The core sent a request on this link: it waits (replacing an older waiting one).
    pub fn offer(&self, r: Request) {
        self.lock().pending = Some(r);
        self.notify();
    }

    /// Waits until a request may go: one waits and a `step request` granted it.
    pub async fn next_request(&self) -> Request {
        loop {
            let notified = self.changed.notified();
            {
                let mut s = self.lock();
                if s.request_grants > 0 && s.pending.is_some() {
                    s.request_grants -= 1;
                    s.sent += 1;
                    return s.pending.take().expect("checked");
                }
            }
            notified.await;
        }
    }

    /// The request could not be sent (the peer is down): the grant is used up.
    pub fn failed(&self) {
        self.lock().failed += 1;
        self.notify();
    }

    /// The response came back; waits until it may be handed to the core (`Some`) or is
    /// dropped (`None`).
    pub async fn answered(&self, req: Request, resp: Response) -> Option<(Request, Response)> {
        {
            let mut s = self.lock();
            s.response = Some((req, resp));
            s.answered += 1;
        }
        self.notify();
        loop {
            let notified = self.changed.notified();
            {
                let mut s = self.lock();
                if s.drop_response {
                    s.drop_response = false;
                    s.dropped += 1;
                    s.response = None;
                    drop(s);
                    self.notify();
                    return None;
                }
                if s.response_grants > 0 {
                    s.response_grants -= 1;
                    return s.response.take();
                }
            }
            notified.await;
        }
    }

    /// The response was handed to the core.
    pub fn delivered(&self) {
        self.lock().delivered += 1;
        self.notify();
    }

    async fn wait_until(&self, timeout: Duration, mut done: impl FnMut(&LinkState) -> bool) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if done(&self.lock()) {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
    }

    async fn step_request(&self, timeout: Duration) -> String {
        let (answered, failed) = {
            let mut s = self.lock();
            s.request_grants += 1;
            (s.answered, s.failed)
        };
        self.notify();
        self.wait_until(timeout, |s| s.answered > answered || s.failed > failed)
            .await;
        let mut s = self.lock();
        if s.answered > answered {
            "{\"completed\":1}".into()
        } else if s.failed > failed {
            "{\"completed\":0,\"failed\":true}".into()
        } else {
            // Leave no grant behind to fire later, out of the replayer's order.
            s.request_grants = 0;
            "{\"completed\":0}".into()
        }
    }

    async fn step_response(&self, timeout: Duration) -> String {
        let delivered = {
            let mut s = self.lock();
            if s.response.is_none() {
                return "{\"completed\":0,\"waiting\":false}".into();
            }
            s.response_grants += 1;
            s.delivered
        };
        self.notify();
        self.wait_until(timeout, |s| s.delivered > delivered).await;
        let mut s = self.lock();
        if s.delivered > delivered {
            "{\"completed\":1}".into()
        } else {
            s.response_grants = 0;
            "{\"completed\":0}".into()
        }
    }

    fn drop_request(&self) -> u64 {
        u64::from(self.lock().pending.take().is_some())
    }

    fn drop_response(&self) -> u64 {
        let had = {
            let mut s = self.lock();
            let had = s.response.is_some();
            if had {
                s.drop_response = true;
            }
            had
        };
        self.notify();
        u64::from(had)
    }
}

/// Observers' Fetch requests on this controller.
#[derive(Default)]
struct ObserverState {
    grants: BTreeMap<NodeId, u64>,
    handled: BTreeMap<NodeId, u64>,
    refused: u64,
}

/// A controller's hold points.
pub struct ControllerTestControl {
    links: BTreeMap<(NodeId, Rpc), Arc<Link>>,
    observers: Mutex<ObserverState>,
    observers_changed: Notify,
}

#[derive(Serialize)]
struct LinkView {
    peer: NodeId,
    rpc: &'static str,
    /// The waiting request, as the core wrote it.
    pending: Option<String>,
    /// The response waiting to be handed over.
    response: Option<String>,
    sent: u64,
    answered: u64,
    failed: u64,
    delivered: u64,
    dropped: u64,
}

impl ControllerTestControl {
    /// Every link to every other voter starts held.
    pub fn new(peers: impl IntoIterator<Item = NodeId>) -> ControllerTestControl {
        let mut links = BTreeMap::new();
        for p in peers {
            for r in Rpc::ALL {
                links.insert((p, r), Arc::new(Link::default()));
            }
        }
        ControllerTestControl {
            links,
            observers: Mutex::new(ObserverState::default()),
            observers_changed: Notify::new(),
        }
    }

    pub fn link(&self, peer: NodeId, rpc: Rpc) -> Option<Arc<Link>> {
        self.links.get(&(peer, rpc)).cloned()
    }

    fn observers(&self) -> std::sync::MutexGuard<'_, ObserverState> {
        self.observers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether an observer's Fetch that just arrived may be handled (a grant is used up).
    pub fn admit_observer_fetch(&self, peer: NodeId) -> bool {
        let mut s = self.observers();
        match s.grants.get_mut(&peer) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => {
                s.refused += 1;
                false
            }
        }
    }

    /// An admitted observer Fetch was answered.
    pub fn observer_fetch_handled(&self, peer: NodeId) {
        *self.observers().handled.entry(peer).or_default() += 1;
        self.observers_changed.notify_waiters();
    }

    async fn step_observer(&self, peer: NodeId) -> String {
        let before = {
            let mut s = self.observers();
            *s.grants.entry(peer).or_default() += 1;
            s.handled.get(&peer).copied().unwrap_or(0)
        };
        let handled = |s: &ObserverState| s.handled.get(&peer).copied().unwrap_or(0);
        let wait = async {
            loop {
                let notified = self.observers_changed.notified();
                if handled(&self.observers()) > before {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(STEP_TIMEOUT, wait).await;
        let mut s = self.observers();
        let done = handled(&s) - before;
        if done == 0 {
            s.grants.insert(peer, 0);
        }
        format!("{{\"completed\":{done}}}")
    }

    fn links_view(&self) -> Vec<LinkView> {
        self.links
            .iter()
            .map(|((peer, rpc), l)| {
                let s = l.lock();
                LinkView {
                    peer: *peer,
                    rpc: rpc.name(),
                    pending: s.pending.as_ref().map(|r| format!("{r:?}")),
                    response: s.response.as_ref().map(|(_, r)| format!("{r:?}")),
                    sent: s.sent,
                    answered: s.answered,
                    failed: s.failed,
                    delivered: s.delivered,
                    dropped: s.dropped,
                }
            })
            .collect()
    }
}

#[derive(Serialize)]
struct StateView {
    node_id: NodeId,
    role: String,
    epoch: i32,
    voted_for: Option<NodeId>,
    leader: Option<NodeId>,
    high_watermark: i64,
    log_end_offset: i64,
    /// (epoch, control) of every entry, from offset 0.
    log: Vec<(i32, bool)>,
    /// Whether the active controller runs here (the leader's leader-change record committed).
    active: bool,
    observer_fetches_refused: u64,
    links: Vec<LinkView>,
}

fn state_json(node: &ControllerNode, control: &ControllerTestControl) -> String {
    let s = node.test_state();
    let view = StateView {
        node_id: s.node_id,
        role: format!("{:?}", s.role).to_lowercase(),
        epoch: s.epoch,
        voted_for: s.voted_for,
        leader: s.leader,
        high_watermark: s.high_watermark,
        log_end_offset: s.log.len() as i64,
        log: s.log,
        active: s.active,
        observer_fetches_refused: control.observers().refused,
        links: control.links_view(),
    };
    serde_json::to_string(&view).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
}

async fn answer(line: &str, node: &ControllerNode, control: &ControllerTestControl) -> String {
    let words: Vec<&str> = line.split_whitespace().collect();
    let link = |rpc: &str, peer: &str| -> Result<Arc<Link>, String> {
        let r = Rpc::parse(rpc).ok_or_else(|| {
            format!(
                "error unknown RPC {rpc:?} (known: {})",
                Rpc::ALL.map(|r| r.name()).join(", ")
            )
        })?;
        let p: NodeId = peer
            .parse()
            .map_err(|_| format!("error bad peer id {peer:?}"))?;
        control
            .link(p, r)
            .ok_or_else(|| format!("error node {p} is not another voter"))
    };
    match words.as_slice() {
        ["state"] => format!("ok {}", state_json(node, control)),
        ["fire", "election-timer"] => {
            let (role, epoch) = node.fire_election_timer();
            format!(
                "ok {{\"role\":\"{}\",\"epoch\":{epoch}}}",
                format!("{role:?}").to_lowercase()
            )
        }
        ["step", "request", rpc, peer] => match link(rpc, peer) {
            Ok(l) => format!("ok {}", l.step_request(STEP_TIMEOUT).await),
            Err(e) => e,
        },
        ["step", "response", rpc, peer] => match link(rpc, peer) {
            Ok(l) => format!("ok {}", l.step_response(STEP_TIMEOUT).await),
            Err(e) => e,
        },
        ["drop", "request", rpc, peer] => match link(rpc, peer) {
            Ok(l) => format!("ok {{\"dropped\":{}}}", l.drop_request()),
            Err(e) => e,
        },
        ["drop", "response", rpc, peer] => match link(rpc, peer) {
            Ok(l) => format!("ok {{\"dropped\":{}}}", l.drop_response()),
            Err(e) => e,
        },
        ["step", "observer-fetch", peer] => match peer.parse::<NodeId>() {
            Ok(p) => format!("ok {}", control.step_observer(p).await),
            Err(_) => format!("error bad peer id {peer:?}"),
        },
        _ => format!(
            "error unknown command {line:?} (known: state, fire election-timer, step request|response RPC PEER, drop request|response RPC PEER, step observer-fetch PEER)"
        ),
    }
}

/// Serves the controller's control endpoint until the process stops.
pub async fn serve(
    listener: TcpListener,
    node: Arc<ControllerNode>,
    control: Arc<ControllerTestControl>,
) {
    crate::test_control::serve_lines(listener, "controller test control", move |line| {
        let (node, control) = (node.clone(), control.clone());
        async move { answer(&line, &node, &control).await }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(epoch: i32) -> Request {
        Request::Vote {
            candidate_epoch: epoch,
            candidate_id: 1,
            last_offset_epoch: 0,
            last_offset: 0,
            pre_vote: false,
        }
    }

    #[tokio::test]
    async fn a_link_sends_only_the_newest_granted_request_and_holds_its_response() {
        let link = Arc::new(Link::default());
        link.offer(vote(1));
        link.offer(vote(2));
        let l = link.clone();
        // A stand-in peer task: sends what the gate lets go, answers, waits for delivery.
        let task = tokio::spawn(async move {
            let req = l.next_request().await;
            let resp = Response::Vote {
                error: crate::raft::RaftError::None,
                leader_epoch: 2,
                leader_id: None,
                vote_granted: true,
            };
            let got = l.answered(req.clone(), resp).await;
            l.delivered();
            (req, got.is_some())
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(link.lock().sent, 0, "held until stepped");
        assert!(link
            .step_request(Duration::from_secs(5))
            .await
            .contains("\"completed\":1"));
        assert!(link.lock().response.is_some(), "the response waits");
        assert!(link
            .step_response(Duration::from_secs(5))
            .await
            .contains("\"completed\":1"));
        let (req, delivered) = task.await.unwrap();
        assert_eq!(req, vote(2));
        assert!(delivered);
    }

    #[tokio::test]
    async fn a_step_with_nothing_to_send_leaves_no_grant() {
        let link = Link::default();
        assert!(link
            .step_request(Duration::from_millis(30))
            .await
            .contains("\"completed\":0"));
        assert_eq!(link.lock().request_grants, 0);
    }

    #[test]
    fn observer_fetches_pass_only_when_granted() {
        let c = ControllerTestControl::new([2, 3]);
        assert!(!c.admit_observer_fetch(7));
        c.observers().grants.insert(7, 1);
        assert!(c.admit_observer_fetch(7));
        assert!(!c.admit_observer_fetch(7));
        assert_eq!(c.observers().refused, 2);
        assert!(c.link(2, Rpc::PreVote).is_some() && c.link(1, Rpc::Vote).is_none());
    }
}
