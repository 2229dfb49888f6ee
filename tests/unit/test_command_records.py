"""The command agent's records without Faust: the control table's values, nonce expiry,
an outcome encoded whole before anything is written, and envelopes under the limit."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from otaflow.codec import codec
from otaflow.control.common import Outcome, TargetSet
from streams.command_records import (
    NONCE_TTL_MS,
    NonceExpiry,
    TableControlStore,
    encode_control_value,
    envelopes,
    nonce_key,
    prepare_outcome,
)

CODEC = codec()


def scan_of(table: dict[bytes, bytes]) -> Callable[[bytes], Iterator[tuple[bytes, bytes]]]:
    def scan(prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return iter(sorted((k, v) for k, v in table.items() if k.startswith(prefix)))

    return scan


def test_the_control_store_reads_avro_and_early_json_values_and_deletes() -> None:
    table: dict[bytes, bytes] = {b"iotid/x": b'{"items": ["legacy"]}'}
    store = TableControlStore(table, scan_of(table))
    store.put("iotid/y", {"items": ["a", "b"]})
    assert table[b"iotid/y"] == encode_control_value("iotid/y", {"items": ["a", "b"]})
    assert dict(store.scan("iotid/")) == {
        "iotid/x": {"items": ["legacy"]},
        "iotid/y": {"items": ["a", "b"]},
    }
    store.put("iotid/x", None)
    assert list(store.keys("iotid/")) == ["iotid/y"]


def test_nonces_older_than_their_ttl_are_forgotten_at_most_once_a_minute() -> None:
    table: dict[bytes, bytes] = {}
    now = 10 * NONCE_TTL_MS
    for signed in (now - NONCE_TTL_MS - 1, now - NONCE_TTL_MS + 1, now):
        key = nonce_key(f"{signed:013d}/AK/n{signed}")
        table[key.encode()] = encode_control_value(key, {"items": ["r"]})
    table[b"request/r"] = b"kept"
    expiry = NonceExpiry(table, scan_of(table))
    expiry.purge(now)
    assert len([k for k in table if k.startswith(b"nonce/")]) == 2
    assert b"request/r" in table
    # Within a minute of the last purge nothing is scanned, even what expired since.
    expiry.purge(now + 30_000)
    assert len([k for k in table if k.startswith(b"nonce/")]) == 2
    expiry.purge(now + 60_000)
    assert len([k for k in table if k.startswith(b"nonce/")]) == 1


def test_an_outcome_is_encoded_per_device_partition() -> None:
    outcome = Outcome(
        writes={"iotid/a": {"items": ["x"]}, "iotid/b": None},
        targets=[TargetSet("b1", "pk", ["d1", "d2", "d3"], 5)],
    )
    prepared = prepare_outcome(outcome, lambda key: int(key[-1]) % 2)
    assert [value is None for _, value in prepared.table] == [False, True]
    names = {
        p: [CODEC.decode_as("BatchTarget", item)["device_name"] for item in items]
        for p, items in prepared.per_partition.items()
    }
    assert names == {1: ["d1", "d3"], 0: ["d2"]}


def test_an_outcome_a_record_cannot_hold_fails_while_it_is_prepared() -> None:
    outcome = Outcome(writes={"iotid/a": {"items": [1234]}})  # not a string
    with pytest.raises(ValueError):
        prepare_outcome(outcome, lambda key: 0)


def test_envelopes_stay_under_the_limit_and_keep_every_item_in_order() -> None:
    items = [bytes([i]) * 300 for i in range(10)]
    packed = list(envelopes(items, limit=1000))
    assert all(len(envelope) <= 1000 for envelope in packed)
    assert len(packed) == 4  # three items of 308 counted bytes fit under 1000
    unpacked = [i for e in packed for i in CODEC.decode_as("DeviceEventBatch", e)["items"]]
    assert unpacked == items
