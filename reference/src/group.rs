//! Sans-IO classic consumer group coordinator (JoinGroup / SyncGroup / Heartbeat / LeaveGroup,
//! the pre-KIP-848 protocol with client-side assignors).
//!
//! Inputs carry the current time in milliseconds and an opaque request id; JoinGroup and
//! SyncGroup may complete later (when the rebalance completes or the leader sends the
//! assignment), so their results come back as [`Reply`] values addressed by request id. The
//! tokio adapter maps ids to waiting connections.

use std::collections::{BTreeMap, HashMap};

pub type RequestId = u64;

/// Kafka error codes the coordinator returns.
pub mod code {
    pub const NONE: i16 = 0;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    pub group_id: String,
    /// Empty for a new member.
    pub member_id: String,
    pub client_id: String,
    pub protocol_type: String,
    /// (protocol name, subscription metadata), in the member's preference order.
    pub protocols: Vec<(String, Vec<u8>)>,
    pub session_timeout_ms: u64,
    pub rebalance_timeout_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JoinResult {
    pub error: i16,
    pub generation_id: i32,
    pub protocol_type: String,
    pub protocol_name: String,
    pub leader: String,
    pub member_id: String,
    /// (member id, metadata); only the leader receives it.
    pub members: Vec<(String, Vec<u8>)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Join(RequestId, JoinResult),
    Sync(RequestId, i16, Vec<u8>),
}

#[derive(Debug, Clone)]
struct Member {
    client_id: String,
    protocols: Vec<(String, Vec<u8>)>,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    last_heartbeat_ms: u64,
    pending_join: Option<RequestId>,
    pending_sync: Option<RequestId>,
    assignment: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: String,
    protocol: String,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    rebalance_deadline_ms: u64,
}

#[derive(Debug, Default)]
pub struct GroupCoordinator {
    groups: HashMap<String, Group>,
    next_member: u64,
}

impl GroupCoordinator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn state(&self, group: &str) -> Option<(GroupState, i32, usize)> {
        self.groups
            .get(group)
            .map(|g| (g.state, g.generation, g.members.len()))
    }

    pub fn join(&mut self, now: u64, id: RequestId, req: JoinRequest) -> Vec<Reply> {
        let fail = |error| {
            vec![Reply::Join(
                id,
                JoinResult {
                    error,
                    member_id: req.member_id.clone(),
                    ..Default::default()
                },
            )]
        };
        let g = self
            .groups
            .entry(req.group_id.clone())
            .or_insert_with(|| Group {
                state: GroupState::Empty,
                generation: 0,
                protocol_type: req.protocol_type.clone(),
                protocol: String::new(),
                leader: None,
                members: BTreeMap::new(),
                rebalance_deadline_ms: 0,
            });
        if g.state == GroupState::Empty {
            g.protocol_type = req.protocol_type.clone();
        } else if g.protocol_type != req.protocol_type
            || !req.protocols.iter().any(|(p, _)| {
                g.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(q, _)| q == p))
            })
        {
            return fail(code::INCONSISTENT_GROUP_PROTOCOL);
        }
        let member_id = if req.member_id.is_empty() {
            self.next_member += 1;
            format!("{}-{}", req.client_id, self.next_member)
        } else if g.members.contains_key(&req.member_id) {
            req.member_id.clone()
        } else {
            return fail(code::UNKNOWN_MEMBER_ID);
        };
        let member = g.members.entry(member_id).or_insert_with(|| Member {
            client_id: req.client_id.clone(),
            protocols: Vec::new(),
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            last_heartbeat_ms: now,
            pending_join: None,
            pending_sync: None,
            assignment: Vec::new(),
        });
        member.protocols = req.protocols;
        member.session_timeout_ms = req.session_timeout_ms;
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.last_heartbeat_ms = now;
        let mut out = Vec::new();
        // A member re-sending JoinGroup (e.g. after reconnecting) supersedes its older request.
        if let Some(old) = member.pending_join.replace(id) {
            out.push(Reply::Join(
                old,
                JoinResult {
                    error: code::REBALANCE_IN_PROGRESS,
                    ..Default::default()
                },
            ));
        }
        if g.state != GroupState::PreparingRebalance {
            prepare_rebalance(g, now, &mut out);
        }
        maybe_complete_join(g, now, false, &mut out);
        out
    }

    pub fn sync(
        &mut self,
        id: RequestId,
        group: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Vec<u8>)>,
    ) -> Vec<Reply> {
        let Some(g) = self.groups.get_mut(group) else {
            return vec![Reply::Sync(id, code::UNKNOWN_MEMBER_ID, Vec::new())];
        };
        let Some(m) = g.members.get_mut(member_id) else {
            return vec![Reply::Sync(id, code::UNKNOWN_MEMBER_ID, Vec::new())];
        };
        if generation != g.generation {
            return vec![Reply::Sync(id, code::ILLEGAL_GENERATION, Vec::new())];
        }
        match g.state {
            GroupState::Empty | GroupState::PreparingRebalance => {
                vec![Reply::Sync(id, code::REBALANCE_IN_PROGRESS, Vec::new())]
            }
            GroupState::Stable => vec![Reply::Sync(id, code::NONE, m.assignment.clone())],
            GroupState::CompletingRebalance => {
                m.pending_sync = Some(id);
                if g.leader.as_deref() != Some(member_id) {
                    return Vec::new();
                }
                let mut by_member: HashMap<String, Vec<u8>> = assignments.into_iter().collect();
                let mut out = Vec::new();
                for (mid, m) in g.members.iter_mut() {
                    m.assignment = by_member.remove(mid).unwrap_or_default();
                    if let Some(rid) = m.pending_sync.take() {
                        out.push(Reply::Sync(rid, code::NONE, m.assignment.clone()));
                    }
                }
                g.state = GroupState::Stable;
                out
            }
        }
    }

    pub fn heartbeat(&mut self, now: u64, group: &str, member_id: &str, generation: i32) -> i16 {
        let Some(g) = self.groups.get_mut(group) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        let Some(m) = g.members.get_mut(member_id) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        m.last_heartbeat_ms = now;
        if generation != g.generation {
            return code::ILLEGAL_GENERATION;
        }
        match g.state {
            GroupState::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            _ => code::NONE,
        }
    }

    /// Removes members; the rest rebalance. Returns per-member error codes and replies to
    /// requests the removed members left pending.
    pub fn leave(&mut self, now: u64, group: &str, members: &[String]) -> (Vec<i16>, Vec<Reply>) {
        let Some(g) = self.groups.get_mut(group) else {
            return (vec![code::UNKNOWN_MEMBER_ID; members.len()], Vec::new());
        };
        let mut codes = Vec::new();
        let mut out = Vec::new();
        let mut removed = false;
        for mid in members {
            match g.members.remove(mid) {
                Some(m) => {
                    fail_pending(&m, &mut out);
                    removed = true;
                    codes.push(code::NONE);
                }
                None => codes.push(code::UNKNOWN_MEMBER_ID),
            }
        }
        if removed {
            member_set_changed(g, now, &mut out);
        }
        (codes, out)
    }

    /// Commits from a group member must carry its current generation (fencing zombies);
    /// generation -1 with no member id is a standalone (non-group) commit.
    pub fn validate_commit(&self, group: &str, member_id: &str, generation: i32) -> i16 {
        if generation < 0 && member_id.is_empty() {
            return code::NONE;
        }
        let Some(g) = self.groups.get(group) else {
            return code::UNKNOWN_MEMBER_ID;
        };
        if !g.members.contains_key(member_id) {
            return code::UNKNOWN_MEMBER_ID;
        }
        if generation != g.generation {
            return code::ILLEGAL_GENERATION;
        }
        if g.state == GroupState::CompletingRebalance {
            return code::REBALANCE_IN_PROGRESS;
        }
        code::NONE
    }

    /// Expires members whose session timed out and completes overdue rebalances.
    pub fn tick(&mut self, now: u64) -> Vec<Reply> {
        let mut out = Vec::new();
        for g in self.groups.values_mut() {
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| {
                    m.pending_join.is_none()
                        && now.saturating_sub(m.last_heartbeat_ms) > m.session_timeout_ms
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                tracing::info!(member = %id, "group member session expired");
                if let Some(m) = g.members.remove(id) {
                    fail_pending(&m, &mut out);
                }
            }
            if !expired.is_empty() {
                member_set_changed(g, now, &mut out);
            }
            if g.state == GroupState::PreparingRebalance && now >= g.rebalance_deadline_ms {
                maybe_complete_join(g, now, true, &mut out);
            }
        }
        out
    }
}

fn fail_pending(m: &Member, out: &mut Vec<Reply>) {
    if let Some(rid) = m.pending_join {
        out.push(Reply::Join(
            rid,
            JoinResult {
                error: code::UNKNOWN_MEMBER_ID,
                ..Default::default()
            },
        ));
    }
    if let Some(rid) = m.pending_sync {
        out.push(Reply::Sync(rid, code::UNKNOWN_MEMBER_ID, Vec::new()));
    }
}

fn member_set_changed(g: &mut Group, now: u64, out: &mut Vec<Reply>) {
    if g.members.is_empty() {
        g.state = GroupState::Empty;
        g.leader = None;
        return;
    }
    if g.state != GroupState::PreparingRebalance {
        prepare_rebalance(g, now, out);
    }
    maybe_complete_join(g, now, false, out);
}

fn prepare_rebalance(g: &mut Group, now: u64, out: &mut Vec<Reply>) {
    for m in g.members.values_mut() {
        if let Some(rid) = m.pending_sync.take() {
            out.push(Reply::Sync(rid, code::REBALANCE_IN_PROGRESS, Vec::new()));
        }
    }
    let timeout = g
        .members
        .values()
        .map(|m| m.rebalance_timeout_ms)
        .max()
        .unwrap_or(0);
    g.rebalance_deadline_ms = now + timeout;
    g.state = GroupState::PreparingRebalance;
}

/// Completes the join phase once every member rejoined, or at the deadline with those that did.
fn maybe_complete_join(g: &mut Group, _now: u64, deadline_passed: bool, out: &mut Vec<Reply>) {
    let all_joined = g.members.values().all(|m| m.pending_join.is_some());
    if !all_joined && !deadline_passed {
        return;
    }
    g.members.retain(|_, m| m.pending_join.is_some());
    if g.members.is_empty() {
        g.state = GroupState::Empty;
        g.leader = None;
        return;
    }
    g.generation += 1;
    if !g.leader.as_ref().is_some_and(|l| g.members.contains_key(l)) {
        g.leader = g.members.keys().next().cloned();
    }
    let leader = g.leader.clone().unwrap_or_default();
    // The first protocol of the leader's list that every member supports.
    let candidates = g.members[&leader].protocols.clone();
    g.protocol = candidates
        .iter()
        .map(|(p, _)| p.clone())
        .find(|p| {
            g.members
                .values()
                .all(|m| m.protocols.iter().any(|(q, _)| q == p))
        })
        .unwrap_or_default();
    let metadata: Vec<(String, Vec<u8>)> = g
        .members
        .iter()
        .map(|(id, m)| {
            let md = m
                .protocols
                .iter()
                .find(|(q, _)| *q == g.protocol)
                .map(|(_, md)| md.clone());
            (id.clone(), md.unwrap_or_default())
        })
        .collect();
    for (id, m) in g.members.iter_mut() {
        if let Some(rid) = m.pending_join.take() {
            let _ = &m.client_id;
            out.push(Reply::Join(
                rid,
                JoinResult {
                    error: code::NONE,
                    generation_id: g.generation,
                    protocol_type: g.protocol_type.clone(),
                    protocol_name: g.protocol.clone(),
                    leader: leader.clone(),
                    member_id: id.clone(),
                    members: if *id == leader {
                        metadata.clone()
                    } else {
                        Vec::new()
                    },
                },
            ));
        }
    }
    g.state = GroupState::CompletingRebalance;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(member: &str) -> JoinRequest {
        JoinRequest {
            group_id: "g".into(),
            member_id: member.into(),
            client_id: "c".into(),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), vec![1]), ("roundrobin".into(), vec![2])],
            session_timeout_ms: 1000,
            rebalance_timeout_ms: 5000,
        }
    }

    fn join_result(r: &[Reply], id: RequestId) -> JoinResult {
        r.iter()
            .find_map(|x| match x {
                Reply::Join(i, j) if *i == id => Some(j.clone()),
                _ => None,
            })
            .expect("join reply")
    }

    #[test]
    fn two_members_rebalance_and_sync() {
        let mut c = GroupCoordinator::new();
        let a = join_result(&c.join(0, 1, join("")), 1);
        assert_eq!((a.error, a.generation_id, a.members.len()), (0, 1, 1));
        assert_eq!(
            c.sync(
                2,
                "g",
                &a.member_id,
                1,
                vec![(a.member_id.clone(), vec![9])]
            ),
            vec![Reply::Sync(2, 0, vec![9])]
        );
        // B joins: A must rejoin before generation 2 forms.
        let r = c.join(10, 3, join(""));
        assert!(r.is_empty(), "waits for A");
        assert_eq!(
            c.heartbeat(11, "g", &a.member_id, 1),
            code::REBALANCE_IN_PROGRESS
        );
        let r = c.join(12, 4, join(&a.member_id));
        let ja = join_result(&r, 4);
        let jb = join_result(&r, 3);
        assert_eq!(
            (ja.generation_id, jb.generation_id, ja.leader.clone()),
            (2, 2, a.member_id.clone())
        );
        assert_eq!(
            (
                ja.members.len(),
                jb.members.len(),
                ja.protocol_name.as_str()
            ),
            (2, 0, "range")
        );
        assert!(
            c.sync(5, "g", &jb.member_id, 2, vec![]).is_empty(),
            "follower waits for leader"
        );
        let r = c.sync(
            6,
            "g",
            &a.member_id,
            2,
            vec![
                (a.member_id.clone(), vec![1]),
                (jb.member_id.clone(), vec![2]),
            ],
        );
        assert!(r.contains(&Reply::Sync(5, 0, vec![2])) && r.contains(&Reply::Sync(6, 0, vec![1])));
        assert_eq!(
            c.validate_commit("g", &jb.member_id, 1),
            code::ILLEGAL_GENERATION
        );
        assert_eq!(c.validate_commit("g", &jb.member_id, 2), code::NONE);
        // B's session expires: A alone forms generation 3 after rejoining.
        assert!(c.heartbeat(900, "g", &a.member_id, 2) == code::NONE);
        c.tick(1500);
        assert_eq!(c.state("g"), Some((GroupState::PreparingRebalance, 2, 1)));
        let j = join_result(&c.join(1600, 7, join(&a.member_id)), 7);
        assert_eq!((j.generation_id, j.members.len()), (3, 1));
        let (codes, _) = c.leave(1700, "g", std::slice::from_ref(&a.member_id));
        assert_eq!(codes, vec![0]);
        assert_eq!(c.state("g").map(|s| s.0), Some(GroupState::Empty));
    }

    #[test]
    fn repeated_join_supersedes_the_pending_one() {
        let mut c = GroupCoordinator::new();
        let a = join_result(&c.join(0, 1, join("")), 1);
        c.sync(2, "g", &a.member_id, 1, vec![]);
        assert!(c.join(5, 3, join("")).is_empty(), "B waits for A to rejoin");
        let b_id = format!("c-{}", 2);
        let r = c.join(6, 4, join(&b_id));
        assert_eq!(
            join_result(&r, 3).error,
            code::REBALANCE_IN_PROGRESS,
            "B's first request is answered, not leaked"
        );
        let r = c.join(7, 5, join(&a.member_id));
        assert_eq!(
            (
                join_result(&r, 4).generation_id,
                join_result(&r, 5).generation_id
            ),
            (2, 2)
        );
    }

    #[test]
    fn unknown_member_and_overdue_rebalance() {
        let mut c = GroupCoordinator::new();
        assert_eq!(
            join_result(&c.join(0, 1, join("ghost")), 1).error,
            code::UNKNOWN_MEMBER_ID
        );
        let a = join_result(&c.join(0, 2, join("")), 2);
        c.sync(3, "g", &a.member_id, 1, vec![]);
        let r = c.join(100, 4, join(""));
        assert!(r.is_empty());
        // A never rejoins: at the rebalance deadline it is dropped and B forms generation 2.
        let r = c.tick(100 + 5000);
        let b = join_result(&r, 4);
        assert_eq!((b.generation_id, b.leader == b.member_id), (2, true));
        assert_eq!(
            c.heartbeat(5200, "g", &a.member_id, 1),
            code::UNKNOWN_MEMBER_ID
        );
    }
}
