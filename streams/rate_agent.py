"""Rate agent: queued tasks in, releases out, at each batch's push rate on event time.

Keyed by batch: every batch has its own meter and FIFO queue, so a batch at 10 per
minute never delays one at 10,000. The metering itself (windows, pacing, variable
steps) is ``otaflow.domain.rate``; the queue, the meter records and the watermark are
``streams.rate_queues`` (no Faust, unit-tested). This module only wires them to the
tables and topics.
"""

from __future__ import annotations

from typing import Any

from otaflow.kafka_partitions import partition_for
from streams.app import app, batch_meters, device_events, push_queue, rate_events, settings
from streams.effects import send_dead_letter
from streams.rate_queues import RateQueues
from streams.table_scan import scan_table_partition


async def send_releases(envelopes: dict[int, bytes]) -> None:
    """Send every partition's envelope, then wait for all to be acknowledged."""
    sent = [
        await device_events.send(key=None, partition=partition, value=envelope)
        for partition, envelope in envelopes.items()
    ]
    for delivery in sent:
        await delivery


queues = RateQueues(
    batch_meters,
    push_queue,
    lambda partition: scan_table_partition(batch_meters, partition),
    lambda key: partition_for(key.encode(), settings.partitions),
    send_releases,
    send_dead_letter,
)


@app.on_partitions_revoked.connect
async def _forget(*args: Any, **kwargs: Any) -> None:
    queues.forget()


@app.on_partitions_assigned.connect
async def _forget_on_assign(*args: Any, **kwargs: Any) -> None:
    queues.forget()


@app.agent(rate_events)
async def rate_agent(stream: Any) -> None:
    async for event in stream.events():
        await queues.process(event.message.partition, event.value)
