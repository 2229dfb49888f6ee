"""``otaflow product|firmware|batch|task|device|group``: the OTA OpenAPI from the command line.

Every subcommand is one or a few calls of otaflow's HTTP API, signed with
ACS3-HMAC-SHA256 exactly like the official SDK (``otaflow.api.signature``). Results
print as tables (``--json`` prints the raw answers); refused calls print the
platform's error code and message and exit with status 1.

Where to call and as whom (flags, else environment):

* ``--endpoint`` / ``OTAFLOW_API_URL`` (default ``http://127.0.0.1:$OTAFLOW_API_PORT``)
* ``--access-key-id`` / ``OTAFLOW_ACCESS_KEY_ID`` and ``--access-key-secret`` /
  ``OTAFLOW_ACCESS_KEY_SECRET`` (default: the first pair of ``OTAFLOW_ACCESS_KEYS``)

Examples::

    otaflow product create smart_lock
    otaflow device register a1Prod dev001 --province Zhejiang --city Hangzhou
    otaflow device show a1Prod dev001                  # FirmwareVersion: as last reported
    otaflow device import a1Prod devices.csv          # name[,nickname[,province[,city]]]
    otaflow group create north_fleet
    otaflow group add GROUP_ID a1Prod/dev001 a1Prod/dev002
    otaflow firmware upload fw-2.0.bin --product a1Prod --version 2.0
    otaflow batch create FIRMWARE_ID --product a1Prod --scope SPECIFIC --devices dev001,dev002
    otaflow batch create FIRMWARE_ID --product a1Prod --dynamic --src-version 1.0 --rate 500
    otaflow batch list FIRMWARE_ID
    otaflow batch watch JOB_ID                         # live board until it completes
    otaflow batch edit JOB_ID --rate 1000 --tag wave=2
    otaflow batch cancel JOB_ID --queued --notified
    otaflow task list JOB_ID --status FAILED
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from otaflow import config
from otaflow.api.client import ApiCallError, OpsClient
from otaflow.cli import safe_rollout, watch

__all__ = ["ApiCallError", "OpsClient", "add_parsers", "main"]

EXIT_REFUSED = 1


# -- output ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of a list table: ``field`` of each row (or ``value(row)``) under ``header``.

    ``kind``: ``id`` is never wrapped or cut (ids are copied into the next command),
    ``text`` folds onto more lines, ``note`` is cut with an ellipsis (the full text is
    in ``--json``).
    """

    header: str
    field: str
    kind: str = "text"
    value: Callable[[Mapping[str, Any]], Any] | None = None

    def cell(self, row: Mapping[str, Any]) -> str:
        raw = self.value(row) if self.value is not None else row.get(self.field)
        return "" if raw is None else str(raw)


def _table(title: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> Table:
    """A list that fits 80 columns: no outer border, two spaces between columns; when the
    terminal is narrow, ``text`` and ``note`` columns give up their width, ids never."""
    table = Table(
        title=title,
        min_width=len(title),  # the title on one line, however few the rows
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,
    )
    cells = [[column.cell(row) for column in columns] for row in rows]
    for i, column in enumerate(columns):
        if column.kind == "id":
            widest = max([len(column.header), *(len(r[i]) for r in cells)])
            table.add_column(column.header, no_wrap=True, min_width=widest)
        else:
            table.add_column(column.header, overflow="fold")
    notes = {i for i, column in enumerate(columns) if column.kind == "note"}
    for row_cells in cells:
        # A note's column narrows like a text column, but the note stays on its row's line.
        table.add_row(
            *(
                Text(cell, no_wrap=True, overflow="ellipsis") if i in notes else cell
                for i, cell in enumerate(row_cells)
            )
        )
    return table


def _pairs(title: str, data: Mapping[str, Any]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in data.items():
        if isinstance(value, dict | list):
            value = json.dumps(value)
        table.add_row(key, str(value))
    return table


def _tags(values: Sequence[str] | None, name: str = "Tag") -> dict[str, str]:
    out: dict[str, str] = {}
    for i, pair in enumerate(values or [], start=1):
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--tag wants KEY=VALUE, got {pair!r}")
        out[f"{name}.{i}.Key"] = key
        out[f"{name}.{i}.Value"] = value
    return out


def _list(name: str, values: Sequence[str] | None) -> dict[str, str]:
    return {f"{name}.{i}": v for i, v in enumerate(values or [], start=1)}


# -- subcommands -------------------------------------------------------------------------------

# A package's verification status, by name (the API answers the platform's numbers).
FIRMWARE_STATUS: dict[Any, str] = {
    0: "unverified",
    1: "verified",
    2: "verifying",
    3: "verify failed",
}

Out = Callable[[Any], None]


def _firmware_status(row: Mapping[str, Any]) -> Any:
    return FIRMWARE_STATUS.get(row.get("Status"), row.get("Status"))


def firmware_upload(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    path = Path(a.file)
    data = path.read_bytes()
    suffix = "tar.gz" if path.name.endswith(".tar.gz") else (path.suffix.lstrip(".") or "bin")
    fields = c.call("GenerateOTAUploadURL", {"FileSuffix": suffix})["Data"]
    c.upload(fields, data)
    sign = hashlib.sha256(data) if a.sign_method == "SHA256" else hashlib.md5(data)
    params = {
        "ProductKey": a.product,
        "FirmwareName": a.name or f"{path.stem.replace('.', '_')}_{a.version.replace('.', '_')}",
        "DestVersion": a.version,
        "FirmwareUrl": fields["FirmwareUrl"],
        "FirmwareSign": sign.hexdigest(),
        "SignMethod": a.sign_method,
        "FirmwareSize": len(data),
        "ModuleName": a.module,
        "SrcVersion": a.src_version,
        "Type": 1 if a.src_version else None,
        "FirmwareDesc": a.desc,
        # The platform's default is true; this CLI asks for a verification only with --verify.
        "NeedToVerify": "true" if a.verify else "false",
    }
    body = c.call("CreateOTAFirmware", {k: v for k, v in params.items() if v is not None})
    out(_pairs("firmware created", body["Data"]))
    return body


def firmware_list(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    params = {"CurrentPage": a.page, "PageSize": a.page_size, "ProductKey": a.product}
    body = c.call("ListOTAFirmware", {k: v for k, v in params.items() if v is not None})
    rows = body["FirmwareInfo"]["SimpleFirmwareInfo"]
    products = sorted({str(row.get("ProductKey")) for row in rows})
    # One product (the usual --product listing): named in the title, not on every row.
    title = f"firmware of {products[0]}" if len(products) == 1 else "firmware"
    cols = [
        Column("FirmwareId", "FirmwareId", "id"),
        Column("Name", "FirmwareName"),
        *([Column("Product", "ProductKey", "id")] if len(products) > 1 else []),
        Column("Module", "ModuleName"),
        Column("Version", "DestVersion"),
        Column("Status", "Status", "id", _firmware_status),
    ]
    out(_table(f"{title} ({body['Total']})", rows, cols))
    return body


def firmware_show(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    body = c.call("QueryOTAFirmware", {"FirmwareId": a.firmware_id})
    info = body["FirmwareInfo"]
    out(_pairs(a.firmware_id, {**info, "Status": _firmware_status(info)}))
    return body


def firmware_delete(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    body = c.call("DeleteOTAFirmware", {"FirmwareId": a.firmware_id})
    out(f"deleted {a.firmware_id}")
    return body


def _rate_params(a: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if a.rate is not None:
        params["MaximumPerMinute"] = a.rate
    if a.base_rate is not None:
        params.update(
            RateType="variable",
            BaseRatePerMinute=a.base_rate,
            IncrementalFactor=a.factor,
            RateIncreaseThreshold=a.threshold,
            RateIncreaseCondition=a.on,
        )
    return {k: v for k, v in params.items() if v is not None}


def batch_create(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    params: dict[str, Any] = {"ProductKey": a.product, "FirmwareId": a.firmware_id}
    params.update(_rate_params(a))
    params.update(_list("SrcVersion", a.src_version))
    params.update(_tags(a.tag))
    optional = {
        "NeedConfirm": a.need_confirm or None,
        "NeedPush": False if a.no_push else None,
        "RetryInterval": a.retry_interval,
        "RetryCount": a.retry_count,
        "TimeoutInMinutes": a.timeout,
        "MultiModuleMode": a.multi_module or None,
        "OverwriteMode": a.overwrite_mode,
        "DownloadProtocol": a.protocol,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    if a.dynamic:
        action = "CreateOTADynamicUpgradeJob"
        if a.group:
            params.update(GroupId=a.group, GroupType="LINK_PLATFORM_DYNAMIC")
        if a.dynamic_mode:
            params["DynamicMode"] = a.dynamic_mode
    else:
        action = "CreateOTAStaticUpgradeJob"
        params["TargetSelection"] = a.scope
        if a.devices:
            params.update(_list("TargetDeviceName", a.devices.split(",")))
        if a.device_file:
            fields = c.call("GenerateDeviceNameListURL")["Data"]
            c.upload(fields, Path(a.device_file).read_bytes())
            params["DnListFileUrl"] = fields["FileUrl"]
        if a.gray is not None:
            params["GrayPercent"] = a.gray
        if a.group:
            params.update(GroupId=a.group, GroupType="LINK_PLATFORM")
        if a.province:
            params["Province"] = a.province
        if a.city:
            params["City"] = a.city
        if a.schedule is not None:
            params["ScheduleTime"] = a.schedule
        if a.schedule_end is not None:
            params["ScheduleFinishTime"] = a.schedule_end
    params.update(safe_rollout.rule_params(a.abort_rule, a.window))
    try:
        body = c.call(action, params)
    except ApiCallError as exc:
        if exc.code == INVALID_NAMES and "DnListFileUrl" in params:
            # The console's "Download invalid list": show which names to correct.
            out(_invalid_names(c, a.product, params["DnListFileUrl"]))
        raise
    out(_pairs("batch created", body["Data"]))
    return body


INVALID_NAMES = "iot.ota.InvalidTargetDeviceName"
INVALID_NAMES_SHOWN = 10_000


def _invalid_names(c: OpsClient, product_key: str, url: str) -> Table:
    """The names of a refused device-list file that are not devices of the product."""
    names: list[str] = []
    total = 0
    page = 1
    while len(names) < INVALID_NAMES_SHOWN:
        body = c.call(
            "ListOTAJobInvalidDeviceNames",
            {
                "ProductKey": product_key,
                "DnListFileUrl": url,
                "CurrentPage": page,
                "PageSize": 1000,
            },
        )
        total = int(body["Total"])
        names.extend(body["Data"]["DeviceNames"])
        if len(names) >= total or not body["Data"]["DeviceNames"]:
            break
        page += 1
    title = f"invalid device names in the list ({total}); correct them and upload it again"
    return _table(title, [{"DeviceName": n} for n in names], [Column("DeviceName", "DeviceName")])


def batch_show(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    body = c.call("QueryOTAJob", {"JobId": a.job_id})
    out(_pairs(a.job_id, body["Data"]))
    return body


def batch_list(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    body = c.call(
        "ListOTAJobByFirmware",
        {"FirmwareId": a.firmware_id, "CurrentPage": a.page, "PageSize": a.page_size},
    )
    rows = body["Data"]["SimpleOTAJobInfo"]
    cols = [
        Column("JobId", "JobId", "id"),
        Column("Type", "SelectionType", "id", _job_kind),
        Column("Scope", "TargetSelection", "id"),
        Column("Status", "JobStatus", "id"),
        Column("Created (UTC)", "UtcCreate", "id", _minutes),
    ]
    out(_table(f"batches of {a.firmware_id} ({body['Total']})", rows, cols))
    return body


def _job_kind(row: Mapping[str, Any]) -> Any:
    """STATIC or DYNAMIC for an update batch, VERIFY for a verification batch."""
    return "VERIFY" if row.get("JobType") == "VERIFY_FIRMWARE" else row.get("SelectionType")


def _minutes(row: Mapping[str, Any]) -> Any:
    """``2026-11-29T20:13:01.000Z`` as ``2026-11-29 20:13``."""
    when = row.get("UtcCreate")
    return when[:16].replace("T", " ") if isinstance(when, str) else when


def batch_cancel(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    if a.strategy:
        body = c.call("CancelOTAStrategyByJob", {"JobId": a.job_id})
        out(f"canceled the dynamic strategy of {a.job_id}")
        return body
    flags = {
        "CancelQueuedTask": a.queued,
        "CancelNotifiedTask": a.notified,
        "CancelInProgressTask": a.in_progress,
        "CancelUnconfirmedTask": a.unconfirmed,
        "CancelScheduledTask": a.scheduled,
    }
    body = c.call(
        "CancelOTATaskByJob", {"JobId": a.job_id, **{k: v for k, v in flags.items() if v}}
    )
    out(f"canceled the {', '.join(k[6:-4] for k, v in flags.items() if v)} tasks of {a.job_id}")
    return body


def batch_edit(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    job = c.call("QueryOTAJob", {"JobId": a.job_id})["Data"]
    params: dict[str, Any] = {
        "JobId": a.job_id,
        "UpgradeType": job["SelectionType"],
        "TargetSelection": job["TargetSelection"],
        "MaximumPerMinute": a.rate if a.rate is not None else job.get("MaximumPerMinute", 10000),
    }
    params.update(_list("SrcVersionList", a.src_version))
    tags = a.tag
    if tags is None:  # UpdateOTAJob replaces tags: keep the batch's own unless given
        tags = [f"{t['Key']}={t['Value']}" for t in job.get("Tags", {}).get("OtaTagDTO", [])]
    params.update(_tags(tags, "Tags"))
    if a.timeout is not None:
        params["TimeoutInMinutes"] = a.timeout
    params.update(safe_rollout.rule_params(a.abort_rule, a.window))
    body = c.call("UpdateOTAJob", params)
    out(f"updated {a.job_id}")
    return body


def task_list(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    params = {"JobId": a.job_id, "CurrentPage": a.page, "PageSize": a.page_size}
    if a.status:
        params["TaskStatus"] = a.status
    body = c.call("ListOTATaskByJob", params)
    rows = body["Data"]["SimpleOTATaskInfo"]
    cols = [
        Column("TaskId", "TaskId", "id"),
        Column("Device", "DeviceName"),
        Column("From", "SrcVersion"),
        Column("Status", "TaskStatus", "id"),
        Column("%", "Progress"),
        Column("Desc", "TaskDesc", "note"),
    ]
    out(_table(f"tasks of {a.job_id} ({body['Total']})", rows, cols))
    return body


def task_confirm(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    body = c.call("ConfirmOTATask", _list("TaskId", a.task_ids))
    out(f"confirmed {len(a.task_ids)} task(s)")
    return body


def task_cancel(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    params: dict[str, Any] = {"ProductKey": a.product, "FirmwareId": a.firmware}
    params.update(_list("DeviceName", a.devices))
    if a.job:
        params["JobId"] = a.job
    body = c.call("CancelOTATaskByDevice", params)
    out(f"canceled the pending tasks of {len(a.devices)} device(s)")
    return body


def product_create(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    params = {"ProductName": a.name, "NodeType": 0, "Description": a.desc}
    body = c.call("CreateProduct", {k: v for k, v in params.items() if v is not None})
    out(_pairs("product created", body["Data"]))
    return body


def product_show(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    body = c.call("QueryProduct", {"ProductKey": a.product_key})
    out(_pairs(a.product_key, body["Data"]))
    return body


def device_register(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    params = {"ProductKey": a.product, "DeviceName": a.name, "Nickname": a.nickname}
    params.update(Province=a.province, City=a.city)
    body = c.call("RegisterDevice", {k: v for k, v in params.items() if v is not None})
    out(_pairs("device registered", body["Data"]))
    return body


def device_show(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    """QueryDeviceDetail: the registry's record and ``FirmwareVersion``, the version the
    device last reported (absent until it reports one)."""
    body = c.call("QueryDeviceDetail", {"ProductKey": a.product, "DeviceName": a.name})
    out(_pairs(f"{a.product}/{a.name}", body["Data"]))
    return body


def device_import(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    entries: list[dict[str, str]] = []
    for line in Path(a.csv).read_text(encoding="utf-8-sig").splitlines():
        cells = [cell.strip() for cell in line.split(",")]
        if not cells[0] or cells[0].lower() in ("devicename", "name"):
            continue
        entry = {"DeviceName": cells[0]}
        for key, cell in zip(("DeviceNickname", "Province", "City"), cells[1:], strict=False):
            if cell:
                entry[key] = cell
        entries.append(entry)
    check = c.call("BatchCheckDeviceNames", {"ProductKey": a.product, "DeviceNameList": entries})
    data = check["Data"]
    apply_id = data["ApplyId"]
    bad = data["InvalidDetailList"]["InvalidDetailList"]
    if bad:
        cols = [Column("DeviceName", "DeviceName"), Column("ErrorMsg", "ErrorMsg")]
        out(_table("refused names", bad, cols))
    status = c.call(
        "QueryBatchRegisterDeviceStatus", {"ProductKey": a.product, "ApplyId": apply_id}
    )
    if status["Data"]["Status"] == "CHECK_FAILED":
        raise ApiCallError(
            "iot.device.ApplyStatusNotAllowed", "no name of the file can be registered"
        )
    c.call("BatchRegisterDeviceWithApplyId", {"ProductKey": a.product, "ApplyId": apply_id})
    status = c.call(
        "QueryBatchRegisterDeviceStatus", {"ProductKey": a.product, "ApplyId": apply_id}
    )
    registered = status["Data"]["ValidList"]["Name"]
    out(f"registered {len(registered)} device(s) of {len(entries)} (application {apply_id})")
    return status


def group_create(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    if a.dynamic:
        params = {"GroupName": a.name, "DynamicGroupExpression": a.dynamic, "GroupDesc": a.desc}
        body = c.call("CreateDeviceDynamicGroup", {k: v for k, v in params.items() if v})
    else:
        params = {"GroupName": a.name, "SuperGroupId": a.parent, "GroupDesc": a.desc}
        body = c.call("CreateDeviceGroup", {k: v for k, v in params.items() if v})
    out(_pairs("group created", body["Data"]))
    return body


def group_add(c: OpsClient, a: argparse.Namespace, out: Out) -> Any:
    devices = []
    for ref in a.devices:
        product_key, sep, name = ref.partition("/")
        if not sep:
            raise SystemExit(f"devices are PRODUCTKEY/DEVICENAME, got {ref!r}")
        devices.append({"ProductKey": product_key, "DeviceName": name})
    body = c.call("BatchAddDeviceGroupRelations", {"GroupId": a.group_id, "Device": devices})
    out(
        f"added {body['SuccessAddedDeviceCount']} of {body['ValidDeviceCount']} valid device(s); "
        f"{body['AlreadyRelatedGroupDeviceCount']} already in the group"
    )
    return body


# -- parsers ---------------------------------------------------------------------------------


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", help="API base URL (env OTAFLOW_API_URL)")
    parser.add_argument("--access-key-id", help="env OTAFLOW_ACCESS_KEY_ID")
    parser.add_argument("--access-key-secret", help="env OTAFLOW_ACCESS_KEY_SECRET")
    parser.add_argument("--json", action="store_true", help="print the raw answers as JSON")


def _paging(parser: argparse.ArgumentParser, size: int) -> None:
    parser.add_argument("--page", type=int, default=1)
    parser.add_argument("--page-size", type=int, default=size)


def _command(
    group: Any, name: str, func: Callable[[OpsClient, argparse.Namespace, Out], Any], help: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = group.add_parser(name, help=help, description=help)
    _connection(parser)
    parser.set_defaults(func=lambda args: run(func, args))
    return parser


def add_parsers(subparsers: Any) -> None:
    """Register ``firmware``, ``batch``, ``task``, ``device`` and ``group`` on the main
    CLI's subparsers; each leaf sets ``args.func(args) -> exit status``."""
    fw = subparsers.add_parser("firmware", help="update packages").add_subparsers(
        dest="firmware_command", required=True
    )
    p = _command(fw, "upload", firmware_upload, "upload a package file and create the package")
    p.add_argument("file")
    p.add_argument("--product", required=True)
    p.add_argument("--version", required=True, help="destination version")
    p.add_argument("--name")
    p.add_argument("--module")
    p.add_argument("--src-version", help="makes a differential package")
    p.add_argument("--desc")
    p.add_argument("--sign-method", choices=("MD5", "SHA256"), default="MD5")
    p.add_argument("--verify", action="store_true", help="require a verification batch")
    p = _command(fw, "list", firmware_list, "list update packages")
    p.add_argument("--product")
    _paging(p, 20)
    p = _command(fw, "show", firmware_show, "show one update package")
    p.add_argument("firmware_id")
    p = _command(fw, "delete", firmware_delete, "delete an update package")
    p.add_argument("firmware_id")

    batch = subparsers.add_parser("batch", help="update batches").add_subparsers(
        dest="batch_command", required=True
    )
    p = _command(batch, "create", batch_create, "create a static or dynamic batch")
    p.add_argument("firmware_id")
    p.add_argument("--product", required=True)
    p.add_argument("--dynamic", action="store_true")
    p.add_argument("--dynamic-mode", type=int, choices=(1, 2))
    p.add_argument("--scope", default="ALL", choices=("ALL", "SPECIFIC", "GRAY", "GROUP", "REGION"))
    p.add_argument("--devices", help="comma-separated names (SPECIFIC, at most 200)")
    p.add_argument("--device-file", help="CSV of up to 1,000,000 names (SPECIFIC)")
    p.add_argument("--gray", help="phased percentage, up to three decimals")
    p.add_argument("--group", help="static group (static) or dynamic group (--dynamic)")
    p.add_argument("--province")
    p.add_argument("--city")
    p.add_argument("--src-version", action="append")
    p.add_argument("--rate", type=int, help="constant rate, or the maximum of a variable one")
    p.add_argument("--base-rate", type=int, help="variable rate: start at this rate")
    p.add_argument("--factor", help="variable rate: multiply by this (1.20-5.00)")
    p.add_argument("--threshold", type=int, help="variable rate: every this many devices")
    p.add_argument("--on", choices=("pushed", "succeeded"), default="pushed")
    p.add_argument("--retry-interval", type=int, choices=(0, 10, 30, 60, 1440))
    p.add_argument("--retry-count", type=int, choices=(1, 2, 5))
    p.add_argument("--timeout", type=int, help="minutes, 1-1440")
    p.add_argument("--schedule", type=int, help="start, epoch ms (5 min to 7 days ahead)")
    p.add_argument("--schedule-end", type=int, help="forced end, epoch ms")
    p.add_argument("--need-confirm", action="store_true")
    p.add_argument("--no-push", action="store_true")
    p.add_argument("--multi-module", action="store_true")
    p.add_argument("--overwrite-mode", type=int, choices=(1, 2))
    p.add_argument("--protocol", choices=("HTTPS", "MQTT"))
    p.add_argument("--tag", action="append", help="KEY=VALUE (repeatable)")
    safe_rollout.add_rule_arguments(p)
    p = _command(batch, "show", batch_show, "show one batch")
    p.add_argument("job_id")
    p = _command(batch, "list", batch_list, "list the batches of an update package")
    p.add_argument("firmware_id")
    _paging(p, 20)
    p = _command(batch, "cancel", batch_cancel, "cancel tasks of a batch, or its dynamic strategy")
    p.add_argument("job_id")
    p.add_argument("--strategy", action="store_true", help="stop a dynamic batch matching")
    for flag in ("queued", "notified", "in-progress", "unconfirmed", "scheduled"):
        p.add_argument(f"--{flag}", action="store_true", help=f"cancel {flag} tasks")
    p = _command(batch, "watch", watch.batch_watch, "a batch's live board until it completes")
    watch.add_arguments(p)
    p = _command(batch, "edit", batch_edit, "change a running batch")
    p.add_argument("job_id")
    p.add_argument("--rate", type=int)
    p.add_argument("--src-version", action="append", help="dynamic version-based batches")
    p.add_argument("--timeout", type=int, help="dynamic batches")
    p.add_argument("--tag", action="append", help="KEY=VALUE; replaces the batch's tags")
    safe_rollout.add_rule_arguments(p)
    safe_rollout.add_parsers(subparsers, batch, _command)

    task = subparsers.add_parser("task", help="update tasks").add_subparsers(
        dest="task_command", required=True
    )
    p = _command(task, "list", task_list, "list the tasks of a batch")
    p.add_argument("job_id")
    p.add_argument("--status")
    _paging(p, 50)
    p = _command(task, "confirm", task_confirm, "confirm tasks waiting for confirmation")
    p.add_argument("task_ids", nargs="+")
    p = _command(task, "cancel", task_cancel, "cancel the pending tasks of devices")
    p.add_argument("devices", nargs="+")
    p.add_argument("--product", required=True)
    p.add_argument("--firmware", required=True)
    p.add_argument("--job")

    product = subparsers.add_parser("product", help="products").add_subparsers(
        dest="product_command", required=True
    )
    p = _command(product, "create", product_create, "create a product (devices belong to one)")
    p.add_argument("name", help="4-30 letters, digits or '_'")
    p.add_argument("--desc")
    p = _command(product, "show", product_show, "show one product")
    p.add_argument("product_key")

    device = subparsers.add_parser("device", help="the device registry").add_subparsers(
        dest="device_command", required=True
    )
    p = _command(device, "register", device_register, "register one device")
    p.add_argument("product")
    p.add_argument("name")
    p.add_argument("--nickname")
    p.add_argument("--province")
    p.add_argument("--city")
    p = _command(device, "show", device_show, "show one device and its reported version")
    p.add_argument("product")
    p.add_argument("name")
    p = _command(device, "import", device_import, "register devices from a CSV")
    p.add_argument("product")
    p.add_argument("csv", help="name[,nickname[,province[,city]]] per line")

    group = subparsers.add_parser("group", help="device groups").add_subparsers(
        dest="group_command", required=True
    )
    p = _command(group, "create", group_create, "create a static (or --dynamic) group")
    p.add_argument("name")
    p.add_argument("--parent", help="parent group (a subgroup)")
    p.add_argument("--dynamic", metavar="EXPRESSION", help="a dynamic group's expression")
    p.add_argument("--desc")
    p = _command(group, "add", group_add, "add devices to a static group")
    p.add_argument("group_id")
    p.add_argument("devices", nargs="+", help="PRODUCTKEY/DEVICENAME")


def client_from(args: argparse.Namespace) -> OpsClient:
    settings = config.load()
    endpoint = (
        args.endpoint
        or os.environ.get("OTAFLOW_API_URL")
        or f"http://127.0.0.1:{settings.api_port}"
    )
    first = next(iter(settings.access_keys.items()), ("", ""))
    key_id = args.access_key_id or os.environ.get("OTAFLOW_ACCESS_KEY_ID") or first[0]
    secret = args.access_key_secret or os.environ.get("OTAFLOW_ACCESS_KEY_SECRET") or first[1]
    if not key_id or not secret:
        raise SystemExit("no access key: pass --access-key-id/--access-key-secret")
    return OpsClient(endpoint, key_id, secret)


def _error(message: str) -> None:
    """One line on stderr, however long (never wrapped: scripts grep it)."""
    Console(stderr=True, soft_wrap=True).print(f"[red]error[/red] {escape(message)}")


def run(
    func: Callable[[OpsClient, argparse.Namespace, Out], Any],
    args: argparse.Namespace,
    console: Console | None = None,
    client: OpsClient | None = None,
) -> int:
    console = console or Console()
    as_json = getattr(args, "json", False)
    out: Out = (lambda _: None) if as_json else console.print
    try:
        body = func(client or client_from(args), args, out)
    except ApiCallError as exc:
        if as_json:
            print(json.dumps({"Success": False, "Code": exc.code, "ErrorMessage": exc.message}))
        else:
            _error(f"{exc.code}: {exc.message}")
        return EXIT_REFUSED
    except OSError as exc:  # a file to upload or import that is missing or unreadable
        where = f": {exc.filename}" if exc.filename else ""
        message = f"{exc.strerror or exc}{where}"
        if as_json:
            print(json.dumps({"Success": False, "Code": "LocalFile", "ErrorMessage": message}))
        else:
            _error(message)
        return EXIT_REFUSED
    if as_json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (``python -m otaflow.cli.ops ...``) until otaflow's CLI wires it."""
    parser = argparse.ArgumentParser(prog="otaflow")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
