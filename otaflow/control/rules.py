"""The platform's batch rules, as pure checks that raise ``ApiError``.

Every check runs before an operation writes anything (the plane builds its whole
outcome only after all of them passed). Sources: the console's "Batch update" page
(shared/reference/console-batch-update.txt) and the SDK docstrings (docs/openapi-ota.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from otaflow.control import errors as E
from otaflow.control.common import Record, opt_int, opt_list
from otaflow.control.errors import ApiError, invalid

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

RETRY_INTERVALS = (0, 10, 30, 60, 1440)
RETRY_COUNTS = (1, 2, 5)
TIMEOUT_RANGE = (1, 1440)
SCHEDULE_START_WINDOW = (5 * MINUTE_MS, 7 * DAY_MS)
SCHEDULE_END_WINDOW = (HOUR_MS, 30 * DAY_MS)
MAX_SRC_VERSIONS = 10
MAX_NAMES_PER_CALL = 200
MAX_NAMES_IN_FILE = 1_000_000
MAX_PACKAGES_PER_DYNAMIC_GROUP = 5
MAX_TAGS = 10
MAX_TAG_CHARS = 4096
MAX_TASK_IDS = 10

_TAG_KEY = re.compile(r"^[A-Za-z0-9.]{1,30}$")
_GRAY = re.compile(r"^\d{1,3}(\.\d{1,3})?$")


def retry_policy(p: Mapping[str, Any], timeout: int | None) -> tuple[int | None, int]:
    """(retry interval or None for no retry, retry count)."""
    interval = opt_int(p, "RetryInterval")
    count = opt_int(p, "RetryCount")
    if interval is None:
        if count is not None and count not in RETRY_COUNTS:
            raise ApiError(E.RETRY_COUNT, "RetryCount must be 1, 2 or 5.")
        return None, 0
    if interval not in RETRY_INTERVALS:
        raise ApiError(
            E.RETRY_INTERVAL,
            f"RetryInterval must be 0, 10, 30, 60 or 1440 minutes, got {interval}.",
        )
    if count is None or count not in RETRY_COUNTS:
        raise ApiError(E.RETRY_COUNT, "RetryCount must be 1, 2 or 5 when RetryInterval is set.")
    if timeout is not None and interval >= timeout:
        raise ApiError(
            E.RETRY_NOT_BELOW_TIMEOUT,
            f"RetryInterval ({interval} min) must be less than TimeoutInMinutes ({timeout} min).",
        )
    return interval, count


def timeout_minutes(p: Mapping[str, Any]) -> int | None:
    timeout = opt_int(p, "TimeoutInMinutes")
    if timeout is not None and not TIMEOUT_RANGE[0] <= timeout <= TIMEOUT_RANGE[1]:
        raise ApiError(E.TIMEOUT, f"TimeoutInMinutes must be from 1 to 1440, got {timeout}.")
    return timeout


#: ``UpdateOTAJob`` with ``TimeoutInMinutes=0``: cancel the batch's timeout (the console's
#: "you can also cancel the timeout setting"; the SDK omits a None field, so it cannot send
#: an empty value, and 0 is outside the 1..1440 a timeout may take).
CANCEL_TIMEOUT = 0


def timeout_change(p: Mapping[str, Any]) -> tuple[bool, int | None]:
    """(whether ``UpdateOTAJob`` changes the timeout, the new timeout or None for none)."""
    if opt_int(p, "TimeoutInMinutes") == CANCEL_TIMEOUT:
        return True, None
    timeout = timeout_minutes(p)
    return timeout is not None, timeout


def schedule(p: Mapping[str, Any], now: int, static: bool) -> tuple[int | None, int | None]:
    start = opt_int(p, "ScheduleTime")
    end = opt_int(p, "ScheduleFinishTime")
    if start is None and end is None:
        return None, None
    if not static:
        raise ApiError(
            E.SCHEDULE_DYNAMIC, "Scheduled updates are supported only for static batches."
        )
    if start is None:
        raise ApiError(E.SCHEDULE_FINISH_TIME, "ScheduleFinishTime requires ScheduleTime.")
    low, high = SCHEDULE_START_WINDOW
    if not now + low <= start <= now + high:
        raise ApiError(
            E.SCHEDULE_TIME,
            "ScheduleTime must be at least 5 minutes and at most 7 days from now.",
        )
    if end is not None:
        low, high = SCHEDULE_END_WINDOW
        if not start + low <= end <= start + high:
            raise ApiError(
                E.SCHEDULE_FINISH_TIME,
                "ScheduleFinishTime must be at least 1 hour and at most 30 days after "
                "ScheduleTime.",
            )
    return start, end


def gray_percent(raw: str | None) -> int:
    """The phased percentage in thousandths (``33.333`` -> 33333)."""
    if raw is None:
        raise ApiError(E.GRAY_PERCENT, "GrayPercent is mandatory for a phased update.")
    text = raw.strip()
    if not _GRAY.match(text):
        raise ApiError(
            E.GRAY_PERCENT,
            f"GrayPercent must be a percentage with at most three decimals, got {raw!r}.",
        )
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern already excludes it
        raise ApiError(E.GRAY_PERCENT, f"GrayPercent {raw!r} is not a number.") from None
    if not Decimal(0) < value <= Decimal(100):
        raise ApiError(E.GRAY_PERCENT, f"GrayPercent must be above 0 and at most 100, got {raw}.")
    return int(value * 1000)


def phased_count(devices: int, thousandths: int) -> int:
    """floor(N x percent / 100), at least one device (when there is any)."""
    if devices == 0:
        return 0
    return max(1, devices * thousandths // 100_000)


def src_versions(raw: Sequence[str]) -> tuple[str, ...]:
    unique = tuple(dict.fromkeys(raw))
    if len(unique) > MAX_SRC_VERSIONS:
        raise ApiError(
            E.SRC_VERSION_LIMIT,
            f"At most {MAX_SRC_VERSIONS} unique source versions are allowed, got {len(unique)}.",
        )
    return unique


def diff_src_versions(firmware: Record, versions: tuple[str, ...]) -> tuple[str, ...]:
    """A differential package updates only its own source version."""
    if firmware["type"] != 1:
        return versions
    own = firmware["src_version"]
    if versions and versions != (own,):
        raise ApiError(
            E.SRC_VERSION_DIFF,
            f"A differential package only updates its source version {own}.",
        )
    return versions


def tags(p: Mapping[str, Any], name: str = "Tag") -> dict[str, str]:
    items = opt_list(p, name)
    if len(items) > MAX_TAGS:
        raise ApiError(E.TAGS, f"At most {MAX_TAGS} tags are allowed per batch.")
    out: dict[str, str] = {}
    total = 0
    for item in items:
        if not isinstance(item, dict):
            raise invalid(name, "each tag needs Key and Value")
        key, value = item.get("Key"), item.get("Value")
        if not isinstance(key, str) or not isinstance(value, str) or not key or not value:
            raise ApiError(E.TAGS, "Each tag needs both a Key and a Value.")
        if not _TAG_KEY.match(key):
            raise ApiError(E.TAGS, f"Tag key {key!r} must be 1-30 letters, digits or periods.")
        if len(value) > 1024:
            raise ApiError(E.TAGS, f"Tag value of {key!r} is longer than 1024 characters.")
        total += len(key) + len(value)
        out[key] = value
    if total > MAX_TAG_CHARS:
        raise ApiError(E.TAGS, f"Tags may hold at most {MAX_TAG_CHARS} characters in all.")
    return out


def modes(multi_module: bool, overwrite_mode: int) -> None:
    if overwrite_mode not in (1, 2):
        raise invalid("OverwriteMode", "must be 1 or 2")
    if multi_module and overwrite_mode == 2:
        raise ApiError(
            E.MULTI_MODULE_OVERWRITE,
            "MultiModuleMode=true and OverwriteMode=2 cannot be used together.",
        )


def names_per_call(names: Sequence[str]) -> None:
    if len(names) > MAX_NAMES_PER_CALL:
        raise ApiError(
            E.TARGET_NAME_LIMIT,
            f"At most {MAX_NAMES_PER_CALL} device names per call (use DnListFileUrl for more), "
            f"got {len(names)}.",
        )


# -- rules across batches (the console doc's "cannot both be set" / "cannot mix") -----------


def job_status(batch: Record, now: int) -> str:
    """The batch's status at ``now``: a schedule moves it without a command."""
    status = str(batch["status"])
    if (
        status == "PLANNED"
        and batch["schedule_start"] is not None
        and now >= batch["schedule_start"]
    ):
        status = "IN_PROGRESS"
    if (
        status == "IN_PROGRESS"
        and batch["schedule_end"] is not None
        and now >= batch["schedule_end"]
    ):
        status = "COMPLETED"
    return status


def is_live(batch: Record, now: int) -> bool:
    """Can the batch still give a device a task (the cross-batch rules look at these)?"""
    if batch["status"] not in ("PLANNED", "IN_PROGRESS"):
        return False
    if batch["schedule_end"] is not None and now >= batch["schedule_end"]:
        return False
    return batch["kind"] != "DYNAMIC" or bool(batch["strategy_active"])


def modes_across_batches(
    live: Sequence[Record], product_key: str, multi_module: bool, overwrite_mode: int
) -> None:
    """For one product, multi-module in one batch and override in another is refused.

    The console doc: "The Allow concurrent multi-module updates and Overwrite previous
    update tasks on the device options cannot both be set to Yes ... Subsequently, you
    initiate another update batch and set Overwrite ... to Yes. Do not use this scenario."
    """
    if not multi_module and overwrite_mode != 2:
        return
    for other in live:
        if other["product_key"] != product_key:
            continue
        if (multi_module and other["overwrite_mode"] == 2) or (
            overwrite_mode == 2 and other["multi_module"]
        ):
            mine = "MultiModuleMode=true" if multi_module else "OverwriteMode=2"
            theirs = "OverwriteMode=2" if multi_module else "MultiModuleMode=true"
            raise ApiError(
                E.MULTI_MODULE_OVERWRITE,
                f"Batch {other['batch_id']} of this product has {theirs}; a batch with {mine} "
                "cannot run beside it (cancel it or change the mode).",
            )


def _dynamic_versions(batch: Record) -> frozenset[str] | None:
    """Source versions a dynamic batch updates (None: every version)."""
    firmware = batch["firmware"]
    if firmware["is_diff"] and firmware["src_version"] is not None:
        return frozenset({firmware["src_version"]})
    if batch["src_versions"]:
        return frozenset(batch["src_versions"])
    return None


def dynamic_mode_mix(live: Sequence[Record], new: Record) -> None:
    """With multi-module, version-based and group-based dynamic batches of one module of a
    product cannot both cover the same source version (the console doc's "cannot mix").

    A group-based batch of a full package covers every source version.
    """
    if new["kind"] != "DYNAMIC":
        return
    new_grouped = new["group_id"] is not None
    new_versions = _dynamic_versions(new)
    for other in live:
        if (
            other["kind"] != "DYNAMIC"
            or other["product_key"] != new["product_key"]
            or other["firmware"]["module"] != new["firmware"]["module"]
            or (other["group_id"] is not None) == new_grouped
            or not (other["multi_module"] or new["multi_module"])
        ):
            continue
        theirs = _dynamic_versions(other)
        if new_versions is None or theirs is None:
            shared = sorted(theirs or new_versions or {"any"})
        else:
            shared = sorted(new_versions & theirs)
        if shared:
            kinds = (
                ("group-based", "version-based")
                if new_grouped
                else ("version-based", "group-based")
            )
            raise ApiError(
                E.DYNAMIC_MODE_MIX,
                f"With MultiModuleMode, a {kinds[0]} dynamic batch cannot cover source version "
                f"{', '.join(shared)} of module {new['firmware']['module']}: {kinds[1]} dynamic "
                f"batch {other['batch_id']} already does.",
            )


def confirm_window(batch: Record, now: int) -> None:
    """ConfirmOTATask on a scheduled batch only between its start and its end (SDK doc:
    "you must call this operation within the specified time range")."""
    start, end = batch["schedule_start"], batch["schedule_end"]
    if start is None:
        return
    if now < start or (end is not None and now >= end):
        raise ApiError(
            E.CONFIRM_OUTSIDE_SCHEDULE,
            f"Tasks of the scheduled batch {batch['batch_id']} can be confirmed only within its "
            "schedule (from ScheduleTime until ScheduleFinishTime).",
        )
