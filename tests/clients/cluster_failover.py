#!/usr/bin/env python3
"""confluent-kafka (librdkafka) phases for kcheck's cluster failover test.

create:  create TOPIC with one partition and replication factor 3 (CreateTopics, forwarded
         by the broker to the active controller); wait until it has a leader.
produce: send COUNT messages with acks=all (idempotence off, retries on), printing
         "acked N" as delivery reports arrive, so the Rust test can kill the leader
         mid-run; at the end print a JSON line with every acknowledged value.
consume: read the partition from offset 0 up to its high watermark (no group) and print a
         JSON line with every value read.
"""
import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def create(a):
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    fut = admin.create_topics([NewTopic(a.topic, num_partitions=1, replication_factor=3)])
    fut[a.topic].result(timeout=30)
    deadline = time.time() + 30
    while time.time() < deadline:
        md = admin.list_topics(a.topic, timeout=5)
        t = md.topics.get(a.topic)
        if t is not None and t.error is None and t.partitions and t.partitions[0].leader >= 0:
            print(json.dumps({"created": a.topic, "leader": t.partitions[0].leader}))
            return 0
        time.sleep(0.1)
    print(json.dumps({"error": "topic has no leader"}))
    return 1


def produce(a):
    p = Producer({
        "bootstrap.servers": a.bootstrap,
        "acks": "all",
        "enable.idempotence": False,
        "linger.ms": 2,
        "retries": 1000000,
        "retry.backoff.ms": 100,
        "message.timeout.ms": 60000,
        "request.timeout.ms": 5000,
        "topic.metadata.refresh.interval.ms": 500,
    })
    acked = []
    failures = []

    def report(err, msg):
        if err is not None:
            failures.append(str(err))
        else:
            acked.append(msg.value().decode())
            if len(acked) % 50 == 0:
                print(f"acked {len(acked)}", flush=True)

    for i in range(a.count):
        while True:
            try:
                p.produce(a.topic, value=f"v{i}", on_delivery=report)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        if a.rate > 0:
            time.sleep(1.0 / a.rate)
    left = p.flush(90)
    print(json.dumps({"acked": acked, "undelivered": left, "failures": failures[:5]}), flush=True)
    return 0


def consume(a):
    c = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": "kcheck-failover-reader",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "topic.metadata.refresh.interval.ms": 500,
    })
    tp = TopicPartition(a.topic, 0, 0)
    low, high = c.get_watermark_offsets(tp, timeout=30)
    c.assign([tp])
    values = []
    deadline = time.time() + 60
    next_offset = 0
    while next_offset < high and time.time() < deadline:
        m = c.poll(1.0)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                continue
            print(f"consume error: {m.error()}", file=sys.stderr)
            continue
        values.append(m.value().decode())
        next_offset = m.offset() + 1
    c.close()
    print(json.dumps({"high_watermark": high, "values": values}), flush=True)
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["create", "produce", "consume"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", default="failover")
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=0, help="messages per second (0: as fast as possible)")
    a = ap.parse_args()
    return {"create": create, "produce": produce, "consume": consume}[a.phase](a)


if __name__ == "__main__":
    sys.exit(main())
