"""After every rebalance, a stream partition nobody has committed yet is read from its
start, not from wherever an early fetch left it.

Faust (faust-streaming 0.15.3 over aiokafka; its private parts through
``streams.faust_private``) fetches a newly assigned partition while
its tables recover, drops the records it fetched (the partition is not active yet) and
then "seeks stream partitions to committed offsets" -- but aiokafka's
``seek_to_committed`` moves only partitions with a committed offset above 0. A
partition its last owner never committed (a worker SIGKILLed seconds after it was
assigned the partition) therefore resumed after the dropped records: in the scaled
test a killed worker's envelopes of progress and version reports were never applied on
the new owner and their devices stayed NOTIFIED with every group caught up.

Seeking those partitions to their earliest offset is what ``auto_offset_reset``
(earliest) means; the records before the last owner's unrecorded position are applied
again, which the agents are built for (source offsets, task ids, releases checked
against the state).
"""

from __future__ import annotations

import logging
from typing import Any

from streams import faust_private
from streams.app import app

log = logging.getLogger("otaflow.worker")


def _is_changelog(topic: str) -> bool:
    return topic.endswith("-changelog")


async def _seek_uncommitted_to_start(consumer: Any, committed: dict[Any, Any]) -> None:
    streams = {tp for tp in consumer.assignment() if not _is_changelog(tp.topic)}
    uncommitted = [tp for tp in streams if not (committed.get(tp) or 0) > 0]
    if not uncommitted:
        return
    earliest = await consumer.earliest_offsets(*uncommitted)
    for tp in sorted(uncommitted):
        await consumer.seek(tp, earliest.get(tp) or 0)
    log.debug("read from the start (nothing committed): %s", sorted(uncommitted))


def _install(consumer: Any) -> None:
    """Faust calls ``perform_seek`` after recovery and whenever it drops a fetch made
    while its flow is stopped; both must put uncommitted partitions back at the start."""

    async def seek_uncommitted_to_start() -> None:
        await _seek_uncommitted_to_start(consumer, faust_private.committed_offsets(consumer))

    faust_private.wrap_perform_seek(consumer, seek_uncommitted_to_start)


@app.on_partitions_assigned.connect
async def _on_assigned(*args: Any, **kwargs: Any) -> None:
    _install(app.consumer)
