"""Deployment settings, read once from the environment.

Every knob an operator can turn lives here with the reason for its default, so a
newcomer never has to hunt for a stray ``os.environ`` lookup.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

# Loopback ports of the dev stack. Off the usual 9092/1883 so a developer's own
# Kafka or Mosquitto never collides with the one otaflow provisions.
DEFAULT_KAFKA_PORT = 19092
DEFAULT_KAFKA_CONTROLLER_PORT = 19093
DEFAULT_MQTT_PORT = 11883
DEFAULT_API_PORT = 8080
DEFAULT_PACKAGE_PORT = 8081

# Eight partitions: enough for 2-4 workers to share the fleet on a small machine
# without making every empty partition cost a changelog and a tick.
DEFAULT_PARTITIONS = 8


def cache_dir() -> Path:
    """Where downloaded jars, broker data and helper virtualenvs live (outside the repo)."""
    return Path(os.environ.get("OTAFLOW_CACHE", Path.home() / ".cache" / "otaflow"))


def data_dir() -> Path:
    """Where a worker keeps its RocksDB state; losing it only costs a changelog replay."""
    return Path(os.environ.get("OTAFLOW_DATA", cache_dir() / "worker-data"))


def extra_schema_releases() -> list[Path]:
    """Schema folders whose records must be read besides the released ones in
    ``schemas/released/`` (``OTAFLOW_SCHEMA_RELEASES``, ``os.pathsep``-separated): the
    schemas of an unreleased build (a fork, a pre-release) whose state this one takes
    over. See docs/schema-evolution.md."""
    raw = os.environ.get("OTAFLOW_SCHEMA_RELEASES", "")
    return [Path(p) for p in raw.split(os.pathsep) if p]


@dataclass(frozen=True)
class MqttAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> MqttAddress:
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        return cls(parsed.hostname or "127.0.0.1", parsed.port or 1883)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = f"127.0.0.1:{DEFAULT_KAFKA_PORT}"
    mqtt: MqttAddress = field(default_factory=lambda: MqttAddress("127.0.0.1", DEFAULT_MQTT_PORT))
    partitions: int = DEFAULT_PARTITIONS
    topic_prefix: str = ""
    api_port: int = DEFAULT_API_PORT
    package_port: int = DEFAULT_PACKAGE_PORT
    # Public base URL devices use to fetch packages (signed links point here).
    package_base_url: str = f"http://127.0.0.1:{DEFAULT_PACKAGE_PORT}"
    # Secret that signs package download URLs; deployments must set their own.
    url_signing_key: str = "otaflow-dev-url-key"
    access_keys: dict[str, str] = field(default_factory=dict)
    # Wall-clock ticks feed event time when no device speaks; tests turn them off
    # and write ticks themselves so a day of retries passes in a second.
    tick_interval_s: float = 1.0
    app_id: str = "otaflow"

    @property
    def kafka_from_env(self) -> bool:
        return "OTAFLOW_KAFKA_BOOTSTRAP" in os.environ

    @property
    def mqtt_from_env(self) -> bool:
        return "OTAFLOW_MQTT_URL" in os.environ


def _parse_access_keys(raw: str) -> dict[str, str]:
    keys: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        key_id, _, secret = pair.partition(":")
        if key_id and secret:
            keys[key_id] = secret
    return keys


def load() -> Settings:
    env = os.environ
    api_port = int(env.get("OTAFLOW_API_PORT", DEFAULT_API_PORT))
    package_port = int(env.get("OTAFLOW_PACKAGE_PORT", DEFAULT_PACKAGE_PORT))
    return Settings(
        kafka_bootstrap=env.get("OTAFLOW_KAFKA_BOOTSTRAP", f"127.0.0.1:{DEFAULT_KAFKA_PORT}"),
        mqtt=MqttAddress.parse(
            env.get("OTAFLOW_MQTT_URL", f"mqtt://127.0.0.1:{DEFAULT_MQTT_PORT}")
        ),
        partitions=int(env.get("OTAFLOW_PARTITIONS", DEFAULT_PARTITIONS)),
        topic_prefix=env.get("OTAFLOW_TOPIC_PREFIX", ""),
        api_port=api_port,
        package_port=package_port,
        package_base_url=env.get("OTAFLOW_PACKAGE_BASE_URL", f"http://127.0.0.1:{package_port}"),
        url_signing_key=env.get("OTAFLOW_URL_SIGNING_KEY", "otaflow-dev-url-key"),
        access_keys=_parse_access_keys(env.get("OTAFLOW_ACCESS_KEYS", "")),
        tick_interval_s=float(env.get("OTAFLOW_TICK_INTERVAL", "1.0")),
        app_id=env.get("OTAFLOW_APP_ID", "otaflow"),
    )
