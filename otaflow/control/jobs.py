"""Update batches (the platform's "jobs") and the operator's actions on their tasks.

Scopes: ``ALL`` (every device of the product), ``SPECIFIC`` (names, or a CSV of up
to 1,000,000 names), ``GRAY`` (phased: a percentage of the devices the batch could
update, counted by the device partitions and split among them, see
``otaflow.domain.phased``),
``GROUP`` (static or dynamic group) and, as an otaflow extra, ``REGION``
(``Province`` and optional ``City`` parameters: the console's regional update).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from otaflow.control import errors as E
from otaflow.control import rules
from otaflow.control.common import (
    DeviceItem,
    OpsBase,
    Outcome,
    Record,
    TargetSet,
    drop_none,
    opt_bool,
    opt_int,
    opt_str,
    page,
    read,
    req_str,
    str_list,
    utc,
)
from otaflow.control.errors import ApiError, invalid, missing
from otaflow.control.firmware import begin_verification, firmware_usable, offered_files
from otaflow.control.guard import rollout_fields, safe_rollout_changes
from otaflow.control.ids import derived_id
from otaflow.control.registry import DEVICE_NAME
from otaflow.control.rules import job_status
from otaflow.domain import phased
from otaflow.domain.batches import (
    Batch,
    BatchKind,
    BatchScope,
    BatchStatus,
    FirmwareOffer,
)
from otaflow.domain.rate import RateCondition, RateConfig
from otaflow.domain.rate_rules import RateRuleError, validate_rate
from otaflow.domain.rate_settings import to_settings as rate_settings

INVALID_CHUNK = 10_000
SELECTIONS = {
    "ALL": BatchScope.ALL,
    "SPECIFIC": BatchScope.TARGETED,
    "GRAY": BatchScope.PHASED,
    "GROUP": BatchScope.GROUP,
    "REGION": BatchScope.REGIONAL,
}
SELECTION_OF_SCOPE = {v.value: k for k, v in SELECTIONS.items()}
UPGRADE, VERIFY = "UPGRADE_FIRMWARE", "VERFIY_FIRMWARE"  # sic: the platform's spelling

# -- push rate ------------------------------------------------------------------------


def rate_from_params(params: Mapping[str, Any]) -> RateConfig | None:
    """The push rate of a create/update call (None: no proactive push).

    Constant: ``MaximumPerMinute`` (10-10,000, default 10,000). Variable (otaflow's
    extra parameters in the platform's style): ``RateType=variable``,
    ``BaseRatePerMinute``, ``IncrementalFactor``, ``MaximumPerMinute``,
    ``RateIncreaseCondition`` (pushed|succeeded), ``RateIncreaseThreshold``.
    """
    if not opt_bool(params, "NeedPush", True):
        # The SDK: MaximumPerMinute takes 10 to 10000, whether or not the batch pushes.
        given = opt_int(params, "MaximumPerMinute")
        if given is not None:
            try:
                validate_rate(RateConfig.constant(given))
            except RateRuleError as exc:
                raise ApiError(exc.code, exc.message) from None
        return None
    kind = (opt_str(params, "RateType") or "constant").lower()
    try:
        if kind == "variable":
            factor_raw = req_str(params, "IncrementalFactor")
            try:
                factor = Decimal(factor_raw)
            except InvalidOperation:
                raise invalid("IncrementalFactor", f"{factor_raw!r} is not a number") from None
            condition_raw = (opt_str(params, "RateIncreaseCondition") or "pushed").lower()
            try:
                condition = RateCondition(condition_raw)
            except ValueError:
                raise RateRuleError(
                    "iot.ota.InvalidRateCondition",
                    f"condition must be 'pushed' or 'succeeded', got {condition_raw!r}",
                ) from None
            config = RateConfig(
                kind="variable",
                base_rate=opt_int(params, "BaseRatePerMinute") or 0,
                max_rate=opt_int(params, "MaximumPerMinute") or 0,
                factor=factor,
                threshold=opt_int(params, "RateIncreaseThreshold") or 0,
                condition=condition,
            )
        elif kind == "constant":
            config = RateConfig.constant(opt_int(params, "MaximumPerMinute", 10000) or 0)
        else:
            raise RateRuleError("iot.ota.InvalidRateType", f"unknown rate type {kind!r}")
        validate_rate(config)
    except RateRuleError as exc:
        raise ApiError(exc.code, exc.message) from None
    return config


def rate_fields(rate: Record | None) -> dict[str, Any]:
    """A batch's rate in the API's names (QueryOTAJob)."""
    if rate is None:
        return {}
    out: dict[str, Any] = {"MaximumPerMinute": rate["max_rate"], "RateType": rate["kind"]}
    if rate["kind"] == "variable":
        out.update(
            BaseRatePerMinute=rate["base_rate"],
            IncrementalFactor=f"{Decimal(rate['factor_hundredths']) / 100:.2f}",
            RateIncreaseCondition=rate["condition"],
            RateIncreaseThreshold=rate["threshold"],
        )
    return out


def parse_name_list(text: str) -> list[str]:
    """A device-name CSV: one DeviceName per line (first column), optional header."""
    names = []
    for line in text.splitlines():
        name = line.split(",", 1)[0].strip().strip('"').strip()
        if name:
            names.append(name)
    if names and names[0].lower() in ("devicename", "device_name", "name"):
        names = names[1:]
    return names


def pick_phased(batch_id: str, names: list[str], count: int) -> list[str]:
    """A deterministic pseudo-random pick: the ``count`` names of smallest hash."""
    return phased.pick(batch_id, names, count)


class JobOps(OpsBase):
    read_name_list: Callable[[str], str]
    device_partitions: int

    # -- creating ---------------------------------------------------------------------

    def _usable_firmware(self, p: Mapping[str, Any], verify: bool = False) -> Record:
        firmware = self.firmware(req_str(p, "FirmwareId"))
        if firmware["product_key"] != req_str(p, "ProductKey"):
            raise ApiError(E.FIRMWARE_NOT_FOUND, "The specified firmware does not exist.")
        if not verify and not firmware_usable(firmware):
            raise ApiError(
                E.FIRMWARE_NOT_VERIFIED,
                "The update package must be verified (CreateOTAVerifyJob) before batch updates.",
            )
        return firmware

    def _new_batch(
        self,
        p: Mapping[str, Any],
        request_id: str,
        now: int,
        kind: BatchKind,
        scope: BatchScope,
        firmware: Record,
    ) -> Batch:
        """Every rule shared by static and dynamic batches, in the console's order."""
        protocol = (opt_str(p, "DownloadProtocol") or "HTTPS").upper()
        if protocol not in ("HTTPS", "MQTT"):
            raise invalid("DownloadProtocol", "must be HTTPS or MQTT")
        if protocol == "MQTT" and firmware["size"] > 16 * 1024 * 1024:
            raise invalid("DownloadProtocol", "MQTT downloads are limited to 16 MB packages")
        if protocol == "MQTT" and len(firmware.get("files") or []) > 1:
            raise invalid("DownloadProtocol", "MQTT downloads take packages of one file")
        versions = rules.diff_src_versions(firmware, rules.src_versions(str_list(p, "SrcVersion")))
        start, end = rules.schedule(p, now, kind is BatchKind.STATIC)
        rate = rate_from_params(p)
        timeout = rules.timeout_minutes(p)
        retry_interval, retry_count = rules.retry_policy(p, timeout)
        multi_module = opt_bool(p, "MultiModuleMode", False)
        overwrite_mode = opt_int(p, "OverwriteMode", 1) or 1
        rules.modes(multi_module, overwrite_mode)
        if kind is BatchKind.DYNAMIC:
            dynamic_mode = opt_int(p, "DynamicMode", 1) or 1
            if dynamic_mode not in (1, 2):
                raise invalid("DynamicMode", "must be 1 or 2")
        else:
            dynamic_mode = 1
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
            download_protocol=protocol,
            udi=firmware["udi"],
            files=offered_files(firmware),
        )
        return Batch(
            batch_id=derived_id(request_id, "batch"),
            product_key=firmware["product_key"],
            firmware=offer,
            kind=kind,
            scope=scope,
            status=BatchStatus.PLANNED if start is not None else BatchStatus.IN_PROGRESS,
            created_at=now,
            updated_at=now,
            src_versions=versions,
            dynamic_mode=dynamic_mode,
            need_push=opt_bool(p, "NeedPush", True),
            need_confirm=opt_bool(p, "NeedConfirm", False),
            rate=rate_settings(rate),
            retry_interval_minutes=retry_interval,
            retry_count=retry_count,
            timeout_minutes=timeout,
            multi_module=multi_module,
            overwrite_mode=overwrite_mode,
            schedule_start=start,
            schedule_end=end,
            tags=rules.tags(p),
            **safe_rollout_changes(p),
        )

    def _start(self, batch: Batch, job: Record, now: int) -> Outcome:
        record = batch.to_record()
        control = {"action": "START", "batch": record, "cancel_statuses": [], "event_time": now}
        outcome = Outcome(
            data={"JobId": batch.batch_id, "UtcCreate": utc(now)},
            writes={f"batch/{batch.batch_id}": record, f"job/{batch.batch_id}": job},
            controls=[control],
            batches=[record],
        )
        if batch.kind is BatchKind.STATIC and batch.scope is not BatchScope.PHASED:
            # After the START and the targets (the agent sends partition items last):
            # each partition has then seen every task it will have (``open_tasks``).
            outcome.partition_items.extend(self._probes(batch.batch_id, now))
        return outcome

    def _probes(self, batch_id: str, now: int) -> list[tuple[int, str, Record]]:
        probe = {"batch_id": batch_id, "event_time": now}
        return [(p, "OpenTaskProbe", dict(probe)) for p in range(self.device_partitions)]

    def _job_meta(self, batch_id: str, selection: str, now: int, **extra: Any) -> Record:
        record: Record = {
            "batch_id": batch_id,
            "job_type": UPGRADE,
            "target_selection": selection,
            "gray_percent": None,
            "group_name": None,
            "job_desc": None,
            "target_count": 0,
            "invalid_count": 0,
            "invalid_chunks": 0,
            "started_at": now,
            "finished_at": None,
        }
        record.update(extra)
        return record

    def _registered(self, product_key: str, names: list[str]) -> set[str]:
        """Which of ``names`` are registered devices of the product."""
        if len(names) <= 1000:
            return {n for n in names if self.store.get(f"device/{product_key}/{n}") is not None}
        prefix = f"device/{product_key}/"
        return {key[len(prefix) :] for key in self.store.keys(prefix)}

    def _names_from_call(self, product_key: str, names: list[str]) -> list[str]:
        rules.names_per_call(names)
        unique = list(dict.fromkeys(names))
        known = self._registered(product_key, unique)
        wrong = [n for n in unique if n not in known]
        if wrong:
            shown = ", ".join(wrong[:20]) + (" ..." if len(wrong) > 20 else "")
            raise ApiError(
                E.DEVICE_NAMES_INVALID,
                f"{len(wrong)} device name(s) are not devices of product {product_key}: {shown}",
            )
        return unique

    def _names_from_file(self, product_key: str, url: str) -> tuple[list[str], list[str]]:
        try:
            text = self.read_name_list(url)
        except (FileNotFoundError, ValueError) as exc:
            raise ApiError(
                E.DN_LIST_NOT_FOUND, f"The device-name list file cannot be read: {exc}"
            ) from None
        names = parse_name_list(text)
        if len(names) > rules.MAX_NAMES_IN_FILE:
            raise ApiError(
                E.DN_LIST_LIMIT,
                f"A device-name list holds at most {rules.MAX_NAMES_IN_FILE:,} names, "
                f"got {len(names):,}.",
            )
        known = self._registered(product_key, names)
        valid: list[str] = []
        bad: list[str] = []
        seen: set[str] = set()
        for name in names:
            if name in seen:
                continue  # a repeated name targets its device once
            seen.add(name)
            if DEVICE_NAME.match(name) and name in known:
                valid.append(name)
            else:
                bad.append(name)
        return valid, bad

    def _CreateOTAStaticUpgradeJob(
        self, p: Mapping[str, Any], request_id: str, now: int
    ) -> Outcome:
        selection = (opt_str(p, "TargetSelection") or "").upper()
        if not selection:
            raise missing("TargetSelection")
        scope = SELECTIONS.get(selection)
        if scope is None:
            raise invalid("TargetSelection", "ALL, SPECIFIC, GRAY, GROUP or REGION")
        firmware = self._usable_firmware(p)
        product_key = firmware["product_key"]
        # Scope parameters first: they say what the batch is.
        names: list[str] = []
        invalid_names: list[str] = []
        extra: dict[str, Any] = {}
        region = city = group_id = None
        thousandths = None
        if scope is BatchScope.TARGETED:
            if str_list(p, "SrcVersion"):
                raise ApiError(
                    E.SRC_VERSION_TARGETED,
                    "A batch on specified devices (SPECIFIC) takes no SrcVersion: the devices "
                    "are named.",
                )
            listed = str_list(p, "TargetDeviceName")
            url = opt_str(p, "DnListFileUrl")
            if bool(listed) == bool(url):
                raise invalid(
                    "TargetDeviceName", "give exactly one of TargetDeviceName.N and DnListFileUrl"
                )
            if listed:
                names = self._names_from_call(product_key, listed)
            else:
                assert url is not None
                names, invalid_names = self._names_from_file(product_key, url)
                if invalid_names:
                    # The console: an error and a downloadable invalid list before anything
                    # runs. ListOTAJobInvalidDeviceNames with DnListFileUrl lists them.
                    shown = ", ".join(invalid_names[:20]) + (
                        " ..." if len(invalid_names) > 20 else ""
                    )
                    raise ApiError(
                        E.DEVICE_NAMES_INVALID,
                        f"{len(invalid_names)} name(s) in the device-name list are not devices "
                        f"of product {product_key}: {shown}. List them with "
                        "ListOTAJobInvalidDeviceNames (DnListFileUrl, ProductKey), correct the "
                        "file and upload it again.",
                    )
                if not names:
                    raise ApiError(
                        E.NO_VALID_DEVICE,
                        f"The device-name list names no device of product {product_key}.",
                    )
        elif scope is BatchScope.PHASED:
            thousandths = rules.gray_percent(opt_str(p, "GrayPercent"))
            extra["gray_percent"] = opt_str(p, "GrayPercent")
        elif scope is BatchScope.GROUP:
            group_id = req_str(p, "GroupId")
            if (opt_str(p, "GroupType") or "") != "LINK_PLATFORM":
                raise invalid("GroupType", "a static batch takes a static group (LINK_PLATFORM)")
            group = self.group(group_id)
            if group["group_type"] != "STATIC":
                raise ApiError(E.GROUP_TYPE, "A static batch takes a static group.")
            extra["group_name"] = group["name"]
        elif scope is BatchScope.REGIONAL:
            region = req_str(p, "Province")
            city = opt_str(p, "City")
        batch = self._new_batch(p, request_id, now, BatchKind.STATIC, scope, firmware)
        self._cross_batch_rules(batch, now)
        # PHASED: the device partitions count the devices the batch could update and
        # the plane then sends each its share (``phased_count``, ``domain.phased``).
        batch = batch.with_changes(
            region=region,
            city=city,
            group_id=group_id,
            group_type="STATIC" if group_id else None,
            phased_percent_thousandths=thousandths,
        )
        job = self._job_meta(
            batch.batch_id,
            selection,
            now,
            target_count=len(names),
            invalid_count=len(invalid_names),
            invalid_chunks=(len(invalid_names) + INVALID_CHUNK - 1) // INVALID_CHUNK,
            **extra,
        )
        outcome = self._start(batch, job, now)
        if names:
            outcome.targets.append(TargetSet(batch.batch_id, product_key, names, now))
        for i in range(job["invalid_chunks"]):
            chunk = invalid_names[i * INVALID_CHUNK : (i + 1) * INVALID_CHUNK]
            outcome.writes[f"job-invalid/{batch.batch_id}/{i:06d}"] = {"items": chunk}
        return outcome

    def _cross_batch_rules(self, batch: Batch, now: int) -> None:
        live = [b for _, b in self.store.scan("batch/") if rules.is_live(b, now)]
        rules.modes_across_batches(
            live, batch.product_key, batch.multi_module, batch.overwrite_mode
        )
        rules.dynamic_mode_mix(live, batch.to_record())

    def phased_count(self, p: Mapping[str, str], request_id: str, now: int) -> Outcome:
        """A device partition's count of the devices a phased batch could update; once
        every partition has reported, each gets its share (``PhasedQuota``)."""
        batch_id, partition = p["batch_id"], int(p["partition"])
        batch = self.batch(batch_id)
        key = f"phased/{batch_id}"
        reported = dict(
            (int(a), int(b))
            for a, b in (
                item.split(":") for item in (self.store.get(key) or {"items": []})["items"]
            )
        )
        if partition in reported or batch["phased_percent_thousandths"] is None:
            return read()
        reported[partition] = int(p["eligible"])
        items = [f"{k}:{v}" for k, v in sorted(reported.items())]
        outcome = Outcome(writes={key: {"items": items}})
        if len(reported) < self.device_partitions:
            return outcome
        total = rules.phased_count(sum(reported.values()), batch["phased_percent_thousandths"])
        shares = phased.quotas(total, reported)
        for target, quota in sorted(shares.items()):
            if quota > 0:
                record = {"batch_id": batch_id, "quota": quota, "event_time": now}
                outcome.partition_items.append((target, "PhasedQuota", record))
        # After the shares: each partition has then seen every task it will have.
        outcome.partition_items.extend(self._probes(batch_id, now))
        job = self.store.get(f"job/{batch_id}")
        if job is not None:
            outcome.writes[f"job/{batch_id}"] = dict(job, target_count=total)
        return outcome

    def open_task_count(self, p: Mapping[str, str], request_id: str, now: int) -> Outcome:
        """A device partition's count of a static batch's open tasks (``domain.open_tasks``).

        The batch is COMPLETED once every partition has answered its probe (so has seen
        all its tasks), the latest count of each is zero and the batch has tasks at all
        (one that gave no device a task updated nothing: it stays as it is).
        """
        batch_id, partition = p["batch_id"], int(p["partition"])
        batch = self.store.get(f"batch/{batch_id}")
        if (
            batch is None
            or batch["kind"] == "DYNAMIC"
            or batch["status"]
            not in (
                "PLANNED",
                "IN_PROGRESS",
            )
        ):
            return read()
        key = f"open-tasks/{batch_id}"
        # partition -> (open tasks, answered the probe, event time, all tasks)
        counts = {
            int(part): (int(open_), settled == "1", int(at), int(every))
            for part, open_, settled, at, every in (
                item.split(":") for item in (self.store.get(key) or {"items": []})["items"]
            )
        }
        at = int(p["event_time"])
        _, was_settled, last, _ = counts.get(partition, (0, False, -(2**62), 0))
        if at < last:
            return read()  # an older count than one already applied
        settled_now = was_settled or p.get("probe") == "1"
        counts[partition] = (int(p["open"]), settled_now, at, int(p.get("tasks") or 0))
        items = [f"{k}:{o}:{int(s)}:{t}:{n}" for k, (o, s, t, n) in sorted(counts.items())]
        outcome = Outcome(writes={key: {"items": items}})
        if (
            sum(1 for c in counts.values() if c[1]) < self.device_partitions
            or any(c[0] for c in counts.values())
            or not any(c[3] for c in counts.values())
            or job_status(batch, now) != "IN_PROGRESS"
        ):
            return outcome
        completed = dict(batch, status="COMPLETED", updated_at=now)
        outcome.writes[f"batch/{batch_id}"] = completed
        job = self.store.get(f"job/{batch_id}")
        if job is not None:
            outcome.writes[f"job/{batch_id}"] = dict(job, finished_at=now)
        # The partitions and the views learn it like any change of the batch.
        control = {"action": "UPDATE", "batch": completed, "cancel_statuses": [], "event_time": now}
        outcome.controls.append(control)
        outcome.batches.append(completed)
        return outcome

    def _dynamic_batches(self) -> list[Record]:
        return [
            b
            for _, b in self.store.scan("batch/")
            if b["kind"] == "DYNAMIC" and b["status"] == "IN_PROGRESS" and b["strategy_active"]
        ]

    def _CreateOTADynamicUpgradeJob(
        self, p: Mapping[str, Any], request_id: str, now: int
    ) -> Outcome:
        selection = (opt_str(p, "TargetSelection") or "").upper()
        if selection == "GRAY" or opt_str(p, "GrayPercent") is not None:
            raise ApiError(E.GRAY_DYNAMIC, "Phased updates are supported only for static batches.")
        group_id = opt_str(p, "GroupId")
        group_type = opt_str(p, "GroupType")
        # A dynamic batch covers the product's devices on its source versions, or a
        # dynamic group's: a scope it cannot keep is refused, never widened to all.
        unsupported = [
            name
            for name in ("TargetDeviceName", "DnListFileUrl", "Province", "City")
            if p.get(name) not in (None, "", [])
        ]
        if selection not in ("", "ALL", "GROUP") or unsupported:
            what = selection if selection not in ("", "ALL", "GROUP") else unsupported[0]
            raise ApiError(
                E.SCOPE_DYNAMIC,
                f"A dynamic batch updates by source version or by dynamic group; {what} is "
                "supported only for static batches.",
            )
        if selection == "GROUP" and not group_id:
            raise missing("GroupId")
        if selection == "ALL" and group_id:
            raise invalid("TargetSelection", "ALL takes no GroupId")
        firmware = self._usable_firmware(p)
        group = None
        if group_id or group_type:
            if not group_id or group_type != "LINK_PLATFORM_DYNAMIC":
                raise invalid(
                    "GroupType", "a dynamic group batch needs GroupId and LINK_PLATFORM_DYNAMIC"
                )
            if str_list(p, "SrcVersion"):
                raise invalid("SrcVersion", "a group-based dynamic batch takes no SrcVersion")
            group = self.group(group_id)
            if group["group_type"] != "DYNAMIC":
                raise ApiError(E.GROUP_TYPE, "A dynamic batch takes a dynamic group.")
        elif not str_list(p, "SrcVersion") and firmware["type"] != 1:
            raise missing("SrcVersion")
        scope = BatchScope.GROUP if group else BatchScope.ALL
        batch = self._new_batch(p, request_id, now, BatchKind.DYNAMIC, scope, firmware)
        if firmware["type"] == 1 and not batch.src_versions:
            batch = batch.with_changes(src_versions=(firmware["src_version"],))
        if self.store.get(f"dynamic-by-firmware/{firmware['firmware_id']}") is not None:
            raise ApiError(
                E.DYNAMIC_JOB_EXISTS,
                "A dynamic update batch already exists for this update package; cancel it first.",
            )
        if group is not None:
            same_group = [b for b in self._dynamic_batches() if b["group_id"] == group_id]
            packages = {b["firmware"]["firmware_id"] for b in same_group}
            if firmware["firmware_id"] not in packages and len(packages) >= (
                rules.MAX_PACKAGES_PER_DYNAMIC_GROUP
            ):
                raise ApiError(
                    E.DYNAMIC_GROUP_PACKAGE_LIMIT,
                    "At most 5 update packages can have dynamic batches for one dynamic group.",
                )
            for other in same_group:
                if (other["multi_module"], other["overwrite_mode"]) != (
                    batch.multi_module,
                    batch.overwrite_mode,
                ):
                    raise ApiError(
                        E.DYNAMIC_GROUP_MODE_MISMATCH,
                        "MultiModuleMode and OverwriteMode must match the group's other dynamic "
                        f"batches (MultiModuleMode={other['multi_module']}, "
                        f"OverwriteMode={other['overwrite_mode']}).",
                    )
            batch = batch.with_changes(group_id=group_id, group_type="DYNAMIC")
        self._cross_batch_rules(batch, now)
        job = self._job_meta(
            batch.batch_id,
            "GROUP" if group else "ALL",
            now,
            group_name=group["name"] if group else None,
        )
        outcome = self._start(batch, job, now)
        outcome.writes[f"dynamic-by-firmware/{firmware['firmware_id']}"] = {
            "items": [batch.batch_id]
        }
        return outcome

    def _CreateOTAVerifyJob(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        firmware = self._usable_firmware(p, verify=True)
        begin_verification(firmware, "", now)  # refuses a verified or verifying package
        listed = str_list(p, "TargetDeviceName")
        if not listed:
            raise missing("TargetDeviceName")
        if len(listed) > 10:
            raise ApiError(E.TARGET_NAME_LIMIT, "A verification batch takes at most 10 devices.")
        names = self._names_from_call(firmware["product_key"], listed)
        timeout = rules.timeout_minutes(p)
        for forbidden in ("ScheduleTime", "RetryInterval", "SrcVersion"):
            if p.get(forbidden):
                raise invalid(forbidden, "not a parameter of a verification batch")
        batch = self._new_batch(
            p, request_id, now, BatchKind.STATIC, BatchScope.TARGETED, firmware
        ).with_changes(timeout_minutes=timeout, job_type=VERIFY)
        job = self._job_meta(
            batch.batch_id, "SPECIFIC", now, job_type=VERIFY, target_count=len(names)
        )
        outcome = self._start(batch, job, now)
        outcome.targets.append(TargetSet(batch.batch_id, firmware["product_key"], names, now))
        # Verifying until the devices' outcomes decide (RecordVerifyOutcome).
        outcome.writes[f"firmware/{firmware['firmware_id']}"] = begin_verification(
            firmware, batch.batch_id, now
        )
        return outcome

    # -- editing ----------------------------------------------------------------------

    def _UpdateOTAJob(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        record = self.batch(req_str(p, "JobId"))
        batch = Batch.from_record(record)
        upgrade_type = (opt_str(p, "UpgradeType") or "").upper()
        if not upgrade_type:
            raise missing("UpgradeType")
        if upgrade_type != batch.kind.value:
            raise ApiError(
                E.JOB_TYPE_MISMATCH, f"The batch is {batch.kind.value}, not {upgrade_type}."
            )
        selection = (opt_str(p, "TargetSelection") or "").upper()
        if not selection:
            raise missing("TargetSelection")
        job = self.store.get(f"job/{batch.batch_id}") or {}
        own_selection = job.get("target_selection") or SELECTION_OF_SCOPE[batch.scope.value]
        if selection != own_selection:
            raise ApiError(
                E.JOB_TYPE_MISMATCH,
                f"The batch's TargetSelection is {own_selection}, not {selection}.",
            )
        if job_status(record, now) != "IN_PROGRESS":
            raise ApiError(
                E.JOB_NOT_IN_PROGRESS, "Only a batch that is updating (IN_PROGRESS) can be edited."
            )
        if opt_str(p, "MaximumPerMinute") is None:
            raise missing("MaximumPerMinute")
        changes: dict[str, Any] = {"updated_at": now}
        # Rate: the type is fixed at creation; without RateType the batch's own applies.
        rate_params = dict(p)
        old = batch.rate
        asked = opt_str(p, "RateType")
        if old is not None:
            if asked is not None and asked.lower() != old["kind"]:
                raise ApiError(
                    "iot.ota.RateTypeChangeNotAllowed",
                    f"cannot change the push rate type from {old['kind']} to {asked.lower()}",
                )
            if old["kind"] == "variable":
                rate_params.setdefault("RateType", "variable")
                for name, value in rate_fields(old).items():
                    rate_params.setdefault(name, str(value))
            changes["rate"] = rate_settings(rate_from_params(rate_params))
        else:
            rate_from_params(dict(rate_params, NeedPush="false"))  # checked, not applied
        versions = str_list(p, "SrcVersionList")
        if versions:
            if not batch.is_dynamic or batch.is_group_based:
                raise ApiError(
                    E.SRC_VERSION_NOT_EDITABLE,
                    "Source versions can be changed only on a version-based dynamic batch.",
                )
            changes["src_versions"] = rules.diff_src_versions(
                self.firmware(batch.firmware.firmware_id), rules.src_versions(versions)
            )
        changes_timeout, timeout = rules.timeout_change(p)
        if changes_timeout:
            if not batch.is_dynamic:
                raise ApiError(
                    E.TIMEOUT_NOT_EDITABLE, "The timeout can be changed only on a dynamic batch."
                )
            interval = batch.retry_interval_minutes
            if timeout is not None and interval is not None and interval >= timeout:
                raise ApiError(
                    E.RETRY_NOT_BELOW_TIMEOUT,
                    f"RetryInterval ({interval} min) must be less than TimeoutInMinutes "
                    f"({timeout} min).",
                )
            changes["timeout_minutes"] = timeout
        changes["tags"] = rules.tags(p, "Tags")
        changes.update(safe_rollout_changes(p))
        updated = batch.with_changes(**changes).to_record()
        control = {"action": "UPDATE", "batch": updated, "cancel_statuses": [], "event_time": now}
        return Outcome(
            writes={f"batch/{batch.batch_id}": updated},
            controls=[control],
            batches=[updated],
        )

    # -- reading ----------------------------------------------------------------------

    def job_data(self, batch: Record, now: int) -> dict[str, Any]:
        job = self.store.get(f"job/{batch['batch_id']}") or {}
        firmware = self.store.get(f"firmware/{batch['firmware']['firmware_id']}")
        status = job_status(batch, now)
        data: dict[str, Any] = {
            "JobId": batch["batch_id"],
            "FirmwareId": batch["firmware"]["firmware_id"],
            "ProductKey": batch["product_key"],
            "Name": firmware["name"] if firmware else None,
            "DestVersion": batch["firmware"]["version"],
            "DownloadProtocol": batch["firmware"]["download_protocol"],
            "JobStatus": status,
            "JobType": job.get("job_type", UPGRADE),
            "SelectionType": batch["kind"],
            "TargetSelection": job.get("target_selection") or SELECTION_OF_SCOPE[batch["scope"]],
            "GrayPercent": job.get("gray_percent"),
            "GroupId": batch["group_id"],
            "GroupName": job.get("group_name"),
            "JobDesc": job.get("job_desc"),
            "DynamicMode": batch["dynamic_mode"] if batch["kind"] == "DYNAMIC" else None,
            "MultiModuleMode": batch["multi_module"],
            "OverwriteMode": batch["overwrite_mode"],
            "NeedConfirm": batch["need_confirm"],
            "NeedPush": batch["need_push"],
            "RetryCount": batch["retry_count"]
            if batch["retry_interval_minutes"] is not None
            else None,
            "RetryInterval": batch["retry_interval_minutes"],
            "TimeoutInMinutes": batch["timeout_minutes"],
            "SrcVersions": {"SrcVersion": list(batch["src_versions"])},
            "Tags": {"OtaTagDTO": [{"Key": k, "Value": v} for k, v in batch["tags"].items()]},
            "UtcCreate": utc(batch["created_at"]),
            "UtcModified": utc(batch["updated_at"]),
            "UtcStartTime": utc(batch["schedule_start"] or batch["created_at"]),
            "UtcEndTime": utc(job.get("finished_at") or batch["schedule_end"])
            if status == "COMPLETED"
            else None,
            "UtcScheduleTime": utc(batch["schedule_start"]),
            "UtcScheduleFinishTime": utc(batch["schedule_end"]),
            # otaflow's extras
            "Province": batch["region"],
            "City": batch["city"],
            "TargetDeviceCount": job.get("target_count"),
            "InvalidDeviceNameCount": job.get("invalid_count"),
        }
        data.update(rate_fields(batch["rate"]))
        data.update(rollout_fields(self.store, batch))
        if job.get("job_type") == VERIFY:
            data["TargetSelection"] = "SPECIFIC"
        return drop_none(data)

    def _QueryOTAJob(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        return read(self.job_data(self.batch(req_str(p, "JobId")), now))

    def _ListOTAJobByFirmware(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        firmware_id = req_str(p, "FirmwareId")
        self.firmware(firmware_id)
        paging = page(p, 200)
        found = [
            b for _, b in self.store.scan("batch/") if b["firmware"]["firmware_id"] == firmware_id
        ]
        found.sort(key=lambda b: (-b["created_at"], b["batch_id"]))
        keep = [
            "JobId",
            "FirmwareId",
            "ProductKey",
            "JobStatus",
            "JobType",
            "SelectionType",
            "TargetSelection",
            "Tags",
            "UtcCreate",
            "UtcModified",
            "UtcStartTime",
            "UtcEndTime",
        ]
        rows = []
        for batch in paging.slice(found):
            full = self.job_data(batch, now)
            rows.append({k: full[k] for k in keep if k in full})
        return read({"SimpleOTAJobInfo": rows}, **paging.top(len(found)))

    def _ListOTAJobInvalidDeviceNames(
        self, p: Mapping[str, Any], request_id: str, now: int
    ) -> Outcome:
        """otaflow's extra: the invalid names of a device-name list file.

        ``DnListFileUrl`` + ``ProductKey``: the file as CreateOTAStaticUpgradeJob would
        judge it now (a file with invalid names is refused, and this read is its
        "Download invalid list"). ``JobId``: the names a batch created before that rule
        recorded.
        """
        url = opt_str(p, "DnListFileUrl")
        if url is not None and opt_str(p, "JobId") is None:
            product_key = req_str(p, "ProductKey")
            self.product(product_key)
            paging = page(p, 10_000, 1000)
            _, bad = self._names_from_file(product_key, url)
            return read({"DeviceNames": paging.slice(bad)}, **paging.top(len(bad)))
        job = self.job(req_str(p, "JobId"))
        paging = page(p, 10_000, 1000)
        total = job["invalid_count"]
        start = (paging.current - 1) * paging.size
        names: list[str] = []
        chunk, offset = divmod(start, INVALID_CHUNK)
        while len(names) < paging.size and chunk < job["invalid_chunks"]:
            stored = self.store.get(f"job-invalid/{job['batch_id']}/{chunk:06d}")
            names.extend((stored or {"items": []})["items"][offset:])
            offset = 0
            chunk += 1
        return read({"DeviceNames": names[: paging.size]}, **paging.top(total))

    # -- canceling --------------------------------------------------------------------

    def _CancelOTAStrategyByJob(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        record = self.batch(req_str(p, "JobId"))
        if record["kind"] != "DYNAMIC":
            raise ApiError(E.JOB_NOT_DYNAMIC, "Only a dynamic batch has a dynamic strategy.")
        if record["status"] != "IN_PROGRESS" or not record["strategy_active"]:
            raise ApiError(E.JOB_NOT_IN_PROGRESS, "The dynamic batch is already canceled.")
        updated = dict(record, status="CANCELED", strategy_active=False, updated_at=now)
        writes: dict[str, Record | None] = {f"batch/{record['batch_id']}": updated}
        index_key = f"dynamic-by-firmware/{record['firmware']['firmware_id']}"
        index = self.store.get(index_key)
        if index is not None and index["items"] == [record["batch_id"]]:
            writes[index_key] = None  # the package may get a new dynamic batch
        job = self.store.get(f"job/{record['batch_id']}")
        if job is not None:
            writes[f"job/{record['batch_id']}"] = dict(job, finished_at=now)
        control = {
            "action": "CANCEL_STRATEGY",
            "batch": updated,
            "cancel_statuses": [],
            "event_time": now,
        }
        return Outcome(writes=writes, controls=[control], batches=[updated])

    def _CancelOTATaskByJob(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        record = self.batch(req_str(p, "JobId"))
        flags = {
            name: opt_bool(p, name, False)
            for name in (
                "CancelScheduledTask",
                "CancelQueuedTask",
                "CancelInProgressTask",
                "CancelNotifiedTask",
            )
        }
        unconfirmed_raw = opt_str(p, "CancelUnconfirmedTask")
        unconfirmed = opt_bool(p, "CancelUnconfirmedTask", False)
        if not any(flags.values()) and not unconfirmed:
            raise ApiError(E.CANCEL_FLAGS, "At least one Cancel*Task parameter must be true.")
        statuses: list[str] = []
        if flags["CancelQueuedTask"]:
            statuses.append("QUEUED")
            if unconfirmed_raw is None:
                unconfirmed = True  # the platform's default when only queued is named
        if unconfirmed:
            statuses.append("CONFIRM")
        if flags["CancelNotifiedTask"]:
            statuses.append("NOTIFIED")
        if flags["CancelInProgressTask"]:
            statuses.append("IN_PROGRESS")
        updated = dict(record, updated_at=now)
        writes: dict[str, Record | None] = {}
        if flags["CancelScheduledTask"]:
            if record["status"] != "PLANNED":
                raise ApiError(
                    E.JOB_NOT_IN_PROGRESS, "CancelScheduledTask applies to a scheduled batch only."
                )
            updated["status"] = "CANCELED"
            for status in ("QUEUED", "CONFIRM"):
                if status not in statuses:
                    statuses.append(status)
        elif record["status"] in ("CANCELED", "COMPLETED"):
            raise ApiError(E.JOB_NOT_IN_PROGRESS, f"The batch is {record['status']}.")
        writes[f"batch/{record['batch_id']}"] = updated
        control = {
            "action": "CANCEL_TASKS",
            "batch": updated,
            "cancel_statuses": statuses,
            "event_time": now,
        }
        return Outcome(writes=writes, controls=[control], batches=[updated])

    # -- tasks ------------------------------------------------------------------------

    def _resolved_tasks(self, p: Mapping[str, Any]) -> list[tuple[str, str, str, str]]:
        """(task id, product key, device name, batch id) of ``TaskId.N``.

        The API server resolves task ids from its task view and passes them as the
        internal ``_TaskDevice.N`` (``pk/dn/batch``, or empty when unknown); callers
        cannot send parameters that start with ``_``.
        """
        ids = str_list(p, "TaskId")
        if not ids:
            raise missing("TaskId")
        if len(ids) > rules.MAX_TASK_IDS:
            raise ApiError(E.TASK_LIMIT, f"At most {rules.MAX_TASK_IDS} task ids per call.")
        where = p.get("_TaskDevice") or []
        out = []
        for i, task_id in enumerate(ids):
            ref = where[i] if i < len(where) and isinstance(where[i], str) else ""
            parts = ref.split("/")
            if len(parts) != 3:
                raise ApiError(E.TASK_NOT_FOUND, f"The update task {task_id} does not exist.")
            out.append((task_id, parts[0], parts[1], parts[2]))
        return out

    def _task_commands(
        self, action: str, tasks: list[tuple[str, str, str, str]], now: int
    ) -> list[DeviceItem]:
        return [
            DeviceItem(
                pk,
                dn,
                "TaskCommand",
                {
                    "action": action,
                    "product_key": pk,
                    "device_name": dn,
                    "task_ids": [task_id],
                    "batch_id": batch_id,
                    "firmware_id": None,
                    "event_time": now,
                },
            )
            for task_id, pk, dn, batch_id in tasks
        ]

    def _ConfirmOTATask(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        tasks = self._resolved_tasks(p)
        for _, _, _, batch_id in tasks:
            rules.confirm_window(self.batch(batch_id), now)
        return Outcome(device_items=self._task_commands("CONFIRM", tasks, now))

    def _ReupgradeOTATask(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        job_id = req_str(p, "JobId")
        record = self.batch(job_id)
        tasks = self._resolved_tasks(p)
        for task_id, _, _, batch_id in tasks:
            if batch_id != job_id:
                raise ApiError(E.TASK_NOT_FOUND, f"The task {task_id} is not a task of {job_id}.")
        if record["status"] == "CANCELED":
            raise ApiError(E.JOB_NOT_IN_PROGRESS, "The batch is canceled.")
        return Outcome(device_items=self._task_commands("REUPGRADE", tasks, now))

    def _CancelOTATaskByDevice(self, p: Mapping[str, Any], request_id: str, now: int) -> Outcome:
        firmware = self.firmware(req_str(p, "FirmwareId"))
        product_key = req_str(p, "ProductKey")
        if firmware["product_key"] != product_key:
            raise ApiError(E.FIRMWARE_NOT_FOUND, "The specified firmware does not exist.")
        job_id = opt_str(p, "JobId")
        if job_id is not None:
            batch = self.batch(job_id)
            if batch["firmware"]["firmware_id"] != firmware["firmware_id"]:
                raise ApiError(E.JOB_NOT_FOUND, f"The batch {job_id} is not of this package.")
        names = list(dict.fromkeys(str_list(p, "DeviceName")))
        if not names:
            raise missing("DeviceName")
        rules.names_per_call(names)
        items = [
            DeviceItem(
                product_key,
                dn,
                "TaskCommand",
                {
                    "action": "CANCEL",
                    "product_key": product_key,
                    "device_name": dn,
                    "task_ids": [],
                    "batch_id": job_id,
                    "firmware_id": firmware["firmware_id"],
                    "event_time": now,
                },
            )
            for dn in names
        ]
        return Outcome(device_items=items)
