"""How otaflow's processes belong to Kafka consumer groups, so a fault costs seconds.

Two settings decide how long a group waits when a member dies:

- **Session timeout**: a member that sends no heartbeat for this long is removed and its
  partitions move to the others. Clients default to 45 s (librdkafka) or Faust's 60 s,
  which was how long a killed worker stalled every rollout and every API write. We use
  the broker's minimum (``group.min.session.timeout.ms``, 6 s by default), with a
  heartbeat every second (at most a third of it, as Kafka asks).
- **Static membership** (KIP-345, ``group.instance.id``): a member that comes back under
  the same instance id takes its old assignment back at once, without a rebalance and
  without waiting for its dead self to time out. The id must be stable across restarts
  and unique among live members, which is exactly what a worker's state directory is
  (README: one ``OTAFLOW_DATA`` per worker on a machine), so the id is created once and
  kept there. A member started on a fresh directory is a new member; its predecessor's
  partitions move after the session timeout.

A static member does not leave the group when it stops, so a gracefully stopped worker's
partitions also wait one session timeout before moving; restarted, it has them back at
once.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

DEFAULT_SESSION_TIMEOUT_S = 6.0


def session_timeout_s() -> float:
    """``OTAFLOW_GROUP_SESSION_TIMEOUT`` (seconds), default 6: the broker's minimum."""
    return float(os.environ.get("OTAFLOW_GROUP_SESSION_TIMEOUT", DEFAULT_SESSION_TIMEOUT_S))


def heartbeat_interval_s() -> float:
    return min(1.0, session_timeout_s() / 3)


def instance_id(state_dir: Path, role: str) -> str:
    """A stable ``group.instance.id`` for the process of ``role`` keeping state in
    ``state_dir``: made once, stored there, the same after every restart."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "group-instance-id"
    try:
        member = path.read_text().strip()
    except FileNotFoundError:
        member = ""
    if not member:
        member = uuid.uuid4().hex[:12]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(member + "\n")
        tmp.replace(path)  # atomic: a crash never leaves half an id
    return f"{role}-{member}"


def librdkafka_group_settings(state_dir: Path | None, role: str) -> dict[str, object]:
    """Consumer settings for a confluent-kafka group member of ``role``; static only when
    it has a state directory of its own to keep its id in."""
    settings: dict[str, object] = {
        "session.timeout.ms": round(session_timeout_s() * 1000),
        "heartbeat.interval.ms": round(heartbeat_interval_s() * 1000),
    }
    if state_dir is not None:
        settings["group.instance.id"] = instance_id(state_dir, role)
    return settings
