"""What every control-plane operation shares: the outcome shape, the store it reads,
parameter helpers and the platform's time and paging formats.

Everything here is pure: no Kafka, no clock, no files.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from otaflow.control.errors import ApiError, invalid, missing

Record = dict[str, Any]

#: The Avro schema of each kind of control-table value, by the key's first segment.
SCHEMAS: dict[str, str] = {
    "firmware": "Firmware",
    "batch": "Batch",
    "job": "ControlJob",
    "product": "ControlProduct",
    "device": "ControlDevice",
    "group": "ControlGroup",
    "module": "ControlModule",
    "apply": "ControlApply",
    "request": "CommandResult",
    "dynamic-by-firmware": "ControlIndex",
    "iotid": "ControlIndex",
    "job-invalid": "ControlIndex",
    "phased": "ControlIndex",
    "open-tasks": "ControlIndex",  # each partition's open-task count of a static batch
    "nonce": "ControlIndex",  # a used signature nonce (streams/command_agent.py)
    "guard": "RolloutGuard",
}


def schema_of_key(key: str) -> str:
    prefix = key.split("/", 1)[0]
    try:
        return SCHEMAS[prefix]
    except KeyError:
        raise KeyError(f"no schema for control key {key!r}") from None


class ControlStore(Protocol):
    """The control table as the plane reads it (the command agent writes it)."""

    def get(self, key: str) -> Record | None: ...

    def scan(self, prefix: str) -> Iterator[tuple[str, Record]]:
        """Every (key, record) whose key starts with ``prefix``, in key order."""
        ...

    def keys(self, prefix: str) -> Iterator[str]:
        """Every key that starts with ``prefix``, in order, without decoding values."""
        ...


class DictStore:
    """An in-memory ControlStore (unit tests, and tools that replay the changelog)."""

    def __init__(self) -> None:
        self.data: dict[str, Record] = {}

    def get(self, key: str) -> Record | None:
        return self.data.get(key)

    def scan(self, prefix: str) -> Iterator[tuple[str, Record]]:
        for key in sorted(self.data):
            if key.startswith(prefix):
                yield key, self.data[key]

    def keys(self, prefix: str) -> Iterator[str]:
        for key, _ in self.scan(prefix):
            yield key

    def apply(self, writes: Mapping[str, Record | None]) -> None:
        for key, record in writes.items():
            if record is None:
                self.data.pop(key, None)
            else:
                self.data[key] = record


@dataclass
class DeviceItem:
    """A device-scoped record for one device's partition of otaflow.device-events."""

    product_key: str
    device_name: str
    schema: str
    record: Record


@dataclass
class TargetSet:
    """BatchTarget records for many devices of one product (sent after the START)."""

    batch_id: str
    product_key: str
    device_names: list[str]
    event_time: int


@dataclass
class Outcome:
    """What one call changes; the command agent applies it whole, or nothing of it.

        ``writes``: control-table keys to set (None deletes). ``batches``: Batch records
        for the compacted batch topic. ``controls``: BatchControl records for every device
        partition and the rate agent (sent first). ``device_items``: records for one
        device's partition, sent after the controls. ``broadcasts``: (schema, record) for
        every device partition (GroupControl). ``targets``: BatchTarget records, grouped
    per partition by the agent, after everything else. ``read_only``: a read; its answer is not
        remembered under the request id.
    """

    data: Any = None
    writes: dict[str, Record | None] = field(default_factory=dict)
    controls: list[Record] = field(default_factory=list)
    batches: list[Record] = field(default_factory=list)
    device_items: list[DeviceItem] = field(default_factory=list)
    broadcasts: list[tuple[str, Record]] = field(default_factory=list)
    targets: list[TargetSet] = field(default_factory=list)
    # (device partition, schema, record): a record for one partition (PhasedQuota).
    partition_items: list[tuple[int, str, Record]] = field(default_factory=list)
    read_only: bool = False
    # (public topic, key, schema, record): records for a public topic (RolloutTrigger).
    public_records: list[tuple[str, str, str, Record]] = field(default_factory=list)
    # Extra top-level fields of the answer (beside RequestId/Success/Code/...).
    top: dict[str, Any] = field(default_factory=dict)


def read(data: Any = None, **top: Any) -> Outcome:
    return Outcome(data=data, read_only=True, top=top)


# -- parameters -----------------------------------------------------------------------


def opt_str(p: Mapping[str, Any], name: str) -> str | None:
    raw = p.get(name)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise invalid(name, "must be a single value")
    return raw


def req_str(p: Mapping[str, Any], name: str) -> str:
    value = opt_str(p, name)
    if value is None:
        raise missing(name)
    return value


def opt_int(p: Mapping[str, Any], name: str, default: int | None = None) -> int | None:
    raw = opt_str(p, name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise invalid(name, f"{raw!r} is not an integer") from None


def opt_bool(p: Mapping[str, Any], name: str, default: bool) -> bool:
    raw = opt_str(p, name)
    if raw is None:
        return default
    lowered = raw.lower()
    if lowered not in ("true", "false"):
        raise invalid(name, f"{raw!r} is not a boolean")
    return lowered == "true"


def opt_list(p: Mapping[str, Any], name: str) -> list[Any]:
    raw = p.get(name)
    if raw is None or raw == "":
        return []
    if not isinstance(raw, list):
        raise invalid(name, f"must be sent as {name}.1, {name}.2, ...")
    return [item for item in raw if item is not None and item != ""]


def str_list(p: Mapping[str, Any], name: str) -> list[str]:
    items = opt_list(p, name)
    for item in items:
        if not isinstance(item, str):
            raise invalid(name, "items must be single values")
    return items


@dataclass(frozen=True)
class Page:
    current: int
    size: int

    def slice(self, items: list[Any]) -> list[Any]:
        start = (self.current - 1) * self.size
        return items[start : start + self.size]

    def top(self, total: int) -> dict[str, int]:
        return {
            "CurrentPage": self.current,
            "PageSize": self.size,
            "PageCount": (total + self.size - 1) // self.size if self.size else 0,
            "Total": total,
        }


def page(p: Mapping[str, Any], max_size: int, default_size: int = 10) -> Page:
    current = opt_int(p, "CurrentPage", 1) or 1
    size = opt_int(p, "PageSize", default_size) or default_size
    if current < 1:
        raise invalid("CurrentPage", "must be at least 1")
    if not 1 <= size <= max_size:
        raise invalid("PageSize", f"must be from 1 to {max_size}")
    return Page(current, size)


# -- formats ----------------------------------------------------------------------------


def utc(ms: int | None) -> str | None:
    """The platform's Utc* fields: ISO-8601 UTC with milliseconds."""
    if ms is None:
        return None
    # A concatenation of two lookups: a task page formats two times per task, and the
    # divmod and format spec this replaced were half of a page's cost (0.7 us per time
    # against 0.28 us; tests/unit/test_api_view_lane.py checks the boundaries).
    return _utc_second(ms // 1000) + _MILLIS[ms % 1000]


_MILLIS = tuple(f".{m:03d}Z" for m in range(1000))


@functools.lru_cache(maxsize=65_536)
def _utc_second(seconds: int) -> str:
    # A task page formats two times per task; a rollout's events crowd into few seconds,
    # so formatting each second once takes strftime off a list call's path.
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


def gmt(ms: int | None) -> str | None:
    """The platform's Gmt* strings: ``yyyy-MM-dd HH:mm:ss`` (UTC here)."""
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def not_found(code: str, message: str) -> ApiError:
    return ApiError(code, message)


def drop_none(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


class OpsBase:
    """Lookups shared by the operation mixins of ``ControlPlane``."""

    store: ControlStore

    def firmware(self, firmware_id: str) -> Record:
        record = self.store.get(f"firmware/{firmware_id}")
        if record is None:
            raise ApiError("iot.ota.FirmwareNotFound", "The specified firmware does not exist.")
        return record

    def batch(self, job_id: str) -> Record:
        record = self.store.get(f"batch/{job_id}")
        if record is None:
            raise ApiError("iot.ota.JobNotExist", "The specified update batch does not exist.")
        return record

    def job(self, job_id: str) -> Record:
        record = self.store.get(f"job/{job_id}")
        if record is None:
            raise ApiError("iot.ota.JobNotExist", "The specified update batch does not exist.")
        return record

    def product(self, product_key: str) -> Record:
        record = self.store.get(f"product/{product_key}")
        if record is None:
            raise ApiError("iot.prod.NotExistedProduct", "The specified product does not exist.")
        return record

    def product_name(self, product_key: str) -> str | None:
        record = self.store.get(f"product/{product_key}")
        return None if record is None else str(record["name"])

    def device(self, product_key: str, device_name: str) -> Record:
        record = self.store.get(f"device/{product_key}/{device_name}")
        if record is None:
            raise ApiError("iot.device.DeviceNotExist", "The specified device does not exist.")
        return record

    def device_of(self, p: Mapping[str, Any]) -> Record:
        """A device named by IotId, or ProductKey + DeviceName (IotId wins)."""
        iot_id = opt_str(p, "IotId")
        if iot_id is not None:
            index = self.store.get(f"iotid/{iot_id}")
            if index is None:
                raise ApiError("iot.device.DeviceNotExist", "The specified device does not exist.")
            product_key, device_name = index["items"]
            return self.device(product_key, device_name)
        return self.device(req_str(p, "ProductKey"), req_str(p, "DeviceName"))

    def group(self, group_id: str) -> Record:
        record = self.store.get(f"group/{group_id}")
        if record is None:
            raise ApiError("iot.group.GroupNotExist", "The specified group does not exist.")
        return record
