"""A stream partition with no committed offset is put back at its start after Faust's
seek to committed offsets (``streams.stream_positions``); committed ones are left where
Faust put them, and changelogs are never touched."""

from __future__ import annotations

import asyncio
from typing import Any

from faust.types import TP

from streams.stream_positions import _install

DEVICE_EVENTS_0 = TP("d.otaflow.device-events", 0)
DEVICE_EVENTS_1 = TP("d.otaflow.device-events", 1)
CHANGELOG_1 = TP("d-devices-changelog", 1)


class FakeConsumer:
    """Only what ``_install`` uses: the committed offsets Faust read, and seeks."""

    def __init__(self, committed: dict[TP, int | None]) -> None:
        self.committed = committed
        self._committed_offset: dict[TP, int | None] = {}
        self.positions: dict[TP, int] = {tp: 12 for tp in committed}  # an early fetch
        self.earliest = {tp: 0 for tp in committed}

    def assignment(self) -> set[TP]:
        return set(self.committed)

    async def perform_seek(self) -> None:  # Faust's: committed offsets above 0 only
        for tp, offset in self.committed.items():
            if offset:
                self.positions[tp] = offset
                self._committed_offset[tp] = offset

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.earliest[tp] for tp in tps}

    async def seek(self, tp: TP, offset: int) -> None:
        self.positions[tp] = offset


def test_uncommitted_stream_partitions_are_read_from_their_start() -> None:
    consumer: Any = FakeConsumer({DEVICE_EVENTS_0: 40, DEVICE_EVENTS_1: None, CHANGELOG_1: None})
    _install(consumer)
    _install(consumer)  # once per consumer, however many rebalances
    asyncio.run(consumer.perform_seek())
    assert consumer.positions == {DEVICE_EVENTS_0: 40, DEVICE_EVENTS_1: 0, CHANGELOG_1: 12}


def test_a_partition_whose_log_starts_later_goes_to_its_log_start() -> None:
    consumer: Any = FakeConsumer({DEVICE_EVENTS_1: None})
    consumer.earliest[DEVICE_EVENTS_1] = 7
    _install(consumer)
    asyncio.run(consumer.perform_seek())
    assert consumer.positions[DEVICE_EVENTS_1] == 7


# Faust's side of the wrap is guarded in tests/unit/test_faust_private.py.
