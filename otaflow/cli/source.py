"""``otaflow source``: check a telemetry source file and see how records map, before a
worker reads the topic (``otaflow.report_sources``; the batcher is what applies it).

    otaflow source check sources.toml              the mapping, or what is wrong with it
    otaflow source try sources.toml '{"type": ...}'   how given records map (or stdin)
    otaflow source peek sources.toml --records 20  the topics' latest records, mapped;
                                                   reads only, commits nothing
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

from otaflow.codec import codec
from otaflow.report_sources import (
    ReportSource,
    SourceConfigError,
    SourceMapper,
    Unmappable,
    load_sources,
)


def describe(source: ReportSource) -> list[str]:
    fmt = source.format
    if source.avro_schema is not None:
        fmt += f", schema {source.avro_schema}, framing {source.avro_framing}"
    if source.event_time is None:
        event_time = "the record's Kafka timestamp"
    else:
        event_time = f"{source.event_time} ({source.event_time_unit})"
    lines = [
        f"source {source.name!r}: topic {source.topic} ({fmt})",
        f"  product key  {source.product_key}",
        f"  device name  {source.device_name}",
        f"  module       {source.module or '-'} (else {source.module_default!r})",
        f"  version      {source.version}",
        f"  event time   {event_time}",
    ]
    for label, rules in (("only when", source.only_when), ("skip when", source.skip_when)):
        for path, values in rules:
            lines.append(f"  {label}    {path} in {sorted(values, key=repr)}")
    return lines


def outcome(mapper: SourceMapper, raw: bytes, timestamp_ms: int) -> str:
    """One line: the report a record maps to, 'skipped', or the dead letter's reason."""
    try:
        mapped = mapper.map(raw, timestamp_ms)
    except Unmappable as exc:
        return f"dead letter: {exc}"
    if mapped is None:
        return "skipped (only_when / skip_when)"
    key, value = mapped
    report = codec().decode_as("DeviceReport", value)
    return (
        f"report {key.decode()} module={report['module']} version={report['version']} "
        f"event_time={report['event_time']}"
    )


def run(args: argparse.Namespace) -> int:
    try:
        sources = load_sources(args.file)
    except SourceConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.action == "check":
        for source in sources:
            print("\n".join(describe(source)))
        return 0
    if args.action == "try":
        records = args.records or [line for line in sys.stdin.read().splitlines() if line.strip()]
        for source in sources:
            if source.format != "json":
                print(f"{source.name}: 'try' takes JSON records; use 'peek' for {source.format}")
                continue
            mapper = SourceMapper(source)
            for record in records:
                print(f"{source.name}: {outcome(mapper, record.encode(), 0)}")
        return 0
    return _peek(sources, args.records_per_partition)


def _peek(sources: list[ReportSource], count: int) -> int:
    from confluent_kafka import Consumer, TopicPartition

    from otaflow import config

    settings = config.load()
    consumer: Any = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"otaflow-source-peek-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
        }
    )
    try:
        for source in sources:
            mapper = SourceMapper(source)
            metadata = consumer.list_topics(source.topic, timeout=10).topics.get(source.topic)
            if metadata is None or metadata.error is not None:
                print(f"{source.name}: topic {source.topic} not found")
                continue
            assignment = []
            for p in metadata.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(source.topic, p), 10)
                assignment.append(TopicPartition(source.topic, p, max(low, high - count)))
            consumer.assign(assignment)
            wanted = sum(
                min(count, hi - lo)
                for lo, hi in (
                    consumer.get_watermark_offsets(TopicPartition(source.topic, p), 10)
                    for p in metadata.partitions
                )
            )
            seen = 0
            while seen < wanted:
                msgs = consumer.consume(500, 5.0)
                if not msgs:
                    break
                for msg in msgs:
                    if msg.error() is not None:
                        continue
                    seen += 1
                    where = f"{msg.partition()}/{msg.offset()}"
                    line = outcome(mapper, msg.value() or b"", msg.timestamp()[1])
                    print(f"{source.name} {where}: {line}")
    finally:
        consumer.close()
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "source",
        help="check a telemetry source file (OTAFLOW_REPORT_SOURCES) and how records map",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate the file and print each mapping")
    check.add_argument("file")
    attempt = sub.add_parser("try", help="map records given as arguments (or stdin lines)")
    attempt.add_argument("file")
    attempt.add_argument("records", nargs="*")
    peek = sub.add_parser("peek", help="map the latest records of each source topic")
    peek.add_argument("file")
    peek.add_argument("--records", dest="records_per_partition", type=int, default=10)
    parser.set_defaults(func=run)
    return parser
