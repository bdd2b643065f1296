//! A real three-server Apache ZooKeeper 3.8 ensemble on 127.0.0.1 (Debian's `zookeeper`):
//! it starts from generated configurations, serves a client, and elects a new leader after
//! the leader is killed with SIGKILL. Skips with a notice when ZooKeeper is not installed,
//! unless `CI` is set (`.ci/run` installs it).

use kcheck_reference::zk_ensemble::{available, ZkEnsemble, ZkEnsembleSpec, ZkMode};
use std::path::Path;
use std::time::Duration;
use zookeeper_client as zk;

fn installed() -> bool {
    match available(Path::new("/usr/bin/java")) {
        Ok(()) => true,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: {e}");
            false
        }
        Err(e) => panic!("CI must run the ZooKeeper tests: {e}"),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn connect(connect_string: &str) -> zk::Client {
    zk::Client::connector()
        .with_session_timeout(Duration::from_secs(4))
        .with_connection_timeout(Duration::from_secs(2))
        .connect(connect_string)
        .await
        .unwrap()
}

#[test]
fn ensemble_serves_and_fails_over_after_leader_is_killed() {
    if !installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ensemble = ZkEnsemble::launch(ZkEnsembleSpec::new(3, dir.path())).unwrap();
    let leader = ensemble.leader().expect("a serving quorum has a leader");
    let modes = ensemble.modes();
    assert_eq!(
        modes.values().filter(|m| **m == ZkMode::Follower).count(),
        2,
        "{modes:?}"
    );
    for s in ensemble.servers() {
        assert!(
            s.log_file().exists(),
            "each server logs to its own directory"
        );
    }

    let rt = runtime();
    let cs = ensemble.connect_string();
    rt.block_on(async {
        let client = connect(&cs).await;
        let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        client.create("/kcheck", b"v1", &opts).await.unwrap();
        let stat = client.set_data("/kcheck", b"v2", Some(0)).await.unwrap();
        assert_eq!(stat.version, 1);
        // A version-checked write against a stale version is refused.
        assert_eq!(
            client
                .set_data("/kcheck", b"v3", Some(0))
                .await
                .unwrap_err(),
            zk::Error::BadVersion
        );
        let (data, _) = client.get_data("/kcheck").await.unwrap();
        assert_eq!(data, b"v2");
    });

    ensemble.kill(leader).unwrap();
    assert!(!ensemble.is_running(leader));
    let new_leader = ensemble
        .wait_new_leader(leader, Duration::from_secs(30))
        .unwrap();
    assert_ne!(new_leader, leader);

    rt.block_on(async {
        let client = connect(&cs).await;
        client.sync("/kcheck").await.unwrap();
        let (data, stat) = client.get_data("/kcheck").await.unwrap();
        assert_eq!((data.as_slice(), stat.version), (&b"v2"[..], 1));
        client.set_data("/kcheck", b"v4", Some(1)).await.unwrap();
    });

    // The killed server rejoins as a follower of the new leader.
    ensemble.restart(leader).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ensemble.mode(leader) != ZkMode::Follower {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            ensemble.modes()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ensemble.stop_all(Duration::from_secs(5));
    for id in ensemble.myids() {
        assert!(!ensemble.is_running(id));
    }
}
