"""Which copy of a component this process is on this host: the lowest free slot.

Running a component several times on one host needs names that differ per copy (an MQTT
client id taken twice makes the broker drop the older connection, every second, both
ways; two workers cannot open one RocksDB directory) yet stay the same across a restart
(an ingress resumes its persistent MQTT session under the same client id; a worker finds
its state again). A process id differs per copy but not across restarts; the slot does
both: each copy holds an exclusive lock on a file per slot for as long as it lives, and
takes the lowest slot no live process holds. The kernel drops the lock when the process
dies, however it dies, so a crashed copy's slot is free for its restart.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import IO

from otaflow import config
from otaflow.config import Settings

# Locks held for the life of the process, per (deployment, component).
_held: dict[tuple[str, str], tuple[int, IO[bytes]]] = {}


def slot(settings: Settings, component: str) -> int:
    """This process's slot for ``component`` of the deployment (0, 1, ...), held until exit."""
    key = (settings.deployment, component)
    if key in _held:
        return _held[key][0]
    directory = config.cache_dir() / "instances"
    directory.mkdir(parents=True, exist_ok=True)
    index = 0
    while True:
        path: Path = directory / f"{settings.deployment}-{component}-{index}.lock"
        handle = path.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            index += 1
            continue
        os.set_inheritable(handle.fileno(), False)
        _held[key] = (index, handle)
        return index


def instance_name(settings: Settings, component: str) -> str:
    """``<deployment>-<component>-<host>-<slot>``: unique among live copies in the
    deployment, the same after a restart on the same host."""
    return f"{settings.deployment}-{component}-{socket.gethostname()}-{slot(settings, component)}"


# Where a worker's batcher finds its worker's state directory (set by streams.worker).
BATCHER_STATE_ENV = "OTAFLOW_BATCHER_STATE_DIR"


def worker_state_dir(settings: Settings) -> Path:
    """This worker copy's state directory: one per slot (two copies cannot open one
    RocksDB database), the same again after a restart."""
    return config.data_dir() / settings.app_id / f"worker-{slot(settings, 'worker')}"
