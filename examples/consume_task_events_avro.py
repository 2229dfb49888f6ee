"""Follow task statuses on ``ota.task.events`` (Avro) with confluent-kafka and fastavro.

    python examples/consume_task_events_avro.py --group my-dashboard

Each value is a TaskEvent in Avro single-object encoding (``avro_single_object.py``:
two marker bytes, the schema's fingerprint, the body); the key is
``productKey/deviceName``. A record written with a schema this reader does not know
(a later otaflow that added a field) has another fingerprint: it is reported, not
misread.
"""

from __future__ import annotations

import argparse
import time

from avro_single_object import SingleObject
from confluent_kafka import Consumer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--topic", default="ota.task.events")
    parser.add_argument("--group", default="task-events-avro-example")
    parser.add_argument("--max-records", type=int, help="stop after this many")
    parser.add_argument("--timeout", type=float, help="stop after this many idle seconds")
    args = parser.parse_args(argv)

    task_events = SingleObject("TaskEvent")
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([args.topic])
    seen, idle_since = 0, time.monotonic()
    try:
        while args.max_records is None or seen < args.max_records:
            msg = consumer.poll(0.5)
            if msg is None:
                if args.timeout is not None and time.monotonic() - idle_since > args.timeout:
                    break
                continue
            if msg.error():
                print(f"error: {msg.error()}")
                continue
            try:
                event = task_events.decode(msg.value() or b"")
            except ValueError as exc:
                print(f"skipped: {exc}")
                continue
            print(
                f"{(msg.key() or b'').decode()} {event['status']} task={event['task_id']} "
                f"batch={event['batch_id']} {event['src_version']}->{event['dest_version']}",
                flush=True,
            )
            seen, idle_since = seen + 1, time.monotonic()
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
