"""What every connector process does before its loop: logging, settings, its topics,
and a stop event that SIGINT and SIGTERM set (the loops drain and exit on it)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Sequence

from otaflow import config
from otaflow.config import Settings
from otaflow.topics import TopicSpec, ensure_topics


def start_process(topics_used: Sequence[TopicSpec]) -> tuple[Settings, threading.Event]:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = config.load()
    ensure_topics(settings.kafka_bootstrap, settings, topics_used)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return settings, stop
