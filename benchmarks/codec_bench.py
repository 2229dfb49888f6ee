"""Avro engines compared on otaflow's hot-path records: reference avro, fastavro, cavro.

    python -m benchmarks.codec_bench

Prints microseconds per record (median of 5 runs) to encode and decode a device
report and a device state, and the speed-up of each over the reference library; then
the device agent's own state encoder (``otaflow.device_avro``) against cavro
from the dataclass, as the agent would otherwise call it.
"""

from __future__ import annotations

import io
import json
import statistics
import time
from collections.abc import Callable

import avro.io
import avro.schema
import fastavro

from otaflow.codec import HEADER_LEN, codec, definition
from otaflow.device_avro import encode_device_state
from otaflow.domain.devices import DeviceState

N = 20_000
RUNS = 5


def per_record_us(fn: Callable[[], object], n: int = N) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(times)


def typical_state() -> DeviceState:
    state = DeviceState("a1Product", "device-000123", online=True, last_seen=1_800_000_000_000)
    state.modules = {"default": "1.0"}
    return state


def samples() -> dict[str, dict[str, object]]:
    state = typical_state()
    return {
        "DeviceReport": {
            "product_key": "a1Product",
            "device_name": "device-000123",
            "kind": "VERSION",
            "module": "default",
            "version": "1.0",
            "step": None,
            "desc": None,
            "message_id": "42",
            "event_time": 1_800_000_000_000,
        },
        "DeviceState": state.to_record(),
    }


def measure(name: str, record: dict[str, object]) -> list[tuple[str, str, float, float, float]]:
    schema = codec().schema(name)
    body = codec().encode(name, record)[HEADER_LEN:]
    reference = avro.schema.parse(json.dumps(definition(schema.parsed)))
    writer, reader = avro.io.DatumWriter(reference), avro.io.DatumReader(reference)

    def avro_encode() -> object:
        buf = io.BytesIO()
        writer.write(record, avro.io.BinaryEncoder(buf))
        return buf.getvalue()

    encodes = (
        per_record_us(avro_encode, N // 10),
        per_record_us(lambda: fastavro.schemaless_writer(io.BytesIO(), schema.parsed, record)),
        per_record_us(lambda: schema.coder.binary_encode(record)),
    )
    decodes = (
        per_record_us(lambda: reader.read(avro.io.BinaryDecoder(io.BytesIO(body))), N // 10),
        per_record_us(lambda: fastavro.schemaless_reader(io.BytesIO(body), schema.parsed)),
        per_record_us(lambda: schema.coder.binary_decode(body)),
    )
    return [(name, "encode", *encodes), (name, "decode", *decodes)]


def run() -> list[tuple[str, str, float, float, float]]:
    return [row for name, record in samples().items() for row in measure(name, record)]


def main() -> int:
    print(
        f"{'record':<14}{'op':<8}{'avro us':>9}{'fastavro us':>13}{'cavro us':>10}"
        f"{'fastavro x':>12}{'cavro x':>9}"
    )
    for name, op, ref, fast, cav in run():
        print(
            f"{name:<14}{op:<8}{ref:>9.2f}{fast:>13.2f}{cav:>10.2f}{ref / fast:>12.1f}"
            f"{ref / cav:>9.1f}"
        )
    state, cavro_state = typical_state(), codec()
    by_cavro = per_record_us(lambda: cavro_state.encode("DeviceState", state.to_record()))
    by_hand = per_record_us(lambda: encode_device_state(state))
    print(
        f"DeviceState from the dataclass: cavro + to_record {by_cavro:.2f} us, "
        f"device_avro {by_hand:.2f} us ({by_cavro / by_hand:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
