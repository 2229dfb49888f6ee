"""The batcher's routing: trust murmur2-partitioned sources, catch producers that are not."""

from __future__ import annotations

import zlib

from otaflow.kafka_partitions import partition_for
from streams.batcher import SAMPLE_EVERY, Router

PARTITIONS = 8


def reports(count: int, partitioner: str) -> list[tuple[bytes, bytes, int, int]]:
    out = []
    for i in range(count):
        key = f"pk/d{i}".encode()
        source = (
            partition_for(key, PARTITIONS)
            if partitioner == "murmur2"
            else zlib.crc32(key) % PARTITIONS  # librdkafka's default: CRC32
        )
        out.append((key, b"v", source, i))
    return out


def test_murmur2_partitioned_reports_stay_on_their_partition() -> None:
    router = Router(PARTITIONS, same_partitioning=True)
    routed = router.route(reports(5000, "murmur2"))
    assert all(target == source for _, _, source, _, target in routed)
    assert router.hash_always == set()


def test_a_crc32_producer_is_detected_and_every_key_rehashed_from_that_batch_on() -> None:
    router = Router(PARTITIONS, same_partitioning=True)
    routed = router.route(reports(5000, "crc32"))
    assert all(target == partition_for(key, PARTITIONS) for key, _, _, _, target in routed)
    assert sum(source != target for _, _, source, _, target in routed) > 4000
    assert router.hash_always == set(range(PARTITIONS))


def test_sampling_checks_one_record_in_sample_every() -> None:
    router = Router(PARTITIONS, same_partitioning=True)
    batch = [r for r in reports(SAMPLE_EVERY * 20, "murmur2") if r[2] == 0][: SAMPLE_EVERY + 1]
    assert len(batch) == SAMPLE_EVERY + 1
    # A misrouted record at a position that is not sampled is trusted (the trade-off) ...
    stranger = next(k for k, *_ in reports(100, "murmur2") if partition_for(k, PARTITIONS) != 0)
    unsampled = [*batch[:5], (stranger, b"v", 0, 999), *batch[5:]]
    routed = router.route(unsampled)
    assert routed[5][4] == 0
    assert router.hash_always == set()
    # ... while one at a sampled position (the 64th record after the last check) is caught.
    router = Router(PARTITIONS, same_partitioning=True)
    sampled = [*batch[:SAMPLE_EVERY], (stranger, b"v", 0, 999)]
    routed = router.route(sampled)
    assert routed[-1][4] == partition_for(stranger, PARTITIONS)
    assert router.hash_always == {0}


def test_different_partition_counts_always_hash() -> None:
    router = Router(PARTITIONS, same_partitioning=False)
    routed = router.route([(b"pk/x", b"v", 0, 0)])
    assert routed[0][4] == partition_for(b"pk/x", PARTITIONS)
