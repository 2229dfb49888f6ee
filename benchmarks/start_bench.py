"""One partition's share of a fleet-wide START, in process: the device agent's round
without Kafka, to find and measure the CPU the fan-out scenario spends per device.

    python -m benchmarks.start_bench [--devices 125000] [--runs 5]

The partition holds ``--devices`` plain devices (one module, version reported,
registered), as the ingest scenario leaves them; a static ALL batch with a constant
push rate STARTs over them. Timed per run, in the order the agent does it:

    apply    the envelope: the scan and the byte path's splice (``EnvelopeRun``);
    effects  the task events and queued tasks encoded and handed to a producer;
    writes   the changed states listed and shaped as changelog messages;
    store    the states put in one RocksDB ``WriteBatch`` (as ``TableWriter.store``).

The producer is librdkafka's with no broker reachable: ``produce_batch`` only queues,
as it does in the agent (acknowledgements come later, off the event loop). Figures are
medians over ``--runs``; the fan-out scenario of ``make bench`` runs eight of these
rounds (one per partition), one after the other.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator

from confluent_kafka import Producer
from rocksdict import Options, Rdict, WriteBatch

from otaflow.codec import codec
from otaflow.device_avro import encode_device_state
from otaflow.device_keys import device_key
from otaflow.domain.devices import DeviceState
from otaflow.domain.rate import RateConfig
from otaflow.domain.rate_settings import to_settings
from otaflow.domain.simulation import control_record, make_batch
from streams.device_envelopes import DevicePartition, EnvelopeRun
from streams.envelope_store import EnvelopeStore

CODEC = codec()
PK = "pkBench"
RATE = to_settings(RateConfig.constant(10_000))
T0 = 1_800_000_000_000


def fleet(devices: int) -> dict[bytes, bytes]:
    stored = {}
    for i in range(devices):
        state = DeviceState(PK, f"dev-{i:07d}", online=True, last_seen=T0 - i)
        state.modules = {"default": "1.0"}
        state.registered = True
        stored[device_key(PK, state.device_name).encode()] = encode_device_state(state)
    return dict(sorted(stored.items()))


def one_round(stored: dict[bytes, bytes], producer: Producer, db: Rdict) -> dict[str, float]:
    def scan(prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(stored.items())

    from streams.effects import EffectSender  # imports the app's topics, not Faust's agents

    view = DevicePartition.rebuild(0, [])
    run = EnvelopeRun(view, EnvelopeStore(stored.get, scan), lambda k, v: None)
    batch = make_batch("bench-batch", at=T0, product_key=PK, rate=RATE)
    envelope = {
        "items": [CODEC.encode("BatchControl", control_record("START", batch, T0 + 1))],
        "source_partitions": [-1],
        "source_offsets": [-1],
    }
    figures: dict[str, float] = {}
    start = time.perf_counter()
    run.apply_envelope(envelope, 1)
    figures["apply"] = time.perf_counter() - start

    start = time.perf_counter()
    sender = EffectSender(_settings(), producer)
    sender._copartitioned = True  # as the bench's topics are; no broker here to ask
    sender.send_task_events(run.store.task_events, 0)
    sender.send_queued(run.store.queued, view.watermark)
    sender.send(run.fx, view.watermark, 0)
    figures["effects"] = time.perf_counter() - start

    start = time.perf_counter()
    writes = run.store.writes()
    messages = [{"key": k, "value": v} for k, v in writes]
    producer.produce_batch("bench-changelog", messages, partition=0)
    figures["writes"] = time.perf_counter() - start

    start = time.perf_counter()
    batch_write = WriteBatch(raw_mode=True)
    for key, value in writes:
        if value is not None:
            batch_write.put(key, value)
    db.write(batch_write)
    figures["store"] = time.perf_counter() - start
    figures["devices"] = len(writes)
    producer.purge()
    producer.poll(0)  # the purged records' reports, outside the timings
    return figures


def _settings():  # type: ignore[no-untyped-def]
    from streams.app import settings

    return settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=125_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    stored = fleet(args.devices)
    _settings()  # imported before the first timing
    producer = Producer(
        {
            "bootstrap.servers": "127.0.0.1:9",  # nothing listens: produce only queues
            "queue.buffering.max.messages": 2_000_000,
            "queue.buffering.max.kbytes": 2_097_151,
            "linger.ms": 1000,
            "log_level": 0,
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        options = Options(raw_mode=True)
        db = Rdict(tmp, options)
        runs = [one_round(stored, producer, db) for _ in range(args.runs)]
        db.close()
    names = ("apply", "effects", "writes", "store")
    medians = {name: statistics.median(r[name] for r in runs) for name in names}
    total = sum(medians.values())
    devices = runs[0]["devices"]
    print(f"START over {args.devices:,} plain devices ({devices:,} changed), median of {args.runs}")
    for name in names:
        us = medians[name] / args.devices * 1e6
        print(f"  {name:<8} {medians[name] * 1000:8.1f} ms  {us:6.2f} us/device")
    print(f"  {'total':<8} {total * 1000:8.1f} ms  {total / args.devices * 1e6:6.2f} us/device")


if __name__ == "__main__":
    main()
