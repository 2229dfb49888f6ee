"""Keeps the broker's list of registered devices: the registry -> a file of ``pk&dn``.

The auth plugin (``otaflow/edge/otaflow_auth.c``, ``plugin_opt_devices_file``) lets
in only devices listed in this file, so ``DeleteDevice`` revokes a device's secret
within about a second, and a device never registered is refused even with a secret
that checks out. The source is the control plane's changelog
(``<app id>-control-state-changelog``, compacted: it holds the whole registry), read
from its beginning on every start, so the file is a cache that a restart rebuilds.
The file is replaced atomically (write, then rename), and first written once the
changelog has been read to its end, so the broker never sees half a registry.

CLI: ``python -m otaflow.edge.registry_sync --file PATH``.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from otaflow.config import Settings
from otaflow.kafka_security import kafka_client_config

_log = logging.getLogger("otaflow.registry_sync")

DEVICE_KEY_PREFIX = b"device/"
# Registrations in a burst are written together: the plugin re-reads the whole file.
WRITE_EVERY_S = 0.2


def changelog_topic(settings: Settings) -> str:
    """Faust names a table's changelog ``<app id>-<table>-changelog``."""
    return f"{settings.app_id}-control-state-changelog"


def device_of_key(key: bytes) -> str | None:
    """``device/{pk}/{dn}`` -> ``pk&dn`` (None for the registry's other records)."""
    if not key.startswith(DEVICE_KEY_PREFIX):
        return None
    product_key, sep, device_name = key[len(DEVICE_KEY_PREFIX) :].decode().partition("/")
    if not sep or not product_key or not device_name or "/" in device_name:
        return None
    return f"{product_key}&{device_name}"


def write_devices_file(path: Path, devices: set[str]) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text("".join(f"{name}\n" for name in sorted(devices)))
    partial.chmod(0o644)
    partial.replace(path)


class RegistrySync:
    def __init__(self, settings: Settings, path: Path) -> None:
        self.settings = settings
        self.path = path
        self.devices: set[str] = set()
        # Set once the file holds the whole registry as of start-up.
        self.ready = threading.Event()

    def apply(self, key: bytes | None, value: bytes | None) -> bool:
        """One changelog record; True when the set of devices changed."""
        name = device_of_key(key or b"")
        if name is None:
            return False
        if value:
            changed = name not in self.devices
            self.devices.add(name)
        else:
            changed = name in self.devices
            self.devices.discard(name)
        return changed

    def run(self, stop: threading.Event) -> None:
        topic = changelog_topic(self.settings)
        consumer = Consumer(
            {
                **kafka_client_config(self.settings.kafka_bootstrap),
                "group.id": f"{self.settings.app_id}-registry-sync-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        end = self._end_offset(consumer, topic, stop)
        read_to = 0
        dirty = True
        last_write = 0.0
        _log.info("registry sync: %s -> %s", topic, self.path)
        try:
            while not stop.is_set():
                for msg in consumer.consume(num_messages=1000, timeout=0.1):
                    if msg.error() is not None:
                        continue
                    dirty |= self.apply(msg.key(), msg.value())
                    read_to = (msg.offset() or 0) + 1
                caught_up = read_to >= end
                now = time.monotonic()
                if caught_up and dirty and now - last_write >= WRITE_EVERY_S:
                    write_devices_file(self.path, self.devices)
                    dirty, last_write = False, now
                    if not self.ready.is_set():
                        _log.info("registry sync: %d devices registered", len(self.devices))
                        self.ready.set()
        finally:
            consumer.close()

    @staticmethod
    def _end_offset(consumer: Consumer, topic: str, stop: threading.Event) -> int:
        while not stop.is_set():
            try:
                return int(consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5)[1])
            except Exception as exc:  # the changelog appears with the worker's first start
                _log.info("registry sync: waiting for %s (%s)", topic, exc)
                stop.wait(1.0)
        return 0


def main(argv: list[str] | None = None) -> None:
    from connectors.process import start_process

    parser = argparse.ArgumentParser(description="otaflow registry -> broker devices file")
    parser.add_argument("--file", required=True, type=Path, help="the plugin's devices_file")
    args = parser.parse_args(argv)
    settings, stop = start_process([])
    RegistrySync(settings, args.file).run(stop)


if __name__ == "__main__":
    main()
