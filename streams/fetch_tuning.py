"""Two aiokafka defaults that cost otaflow up to 100-200 ms per hop, set for low latency.

aiokafka's fetcher waits ``prefetch_backoff`` (default 0.1 s, not exposed by
``AIOKafkaConsumer`` nor by Faust) before fetching a partition again while records of
it are still buffered. A report crosses three Faust hops on its way to a notification
(device agent -> rate agent -> device agent), so that default alone put the p99
report-to-notification latency near 300 ms (measured: ~100 ms tails at every hop,
``benchmarks/scenarios.py::latency``). Faust builds the consumer itself, so the only
place to change it is the fetcher's constructor default; this module does that once,
before the app is created. ``fetcher_timeout`` (the fetch routine's longest sleep)
comes down from 0.2 s for the same reason.
"""

from __future__ import annotations

from typing import Any

from aiokafka.consumer import fetcher

# Seconds before re-fetching a partition that still has buffered records.
PREFETCH_BACKOFF_S = 0.005
# Longest sleep of the background fetch routine between checks (aiokafka: 0.2 s).
FETCHER_TIMEOUT_S = 0.02

_original_init = fetcher.Fetcher.__init__


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    kwargs.setdefault("prefetch_backoff", PREFETCH_BACKOFF_S)
    kwargs["fetcher_timeout"] = min(kwargs.get("fetcher_timeout", 0.2), FETCHER_TIMEOUT_S)
    _original_init(self, *args, **kwargs)


def apply() -> None:
    if fetcher.Fetcher.__init__ is not _init:
        fetcher.Fetcher.__init__ = _init
