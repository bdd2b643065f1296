//! `kcheck bench-broker`: produce throughput and latency of the reference broker over
//! loopback, next to the machine's own limits (fsync'd sequential writes on the data
//! directory's disk, loopback TCP bandwidth), so the broker's figures read as a fraction.

use crate::batch;
use crate::broker::BrokerConfig;
use crate::log::FlushPolicy;
use crate::server::{frame_request, response_body, serve_listener};
use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, ProduceRequest, ProduceResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, HeaderVersion, StrBytes};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub data_dir: PathBuf,
    pub seconds: f64,
    pub in_flight: usize,
    pub records_per_batch: i32,
    pub record_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct ProduceFigures {
    pub acks: i16,
    pub flush: FlushPolicy,
    pub requests: usize,
    pub bytes: u64,
    pub records: u64,
    pub secs: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
}

impl ProduceFigures {
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.secs
    }
    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.secs
    }
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

const PRODUCE_VERSION: i16 = 9;

/// Runs one broker in-process on a free loopback port and drives it with pipelined produce
/// requests (one batch each, up to `in_flight` outstanding) for `seconds`.
pub async fn bench_produce(
    cfg: &BenchConfig,
    acks: i16,
    flush: FlushPolicy,
) -> anyhow::Result<ProduceFigures> {
    let dir = cfg
        .data_dir
        .join(format!("bench-acks{acks}-{flush:?}").replace([' ', '(', ')'], ""));
    let _ = std::fs::remove_dir_all(&dir);
    let mut bc = BrokerConfig::new(dir.clone());
    bc.flush = flush;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_listener(listener, bc, async {
        let _ = stop_rx.await;
    }));
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let topic = TopicName(StrBytes::from_static_str("bench"));
    use kafka_protocol::messages::create_topics_request::CreatableTopic;
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(topic.clone())
            .with_num_partitions(1)
            .with_replication_factor(1)]);
    stream
        .write_all(&frame_request(ApiKey::CreateTopics, 7, 0, &create)?)
        .await?;
    read_frame(&mut stream).await?;
    let mut f = drive_produce(stream, "bench", cfg, acks).await?;
    f.flush = flush;
    let _ = stop_tx.send(());
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(f)
}

/// Drives pipelined produce requests (one batch each, up to `in_flight` outstanding) at the
/// partition 0 leader behind `stream` for `cfg.seconds`; latency is request-to-response.
pub async fn drive_produce(
    stream: TcpStream,
    topic: &str,
    cfg: &BenchConfig,
    acks: i16,
) -> anyhow::Result<ProduceFigures> {
    let topic = TopicName(StrBytes::from_string(topic.to_owned()));
    let records = batch::build(0, cfg.records_per_batch, cfg.record_bytes, 0);
    let batch_len = records.len() as u64;
    let produce = ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic)
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(Bytes::from(records)))])]);
    let (mut rd, mut wr) = stream.into_split();
    let permits = Arc::new(Semaphore::new(cfg.in_flight));
    // The writer tells the reader when each request went out; responses arrive in order.
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(cfg.seconds);
    let writer = {
        let permits = permits.clone();
        let frame = frame_request(ApiKey::Produce, PRODUCE_VERSION, 1, &produce)?;
        tokio::spawn(async move {
            // At least one request, so a zero-second run checks the partition accepts it.
            let mut first = true;
            while first || Instant::now() < until {
                first = false;
                let Ok(p) = permits.acquire().await else {
                    break;
                };
                p.forget();
                let t0 = Instant::now();
                if wr.write_all(&frame).await.is_err() || sent_tx.send(t0).is_err() {
                    break;
                }
            }
        })
    };
    let mut latencies = Vec::new();
    let mut received = 0usize;
    while let Some(t0) = sent_rx.recv().await {
        let frame = read_frame_split(&mut rd).await?;
        latencies.push(t0.elapsed().as_micros() as u64);
        permits.add_permits(1);
        let (_, mut body) = response_body(frame, ProduceResponse::header_version(PRODUCE_VERSION))?;
        let r = ProduceResponse::decode(&mut body, PRODUCE_VERSION)?;
        let code = r
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .map_or(-1, |p| p.error_code);
        anyhow::ensure!(code == 0, "produce failed with error code {code}");
        received += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = writer.await;
    latencies.sort_unstable();
    Ok(ProduceFigures {
        acks,
        flush: FlushPolicy::Never,
        requests: received,
        bytes: received as u64 * batch_len,
        records: received as u64 * cfg.records_per_batch as u64,
        secs,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        p999_us: percentile(&latencies, 0.999),
    })
}
async fn read_frame(s: &mut TcpStream) -> anyhow::Result<Bytes> {
    let n = s.read_i32().await?;
    anyhow::ensure!(n >= 0, "negative frame");
    let mut buf = vec![0u8; n as usize];
    s.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

async fn read_frame_split(s: &mut tokio::net::tcp::OwnedReadHalf) -> anyhow::Result<Bytes> {
    let n = s.read_i32().await?;
    anyhow::ensure!(n >= 0, "negative frame");
    let mut buf = vec![0u8; n as usize];
    s.read_exact(&mut buf).await?;
    Ok(Bytes::from(buf))
}

/// Sequential write throughput on `dir`'s disk: (a) 1 MiB writes with one fsync at the end,
/// (b) `block` byte writes each followed by fdatasync (what `--flush always` pays per batch).
pub fn disk_limits(dir: &Path, block: usize, seconds: f64) -> anyhow::Result<(f64, f64, f64)> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("bench-disk.tmp");
    let chunk = vec![0x5au8; 1 << 20];
    let mut f = std::fs::File::create(&path)?;
    let start = Instant::now();
    let mut written = 0u64;
    while start.elapsed().as_secs_f64() < seconds && written < (2 << 30) {
        f.write_all(&chunk)?;
        written += chunk.len() as u64;
    }
    f.sync_all()?;
    let seq_mb_s = written as f64 / 1e6 / start.elapsed().as_secs_f64();
    drop(f);
    let small = vec![0xa5u8; block];
    let mut f = std::fs::File::create(&path)?;
    let start = Instant::now();
    let mut syncs = 0u64;
    while start.elapsed().as_secs_f64() < seconds && syncs < 1_000_000 {
        f.write_all(&small)?;
        f.sync_data()?;
        syncs += 1;
    }
    let el = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok((
        seq_mb_s,
        syncs as f64 / el,
        syncs as f64 * block as f64 / 1e6 / el,
    ))
}

/// Loopback TCP bandwidth: one writer, one reader, 1 MiB writes.
pub async fn loopback_limit(seconds: f64) -> anyhow::Result<f64> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    let reader = tokio::spawn(async move {
        let (mut s, _) = l.accept().await?;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                return Ok::<u64, std::io::Error>(total);
            }
            total += n as u64;
        }
    });
    let mut s = TcpStream::connect(addr).await?;
    let chunk = vec![7u8; 1 << 20];
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        s.write_all(&chunk).await?;
    }
    s.shutdown().await?;
    drop(s);
    let total = reader.await??;
    Ok(total as f64 / 1e6 / start.elapsed().as_secs_f64())
}

/// The replicated cluster: `kcheck broker` processes (3 brokers, 1 controller) on loopback,
/// a topic with replication factor 3 and min.insync.replicas 2, acks=all produce at the
/// partition leader (each request waits for the ISR's fetches to move the HW).
pub async fn bench_cluster(cfg: &BenchConfig) -> anyhow::Result<ProduceFigures> {
    use crate::cluster::{ClusterSpec, ClusterState};
    let dir = cfg.data_dir.join("bench-cluster");
    let _ = std::fs::remove_dir_all(&dir);
    let spec = ClusterSpec {
        brokers: 3,
        controllers: 1,
        data_dir: dir.clone(),
        executable: std::env::current_exe()?,
        broker_args: vec!["--min-insync-replicas".into(), "2".into()],
        controller_args: Vec::new(),
        ready_timeout: Duration::from_secs(60),
    };
    let state = tokio::task::block_in_place(|| -> anyhow::Result<ClusterState> {
        let state = ClusterState::start(&spec)?;
        if let Err(e) = state.wait_ready(spec.ready_timeout) {
            state.stop_all(Duration::from_secs(5));
            return Err(e);
        }
        Ok(state)
    })?;
    let result = async {
        let any = state
            .brokers()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no broker"))?
            .address
            .clone();
        let mut s = TcpStream::connect(&any).await?;
        use kafka_protocol::messages::create_topics_request::CreatableTopic;
        let create = CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![CreatableTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("bench")))
                .with_num_partitions(1)
                .with_replication_factor(3)]);
        s.write_all(&frame_request(ApiKey::CreateTopics, 7, 0, &create)?)
            .await?;
        read_frame(&mut s).await?;
        // The partition leader, once every replica is in the ISR.
        let deadline = Instant::now() + Duration::from_secs(30);
        let leader = loop {
            let any2 = any.clone();
            let m = tokio::task::spawn_blocking(move || crate::cluster::metadata(&any2)).await??;
            let p = m
                .topics
                .first()
                .and_then(|t| t.partitions.first())
                .filter(|p| p.leader_id.0 >= 0 && p.isr_nodes.len() == 3);
            if let Some(p) = p {
                let b = m
                    .brokers
                    .iter()
                    .find(|b| b.node_id == p.leader_id)
                    .ok_or_else(|| anyhow::anyhow!("leader not among the brokers"))?;
                break format!("{}:{}", b.host.as_str(), b.port);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "topic bench got no full ISR in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The leader may apply the image a moment after the broker that answered Metadata:
        // one acks=all request must succeed before the clock starts.
        let warm = BenchConfig {
            seconds: 0.0,
            in_flight: 1,
            ..cfg.clone()
        };
        let mut ready = false;
        for _ in 0..100 {
            let stream = TcpStream::connect(&leader).await?;
            if drive_produce(stream, "bench", &warm, -1).await.is_ok() {
                ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::ensure!(
            ready,
            "the leader of topic bench refused acks=all produce for 10 s"
        );
        let stream = TcpStream::connect(&leader).await?;
        stream.set_nodelay(true)?;
        drive_produce(stream, "bench", cfg, -1).await
    }
    .await;
    tokio::task::block_in_place(|| state.stop_all(Duration::from_secs(10)));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Runs the whole benchmark and prints a report; returns the produce figures.
pub async fn run(cfg: &BenchConfig) -> anyhow::Result<Vec<ProduceFigures>> {
    let batch_bytes = batch::build(0, cfg.records_per_batch, cfg.record_bytes, 0).len();
    println!(
        "kcheck bench-broker: {} records x {} B per batch ({} B on the wire), {} in flight, {:.1} s per run, data dir {}",
        cfg.records_per_batch,
        cfg.record_bytes,
        batch_bytes,
        cfg.in_flight,
        cfg.seconds,
        cfg.data_dir.display()
    );
    let (seq, syncs, sync_mb) = disk_limits(&cfg.data_dir, batch_bytes, cfg.seconds.min(3.0))?;
    let lo = loopback_limit(cfg.seconds.min(2.0)).await?;
    println!("machine: sequential write+fsync {seq:.0} MB/s; {batch_bytes} B write+fdatasync {syncs:.0}/s = {sync_mb:.1} MB/s; loopback TCP {lo:.0} MB/s");
    println!(
        "{:<6} {:<7} {:>9} {:>12} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "acks", "flush", "MB/s", "records/s", "p50 us", "p99 us", "p999 us", "%loopback", "%disk"
    );
    let mut all = Vec::new();
    for flush in [FlushPolicy::Never, FlushPolicy::Always] {
        for acks in [1i16, -1] {
            let f = bench_produce(cfg, acks, flush).await?;
            let disk = if flush == FlushPolicy::Always {
                sync_mb
            } else {
                seq
            };
            println!(
                "{:<6} {:<7} {:>9.1} {:>12.0} {:>9} {:>9} {:>9} {:>9.1}% {:>9.1}%",
                if acks == -1 { "all" } else { "1" },
                if flush == FlushPolicy::Always {
                    "always"
                } else {
                    "never"
                },
                f.mb_per_s(),
                f.records_per_s(),
                f.p50_us,
                f.p99_us,
                f.p999_us,
                100.0 * f.mb_per_s() / lo,
                100.0 * f.mb_per_s() / disk,
            );
            all.push(f);
        }
    }
    let f = bench_cluster(cfg).await?;
    println!(
        "{:<6} {:<7} {:>9.1} {:>12.0} {:>9} {:>9} {:>9} {:>9.1}% {:>9.1}%   <- cluster: 3 broker processes, RF=3, min.insync.replicas=2",
        "all",
        "never",
        f.mb_per_s(),
        f.records_per_s(),
        f.p50_us,
        f.p99_us,
        f.p999_us,
        100.0 * f.mb_per_s() / lo,
        100.0 * f.mb_per_s() / seq,
    );
    all.push(f);
    println!("(%disk compares flush=never with fsync'd sequential writes and flush=always with per-batch write+fdatasync; the cluster writes every byte three times to the same disk)");
    Ok(all)
}
