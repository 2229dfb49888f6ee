"""Produce JSON telemetry onto a topic of your own, as a fleet's backend might.

    python examples/produce_telemetry_json.py --topic fleet.telemetry --product-key pk1

otaflow reads this topic itself when a source file maps it (``telemetry-source.toml``,
``OTAFLOW_REPORT_SOURCES``): no producer onto ``ota.device.reports`` is involved. The
records here mix firmware reports with heartbeats, which the example mapping skips.
"""

from __future__ import annotations

import argparse
import json
import time

from confluent_kafka import Producer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--topic", default="fleet.telemetry")
    parser.add_argument("--product-key", required=True)
    parser.add_argument("--devices", type=int, default=10, help="devices sensor0..sensorN-1")
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--event-time", type=int, help="ms since the epoch (default: now)")
    args = parser.parse_args(argv)

    producer = Producer({"bootstrap.servers": args.bootstrap})
    at = args.event_time if args.event_time is not None else int(time.time() * 1000)
    for i in range(args.devices):
        device = {"product": args.product_key, "name": f"sensor{i}"}
        firmware = {"type": "firmware", "device": device, "ts": at}
        firmware["firmware"] = {"module": "default", "version": args.version}
        heartbeat = {"type": "heartbeat", "device": device, "ts": at, "battery": 0.93}
        # Keyed as the team already keys it (the device name): otaflow re-partitions.
        for record in (firmware, heartbeat):
            producer.produce(args.topic, key=device["name"], value=json.dumps(record))
    left = producer.flush(30)
    print(f"produced {2 * args.devices - left} telemetry records to {args.topic}")
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
