"""Wall-clock ticks: event time for partitions where no device speaks.

The leader writes a Tick to every partition of the device and rate topics each
``OTAFLOW_TICK_INTERVAL`` seconds. Timeouts, retries, schedules and rate windows all
run on these (and on device records' own times), never on a worker's clock, so a
test that writes its own ticks can cover days in seconds. ``OTAFLOW_TICK_INTERVAL=0``
turns the ticker off (tests do).
"""

from __future__ import annotations

import time

from otaflow.codec import codec
from streams.app import app, device_events, rate_events, settings

CODEC = codec()


async def send_ticks(now_ms: int) -> None:
    tick = {"event_time": now_ms}
    envelope = CODEC.encode("DeviceEventBatch", {"items": [CODEC.encode("Tick", tick)]})
    rate_tick = CODEC.encode("RateEvent", {"body": ("otaflow.Tick", tick)})
    for partition in range(settings.partitions):
        await device_events.send(key=None, partition=partition, value=envelope)
        await rate_events.send(key=None, partition=partition, value=rate_tick)


if settings.tick_interval_s > 0:

    @app.timer(settings.tick_interval_s, on_leader=True)
    async def wall_clock_ticks() -> None:
        await send_ticks(int(time.time() * 1000))
