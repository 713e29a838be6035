"""The peer of the aggregation benchmark: Quix Streams computing per-product 1-minute
tumbling windows (views, cart additions, orders, units, revenue) by event time over the
same activity topic, as a team would write it. Run by benches/throughput.rs.

Environment: BROKERS, TOPIC, GROUP, OUTPUT, STATE_DIR.
"""

import os
from datetime import datetime

from quixstreams import Application


def event_time(value, headers, timestamp, timestamp_type):
    # The envelope's `time` (RFC 3339), as aggregation uses it.
    return int(datetime.fromisoformat(value["time"]).timestamp() * 1000)


def initializer(value):
    agg = {"views": 0, "carts": 0, "orders": 0, "units": 0, "revenue_minor": 0}
    return reducer(agg, value)


def reducer(agg, value):
    data = value["data"]
    kind = data["kind"]
    if kind == "product_viewed":
        agg["views"] += 1
    elif kind == "added_to_cart":
        agg["carts"] += 1
    else:
        units = data.get("quantity") or 1
        agg["orders"] += 1
        agg["units"] += units
        agg["revenue_minor"] += units * (data.get("unit_price_minor") or 0)
    return agg


def main():
    app = Application(
        broker_address=os.environ["BROKERS"],
        consumer_group=os.environ["GROUP"],
        auto_offset_reset="earliest",
        commit_interval=1.0,
        state_dir=os.environ["STATE_DIR"],
        # The dev broker holds every fetch for the full wait (as for every client in the
        # benchmark).
        consumer_extra_config={"fetch.wait.max.ms": 5},
        loglevel="WARNING",
    )
    topic = app.topic(
        os.environ["TOPIC"], value_deserializer="json", timestamp_extractor=event_time
    )
    output = app.topic(os.environ["OUTPUT"], value_serializer="json")
    sdf = app.dataframe(topic)
    sdf = (
        sdf.tumbling_window(duration_ms=60_000, grace_ms=300_000)
        .reduce(reducer=reducer, initializer=initializer)
        .final()
    )
    sdf.to_topic(output)
    app.run()


if __name__ == "__main__":
    main()
