"""Which partition a key lives on, computed the way Kafka's Java client does.

Device state lives on the partition its key hashes to with murmur2 (Kafka's default
partitioner, also aiokafka's). Internal senders (rate agent, command agent) address a
device's partition directly, so every producer of device-keyed records must agree.
librdkafka's default is CRC32 ("consistent_random"): confluent-kafka producers in
otaflow therefore set ``partitioner=murmur2_random`` (see ``CONFLUENT_PRODUCER``).
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2

CONFLUENT_PARTITIONER = "murmur2_random"


def partition_for(key: bytes, partitions: int) -> int:
    return (murmur2(key) & 0x7FFFFFFF) % partitions
