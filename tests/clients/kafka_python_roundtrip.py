#!/usr/bin/env python3
"""kafka-python round trip against kcheck's broker: produce COUNT messages (acks=all), consume
them back in a subscribing group with manual commits; print a JSON summary."""
import argparse
import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, default=200)
    a = ap.parse_args()
    admin = KafkaAdminClient(bootstrap_servers=a.bootstrap)
    admin.create_topics([NewTopic(a.topic, num_partitions=2, replication_factor=1)])
    admin.close()
    p = KafkaProducer(bootstrap_servers=a.bootstrap, acks="all", enable_idempotence=False)
    futures = [p.send(a.topic, key=f"k{i % 7}".encode(), value=f"v{i}".encode()) for i in range(a.count)]
    offsets = [f.get(timeout=30).offset for f in futures]
    p.close()
    c = KafkaConsumer(a.topic, bootstrap_servers=a.bootstrap, group_id="kp-group",
                      enable_auto_commit=False, auto_offset_reset="earliest")
    got = []
    deadline = time.time() + 60
    while len(got) < a.count and time.time() < deadline:
        for _tp, msgs in c.poll(timeout_ms=500).items():
            got.extend(m.value.decode() for m in msgs)
        c.commit()
    committed = sum(c.committed(tp) or 0 for tp in c.assignment())
    c.close()
    print(json.dumps({"values": got, "max_offset": max(offsets), "committed_total": committed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
