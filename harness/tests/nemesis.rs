//! The network and clock nemeses against real processes and sockets: namespaces with nftables
//! rules cut exactly the links a grudge names and heal them, leaving nothing behind; faketime
//! moves one process's wall clock and nothing else.

use kcheck_harness::nemesis::clock::{self, FakeClock};
use kcheck_harness::nemesis::grudge;
use kcheck_harness::nemesis::netns::{self, NetnsNetwork};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Optional locally, mandatory in CI (like the external clients).
fn require(what: &str, r: Result<(), String>) -> bool {
    match r {
        Ok(()) => true,
        Err(why) if std::env::var_os("CI").is_some() => panic!("{what} is required in CI: {why}"),
        Err(why) => {
            eprintln!("SKIPPED: {what}: {why}");
            false
        }
    }
}

/// Whether a node's namespace can open a TCP connection to `addr` within a short timeout.
fn reaches(net: &NetnsNetwork, from: i32, addr: SocketAddr) -> bool {
    net.enter(from, move || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(300))
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_millis(300)))?;
                s.write_all(b"x")?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b)
            })
            .is_ok()
    })
    .unwrap()
}

#[test]
fn namespaces_partition_exactly_the_grudge_and_clean_up() {
    if !require("network namespaces", netns::available()) {
        return;
    }
    let nodes = [1, 2, 3];
    let net = NetnsNetwork::create(&nodes).expect("create namespaces");
    // An echo server in each node's namespace.
    let mut servers = Vec::new();
    for n in nodes {
        let ip = net.addr(n).unwrap();
        let listener = net
            .enter(n, move || TcpListener::bind((ip, 0)).unwrap())
            .unwrap();
        servers.push(listener.local_addr().unwrap());
        std::thread::spawn(move || {
            for s in listener.incoming().take(64) {
                let Ok(mut s) = s else { continue };
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).is_ok() {
                    let _ = s.write_all(&b);
                }
            }
        });
    }
    assert!(reaches(&net, 2, servers[0]) && reaches(&net, 3, servers[0]));

    net.apply(&grudge::isolate(&nodes, 1)).unwrap();
    assert!(
        !reaches(&net, 2, servers[0]),
        "node 1 drops node 2's packets"
    );
    assert!(
        !reaches(&net, 1, servers[2]),
        "node 3 drops node 1's packets"
    );
    assert!(reaches(&net, 2, servers[2]), "2 and 3 still talk");
    // The harness's own namespace is not part of the partition (Jepsen's control node).
    let a = servers[0];
    assert!(TcpStream::connect_timeout(&a, Duration::from_millis(300)).is_ok());

    net.apply(&grudge::one_way(&[2], &[3])).unwrap();
    assert!(!reaches(&net, 2, servers[2]), "3 drops what 2 sends");
    assert!(
        reaches(&net, 2, servers[0]),
        "the previous partition was replaced"
    );

    net.heal().unwrap();
    assert!(reaches(&net, 2, servers[0]) && reaches(&net, 2, servers[2]));

    let names: Vec<String> = nodes
        .iter()
        .map(|n| net.node(*n).unwrap().namespace.clone())
        .collect();
    drop(net);
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    for name in names {
        assert!(!listed.contains(&name), "{name} was removed");
    }
}

fn date_in(clock: &FakeClock) -> i64 {
    let out = Command::new("date")
        .arg("+%s")
        .envs(clock.env())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn faketime_moves_one_process_wall_clock() {
    if !require("libfaketime", clock::available()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = FakeClock::new(dir.path(), 1).unwrap();
    assert!((date_in(&clock) - now()).abs() <= 2, "no offset at first");
    clock.set_offset_ms(3_600_000).unwrap();
    let skewed = date_in(&clock) - now();
    assert!(
        (3598..=3602).contains(&skewed),
        "bumped by an hour: {skewed}"
    );
    clock.set_offset_ms(-86_400_000).unwrap();
    let behind = date_in(&clock) - now();
    assert!(
        (-86402..=-86398).contains(&behind),
        "a day behind: {behind}"
    );
    // Our own clock is untouched.
    let flips = clock
        .strobe(10_000, Duration::from_millis(5), Duration::from_millis(30))
        .unwrap();
    assert!(flips >= 2);
    assert!(
        (date_in(&clock) - now()).abs() <= 2,
        "a strobe ends with a reset"
    );
}
