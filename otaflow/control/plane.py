"""The control plane's rules and state changes, as pure Python.

``ControlPlane.handle(action, params, now)`` validates one RPC call against the
platform's rules and, if it passes, returns what to write: records for the control
state, batch definitions, and the ``BatchControl`` records the engine must see.
Nothing is written when a rule fails (the command agent applies an outcome whole).

The command agent runs it on the single-partition command topic, one command at a
time, so two concurrent calls can never both pass a rule meant for one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from otaflow.api.params import unflatten
from otaflow.control.errors import ApiError, invalid, missing
from otaflow.control.ids import derived_id
from otaflow.domain.batches import (
    Batch,
    BatchKind,
    BatchScope,
    BatchStatus,
    FirmwareOffer,
)
from otaflow.domain.rate import RateCondition, RateConfig
from otaflow.domain.rate_rules import RateRuleError, validate_rate

Record = dict[str, Any]


class ControlStore(Protocol):
    def get(self, key: str) -> Record | None: ...


@dataclass
class Outcome:
    data: Any = None
    writes: dict[str, Record] = field(default_factory=dict)
    controls: list[Record] = field(default_factory=list)
    batches: list[Record] = field(default_factory=list)


def _int(params: Mapping[str, Any], name: str, default: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(str(raw))
    except ValueError:
        raise invalid(name, f"{raw!r} is not an integer") from None


def _bool(params: Mapping[str, Any], name: str, default: bool) -> bool:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    return str(raw).lower() == "true"


def _required(params: Mapping[str, Any], name: str) -> str:
    raw = params.get(name)
    if raw is None or raw == "":
        raise missing(name)
    return str(raw)


def rate_from_params(params: Mapping[str, Any]) -> RateConfig | None:
    """The push rate of a create/update call (None: no proactive push)."""
    if not _bool(params, "NeedPush", True):
        return None
    kind = str(params.get("RateType") or "constant").lower()
    try:
        if kind == "variable":
            factor_raw = _required(params, "IncrementalFactor")
            try:
                factor = Decimal(factor_raw)
            except InvalidOperation:
                raise invalid("IncrementalFactor", f"{factor_raw!r} is not a number") from None
            config = RateConfig(
                kind="variable",
                base_rate=_int(params, "BaseRatePerMinute") or 0,
                max_rate=_int(params, "MaximumPerMinute") or 0,
                factor=factor,
                threshold=_int(params, "RateIncreaseThreshold") or 0,
                condition=RateCondition(
                    str(params.get("RateIncreaseCondition") or "pushed").lower()
                ),
            )
        else:
            config = RateConfig.constant(_int(params, "MaximumPerMinute", 10000) or 0)
        validate_rate(config)
    except RateRuleError as exc:
        raise ApiError(exc.code, exc.message) from None
    except ValueError as exc:
        raise invalid("RateIncreaseCondition", str(exc)) from None
    return config


def rate_settings(config: RateConfig | None) -> Record | None:
    if config is None:
        return None
    if config.kind == "constant":
        return {
            "kind": "constant",
            "max_rate": config.rate,
            "base_rate": None,
            "factor_hundredths": None,
            "threshold": None,
            "condition": None,
        }
    return {
        "kind": "variable",
        "max_rate": config.max_rate,
        "base_rate": config.base_rate,
        "factor_hundredths": int(config.factor * 100),
        "threshold": config.threshold,
        "condition": config.condition.value if config.condition else None,
    }


class ControlPlane:
    def __init__(self, store: ControlStore, file_path_of: Callable[[str], str]) -> None:
        self.store = store
        # Maps a FirmwareUrl given to CreateOTAFirmware to a path in the package store.
        self.file_path_of = file_path_of

    def handle(
        self, action: str, flat_params: Mapping[str, str], request_id: str, now: int
    ) -> Outcome:
        handler = getattr(self, f"_{action}", None)
        if handler is None:
            raise ApiError("InvalidAction.NotFound", f"Specified api is not found: {action}", 404)
        params = unflatten(dict(flat_params))
        outcome: Outcome = handler(params, request_id, now)
        return outcome

    # -- firmware ---------------------------------------------------------------------

    def _CreateOTAFirmware(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        name = _required(p, "FirmwareName")
        dest = _required(p, "DestVersion")
        url = _required(p, "FirmwareUrl")
        product_key = _required(p, "ProductKey")
        fw_type = _int(p, "Type", 0)
        src = p.get("SrcVersion") or None
        if fw_type == 1 and not src:
            raise missing("SrcVersion")
        sign_method = str(p.get("SignMethod") or "MD5").upper()
        if sign_method not in ("MD5", "SHA256"):
            raise invalid("SignMethod", "must be MD5 or SHA256")
        firmware_id = derived_id(request_id, "firmware")
        record = {
            "firmware_id": firmware_id,
            "product_key": product_key,
            "name": name,
            "module": p.get("ModuleName") or "default",
            "dest_version": dest,
            "src_version": src,
            "type": fw_type,
            "size": _int(p, "FirmwareSize", 0),
            "sign": _required(p, "FirmwareSign"),
            "sign_method": sign_method,
            "md5": _required(p, "FirmwareSign") if sign_method == "MD5" else None,
            "file_path": self.file_path_of(url),
            "url": url,
            "description": p.get("FirmwareDesc"),
            "udi": p.get("Udi"),
            "need_to_verify": _bool(p, "NeedToVerify", False),
            "verify_status": 0,
            "status": 1,
            "created_at": now,
            "updated_at": now,
        }
        return Outcome(
            data={"FirmwareId": firmware_id, "UtcCreate": _utc(now)},
            writes={f"firmware/{firmware_id}": record},
        )

    # -- batches ----------------------------------------------------------------------

    def _firmware(self, p: Mapping[str, Any]) -> Record:
        firmware_id = _required(p, "FirmwareId")
        firmware = self.store.get(f"firmware/{firmware_id}")
        if firmware is None:
            raise ApiError("iot.ota.OTAFirmwareNotExist", "The OTA update package does not exist.")
        if firmware["product_key"] != _required(p, "ProductKey"):
            raise ApiError("iot.ota.OTAFirmwareNotExist", "The OTA update package does not exist.")
        return firmware

    def _new_batch(
        self, p: Mapping[str, Any], request_id: str, now: int, kind: BatchKind, scope: BatchScope
    ) -> Batch:
        firmware = self._firmware(p)
        offer = FirmwareOffer(
            firmware_id=firmware["firmware_id"],
            version=firmware["dest_version"],
            size=firmware["size"],
            sign=firmware["sign"],
            file_path=firmware["file_path"],
            module=firmware["module"],
            src_version=firmware["src_version"],
            is_diff=firmware["type"] == 1,
            sign_method="SHA256" if firmware["sign_method"] == "SHA256" else "Md5",
            md5=firmware["md5"],
            download_protocol=str(p.get("DownloadProtocol") or "HTTPS").upper(),
        )
        src_versions = tuple(dict.fromkeys(p.get("SrcVersion") or []))
        if len(src_versions) > 10:
            raise ApiError(
                "iot.ota.SrcVersionExceedLimit", "At most 10 source versions are allowed."
            )
        tags = {t["Key"]: t["Value"] for t in p.get("Tag") or []}
        return Batch(
            batch_id=derived_id(request_id, "batch"),
            product_key=_required(p, "ProductKey"),
            firmware=offer,
            kind=kind,
            scope=scope,
            status=BatchStatus.IN_PROGRESS,
            created_at=now,
            updated_at=now,
            src_versions=src_versions,
            dynamic_mode=_int(p, "DynamicMode", 1) or 1,
            need_push=_bool(p, "NeedPush", True),
            need_confirm=_bool(p, "NeedConfirm", False),
            rate=rate_settings(rate_from_params(p)),
            retry_interval_minutes=_int(p, "RetryInterval"),
            retry_count=_int(p, "RetryCount", 0) or 0,
            timeout_minutes=_int(p, "TimeoutInMinutes"),
            multi_module=_bool(p, "MultiModuleMode", False),
            overwrite_mode=_int(p, "OverwriteMode", 1) or 1,
            tags=tags,
        )

    def _start(self, batch: Batch, now: int, data: Any) -> Outcome:
        record = batch.to_record()
        control = {"action": "START", "batch": record, "cancel_statuses": [], "event_time": now}
        return Outcome(
            data=data,
            writes={f"batch/{batch.batch_id}": record},
            controls=[control],
            batches=[record],
        )

    def _CreateOTADynamicUpgradeJob(
        self, p: Mapping[str, Any], request_id: str, now: int
    ) -> Outcome:
        batch = self._new_batch(p, request_id, now, BatchKind.DYNAMIC, BatchScope.ALL)
        owner = self.store.get(f"dynamic-by-firmware/{batch.firmware.firmware_id}")
        if owner is not None:
            raise ApiError(
                "iot.ota.DynamicJobAlreadyExist",
                "A dynamic update batch already exists for this update package.",
            )
        outcome = self._start(batch, now, {"JobId": batch.batch_id, "UtcCreate": _utc(now)})
        outcome.writes[f"dynamic-by-firmware/{batch.firmware.firmware_id}"] = {
            "batch_id": batch.batch_id
        }
        return outcome

    def _CreateOTAStaticUpgradeJob(
        self, p: Mapping[str, Any], request_id: str, now: int
    ) -> Outcome:
        selection = str(p.get("TargetSelection") or "ALL").upper()
        scope = {"ALL": BatchScope.ALL}.get(selection)
        if scope is None:
            raise invalid("TargetSelection", f"{selection} is not supported yet")
        batch = self._new_batch(p, request_id, now, BatchKind.STATIC, scope)
        return self._start(batch, now, {"JobId": batch.batch_id, "UtcCreate": _utc(now)})


def _utc(ms: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
