"""Wall-clock ticks: event time for partitions where no device speaks.

Each worker writes a Tick, every ``OTAFLOW_TICK_INTERVAL`` seconds, to the partitions
of the device and rate topics it owns (so ticking scales out with the workers and
needs no leader). Timeouts, retries, schedules and rate windows all run on these
(and on device records' own times), never on a worker's clock, so a test that writes
its own ticks can cover days in seconds. ``OTAFLOW_TICK_INTERVAL=0`` turns the ticker
off (tests do).
"""

from __future__ import annotations

import time

from otaflow.codec import codec
from streams.app import app, device_events, rate_events, settings

CODEC = codec()


def owned_partitions(topic_name: str) -> list[int]:
    return sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == topic_name)


async def send_ticks(now_ms: int) -> None:
    tick = {"event_time": now_ms}
    envelope = CODEC.encode("DeviceEventBatch", {"items": [CODEC.encode("Tick", tick)]})
    rate_tick = CODEC.encode("RateEvent", {"body": ("otaflow.Tick", tick)})
    for partition in owned_partitions(device_events.get_topic_name()):
        await device_events.send(key=None, partition=partition, value=envelope)
    for partition in owned_partitions(rate_events.get_topic_name()):
        await rate_events.send(key=None, partition=partition, value=rate_tick)


if settings.tick_interval_s > 0:

    @app.timer(settings.tick_interval_s)
    async def wall_clock_ticks() -> None:
        await send_ticks(int(time.time() * 1000))
