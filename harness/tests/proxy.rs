//! The fault-injecting proxy, on 127.0.0.1: traffic passes when healed; `Drop` holds it
//! until the heal (one way or both), `Refuse` resets connections, delay and loss add latency; healing
//! restores service.

use kcheck_harness::proxy::{Direction, LinkFaults, Mode, Proxy};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// An upstream that echoes, and reports every chunk it receives.
async fn echo() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for _ in 0..64 {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                for _ in 0..1024 {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let _ = tx.send(buf[..n].to_vec());
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Sends `msg` and waits up to `wait` for the echo; `None` if nothing (or EOF) came back.
async fn round_trip(s: &mut TcpStream, msg: &[u8], wait: Duration) -> Option<Vec<u8>> {
    s.write_all(msg).await.ok()?;
    let mut buf = vec![0u8; msg.len()];
    match timeout(wait, s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some(buf),
        _ => None,
    }
}

const WAIT: Duration = Duration::from_millis(300);

#[tokio::test]
async fn healed_link_forwards_both_ways() {
    let (up, _) = echo().await;
    let p = Proxy::start(up, 1).await.unwrap();
    assert!(p.local_addr.ip().is_loopback());
    let mut s = TcpStream::connect(p.local_addr).await.unwrap();
    assert_eq!(
        round_trip(&mut s, b"hello", WAIT).await.as_deref(),
        Some(&b"hello"[..])
    );
    p.shutdown();
}

/// `Drop` is a partition as TCP meets it: nothing crosses while it holds, not even a new
/// connection to the upstream, and at the heal what was sent into it crosses whole and in
/// order (a DROP rule's swallowed segments are retransmitted), so no frame is torn.
#[tokio::test]
async fn drop_holds_traffic_until_healed_then_delivers_it_whole() {
    let (up, mut seen) = echo().await;
    let p = Proxy::start(up, 2).await.unwrap();
    let mut s = TcpStream::connect(p.local_addr).await.unwrap();
    assert!(round_trip(&mut s, b"a", WAIT).await.is_some());
    let _ = seen.recv().await;
    p.set(LinkFaults::both(Mode::Drop));
    assert_eq!(round_trip(&mut s, b"b", WAIT).await, None, "partitioned");
    let mut late = TcpStream::connect(p.local_addr).await.unwrap();
    late.write_all(b"frame-of-twelve").await.unwrap();
    tokio::time::sleep(WAIT).await;
    assert!(seen.try_recv().is_err(), "upstream got nothing");
    p.set(LinkFaults::healed());
    let mut one = [0u8; 1];
    timeout(WAIT * 10, s.read_exact(&mut one))
        .await
        .expect("the held byte crosses at the heal")
        .unwrap();
    assert_eq!(&one, b"b");
    let mut frame = [0u8; 15];
    timeout(WAIT * 10, late.read_exact(&mut frame))
        .await
        .expect("the connection opened across the partition reaches the upstream at the heal")
        .unwrap();
    assert_eq!(&frame, b"frame-of-twelve");
    assert_eq!(
        round_trip(&mut s, b"c", WAIT).await.as_deref(),
        Some(&b"c"[..])
    );
    p.shutdown();
}

#[tokio::test]
async fn one_way_partition_delivers_requests_but_not_responses() {
    let (up, mut seen) = echo().await;
    let p = Proxy::start(up, 3).await.unwrap();
    p.set(LinkFaults {
        backward: Direction {
            mode: Mode::Drop,
            ..Direction::default()
        },
        ..LinkFaults::healed()
    });
    let mut s = TcpStream::connect(p.local_addr).await.unwrap();
    assert_eq!(round_trip(&mut s, b"req", WAIT).await, None);
    let got = timeout(WAIT, seen.recv()).await.unwrap().unwrap();
    assert_eq!(got, b"req", "the request crossed the link");
    p.shutdown();
}

#[tokio::test]
async fn refuse_resets_open_and_new_connections() {
    let (up, _) = echo().await;
    let p = Proxy::start(up, 4).await.unwrap();
    let mut s = TcpStream::connect(p.local_addr).await.unwrap();
    assert!(round_trip(&mut s, b"x", WAIT).await.is_some());
    p.set(LinkFaults::both(Mode::Refuse));
    assert_eq!(
        round_trip(&mut s, b"y", WAIT).await,
        None,
        "open connection cut"
    );
    let mut buf = [0u8; 1];
    if let Ok(mut s2) = TcpStream::connect(p.local_addr).await {
        let r = timeout(WAIT, s2.read(&mut buf))
            .await
            .expect("closed at once, not hanging");
        assert!(matches!(r, Ok(0) | Err(_)));
    }
    p.shutdown();
}

#[tokio::test]
async fn delay_and_loss_add_latency_without_losing_bytes() {
    let (up, _) = echo().await;
    let p = Proxy::start(up, 5).await.unwrap();
    let slow = Direction {
        delay: Duration::from_millis(60),
        ..Direction::default()
    };
    p.set(LinkFaults {
        forward: slow,
        backward: Direction::default(),
    });
    let mut s = TcpStream::connect(p.local_addr).await.unwrap();
    let t = Instant::now();
    assert_eq!(
        round_trip(&mut s, b"d", Duration::from_secs(5))
            .await
            .as_deref(),
        Some(&b"d"[..])
    );
    assert!(t.elapsed() >= Duration::from_millis(60));
    let lossy = Direction {
        loss: 1.0,
        rto: Duration::from_millis(80),
        ..Direction::default()
    };
    p.set(LinkFaults {
        forward: lossy,
        backward: Direction::default(),
    });
    let t = Instant::now();
    assert_eq!(
        round_trip(&mut s, b"e", Duration::from_secs(5))
            .await
            .as_deref(),
        Some(&b"e"[..])
    );
    assert!(
        t.elapsed() >= Duration::from_millis(80),
        "a lost segment costs an RTO"
    );
    p.shutdown();
}

/// TCP half-close: requests the proxy read before its client went away (closed, or killed
/// with a reset while an answer was on its way back) still reach the upstream after their
/// delay, as a slow router delivers what it queued. This is how a killed follower's last Fetch
/// reaches its leader after the follower restarted (KIP-903's stale fetch). Before the fix,
/// the answer to the first request failing on the reset client ended the connection and the
/// second request, still held by the delay, was lost.
#[tokio::test]
async fn delayed_requests_reach_the_upstream_after_their_client_is_gone() {
    for reset in [false, true] {
        let (up, mut seen) = echo().await;
        let p = Proxy::start(up, 6).await.unwrap();
        p.set(LinkFaults {
            forward: Direction {
                delay: Duration::from_millis(150),
                ..Direction::default()
            },
            backward: Direction::default(),
        });
        let mut s = TcpStream::connect(p.local_addr).await.unwrap();
        // The proxy reads "one" and holds it; "two" waits behind it.
        s.write_all(b"one").await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        s.write_all(b"two").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The client goes away before either arrived; "one"'s echo then meets a dead client.
        if reset {
            s.set_linger(Some(Duration::ZERO)).unwrap();
        }
        drop(s);
        let mut got = Vec::new();
        while got.len() < 6 {
            match timeout(Duration::from_secs(2), seen.recv()).await {
                Ok(Some(chunk)) => got.extend(chunk),
                _ => break,
            }
        }
        assert_eq!(got, b"onetwo", "reset={reset}");
        p.shutdown();
    }
}
