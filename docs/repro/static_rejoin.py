"""Static membership: a member with a group.instance.id closes (a static member sends no
LeaveGroup) and a new process with the same id joins at once, within the session.

Expected (Apache Kafka, KIP-345): no rebalance; the returning member gets its old
partitions, the other member is never revoked (eager `range` makes any rebalance visible:
it revokes everything).
Usage: static_rejoin.py BOOTSTRAP
"""
import sys
import threading
import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic

boot = sys.argv[1]
topic = "static-" + uuid.uuid4().hex[:8]
group = "static-" + uuid.uuid4().hex[:8]
admin = AdminClient({"bootstrap.servers": boot})
admin.create_topics([NewTopic(topic, 6, 1)])[topic].result()
events = []


def consumer(instance):
    c = Consumer({
        "bootstrap.servers": boot, "group.id": group, "group.instance.id": instance,
        "session.timeout.ms": 6000, "partition.assignment.strategy": "range",
        "auto.offset.reset": "earliest", "fetch.wait.max.ms": 5,
    })
    c.subscribe(
        [topic],
        on_assign=lambda _, ps: events.append((round(time.time() - t0, 1), instance, "assigned", sorted(p.partition for p in ps))),
        on_revoke=lambda _, ps: events.append((round(time.time() - t0, 1), instance, "revoked", sorted(p.partition for p in ps))),
    )
    return c


def poll(c, seconds):
    end = time.time() + seconds
    while time.time() < end:
        c.poll(0.05)


t0 = time.time()
a, b = consumer("pod-0"), consumer("pod-1")
stop = threading.Event()
tb = threading.Thread(target=lambda: [b.poll(0.05) for _ in iter(stop.is_set, True)])
tb.start()
poll(a, 8)
settled = len(events)
a.close()
events.append((round(time.time() - t0, 1), "pod-0", "closed", []))
a2 = consumer("pod-0")
poll(a2, 8)
stop.set()
tb.join()
finished = len(events)
a2.close()
b.close()
print("before the restart:", events[:settled])
print("after:", events[settled:finished])
print("the other member was revoked after the restart:",
      any(e[1] == "pod-1" and e[2] == "revoked" for e in events[settled:finished]))
