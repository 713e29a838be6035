"""A group member is SIGKILLed while records flow; a replacement joins at once.

Expected (Apache Kafka): the replacement is assigned every partition once the dead member's
session (6 s) expires, and reads on from the dead member's commits.
Seen on Tansu 0.6.0 (SQLite): the replacement's first assignment is empty (after ~3 s) and
no rebalance ever follows the dead member's expiry; it reads nothing for the whole wait.
Usage: dead_member_rejoin.py BOOTSTRAP [STRATEGY] (STRATEGY: cooperative-sticky | range)
"""
import os
import signal
import subprocess
import sys
import threading
import time

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

boot = sys.argv[1]
strategy = sys.argv[2] if len(sys.argv) > 2 else "cooperative-sticky"
TOPICS = ["t", "u", "v", "w", "x", "y"]
CONF = {
    "bootstrap.servers": boot,
    "group.id": "g-" + strategy,
    "session.timeout.ms": 6000,
    "max.poll.interval.ms": 15000,
    "partition.assignment.strategy": strategy,
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "fetch.wait.max.ms": 10,
}


def member(name):
    consumer = Consumer(CONF)
    started = time.time()

    def assigned(_, partitions):
        print(f"{name} assigned after {time.time() - started:.1f}s: {len(partitions)} partitions", flush=True)

    consumer.subscribe(TOPICS, on_assign=assigned)
    read = 0
    while True:
        m = consumer.poll(0.1)
        if m is not None and m.error() is None:
            read += 1
            consumer.commit(m, asynchronous=True)
            if read % 1000 == 0:
                print(f"{name} read {read}", flush=True)


if len(sys.argv) > 3 and sys.argv[3] == "member":
    member(sys.argv[4])
    sys.exit()

admin = AdminClient({"bootstrap.servers": boot})
for f in admin.create_topics([NewTopic(t, 3, 1) for t in TOPICS]).values():
    f.result()
producer = Producer({"bootstrap.servers": boot})


def produce():
    for i in range(4000):
        producer.produce("t", key=str(i), value=b"x" * 300)
        if i % 50 == 0:
            producer.flush()
            time.sleep(0.05)
    producer.flush()
    print("produced 4000", flush=True)


threading.Thread(target=produce).start()
me = [sys.executable, __file__, boot, strategy, "member"]
a = subprocess.Popen(me + ["A"])
time.sleep(3)
a.send_signal(signal.SIGKILL)
a.wait()
print("A killed", flush=True)
b = subprocess.Popen(me + ["B"])
try:
    b.wait(timeout=60)
except subprocess.TimeoutExpired:
    print("B: 60 s over")
    b.kill()
