"""A member commits what it processed of the partitions it is giving up, inside its
revocation callback, when a second member joins (the handover every consumer relies on to
avoid re-processing).

Expected (Apache Kafka, KIP-429 for cooperative-sticky): the commit succeeds: the revoking
member is still in the group's current generation when it is told to revoke.
Usage: revoke_commit.py BOOTSTRAP [STRATEGY] (STRATEGY: cooperative-sticky | range)
"""
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

boot = sys.argv[1]
strategy = sys.argv[2] if len(sys.argv) > 2 else "cooperative-sticky"
topic = "revoke-" + uuid.uuid4().hex[:8]
group = "revoke-" + uuid.uuid4().hex[:8]
admin = AdminClient({"bootstrap.servers": boot})
admin.create_topics([NewTopic(topic, 6, 1)])[topic].result()
p = Producer({"bootstrap.servers": boot, "linger.ms": 5})
for i in range(6000):
    p.produce(topic, key=str(i).encode(), value=b"x" * 100)
p.flush(30)

CONF = {
    "bootstrap.servers": boot,
    "group.id": group,
    "session.timeout.ms": 6000,
    "partition.assignment.strategy": strategy,
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "fetch.wait.max.ms": 5,
}
results = []
stop = threading.Event()


def member(name):
    c = Consumer(CONF)
    position = {}

    def revoked(consumer, partitions):
        offsets = [tp for tp in consumer.position(partitions) if tp.offset >= 0]
        if not offsets:
            return
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
            results.append((name, "ok", len(offsets)))
        except KafkaException as e:
            results.append((name, e.args[0].name(), len(offsets)))

    c.subscribe([topic], on_revoke=revoked)
    while not stop.is_set():
        m = c.poll(0.05)
        if m is not None and m.error() is None:
            position[m.partition()] = m.offset() + 1
            time.sleep(0.002)  # some work per record, so there is always something to commit
    c.close()


a = threading.Thread(target=member, args=("A",))
a.start()
time.sleep(3)
b = threading.Thread(target=member, args=("B",))
b.start()
time.sleep(10)
stop.set()
a.join()
b.join()
handover = [r for r in results if r[0] == "A"][:1]
print(f"{strategy}: A's commit in its revocation callback when B joined: {handover} "
      f"(all revocation commits: {results})")
