"""Deployment settings, read once from the environment.

Every knob an operator can turn lives here with the reason for its default, so a
newcomer never has to hunt for a stray ``os.environ`` lookup.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote, unquote, urlparse

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


# The dev stack's server key for device secrets (otaflow.edge.credentials); a
# deployment sets its own OTAFLOW_DEVICE_KEY.
DEV_DEVICE_KEY = "otaflow-dev-device-key"
# The dev broker lets in only devices (their DeviceSecret login) and otaflow's own
# processes, which log in as this service user (docs/edge.md); a deployment sets its own
# OTAFLOW_MQTT_SERVICE_USER / OTAFLOW_MQTT_SERVICE_PASSWORD or a whole OTAFLOW_MQTT_URL.
DEV_SERVICE_USER = "otaflow-service"
DEV_SERVICE_PASSWORD = "otaflow-dev-service-password"


def dev_mqtt_port() -> int:
    """The dev broker's device-facing port (OTAFLOW_MQTT_PORT, another one for a second
    dev stack next to the first)."""
    return int(os.environ.get("OTAFLOW_MQTT_PORT", DEFAULT_MQTT_PORT))


def dev_mqtt_url(port: int | None = None) -> str:
    """The dev broker's address, logged in as the service user."""
    user = quote(os.environ.get("OTAFLOW_MQTT_SERVICE_USER", DEV_SERVICE_USER), safe="")
    password = quote(os.environ.get("OTAFLOW_MQTT_SERVICE_PASSWORD", DEV_SERVICE_PASSWORD), safe="")
    return f"mqtt://{user}:{password}@127.0.0.1:{port or dev_mqtt_port()}"


_MQTT_SCHEMES = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}


@dataclass(frozen=True)
class MqttAddress:
    """Where otaflow's MQTT connectors connect, and as whom.

    ``mqtt://host:port`` or ``mqtts://user:password@host:8883`` (TLS; ``ca_file``
    from OTAFLOW_MQTT_CA_FILE, else the system's CAs). A URL part otaflow cannot use
    (a path, a query, an unknown scheme) is refused, never silently dropped.
    """

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None

    @classmethod
    def parse(cls, url: str, ca_file: str | None = None) -> MqttAddress:
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        scheme = parsed.scheme.lower()
        if scheme not in _MQTT_SCHEMES:
            raise ValueError(
                f"MQTT URL {_redacted(url)!r}: scheme must be one of {sorted(_MQTT_SCHEMES)}"
            )
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment or parsed.params:
            raise ValueError(
                f"MQTT URL {_redacted(url)!r}: otaflow uses no path, query or fragment"
            )
        try:
            port = parsed.port or _MQTT_SCHEMES[scheme]
        except ValueError as exc:
            raise ValueError(f"MQTT URL {_redacted(url)!r}: {exc}") from None
        tls = scheme in ("mqtts", "ssl")
        if ca_file and not tls:
            raise ValueError("OTAFLOW_MQTT_CA_FILE is set but the MQTT URL is not mqtts://")
        return cls(
            parsed.hostname or "127.0.0.1",
            port,
            unquote(parsed.username) if parsed.username is not None else None,
            unquote(parsed.password) if parsed.password is not None else None,
            tls,
            ca_file or None,
        )

    @property
    def connect_url(self) -> str:
        """The whole address, credentials included (to hand to another process)."""
        if self.username is None:
            return self.url
        user = quote(self.username, safe="")
        secret = f":{quote(self.password, safe='')}" if self.password is not None else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{secret}@{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """The address for logs: the password is never shown."""
        user = (
            f"{self.username}:***@"
            if self.password
            else f"{self.username}@"
            if self.username
            else ""
        )
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}"


def _redacted(url: str) -> str:
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    if parsed.password is None:
        return url
    return url.replace(f":{parsed.password}@", ":***@", 1)


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
    # Kafka integration (docs/kafka-integration.md): a TOML file naming telemetry topics
    # the batcher maps onto version reports, and whether public output topics also get
    # a JSON copy (``<topic>.json``) for tools that cannot read Avro.
    report_sources: str = ""
    public_json: bool = False
    # Server key device secrets are derived from (otaflow.edge.credentials).
    device_key: str = DEV_DEVICE_KEY
    # Whether the broker reports connects and disconnects (otaflow.edge.presence).
    presence: bool = False
    # Copies of each partition otaflow creates: 1 on the one-broker dev stack, 3 on a
    # cluster, so a broker lost loses no record (and no state: changelogs are topics).
    replication: int = 1

    @property
    def deployment(self) -> str:
        """The deployment's name: what every Kafka, MQTT and state name starts with."""
        return self.app_id

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


# -- deployments ---------------------------------------------------------------------------
#
# OTAFLOW_DEPLOYMENT=NAME is the one setting that keeps deployments on one Kafka, one
# Mosquitto and one host apart: topics are NAME.<topic>, the Faust app id (consumer
# group, changelogs NAME-<table>-changelog, state directory) and every other group,
# client id and MQTT shared-subscription group start with NAME-. A name has neither
# "." nor "-", so no deployment's names are a prefix of another's and `otaflow devstack
# prune --deployment NAME` can tell its topics and groups apart from everyone else's.
DEPLOYMENT_NAME = re.compile(r"^[a-z0-9][a-z0-9_]{0,47}$")
# Not deployment names: the prefix of the throwaway deployments (otaflow.topics), and the
# names whose "NAME." would take in the unnamed deployment's topics (ota.*, otaflow.*)
# and "otaflow", its app id and consumer group.
RESERVED_DEPLOYMENTS = frozenset({"scratch", "ota", "otaflow"})


def check_deployment_name(name: str) -> str:
    if not DEPLOYMENT_NAME.match(name) or name in RESERVED_DEPLOYMENTS:
        raise ValueError(
            f"deployment name {name!r}: use 1-48 lower-case letters, digits or '_' "
            f"(no '.' or '-', not {', '.join(sorted(RESERVED_DEPLOYMENTS))})"
        )
    return name


def deployment_settings(base: Settings, name: str) -> Settings:
    """``base`` as the deployment ``name`` (topic prefix ``name.``, app id ``name``)."""
    return replace(base, topic_prefix=check_deployment_name(name) + ".", app_id=name)


def _deployment_names(env: Mapping[str, str]) -> tuple[str, str]:
    """(topic prefix, app id). OTAFLOW_TOPIC_PREFIX and OTAFLOW_APP_ID, the older
    settings, still win where set; a topic prefix alone no longer shares the default app
    id (and with it consumer groups, changelogs and state) with every other deployment."""
    name = env.get("OTAFLOW_DEPLOYMENT", "")
    if name:
        check_deployment_name(name)
        prefix, app_id = name + ".", name
    else:
        prefix, app_id = "", "otaflow"
    prefix = env.get("OTAFLOW_TOPIC_PREFIX", prefix)
    default_app_id = prefix.rstrip(".-_") if prefix and not name else app_id
    return prefix, env.get("OTAFLOW_APP_ID", default_app_id)


def load() -> Settings:
    env = os.environ
    topic_prefix, app_id = _deployment_names(env)
    api_port = int(env.get("OTAFLOW_API_PORT", DEFAULT_API_PORT))
    package_port = int(env.get("OTAFLOW_PACKAGE_PORT", DEFAULT_PACKAGE_PORT))
    return Settings(
        kafka_bootstrap=env.get("OTAFLOW_KAFKA_BOOTSTRAP", f"127.0.0.1:{DEFAULT_KAFKA_PORT}"),
        mqtt=MqttAddress.parse(
            env.get("OTAFLOW_MQTT_URL") or dev_mqtt_url(),
            env.get("OTAFLOW_MQTT_CA_FILE"),
        ),
        partitions=int(env.get("OTAFLOW_PARTITIONS", DEFAULT_PARTITIONS)),
        topic_prefix=topic_prefix,
        api_port=api_port,
        package_port=package_port,
        package_base_url=env.get("OTAFLOW_PACKAGE_BASE_URL", f"http://127.0.0.1:{package_port}"),
        url_signing_key=env.get("OTAFLOW_URL_SIGNING_KEY", "otaflow-dev-url-key"),
        access_keys=_parse_access_keys(env.get("OTAFLOW_ACCESS_KEYS", "")),
        tick_interval_s=float(env.get("OTAFLOW_TICK_INTERVAL", "1.0")),
        app_id=app_id,
        report_sources=env.get("OTAFLOW_REPORT_SOURCES", ""),
        public_json=env.get("OTAFLOW_PUBLIC_JSON", "") not in ("", "0", "false", "no"),
        device_key=env.get("OTAFLOW_DEVICE_KEY", DEV_DEVICE_KEY),
        presence=env.get("OTAFLOW_PRESENCE", "").lower() in ("1", "true", "on", "yes"),
        replication=int(env.get("OTAFLOW_REPLICATION", "1")),
    )
