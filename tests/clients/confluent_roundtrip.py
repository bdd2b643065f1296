#!/usr/bin/env python3
"""confluent-kafka (librdkafka) client phases for kcheck's broker integration test.

produce: create the topic (CreateTopics), produce COUNT keyed messages with acks=all and
         idempotence off, wait for every delivery report.
consume: join GROUP (subscribe, classic protocol), process up to LIMIT messages committing
         manually (synchronously) exactly what was processed, leave; print a JSON summary.
The Rust test runs these around a broker restart and checks the consumer resumed exactly
after its committed offsets.
"""
import argparse
import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


def produce(a):
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    fut = admin.create_topics([NewTopic(a.topic, num_partitions=a.partitions, replication_factor=1)])
    fut[a.topic].result(timeout=30)
    p = Producer({
        "bootstrap.servers": a.bootstrap,
        "acks": "all",
        "enable.idempotence": False,
        "linger.ms": 5,
        "compression.type": "none",
    })
    failures = []

    def report(err, msg):
        if err is not None:
            failures.append(str(err))

    for i in range(a.count):
        while True:
            try:
                p.produce(a.topic, key=f"key-{i % 97}", value=f"value-{i}", on_delivery=report)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    left = p.flush(60)
    if left or failures:
        print(json.dumps({"error": f"{left} undelivered, failures: {failures[:5]}"}))
        return 1
    print(json.dumps({"produced": a.count}))
    return 0


def consume(a):
    c = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": a.group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10000,
        "partition.assignment.strategy": "range",
    })
    c.subscribe([a.topic])
    values, first_offsets, positions = [], {}, {}
    deadline = time.time() + a.timeout
    idle_until = None
    while time.time() < deadline and len(values) < a.limit:
        msg = c.poll(0.5)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            print(json.dumps({"error": str(msg.error())}))
            return 1
        p = msg.partition()
        first_offsets.setdefault(str(p), msg.offset())
        values.append(msg.value().decode())
        positions[p] = msg.offset() + 1
        if len(values) % 500 == 0 or len(values) == a.limit:
            c.commit(offsets=[TopicPartition(a.topic, q, o) for q, o in positions.items()], asynchronous=False)
    if positions:
        c.commit(offsets=[TopicPartition(a.topic, q, o) for q, o in positions.items()], asynchronous=False)
    # Nothing beyond the limit may arrive when draining: poll a little longer if asked.
    extra = 0
    if a.drain:
        end = time.time() + a.drain
        while time.time() < end:
            msg = c.poll(0.2)
            if msg is not None and not msg.error():
                extra += 1
    committed = {str(tp.partition): tp.offset for tp in c.committed(
        [TopicPartition(a.topic, q) for q in range(a.partitions)], timeout=10)}
    c.close()
    print(json.dumps({"values": values, "first_offsets": first_offsets,
                      "committed": committed, "extra": extra}))
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("phase", choices=["produce", "consume"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--group", default="kcheck-group")
    ap.add_argument("--limit", type=int, default=10000)
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--drain", type=float, default=0)
    a = ap.parse_args()
    return produce(a) if a.phase == "produce" else consume(a)


if __name__ == "__main__":
    sys.exit(main())
