"""Follow task statuses on ``ota.task.events.json`` with confluent-kafka, no Avro at all.

    python examples/consume_task_events_json.py --group my-dashboard

Needs ``OTAFLOW_PUBLIC_JSON=1`` on otaflow's workers, which then write every task event
also as JSON, keyed ``productKey/deviceName`` like the Avro topic. The fields are
TaskEvent's (schemas/otaflow.TaskEvent.avsc): task_id, batch_id, product_key,
device_name, module, src_version, dest_version, status, previous_status, progress,
desc, event_time. The same topic reads with ``kcat -C -t ota.task.events.json``.
"""

from __future__ import annotations

import argparse
import json
import time

from confluent_kafka import Consumer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--topic", default="ota.task.events.json")
    parser.add_argument("--group", default="task-events-json-example")
    parser.add_argument("--max-records", type=int, help="stop after this many")
    parser.add_argument("--timeout", type=float, help="stop after this many idle seconds")
    args = parser.parse_args(argv)

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
            event = json.loads(msg.value() or b"{}")
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
