"""Produce device version reports onto ``ota.device.reports`` (confluent-kafka + fastavro).

    python examples/produce_reports.py --product-key pk1 --devices 10 --version 1.0

The value is an otaflow ``DeviceReport`` in Avro single-object encoding; the key is
``productKey/deviceName``; the partitioner is Kafka's default (murmur2), so a report
lands on the partition its device's state lives on and otaflow's batcher need not
re-hash it. Event time is data: ``event_time`` is the device's clock, in milliseconds.
If your telemetry is already on a topic of your own, map it instead (source file,
see ``telemetry-source.toml``) and produce nothing here.
"""

from __future__ import annotations

import argparse
import time

from avro_single_object import SingleObject
from confluent_kafka import Producer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:19092")
    parser.add_argument("--topic", default="ota.device.reports")
    parser.add_argument("--product-key", required=True)
    parser.add_argument("--devices", type=int, default=10, help="devices dev0..devN-1")
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--module", default="default")
    parser.add_argument("--event-time", type=int, help="ms since the epoch (default: now)")
    args = parser.parse_args(argv)

    reports = SingleObject("DeviceReport")
    producer = Producer({"bootstrap.servers": args.bootstrap, "partitioner": "murmur2_random"})
    at = args.event_time if args.event_time is not None else int(time.time() * 1000)
    for i in range(args.devices):
        report = {
            "product_key": args.product_key,
            "device_name": f"dev{i}",
            "kind": "VERSION",
            "module": args.module,
            "version": args.version,
            "step": None,
            "desc": None,
            "message_id": None,
            "event_time": at,
        }
        key = f"{args.product_key}/dev{i}".encode()
        producer.produce(args.topic, key=key, value=reports.encode(report))
    left = producer.flush(30)
    print(f"produced {args.devices - left} reports to {args.topic}")
    return 1 if left else 0


if __name__ == "__main__":
    raise SystemExit(main())
