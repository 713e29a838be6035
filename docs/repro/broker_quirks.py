"""The dev broker's behaviour on the points docs/architecture.md makes claims about, each
checked with a bare client and printed as one line.

1. fetch hold: records/s a fresh group reads from a pre-produced topic with librdkafka's
   default fetch.wait.max.ms (500) and with 5 ms. A broker that answers a fetch as soon as
   data is there reads both at about the same rate.
2. auto-creation: whether producing to a topic nobody created creates it.
3. configs: what DescribeConfigs says of a topic created with one explicit config.
4. groups: whether ListGroups lists a live group, and what DescribeGroups says of it
   (member count, each member's assignment).
5. resume inside a batch: a group commits an offset in the middle of a producer batch,
   and a new member of the group must read on from exactly there.
6. long poll: how long a record produced to a caught-up consumer (fetch.wait.max.ms=500)
   takes to arrive. A broker that answers a held fetch when data arrives: milliseconds.

Usage: broker_quirks.py BOOTSTRAP
"""
import sys
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition, ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

boot = sys.argv[1]
admin = AdminClient({"bootstrap.servers": boot})
N = 50_000


def create(name, partitions, config=None):
    admin.create_topics([NewTopic(name, partitions, 1, config=config or {})])[name].result()


def produce(topic, n, headers=True):
    p = Producer({"bootstrap.servers": boot, "linger.ms": 5, "enable.idempotence": True})
    payload = b"x" * 300
    for i in range(n):
        while True:
            try:
                p.produce(topic, key=str(i % 500).encode(), value=payload,
                          headers=[("type", b"t"), ("v", b"1")] if headers else None)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
    assert p.flush(60) == 0


def read_rate(topic, n, wait_ms):
    c = Consumer({"bootstrap.servers": boot, "group.id": "rate-" + uuid.uuid4().hex,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "fetch.wait.max.ms": wait_ms})
    c.subscribe([topic])
    got, first = 0, None
    deadline = time.time() + 120
    while got < n and time.time() < deadline:
        for m in c.consume(1000, 0.5):
            if m.error() is None:
                got += 1
                first = first or time.time()
    took = time.time() - (first or time.time())
    c.close()
    return got, (got - 1) / took if took > 0 else 0.0


def fetch_hold():
    topic = "rate-" + uuid.uuid4().hex[:8]
    create(topic, 6)
    produce(topic, N)
    slow = read_rate(topic, N, 500)
    fast = read_rate(topic, N, 5)
    print(f"1. fetch hold: {N} records with 2 headers, fetch.wait.max.ms=500: {slow[0]} read "
          f"at {slow[1]:,.0f}/s; =5: {fast[0]} read at {fast[1]:,.0f}/s "
          f"(ratio {slow[1] / max(fast[1], 1):.2f})")


def auto_create():
    topic = "auto-" + uuid.uuid4().hex[:8]
    p = Producer({"bootstrap.servers": boot, "message.timeout.ms": 5000})
    errors = []
    p.produce(topic, b"v", on_delivery=lambda e, m: errors.append(e))
    p.flush(10)
    listed = topic in admin.list_topics(timeout=5).topics
    print(f"2. auto-creation: delivery error {errors[0] if errors else None}; topic listed: {listed}")


def configs():
    topic = "cfg-" + uuid.uuid4().hex[:8]
    create(topic, 1, {"cleanup.policy": "compact"})
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([res])[res].result()
    shown = {k: v.value for k, v in entries.items()}
    print(f"3. configs: {len(shown)} entries; cleanup.policy={shown.get('cleanup.policy')!r}; "
          f"retention.ms={shown.get('retention.ms')!r}")


def groups():
    topic = "grp-" + uuid.uuid4().hex[:8]
    create(topic, 3)
    produce(topic, 10, headers=False)
    group = "grp-" + uuid.uuid4().hex[:8]
    c = Consumer({"bootstrap.servers": boot, "group.id": group, "auto.offset.reset": "earliest",
                  "fetch.wait.max.ms": 5})
    c.subscribe([topic])
    deadline = time.time() + 30
    while not c.assignment() and time.time() < deadline:
        c.poll(0.1)
    listed = [g.group_id for g in admin.list_consumer_groups().result(timeout=10).valid]
    try:
        d = admin.describe_consumer_groups([group])[group].result(timeout=10)
        described = (f"state {d.state}, {len(d.members)} members, assignments "
                     f"{[len(m.assignment.topic_partitions) for m in d.members]}")
    except Exception as e:  # noqa: BLE001 - the failure is the finding
        described = f"failed: {e}"
    legacy = admin.list_groups(group, timeout=10)
    legacy = [(g.id, len(g.members), [len(m.assignment) for m in g.members]) for g in legacy]
    print(f"4. groups: ListGroups lists it: {group in listed}; DescribeGroups: {described}; "
          f"legacy list_groups: {legacy} (member count, assignment bytes per member)")
    c.close()


def resume_inside_batch():
    topic = "mid-" + uuid.uuid4().hex[:8]
    create(topic, 1)
    p = Producer({"bootstrap.servers": boot, "linger.ms": 50})
    for i in range(100):
        p.produce(topic, str(i).encode())
    p.flush(10)
    group = "mid-" + uuid.uuid4().hex[:8]
    c = Consumer({"bootstrap.servers": boot, "group.id": group, "enable.auto.commit": False})
    c.commit(offsets=[TopicPartition(topic, 0, 37)], asynchronous=False)
    c.close()
    c = Consumer({"bootstrap.servers": boot, "group.id": group, "auto.offset.reset": "earliest",
                  "fetch.wait.max.ms": 5})
    c.subscribe([topic])
    first = None
    deadline = time.time() + 30
    while first is None and time.time() < deadline:
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            first = m.offset()
    c.close()
    print(f"5. resume inside a batch: committed 37 (100 records, one producer batch), "
          f"first record read: {first}")


def long_poll():
    topic = "poll-" + uuid.uuid4().hex[:8]
    create(topic, 1)
    c = Consumer({"bootstrap.servers": boot, "group.id": "poll-" + uuid.uuid4().hex,
                  "auto.offset.reset": "latest", "fetch.wait.max.ms": 500})
    c.subscribe([topic])
    deadline = time.time() + 30
    while not c.assignment() and time.time() < deadline:
        c.poll(0.1)
    for _ in range(10):  # settle into the steady fetch loop
        c.poll(0.1)
    p = Producer({"bootstrap.servers": boot, "linger.ms": 0})
    delays = []
    for _ in range(10):
        sent = time.time()
        p.produce(topic, b"x")
        p.flush(5)
        m = None
        while m is None or m.error() is not None:
            m = c.poll(1.0)
        delays.append((time.time() - sent) * 1000)
    c.close()
    delays.sort()
    print(f"6. long poll: produce-to-consume with fetch.wait.max.ms=500, 10 records: "
          f"median {delays[5]:.0f} ms, max {delays[-1]:.0f} ms")


for check in (long_poll, auto_create, configs, groups, resume_inside_batch, fetch_hold):
    try:
        check()
    except Exception as e:  # noqa: BLE001
        print(f"{check.__name__}: failed: {e}")
