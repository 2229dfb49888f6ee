"""Read every key of one table partition, without touching the other partitions.

When a batch starts, each device partition matches its own devices: the fleet is
scanned in parallel by whoever owns each partition, never by one worker. Faust's
RocksDB store keeps one database per partition, which is what makes this cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from otaflow.kafka_partitions import partition_for
from streams.faust_private import FAUST_OFFSET_KEY, partition_db


def scan_table_partition(
    table: Any, partition: int, prefix: bytes = b""
) -> Iterator[tuple[bytes, bytes]]:
    db = partition_db(table, partition)
    if db is not None:
        for key, value in db.items(from_key=prefix) if prefix else db.items():
            if prefix and not key.startswith(prefix):
                break
            if key != FAUST_OFFSET_KEY and value is not None:
                yield key, value
        return
    # Memory store (unit tests): filter by the partition the key hashes to.
    for key, value in list(table.data.items()):
        if key.startswith(prefix) and partition_for(key, table.partitions) == partition:
            yield key, value
