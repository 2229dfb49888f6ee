"""Batches (the platform's update "jobs") and the registry a device partition keeps of them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any


class BatchKind(StrEnum):
    STATIC = "STATIC"
    DYNAMIC = "DYNAMIC"


class BatchScope(StrEnum):
    ALL = "ALL"
    TARGETED = "TARGETED"
    REGIONAL = "REGIONAL"
    PHASED = "PHASED"
    GROUP = "GROUP"


class BatchStatus(StrEnum):
    PLANNED = "PLANNED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


@dataclass(frozen=True, slots=True)
class FirmwareOffer:
    firmware_id: str
    version: str
    size: int
    sign: str
    file_path: str
    module: str = "default"
    src_version: str | None = None
    is_diff: bool = False
    sign_method: str = "SHA256"
    md5: str | None = None
    download_protocol: str = "HTTPS"
    udi: str | None = None
    # A package of several files: PackageFile records (name, size, sign, md5, file_path).
    files: tuple[dict[str, Any], ...] = ()

    def to_record(self) -> dict[str, Any]:
        return {
            "firmware_id": self.firmware_id,
            "module": self.module,
            "version": self.version,
            "src_version": self.src_version,
            "is_diff": self.is_diff,
            "size": self.size,
            "sign_method": self.sign_method,
            "sign": self.sign,
            "md5": self.md5,
            "file_path": self.file_path,
            "download_protocol": self.download_protocol,
            "udi": self.udi,
            "files": [dict(f) for f in self.files],
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> FirmwareOffer:
        fields = dict(rec)
        fields["files"] = tuple(rec.get("files") or ())
        return cls(**fields)


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    product_key: str
    firmware: FirmwareOffer
    kind: BatchKind
    scope: BatchScope
    status: BatchStatus
    created_at: int
    updated_at: int
    src_versions: tuple[str, ...] = ()
    region: str | None = None
    group_id: str | None = None
    group_type: str | None = None
    city: str | None = None
    phased_percent_thousandths: int | None = None
    dynamic_mode: int = 1
    need_push: bool = True
    need_confirm: bool = False
    rate: dict[str, Any] | None = None
    retry_interval_minutes: int | None = None
    retry_count: int = 0
    timeout_minutes: int | None = None
    multi_module: bool = False
    overwrite_mode: int = 1
    schedule_start: int | None = None
    schedule_end: int | None = None
    tags: dict[str, str] = field(default_factory=dict)
    strategy_active: bool = True
    # The platform's JobType; VERFIY_FIRMWARE (sic) is a verification batch
    # (CreateOTAVerifyJob), whose tasks' outcomes decide its package's verification.
    job_type: str = "UPGRADE_FIRMWARE"
    # Safe rollouts (otaflow extras): AbortRule records (``domain.abort_rules``), the
    # cohorts whose pushes a rule paused ("*": the whole batch), and the maintenance
    # windows outside which nothing is pushed (``domain.maintenance``).
    abort_rules: tuple[dict[str, Any], ...] = ()
    paused_cohorts: tuple[str, ...] = ()
    maintenance_windows: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        return self.firmware.module

    @property
    def dest_version(self) -> str:
        return self.firmware.version

    @property
    def is_dynamic(self) -> bool:
        return self.kind is BatchKind.DYNAMIC

    @property
    def is_group_based(self) -> bool:
        return self.scope is BatchScope.GROUP

    @property
    def is_running(self) -> bool:
        return self.status is BatchStatus.IN_PROGRESS

    def accepts_version(self, version: str | None) -> bool:
        """Would a device whose module reports ``version`` be updated by this batch?

        The device must have reported a version for the module; devices already on
        the destination are skipped; a differential package only fits its own source
        version; otherwise the source-version filter applies (no filter means any
        reported version).
        """
        if version is None:
            return False  # a module that never reported its version is never matched
        if version == self.dest_version:
            return False
        if self.firmware.is_diff:
            return version == self.firmware.src_version
        if self.src_versions:
            return version in self.src_versions
        return True

    def with_changes(self, **changes: Any) -> Batch:
        return replace(self, **changes)

    def to_record(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "product_key": self.product_key,
            "firmware": self.firmware.to_record(),
            "kind": self.kind.value,
            "scope": self.scope.value,
            "src_versions": list(self.src_versions),
            "region": self.region,
            "group_id": self.group_id,
            "group_type": self.group_type,
            "city": self.city,
            "phased_percent_thousandths": self.phased_percent_thousandths,
            "dynamic_mode": self.dynamic_mode,
            "need_push": self.need_push,
            "need_confirm": self.need_confirm,
            "rate": self.rate,
            "retry_interval_minutes": self.retry_interval_minutes,
            "retry_count": self.retry_count,
            "timeout_minutes": self.timeout_minutes,
            "multi_module": self.multi_module,
            "overwrite_mode": self.overwrite_mode,
            "schedule_start": self.schedule_start,
            "schedule_end": self.schedule_end,
            "tags": dict(self.tags),
            "status": self.status.value,
            "strategy_active": self.strategy_active,
            "job_type": self.job_type,
            "abort_rules": [dict(r) for r in self.abort_rules],
            "paused_cohorts": list(self.paused_cohorts),
            "maintenance_windows": list(self.maintenance_windows),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Batch:
        fields = dict(rec)
        fields["firmware"] = FirmwareOffer.from_record(rec["firmware"])
        fields["kind"] = BatchKind(rec["kind"])
        fields["scope"] = BatchScope(rec["scope"])
        fields["status"] = BatchStatus(rec["status"])
        fields["src_versions"] = tuple(rec["src_versions"])
        fields["tags"] = dict(rec["tags"])
        fields["abort_rules"] = tuple(dict(r) for r in rec.get("abort_rules") or ())
        fields["paused_cohorts"] = tuple(rec.get("paused_cohorts") or ())
        fields["maintenance_windows"] = tuple(rec.get("maintenance_windows") or ())
        return cls(**fields)


class BatchRegistry:
    """The batches one device partition knows, in the order its stream told it.

    Indexed so a device's report only looks at the batches that could match it:
    dynamic batches by (product, module), group-based dynamic batches by product.
    """

    def __init__(self, batches: Iterable[Batch] = ()) -> None:
        self._by_id: dict[str, Batch] = {}
        self._dynamic: dict[tuple[str, str], list[Batch]] = {}
        self._group_based: dict[str, list[Batch]] = {}
        for batch in batches:
            self.put(batch)

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Batch]:
        return iter(list(self._by_id.values()))

    def get(self, batch_id: str) -> Batch | None:
        return self._by_id.get(batch_id)

    def put(self, batch: Batch) -> Batch | None:
        """Add or replace a batch; returns the definition it replaced."""
        old = self._by_id.get(batch.batch_id)
        self._by_id[batch.batch_id] = batch
        if old is not None and old.is_dynamic:
            key = (old.product_key, old.module)
            self._dynamic[key] = [b for b in self._dynamic[key] if b.batch_id != old.batch_id]
            if old.is_group_based:
                self._group_based[old.product_key] = [
                    b for b in self._group_based[old.product_key] if b.batch_id != old.batch_id
                ]
        if batch.is_dynamic:
            self._dynamic.setdefault((batch.product_key, batch.module), []).append(batch)
            if batch.is_group_based:
                self._group_based.setdefault(batch.product_key, []).append(batch)
        return old

    def dynamic_for(self, product_key: str, module: str) -> list[Batch]:
        return self._dynamic.get((product_key, module), [])

    def group_based_for(self, product_key: str) -> list[Batch]:
        """The product's group-based dynamic batches (any status)."""
        return self._group_based.get(product_key, [])
